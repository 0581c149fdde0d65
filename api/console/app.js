// The console's entry point: session (login, /auth/me, logout), the fragment router and the
// page shell (navigation, language switch, live announcements).
import { api, get, post, setToken, token, setUnauthorizedHandler } from './api.js';
import { announce, errorMessage, setCurrentUser, isClinical } from './ui.js';
import { h, replace } from './dom.js';
import { t, getLang, setLang, onLangChange, ruleTitle } from './i18n.js';
import * as alerts from './alerts.js';
import { inboxPage } from './inbox.js';
import { worklistPage } from './worklist.js';
import { patientsPage } from './patients.js';
import { patientPage } from './patient.js';
import { devicePage } from './device.js';

const main = document.getElementById('main');
let user = null;

function setUser(u) {
  user = u;
  setCurrentUser(u);
}
let cleanup = null;


function translateStatic() {
  for (const el of document.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  for (const el of document.querySelectorAll('[data-i18n-aria-label]')) {
    el.setAttribute('aria-label', t(el.dataset.i18nAriaLabel));
  }
  const toggle = document.getElementById('lang-toggle');
  const other = getLang() === 'it' ? 'en' : 'it';
  toggle.textContent = other === 'en' ? 'English' : 'Italiano';
  toggle.lang = other;
  toggle.setAttribute('aria-label', t('switch_language'));
  document.title = `Sentinella — ${t('console_name')}`;
}

function renderShell() {
  const logged = Boolean(user);
  document.getElementById('nav').hidden = !logged;
  document.querySelector('#nav a[data-route="inbox"]').hidden = !isClinical();
  document.querySelector('#nav a[data-route="worklist"]').hidden = !isClinical();
  document.getElementById('logout').hidden = !logged;
  const who = document.getElementById('whoami');
  who.hidden = !logged;
  if (logged) {
    const cots = (user.cots || []).map((c) => c.code).join(', ');
    who.textContent = `${user.display_name || user.username} · ${t(`role_${user.role}`)}${cots ? ` · ${cots}` : ''}`;
  }
  renderStreamState();
}

function renderStreamState() {
  const el = document.getElementById('stream-state');
  el.hidden = !user || !isClinical();
  const s = alerts.state();
  el.className = `stream-state stream-${s}`;
  el.textContent = s === 'live' ? t('stream_live') : s === 'reconnecting' ? t('stream_reconnecting') : t('stream_connecting');
}

function markNav(route) {
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.route === route) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

function parseRoute() {
  const hash = location.hash || '#/inbox';
  return hash
    .replace(/^#\/?/, '')
    .split('/')
    .map((part) => {
      try {
        return decodeURIComponent(part);
      } catch (_) {
        return part;
      }
    });
}

async function route(event) {
  if (!location.hash.startsWith('#/') && location.hash !== '') return;
  cleanup?.();
  cleanup = null;
  const [name, arg] = parseRoute();
  if (!user) {
    if (name !== 'login') {
      sessionStorage.setItem('sentinella.after-login', location.hash || '#/inbox');
    }
    markNav(null);
    cleanup = loginPage(main);
    return;
  }
  // Roles without clinical data (device managers, administrators) start at the patients.
  const home = () => (isClinical() ? inboxPage(main) : patientsPage(main));
  const pages = {
    inbox: home,
    '': home,
    worklist: () => (isClinical() ? worklistPage(main) : patientsPage(main)),
    patients: () => (arg ? patientPage(main, arg) : patientsPage(main)),
    devices: () => devicePage(main, arg),
  };
  if (name === 'login') {
    location.replace('#/inbox');
    return;
  }
  const page = pages[name];
  markNav(name === '' || name === 'inbox' ? (isClinical() ? 'inbox' : 'patients') : name);
  if (!page) {
    replace(main, h('h1', { text: t('error_not_found') }));
    return;
  }
  cleanup = page() || null;
  // A new page: keyboard and screen-reader users start at its content, not at the old link.
  if (event?.type === 'hashchange' && !main.contains(document.activeElement)) {
    main.focus({ preventScroll: true });
  }
}

function loginPage(root) {
  const message = h('p', { class: 'form-error', role: 'alert', id: 'login-error' });
  const username = h('input', { id: 'login-username', name: 'username', autocomplete: 'username', required: true, autocapitalize: 'none', spellcheck: 'false' });
  const password = h('input', { id: 'login-password', name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const submit = h('button', { type: 'submit', class: 'primary', text: t('login_submit') });
  const form = h(
    'form',
    { class: 'login card', novalidate: true, 'aria-describedby': 'login-error' },
    h('h1', { text: t('login_title') }),
    h('p', { class: 'muted', text: t('login_intro') }),
    h('div', { class: 'field' }, h('label', { for: 'login-username', text: t('login_username') }), username),
    h('div', { class: 'field' }, h('label', { for: 'login-password', text: t('login_password') }), password),
    message,
    submit,
  );
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    message.textContent = '';
    if (!username.value.trim() || !password.value) {
      message.textContent = t('login_missing');
      (username.value.trim() ? password : username).focus();
      return;
    }
    submit.disabled = true;
    try {
      const result = await api('/auth/login', {
        method: 'POST',
        auth: false,
        body: { username: username.value.trim(), password: password.value },
      });
      setToken(result.token);
      setUser(result.user);
      password.value = '';
      startSession();
      const next = sessionStorage.getItem('sentinella.after-login') || '#/inbox';
      sessionStorage.removeItem('sentinella.after-login');
      const target = next === '#/login' ? '#/inbox' : next;
      // Changing the fragment routes (hashchange); an unchanged one needs a direct call.
      if (location.hash === target) route();
      else location.hash = target;
    } catch (e) {
      if (e.status === 401) message.textContent = t('login_invalid');
      else if (e.status === 429) message.textContent = t('login_throttled');
      else message.textContent = errorMessage(e);
      password.focus();
    } finally {
      submit.disabled = false;
    }
  });
  replace(root, form);
  username.focus();
  return null;
}

function startSession() {
  renderShell();
  if (isClinical()) alerts.start({ onUnauthorized: () => endSession() });
}

function endSession() {
  alerts.stop();
  setToken(null);
  setUser(null);
  renderShell();
  if (location.hash === '#/login') route();
  else location.hash = '#/login';
}

async function logout() {
  try {
    await post('/auth/logout');
  } catch (_) {
    // The token is dropped here either way.
  }
  announce(t('logged_out'));
  endSession();
}

/** Who the stored token belongs to; null when there is no valid session. */
async function whoAmI() {
  if (!token()) return null;
  try {
    return (await get('/auth/me')).user;
  } catch (_) {
    return null;
  }
}

async function boot() {
  document.documentElement.lang = getLang();
  translateStatic();
  setUnauthorizedHandler(() => {
    if (user) endSession();
  });
  alerts.setAnnouncer(({ alert }) => {
    const p = alerts.patient(alert.patient_id);
    announce(
      t('announce_alert', {
        severity: t(`severity_${alert.severity}`),
        title: ruleTitle(alert.title),
        patient: p ? p.display_name : `#${alert.patient_id}`,
      }),
      alert.severity === 'critical',
    );
  });
  alerts.subscribe(() => renderStreamState());
  document.getElementById('lang-toggle').addEventListener('click', () => {
    setLang(getLang() === 'it' ? 'en' : 'it');
  });
  document.getElementById('logout').addEventListener('click', logout);
  document.getElementById('skip-link').addEventListener('click', (ev) => {
    ev.preventDefault();
    main.focus();
  });
  onLangChange(() => {
    translateStatic();
    renderShell();
    route();
  });
  window.addEventListener('hashchange', route);
  setUser(await whoAmI());
  if (user) startSession();
  else setToken(null);
  renderShell();
  route();
}

boot();
