// Unit tests of the console's pure modules under Node's test runner (no browser): the SSE
// parser, the care-plan diff, the chart's threshold extraction, the worklist's filters and
// sorts. Run by tests/tests/console.rs (`node --test tests/browser/modules.test.mjs`).
import { test } from 'node:test';
import assert from 'node:assert/strict';

// The modules read the language from localStorage at import; Node has none.
globalThis.localStorage = { getItem: () => null, setItem() {} };
globalThis.document = { documentElement: {} };

const console_ = new URL('../../api/console/', import.meta.url);
const { SseParser } = await import(new URL('sse.js', console_));
const { diffPlans } = await import(new URL('careplan.js', console_));
const { thresholdsFor } = await import(new URL('chart.js', console_));
const { compareAlerts } = await import(new URL('alerts.js', console_));

test('SSE: events split across chunks, comments, CRLF, multi-line data', () => {
  const p = new SseParser();
  assert.deepEqual(p.feed(': keep-alive\n\nid: 7\nevent: opened\ndata: {"a"'), []);
  assert.deepEqual(p.feed(':1}\n\n'), [{ id: '7', event: 'opened', data: '{"a":1}' }]);
  assert.deepEqual(p.feed('id:8\r\nevent:resolved\r\ndata: x\r\ndata: y\r\n\r\n'), [
    { id: '8', event: 'resolved', data: 'x\ny' },
  ]);
  assert.deepEqual(p.feed('data: plain\n\n'), [{ id: null, event: 'message', data: 'plain' }]);
});

const plan = (systolic, extra = []) => ({
  schedule: [{ kind: 'bp', every_hours: 12, grace_hours: 2 }],
  rules: [
    {
      id: 'bp-high',
      title: 'Pressione alta',
      type: 'threshold',
      bands: [
        { severity: 'critical', any: [{ metric: 'systolic', at_least: systolic }, { metric: 'diastolic', at_least: 110 }], consecutive: 2 },
        { severity: 'high', any: [{ metric: 'systolic', at_least: systolic }] },
      ],
    },
    ...extra,
  ],
});

test('diff: a changed bound, a whole rule added, nothing when equal', () => {
  assert.deepEqual(diffPlans(plan(180), plan(180)), []);
  const changes = diffPlans(plan(180), plan(175, [{ id: 'glu', title: 'Glicemia', type: 'threshold', bands: [{ severity: 'high', any: [{ metric: 'glucose', above: 250 }] }] }]));
  assert.deepEqual(
    changes.map((c) => [c.change, c.path, c.before, c.after]),
    [
      ['changed', 'rules/bp-high/bands/critical/any/0:systolic/at_least', 180, 175],
      ['changed', 'rules/bp-high/bands/high/any/0:systolic/at_least', 180, 175],
      ['added', 'rules/glu', undefined, 'Glicemia'],
    ],
  );
});

test('thresholds: one line per bound, the most severe band wins, mmol/L converted', () => {
  const lines = thresholdsFor(plan(180), ['systolic', 'diastolic']);
  assert.deepEqual(
    lines.map((l) => [l.metric, l.op, l.value, l.severity]),
    [
      ['systolic', 'at_least', 180, 'critical'],
      ['diastolic', 'at_least', 110, 'critical'],
    ],
  );
  const glucose = thresholdsFor({ rules: [{ id: 'g', title: 'g', type: 'threshold', bands: [{ severity: 'high', any: [{ metric: 'glucose', below: 3, unit: 'mmol/L' }] }] }] }, ['glucose']);
  assert.equal(glucose[0].value, 54);
  assert.deepEqual(thresholdsFor(null, ['spo2']), []);
});

test('queue order: severity, then escalation, then the oldest', () => {
  const a = (id, severity, escalation_level, opened_at) => ({ id, severity, escalation_level, opened_at });
  const sorted = [
    a(1, 'high', 0, '2026-01-01T10:00:00Z'),
    a(2, 'critical', 0, '2026-01-01T11:00:00Z'),
    a(3, 'high', 1, '2026-01-01T12:00:00Z'),
    a(4, 'high', 0, '2026-01-01T09:00:00Z'),
  ].sort(compareAlerts);
  assert.deepEqual(sorted.map((x) => x.id), [2, 3, 4, 1]);
});

test('rule titles: the templates\' and the engine\'s in Italian, a physician\'s own as written', async () => {
  const { ruleTitle, setLang } = await import(new URL('i18n.js', console_));
  assert.equal(ruleTitle('Blood pressure high'), 'Pressione alta');
  assert.equal(ruleTitle('Device offline: bp-7'), 'Dispositivo non in linea: bp-7');
  assert.equal(ruleTitle('Device ox_1: clock not set or wrong'), 'Dispositivo ox_1: orologio non impostato o errato');
  assert.equal(ruleTitle('Pressione serale del sig. Rossi'), 'Pressione serale del sig. Rossi');
  setLang('en');
  assert.equal(ruleTitle('Blood pressure high'), 'Blood pressure high');
  setLang('it');
});

test('worklist: filters by condition, rule, assignee and COT; counts; sorts', async () => {
  const { filterQueue, countBySeverity, SORTS } = await import(new URL('worklist.js', console_));
  const a = (id, severity, rule_id, assignee, cot_id, patient_id, due_at, opened_at) => ({
    id, severity, rule_id, assignee, cot_id, patient_id, due_at, opened_at, escalation_level: 0,
  });
  const q = [
    a(1, 'low', 'no-bp', null, 1, 10, null, '2026-01-01T10:00:00Z'),
    a(2, 'high', 'bp-high', 'anna', 1, 11, '2026-01-01T12:30:00Z', '2026-01-01T12:00:00Z'),
    a(3, 'low', 'no-bp', 'me', 2, 12, '2026-01-01T11:00:00Z', '2026-01-01T09:00:00Z'),
  ];
  const patients = { 10: { display_name: 'Zeno', conditions: ['copd'] }, 11: { display_name: 'Anna', conditions: ['hypertension'] }, 12: { display_name: 'Bruno', conditions: ['hypertension', 'copd'] } };
  const of = (id) => patients[id];
  const ids = (list) => list.map((x) => x.id);
  const none = { condition: '', rule: '', assignee: '', cot: '' };
  assert.deepEqual(ids(filterQueue(q, { ...none, condition: 'copd' }, of, 'me')), [1, 3]);
  assert.deepEqual(ids(filterQueue(q, { ...none, rule: 'no-bp' }, of, 'me')), [1, 3]);
  assert.deepEqual(ids(filterQueue(q, { ...none, assignee: '-' }, of, 'me')), [1]);
  assert.deepEqual(ids(filterQueue(q, { ...none, assignee: 'me' }, of, 'me')), [3]);
  assert.deepEqual(ids(filterQueue(q, { ...none, assignee: 'anna' }, of, 'me')), [2]);
  assert.deepEqual(ids(filterQueue(q, { ...none, cot: '2' }, of, 'me')), [3]);
  assert.deepEqual(countBySeverity(q), { critical: 0, high: 1, medium: 0, low: 2, info: 0 });
  const name = (x) => patients[x.patient_id].display_name;
  assert.deepEqual(ids([...q].sort((x, y) => SORTS.severity(x, y, name))), [2, 3, 1]);
  assert.deepEqual(ids([...q].sort((x, y) => SORTS.due(x, y, name))), [3, 2, 1]);
  assert.deepEqual(ids([...q].sort((x, y) => SORTS.age(x, y, name))), [3, 1, 2]);
  assert.deepEqual(ids([...q].sort((x, y) => SORTS.patient(x, y, name))), [2, 3, 1]);
});
