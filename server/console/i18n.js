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
