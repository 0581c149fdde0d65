// Italian by default, English on request; the choice is kept in localStorage and the
// document's `lang` follows it.
import it from './i18n-it.js';
import en from './i18n-en.js';

const DICTS = { it, en };
const KEY = 'sentinella.lang';
let lang = 'it';
try {
  const saved = localStorage.getItem(KEY);
  if (saved && DICTS[saved]) lang = saved;
} catch (_) {
  // Storage may be unavailable (privacy mode); Italian stays.
}
const listeners = new Set();

export function getLang() {
  return lang;
}

export function setLang(next) {
  if (!DICTS[next] || next === lang) return;
  lang = next;
  try {
    localStorage.setItem(KEY, next);
  } catch (_) {
    // Not persisted; still switched for this page.
  }
  document.documentElement.lang = lang;
  for (const f of listeners) f(lang);
}

export function onLangChange(f) {
  listeners.add(f);
}

/** The text for `key` in the current language, with `{name}` placeholders filled. */
export function t(key, params) {
  const text = DICTS[lang][key] ?? DICTS.it[key] ?? key;
  if (!params) return text;
  return text.replace(/\{(\w+)\}/g, (m, name) => (name in params ? String(params[name]) : m));
}

/** Italian names of the titles the shipped templates and the engine write (in English); a
 * title a physician wrote in a plan is shown as written. */
const TITLES_IT = {
  'Blood pressure high': 'Pressione alta',
  'Blood pressure low': 'Pressione bassa',
  'Heart rate out of range': 'Frequenza cardiaca fuori intervallo',
  'SpO2 low': 'SpO2 bassa',
  Hypoglycaemia: 'Ipoglicemia',
  Hyperglycaemia: 'Iperglicemia',
  "Systolic rising against the patient's baseline": 'Sistolica in aumento rispetto al basale del paziente',
  "SpO2 dropping against the patient's baseline": 'SpO2 in calo rispetto al basale del paziente',
  'Device offline': 'Dispositivo non in linea',
  'Device battery low': 'Batteria del dispositivo scarica',
  'Device clock not set or wrong': 'Orologio del dispositivo non impostato o errato',
  'Late readings out of range: review': 'Letture arrivate in ritardo fuori soglia: da rivedere',
  'Questionable measurement: repeat requested': 'Misura dubbia: ripetizione richiesta',
  'Missed bp measurement': 'Misura della pressione mancata',
  'Missed spo2 measurement': 'Misura della saturazione mancata',
  'Missed glucose measurement': 'Misura della glicemia mancata',
  'SpO2 below the COPD target': 'SpO2 sotto il target BPCO',
  'SpO2 low (safety net)': 'SpO2 bassa (rete di sicurezza)',
  'SpO2 low (safety net, NEWS2 scale 2)': 'SpO2 bassa (rete di sicurezza, NEWS2 scala 2)',
  'Blood pressure very high (safety net)': 'Pressione molto alta (rete di sicurezza)',
  'Blood pressure low (safety net)': 'Pressione bassa (rete di sicurezza)',
  'Heart rate out of range (safety net)': 'Frequenza cardiaca fuori intervallo (rete di sicurezza)',
  'Hypoglycaemia (safety net)': 'Ipoglicemia (rete di sicurezza)',
  'Hyperglycaemia (safety net)': 'Iperglicemia (rete di sicurezza)',
  'Home blood pressure average above target': 'Media della pressione domiciliare sopra il target',
};

/** A rule or alert title in the current language. Handles "Title: device-id" (per-device
 * alerts) and "Device X: clock not set or wrong". */
export function ruleTitle(title) {
  if (!title || lang !== 'it') return title;
  if (TITLES_IT[title]) return TITLES_IT[title];
  const clock = /^Device (.+): clock not set or wrong$/.exec(title);
  if (clock) return `Dispositivo ${clock[1]}: orologio non impostato o errato`;
  const cut = title.lastIndexOf(': ');
  if (cut > 0 && TITLES_IT[title.slice(0, cut)]) {
    return `${TITLES_IT[title.slice(0, cut)]}: ${title.slice(cut + 2)}`;
  }
  return title;
}

/** Whether a translation exists (e.g. for outcome or flag names). */
export function has(key) {
  return key in DICTS[lang] || key in DICTS.it;
}

export function locale() {
  return lang === 'it' ? 'it-IT' : 'en-GB';
}

export function fmtTime(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return new Intl.DateTimeFormat(locale(), { dateStyle: 'short', timeStyle: 'short' }).format(d);
}

export function fmtNumber(v, digits = 0) {
  if (v === null || v === undefined) return '—';
  return new Intl.NumberFormat(locale(), { maximumFractionDigits: digits }).format(v);
}

/** "5 min ago" style, for last-seen times. */
export function fmtAgo(iso) {
  if (!iso) return '—';
  const secs = (new Date(iso).getTime() - Date.now()) / 1000;
  const rtf = new Intl.RelativeTimeFormat(locale(), { numeric: 'auto' });
  const abs = Math.abs(secs);
  if (abs < 60) return rtf.format(Math.round(secs), 'second');
  if (abs < 3600) return rtf.format(Math.round(secs / 60), 'minute');
  if (abs < 86400) return rtf.format(Math.round(secs / 3600), 'hour');
  return rtf.format(Math.round(secs / 86400), 'day');
}
