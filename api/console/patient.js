// A patient: who they are and their devices, trend charts of blood pressure, SpO2 and
// glucose with the care-plan thresholds, the readings with their status flags, the alert
// history and the care plan with its versions.
import { h, replace } from './dom.js';
import { t, fmtTime, fmtNumber, fmtAgo, ruleTitle } from './i18n.js';
import { get, query } from './api.js';
import { errorBlock, errorMessage, severityBadge, actorName, isClinical } from './ui.js';
import { lineChart, thresholdsFor } from './chart.js';
import { readingFlags } from './flags.js';
import { carePlanSection, effectivePlan } from './careplan.js';
import { contactsSection, interventionsSection, reportSection } from './contacts.js';

const RANGES = [
  ['24h', 24 * 3600e3],
  ['7d', 7 * 24 * 3600e3],
  ['30d', 30 * 24 * 3600e3],
  ['90d', 90 * 24 * 3600e3],
];
const RANGE_KEY = 'sentinella.range';
const TABLE_ROWS = 200;

const CHARTS = [
  {
    kind: 'bp',
    title: 'chart_bp',
    unit: 'mmHg',
    metrics: ['systolic', 'diastolic'],
    series: [
      ['systolic', (r) => r.systolic],
      ['diastolic', (r) => r.diastolic],
    ],
  },
  { kind: 'spo2', title: 'chart_spo2', unit: '%', metrics: ['spo2'], series: [['spo2', (r) => r.spo2]] },
  { kind: 'glucose', title: 'chart_glucose', unit: 'mg/dL', metrics: ['glucose'], series: [['glucose', (r) => r.glucose_mg_dl]] },
];

export function patientPage(root, patientId) {
  let live = true;
  const pid = Number(patientId);
  replace(root, h('p', { text: t('loading') }));
  if (!Number.isInteger(pid) || pid <= 0) {
    replace(root, errorBlock({ status: 404 }));
    return null;
  }
  get(`/patients/${pid}`)
    .then((patient) => live && render(root, patient, () => live))
    .catch((e) => live && replace(root, errorBlock(e)));
  return () => {
    live = false;
  };
}

function conditionName(c) {
  const key = `condition_name_${c}`;
  const text = t(key);
  return text === key ? c : text;
}

function render(root, patient, isLive) {
  let range = sessionStorage.getItem(RANGE_KEY) || '7d';
  if (!RANGES.some(([k]) => k === range)) range = '7d';
  const charts = h('div', { class: 'charts', id: 'charts', 'aria-live': 'polite', 'aria-busy': 'true' });
  const chartsNote = h('p', { class: 'muted charts-note' });
  const readingsBox = h('div', { id: 'readings' });
  const rangeButtons = RANGES.map(([key]) => {
    const b = h('button', { type: 'button', class: 'range', 'aria-pressed': String(key === range), dataset: { range: key }, text: t(`range_${key}`) });
    b.addEventListener('click', () => {
      range = key;
      sessionStorage.setItem(RANGE_KEY, key);
      for (const other of rangeButtons) other.setAttribute('aria-pressed', String(other === b));
      loadTrends();
    });
    return b;
  });
  const alertsBox = h('div', { id: 'patient-alerts' }, h('p', { text: t('loading') }));
  const contactsBox = h('div', { id: 'patient-contacts' }, h('p', { text: t('loading') }));
  const interventionsBox = h('div', { id: 'patient-interventions' }, h('p', { text: t('loading') }));
  const reportBox = h('div', { id: 'patient-report' });
  const planBox = h('div', { id: 'care-plan' }, h('p', { text: t('loading') }));
  let plan = null;

  replace(
    root,
    h(
      'div',
      { class: 'page-head' },
      h('h1', { id: 'patient-name', text: patient.display_name }),
      h('span', { class: 'muted', text: patient.code }),
    ),
    h(
      'dl',
      { class: 'facts facts-wide' },
      h('dt', { text: t('birth_year') }),
      h('dd', { text: patient.birth_year ? String(patient.birth_year) : '—' }),
      h('dt', { text: t('conditions') }),
      h('dd', { text: patient.conditions.map(conditionName).join(', ') || '—' }),
      h('dt', { text: t('devices') }),
      h(
        'dd',
        {},
        patient.devices.length
          ? h(
              'ul',
              { class: 'inline-list' },
              patient.devices.map((d) =>
                h(
                  'li',
                  {},
                  h('a', { href: `#/devices/${encodeURIComponent(d.id)}`, text: `${t(`kind_${d.kind}`)} ${d.id}` }),
                  ` · ${d.online ? t('online') : t('offline')} · ${t('last_seen')} ${fmtAgo(d.last_seen_at)}`,
                  d.battery_pct !== null ? ` · ${t('battery')} ${d.battery_pct}%` : '',
                ),
              ),
            )
          : '—',
      ),
    ),
    !isClinical() && h('p', { class: 'muted', id: 'clinical-hidden', text: t('clinical_not_for_role') }),
    isClinical() && h('section', { 'aria-labelledby': 'contacts-title' }, h('h2', { id: 'contacts-title', text: t('contacts_title') }), contactsBox),
    isClinical() && h(
      'section',
      { 'aria-labelledby': 'trends-title' },
      h('h2', { id: 'trends-title', text: t('trends_title') }),
      h('div', { class: 'range-picker', role: 'group', 'aria-label': t('range_label') }, h('span', { class: 'range-label', 'aria-hidden': 'true', text: t('range_label') }), rangeButtons),
      chartsNote,
      charts,
    ),
    isClinical() && h('section', { 'aria-labelledby': 'readings-title' }, h('h2', { id: 'readings-title', text: t('readings_title') }), readingsBox),
    isClinical() && h('section', { 'aria-labelledby': 'patient-alerts-title' }, h('h2', { id: 'patient-alerts-title', text: t('alert_history_title') }), alertsBox),
    isClinical() && h('section', { 'aria-labelledby': 'report-title' }, h('h2', { id: 'report-title', text: t('report_title') }), reportBox),
    isClinical() && h('section', { 'aria-labelledby': 'interventions-title' }, h('h2', { id: 'interventions-title', text: t('interventions_title') }), interventionsBox),
    isClinical() && h('section', { 'aria-labelledby': 'care-plan-title' }, h('h2', { id: 'care-plan-title', text: t('care_plan_title') }), planBox),
  );
  if (!isClinical()) return;

  async function loadTrends() {
    charts.setAttribute('aria-busy', 'true');
    const span = RANGES.find(([k]) => k === range)[1];
    const to = Date.now();
    const from = to - span;
    try {
      const [{ readings }, current] = await Promise.all([
        get(`/patients/${patient.id}/readings${query({ from: new Date(from).toISOString(), limit: 10000 })}`),
        plan ? Promise.resolve(plan) : effectivePlan(patient),
      ]);
      plan = current;
      if (!isLive()) return;
      replace(
        charts,
        CHARTS.filter(
          (c, i) => i === 0 || patient.devices.some((d) => d.kind === c.kind) || readings.some((r) => r.kind === c.kind),
        ).map((c) => {
          const rows = readings.filter((r) => r.kind === c.kind);
          const series = c.series.map(([key, pick]) => ({
            key,
            label: t(`metric_${key}`),
            points: rows
              .filter((r) => pick(r) !== null && pick(r) !== undefined)
              .map((r) => ({ t: new Date(r.measured_at).getTime(), v: pick(r), title: `${fmtTime(r.measured_at)}: ${fmtNumber(pick(r), 1)} ${c.unit}` })),
          }));
          return lineChart({ title: t(c.title), unit: c.unit, series, thresholds: thresholdsFor(plan?.effective || plan?.plan, c.metrics), from, to });
        }),
      );
      chartsNote.textContent = plan?.fromTemplate ? t('thresholds_from_template', { template: plan.template }) : '';
      charts.setAttribute('aria-busy', 'false');
      renderReadings(readingsBox, readings);
    } catch (e) {
      if (isLive()) replace(charts, h('p', { class: 'form-error', role: 'alert', text: errorMessage(e) }));
    }
  }

  loadTrends();
  loadAlerts(alertsBox, patient, isLive);
  contactsSection(contactsBox, patient, isLive);
  interventionsSection(interventionsBox, patient, isLive);
  reportSection(reportBox, patient);
  carePlanSection(planBox, patient, isLive, (next) => {
    plan = next;
    loadTrends();
  });
}

function valuesOf(r) {
  if (r.kind === 'bp') {
    return `${fmtNumber(r.systolic)}/${fmtNumber(r.diastolic)} mmHg${r.pulse !== null ? ` · ${fmtNumber(r.pulse)} /min` : ''}`;
  }
  if (r.kind === 'spo2') {
    return `${fmtNumber(r.spo2)} %${r.pulse !== null ? ` · ${fmtNumber(r.pulse)} /min` : ''}${r.perfusion_index !== null ? ` · PI ${fmtNumber(r.perfusion_index, 1)} %` : ''}`;
  }
  if (r.kind === 'glucose') {
    const meal = r.glucose_meal ? ` · ${t(`meal_${r.glucose_meal}`)}` : '';
    return `${fmtNumber(r.glucose_mg_dl)} mg/dL${meal}`;
  }
  return '—';
}

function renderReadings(box, readings) {
  const newest = [...readings].reverse().slice(0, TABLE_ROWS);
  if (!newest.length) {
    replace(box, h('p', { class: 'empty', text: t('readings_empty') }));
    return;
  }
  replace(
    box,
    readings.length > TABLE_ROWS && h('p', { class: 'muted', text: t('readings_truncated', { n: TABLE_ROWS, total: readings.length }) }),
    h(
      'div',
      { class: 'table-scroll', tabindex: '0', role: 'region', 'aria-labelledby': 'readings-title' },
      h(
        'table',
        { class: 'data', id: 'readings-table' },
        h('thead', {}, h('tr', {}, [t('measured_at'), t('kind'), t('value'), t('flags'), t('device')].map((c) => h('th', { scope: 'col', text: c })))),
        h(
          'tbody',
          {},
          newest.map((r) => {
            const flags = readingFlags(r);
            return h(
              'tr',
              {},
              h('td', {}, h('time', { datetime: r.measured_at, text: fmtTime(r.measured_at) })),
              h('td', { text: t(`kind_${r.kind}`) }),
              h('td', { text: valuesOf(r) }),
              h('td', {}, flags.length ? h('ul', { class: 'flags' }, flags.map((f) => h('li', { class: `flag flag-${f.tone}`, dataset: { flag: f.key }, text: f.label }))) : h('span', { class: 'muted', text: t('flags_none') })),
              h('td', {}, h('a', { href: `#/devices/${encodeURIComponent(r.device_id)}`, text: `${r.device_id} #${r.seq}` })),
            );
          }),
        ),
      ),
    ),
  );
}

async function loadAlerts(box, patient, isLive) {
  try {
    const { alerts } = await get(`/alerts${query({ patient: patient.id, status: 'new,acknowledged,resolved', limit: 200 })}`);
    if (!isLive()) return;
    alerts.sort((a, b) => b.opened_at.localeCompare(a.opened_at));
    if (!alerts.length) {
      replace(box, h('p', { class: 'empty', text: t('alert_history_empty') }));
      return;
    }
    replace(
      box,
      h(
        'table',
        { class: 'data', id: 'patient-alert-table' },
        h('thead', {}, h('tr', {}, [t('severity'), t('alert'), t('opened'), t('state'), t('outcome'), t('resolved_at')].map((c) => h('th', { scope: 'col', text: c })))),
        h(
          'tbody',
          {},
          alerts.map((a) =>
            h(
              'tr',
              { dataset: { alertId: String(a.id), workflow: a.workflow } },
              h('td', {}, severityBadge(a.severity)),
              h('td', { text: ruleTitle(a.title) }),
              h('td', {}, h('time', { datetime: a.opened_at, text: fmtTime(a.opened_at) })),
              h('td', { text: `${t(`workflow_${a.workflow}`)} · ${t(`condition_${a.condition}`)}` }),
              h('td', { text: a.outcome ? t(`outcome_${a.outcome}`) : '—' }),
              h('td', { text: a.resolved_at ? `${fmtTime(a.resolved_at)} · ${actorName(a.resolved_by)}` : '—' }),
            ),
          ),
        ),
      ),
    );
  } catch (e) {
    if (isLive()) replace(box, h('p', { class: 'form-error', role: 'alert', text: errorMessage(e) }));
  }
}
