// Retained messages: browse by topic filter, view one (payload as JSON,
// text or hex; properties), delete.

import * as api from './api.js';
import { h, clear, field, messages, table, pager, confirm, bytes, time, fromBase64, payloadView } from './ui.js';

const LIMIT = 25;

export default {
  title: 'Retained messages',
  render(page) {
    const msg = messages();
    const filter = h('input', { type: 'search', id: 'retained-filter', value: '#', placeholder: 'a topic filter, e.g. sensor/#', autocomplete: 'off' });
    const list = h('div', { id: 'retained-list' });
    const view = h('section', { id: 'retained-view', 'aria-live': 'polite' });
    let pageNo = 1;
    const form = h('form', { class: 'filters', role: 'search', onsubmit: (e) => { e.preventDefault(); pageNo = 1; load(); } },
      field('Topic filter', filter, '# does not match $SYS topics: browse them with $SYS/#'), h('button', { type: 'submit' }, 'Browse'));
    page.append(h('h1', {}, 'Retained messages'), form, msg.el, list, view);

    async function load() {
      try {
        const q = new URLSearchParams({ page: pageNo, limit: LIMIT });
        const f = filter.value.trim();
        if (f) q.set('filter', f);
        const r = await api.api('GET', `/api/v1/retained?${q}`);
        clear(list, table([
          { title: 'Topic', cell: (m) => h('button', { type: 'button', class: 'link', 'data-topic': m.topic, onclick: () => show(m.topic) }, m.topic) },
          { title: 'QoS', cell: (m) => m.qos, class: 'n' },
          { title: 'Size', cell: (m) => bytes(m.payload_size), class: 'n' },
          { title: 'Publisher', cell: (m) => m.publisher ?? '–' },
          { title: 'Stored', cell: (m) => time(m.timestamp) },
        ], r.data, { empty: 'No retained message matches.' }), pager(r.meta, (p) => { pageNo = p; load(); }));
        msg.clear();
      } catch (e) {
        msg.error(e);
      }
    }

    async function show(topic) {
      try {
        const m = await api.api('GET', `/api/v1/retained/${api.enc(topic)}`);
        const p = m.properties || {};
        const props = [
          ['QoS', m.qos], ['Publisher', m.publisher ?? '–'], ['Stored', time(m.timestamp)],
          ['Content type', p.content_type ?? '–'], ['Payload format', p.payload_format_indicator ?? '–'],
          ['Message expiry', p.message_expiry_interval === null || p.message_expiry_interval === undefined ? '–' : `${p.message_expiry_interval} s`],
          ['Response topic', p.response_topic ?? '–'],
          ['User properties', p.user_properties && p.user_properties.length ? p.user_properties.map(([k, v]) => `${k}=${v}`).join(', ') : '–'],
        ];
        clear(view,
          h('h2', { id: 'retained-topic' }, m.topic),
          payloadView(fromBase64(m.payload)),
          h('dl', { class: 'facts' }, props.map(([k, v]) => [h('dt', {}, k), h('dd', {}, String(v))])),
          h('div', { class: 'actions' },
            h('button', { type: 'button', class: 'danger', id: 'retained-delete', onclick: () => del(m.topic) }, 'Delete this retained message'),
            h('button', { type: 'button', onclick: () => clear(view) }, 'Close')));
        view.querySelector('h2').setAttribute('tabindex', '-1');
        view.querySelector('h2').focus();
      } catch (e) {
        msg.error(e);
      }
    }

    async function del(topic) {
      if (!(await confirm(`Delete the retained message on “${topic}”?`))) return;
      try {
        await api.api('DELETE', `/api/v1/retained/${api.enc(topic)}`);
        clear(view);
        await load();
        msg.ok(`Deleted the retained message on ${topic}.`);
      } catch (e) {
        msg.error(e);
      }
    }

    load();
    return null;
  },
};
