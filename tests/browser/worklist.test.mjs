// Browser test of the COT worklist in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core). Started by tests/tests/console.rs, which runs the whole system and opens
// 60 alerts over 20 patients of one COT (30 low, 15 medium, 10 high, 5 critical).
//
// A nurse works them from the table by keyboard: sort, filter, select the low alerts and
// acknowledge them in bulk, open one, log a call not reached (the alert is re-queued with a
// retry time), log a call reached and resolve it; then downloads the telemonitoring report of
// the patient, which the Rust side turns into PNG pages with pdftoppm and checks.
//
// Environment:
//   SENTINELLA_URL                 base URL of the API/console
//   NURSE_USER, NURSE_PASSWORD     the nurse
//   PATIENT_ID, PATIENT_NAME       the patient whose high alert is worked and reported on
//   WORK_RULE                      that alert's rule id
//   ARTIFACTS                      screenshots and the downloaded PDF (worklist-report.pdf)
//   CHROMIUM                       the browser (default /usr/bin/chromium)
//
// Prints "N passed, M failed" at the end; exits 1 on the first failed check.
import { mkdirSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { chromium } from 'playwright-core';

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined || v === '') throw new Error(`environment variable ${name} is required`);
  return v;
};

const BASE = env('SENTINELLA_URL');
const NURSE = { user: env('NURSE_USER'), password: env('NURSE_PASSWORD') };
const PATIENT = { id: env('PATIENT_ID'), name: env('PATIENT_NAME') };
const WORK_RULE = env('WORK_RULE');
const ARTIFACTS = resolve(env('ARTIFACTS', 'target/browser-artifacts'));
const CHROMIUM = env('CHROMIUM', '/usr/bin/chromium');

let passed = 0;
function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
  passed += 1;
  console.log(`ok - ${what}`);
}

if (!existsSync(CHROMIUM)) {
  console.error(`Chromium not found at ${CHROMIUM}: install it (apt-get install -y chromium) or set CHROMIUM`);
  process.exit(1);
}
mkdirSync(ARTIFACTS, { recursive: true });

const profile = mkdtempSync(join(tmpdir(), 'sentinella-chromium-'));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM,
  headless: true,
  viewport: { width: 1400, height: 1000 },
  locale: 'it-IT',
  acceptDownloads: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const problems = [];

async function shot(page, name) {
  const path = join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  console.log(`screenshot ${path}`);
}

const rows = (page) => page.locator('#worklist-table tbody tr');

async function rowCount(page) {
  return rows(page).count();
}

/** The severity counts shown on top, as numbers. */
async function counts(page) {
  const out = {};
  for (const s of ['critical', 'high', 'medium', 'low', 'info']) {
    out[s] = Number(await page.locator(`#severity-counts li[data-severity="${s}"] .n`).textContent());
  }
  return out;
}

async function work() {
  const page = await browser.newPage();
  page.setDefaultTimeout(30_000);
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/status of 40[1349]/.test(m.text())) problems.push(`console: ${m.text()}`);
  });

  await page.goto(`${BASE}/console/#/worklist`);
  await page.locator('#login-username').fill(NURSE.user);
  await page.keyboard.press('Tab');
  await page.keyboard.type(NURSE.password);
  await page.keyboard.press('Enter');
  await page.locator('#worklist-title').waitFor();
  await page.locator('.stream-state.stream-live').waitFor();
  await page.waitForFunction(() => document.querySelectorAll('#worklist-table tbody tr').length >= 60);
  const n = await rowCount(page);
  const c = await counts(page);
  check(n >= 60, `the worklist shows the open alerts in one table (${n} rows)`);
  check(c.low === 30 && c.medium === 15 && c.high === 10 && c.critical === 5, `counts per severity are shown: ${JSON.stringify(c)}`);
  check(c.low + c.medium + c.high + c.critical + c.info === n, 'the counts add up to the rows');
  check((await rows(page).first().getAttribute('data-severity')) === 'critical', 'most urgent first');
  await shot(page, 'worklist-01-loaded');

  // Keyboard: the table has focus; j/k move, 4 sorts by patient, 1 back by severity.
  await page.waitForFunction(() => document.activeElement?.closest('#worklist-table'));
  check(true, 'the table takes the keyboard focus');
  await page.keyboard.press('j');
  await page.keyboard.press('j');
  const second = await page.evaluate(() => document.activeElement?.closest('tr')?.dataset.alertId);
  check(second === (await rows(page).nth(2).getAttribute('data-alert-id')), 'j moves down the rows');
  await page.keyboard.press('k');
  check((await page.evaluate(() => document.activeElement?.closest('tr')?.dataset.alertId)) === (await rows(page).nth(1).getAttribute('data-alert-id')), 'k moves up');
  await page.keyboard.press('4');
  await page.locator('th[data-sort-col="patient"][aria-sort="ascending"]').waitFor();
  const names = await page.locator('#worklist-table tbody td.patient').allTextContents();
  check(names.every((v, i) => i === 0 || names[i - 1].localeCompare(v) <= 0), 'sorted by patient');
  await page.keyboard.press('4');
  await page.locator('th[data-sort-col="patient"][aria-sort="descending"]').waitFor();
  check(true, 'the same key again reverses the order');
  await page.keyboard.press('2');
  await page.locator('th[data-sort-col="due"][aria-sort="ascending"]').waitFor();
  const due = await page.locator('#worklist-table tbody td.due time').evaluateAll((ts) => ts.map((t) => t.getAttribute('datetime')));
  check(due.every((v, i) => i === 0 || due[i - 1] <= v), 'sorted by due time');
  await page.keyboard.press('1');
  await page.locator('th[data-sort-col="severity"][aria-sort="ascending"]').waitFor();
  check(true, 'sorted by severity again');

  // Filters: by condition, by rule.
  await page.locator('select[data-filter="condition"]').selectOption('copd');
  const copd = await rowCount(page);
  check(copd > 0 && copd < n, `the condition filter narrows the table (${copd} of ${n})`);
  await page.locator('select[data-filter="condition"]').selectOption('');
  await page.locator('select[data-filter="rule"]').selectOption('missed-bp-0');
  check((await rowCount(page)) === 20 && (await page.locator('#worklist-table tbody tr[data-severity="low"]').count()) === 20, 'the rule filter shows that rule only');
  await page.locator('select[data-filter="rule"]').selectOption('');
  await page.locator('select[data-filter="assignee"]').selectOption('-');
  check((await rowCount(page)) === n, 'nobody is assigned yet');
  await page.locator('select[data-filter="assignee"]').selectOption('');

  // Bulk acknowledgement of the low alerts: L selects them, B acknowledges them.
  await rows(page).first().focus();
  await page.keyboard.press('L');
  check((await page.locator('#worklist-table tbody tr.selected').count()) === 30, 'L selects the 30 low alerts');
  check((await page.locator('#worklist-table tbody tr.selected:not([data-severity="low"])').count()) === 0, 'and nothing else');
  await shot(page, 'worklist-02-lows-selected');
  await page.keyboard.press('B');
  await page.locator('#worklist-status').filter({ hasText: '30' }).waitFor();
  await page.waitForFunction(() => document.querySelectorAll('#worklist-table tbody tr[data-severity="low"][data-workflow="new"]').length === 0);
  check(true, 'B acknowledged the 30 low alerts');
  check((await page.locator('#worklist-table tbody tr[data-severity="high"][data-workflow="new"]').count()) === 10, 'the high alerts are untouched');

  // Open one: the patient's high alert.
  await page.locator('select[data-filter="rule"]').selectOption(WORK_RULE);
  await page.waitForFunction(() => document.querySelectorAll('#worklist-table tbody tr').length === 1);
  await rows(page).first().focus();
  await page.keyboard.press('Enter');
  const card = page.locator('#worklist-detail .alert-card');
  await card.waitFor();
  check((await card.getAttribute('data-patient-id')) === PATIENT.id, 'Enter opens the alert beside the table');
  await card.locator('details[data-action=intervene-details] summary').click();
  const contact = card.locator('form[data-action=intervene]');
  await contact.locator('select').first().selectOption('phone_call');
  await contact.locator('select').nth(1).selectOption('not_reached');
  await contact.locator('textarea').fill('Nessuna risposta al fisso');
  await contact.locator('button[type=submit]').click();
  await card.locator('dd.retry').waitFor();
  await page.locator('#worklist-table tbody tr[data-workflow="new"] .retry-mark').waitFor();
  check(true, 'a call not reached re-queues the alert with a retry time, in the table too');
  await shot(page, 'worklist-03-requeued');
  // Resolving before anything was done is refused by the server; here a call is on record.
  await contact.locator('select').nth(1).selectOption('reached');
  await contact.locator('textarea').fill('Raggiunta al cellulare, ripete la misura');
  await contact.locator('button[type=submit]').click();
  await card.locator('dd.interventions').filter({ hasText: '2' }).waitFor();
  await card.locator('details[data-action=resolve-details] summary').click();
  await card.locator('form[data-action=resolve] select').selectOption('called_patient');
  await card.locator('form[data-action=resolve] button[type=submit]').click();
  await page.waitForFunction(() => document.querySelectorAll('#worklist-table tbody tr').length === 0);
  check(true, 'a call reached, then resolved: the alert left the worklist');
  await page.locator('select[data-filter="rule"]').selectOption('');
  check((await counts(page)).high === 9, 'the counts follow');

  // The report: the patient page, the period, the PDF.
  await page.goto(`${BASE}/console/#/patients/${PATIENT.id}`);
  await page.locator('#patient-name').filter({ hasText: PATIENT.name }).waitFor();
  await page.locator('#intervention-list li').first().waitFor();
  check((await page.locator('#intervention-list li').count()) === 2, 'the patient timeline shows both calls');
  const [download] = await Promise.all([page.waitForEvent('download'), page.locator('#report-download').click()]);
  const pdf = join(ARTIFACTS, 'worklist-report.pdf');
  await download.saveAs(pdf);
  check(existsSync(pdf), 'the report downloads as a PDF');
  await shot(page, 'worklist-04-patient');
  console.log(`CONSOLE_TEST REPORT ${pdf}`);
  await page.close();
}

let failed = 0;
try {
  await work();
  check(problems.length === 0, `no script errors or CSP violations${problems.length ? `: ${problems.join(' | ')}` : ''}`);
} catch (e) {
  failed = 1;
  console.error(`FAILED: ${e.message}`);
  if (problems.length) console.error(`browser problems: ${problems.join(' | ')}`);
  for (const [i, p] of browser.pages().entries()) {
    const path = join(ARTIFACTS, `worklist-failure-${i}.png`);
    await p.screenshot({ path, fullPage: true }).catch(() => {});
    console.error(`screenshot ${path}`);
  }
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(`worklist: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
