// Bridges: each [[bridges]] entry with its link state (connected since, the
// `in` subscriptions acknowledged), its last error, its outbound buffer
// (queued and in flight, against its limits), its send and receive rates
// (over the last 5 s, sampled by the broker) and its counters, refreshed
// every 2 s from GET /api/v1/bridges.

import * as api from './api.js';
import { h, clear, messages, table, num, bytes, time, every } from './ui.js';

const POLL_MS = 2000;

function state(b) {
  if (b.connected) {
    return h('span', {},
      h('span', { class: 'badge on', 'data-state': b.name }, 'connected'),
      h('small', {}, ` since ${time(b.connected_since_ms)}`),
      b.subscribed ? null : h('small', {}, ' (subscribing)'));
  }
  return h('span', { class: 'badge warn', 'data-state': b.name }, 'disconnected');
}

function lastError(b) {
  if (!b.last_error) return '–';
  return h('span', { 'data-error': b.name }, b.last_error.message,
    h('small', {}, ` (${time(b.last_error.at_ms)})`));
}

function buffered(b) {
  const q = b.buffered;
  const max = q.max_messages ? ` of ${num(q.max_messages)}` : '';
  return h('span', {},
    h('span', { 'data-buffered': b.name }, String(q.messages)), max,
    h('small', {}, ` · ${bytes(q.bytes)} · ${num(q.inflight)} in flight · when full: ${q.full_policy.replace('_', ' ')}`));
}

function dropped(c) {
  return c.dropped_buffer_full + c.dropped_unmappable + c.dropped_too_large +
    c.dropped_expired + c.dropped_looped + c.refused_by_remote;
}

export default {
  title: 'Bridges',
  render(page) {
    const msg = messages();
    const list = h('div', { id: 'bridges' });
    const detail = h('div', { id: 'bridge-counters' });
    page.append(h('h1', {}, 'Bridges'), msg.el, list, detail);

    async function load() {
      const r = await api.api('GET', '/api/v1/bridges');
      msg.clear();
      const rows = r.data;
      if (!rows.length) {
        clear(list, h('p', { class: 'msg', role: 'status', id: 'bridges-none' },
          'This broker has no bridges: add [[bridges]] entries to its configuration ' +
          '(docs/bridges.md) to forward topics to and from other brokers.'));
        clear(detail);
        return;
      }
      clear(list, table([
        { title: 'Bridge', cell: (b) => h('span', {}, h('strong', {}, b.name), h('br', {}),
          h('small', {}, `${b.remote} · MQTT ${b.protocol} · ${b.client_id}`)) },
        { title: 'State', cell: state },
        { title: 'Last error', cell: lastError },
        { title: 'Buffered', cell: buffered },
        { title: 'Sent/s', cell: (b) => h('span', { 'data-sent-rate': b.name }, num(b.rates.sent_per_second)), class: 'n' },
        { title: 'Received/s', cell: (b) => h('span', { 'data-received-rate': b.name }, num(b.rates.received_per_second)), class: 'n' },
      ], rows));
      const c = (b) => b.counters;
      clear(detail, h('h2', {}, 'Counters'), table([
        { title: 'Bridge', cell: (b) => b.name },
        { title: 'Sent', cell: (b) => h('span', { 'data-sent': b.name }, num(c(b).sent)), class: 'n' },
        { title: 'Acknowledged', cell: (b) => num(c(b).acked), class: 'n' },
        { title: 'Received', cell: (b) => h('span', { 'data-received': b.name }, num(c(b).received)), class: 'n' },
        { title: 'Connects', cell: (b) => num(c(b).connects), class: 'n' },
        { title: 'Connect failures', cell: (b) => num(c(b).connect_failures), class: 'n' },
        { title: 'Disconnects', cell: (b) => num(c(b).disconnects), class: 'n' },
        { title: 'Dropped', cell: (b) => h('span', { 'data-dropped': b.name,
          title: `buffer full ${c(b).dropped_buffer_full}, unmappable ${c(b).dropped_unmappable}, ` +
            `too large ${c(b).dropped_too_large}, expired ${c(b).dropped_expired}, ` +
            `looped ${c(b).dropped_looped}, refused by the remote ${c(b).refused_by_remote}` },
        num(dropped(c(b)))), class: 'n' },
      ], rows));
    }
    const stop = every(POLL_MS, load, (e) => msg.error(e));
    return stop;
  },
};
