// A patient's contacts and context (phones, caregiver, GP, language, clinical note with its
// author and time), editable by the roles that enrol patients; and the patient's timeline of
// interventions (calls and their result, advice, GP informed, …) across their alerts.
import { h, replace, id } from './dom.js';
import { t, fmtTime, getLang } from './i18n.js';
import { get, api, download, query } from './api.js';
import { currentUser, errorMessage, actorName, announce } from './ui.js';
import { interventionText } from './inbox.js';

/** Whether the signed-in user's role enrols patients (and so edits their contacts). */
function canEdit() {
  const role = currentUser()?.role;
  return role === 'physician' || role === 'admin';
}

const FIELDS = [
  ['caregiver_name', 'text'],
  ['caregiver_relation', 'text'],
  ['caregiver_phone', 'tel'],
  ['gp_name', 'text'],
  ['gp_phone', 'tel'],
  ['gp_email', 'email'],
  ['preferred_language', 'text'],
];

function view(c) {
  const phones = c.phones || [];
  return h(
    'dl',
    { class: 'facts facts-wide', id: 'contacts-view' },
    h('dt', { text: t('contact_phones') }),
    h(
      'dd',
      {},
      phones.length
        ? h('ul', { class: 'inline-list' }, phones.map((p) => h('li', {}, `${p.label}: `, h('a', { href: `tel:${p.number.replace(/[^+\d]/g, '')}`, class: 'phone', text: p.number }))))
        : '—',
    ),
    h('dt', { text: t('contact_caregiver') }),
    h('dd', { text: [c.caregiver_name, c.caregiver_relation && `(${c.caregiver_relation})`, c.caregiver_phone].filter(Boolean).join(' ') || '—' }),
    h('dt', { text: t('contact_gp') }),
    h('dd', { text: [c.gp_name, c.gp_phone, c.gp_email].filter(Boolean).join(' · ') || '—' }),
    h('dt', { text: t('contact_language') }),
    h('dd', { text: c.preferred_language || '—' }),
    h('dt', { text: t('contact_note') }),
    h(
      'dd',
      { id: 'clinical-note' },
      c.clinical_note
        ? [h('p', { class: 'note', text: c.clinical_note }), h('p', { class: 'muted', text: `${actorName(c.note_author)} · ${fmtTime(c.note_at)}` })]
        : '—',
    ),
  );
}

function editor(c, onSaved) {
  const inputs = {};
  const rows = FIELDS.map(([name, type]) => {
    const fid = id(name);
    inputs[name] = h('input', { id: fid, type, value: c[name] || '' });
    return [h('label', { for: fid, text: t(`contact_${name}`) }), inputs[name]];
  });
  const phonesId = id('phones');
  const phones = h('textarea', {
    id: phonesId,
    rows: 2,
    text: (c.phones || []).map((p) => `${p.label}: ${p.number}`).join('\n'),
  });
  const noteId = id('clinical-note');
  const note = h('textarea', { id: noteId, rows: 3, maxlength: 4000, text: c.clinical_note || '' });
  const status = h('p', { class: 'action-status', role: 'status' });
  const form = h(
    'form',
    { class: 'inline-form', id: 'contacts-form' },
    h('label', { for: phonesId, text: t('contact_phones_edit') }),
    phones,
    rows,
    h('label', { for: noteId, text: t('contact_note') }),
    note,
    h('button', { type: 'submit', class: 'primary', text: t('contact_save') }),
    status,
  );
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const body = {
      phones: phones.value
        .split('\n')
        .map((line) => line.trim())
        .filter(Boolean)
        .map((line) => {
          const at = line.lastIndexOf(':');
          return at > 0 ? { label: line.slice(0, at).trim(), number: line.slice(at + 1).trim() } : { label: t('contact_phone_default'), number: line };
        }),
      clinical_note: note.value.trim() || null,
    };
    for (const [name] of FIELDS) body[name] = inputs[name].value.trim() || null;
    status.classList.remove('error');
    try {
      const saved = await api(`/patients/${c.patient_id}/contacts`, { method: 'PUT', body });
      status.textContent = t('contact_saved');
      announce(t('contact_saved'));
      onSaved(saved);
    } catch (e) {
      status.textContent = errorMessage(e);
      status.classList.add('error');
    }
  });
  return h('details', { class: 'action-details', id: 'contacts-edit' }, h('summary', { text: t('contact_edit') }), form);
}

/** Fills `box` with the patient's contacts (and the editor for roles that enrol patients). */
export async function contactsSection(box, patient, isLive) {
  try {
    const c = await get(`/patients/${patient.id}/contacts`);
    if (!isLive()) return;
    const show = (next) => replace(box, view(next), canEdit() && editor(next, show));
    show(c);
  } catch (e) {
    if (isLive()) replace(box, h('p', { class: 'form-error', role: 'alert', text: errorMessage(e) }));
  }
}

/** Fills `box` with the patient's interventions, newest first. */
export async function interventionsSection(box, patient, isLive) {
  try {
    const { interventions } = await get(`/patients/${patient.id}/interventions`);
    if (!isLive()) return;
    if (!interventions.length) {
      replace(box, h('p', { class: 'empty', text: t('interventions_empty') }));
      return;
    }
    replace(
      box,
      h(
        'ol',
        { class: 'event-list', id: 'intervention-list' },
        [...interventions].reverse().map((i) =>
          h(
            'li',
            { dataset: { kind: i.kind, alertId: String(i.alert_id) } },
            h('time', { datetime: i.at, text: fmtTime(i.at) }),
            ` · ${interventionText(i)} · ${actorName(i.actor)}`,
          ),
        ),
      ),
    );
  } catch (e) {
    if (isLive()) replace(box, h('p', { class: 'form-error', role: 'alert', text: errorMessage(e) }));
  }
}

function isoDay(d) {
  return d.toISOString().slice(0, 10);
}

/** Fills `box` with the report form: period, language, download of the PDF. */
export function reportSection(box, patient) {
  const today = new Date();
  const fromId = id('report-from');
  const toId = id('report-to');
  const langId = id('report-lang');
  const from = h('input', { id: fromId, type: 'date', value: isoDay(new Date(today.getTime() - 29 * 864e5)) });
  const to = h('input', { id: toId, type: 'date', value: isoDay(today) });
  const lang = h(
    'select',
    { id: langId },
    ['it', 'en'].map((l) => h('option', { value: l, selected: l === getLang(), text: t(`report_lang_${l}`) })),
  );
  const status = h('p', { class: 'action-status', role: 'status' });
  const form = h(
    'form',
    { class: 'inline-form', id: 'report-form' },
    h('label', { for: fromId, text: t('report_from') }),
    from,
    h('label', { for: toId, text: t('report_to') }),
    to,
    h('label', { for: langId, text: t('report_lang') }),
    lang,
    h('button', { type: 'submit', class: 'primary', id: 'report-download', text: t('report_download') }),
    status,
  );
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    status.classList.remove('error');
    status.textContent = t('loading');
    try {
      const blob = await download(`/patients/${patient.id}/report${query({ from: from.value, to: to.value, lang: lang.value })}`);
      const url = URL.createObjectURL(blob);
      const a = h('a', { href: url, download: `report-${patient.code}-${from.value}-${to.value}-${lang.value}.pdf` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
      status.textContent = t('report_ready');
    } catch (e) {
      status.textContent = errorMessage(e);
      status.classList.add('error');
    }
  });
  replace(box, h('p', { class: 'muted', text: t('report_intro') }), form);
}
