// Swagger UI and the dashboard, driven in Debian's headless Chromium by playwright-core.
// Run by ../browser.sh with TCC_BASE set to a running coordinator; screenshots go to
// $ARTIFACTS (default ../../target/browser).
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

const base = process.env.TCC_BASE;
const artifacts = process.env.ARTIFACTS ?? new URL("../../target/browser", import.meta.url).pathname;
assert.ok(base, "TCC_BASE names the coordinator");
mkdirSync(artifacts, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let failed = false;

async function test(name, body, options = {}) {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 }, ...options });
  const started = Date.now();
  try {
    await body(page);
    console.log(`ok   ${name} (${Date.now() - started} ms)`);
  } catch (error) {
    failed = true;
    console.log(`FAIL ${name}: ${error.stack ?? error}`);
    await page.screenshot({ path: `${artifacts}/failed-${name.replace(/\W+/g, "-")}.png`, fullPage: true });
  } finally {
    await page.close();
  }
}

await test("swagger-ui-try-it-out-creates-a-reservation", async (page) => {
  await page.goto(`${base}/docs`);
  const create = page.locator(".opblock-post").filter({ has: page.locator('[data-path="/reservations"]') }).first();
  await create.locator(".opblock-summary").click();
  await create.getByRole("button", { name: "Try it out" }).click();
  await create.locator("textarea.body-param__text").fill(JSON.stringify({ timeout_ms: 60000, participants: [] }));
  await create.getByRole("button", { name: "Execute" }).click();
  const status = create.locator(".live-responses-table tbody .response-col_status").first();
  await status.waitFor();
  assert.equal((await status.textContent()).trim(), "202");
  // Swagger UI lists the response headers under the live response.
  const shown = await create.locator(".live-responses-table tbody").first().textContent();
  assert.match(shown, /location: \/reservations\/[0-9a-f-]{36}/i);
  await page.screenshot({ path: `${artifacts}/swagger-ui.png`, fullPage: true });
});

await test("dashboard-shows-a-reservation-and-its-calls", async (page) => {
  // A reservation whose participant is unreachable: confirming, retried, visible.
  const expires = new Date(Date.now() + 600_000).toISOString();
  const created = await fetch(`${base}/reservations`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ participants: [{ name: "stock", link: { uri: "http://127.0.0.1:9/holds/1", expires } }] }),
  });
  assert.equal(created.status, 202);
  const { id } = await created.json();
  assert.equal((await fetch(`${base}/reservations/${id}/confirm`, { method: "POST" })).status, 202);

  await page.goto(`${base}/ui`);
  const row = page.locator(`tr[data-id="${id}"]`);
  await row.waitFor();
  assert.match(await row.textContent(), /confirming/);
  await page.locator('.count[data-state="confirming"] b').filter({ hasText: /^[1-9]/ }).waitFor();
  await row.click();
  await page.locator("#timeline").waitFor();
  await page.waitForFunction(() => document.querySelectorAll("#timeline circle.call").length >= 2, null, { timeout: 15000 });
  assert.equal(await page.locator("#timeline .deadline").count(), 1, "the deadline, drawn or pointed at");
  assert.ok(await page.locator("#timeline line.change").count() >= 2, "created and confirming");
  assert.match(await page.locator("#calls").textContent(), /cannot connect/);
  await page.screenshot({ path: `${artifacts}/dashboard.png`, fullPage: true });
});

// ---- the dashboard's actions -------------------------------------------------------------

const fake = process.env.FAKE_BASE;
assert.ok(fake, "FAKE_BASE names the fake participant");

async function call(method, path, body, headers = {}) {
  return fetch(`${base}${path}`, {
    method,
    headers: { "Content-Type": "application/json", ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
    redirect: "manual",
  });
}

async function script(verb, answers) {
  const response = await fetch(`${fake}/_script`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ verb, answers }),
  });
  assert.equal(response.status, 204, `scripting the fake's ${verb}`);
}

// A reservation holding `holds` tries on the fake, reserved, with `metadata`.
async function reserved(holds = 1, metadata = {}) {
  const participants = Array.from({ length: holds }, (_, i) =>
    ({ name: `stock-${i}`, try: { url: `${fake}/holds`, body: { sku: "apple", n: i } } }));
  const created = await call("POST", "/reservations", { timeout_ms: 600000, participants, metadata }, { Prefer: "wait=10" });
  assert.equal(created.status, 200, "every try answered");
  const body = await created.json();
  assert.equal(body.state, "reserved");
  return body.id;
}

// The reservation's state as the API tells it.
async function stateOf(id) {
  const response = await call("GET", `/reservations/${id}`);
  if (response.status === 303) return "confirmed";
  if (response.status === 410) return (await response.json()).state ?? "gone";
  return (await response.json()).state;
}

async function until(what, check) {
  const stop = Date.now() + 15000;
  for (;;) {
    if (await check()) return;
    assert.ok(Date.now() < stop, `waited too long for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function open(page, id) {
  await page.goto(`${base}/ui`);
  await page.locator(`tr[data-id="${id}"]`).click();
  await page.locator("#timeline").waitFor();
}

await test("dashboard-confirms-after-asking", async (page) => {
  const id = await reserved();
  await open(page, id);
  await page.getByRole("button", { name: "Confirm…" }).click();
  await page.locator("#ask[open]").waitFor();
  assert.match(await page.locator("#ask-text").textContent(), /cannot be undone/);
  await page.screenshot({ path: `${artifacts}/dashboard-confirm-asks.png`, fullPage: true });
  // Saying no changes nothing.
  await page.locator("#ask-no").click();
  assert.equal(await stateOf(id), "reserved");
  await page.getByRole("button", { name: "Confirm…" }).click();
  await page.locator("#ask-yes").click();
  await until("confirmed in the API", async () => (await stateOf(id)) === "confirmed");
  await page.locator(`tr[data-id="${id}"] .state.confirmed`).waitFor();
  await page.locator("#detail-head .state.confirmed").waitFor();
  assert.match(await page.locator("#acted").textContent(), /confirm: 202|confirm: 303/);
  // Finished: the deadline no longer matters and is not drawn.
  assert.equal(await page.locator("#timeline .deadline").count(), 0, "no deadline on a finished reservation");
  assert.equal(await page.locator('#facts dd[data-fact="decided"]').textContent().then((t) => /^\d{4}-/.test(t)), true);
  await page.screenshot({ path: `${artifacts}/dashboard-confirmed.png`, fullPage: true });
});

await test("dashboard-cancels-after-asking", async (page) => {
  const id = await reserved();
  await open(page, id);
  await page.getByRole("button", { name: "Cancel…" }).click();
  await page.locator("#ask-yes").click();
  await until("cancelled in the API", async () => (await stateOf(id)) === "cancelled");
  await page.locator("#detail-head .state.cancelled").waitFor();
  await page.screenshot({ path: `${artifacts}/dashboard-cancelled.png`, fullPage: true });
});

await test("dashboard-retries-a-participant-now", async (page) => {
  // The fake asks to be called again in an hour; the operator does not wait.
  await script("confirm", [{ status: 503, retry_after_secs: 3600 }]);
  const id = await reserved();
  assert.equal((await call("POST", `/reservations/${id}/confirm`)).status, 202);
  await open(page, id);
  const retry = page.getByRole("button", { name: "Retry now" });
  await retry.waitFor();
  // The participant's confirm keeps failing: it reads as being confirmed, not as "reserved".
  assert.equal((await page.locator("#lanes tbody tr td").nth(1).textContent()).trim(), "confirming, retrying");
  assert.equal(await page.locator("#timeline circle.retry").count(), 1, "the retry it waits for");
  await page.screenshot({ path: `${artifacts}/dashboard-retry-waiting.png`, fullPage: true });
  await retry.click();
  await until("confirmed in the API", async () => (await stateOf(id)) === "confirmed");
  await page.locator("#detail-head .state.confirmed").waitFor();
  assert.match(await page.locator("#acted").textContent(), /retry participant 0: 202/);
  // The retry that no longer comes is not drawn; the failed call stays, amber (retried).
  assert.equal(await page.locator("#timeline circle.retry").count(), 0, "no stale next-retry mark");
  assert.equal(await page.locator("#timeline circle.call.v-retry").count(), 1);
});

await test("dashboard-forgets-a-conflict-after-asking", async (page) => {
  // One participant's hold is gone at confirm time, the other confirms: a conflict.
  await script("confirm", [{ status: 404 }]);
  const id = await reserved(2);
  assert.equal((await call("POST", `/reservations/${id}/confirm`)).status, 202);
  await until("the conflict", async () => (await stateOf(id)) === "conflict");
  await open(page, id);
  await page.getByRole("button", { name: /Forget/ }).click();
  assert.match(await page.locator("#ask-text").textContent(), /reconciled by hand/);
  await page.locator("#ask-yes").click();
  await until("forgotten in the API", async () => (await call("GET", `/reservations/${id}`)).status === 410);
  await page.locator("#detail-head .state.forgotten").waitFor();
  const colour = (selector) => page.locator(selector).first().evaluate((e) => getComputedStyle(e).color);
  assert.notEqual(await colour("#detail-head .state.forgotten"), await colour("#detail-head code"), "forgotten has a colour of its own");
  await page.screenshot({ path: `${artifacts}/dashboard-forgotten.png`, fullPage: true });
});

await test("dashboard-finds-by-id-and-metadata-and-filters-by-host", async (page) => {
  const order = `order-${Date.now()}`;
  const id = await reserved(1, { order });
  const elsewhere = new Date(Date.now() + 600_000).toISOString();
  const other = await call("POST", "/reservations", {
    participants: [{ name: "elsewhere", link: { uri: "http://10.255.255.1:9/holds/1", expires: elsewhere } }],
    metadata: { order: "unrelated" },
  });
  assert.equal(other.status, 202);
  const otherId = (await other.json()).id;
  await page.goto(`${base}/ui`);
  await page.locator(`tr[data-id="${otherId}"]`).waitFor();

  await page.locator("#search").fill(order);
  const onlyRow = (id) => page.waitForFunction((id) => {
    const rows = [...document.querySelectorAll("#rows tr")];
    return rows.length === 1 && rows[0].dataset.id === id;
  }, id);
  await onlyRow(id);
  // Found as displayed: the id shown whole, and its last characters alone find it too.
  const shown = (await page.locator(`tr[data-id="${id}"] code`).textContent()).trim();
  assert.equal(shown, id, "the list shows the id whole");
  assert.equal(await page.locator('#facts dd[data-fact="metadata order"]').count(), 0, "nothing selected yet");
  await page.locator("#search").fill(shown.slice(-8));
  await onlyRow(id);
  await page.locator("#search").fill("");
  await page.locator("#host").fill(new URL(fake).host);
  // A reservation on another host is hidden; the one on the fake's host stays.
  await page.locator(`tr[data-id="${otherId}"]`).waitFor({ state: "detached" });
  assert.equal(await page.locator(`tr[data-id="${id}"]`).count(), 1);
  await page.locator("#host").fill("");
  await page.locator("#search").fill(otherId);
  await page.locator("#detail-head code").filter({ hasText: otherId }).waitFor();
  await page.screenshot({ path: `${artifacts}/dashboard-search.png`, fullPage: true });
});

// ---- what an operator reads ------------------------------------------------------------

// A reservation held by links nobody answers (they stay reserved until their deadline).
async function held(n) {
  const expires = new Date(Date.now() + 600_000).toISOString();
  const ids = [];
  for (let i = 0; i < n; i++) {
    const created = await call("POST", "/reservations", {
      timeout_ms: 600000, participants: [{ name: "stock", link: { uri: `http://127.0.0.1:9/holds/${i}`, expires } }],
    });
    assert.equal(created.status, 202);
    ids.push((await created.json()).id);
  }
  return ids;
}

await test("dashboard-keeps-the-detail-in-view-below-a-long-list", async (page) => {
  await held(60);
  await page.goto(`${base}/ui`);
  await page.waitForFunction(() => document.querySelectorAll("#rows tr").length === 50);
  const last = page.locator("#rows tr").last();
  const id = await last.getAttribute("data-id");
  await last.scrollIntoViewIfNeeded();
  await last.click();
  await page.locator("#detail-head code").filter({ hasText: id }).waitFor();
  const box = await page.locator("#detail-head").boundingBox();
  assert.ok(box.y >= 0 && box.y + box.height <= 900, `the detail is in view (its top at ${box.y} px)`);
  await page.screenshot({ path: `${artifacts}/dashboard-detail-in-view.png` });
});

await test("dashboard-draws-a-refused-confirm-red-with-legible-labels", async (page) => {
  await script("confirm", [{ status: 409 }]);
  const id = await reserved(2);
  assert.equal((await call("POST", `/reservations/${id}/confirm`)).status, 202);
  await until("the conflict", async () => (await stateOf(id)) === "conflict");
  await open(page, id);
  await page.locator("#detail-head .state.conflict").waitFor();
  const refused = page.locator("#timeline circle.call").filter({ has: page.locator("title", { hasText: /^confirm: .*409/ }) });
  assert.equal(await refused.count(), 1, "the refused confirm");
  assert.equal(await refused.getAttribute("fill"), "var(--bad)", "a refusal is final: red, not retried");
  // Labels and lane names: inside the drawing, none over another.
  const boxes = await page.locator("#timeline").evaluate((svg) => {
    const box = (e) => { const b = e.getBBox(); return { x: b.x, y: b.y, w: b.width, h: b.height, text: e.textContent }; };
    return { width: svg.viewBox.baseVal.width, labels: [...svg.querySelectorAll("text.change-label")].map(box),
             lanes: [...svg.querySelectorAll("text.lane, text.lane-state")].map(box) };
  });
  assert.ok(boxes.labels.length >= 3, "trying, reserved, confirming, conflict");
  for (const [i, a] of boxes.labels.entries()) {
    assert.ok(a.x >= 0 && a.x + a.w <= boxes.width, `"${a.text}" inside the drawing`);
    for (const b of boxes.labels.slice(i + 1)) {
      const apart = a.x + a.w <= b.x || b.x + b.w <= a.x || a.y + a.h <= b.y || b.y + b.h <= a.y;
      assert.ok(apart, `"${a.text}" and "${b.text}" do not overlap`);
    }
  }
  for (const lane of boxes.lanes) assert.ok(lane.x + lane.w <= 130, `"${lane.text}" ends before the lanes`);
  await page.screenshot({ path: `${artifacts}/dashboard-conflict.png`, fullPage: true });
});

await test("dashboard-counts-every-call-and-pages-them-and-tells-why", async (page) => {
  // A refused try: the reservation is cancelled, its participant tried once.
  await script("try", [{ status: 409 }]);
  const refused = await call("POST", "/reservations", {
    timeout_ms: 600000, participants: [{ name: "seats", try: { url: `${fake}/holds`, body: { seat: "7C" } } }],
    metadata: { order: "A-17" },
  }, { Prefer: "wait=10" });
  const { id } = await refused.json();
  await until("cancelled", async () => (await stateOf(id)) === "cancelled");
  await open(page, id);
  await page.locator("#detail-head .state.cancelled").waitFor();
  const lane = page.locator("#lanes tbody tr").first().locator("td");
  assert.equal((await lane.nth(2).textContent()).trim(), "1", "its try is counted");
  assert.match(await lane.nth(0).textContent(), new RegExp(`${new URL(fake).host}/holds`), "where it is called");
  assert.match(await lane.nth(3).textContent(), /409/, "what it answered");
  assert.equal(await page.locator('#facts dd[data-fact="reason"]').textContent(), "try_failed");
  assert.equal(await page.locator('#facts dd[data-fact="metadata order"]').textContent(), "A-17");
  assert.match(await page.locator('#facts dd[data-fact="created"]').textContent(), /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$/);

  // Twelve tries: the calls table pages them, ten at a time.
  const many = await reserved(12);
  await open(page, many);
  await page.locator("#calls-pager").filter({ hasText: "calls 1–10 of 12" }).waitFor();
  assert.equal(await page.locator("#calls tbody tr").count(), 10);
  await page.locator("#calls-older").click();
  await page.locator("#calls-pager").filter({ hasText: "calls 11–12 of 12" }).waitFor();
  assert.equal(await page.locator("#calls tbody tr").count(), 2);
  await page.screenshot({ path: `${artifacts}/dashboard-calls-paged.png`, fullPage: true });
});

await test("dashboard-keeps-a-selection-across-refreshes", async (page) => {
  const [id] = await held(1);
  await open(page, id);
  await page.locator("#detail-head code").filter({ hasText: id }).waitFor();
  const ticks = Number(await page.evaluate(() => document.body.dataset.ticks));
  await page.evaluate(() => {
    const range = document.createRange();
    range.selectNodeContents(document.querySelector("#detail-head code"));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
  });
  // Two periodic refreshes later, the selection is still there to copy.
  await page.waitForFunction((t) => Number(document.body.dataset.ticks) >= t + 2, ticks, { timeout: 10000 });
  assert.equal(await page.evaluate(() => getSelection().toString()), id);
  assert.equal(await page.locator("#status").textContent(), "paused while text is selected");
  await page.evaluate(() => getSelection().removeAllRanges());
  await page.locator("#status").filter({ hasText: /^updated / }).waitFor();
});

await test("dashboard-shows-every-time-in-one-format-with-its-zone", async (page) => {
  const [id] = await held(1);
  await open(page, id);
  const times = async () => [
    ...(await page.locator("#rows .at").allTextContents()),
    ...(await page.locator("#rows .activity").allTextContents()).flatMap((t) => t.match(/\d{4}-\d\d-\d\d[ T][^a-z]*?(UTC|GMT\S*|Z)\b/g) ?? []),
    ...(await page.locator("#facts dd[data-fact=created], #facts dd[data-fact=deadline]").allTextContents()),
    (await page.locator("#status").textContent()).replace(/^updated /, ""),
  ];
  const all = (re) => async () => (await times()).every((t) => re.test(t));
  const utc = /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$/;
  await until("UTC everywhere", all(utc));
  await page.locator("#zone").click();
  // This browser runs in Tokyo: local times say so.
  await until("local everywhere", all(/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d GMT\+9$/));
  assert.match(await page.locator("#zone").textContent(), /GMT\+9/);
  await page.screenshot({ path: `${artifacts}/dashboard-local-times.png`, fullPage: true });
  await page.locator("#zone").click();
  await until("UTC again", all(utc));
}, { timezoneId: "Asia/Tokyo" });

// ---- beyond one reservation --------------------------------------------------------------

// `n` reservations over links nobody answers, tagged with `metadata`, made 20 at a time.
async function bulk(n, metadata) {
  const expires = new Date(Date.now() + 600_000).toISOString();
  const ids = [];
  for (let i = 0; i < n; i += 20) {
    const batch = await Promise.all(Array.from({ length: Math.min(20, n - i) }, (_, k) => call("POST", "/reservations", {
      timeout_ms: 600000, participants: [{ name: "stock", link: { uri: `http://127.0.0.1:9/holds/${i + k}`, expires } }], metadata,
    })));
    for (const r of batch) {
      assert.equal(r.status, 202);
      ids.push((await r.json()).id);
    }
  }
  return ids;
}

const countOf = (page, state) => page.locator(`.count[data-state="${state}"] b`).textContent();

await test("dashboard-pages-to-the-oldest-of-2000-with-totals-that-follow-the-filters", async (page) => {
  const tag = `bulk-${Date.now()}`;
  const ids = await bulk(2000, { batch: tag });
  for (const id of ids.slice(0, 5)) assert.equal((await call("POST", `/reservations/${id}/cancel`)).status, 202);
  await page.goto(`${base}/ui`);
  await page.locator("#search").fill(tag);
  await until("totals of the filtered reservations", async () => (await countOf(page, "")) === "2000");
  assert.equal(await countOf(page, "reserved"), "1995");
  assert.equal(await countOf(page, "cancelling"), "5");
  // Page by page down to the oldest.
  for (let k = 1; k < 40; k++) {
    await page.locator("#older").click();
    await page.locator("#shown").filter({ hasText: `${k * 50 + 1}–${k * 50 + 50}` }).waitFor();
  }
  assert.equal(await page.locator("#older").isDisabled(), true, "nothing older");
  const oldest = [...ids].sort()[0];
  assert.equal(await page.locator(`tr[data-id="${oldest}"]`).count(), 1, "the oldest is on the last page");
  await page.locator("#newer").click();
  await page.locator("#shown").filter({ hasText: "1901–1950" }).waitFor();
  await page.screenshot({ path: `${artifacts}/dashboard-last-pages.png` });
  // Another filter, other totals.
  await page.locator("#host").fill("nowhere.invalid");
  await until("totals of nothing", async () => (await countOf(page, "")) === "0");
});

await test("dashboard-shows-the-stuck-with-how-long-and-why-and-a-link-to-one", async (page) => {
  const [id, other] = await bulk(2, {});
  assert.equal((await call("POST", `/reservations/${id}/confirm`)).status, 202);
  await page.goto(`${base}/ui`);
  await until("counted as stuck", async () => Number(await countOf(page, "stuck")) >= 1);
  await page.locator('.count[data-state="stuck"]').click();
  const row = page.locator(`tr[data-id="${id}"]`);
  // Drawn by the stuck view (the row may be on screen already, from the list before).
  await row.locator(".stuck-for").waitFor();
  assert.match(await row.locator(".activity").textContent(), /^stuck \d+ s .*cannot connect/);
  assert.equal(await page.locator(`tr[data-id="${other}"]`).count(), 0, "an undecided one is not stuck");
  await page.screenshot({ path: `${artifacts}/dashboard-stuck.png`, fullPage: true });
  // The address names the reservation shown: a link one operator sends another.
  await row.click();
  await page.locator("#detail-head code").filter({ hasText: id }).waitFor();
  assert.equal(new URL(page.url()).hash, `#${id}`);
  const colleague = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  try {
    await colleague.goto(page.url());
    await colleague.locator("#detail-head code").filter({ hasText: id }).waitFor();
  } finally {
    await colleague.close();
  }
});

await test("dashboard-filters-by-time-range", async (page) => {
  const tag = `range-${Date.now()}`;
  const [older] = await bulk(1, { batch: tag });
  // The next whole second, then one more reservation.
  const second = Math.ceil(Date.now() / 1000) * 1000;
  await until("the next second", async () => Date.now() >= second);
  const [newer] = await bulk(1, { batch: tag });
  const typed = new Date(second).toISOString().slice(0, 19); // UTC, as the dashboard shows
  await page.goto(`${base}/ui`);
  await page.locator("#search").fill(tag);
  await page.locator(`tr[data-id="${older}"]`).waitFor();
  await page.locator("#from").fill(typed);
  await page.locator(`tr[data-id="${older}"]`).waitFor({ state: "detached" });
  assert.equal(await page.locator(`tr[data-id="${newer}"]`).count(), 1);
  await page.locator("#from").fill("");
  await page.locator("#to").fill(typed);
  await page.locator(`tr[data-id="${newer}"]`).waitFor({ state: "detached" });
  assert.equal(await page.locator(`tr[data-id="${older}"]`).count(), 1);
  await page.screenshot({ path: `${artifacts}/dashboard-time-range.png`, fullPage: true });
});

await test("dashboard-retries-every-participant-waiting-on-a-host-after-asking", async (page) => {
  await script("confirm", [{ status: 503, retry_after_secs: 3600 }, { status: 503, retry_after_secs: 3600 }]);
  const ids = [await reserved(), await reserved()];
  for (const id of ids) assert.equal((await call("POST", `/reservations/${id}/confirm`)).status, 202);
  await until("both waiting", async () => {
    const views = await Promise.all(ids.map(async (id) => (await call("GET", `/reservations/${id}`)).json()));
    return views.every((v) => v.participants[0].next_attempt_at);
  });
  await page.goto(`${base}/ui`);
  await page.locator("#host").fill(new URL(fake).host);
  await page.locator("#retry-host").click();
  assert.match(await page.locator("#ask-text").textContent(), /every participant on/);
  await page.locator("#ask-yes").click();
  for (const id of ids) await until("confirmed in the API", async () => (await stateOf(id)) === "confirmed");
  const retried = Number((await page.locator("#acted-host").textContent()).match(/retried (\d+)/)[1]);
  assert.ok(retried >= 2, `${retried} retried`);
});

// ---- who may do what ---------------------------------------------------------------------

const rolesBase = process.env.TCC_ROLES_BASE;
assert.ok(rolesBase, "TCC_ROLES_BASE names the coordinator with a tokens file");
const VIEWER = "viewer-secret-0123456789", OPERATOR = "operator-secret-0123456";

// Opens the dashboard of the coordinator with roles, signed in with `secret`, on `id`.
async function signedIn(page, secret, id) {
  await page.goto(`${rolesBase}/ui`);
  await page.locator("#token.shown").waitFor();
  await page.locator("#token-input").fill(secret);
  await page.locator("#token button").click();
  await page.locator(`tr[data-id="${id}"]`).click();
  await page.locator("#detail-head code").filter({ hasText: id }).waitFor();
}

await test("dashboard-shows-only-what-the-token-may-do-and-who-acted", async (page) => {
  const expires = new Date(Date.now() + 600_000).toISOString();
  const created = await fetch(`${rolesBase}/reservations`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${OPERATOR}` },
    body: JSON.stringify({ participants: [{ name: "stock", link: { uri: `${fake}/holds/none`, expires } }] }),
  });
  assert.equal(created.status, 202);
  const { id } = await created.json();

  // A viewer sees the reservation and no action.
  await signedIn(page, VIEWER, id);
  assert.equal(await page.locator("#who").textContent(), "grafana (viewer)");
  assert.equal(await page.locator("#actions button").count(), 0, "a viewer is offered no action");
  await page.screenshot({ path: `${artifacts}/dashboard-viewer.png`, fullPage: true });

  // An operator cancels, and the cancel is on the record with the operator's name.
  const operator = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  try {
    await signedIn(operator, OPERATOR, id);
    assert.equal(await operator.locator("#who").textContent(), "alice (operator)");
    await operator.getByRole("button", { name: "Cancel…" }).click();
    await operator.locator("#ask-yes").click();
    await operator.locator("#detail-head .state.cancelling, #detail-head .state.cancelled").first().waitFor();
    await operator.locator("#timeline path.acted").waitFor();
    assert.match(await operator.locator("#timeline path.acted title").textContent(), /^alice: cancel at \d{4}-/);
    assert.match(await operator.locator('#facts dd[data-fact="operator cancel"]').textContent(), /^alice at \d{4}-/);
    assert.equal(await operator.locator('#facts dd[data-fact="reason"]').textContent(), "operator");
    await operator.screenshot({ path: `${artifacts}/dashboard-operator-acted.png`, fullPage: true });
  } finally {
    await operator.close();
  }
});

await browser.close();
process.exit(failed ? 1 : 0);
