// Plugins: status, calls, latency, traps, timeouts, suspensions; the
// capabilities each was granted, its limits and hooks; reload, enable,
// disable; and the config reload (as SIGHUP).

import * as api from './api.js';
import { h, clear, messages, table, num, seconds, every } from './ui.js';

function grantsText(g) {
  if (!g) return '–';
  const out = [];
  if (g.log) out.push('log');
  if (g.kv) out.push(`kv: ${g.kv}`);
  if (g.publish && g.publish.length) out.push(`publish: ${g.publish.join(', ')}`);
  if (g.sql) out.push(`sql: ${g.sql}`);
  if (g.kafka && g.kafka.length) out.push(`kafka: ${g.kafka.join(', ')}`);
  for (const d of g.dirs || []) out.push(`dir: ${d.host} → ${d.guest} (read-only)`);
  return out.length ? out.join('; ') : 'nothing';
}

export default {
  title: 'Plugins',
  render(page) {
    const msg = messages();
    const list = h('div', { id: 'plugins-list' });
    const details = h('div', { id: 'plugins-details' });
    const report = h('div', { id: 'reload-report' });
    page.append(h('h1', {}, 'Plugins'), msg.el,
      h('div', { class: 'actions' }, h('button', { type: 'button', id: 'config-reload', onclick: reloadConfig }, 'Reload the configuration file')),
      report, list, h('h2', {}, 'Grants, limits and hooks'), details);

    async function act(name, what) {
      try {
        if (what === 'reload') await api.api('POST', `/api/v1/plugins/${api.enc(name)}/reload`);
        else await api.api('PUT', `/api/v1/plugins/${api.enc(name)}/${what}`);
        msg.ok(`Plugin ${name}: ${what === 'reload' ? 'reloaded' : what + 'd'}.`);
        await load();
      } catch (e) {
        msg.error(e);
      }
    }

    async function reloadConfig() {
      clear(report);
      try {
        const r = await api.api('POST', '/api/v1/config/reload');
        const line = (k, v) => (v && v.length ? h('li', {}, `${k}: ${v.map((x) => (typeof x === 'string' ? x : `${x.plugin} (${x.error})`)).join(', ')}`) : null);
        report.append(h('div', { class: 'msg ok', role: 'status' }, `Configuration reloaded: ${r.rules} rule(s) running.`,
          h('ul', {}, line('Plugins added', r.plugins_added), line('Plugins removed', r.plugins_removed),
            line('Plugins reloaded', r.plugins_reloaded), line('Plugins refused', r.plugins_refused),
            line('Needs a restart', r.restart_needed))));
        await load();
      } catch (e) {
        msg.error(e);
      }
    }

    async function load() {
      const r = await api.api('GET', '/api/v1/plugins');
      const m = (p) => p.metrics || {};
      clear(list, table([
        { title: 'Plugin', cell: (p) => p.name },
        { title: 'State', cell: (p) => h('span', { class: p.state === 'running' ? 'badge on' : p.state === 'suspended' ? 'badge warn' : 'badge' }, p.state) },
        { title: 'Version', cell: (p) => (p.manifest ? `${p.manifest.name} ${p.manifest.version}` : '–') },
        { title: 'Calls', cell: (p) => h('span', { 'data-calls': p.name }, num(m(p).calls)), class: 'n' },
        { title: 'Latency', cell: (p) => (m(p).calls ? seconds(m(p).call_seconds_total / m(p).calls) : '–'), class: 'n' },
        { title: 'Failures', cell: (p) => num(m(p).failures), class: 'n' },
        { title: 'Traps', cell: (p) => num(m(p).traps), class: 'n' },
        { title: 'Timeouts', cell: (p) => num(m(p).timeouts), class: 'n' },
        { title: 'Out of memory', cell: (p) => num(m(p).out_of_memory), class: 'n' },
        { title: 'Suspensions', cell: (p) => num(m(p).suspensions), class: 'n' },
        { title: '', cell: (p) => (p.loaded ? h('span', { class: 'row-actions' },
          h('button', { type: 'button', class: 'small', 'data-plugin': p.name, 'data-act': 'reload', onclick: () => act(p.name, 'reload') }, 'Reload'),
          h('button', { type: 'button', class: 'small', 'data-plugin': p.name, 'data-act': p.state === 'disabled' ? 'enable' : 'disable', onclick: () => act(p.name, p.state === 'disabled' ? 'enable' : 'disable') }, p.state === 'disabled' ? 'Enable' : 'Disable'))
          : h('small', {}, 'disabled in the config')) },
      ], r.data, { empty: 'No plugins configured ([[plugins.plugin]] in the config file).' }));
      clear(details, r.data.filter((p) => p.loaded).map((p) => {
        const man = p.manifest || {};
        const l = p.limits || {};
        return h('section', { class: 'plugin' }, h('h3', {}, p.name),
          h('dl', { class: 'facts' },
            h('dt', {}, 'File'), h('dd', {}, p.path ?? '–'),
            h('dt', {}, 'Granted'), h('dd', { class: 'grants' }, grantsText(p.grants)),
            h('dt', {}, 'Hooks'), h('dd', {}, (man.hooks || []).join(', ') || '–'),
            h('dt', {}, 'on-publish filters'), h('dd', {}, (man.publish_filters || []).join(', ') || '–'),
            h('dt', {}, 'Events'), h('dd', {}, (man.events || []).join(', ') || '–'),
            h('dt', {}, 'Rule functions'), h('dd', {}, (man.functions || []).join(', ') || '–'),
            h('dt', {}, 'Limits'), h('dd', {}, `${l.memory_mib} MiB, ${l.deadline_ms} ms per call, ${l.max_instances} instances, suspended after ${l.suspend_after} failures for ${l.suspend_secs} s`)));
      }));
    }
    return every(3000, () => (list.contains(document.activeElement) ? null : load()), (e) => msg.error(e));
  },
};
