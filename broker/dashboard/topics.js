// Subscriptions and topics: the filters subscribed to (with their number of
// subscribers), and every subscription, both filterable and paged.

import * as api from './api.js';
import { h, clear, field, messages, table, pager, every } from './ui.js';

const LIMIT = 25;

function section({ id, title, inputs, load }) {
  const msg = messages();
  const out = h('div', { id: `${id}-list` });
  let page = 1;
  const run = async () => {
    const r = await load(page);
    if (r.data.length === 0 && page > 1) {
      page -= 1;
      return run();
    }
    clear(out, r.table, pager(r.meta, (p) => { page = p; run().catch((e) => msg.error(e)); }));
    msg.clear();
  };
  const form = h('form', { class: 'filters', role: 'search', 'aria-label': title, onsubmit: (e) => { e.preventDefault(); page = 1; run().catch((er) => msg.error(er)); } },
    inputs, h('button', { type: 'submit' }, 'Filter'));
  const el = h('section', { 'aria-labelledby': `${id}-title` }, h('h2', { id: `${id}-title` }, title), form, msg.el, out);
  return { el, refresh: () => (out.contains(document.activeElement) ? null : run()), msg };
}

export default {
  title: 'Subscriptions & topics',
  render(page) {
    const like = h('input', { type: 'search', id: 'topic-like', placeholder: 'part of a filter', autocomplete: 'off' });
    const tmatch = h('input', { type: 'search', id: 'topic-match', placeholder: 'a topic name, e.g. sensor/1/temp', autocomplete: 'off' });
    const topics = section({
      id: 'topics', title: 'Topics (filters subscribed to)', inputs: [field('Filter contains', like), field('Matching topic', tmatch)],
      load: async (p) => {
        const q = new URLSearchParams({ page: p, limit: LIMIT });
        if (like.value.trim()) q.set('like', like.value.trim());
        if (tmatch.value.trim()) q.set('topic', tmatch.value.trim());
        const r = await api.api('GET', `/api/v1/topics?${q}`);
        r.table = table([
          { title: 'Filter', cell: (x) => h('code', {}, x.filter) },
          { title: 'Subscribers', cell: (x) => x.subscribers, class: 'n' },
        ], r.data, { empty: 'No subscriptions.' });
        return r;
      },
    });
    const sclient = h('input', { type: 'search', id: 'sub-client', placeholder: 'exact client id', autocomplete: 'off' });
    const sfilter = h('input', { type: 'search', id: 'sub-filter', placeholder: 'exact filter', autocomplete: 'off' });
    const stopic = h('input', { type: 'search', id: 'sub-topic', placeholder: 'a topic name', autocomplete: 'off' });
    const subs = section({
      id: 'subs', title: 'Subscriptions', inputs: [field('Client id', sclient), field('Filter', sfilter), field('Matching topic', stopic)],
      load: async (p) => {
        const q = new URLSearchParams({ page: p, limit: LIMIT });
        if (sclient.value.trim()) q.set('clientid', sclient.value.trim());
        if (sfilter.value.trim()) q.set('filter', sfilter.value.trim());
        if (stopic.value.trim()) q.set('topic', stopic.value.trim());
        const r = await api.api('GET', `/api/v1/subscriptions?${q}`);
        r.table = table([
          { title: 'Client id', cell: (x) => h('a', { href: `#/clients/${api.enc(x.clientid)}` }, x.clientid) },
          { title: 'Filter', cell: (x) => h('code', {}, x.filter) },
          { title: 'QoS', cell: (x) => x.qos, class: 'n' },
          { title: 'No local', cell: (x) => (x.no_local ? 'yes' : 'no') },
          { title: 'Retain as published', cell: (x) => (x.retain_as_published ? 'yes' : 'no') },
          { title: 'Subscription id', cell: (x) => x.subscription_identifier ?? '–', class: 'n' },
        ], r.data, { empty: 'No subscription matches.' });
        return r;
      },
    });
    page.append(h('h1', {}, 'Subscriptions & topics'), topics.el, subs.el);
    const a = every(5000, topics.refresh, (e) => topics.msg.error(e));
    const b = every(5000, subs.refresh, (e) => subs.msg.error(e));
    return () => {
      a();
      b();
    };
  },
};
