// The care plan of a patient: the current version and its rules in words, every version with
// a diff between any two, and (for physicians) an editor of the threshold values that shows
// what changes before it saves a new version with its reason.
import { h, replace, id } from './dom.js';
import { t, fmtTime, fmtNumber, ruleTitle } from './i18n.js';
import { get, post } from './api.js';
import { currentUser, errorMessage, severityBadge, announce, actorName } from './ui.js';

const OPS = { at_least: '≥', above: '>', at_most: '≤', below: '<' };

/**
 * The plan in force: the stored current version, or the templates of the patient's
 * conditions composed; `plan` as written (what a physician edits), `effective` as the alert
 * engine runs it (with the safety net, each rule with its origin).
 */
export async function effectivePlan(patient) {
  const e = await get(`/patients/${patient.id}/care-plan/effective`);
  if (e.stored) return { ...e.stored, plan: e.plan, effective: e.effective, fromTemplate: false };
  const template = (e.templates.length ? e.templates : ['general']).join(' + ');
  return { plan: e.plan, effective: e.effective, template, version: null, fromTemplate: true };
}

/** Where a rule of the effective plan comes from, in words. */
function originText(origin) {
  if (!origin) return '—';
  return origin
    .split('+')
    .map((part) => {
      if (part === 'safety-net') return t('origin_net');
      if (part === 'plan') return t('origin_plan');
      if (part.startsWith('template:')) return t('origin_template', { template: part.slice(9) });
      return part;
    })
    .join(' + ');
}

function metricName(m) {
  return t(`metric_${m}`);
}

function conditionText(c) {
  const unit = c.unit && c.unit !== 'mg/dL' ? ` ${c.unit}` : '';
  return Object.keys(OPS)
    .filter((op) => c[op] !== undefined && c[op] !== null)
    .map((op) => `${metricName(c.metric)} ${OPS[op]} ${fmtNumber(c[op], 1)}${unit}`)
    .join(` ${t('and')} `);
}

/** Minutes as the largest whole unit: "30 min", "36 h", "3 d". */
function duration(minutes) {
  if (minutes >= 1440 && minutes % 1440 === 0) return t('days_n', { n: minutes / 1440 });
  if (minutes >= 60 && minutes % 60 === 0) return t('hours_n', { n: minutes / 60 });
  return t('minutes_n', { n: minutes });
}

function ruleText(rule) {
  switch (rule.type) {
    case 'threshold':
      return null;
    case 'trend':
      return t('rule_trend', { metric: metricName(rule.metric), direction: t(`direction_${rule.direction}`), delta: fmtNumber(rule.delta, 1), days: rule.baseline_days ?? 7 });
    case 'adherence':
      return t('rule_adherence', { kind: t(`kind_${rule.kind}`) });
    case 'device_offline':
      return t('rule_device_offline', { hours: fmtNumber(rule.after_hours, 1) });
    case 'low_battery':
      return t('rule_low_battery', { pct: rule.below_pct });
    case 'clock':
      return t('rule_clock');
    case 'average':
      return t('rule_average', { days: rule.days ?? 7, when: (rule.any || []).map(conditionText).join(` ${t('or')} `) });
    default:
      return rule.type;
  }
}

function rulesTable(plan) {
  const rows = [];
  for (const rule of plan.rules || []) {
    if (rule.type === 'threshold') {
      for (const band of rule.bands || []) {
        const persist = (band.consecutive ?? 1) > 1
          ? ` · ${band.within_minutes ? t('persistence', { n: band.consecutive, within: duration(band.within_minutes) }) : t('persistence_any', { n: band.consecutive })}`
          : '';
        rows.push(
          h(
            'tr',
            {},
            h('th', { scope: 'row', text: ruleTitle(rule.title) }),
            h('td', {}, severityBadge(band.severity)),
            h('td', { text: (band.any || []).map(conditionText).join(` ${t('or')} `) + persist }),
            h('td', { class: 'origin', text: originText(rule.origin) }),
          ),
        );
      }
    } else {
      rows.push(
        h('tr', {}, h('th', { scope: 'row', text: ruleTitle(rule.title) }), h('td', {}, rule.severity ? severityBadge(rule.severity) : '—'), h('td', { text: ruleText(rule) }), h('td', { class: 'origin', text: originText(rule.origin) })),
      );
    }
  }
  const schedule = (plan.schedule || []).map((e) => t('schedule_item', { kind: t(`kind_${e.kind}`), hours: fmtNumber(e.every_hours, 1), grace: fmtNumber(e.grace_hours ?? 0, 1) }));
  return [
    schedule.length > 0 && h('p', {}, h('strong', { text: `${t('schedule')}: ` }), schedule.join('; ')),
    h(
      'table',
      { class: 'data rules-table' },
      h('thead', {}, h('tr', {}, [t('rule'), t('severity'), t('when'), t('origin')].map((c) => h('th', { scope: 'col', text: c })))),
      h('tbody', {}, rows),
    ),
  ];
}

// ----- diff ---------------------------------------------------------------------------------

/** path → value for every leaf, rules keyed by id, bands by severity, schedule by kind. */
export function flatten(plan) {
  const out = new Map();
  const walk = (value, path) => {
    if (Array.isArray(value)) {
      value.forEach((v, i) => {
        let key = String(i);
        if (v && typeof v === 'object') {
          if (path.length === 1 && path[0] === 'rules' && v.id) key = v.id;
          else if (path[path.length - 1] === 'bands' && v.severity) key = v.severity;
          else if (path[path.length - 1] === 'schedule' && v.kind) key = v.kind;
          else if (path[path.length - 1] === 'any' && v.metric) key = `${i}:${v.metric}`;
        }
        walk(v, [...path, key]);
      });
      if (!value.length) out.set(path.join('/'), '[]');
    } else if (value && typeof value === 'object') {
      for (const [k, v] of Object.entries(value)) walk(v, [...path, k]);
    } else {
      out.set(path.join('/'), value);
    }
  };
  walk(plan || {}, []);
  return out;
}

/** A whole rule or band that exists on one side only, described in one line. */
function wholeUnit(path, plan, other) {
  const parts = path.split('/');
  const candidates = [];
  if (parts[0] === 'rules' && parts.length > 2) candidates.push(parts.slice(0, 2));
  if (parts[0] === 'rules' && parts[2] === 'bands' && parts.length > 4) candidates.push(parts.slice(0, 4));
  if (parts[0] === 'rules' && parts[4] === 'any' && parts.length > 6) candidates.push(parts.slice(0, 6));
  if (parts[0] === 'schedule' && parts.length > 2) candidates.push(parts.slice(0, 2));
  for (const prefix of candidates) {
    const p = prefix.join('/');
    if (![...other.keys()].some((k) => k.startsWith(`${p}/`))) {
      const rule = (plan.rules || []).find((r) => r.id === prefix[1]);
      let text = prefix[0] === 'schedule' ? t(`kind_${prefix[1]}`) : ruleTitle(rule?.title) || prefix[1];
      const band = prefix.length >= 4 ? (rule?.bands || []).find((bd) => bd.severity === prefix[3]) : null;
      if (prefix.length === 4) text = (band?.any || []).map(conditionText).join(` ${t('or')} `);
      if (prefix.length === 6) {
        const c = (band?.any || [])[Number(prefix[5].split(':')[0])];
        text = c ? conditionText(c) : prefix[5];
      }
      return { path: p, text };
    }
  }
  return null;
}

export function diffPlans(before, after) {
  const a = flatten(before);
  const b = flatten(after);
  const changes = [];
  const grouped = new Set();
  const one = (path, v, side, plan, other, change) => {
    const unit = wholeUnit(path, plan, other);
    if (!unit) {
      changes.push({ path, before: side === 'a' ? v : undefined, after: side === 'b' ? v : undefined, change });
    } else if (!grouped.has(`${change}:${unit.path}`)) {
      grouped.add(`${change}:${unit.path}`);
      changes.push({ path: unit.path, before: side === 'a' ? unit.text : undefined, after: side === 'b' ? unit.text : undefined, change });
    }
  };
  for (const [path, v] of a) {
    if (!b.has(path)) one(path, v, 'a', before || {}, b, 'removed');
    else if (b.get(path) !== v) changes.push({ path, before: v, after: b.get(path), change: 'changed' });
  }
  for (const [path, v] of b) if (!a.has(path)) one(path, v, 'b', after || {}, a, 'added');
  return changes.sort((x, y) => x.path.localeCompare(y.path));
}

function humanPath(path, plans) {
  const parts = path.split('/');
  const out = [];
  for (let i = 0; i < parts.length; i += 1) {
    const p = parts[i];
    const prev = parts[i - 1];
    if (prev === 'rules') {
      const rule = plans.flatMap((pl) => pl?.rules || []).find((r) => r.id === p);
      out.push(rule ? `«${ruleTitle(rule.title)}»` : p);
    } else if (prev === 'bands') out.push(t(`severity_${p}`));
    else if (prev === 'any') out.push(metricName(p.split(':')[1] || p));
    else if (prev === 'schedule') out.push(t(`kind_${p}`));
    else if (['rules', 'bands', 'any'].includes(p)) continue;
    else if (OPS[p]) out.push(OPS[p]);
    else out.push(t(`field_${p}`) === `field_${p}` ? p : t(`field_${p}`));
  }
  return out.join(' › ');
}

function show(v) {
  if (v === undefined) return '—';
  if (typeof v === 'number') return fmtNumber(v, 2);
  return String(v);
}

function diffTable(changes, plans) {
  if (!changes.length) return h('p', { class: 'muted diff-none', text: t('diff_none') });
  return h(
    'table',
    { class: 'data diff' },
    h('caption', { text: t('diff_caption', { n: changes.length }) }),
    h('thead', {}, h('tr', {}, [t('diff_what'), t('diff_before'), t('diff_after')].map((c) => h('th', { scope: 'col', text: c })))),
    h(
      'tbody',
      {},
      changes.map((c) =>
        h(
          'tr',
          { class: `diff-${c.change}`, dataset: { path: c.path } },
          h('th', { scope: 'row' }, h('span', { class: 'diff-kind', text: `${t(`diff_${c.change}`)}: ` }), humanPath(c.path, plans)),
          h('td', {}, c.before === undefined ? '—' : h('del', { text: show(c.before) })),
          h('td', {}, c.after === undefined ? '—' : h('ins', { text: show(c.after) })),
        ),
      ),
    ),
  );
}

// ----- section ------------------------------------------------------------------------------

export function carePlanSection(box, patient, isLive, onChange) {
  async function load() {
    try {
      const [current, versions] = await Promise.all([
        effectivePlan(patient),
        get(`/patients/${patient.id}/care-plan/versions`).then((v) => v.versions),
      ]);
      if (!isLive()) return;
      render(current, versions);
    } catch (e) {
      if (isLive()) replace(box, h('p', { class: 'form-error', role: 'alert', text: errorMessage(e) }));
    }
  }

  function render(current, versions) {
    const head = current.fromTemplate
      ? h('p', { id: 'plan-current', text: t('plan_from_template', { template: current.template }) })
      : h(
          'p',
          { id: 'plan-current', dataset: { version: String(current.version) } },
          h('strong', { text: t('plan_version', { v: current.version }) }),
          ` · ${t('plan_by', { author: actorName(current.author), at: fmtTime(current.created_at) })}`,
          current.template ? ` · ${t('plan_template', { template: current.template })}` : '',
          h('br'),
          `${t('reason')}: ${current.reason}`,
        );
    replace(
      box,
      head,
      rulesTable(current.effective || current.plan),
      versionsBlock(versions),
      currentUser()?.role === 'physician' && editor(current),
    );
  }

  function versionsBlock(versions) {
    if (!versions.length) return h('p', { class: 'muted', text: t('versions_none') });
    const fromId = id('diff-from');
    const toId = id('diff-to');
    const options = (selected) =>
      versions.map((v) => h('option', { value: String(v.version), selected: v.version === selected, text: t('plan_version', { v: v.version }) }));
    const fromSel = h('select', { id: fromId }, options(versions[1]?.version ?? versions[0].version));
    const toSel = h('select', { id: toId }, options(versions[0].version));
    const out = h('div', { class: 'diff-out', 'aria-live': 'polite', id: 'plan-diff' });
    const form = h(
      'form',
      { class: 'inline-form diff-form' },
      h('label', { for: fromId, text: t('diff_from') }),
      fromSel,
      h('label', { for: toId, text: t('diff_to') }),
      toSel,
      h('button', { type: 'submit', class: 'secondary', text: t('diff_show') }),
    );
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      try {
        const [a, b] = await Promise.all([
          get(`/patients/${patient.id}/care-plan/versions/${fromSel.value}`),
          get(`/patients/${patient.id}/care-plan/versions/${toSel.value}`),
        ]);
        replace(out, diffTable(diffPlans(a.plan, b.plan), [a.plan, b.plan]));
      } catch (e) {
        replace(out, h('p', { class: 'form-error', role: 'alert', text: errorMessage(e) }));
      }
    });
    return h(
      'div',
      { class: 'versions' },
      h('h3', { text: t('versions_title') }),
      h(
        'table',
        { class: 'data', id: 'plan-versions' },
        h('thead', {}, h('tr', {}, [t('version'), t('author'), t('created_at'), t('template'), t('reason')].map((c) => h('th', { scope: 'col', text: c })))),
        h(
          'tbody',
          {},
          versions.map((v) =>
            h(
              'tr',
              {},
              h('td', { text: String(v.version) }),
              h('td', { text: actorName(v.author) }),
              h('td', {}, h('time', { datetime: v.created_at, text: fmtTime(v.created_at) })),
              h('td', { text: v.template || '—' }),
              h('td', { text: v.reason }),
            ),
          ),
        ),
      ),
      versions.length > 1 && form,
      out,
    );
  }

  function editor(current) {
    const draft = structuredClone(current.plan);
    const preview = h('div', { class: 'diff-out', id: 'plan-preview', 'aria-live': 'polite' });
    const status = h('p', { class: 'action-status', role: 'status' });
    const refresh = () => replace(preview, diffTable(diffPlans(current.plan, draft), [current.plan, draft]));
    const fieldsets = [];
    for (const rule of draft.rules || []) {
      if (rule.type !== 'threshold') continue;
      const inputs = [];
      for (const band of rule.bands || []) {
        (band.any || []).forEach((c) => {
          for (const op of Object.keys(OPS)) {
            if (c[op] === undefined || c[op] === null) continue;
            const inputId = id('bound');
            const input = h('input', { id: inputId, type: 'number', step: 'any', required: true, value: String(c[op]), dataset: { rule: rule.id, severity: band.severity, metric: c.metric, op } });
            input.addEventListener('input', () => {
              const v = Number(input.value);
              if (input.value !== '' && Number.isFinite(v)) c[op] = v;
              refresh();
            });
            inputs.push(
              h(
                'div',
                { class: 'field field-inline' },
                h('label', { for: inputId, text: `${t(`severity_${band.severity}`)} · ${metricName(c.metric)} ${OPS[op]}${c.unit ? ` (${c.unit})` : ''}` }),
                input,
              ),
            );
          }
        });
      }
      fieldsets.push(h('fieldset', {}, h('legend', { text: ruleTitle(rule.title) }), inputs));
    }
    const reasonId = id('reason');
    const reason = h('textarea', { id: reasonId, rows: 2, required: true, maxlength: 2000 });
    const save = h('button', { type: 'submit', class: 'primary', text: t('plan_save') });
    const form = h(
      'form',
      { class: 'plan-editor', id: 'plan-editor' },
      h('p', { class: 'muted', text: t('plan_edit_intro') }),
      fieldsets,
      h('div', { class: 'field' }, h('label', { for: reasonId, text: t('plan_reason') }), reason),
      h('h4', { text: t('plan_changes') }),
      preview,
      status,
      save,
    );
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      status.classList.remove('error');
      if (!reason.value.trim()) {
        status.textContent = t('plan_reason_missing');
        status.classList.add('error');
        reason.focus();
        return;
      }
      if (!diffPlans(current.plan, draft).length) {
        status.textContent = t('diff_none');
        status.classList.add('error');
        return;
      }
      save.disabled = true;
      try {
        const created = await post(`/patients/${patient.id}/care-plan`, { plan: draft, reason: reason.value.trim() });
        announce(t('plan_saved', { v: created.version }));
        onChange({ ...created, fromTemplate: false });
        await load();
        box.querySelector('#plan-current')?.setAttribute('tabindex', '-1');
        box.querySelector('#plan-current')?.focus();
      } catch (e) {
        status.textContent = e.problems?.length ? `${errorMessage(e)} ${e.problems.join('; ')}` : errorMessage(e);
        status.classList.add('error');
      } finally {
        save.disabled = false;
      }
    });
    refresh();
    return h('details', { class: 'plan-edit' }, h('summary', { text: t('plan_edit') }), form);
  }

  load();
}
