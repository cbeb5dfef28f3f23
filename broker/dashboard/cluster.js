// Cluster: this node's link to NATS, every node with a membership record
// (alive or dead, its last heartbeat) and the cross-node traffic of each
// (the counters every node sends with its heartbeat), and a chart of this
// node's messages forwarded and received per second over the last 15
// minutes (the broker's overview series).

import * as api from './api.js';
import { h, clear, messages, table, num, bytes, time, every } from './ui.js';
import { lineChart } from './chart.js';

const POLL_MS = 2000;
const KEEP = 900;

function ago(ms) {
  return ms < 1000 ? `${ms} ms ago` : `${(ms / 1000).toFixed(1)} s ago`;
}

export default {
  title: 'Cluster',
  render(page) {
    const msg = messages();
    const info = h('div', { id: 'cluster-info' });
    const nodes = h('div', { id: 'cluster-nodes' });
    const chart = lineChart({ id: 'chart-cluster', title: 'Cross-node messages of this node', unit: 'per second',
      series: [{ key: 'cluster_forwarded_rate', name: 'forwarded' }, { key: 'cluster_received_rate', name: 'received' }] });
    const charts = h('div', { class: 'charts', hidden: true }, chart.el);
    page.append(h('h1', {}, 'Cluster'), msg.el, info, nodes, charts);

    const last = new Map(); // node -> {at, traffic, rate}
    const ctrl = new AbortController();
    let cols = null;
    api.stream('/api/v1/metrics/stream', (name, data) => {
      if (name === 'history') {
        cols = data.series.t ? data.series : { t: [] };
      } else if (name === 'sample' && cols) {
        const t = cols.t;
        if (t.length && data.t <= t[t.length - 1]) return;
        for (const [k, v] of Object.entries(data)) (cols[k] ||= []).push(v);
        if (t.length > KEEP) for (const k of Object.keys(cols)) cols[k].splice(0, cols[k].length - KEEP);
      }
      if (cols && !charts.hidden) chart.update(cols);
    }, ctrl.signal);

    // Per second since the node's previous report (kept while it has not
    // reported again); null before two reports.
    function rates(n) {
      const at = n.this ? Date.now() : n.heartbeat_ms;
      const prev = last.get(n.node);
      let rate = prev ? prev.rate : null;
      if (n.traffic && prev && prev.traffic && at > prev.at) {
        const dt = (at - prev.at) / 1000;
        const d = (k) => Math.max(0, n.traffic[k] - prev.traffic[k]) / dt;
        rate = { forwarded: d('forwarded'), received: d('received') };
      }
      if (!prev || at > prev.at) last.set(n.node, { at, traffic: n.traffic, rate });
      return rate;
    }

    async function load() {
      const c = await api.api('GET', '/api/v1/cluster');
      msg.clear();
      if (!c.enabled) {
        charts.hidden = true;
        clear(info, h('p', { class: 'msg', role: 'status', id: 'cluster-off' },
          `This broker (node ${c.node}) is not in a cluster: [cluster] enabled = false in its configuration. ` +
          'With a cluster, this page lists its nodes, their health and the traffic between them.'));
        clear(nodes);
        return;
      }
      const nats = c.nats || {};
      clear(info, h('dl', { class: 'facts' },
        h('dt', {}, 'This node'), h('dd', { id: 'cluster-node' }, c.node),
        h('dt', {}, 'Cluster'), h('dd', {}, c.name ?? '–'),
        h('dt', {}, 'NATS'), h('dd', {},
          h('span', { id: 'cluster-nats', class: nats.connected ? 'badge on' : 'badge warn' }, nats.connected ? 'connected' : 'disconnected'),
          ` ${nats.servers ?? ''}`),
        h('dt', {}, 'Stream'), h('dd', {}, nats.stream ?? '–'),
        h('dt', {}, 'Filters subscribed on NATS'), h('dd', {}, num(c.interest)),
        h('dt', {}, 'Publishes waiting for NATS'), h('dd', { id: 'cluster-pending' }, num(c.pending))));
      const rows = c.nodes.map((n) => ({ ...n, rate: rates(n) }));
      const t = (n) => n.traffic || {};
      const count = (n, k) => h('span', { 'data-node': n.node, [`data-${k}`]: t(n)[k] ?? '' },
        num(t(n)[k]), n.rate ? h('small', {}, ` (${num(n.rate[k])}/s)`) : null);
      clear(nodes, h('h2', {}, 'Nodes'), table([
        { title: 'Node', cell: (n) => (n.this ? h('span', {}, n.node, ' ', h('small', {}, '(this node)')) : n.node) },
        { title: 'State', cell: (n) => h('span', { class: n.state === 'alive' ? 'badge on' : 'badge warn', 'data-state': n.node }, n.state) },
        { title: 'Last heartbeat', cell: (n) => ago(n.heartbeat_age_ms) },
        { title: 'Up since', cell: (n) => time(n.started_ms) },
        { title: 'Forwarded', cell: (n) => count(n, 'forwarded'), class: 'n' },
        { title: 'Received', cell: (n) => count(n, 'received'), class: 'n' },
        { title: 'Bytes out', cell: (n) => bytes(t(n).forwarded_bytes), class: 'n' },
        { title: 'Bytes in', cell: (n) => bytes(t(n).received_bytes), class: 'n' },
        { title: 'Failed publishes', cell: (n) => num(t(n).publish_failures), class: 'n' },
        { title: 'NATS timeouts', cell: (n) => num(t(n).timeouts), class: 'n' },
        { title: 'NATS errors', cell: (n) => num(t(n).errors), class: 'n' },
        { title: 'Reconnects', cell: (n) => num(t(n).reconnects), class: 'n' },
      ], rows, { empty: 'No membership records (NATS holds none for this cluster yet).' }));
      if (charts.hidden && cols) chart.update(cols);
      charts.hidden = false;
    }
    const stop = every(POLL_MS, load, (e) => msg.error(e));
    return () => {
      ctrl.abort();
      stop();
    };
  },
};
