import createClient from "openapi-fetch";
// npx openapi-typescript openapi/coordinator.yaml --default-non-nullable=false -o generated/coordinator.d.ts
import type { paths } from "./generated/coordinator.js";

export async function reserveStock(coordinatorUrl: string, stockUrl: string): Promise<string> {
  const coordinator = createClient<paths>({ baseUrl: coordinatorUrl });
  const { data, error, response } = await coordinator.POST("/reservations", {
    params: { header: { "Idempotency-Key": "order-A-42", Prefer: "wait=5" } },
    body: { participants: [{ name: "stock", try: { url: stockUrl, body: { sku: "apple" } } }] },
  });
  if (!data) throw new Error(`${response.status}: ${error?.detail}`); // error: a typed Problem
  return data.id; // data: a typed Reservation
}
