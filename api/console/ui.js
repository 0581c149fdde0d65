// Shared page helpers: the signed-in user, error messages, live announcements.
import { ApiError } from './api.js';
import { h } from './dom.js';
import { t } from './i18n.js';

let user = null;

export function currentUser() {
  return user;
}

export function setCurrentUser(u) {
  user = u;
}

/** Whether the signed-in user's role reads clinical data (alerts, readings, care plans);
 * mirrors the server's role table, which decides (a 403 says so). */
export function isClinical() {
  return user?.role === 'nurse' || user?.role === 'physician';
}

/** The actor of an event or a version without its kind prefix (`user:`, `idp:`, `token:`). */
export function actorName(actor) {
  return (actor || '').replace(/^(user|idp|token):/, '');
}

/** A clear message for an API error: 403 (role), 404 (not found or another COT's), … */
export function errorMessage(e) {
  if (!(e instanceof ApiError) && typeof e?.status !== 'number') return t('error_generic');
  if (e.status === 403) return t('error_forbidden');
  if (e.status === 404) return t('error_not_found');
  if (e.status === 0) return t('error_network');
  if (e.status === 503) return t('error_unavailable');
  if (e.status === 409) return t('error_conflict', { message: e.message });
  if (e.status === 400) return t('error_invalid', { message: e.message });
  return t('error_generic');
}

/** A page-level error block (e.g. a patient that does not exist or is another COT's). */
export function errorBlock(e) {
  return h(
    'div',
    { class: 'error-page', role: 'alert', dataset: { status: String(e?.status ?? '') } },
    h('h1', { text: e?.status === 404 ? t('error_not_found_title') : t('error_title') }),
    h('p', { text: errorMessage(e) }),
    h('p', {}, h('a', { href: '#/inbox', text: t('back_to_inbox') })),
  );
}

/** Says `text` through the polite (or, when urgent, the assertive) live region. */
export function announce(text, urgent = false) {
  const el = document.getElementById(urgent ? 'alert-announcer' : 'announcer');
  if (!el) return;
  el.textContent = '';
  // Set after a tick so that a repeated message is announced again.
  setTimeout(() => {
    el.textContent = text;
  }, 50);
}

export const SEVERITY_SYMBOL = { critical: '▲▲', high: '▲', medium: '◆', low: '●', info: '○' };

/** A severity badge: symbol and word, never colour alone. */
export function severityBadge(severity) {
  return h(
    'span',
    { class: `sev sev-${severity}`, dataset: { severity } },
    h('span', { 'aria-hidden': 'true', text: SEVERITY_SYMBOL[severity] || '' }),
    ` ${t(`severity_${severity}`)}`,
  );
}
