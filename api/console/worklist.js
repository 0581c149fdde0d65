// The worklist: the open alerts as a compact table for a nurse who follows hundreds of
// patients. Live like the inbox (same queue, same stream); sortable by severity, due time,
// age and patient; filtered by the patient's condition, the rule, the assignee and (for staff
// of several COTs) the COT; counts per severity always on top; keyboard-driven:
//
//   j / ↓, k / ↑   move between rows          Enter   open the alert (its card, beside)
//   x / Space      select the row             a       acknowledge the row
//   L              select every low alert     B       acknowledge the selected low alerts
//   1 2 3 4        sort by severity, due, age, patient (again: reverse)
//   /              to the filters             Esc     close the open alert
//
// Bulk acknowledgement is for low (and info) alerts only: anything medium or worse is
// looked at one by one.
import { h, replace, id } from './dom.js';
import { t, fmtTime, fmtAgo, ruleTitle } from './i18n.js';
import * as alerts from './alerts.js';
import { currentUser, errorMessage, severityBadge, announce } from './ui.js';
import { alertCard } from './inbox.js';

const SEVERITIES = ['critical', 'high', 'medium', 'low', 'info'];
const BULK = new Set(['low', 'info']);
const SORT_KEY = 'sentinella.worklist';

/** The sort orders; `dir` 1 as listed, -1 reversed. Exported for the module tests. */
export const SORTS = {
  severity: (a, b) => alerts.compareAlerts(a, b),
  due: (a, b) => (a.due_at ?? '9999').localeCompare(b.due_at ?? '9999') || alerts.compareAlerts(a, b),
  age: (a, b) => a.opened_at.localeCompare(b.opened_at) || a.id - b.id,
  patient: (a, b, name) => name(a).localeCompare(name(b)) || alerts.compareAlerts(a, b),
};

/** Applies the filters (empty string: any) to a queue. Exported for the module tests. */
export function filterQueue(queue, f, patientOf, me) {
  return queue.filter((a) => {
    const p = patientOf(a.patient_id);
    if (f.condition && !(p?.conditions || []).includes(f.condition)) return false;
    if (f.rule && a.rule_id !== f.rule) return false;
    if (f.assignee === '-' && a.assignee) return false;
    if (f.assignee === 'me' && a.assignee !== me) return false;
    if (f.assignee && f.assignee !== '-' && f.assignee !== 'me' && a.assignee !== f.assignee) return false;
    if (f.cot && String(a.cot_id) !== f.cot) return false;
    return true;
  });
}

/** Open alerts per severity. */
export function countBySeverity(queue) {
  const counts = Object.fromEntries(SEVERITIES.map((s) => [s, 0]));
  for (const a of queue) counts[a.severity] += 1;
  return counts;
}

function loadSort() {
  try {
    const s = JSON.parse(sessionStorage.getItem(SORT_KEY) || '{}');
    return { by: SORTS[s.by] ? s.by : 'severity', dir: s.dir === -1 ? -1 : 1 };
  } catch (_) {
    return { by: 'severity', dir: 1 };
  }
}

export function worklistPage(root) {
  const sort = loadSort();
  const filters = { condition: '', rule: '', assignee: '', cot: '' };
  const selected = new Set();
  let cursor = null; // alert id of the focused row
  let openCard = null; // { id, card }
  let rows = [];
  let focusedOnce = false;

  const counts = h('ul', { class: 'severity-counts', id: 'severity-counts', 'aria-label': t('worklist_counts') });
  const status = h('p', { class: 'action-status', id: 'worklist-status', role: 'status' });
  const selects = {};
  const filterBar = h('div', { class: 'filters', role: 'group', 'aria-label': t('filters'), id: 'worklist-filters' });
  for (const name of ['condition', 'rule', 'assignee', 'cot']) {
    const sid = id(`filter-${name}`);
    selects[name] = h('select', { id: sid, dataset: { filter: name } });
    selects[name].addEventListener('change', () => {
      filters[name] = selects[name].value;
      render();
    });
    filterBar.append(h('span', { class: 'check', dataset: { filterBox: name } }, h('label', { for: sid, text: t(`worklist_filter_${name}`) }), selects[name]));
  }
  const headers = ['select', 'severity', 'patient', 'alert', 'due', 'age', 'assignee', 'state'];
  const sortable = { severity: 'severity', patient: 'patient', due: 'due', age: 'age' };
  const head = h(
    'tr',
    {},
    headers.map((col) => {
      if (!sortable[col]) return h('th', { scope: 'col', text: col === 'select' ? '' : t(`worklist_col_${col}`) });
      const b = h('button', { type: 'button', class: 'sort', dataset: { sort: col }, text: t(`worklist_col_${col}`) });
      b.addEventListener('click', () => setSort(col));
      return h('th', { scope: 'col', dataset: { sortCol: col } }, b);
    }),
  );
  const body = h('tbody', {});
  const table = h('table', { class: 'data worklist', id: 'worklist-table', 'aria-labelledby': 'worklist-title' }, h('thead', {}, head), body);
  const bulk = h('button', { type: 'button', class: 'secondary', id: 'bulk-ack', text: t('worklist_bulk_ack') });
  bulk.addEventListener('click', () => bulkAck());
  const selectLows = h('button', { type: 'button', class: 'secondary', id: 'select-lows', text: t('worklist_select_lows') });
  selectLows.addEventListener('click', () => selectAllLows());
  const detail = h('aside', { class: 'worklist-detail', id: 'worklist-detail', 'aria-label': t('worklist_detail') });
  const empty = h('p', { class: 'empty', id: 'worklist-empty', text: t('inbox_empty') });

  replace(
    root,
    h('div', { class: 'page-head' }, h('h1', { id: 'worklist-title', text: t('worklist_title') }), counts),
    h('p', { class: 'muted', id: 'worklist-keys', text: t('worklist_keys') }),
    filterBar,
    h('div', { class: 'worklist-actions' }, selectLows, bulk, status),
    h('div', { class: 'worklist-layout' }, h('div', { class: 'table-scroll' }, table, empty), detail),
  );

  function patientName(a) {
    const p = alerts.patient(a.patient_id);
    return p ? p.display_name : `#${a.patient_id}`;
  }

  function setSort(by) {
    sort.dir = sort.by === by ? -sort.dir : 1;
    sort.by = by;
    try {
      sessionStorage.setItem(SORT_KEY, JSON.stringify(sort));
    } catch (_) {
      // Not kept; still sorted on this page.
    }
    render();
  }

  function options(select, values, current) {
    const wanted = JSON.stringify(values);
    if (select.dataset.options !== wanted) {
      select.dataset.options = wanted;
      replace(select, values.map(([value, text]) => h('option', { value, text, selected: value === current })));
    }
    select.value = current;
  }

  function renderFilters(all) {
    const me = currentUser()?.username;
    const conditions = new Set();
    const rules = new Map();
    const assignees = new Set();
    const cots = new Set();
    for (const a of all) {
      for (const c of alerts.patient(a.patient_id)?.conditions || []) conditions.add(c);
      rules.set(a.rule_id, ruleTitle(a.title));
      if (a.assignee && a.assignee !== me) assignees.add(a.assignee);
      cots.add(a.cot_id);
    }
    const any = ['', t('filter_all')];
    options(selects.condition, [any, ...[...conditions].sort().map((c) => [c, conditionText(c)])], filters.condition);
    options(selects.rule, [any, ...[...rules].sort((x, y) => x[1].localeCompare(y[1])).map(([r, title]) => [r, `${title} (${r})`])], filters.rule);
    options(selects.assignee, [any, ['me', t('worklist_mine')], ['-', t('nobody')], ...[...assignees].sort().map((a) => [a, a])], filters.assignee);
    const cotNames = new Map((currentUser()?.cots || []).map((c) => [c.id, c.code]));
    options(selects.cot, [any, ...[...cots].sort((x, y) => x - y).map((c) => [String(c), cotNames.get(c) || `COT ${c}`])], filters.cot);
    // Staff of one COT need no COT filter.
    filterBar.querySelector('[data-filter-box=cot]').hidden = (currentUser()?.cots || []).length < 2 && cots.size < 2;
  }

  function render() {
    const all = alerts.queue();
    renderFilters(all);
    const me = currentUser()?.username;
    const shown = filterQueue(all, filters, alerts.patient, me);
    const cmp = SORTS[sort.by];
    shown.sort((a, b) => sort.dir * cmp(a, b, patientName));
    rows = shown;
    for (const alertId of [...selected]) if (!shown.some((a) => a.id === alertId)) selected.delete(alertId);
    const n = countBySeverity(all);
    replace(
      counts,
      SEVERITIES.map((s) => h('li', { class: `count-${s}`, dataset: { severity: s } }, severityBadge(s), h('span', { class: 'n', text: String(n[s]) }))),
    );
    for (const th of head.querySelectorAll('th[data-sort-col]')) {
      th.setAttribute('aria-sort', th.dataset.sortCol === sort.by ? (sort.dir === 1 ? 'ascending' : 'descending') : 'none');
    }
    const focusedId = document.activeElement?.closest?.('#worklist-table tr')?.dataset.alertId;
    replace(
      body,
      shown.map((a) => {
        const isSelected = selected.has(a.id);
        const box = h('input', { type: 'checkbox', tabindex: '-1', checked: isSelected, 'aria-label': `${t('worklist_select')}: ${ruleTitle(a.title)}, ${patientName(a)}` });
        box.addEventListener('change', () => {
          if (box.checked) selected.add(a.id);
          else selected.delete(a.id);
          render();
        });
        const tr = h(
          'tr',
          {
            tabindex: a.id === cursor ? '0' : '-1',
            class: `sev-row-${a.severity}${isSelected ? ' selected' : ''}${openCard?.id === a.id ? ' open' : ''}`,
            'aria-selected': String(isSelected),
            dataset: { alertId: String(a.id), severity: a.severity, workflow: a.workflow, patientId: String(a.patient_id) },
          },
          h('td', {}, box),
          h('td', {}, severityBadge(a.severity)),
          h('td', { class: 'patient', text: patientName(a) }),
          h('td', { class: 'title', text: ruleTitle(a.title) }),
          h('td', { class: 'due' }, a.due_at ? h('time', { datetime: a.due_at, text: fmtTime(a.due_at) }) : '—', a.retry_at ? h('span', { class: 'retry-mark', text: ` ↻ ${t('retry')}` }) : ''),
          h('td', { class: 'age' }, h('time', { datetime: a.opened_at, text: fmtAgo(a.opened_at) })),
          h('td', { class: 'assignee', text: a.assignee || '—' }),
          h('td', { class: 'state', text: t(`workflow_${a.workflow}`) }),
        );
        tr.addEventListener('click', (ev) => {
          if (ev.target === box) return;
          moveTo(a.id);
        });
        tr.addEventListener('dblclick', () => open(a.id));
        return tr;
      }),
    );
    if (cursor === null || !shown.some((a) => a.id === cursor)) {
      cursor = shown[0]?.id ?? null;
      body.querySelector('tr')?.setAttribute('tabindex', '0');
    }
    if (focusedId) body.querySelector(`tr[data-alert-id="${focusedId}"]`)?.focus();
    else if (!focusedOnce && shown.length && (document.activeElement === document.body || document.activeElement?.id === 'main')) {
      // The first time there are rows, the table takes the keyboard.
      focusedOnce = true;
      rowOf(cursor)?.focus();
    }
    empty.hidden = shown.length > 0 || !alerts.isLoaded();
    bulk.disabled = ![...selected].some((i) => BULK.has(rows.find((a) => a.id === i)?.severity));
    if (openCard) {
      const current = all.find((a) => a.id === openCard.id);
      if (current) openCard.card.update(current);
      else closeDetail();
    }
  }

  function rowOf(alertId) {
    return body.querySelector(`tr[data-alert-id="${alertId}"]`);
  }

  function moveTo(alertId) {
    if (alertId === null || alertId === undefined) return;
    rowOf(cursor)?.setAttribute('tabindex', '-1');
    cursor = alertId;
    const tr = rowOf(alertId);
    tr?.setAttribute('tabindex', '0');
    tr?.focus();
  }

  function step(delta) {
    const i = rows.findIndex((a) => a.id === cursor);
    const next = rows[Math.max(0, Math.min(rows.length - 1, (i < 0 ? 0 : i) + delta))];
    if (next) moveTo(next.id);
  }

  function toggle(alertId) {
    if (selected.has(alertId)) selected.delete(alertId);
    else selected.add(alertId);
    render();
  }

  function selectAllLows() {
    for (const a of rows) if (BULK.has(a.severity) && a.workflow === 'new') selected.add(a.id);
    render();
  }

  async function bulkAck() {
    const targets = rows.filter((a) => selected.has(a.id) && BULK.has(a.severity) && a.workflow === 'new');
    if (!targets.length) {
      status.textContent = t('worklist_bulk_none');
      return;
    }
    bulk.disabled = true;
    let done = 0;
    const failed = [];
    for (const a of targets) {
      try {
        await alerts.acknowledge(a.id);
        done += 1;
        selected.delete(a.id);
      } catch (e) {
        failed.push(`#${a.id}: ${errorMessage(e)}`);
      }
    }
    const text = t('worklist_bulk_done', { n: done }) + (failed.length ? ` ${failed.join('; ')}` : '');
    status.textContent = text;
    status.classList.toggle('error', failed.length > 0);
    announce(text);
    render();
  }

  function open(alertId) {
    const a = rows.find((x) => x.id === alertId);
    if (!a) return;
    const card = alertCard(a);
    openCard = { id: alertId, card };
    replace(detail, h('button', { type: 'button', class: 'secondary', id: 'close-detail', text: t('worklist_close'), onclick: () => closeDetail() }), h('ol', { class: 'alert-list' }, card.el));
    alerts.reload(alertId);
    render();
    card.el.querySelector('button:not([hidden]), summary')?.focus();
  }

  function closeDetail() {
    const was = openCard?.id;
    openCard = null;
    replace(detail);
    render();
    if (was) moveTo(was);
  }

  function onKey(ev) {
    if (ev.defaultPrevented || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const inTable = ev.target.closest?.('#worklist-table');
    const typing = /^(INPUT|TEXTAREA|SELECT)$/.test(ev.target.tagName) && !inTable;
    if (ev.key === 'Escape' && openCard) {
      ev.preventDefault();
      closeDetail();
      return;
    }
    if (typing || ev.target.closest?.('#worklist-detail')) return;
    const keys = {
      j: () => step(1),
      ArrowDown: () => step(1),
      k: () => step(-1),
      ArrowUp: () => step(-1),
      Home: () => moveTo(rows[0]?.id),
      End: () => moveTo(rows[rows.length - 1]?.id),
      x: () => cursor !== null && toggle(cursor),
      ' ': () => cursor !== null && toggle(cursor),
      Enter: () => cursor !== null && open(cursor),
      a: () => {
        const a = rows.find((r) => r.id === cursor);
        if (a?.workflow === 'new') {
          alerts.acknowledge(a.id).then(
            () => announce(t('done_ack')),
            (e) => {
              status.textContent = errorMessage(e);
            },
          );
        }
      },
      L: () => selectAllLows(),
      B: () => bulkAck(),
      1: () => setSort('severity'),
      2: () => setSort('due'),
      3: () => setSort('age'),
      4: () => setSort('patient'),
      '/': () => selects.condition.focus(),
    };
    const run = keys[ev.key];
    if (!run) return;
    ev.preventDefault();
    run();
  }

  document.addEventListener('keydown', onKey);
  render();
  const unsubscribe = alerts.subscribe(() => render());
  return () => {
    unsubscribe();
    document.removeEventListener('keydown', onKey);
  };
}

function conditionText(c) {
  const key = `condition_name_${c}`;
  const text = t(key);
  return text === key ? c : text;
}
