// The alert inbox: the unresolved queue, most urgent first, live from the stream, with the
// nurse's actions on each alert (acknowledge, assign to me, comment, resolve with outcome).
import { h, replace, id } from './dom.js';
import { t, fmtTime, fmtNumber, ruleTitle } from './i18n.js';
import * as alerts from './alerts.js';
import { currentUser, errorMessage, severityBadge, announce, actorName } from './ui.js';

const EVENT_LIMIT = 6;
const FILTER_KEY = 'sentinella.inbox-filters';

function loadFilters() {
  try {
    const f = JSON.parse(sessionStorage.getItem(FILTER_KEY) || '{}');
    return { min: alerts.SEVERITY_RANK[f.min] !== undefined ? f.min : 'info', mine: f.mine === true };
  } catch (_) {
    return { min: 'info', mine: false };
  }
}

function saveFilters(f) {
  try {
    sessionStorage.setItem(FILTER_KEY, JSON.stringify(f));
  } catch (_) {
    // Not kept; the filter still applies on this page.
  }
}

export function inboxPage(root) {
  const cards = new Map();
  const list = h('ol', { class: 'alert-list', id: 'alert-list', 'aria-labelledby': 'inbox-title' });
  const empty = h('p', { class: 'empty', id: 'inbox-empty', text: t('inbox_empty') });
  const count = h('span', { class: 'count', id: 'inbox-count' });
  const filters = loadFilters();
  const minId = id('min-severity');
  const mineId = id('only-mine');
  const minSeverity = h(
    'select',
    { id: minId },
    ['info', 'low', 'medium', 'high', 'critical'].map((sev) =>
      h('option', { value: sev, selected: sev === filters.min, text: sev === 'info' ? t('filter_all') : t(`severity_${sev}`) }),
    ),
  );
  const onlyMine = h('input', { id: mineId, type: 'checkbox', checked: filters.mine });
  const onFilter = () => {
    filters.min = minSeverity.value;
    filters.mine = onlyMine.checked;
    saveFilters(filters);
    render();
  };
  minSeverity.addEventListener('change', onFilter);
  onlyMine.addEventListener('change', onFilter);
  replace(
    root,
    h('div', { class: 'page-head' }, h('h1', { id: 'inbox-title', text: t('inbox_title') }), count),
    h('p', { class: 'muted', text: t('inbox_intro') }),
    h(
      'div',
      { class: 'filters', role: 'group', 'aria-label': t('filters') },
      h('label', { for: minId, text: t('filter_min_severity') }),
      minSeverity,
      h('span', { class: 'check' }, onlyMine, h('label', { for: mineId, text: t('filter_only_mine') })),
    ),
    empty,
    list,
  );

  function render() {
    const me = currentUser()?.username;
    const all = alerts.queue();
    const queue = all.filter(
      (a) => alerts.SEVERITY_RANK[a.severity] >= alerts.SEVERITY_RANK[filters.min] && (!filters.mine || a.assignee === me),
    );
    const seen = new Set();
    queue.forEach((alert, index) => {
      seen.add(alert.id);
      let card = cards.get(alert.id);
      if (!card) {
        card = alertCard(alert);
        cards.set(alert.id, card);
      } else {
        card.update(alert);
      }
      // Moving a node that holds focus would lose it: only move when out of place.
      if (list.children[index] !== card.el) list.insertBefore(card.el, list.children[index] || null);
    });
    for (const [alertId, card] of cards) {
      if (!seen.has(alertId)) {
        card.el.remove();
        cards.delete(alertId);
      }
    }
    empty.hidden = queue.length > 0 || !alerts.isLoaded();
    empty.textContent = all.length ? t('inbox_empty_filtered') : t('inbox_empty');
    count.textContent = !alerts.isLoaded()
      ? t('loading')
      : queue.length === all.length
        ? t('inbox_count', { n: all.length })
        : t('inbox_count_filtered', { n: queue.length, total: all.length });
  }

  render();
  return alerts.subscribe(() => render());
}

function valueText(alert) {
  if (alert.last_value === null || alert.last_value === undefined) return null;
  const unit = alert.unit ? ` ${alert.unit}` : '';
  const metric = alert.metric ? `${t(`metric_${alert.metric}`)} ` : '';
  let text = `${metric}${fmtNumber(alert.last_value, 1)}${unit}`;
  if (alert.worst_value !== null && alert.worst_value !== alert.last_value) {
    text += ` (${t('worst')} ${fmtNumber(alert.worst_value, 1)}${unit})`;
  }
  return text;
}

function eventText(e) {
  const who = actorName(e.actor);
  let what = t(`event_${e.kind}`);
  if (e.kind === 'commented' && e.detail?.text) what += `: “${e.detail.text}”`;
  if (e.kind === 'assigned') what += `: ${e.detail?.assignee ?? t('nobody')}`;
  if (e.kind === 'resolved' && e.detail?.outcome) what += `: ${t(`outcome_${e.detail.outcome}`)}`;
  if (e.kind === 'intervention') what = interventionText(e.detail || {});
  return `${fmtTime(e.at)} · ${what} · ${who}`;
}

/** One intervention (an event's detail or a stored intervention) as a sentence. */
export function interventionText(i) {
  let text = t(`intervention_${i.kind}`);
  if (i.call_result) text += ` (${t(`call_${i.call_result}`)})`;
  if (i.note) text += `: “${i.note}”`;
  if (i.retry_at) text += ` · ${t('retry_at', { time: fmtTime(i.retry_at) })}`;
  return text;
}

export function alertCard(initial) {
  let alert = initial;
  const headingId = id('alert-title');
  const el = h('li', { class: 'alert-card', dataset: { alertId: String(alert.id) }, 'aria-labelledby': headingId });
  const info = h('div', { class: 'alert-info' });
  const status = h('p', { class: 'action-status', role: 'status' });

  const ack = h('button', { type: 'button', class: 'primary', 'data-action': 'ack' });
  const take = h('button', { type: 'button', class: 'secondary', 'data-action': 'assign' });

  const commentId = id('comment');
  const commentText = h('textarea', { id: commentId, rows: 2, maxlength: 4000, required: true });
  const commentForm = h(
    'form',
    { class: 'inline-form', 'data-action': 'comment' },
    h('label', { for: commentId, text: t('comment_label') }),
    commentText,
    h('button', { type: 'submit', class: 'secondary', text: t('comment_submit') }),
  );

  const outcomeId = id('outcome');
  const noteId = id('note');
  const outcome = h('select', { id: outcomeId, required: true }, h('option', { value: '', text: t('outcome_choose') }));
  alerts.loadOutcomes().then((names) => {
    for (const name of names) outcome.append(h('option', { value: name, text: t(`outcome_${name}`) }));
  }).catch(() => {});
  const note = h('textarea', { id: noteId, rows: 2, maxlength: 4000 });
  const resolveForm = h(
    'form',
    { class: 'inline-form', 'data-action': 'resolve' },
    h('label', { for: outcomeId, text: t('outcome_label') }),
    outcome,
    h('label', { for: noteId, text: t('note_label') }),
    note,
    h('button', { type: 'submit', class: 'primary', text: t('resolve_submit') }),
  );

  const kindId = id('intervention-kind');
  const resultId = id('call-result');
  const contactNoteId = id('contact-note');
  const kind = h(
    'select',
    { id: kindId, required: true },
    alerts.INTERVENTION_KINDS.map((k) => h('option', { value: k, text: t(`intervention_${k}`) })),
  );
  const result = h(
    'select',
    { id: resultId },
    alerts.CALL_RESULTS.map((r) => h('option', { value: r, text: t(`call_${r}`) })),
  );
  const resultLabel = h('label', { for: resultId, text: t('call_result_label') });
  const contactNote = h('textarea', { id: contactNoteId, rows: 2, maxlength: 4000 });
  const interveneForm = h(
    'form',
    { class: 'inline-form', 'data-action': 'intervene' },
    h('label', { for: kindId, text: t('intervention_label') }),
    kind,
    resultLabel,
    result,
    h('label', { for: contactNoteId, text: t('note_label') }),
    contactNote,
    h('button', { type: 'submit', class: 'primary', text: t('intervention_submit') }),
  );
  kind.addEventListener('change', () => {
    result.hidden = resultLabel.hidden = kind.value !== 'phone_call';
  });

  const history = h('ol', { class: 'event-list' });
  const historyDetails = h('details', { class: 'action-details' }, h('summary', { text: t('history') }), history);
  historyDetails.addEventListener('toggle', () => {
    if (historyDetails.open) alerts.reload(alert.id);
  });
  const actions = h(
    'div',
    { class: 'alert-actions' },
    ack,
    take,
    h('details', { class: 'action-details' }, h('summary', { text: t('comment') }), commentForm),
    h('details', { class: 'action-details', 'data-action': 'intervene-details' }, h('summary', { text: t('intervention') }), interveneForm),
    h('details', { class: 'action-details', 'data-action': 'resolve-details' }, h('summary', { text: t('resolve') }), resolveForm),
    historyDetails,
  );
  el.append(info, actions, status);

  async function act(run, done) {
    status.textContent = '';
    status.classList.remove('error');
    for (const b of el.querySelectorAll('button')) b.disabled = true;
    try {
      await run();
      status.textContent = done;
      announce(done);
      return true;
    } catch (e) {
      status.textContent = errorMessage(e);
      status.classList.add('error');
      return false;
    } finally {
      for (const b of el.querySelectorAll('button')) b.disabled = false;
      update(alert);
    }
  }

  ack.addEventListener('click', () => act(() => alerts.acknowledge(alert.id), t('done_ack')));
  take.addEventListener('click', () => {
    const me = currentUser()?.username;
    act(() => alerts.assign(alert.id, me), t('done_assign'));
  });
  commentForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (!commentText.value.trim()) {
      status.textContent = t('comment_missing');
      commentText.focus();
      return;
    }
    if (await act(() => alerts.comment(alert.id, commentText.value.trim()), t('done_comment'))) {
      commentText.value = '';
    }
  });
  interveneForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const done = kind.value === 'phone_call' && result.value === 'not_reached' ? t('done_requeued') : t('done_intervention');
    if (await act(() => alerts.intervene(alert.id, kind.value, result.value, contactNote.value.trim()), done)) {
      contactNote.value = '';
    }
  });
  resolveForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (!outcome.value) {
      status.textContent = t('outcome_missing');
      status.classList.add('error');
      outcome.focus();
      return;
    }
    act(() => alerts.resolve(alert.id, outcome.value, note.value.trim()), t('done_resolve'));
  });

  function update(next) {
    alert = next;
    el.className = `alert-card sev-border-${alert.severity}`;
    el.dataset.severity = alert.severity;
    el.dataset.workflow = alert.workflow;
    el.dataset.patientId = String(alert.patient_id);
    const p = alerts.patient(alert.patient_id);
    const patientName = p ? p.display_name : `#${alert.patient_id}`;
    const value = valueText(alert);
    const facts = [
      h('dt', { text: t('patient') }),
      h('dd', {}, h('a', { href: `#/patients/${alert.patient_id}`, class: 'patient-link', text: patientName }), p ? ` (${p.code})` : ''),
      value && [h('dt', { text: t('value') }), h('dd', { text: value })],
      h('dt', { text: t('opened') }),
      h('dd', {}, h('time', { datetime: alert.opened_at, text: fmtTime(alert.opened_at) })),
      h('dt', { text: t('readings_count') }),
      h('dd', { text: String(alert.count) }),
      h('dt', { text: t('condition') }),
      h('dd', { text: t(`condition_${alert.condition}`) }),
      h('dt', { text: t('assignee') }),
      h('dd', { class: 'assignee', text: alert.assignee || t('nobody') }),
      alert.due_at && [h('dt', { text: t('due') }), h('dd', {}, h('time', { datetime: alert.due_at, text: fmtTime(alert.due_at) }))],
      alert.escalation_level > 0 && [h('dt', { text: t('escalation') }), h('dd', { text: String(alert.escalation_level) })],
      alert.retry_at && [h('dt', { text: t('retry') }), h('dd', { class: 'retry' }, h('time', { datetime: alert.retry_at, text: fmtTime(alert.retry_at) }))],
      alert.interventions > 0 && [h('dt', { text: t('interventions') }), h('dd', { class: 'interventions', text: String(alert.interventions) })],
      alert.confirmation && [h('dt', { text: t('confirmation') }), h('dd', { class: `confirmation-${alert.confirmation}`, text: t(`confirmation_${alert.confirmation}`) })],
    ];
    replace(
      info,
      h(
        'div',
        { class: 'alert-head' },
        severityBadge(alert.severity),
        h('h2', { id: headingId, class: 'alert-title', text: ruleTitle(alert.title) }),
        h('span', { class: `workflow workflow-${alert.workflow}`, text: t(`workflow_${alert.workflow}`) }),
      ),
      h('dl', { class: 'facts' }, facts),
    );
    ack.textContent = t('acknowledge');
    ack.hidden = alert.workflow !== 'new';
    const me = currentUser()?.username;
    take.textContent = t('assign_to_me');
    take.hidden = Boolean(me && alert.assignee === me);
    take.setAttribute('aria-label', `${t('assign_to_me')}: ${ruleTitle(alert.title)}, ${patientName}`);
    ack.setAttribute('aria-label', `${t('acknowledge')}: ${ruleTitle(alert.title)}, ${patientName}`);
    if (Array.isArray(alert.events)) {
      replace(history, alert.events.slice(-EVENT_LIMIT).map((e) => h('li', { text: eventText(e) })));
    } else {
      replace(history, h('li', { class: 'muted', text: t('history_after_change') }));
    }
  }

  update(alert);
  return { el, update };
}
