// The live alert queue shared by the pages: loaded from GET /alerts, kept current by the
// alert stream (each event re-reads its alert), announced in the aria-live region.
import { get, post, authHeaders } from './api.js';
import { follow } from './sse.js';

export const SEVERITY_RANK = { info: 0, low: 1, medium: 2, high: 3, critical: 4 };

const alerts = new Map();
const patients = new Map();
const pendingPatients = new Set();
const listeners = new Set();
let stream = null;
let streamState = 'connecting';
let announcer = () => {};
let loaded = false;

/** Most urgent first: severity, then escalation level, then the oldest (as the API sorts). */
export function compareAlerts(a, b) {
  return (
    SEVERITY_RANK[b.severity] - SEVERITY_RANK[a.severity] ||
    b.escalation_level - a.escalation_level ||
    a.opened_at.localeCompare(b.opened_at) ||
    a.id - b.id
  );
}

function notify(changedId) {
  for (const f of listeners) f(changedId);
}

export function subscribe(f) {
  listeners.add(f);
  return () => listeners.delete(f);
}

export function queue() {
  return [...alerts.values()].sort(compareAlerts);
}

export function isLoaded() {
  return loaded;
}

export function state() {
  return streamState;
}

export function patient(id) {
  const p = patients.get(id);
  if (!p && !pendingPatients.has(id)) {
    pendingPatients.add(id);
    get(`/patients/${id}`)
      .then((detail) => {
        patients.set(id, detail);
        notify(null);
      })
      .catch(() => {})
      .finally(() => pendingPatients.delete(id));
  }
  return p;
}

export function setAnnouncer(f) {
  announcer = f;
}

async function loadQueue() {
  const [list, people] = await Promise.all([
    get('/alerts?status=new,acknowledged&limit=500'),
    get('/patients').catch(() => ({ patients: [] })),
  ]);
  for (const p of people.patients || []) patients.set(p.id, p);
  alerts.clear();
  for (const a of list.alerts) if (!resolved.has(a.id)) alerts.set(a.id, a);
  loaded = true;
  notify(null);
}

/** Ids of alerts seen resolved: a final state, so a late answer cannot bring one back. */
const resolved = new Set();

/**
 * Takes an alert as read from the API. Reads run concurrently (one per stream event, one
 * after each action), so an answer may arrive after a newer one: the newer `updated_at` wins.
 */
function put(alert) {
  if (resolved.has(alert.id)) return;
  const current = alerts.get(alert.id);
  if (current && Date.parse(current.updated_at) > Date.parse(alert.updated_at)) return;
  if (alert.workflow === 'resolved') {
    resolved.add(alert.id);
    alerts.delete(alert.id);
  } else {
    alerts.set(alert.id, { ...current, ...alert });
  }
  notify(alert.id);
}

async function refresh(id) {
  try {
    const detail = await get(`/alerts/${id}`);
    put(detail);
    return detail;
  } catch (e) {
    if (e.status === 404) {
      alerts.delete(id);
      notify(id);
    }
    return null;
  }
}

const NEWS = new Set(['opened', 'severity_raised', 'reactivated', 'escalated']);

async function onEvent(e) {
  let data;
  try {
    data = JSON.parse(e.data);
  } catch (_) {
    return;
  }
  if (!data || typeof data.alert_id !== 'number') return;
  const detail = await refresh(data.alert_id);
  if (detail && NEWS.has(e.event)) announcer({ kind: e.event, alert: detail });
}

/** Starts following the stream (once per login). */
export function start({ onUnauthorized }) {
  if (stream) return;
  stream = follow('/api/v1/alerts/stream', {
    headers: authHeaders,
    onOpen: () => {
      loadQueue().catch(() => {});
    },
    onEvent: (e) => {
      onEvent(e);
    },
    onState: (s) => {
      streamState = s;
      notify(null);
    },
    onFatal: () => onUnauthorized(),
  });
}

export function stop() {
  stream?.stop();
  stream = null;
  alerts.clear();
  resolved.clear();
  patients.clear();
  loaded = false;
  streamState = 'connecting';
}

async function change(id, path, body) {
  const result = await post(`/alerts/${id}/${path}`, body);
  if (result?.alert) put(result.alert);
  refresh(id);
  return result;
}

export const acknowledge = (id) => change(id, 'ack');
export const assign = (id, assignee) => change(id, 'assign', { assignee });
export const comment = (id, text) => change(id, 'comments', { text });
export const resolve = (id, outcome, note) => change(id, 'resolve', { outcome, note: note || null });
/** Records what was done: `kind` one of INTERVENTION_KINDS; a phone call has a `result`. */
export const intervene = (id, kind, result, note) =>
  change(id, 'interventions', kind === 'phone_call' ? { kind, result, note: note || null } : { kind, note: note || null });

export const INTERVENTION_KINDS = ['phone_call', 'advice_given', 'gp_informed', 'home_visit_requested', 'emergency_services'];
export const CALL_RESULTS = ['reached', 'not_reached', 'wrong_number'];

let outcomes = null;
export async function loadOutcomes() {
  if (!outcomes) outcomes = (await get('/alerts/outcomes')).outcomes.map((o) => o.outcome);
  return outcomes;
}

/** Re-reads one alert (with its events) into the queue. */
export const reload = refresh;
