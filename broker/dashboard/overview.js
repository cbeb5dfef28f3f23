// Overview: the node's status and live charts of the last 15 minutes, fed by
// the broker's metrics stream (history first, then one point a second).

import * as api from './api.js';
import { h, messages, num, bytes, duration, every } from './ui.js';
import { lineChart } from './chart.js';

const KEEP = 900;

const CHARTS = [
  { id: 'chart-connections', title: 'Connections', series: [{ key: 'connections', name: 'open' }, { key: 'sessions', name: 'sessions' }] },
  { id: 'chart-listeners', title: 'Connections by listener', listeners: true, series: [
    { key: 'conn_mqtt', name: 'mqtt', listener: 'mqtt' }, { key: 'conn_ws', name: 'ws', listener: 'ws' },
    { key: 'conn_mqtts', name: 'mqtts', listener: 'mqtts' }, { key: 'conn_wss', name: 'wss', listener: 'wss' }] },
  { id: 'chart-messages', title: 'Messages', unit: 'per second', series: [{ key: 'messages_in_rate', name: 'in' }, { key: 'messages_out_rate', name: 'out' }] },
  { id: 'chart-bytes', title: 'Bytes', unit: 'per second', format: bytes, series: [{ key: 'bytes_in_rate', name: 'in' }, { key: 'bytes_out_rate', name: 'out' }] },
  { id: 'chart-dropped', title: 'Dropped', unit: 'per second', series: [{ key: 'dropped_rate', name: 'dropped' }, { key: 'no_subscribers_rate', name: 'no subscriber' }] },
  { id: 'chart-queued', title: 'Queued and in flight', series: [{ key: 'queued', name: 'queued' }, { key: 'inflight', name: 'in flight' }] },
  { id: 'chart-retained', title: 'Retained and subscriptions', series: [{ key: 'retained', name: 'retained' }, { key: 'subscriptions', name: 'subscriptions' }] },
  { id: 'chart-rules', title: 'Rules', unit: 'per second', series: [
    { key: 'rule_matched_rate', name: 'matched' }, { key: 'rule_passed_rate', name: 'passed' },
    { key: 'rule_failed_rate', name: 'failed' }, { key: 'rule_actions_rate', name: 'actions' },
    { key: 'rule_actions_failed_rate', name: 'actions failed' }] },
  { id: 'chart-plugins', title: 'Plugins', unit: 'per second', series: [{ key: 'plugin_calls_rate', name: 'calls' }, { key: 'plugin_failures_rate', name: 'failures' }] },
];

function card(label, id) {
  return h('div', { class: 'card' }, h('span', { class: 'card-label' }, label), h('span', { class: 'card-value', id }, '–'));
}

export default {
  title: 'Overview',
  render(page) {
    const msg = messages();
    const cards = h('div', { class: 'cards' },
      card('Uptime', 'stat-uptime'), card('Version', 'stat-version'), card('Connections', 'stat-connections'),
      card('Sessions', 'stat-sessions'), card('Subscriptions', 'stat-subscriptions'), card('Retained', 'stat-retained'),
      card('Rules', 'stat-rules'), card('Plugins', 'stat-plugins'), card('Persistence', 'stat-persistence'));
    const grid = h('div', { class: 'charts' });
    page.append(h('h1', {}, 'Overview'), msg.el, cards,
      h('h2', {}, 'Last 15 minutes'), h('p', { class: 'hint' }, 'One point a second, the last 15 minutes kept by the broker; the charts move as points arrive.'), grid);

    const ctrl = new AbortController();
    let charts = [];
    let cols = null;
    let uptimeBase = null;

    const build = (listeners) => {
      grid.replaceChildren();
      charts = CHARTS.map((c) => {
        const spec = c.listeners ? { ...c, series: c.series.filter((s) => listeners.includes(s.listener)) } : c;
        const ch = lineChart(spec);
        grid.append(ch.el);
        return ch;
      });
    };
    build(['mqtt', 'ws', 'mqtts', 'wss']);
    api.api('GET', '/api/v1/listeners', undefined, { signal: ctrl.signal })
      .then((l) => {
        build(l.data.map((x) => x.name));
        if (cols) charts.forEach((c) => c.update(cols));
      })
      .catch((e) => e.name !== 'AbortError' && msg.error(e));

    const redraw = () => charts.forEach((c) => c.update(cols));
    api.stream('/api/v1/metrics/stream', (name, data) => {
      if (name === 'history') {
        cols = data.series;
        if (!cols.t) cols = { t: [] };
      } else if (name === 'sample' && cols) {
        const t = cols.t;
        if (t.length && data.t <= t[t.length - 1]) return; // already in the history
        for (const [k, v] of Object.entries(data)) (cols[k] ||= []).push(v);
        if (t.length > KEEP) for (const k of Object.keys(cols)) cols[k].splice(0, cols[k].length - KEEP);
      }
      redraw();
    }, ctrl.signal);

    const showUptime = () => {
      const el = document.getElementById('stat-uptime');
      if (el && uptimeBase) el.textContent = duration(uptimeBase.s + (Date.now() - uptimeBase.at) / 1000);
    };
    const stopStatus = every(5000, async () => {
      const s = await api.api('GET', '/api/v1/status', undefined, { signal: ctrl.signal });
      uptimeBase = { s: s.uptime_seconds, at: Date.now() };
      showUptime();
      const set = (id, v) => {
        const el = document.getElementById(id);
        if (el) el.textContent = v;
      };
      set('stat-version', `${s.version}`);
      set('stat-connections', num(s.connections));
      set('stat-sessions', num(s.sessions));
      set('stat-subscriptions', num(s.subscriptions));
      set('stat-retained', num(s.retained));
      set('stat-rules', num(s.rules));
      set('stat-plugins', num(s.plugins));
      set('stat-persistence', s.persistence ? 'on' : 'off');
      msg.clear();
    }, (e) => e.name !== 'AbortError' && msg.error(e));
    const tick = setInterval(showUptime, 1000);

    return () => {
      ctrl.abort();
      stopStatus();
      clearInterval(tick);
    };
  },
};
