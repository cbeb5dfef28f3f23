// Line charts in inline SVG over the overview series (columnar history:
// {t: [ms...], key: [values...]}), redrawn on each point: the last 15
// minutes, or what the broker has kept so far when that is less (at least a
// minute), so a young broker's charts are not squeezed to the right edge.

import { h, num } from './ui.js';

const NS = 'http://www.w3.org/2000/svg';
const W = 600, H = 150;
const WINDOW_MS = 15 * 60 * 1000;
const MIN_WINDOW_MS = 60 * 1000;

function span(ms) {
  const s = Math.round(ms / 1000);
  if (s % 60 === 0) return `−${s / 60} min`;
  return s >= 60 ? `−${Math.floor(s / 60)} min ${s % 60} s` : `−${s} s`;
}

function svg(tag, attrs) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

// The smallest of 1, 2, 5 x 10^n at or above v.
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

// spec: {id, title, series: [{key, name}], format (value -> text), unit}
export function lineChart(spec) {
  const fmt = spec.format || num;
  const plot = svg('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img', class: 'plot' });
  const title = `${spec.title}${spec.unit ? ' (' + spec.unit + ')' : ''}`;
  plot.setAttribute('aria-label', title);
  for (let i = 1; i < 4; i++) {
    plot.append(svg('line', { x1: 0, x2: W, y1: (H * i) / 4, y2: (H * i) / 4, class: 'grid', 'vector-effect': 'non-scaling-stroke' }));
  }
  const lines = spec.series.map((s, i) => {
    const l = svg('polyline', { points: '', class: `line s${i}`, 'vector-effect': 'non-scaling-stroke', 'data-key': s.key });
    plot.append(l);
    return l;
  });
  const top = h('span', { class: 'ymax' }, '');
  const left = h('span', {}, span(WINDOW_MS));
  const values = spec.series.map((s, i) => h('span', { class: 'value', 'data-key': s.key }, '–'));
  const legend = h('ul', { class: 'legend' }, spec.series.map((s, i) => h('li', {}, h('span', { class: `swatch s${i}`, 'aria-hidden': 'true' }), s.name, ' ', values[i])));
  const el = h('figure', { class: 'chart', id: spec.id },
    h('figcaption', {}, title),
    h('div', { class: 'plot-wrap' }, top, plot, h('span', { class: 'xlabels', 'aria-hidden': 'true' }, left, h('span', {}, 'now'))),
    legend);

  function update(cols) {
    const t = cols.t || [];
    if (!t.length) return;
    const end = t[t.length - 1];
    const width = Math.min(WINDOW_MS, Math.max(MIN_WINDOW_MS, end - t[0]));
    const start = end - width;
    left.textContent = span(width);
    let first = 0;
    while (first < t.length && t[first] < start) first++;
    let max = 0;
    for (const s of spec.series) {
      const col = cols[s.key] || [];
      for (let i = first; i < col.length; i++) if (col[i] > max) max = col[i];
    }
    el.dataset.peak = String(max);
    max = niceMax(max);
    top.textContent = fmt(max);
    spec.series.forEach((s, i) => {
      const col = cols[s.key] || [];
      const pts = [];
      for (let j = first; j < t.length; j++) {
        const x = ((t[j] - start) / width) * W;
        const y = H - ((col[j] || 0) / max) * H;
        pts.push(x.toFixed(1) + ',' + y.toFixed(1));
      }
      lines[i].setAttribute('points', pts.join(' '));
      const last = col.length ? col[col.length - 1] : null;
      values[i].textContent = fmt(last);
      values[i].dataset.raw = last === null ? '' : String(last);
    });
    el.dataset.points = String(t.length - first);
    el.dataset.end = String(end);
  }

  return { el, update };
}
