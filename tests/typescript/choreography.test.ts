// A choreography (order, payment, stock) through the real coordinator, driven from TypeScript
// with a client generated from openapi/coordinator.yaml (openapi-typescript for the types,
// openapi-fetch for the calls), the participants being scripted tcc-fake-participant
// processes: the pytest suite's choreography (tests/python), with node's test runner.
import assert from "node:assert/strict";
import { afterEach, beforeEach, test } from "node:test";

import createClient from "openapi-fetch";

import type { components, paths } from "./generated/coordinator.js";
import { FakeParticipant, Process, startCoordinator, waitFor } from "./processes.js";
import { reserveStock } from "./readme.js";

type Name = "order" | "payment" | "stock";
type Shop = Record<Name, FakeParticipant>;
const NAMES: Name[] = ["order", "payment", "stock"];

let coordinator: Process;
let shop: Shop;
let api: ReturnType<typeof createClient<paths>>;

beforeEach(async () => {
  coordinator = await startCoordinator();
  // A confirmed reservation answers 303: read it, do not follow it.
  api = createClient<paths>({
    baseUrl: coordinator.url,
    fetch: (request) => fetch(request, { redirect: "manual" }),
  });
  const [order, payment, stock] = await Promise.all(NAMES.map((name) => FakeParticipant.start(name)));
  shop = { order: order!, payment: payment!, stock: stock! };
});

afterEach(() => {
  coordinator.stop();
  for (const fake of Object.values(shop)) fake.stop();
});

async function create(order = "A-17"): Promise<string> {
  const bodies: Record<Name, object> = {
    order: { order, total_cents: 1200 },
    payment: { account: "alice", amount_cents: 1200 },
    stock: { sku: "apple", quantity: 2 },
  };
  const { data, error, response } = await api.POST("/reservations", {
    body: {
      timeout_ms: 30_000,
      participants: NAMES.map((name) => ({ name, try: { url: shop[name].tryUrl, body: bodies[name] } })),
      metadata: { order },
    },
  });
  assert.equal(response.status, 202, JSON.stringify(error));
  assert.ok(data);
  return data.id;
}

/** The reservation's status code and, while it is open, its body. */
async function reservation(id: string): Promise<[number, components["schemas"]["Reservation"] | undefined]> {
  const { data, response } = await api.GET("/reservations/{id}", { params: { path: { id } } });
  return [response.status, data];
}

/** Waits for 303 (confirmed) or 410 (cancelled). */
async function settles(id: string): Promise<number> {
  return waitFor(`reservation ${id} settles`, async () => {
    const [status] = await reservation(id);
    return status === 303 || status === 410 ? status : undefined;
  });
}

async function reserved(id: string): Promise<void> {
  await waitFor(`reservation ${id} is reserved`, async () => {
    const [status, body] = await reservation(id);
    return status === 200 && body?.state === "reserved" ? true : undefined;
  });
}

async function events(id: string): Promise<components["schemas"]["HistoryEntry"][]> {
  const { data } = await api.GET("/reservations/{id}/events", { params: { path: { id } } });
  assert.ok(data);
  return data.events;
}

async function confirm(id: string): Promise<number> {
  const { response } = await api.POST("/reservations/{id}/confirm", { params: { path: { id } } });
  return response.status;
}

test("an order, its payment and its stock confirm together", async () => {
  const id = await create();
  await reserved(id);

  assert.equal(await confirm(id), 202);
  assert.equal(await settles(id), 303);
  for (const [index, name] of NAMES.entries()) {
    const tries = await shop[name].calls("try");
    assert.deepEqual(tries.map((c) => c.status), [201], name);
    assert.equal(tries[0]?.idempotency_key, `${id}/${index}`);
    assert.ok(tries[0]?.reservation?.endsWith(`/reservations/${id}`));
    assert.ok(tries[0]?.deadline, "every try carries TCC-Deadline");
    assert.deepEqual((await shop[name].calls("confirm")).map((c) => c.status), [204], name);
    assert.deepEqual(await shop[name].calls("cancel"), []);
    assert.deepEqual((await shop[name].holds()).map((h) => h.state), ["confirmed"]);
  }
  const confirmed = (await events(id))
    .filter((e) => e.verb === "confirm")
    .map((e) => [e.participant_name, e.result])
    .sort();
  assert.deepEqual(confirmed, [
    ["order", "confirmed"],
    ["payment", "confirmed"],
    ["stock", "confirmed"],
  ]);
});

test("a declined payment cancels every hold", async () => {
  await shop.payment.script("try", { status: 409 });

  const id = await create();

  assert.equal(await settles(id), 410);
  assert.deepEqual((await shop.payment.calls("try")).map((c) => c.status), [409]);
  assert.deepEqual(await shop.payment.holds(), []);
  for (const name of ["order", "stock"] as const) {
    await waitFor(`${name} is cancelled`, async () => {
      const states = (await shop[name].holds()).map((h) => h.state);
      return states.length === 1 && states[0] === "cancelled" ? true : undefined;
    });
    assert.deepEqual((await shop[name].calls("cancel")).map((c) => c.status), [204]);
    assert.deepEqual(await shop[name].calls("confirm"), []);
  }
  const tried = (await events(id)).filter((e) => e.verb === "try" && e.participant_name === "payment");
  assert.ok(tried.at(-1)?.result?.includes("409"), JSON.stringify(tried));
});

test("a stock confirm answering 503 twice is retried until it confirms", async () => {
  await shop.stock.script("confirm", { status: 503 }, { status: 503 });
  const id = await create();
  await reserved(id);

  await confirm(id);

  assert.equal(await settles(id), 303);
  assert.deepEqual(
    (await shop.stock.calls("confirm")).map((c) => [c.status, c.scripted]),
    [
      [503, true],
      [503, true],
      [204, false],
    ],
  );
  const results = (await events(id))
    .filter((e) => e.verb === "confirm" && e.participant_name === "stock")
    .map((e) => e.result);
  assert.equal(results.length, 3);
  assert.equal(results.at(-1), "confirmed");
});

test("a try whose answer is lost is repeated and holds once", async () => {
  await shop.stock.script("try", { status: 503, apply: true });

  const id = await create();
  await reserved(id);

  const tries = await shop.stock.calls("try");
  assert.deepEqual(tries.map((c) => c.status), [503, 200]);
  assert.equal(tries[0]?.idempotency_key, tries[1]?.idempotency_key);
  assert.equal((await shop.stock.holds()).length, 1);
  const [, body] = await reservation(id);
  assert.equal(body?.participants.find((p) => p.name === "stock")?.state, "reserved");
});

test("a field the coordinator refuses comes back as a typed problem naming it", async () => {
  const { error, response } = await api.POST("/reservations", {
    body: { participants: [{ name: "stock", try: { url: "ftp://stock.test/holds" } }] },
  });
  assert.equal(response.status, 422);
  assert.equal(response.headers.get("content-type"), "application/problem+json");
  assert.equal(error?.type, "urn:tcc-coordinator:problem:invalid-request");
  assert.equal(error?.field, "participants[0].try.url");
});

test("README's TypeScript block reserves stock", async () => {
  const id = await reserveStock(coordinator.url, shop.stock.tryUrl);

  const [status, body] = await reservation(id);
  assert.equal(status, 200);
  assert.equal(body?.state, "reserved");
  assert.deepEqual((await shop.stock.calls("try")).map((c) => c.idempotency_key), [`${id}/0`]);
  assert.equal(await reserveStock(coordinator.url, shop.stock.tryUrl), id, "the same Idempotency-Key");
});
