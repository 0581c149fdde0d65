// Browser test of the Sentinella console in headless Chromium (Debian's /usr/bin/chromium,
// driven by playwright-core; no browser is downloaded). Started by tests/tests/console.rs,
// which runs the whole system, provisions two COTs and talks to this script over stdout:
//
//   this script prints  "CONSOLE_TEST READY_FOR_ALERT"  once nurse A's inbox is live;
//   the Rust side then publishes a hypertensive crisis from patient A's simulated cuff.
//
// Environment:
//   SENTINELLA_URL                       base URL of the API/console (http://127.0.0.1:port)
//   NURSE_A_USER, NURSE_A_PASSWORD       a nurse of COT A
//   NURSE_B_USER, NURSE_B_PASSWORD       a nurse of COT B (sees none of COT A)
//   PHYSICIAN_A_USER, PHYSICIAN_A_PASSWORD  a physician of COT A (edits the care plan)
//   MANAGER_A_USER, MANAGER_A_PASSWORD   a device manager of COT A (revokes the cuff)
//   DEVICE_A_ID                          COT A's patient's cuff
//   PATIENT_A_ID, PATIENT_A_NAME         COT A's patient (the crisis)
//   PATIENT_B_ID, PATIENT_B_NAME         COT B's patient
//   ARTIFACTS                            where screenshots go (default target/browser-artifacts)
//   CHROMIUM                             the browser (default /usr/bin/chromium)
//
// Exits 0 when every check passed, 1 with the failed check otherwise; prints "N passed,
// 0 failed" at the end.
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
const A = { user: env('NURSE_A_USER'), password: env('NURSE_A_PASSWORD') };
const B = { user: env('NURSE_B_USER'), password: env('NURSE_B_PASSWORD') };
const PHYSICIAN_A = { user: env('PHYSICIAN_A_USER'), password: env('PHYSICIAN_A_PASSWORD') };
const MANAGER_A = { user: env('MANAGER_A_USER'), password: env('MANAGER_A_PASSWORD') };
const DEVICE_A = env('DEVICE_A_ID');
const PATIENT_A = { id: env('PATIENT_A_ID'), name: env('PATIENT_A_NAME') };
const PATIENT_B = { id: env('PATIENT_B_ID'), name: env('PATIENT_B_NAME') };
const ARTIFACTS = resolve(env('ARTIFACTS', 'target/browser-artifacts'));
const CHROMIUM = env('CHROMIUM', '/usr/bin/chromium');
const TIMEOUT = 30_000;

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
console.log(`screenshots: ${ARTIFACTS}`);

const profile = mkdtempSync(join(tmpdir(), 'sentinella-chromium-'));
// A persistent context on a fresh, empty profile directory: nothing from another run.
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM,
  headless: true,
  viewport: { width: 1280, height: 900 },
  locale: 'it-IT',
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});

const problems = [];
async function newPage() {
  // A new tab: its sessionStorage (where the console keeps the token) starts empty.
  const page = await browser.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    // A CSP violation or a script error shows up as a console error; failed API calls
    // (a 404 the test provokes) are reported by the network layer as errors too.
    if (m.type() === 'error' && !/status of 40[134]/.test(m.text())) problems.push(`console: ${m.text()}`);
  });
  page.on('request', (r) => {
    if (!r.url().startsWith(BASE) && !r.url().startsWith('data:')) problems.push(`external request: ${r.url()}`);
  });
  return { page };
}

async function shot(page, name) {
  const path = join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  console.log(`screenshot ${path}`);
}

async function login(page, who) {
  await page.goto(`${BASE}/`);
  await page.waitForURL(/\/console\//);
  await page.locator('#login-username').waitFor();
  check((await page.getAttribute('html', 'lang')) === 'it', 'the console opens in Italian');
  check((await page.locator('label[for="login-username"]').textContent()) === 'Nome utente', 'login fields are labelled');
  // Keyboard only: type, tab to the password, Enter submits.
  await page.locator('#login-username').fill(who.user);
  await page.keyboard.press('Tab');
  await page.keyboard.type(who.password);
  await page.keyboard.press('Enter');
  await page.locator('#inbox-title').waitFor();
  await page.locator('.stream-state.stream-live').waitFor();
  await page.locator('#inbox-count').filter({ hasText: /\d/ }).waitFor();
}

async function wrongPassword(page) {
  await page.goto(`${BASE}/console/`);
  await page.locator('#login-username').fill(A.user);
  await page.locator('#login-password').fill('not-the-password');
  await page.locator('form.login button[type=submit]').click();
  await page.locator('#login-error').filter({ hasText: /non validi/ }).waitFor();
  check(true, 'a wrong password is refused with a message');
}

async function nurseA() {
  const { page } = await newPage();
  await wrongPassword(page);
  await login(page, A);
  await shot(page, '01-nurse-a-inbox');
  const cardSelector = `.alert-card[data-patient-id="${PATIENT_A.id}"]`;
  check((await page.locator(cardSelector).count()) === 0, 'no alert for patient A before the crisis');

  // Keyboard: the first Tab reaches the skip link, which moves focus to the content.
  await page.reload();
  await page.locator('.stream-state.stream-live').waitFor();
  await page.locator('#inbox-count').filter({ hasText: /\d/ }).waitFor();
  await page.keyboard.press('Tab');
  check((await page.evaluate(() => document.activeElement?.id)) === 'skip-link', 'the first Tab reaches the skip link');
  await page.keyboard.press('Enter');
  check((await page.evaluate(() => document.activeElement?.id)) === 'main', 'the skip link moves focus to the content');

  // Mark the document: a reload would lose the mark.
  await page.evaluate(() => {
    window.__sentinellaNoReload = true;
  });
  let navigations = 0;
  page.on('framenavigated', (f) => {
    if (f === page.mainFrame() && !f.url().includes('#')) navigations += 1;
  });
  console.log('CONSOLE_TEST READY_FOR_ALERT');

  const card = page.locator(cardSelector).first();
  await card.waitFor({ timeout: 60_000 });
  check(await page.evaluate(() => window.__sentinellaNoReload === true), 'the alert appeared without a reload');
  check(navigations === 0, 'no navigation happened while waiting');
  check((await card.getAttribute('data-workflow')) === 'new', 'the new alert is in state new');
  const severity = await card.getAttribute('data-severity');
  check(['high', 'critical'].includes(severity), `the crisis alert is high or critical (${severity})`);
  check(/CRITICO|ALTO/i.test(await card.locator('.sev').first().textContent()), 'severity is shown in words, not colour alone');
  await page.locator('#announcer, #alert-announcer').filter({ hasText: /Allarme/ }).first().waitFor();
  check(true, 'the new alert was announced in a live region');
  await shot(page, '02-nurse-a-alert-live');

  // Acknowledge, assign to me, comment, resolve with an outcome.
  // Acknowledge from the keyboard.
  await card.locator('button[data-action=ack]').focus();
  await page.keyboard.press('Enter');
  await page.locator(`${cardSelector}[data-workflow="acknowledged"]`).waitFor();
  check(true, 'acknowledged');
  await card.locator('button[data-action=assign]').click();
  await card.locator('.assignee').filter({ hasText: A.user }).waitFor();
  check(true, 'assigned to me');
  await card.locator('details:has(form[data-action=comment]) summary').click();
  await card.locator('form[data-action=comment] textarea').fill('Chiamata la paziente, ripete la misura');
  await card.locator('form[data-action=comment] button[type=submit]').click();
  await card.locator('.action-status').filter({ hasText: 'Commento aggiunto' }).waitFor();
  check(true, 'commented');
  // Log the calls: not reached (back in the queue, with a retry time), then reached. A high
  // alert is resolved only with an intervention on record.
  await card.locator('details[data-action=intervene-details] summary').click();
  const contact = card.locator('form[data-action=intervene]');
  await contact.locator('select').first().selectOption('phone_call');
  await contact.locator('select').nth(1).selectOption('not_reached');
  await contact.locator('textarea').fill('Segreteria telefonica');
  await contact.locator('button[type=submit]').click();
  await page.locator(`${cardSelector}[data-workflow="new"]`).waitFor();
  await card.locator('dd.retry').waitFor();
  check(true, 'a call not reached puts the alert back in the queue with a retry time');
  await contact.locator('select').nth(1).selectOption('reached');
  await contact.locator('textarea').fill('Paziente a riposo, ripete la misura');
  await contact.locator('button[type=submit]').click();
  await card.locator('dd.interventions').filter({ hasText: '2' }).waitFor();
  check((await card.locator('dd.retry').count()) === 0, 'a call reached clears the retry');
  await card.locator('details[data-action=resolve-details] summary').click();
  await card.locator('form[data-action=resolve] select').selectOption('called_patient');
  await card.locator('form[data-action=resolve] textarea').fill('Rientrata dopo riposo');
  await shot(page, '03-nurse-a-resolving');
  await card.locator('form[data-action=resolve] button[type=submit]').click();
  await page.locator(cardSelector).waitFor({ state: 'detached' });
  check(true, 'resolved with an outcome: the alert left the queue');

  // The patient page: charts with threshold lines, readings, alert history, care plan.
  await page.locator('#nav a[data-route=patients]').click();
  await page.locator(`#patient-table tr[data-patient-id="${PATIENT_A.id}"] a`).click();
  await page.locator('#patient-name').filter({ hasText: PATIENT_A.name }).waitFor();
  await page.locator('#charts[aria-busy="false"]').waitFor();
  const bpChart = page.locator('figure.chart-figure').first();
  const thresholds = bpChart.locator('svg.chart g.threshold');
  check((await thresholds.count()) >= 2, `the blood-pressure chart draws the care-plan thresholds (${await thresholds.count()})`);
  check((await bpChart.locator('g.threshold[data-metric="systolic"][data-value="180"]').count()) === 1, 'systolic ≥ 180 threshold line is drawn');
  check((await bpChart.locator('g.series-systolic circle').count()) >= 2, 'the chart shows the readings');
  await page.locator(`#patient-alert-table tr[data-workflow="resolved"]`).first().waitFor();
  check(
    /telefonicamente/.test(await page.locator('#patient-alert-table tr[data-workflow="resolved"]').first().textContent()),
    'the alert history shows the resolved alert with its outcome',
  );
  check((await page.locator('#readings-table tbody tr').count()) >= 2, 'the readings table lists the readings');
  check((await page.locator('#readings-table [data-flag="bp_cuff_loose"]').count()) >= 1, 'status flags have human labels');
  await page.locator('#plan-current').waitFor();
  check((await page.locator('#plan-editor').count()) === 0, 'a nurse gets no care-plan editor');
  for (const range of ['24h', '30d', '90d', '7d']) {
    await page.locator(`button.range[data-range="${range}"]`).click();
    await page.locator(`button.range[data-range="${range}"][aria-pressed="true"]`).waitFor();
    await page.locator('#charts[aria-busy="false"]').waitFor();
  }
  check(true, 'the range selector redraws the charts');
  await shot(page, '04-nurse-a-patient');

  // English on request, remembered.
  await page.locator('#lang-toggle').click();
  await page.locator('html[lang="en"]').waitFor();
  await page.locator('#trends-title').filter({ hasText: 'Trends' }).waitFor();
  check(true, 'English is one click away');
  await shot(page, '05-nurse-a-patient-en');
  await page.locator('#lang-toggle').click();
  await page.locator('html[lang="it"]').waitFor();

  // The device page.
  await page.locator('a[href^="#/devices/"]').first().click();
  await page.locator('#device-facts').waitFor();
  check(/Batteria/.test(await page.locator('#device-facts').textContent()), 'the device page shows battery, firmware, last seen');
  await shot(page, '06-nurse-a-device');

  await page.locator('#logout').click();
  await page.locator('#login-username').waitFor();
  check(true, 'logged out');
  await page.close();
}

async function nurseB() {
  const { page } = await newPage();
  await login(page, B);
  await page.locator(`.alert-card[data-patient-id="${PATIENT_B.id}"]`).first().waitFor();
  check(true, "nurse B's inbox shows COT B's own alert");
  // Filters: only mine hides the unassigned alert; clearing it brings it back.
  await page.getByLabel('Solo assegnati a me').check();
  await page.locator('#inbox-empty').filter({ hasText: 'Nessun allarme con questi filtri' }).waitFor();
  check((await page.locator('.alert-card').count()) === 0, 'the "only mine" filter hides alerts assigned to nobody');
  await page.getByLabel('Solo assegnati a me').uncheck();
  await page.getByLabel('Gravità minima').selectOption('critical');
  await page.locator(`.alert-card[data-patient-id="${PATIENT_B.id}"]`).first().waitFor();
  check(true, 'the minimum-severity filter keeps a critical alert');
  await page.waitForTimeout(1000);
  const body = await page.locator('main').textContent();
  check((await page.locator(`.alert-card[data-patient-id="${PATIENT_A.id}"]`).count()) === 0, "nurse B's inbox has none of COT A's alerts");
  check(!body.includes(PATIENT_A.name), "nurse B's inbox does not name COT A's patient");
  await shot(page, '08-nurse-b-inbox');
  await page.locator('#nav a[data-route=patients]').click();
  await page.locator('#patient-table, #patients-empty').first().waitFor();
  check((await page.locator(`#patient-table tr[data-patient-id="${PATIENT_A.id}"]`).count()) === 0, "nurse B's patient list has no COT A patient");
  check((await page.locator(`#patient-table tr[data-patient-id="${PATIENT_B.id}"]`).count()) === 1, "nurse B's patient list has COT B's patient");
  await page.goto(`${BASE}/console/#/patients/${PATIENT_A.id}`);
  await page.locator('.error-page[data-status="404"]').waitFor();
  check(!(await page.locator('main').textContent()).includes(PATIENT_A.name), "COT A's patient URL shows not found to nurse B");
  await shot(page, '09-nurse-b-other-cot-patient');
  await page.close();
}

async function physicianA() {
  const { page } = await newPage();
  await login(page, PHYSICIAN_A);
  await page.goto(`${BASE}/console/#/patients/${PATIENT_A.id}`);
  await page.locator('#patient-name').filter({ hasText: PATIENT_A.name }).waitFor();
  const editor = page.locator('#plan-editor');
  for (const [value, reason] of [['175', 'Soglia personalizzata dal cardiologo'], ['170', 'Controllo più stretto']]) {
    await page.locator('.plan-edit summary').click();
    await editor.locator('input[data-rule="bp-high"][data-severity="high"][data-metric="systolic"]').fill(value);
    await editor.locator('#plan-preview tbody tr').first().waitFor();
    check((await editor.locator('#plan-preview tbody tr').count()) === 1, `the editor shows the one change before saving (→ ${value})`);
    await editor.locator('textarea').fill(reason);
    await editor.locator('button[type=submit]').click();
    await page.locator('#plan-current[data-version]').filter({ hasText: reason }).waitFor();
  }
  check((await page.locator('#plan-versions tbody tr').count()) === 2, 'each save made a new care-plan version');
  await page.locator('.diff-form button[type=submit]').click();
  const diff = page.locator('#plan-diff table.diff tbody tr');
  await diff.first().waitFor();
  check((await diff.count()) === 1 && /175/.test(await diff.first().textContent()) && /170/.test(await diff.first().textContent()), 'the versions diff shows what changed (175 → 170)');
  await page.locator('#charts[aria-busy="false"]').waitFor();
  await page.locator('figure.chart-figure g.threshold[data-metric="systolic"][data-value="170"]').first().waitFor();
  check(true, 'the chart draws the new threshold');
  await shot(page, '07-physician-care-plan');
  await page.locator('#logout').click();
  await page.locator('#login-username').waitFor();
  await page.close();
}

async function deviceManagerA() {
  const { page } = await newPage();
  await page.goto(`${BASE}/console/`);
  await page.locator('#login-username').fill(MANAGER_A.user);
  await page.locator('#login-password').fill(MANAGER_A.password);
  await page.locator('form.login button[type=submit]').click();
  // No clinical data for device managers: they start at the patient registry.
  await page.locator('#patient-table').waitFor();
  await page.goto(`${BASE}/console/#/devices/${DEVICE_A}`);
  await page.locator('#device-title').filter({ hasText: DEVICE_A }).waitFor();
  await page.locator('#device-revoke').click();
  const confirm = page.locator('#device-revoke-confirm');
  await confirm.waitFor();
  check(await confirm.evaluate((el) => el === document.activeElement), 'the revocation asks for confirmation and focuses it');
  await confirm.click();
  await page.locator('#device-facts').filter({ hasText: /revocato il/ }).waitFor();
  check((await page.locator('#device-revoke').count()) === 0, 'a device manager revokes the device from its page; it shows as revoked');
  await shot(page, '10-device-manager-revoked');
  await page.close();
}

let failed = 0;
try {
  await nurseA();
  await physicianA();
  await nurseB();
  await deviceManagerA();
  check(problems.length === 0, `no script errors, CSP violations or external requests${problems.length ? `: ${problems.join(' | ')}` : ''}`);
} catch (e) {
  failed = 1;
  console.error(`FAILED: ${e.message}`);
  if (problems.length) console.error(`browser problems: ${problems.join(' | ')}`);
  for (const [i, p] of browser.pages().entries()) {
    const path = join(ARTIFACTS, `failure-${i}.png`);
    await p.screenshot({ path, fullPage: true }).catch(() => {});
    console.error(`screenshot ${path}`);
  }
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(`console: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
