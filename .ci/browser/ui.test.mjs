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

async function test(name, body) {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
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

await browser.close();
process.exit(failed ? 1 : 0);
