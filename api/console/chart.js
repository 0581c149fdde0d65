// A small SVG line chart of our own: time axis, value axis, one polyline per series, points
// with a tooltip, and horizontal threshold lines (from the care plan) labelled with their
// bound and severity. No library, no canvas: the SVG is part of the page and scales.
import { s, h, id } from './dom.js';
import { t, fmtNumber, locale, ruleTitle } from './i18n.js';
import { SEVERITY_RANK } from './alerts.js';

const W = 760;
const H = 280;
const M = { top: 24, right: 16, bottom: 34, left: 52 };

const HOUR = 3600e3;
const DAY = 24 * HOUR;
const TIME_STEPS = [HOUR, 2 * HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR, DAY, 2 * DAY, 7 * DAY, 14 * DAY, 30 * DAY];

function niceStep(range, count) {
  const raw = range / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) if (raw <= m * mag) return m * mag;
  return 10 * mag;
}

function timeTicks(from, to) {
  const step = TIME_STEPS.find((st) => (to - from) / st <= 8) || 30 * DAY;
  const ticks = [];
  const start = new Date(from);
  if (step >= DAY) {
    start.setHours(0, 0, 0, 0);
  } else {
    start.setMinutes(0, 0, 0);
    start.setHours(Math.floor(start.getHours() / (step / HOUR)) * (step / HOUR));
  }
  let tick = start.getTime();
  while (tick < from) tick += step;
  for (; tick <= to; tick += step) ticks.push(tick);
  const fmt =
    step >= DAY
      ? new Intl.DateTimeFormat(locale(), { day: '2-digit', month: '2-digit' })
      : new Intl.DateTimeFormat(locale(), { hour: '2-digit', minute: '2-digit' });
  return ticks.map((v) => ({ v, label: fmt.format(new Date(v)) }));
}

const OPS = { at_least: '≥', above: '>', at_most: '≤', below: '<' };

/** Threshold lines for `metrics` from a care plan's threshold rules (glucose in mg/dL). */
export function thresholdsFor(plan, metrics) {
  const byKey = new Map();
  for (const rule of plan?.rules || []) {
    if (rule.type !== 'threshold') continue;
    for (const band of rule.bands || []) {
      for (const c of band.any || []) {
        if (!metrics.includes(c.metric)) continue;
        const factor = c.unit === 'mmol/L' ? 18.016 : 1;
        for (const op of Object.keys(OPS)) {
          if (c[op] === undefined || c[op] === null) continue;
          const value = Math.round(c[op] * factor * 10) / 10;
          const key = `${c.metric}|${op}|${value}`;
          const prev = byKey.get(key);
          if (!prev || SEVERITY_RANK[band.severity] > SEVERITY_RANK[prev.severity]) {
            byKey.set(key, { metric: c.metric, op, value, severity: band.severity, rule: rule.id, title: ruleTitle(rule.title) });
          }
        }
      }
    }
  }
  return [...byKey.values()].sort((a, b) => b.value - a.value);
}

/**
 * The chart as a <figure>. `series`: [{key, label, points: [{t, v, title}]}];
 * `thresholds` from thresholdsFor; `from`/`to` in ms.
 */
export function lineChart({ title, unit, series, thresholds, from, to }) {
  const titleId = id('chart-title');
  const descId = id('chart-desc');
  const values = series.flatMap((se) => se.points.map((p) => p.v)).concat(thresholds.map((th) => th.value));
  let lo = values.length ? Math.min(...values) : 0;
  let hi = values.length ? Math.max(...values) : 1;
  if (lo === hi) {
    lo -= 1;
    hi += 1;
  }
  const pad = (hi - lo) * 0.08;
  const step = niceStep(hi - lo + 2 * pad, 5);
  lo = Math.floor((lo - pad) / step) * step;
  hi = Math.ceil((hi + pad) / step) * step;
  const x = (v) => M.left + ((v - from) / (to - from)) * (W - M.left - M.right);
  const y = (v) => H - M.bottom - ((v - lo) / (hi - lo)) * (H - M.top - M.bottom);
  const n = series.reduce((sum, se) => sum + se.points.length, 0);

  const grid = [];
  for (let v = lo; v <= hi + step / 2; v += step) {
    grid.push(
      s('line', { class: 'grid', x1: M.left, x2: W - M.right, y1: y(v), y2: y(v) }),
      s('text', { class: 'axis-label', x: M.left - 6, y: y(v) + 4, 'text-anchor': 'end' }, fmtNumber(v, 1)),
    );
  }
  for (const tick of timeTicks(from, to)) {
    grid.push(
      s('line', { class: 'grid grid-time', x1: x(tick.v), x2: x(tick.v), y1: M.top, y2: H - M.bottom }),
      s('text', { class: 'axis-label', x: x(tick.v), y: H - M.bottom + 18, 'text-anchor': 'middle' }, tick.label),
    );
  }

  const lines = [];
  // Labels sit just above their line, at the right end; when that would overlap the label
  // above, at the left end; when both would, pushed down.
  const last = { right: -Infinity, left: -Infinity };
  // Placed from the top line down, so "the label above" is the one placed last.
  const topDown = [...thresholds].sort((a, b) => y(a.value) - y(b.value));
  for (const th of topDown) {
    const yy = y(th.value);
    let labelY = yy - 4;
    let side = 'right';
    if (labelY - last.right < 12) {
      if (labelY - last.left >= 12) side = 'left';
      else labelY = Math.max(last.right, last.left) + 12;
    }
    last[side] = labelY;
    const label = `${t(`metric_${th.metric}`)} ${OPS[th.op]} ${fmtNumber(th.value, 1)} · ${t(`severity_${th.severity}`)}`;
    lines.push(
      s(
        'g',
        { class: `threshold threshold-${th.severity}`, dataset: { metric: th.metric, value: String(th.value), severity: th.severity } },
        s('title', {}, `${th.title}: ${label}`),
        s('line', { x1: M.left, x2: W - M.right, y1: yy, y2: yy }),
        side === 'right'
          ? s('text', { x: W - M.right - 4, y: labelY, 'text-anchor': 'end' }, label)
          : s('text', { x: M.left + 4, y: labelY, 'text-anchor': 'start' }, label),
      ),
    );
  }

  const plotted = series.map((se) => {
    const pts = [...se.points].sort((a, b) => a.t - b.t);
    return s(
      'g',
      { class: `series series-${se.key}`, dataset: { series: se.key } },
      pts.length > 1 && s('polyline', { points: pts.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(' ') }),
      pts.map((p) => s('circle', { cx: x(p.t).toFixed(1), cy: y(p.v).toFixed(1), r: 2.6 }, s('title', {}, p.title))),
    );
  });

  const desc = n
    ? t('chart_desc', { n, thresholds: thresholds.length })
    : t('chart_empty');
  const svg = s(
    'svg',
    {
      class: 'chart',
      viewBox: `0 0 ${W} ${H}`,
      role: 'img',
      'aria-labelledby': `${titleId} ${descId}`,
      preserveAspectRatio: 'xMidYMid meet',
    },
    s('title', { id: titleId }, `${title} (${unit})`),
    s('desc', { id: descId }, desc),
    s('rect', { class: 'plot-bg', x: M.left, y: M.top, width: W - M.left - M.right, height: H - M.top - M.bottom }),
    grid,
    lines,
    plotted,
    s('text', { class: 'axis-unit', x: M.left - 6, y: M.top - 10, 'text-anchor': 'end' }, unit),
    !n && s('text', { class: 'chart-empty', x: W / 2, y: H / 2, 'text-anchor': 'middle' }, t('chart_empty')),
  );
  const legend = h(
    'ul',
    { class: 'legend' },
    series.map((se) => h('li', {}, h('span', { class: `swatch swatch-${se.key}`, 'aria-hidden': 'true' }), se.label)),
    thresholds.length > 0 && h('li', {}, h('span', { class: 'swatch swatch-threshold', 'aria-hidden': 'true' }), t('legend_threshold')),
  );
  return h('figure', { class: 'chart-figure' }, h('figcaption', { text: `${title} (${unit})` }), svg, legend);
}
