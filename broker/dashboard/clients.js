// Clients: a searchable, paged list, and one client's page (its session and
// subscriptions); kick from either.

import * as api from './api.js';
import { h, clear, field, messages, table, pager, confirm, num, bytes, time, proto, every } from './ui.js';

const LIMIT = 20;

async function kick(id, msg, after) {
  if (!(await confirm(`Disconnect client “${id}” and discard its session?`, 'Kick'))) return;
  try {
    await api.api('DELETE', `/api/v1/clients/${api.enc(id)}`);
    msg.ok(`Kicked ${id}.`);
    if (after) after();
  } catch (e) {
    msg.error(e);
  }
}

export const clientsPage = {
  title: 'Clients',
  render(page) {
    const msg = messages();
    const q = { page: 1, like: '', username: '', connected: '' };
    const like = h('input', { type: 'search', id: 'client-search', placeholder: 'part of a client id', autocomplete: 'off' });
    const user = h('input', { type: 'search', id: 'client-username', placeholder: 'exact user name', autocomplete: 'off' });
    const state = h('select', { id: 'client-state' },
      h('option', { value: '' }, 'all'), h('option', { value: 'true' }, 'connected'), h('option', { value: 'false' }, 'offline'));
    const form = h('form', { class: 'filters', role: 'search', onsubmit: (e) => { e.preventDefault(); q.page = 1; load(); } },
      field('Client id', like), field('User name', user), field('State', state),
      h('button', { type: 'submit' }, 'Search'));
    const list = h('div', { id: 'clients-list' });
    page.append(h('h1', {}, 'Clients'), form, msg.el, list);

    let busy = false;
    async function load() {
      if (busy) return;
      busy = true;
      try {
        q.like = like.value.trim();
        q.username = user.value.trim();
        q.connected = state.value;
        const params = new URLSearchParams({ page: q.page, limit: LIMIT });
        if (q.like) params.set('clientid_like', q.like);
        if (q.username) params.set('username', q.username);
        if (q.connected) params.set('connected', q.connected);
        const r = await api.api('GET', `/api/v1/clients?${params}`);
        if (r.data.length === 0 && q.page > 1) {
          q.page -= 1;
          busy = false;
          return load();
        }
        clear(list, table([
          { title: 'Client id', cell: (c) => h('a', { href: `#/clients/${api.enc(c.clientid)}` }, c.clientid) },
          { title: 'State', cell: (c) => h('span', { class: c.connected ? 'badge on' : 'badge' }, c.connected ? 'connected' : 'offline') },
          { title: 'User name', cell: (c) => c.username ?? '–' },
          { title: 'Peer', cell: (c) => c.peer ?? '–' },
          { title: 'Protocol', cell: (c) => proto(c.proto_ver) },
          { title: 'Keep alive', cell: (c) => (c.keep_alive === null ? '–' : `${c.keep_alive} s`), class: 'n' },
          { title: 'Connected since', cell: (c) => time(c.connected_at) },
          { title: 'In flight', cell: (c) => num(c.inflight), class: 'n' },
          { title: 'Queued', cell: (c) => num(c.queue_len), class: 'n' },
          { title: '', cell: (c) => h('button', { type: 'button', class: 'danger small', 'data-kick': c.clientid, onclick: () => kick(c.clientid, msg, load) }, 'Kick') },
        ], r.data, { empty: 'No client matches.' }), pager(r.meta, (p) => { q.page = p; load(); }));
      } finally {
        busy = false;
      }
    }
    // Refreshed every 3 s, except while the keyboard is in the list.
    return every(3000, () => (list.contains(document.activeElement) ? null : load()), (e) => msg.error(e));
  },
};

export const clientPage = {
  title: 'Client',
  render(page, id) {
    const msg = messages();
    const info = h('div', { id: 'client-info' });
    const subs = h('div', { id: 'client-subs' });
    page.append(
      h('p', { class: 'crumbs' }, h('a', { href: '#/clients' }, 'Clients'), ' / '),
      h('h1', {}, id), msg.el,
      h('div', { class: 'actions' }, h('button', { type: 'button', class: 'danger', onclick: () => kick(id, msg, () => { location.hash = '#/clients'; }) }, 'Kick')),
      h('h2', {}, 'Session'), info, h('h2', {}, 'Subscriptions'), subs);
    async function load() {
      const c = await api.api('GET', `/api/v1/clients/${api.enc(id)}`);
      const rows = [
        ['State', c.connected ? 'connected' : `offline since ${time(c.offline_since)}`],
        ['User name', c.username ?? '–'], ['Peer', c.peer ?? '–'], ['Protocol', proto(c.proto_ver)],
        ['Keep alive', c.keep_alive === null ? '–' : `${c.keep_alive} s`], ['Clean start', c.clean_start === null ? '–' : String(c.clean_start)],
        ['Connected since', time(c.connected_at)], ['Session expiry interval', `${c.expiry_interval} s`],
        ['Persistent (in the store)', c.persistent ? 'yes' : 'no'], ['Subscriptions', num(c.subscriptions)],
        ['Queued', `${num(c.queue_len)} (${bytes(c.queued_bytes)})`], ['In flight', num(c.inflight)],
        ['Dropped (queue full)', num(c.dropped)],
      ];
      clear(info, h('dl', { class: 'facts' }, rows.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])));
      const s = await api.api('GET', `/api/v1/sessions/${api.enc(id)}/subscriptions`);
      clear(subs, table([
        { title: 'Filter', cell: (x) => h('code', {}, x.filter) },
        { title: 'QoS', cell: (x) => x.qos, class: 'n' },
        { title: 'No local', cell: (x) => (x.no_local ? 'yes' : 'no') },
        { title: 'Retain as published', cell: (x) => (x.retain_as_published ? 'yes' : 'no') },
        { title: 'Retain handling', cell: (x) => x.retain_handling, class: 'n' },
        { title: 'Subscription id', cell: (x) => x.subscription_identifier ?? '–', class: 'n' },
      ], s.data, { empty: 'No subscriptions.' }));
    }
    return every(3000, load, (e) => msg.error(e));
  },
};
