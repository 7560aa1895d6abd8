import createClient from "openapi-fetch";
import type { paths } from "./generated/coordinator.js";

export async function reserveStock(coordinatorUrl: string, stockUrl: string): Promise<string> {
  const coordinator = createClient<paths>({ baseUrl: coordinatorUrl });
  const { data, error, response } = await coordinator.POST("/reservations", {
    params: { header: { "Idempotency-Key": "order-A-43", Prefer: "wait=5" } },
    body: { participants: [{ name: "stock", try: { url: stockUrl, body: { sku: "apple", quantity: 1 } } }] },
  });
  // error: a typed Problem (a 410 also lists each participant and its last_error)
  if (!data) throw new Error(`${response.status}: ${JSON.stringify(error)}`);
  return data.id; // data: a typed Reservation
}
