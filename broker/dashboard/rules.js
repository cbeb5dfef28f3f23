// Rules: the list with per-rule metrics; a rule's page to create or edit it
// (SQL errors shown at their line and column), dry-run it on a sample
// message (rows and what each action would do), enable, disable, delete.

import * as api from './api.js';
import { h, clear, field, messages, table, confirm, num, seconds, every, hexdump, fromBase64 } from './ui.js';

async function switchRule(id, enable, msg, after) {
  try {
    await api.api('PUT', `/api/v1/rules/${api.enc(id)}/${enable ? 'enable' : 'disable'}`);
    msg.ok(`Rule ${id} ${enable ? 'enabled' : 'disabled'}.`);
    after();
  } catch (e) {
    msg.error(e);
  }
}

async function deleteRule(id, msg, after) {
  if (!(await confirm(`Delete rule “${id}”?`))) return;
  try {
    await api.api('DELETE', `/api/v1/rules/${api.enc(id)}`);
    msg.ok(`Rule ${id} deleted.`);
    after();
  } catch (e) {
    msg.error(e);
  }
}

export const rulesPage = {
  title: 'Rules',
  render(page) {
    const msg = messages();
    const list = h('div', { id: 'rules-list' });
    const meta = h('p', { class: 'hint' });
    page.append(h('h1', {}, 'Rules'),
      h('div', { class: 'actions' }, h('a', { class: 'button', href: '#/rules/new', id: 'rule-new' }, 'New rule')),
      msg.el, list, meta);
    async function load() {
      const r = await api.api('GET', '/api/v1/rules');
      const m = (x) => x.metrics || {};
      clear(list, table([
        { title: 'Rule', cell: (x) => h('a', { href: `#/rules/${api.enc(x.id)}` }, x.id) },
        { title: 'State', cell: (x) => h('span', { class: x.enabled ? 'badge on' : 'badge' }, x.enabled ? 'enabled' : 'disabled') },
        { title: 'Source', cell: (x) => x.source },
        { title: 'SQL', cell: (x) => h('code', { class: 'sql-short', title: x.sql }, x.sql) },
        { title: 'Matched', cell: (x) => h('span', { 'data-metric': 'matched', 'data-rule': x.id }, num(m(x).matched)), class: 'n' },
        { title: 'Passed', cell: (x) => num(m(x).passed), class: 'n' },
        { title: 'Failed', cell: (x) => num(m(x).failed), class: 'n' },
        { title: 'Actions ok', cell: (x) => num(m(x).actions_success), class: 'n' },
        { title: 'Actions failed', cell: (x) => num(m(x).actions_failed), class: 'n' },
        { title: 'Action latency', cell: (x) => seconds(m(x).action_seconds_avg), class: 'n' },
        { title: '', cell: (x) => h('span', { class: 'row-actions' },
          h('button', { type: 'button', class: 'small', onclick: () => switchRule(x.id, !x.enabled, msg, load) }, x.enabled ? 'Disable' : 'Enable'),
          h('button', { type: 'button', class: 'small danger', onclick: () => deleteRule(x.id, msg, load) }, 'Delete')) },
      ], r.data, { empty: 'No rules yet.' }));
      clear(meta, `Rules created or changed here are kept in ${r.meta.api_rules_file}.`,
        r.meta.deleted && r.meta.deleted.length ? ` Config rules deleted here: ${r.meta.deleted.join(', ')}.` : '');
    }
    return every(2000, () => (list.contains(document.activeElement) ? null : load()), (e) => msg.error(e));
  },
};

// --- one rule ------------------------------------------------------------

function actionEditor(a, remove) {
  const kind = h('select', { class: 'action-type', 'aria-label': 'Action type' },
    ['republish', 'bridge', 'log', 'plugin'].map((t) => h('option', { value: t }, t)));
  kind.value = a.type || 'republish';
  const topic = h('input', { class: 'action-topic', value: a.topic || '', placeholder: 'e.g. alerts/${clientid}', spellcheck: 'false' });
  const payload = h('textarea', { class: 'action-payload', rows: '2', placeholder: 'empty: the output row as JSON; ${field} placeholders', spellcheck: 'false' });
  payload.value = a.payload ?? '';
  const qos = h('select', { class: 'action-qos' }, [0, 1, 2].map((q) => h('option', { value: q }, String(q))));
  qos.value = String(a.qos ?? 0);
  const retain = h('input', { type: 'checkbox', class: 'action-retain', checked: !!a.retain });
  const plugin = h('input', { class: 'action-plugin', value: a.plugin || '', spellcheck: 'false' });
  const bridge = h('input', { class: 'action-bridge', value: a.bridge || '', spellcheck: 'false' });
  const rep = h('div', { class: 'action-fields' }, field('Topic', topic), field('Payload template', payload), field('QoS', qos),
    h('label', { class: 'check' }, retain, ' retain'));
  const plug = h('div', { class: 'action-fields' }, field('Plugin', plugin));
  const brg = h('div', { class: 'action-fields' }, field('Bridge', bridge, 'the name of a [[bridges]] entry; the topic is the topic at its remote'));
  const sync = () => {
    rep.hidden = kind.value !== 'republish' && kind.value !== 'bridge';
    plug.hidden = kind.value !== 'plugin';
    brg.hidden = kind.value !== 'bridge';
  };
  kind.addEventListener('change', sync);
  sync();
  const el = h('fieldset', { class: 'action' }, h('legend', {}, 'Action'), field('Type', kind), brg, rep, plug,
    h('button', { type: 'button', class: 'small', onclick: remove }, 'Remove action'));
  return {
    el,
    value() {
      if (kind.value === 'log') return { type: 'log' };
      if (kind.value === 'plugin') return { type: 'plugin', plugin: plugin.value.trim() };
      // Keep the fields this form does not edit (5.0 properties).
      const out = { ...(a.type === kind.value ? a : {}), type: kind.value, topic: topic.value.trim(), qos: Number(qos.value), retain: retain.checked };
      if (kind.value === 'bridge') out.bridge = bridge.value.trim();
      if (payload.value === '') delete out.payload;
      else out.payload = payload.value;
      return out;
    },
  };
}

// The SQL with a caret under the error's position.
function sqlError(sql, e) {
  const line = e.body.line, col = e.body.column;
  if (!line) return null;
  const lines = sql.split('\n');
  const text = lines[line - 1] ?? '';
  const gutter = String(line).length;
  return h('pre', { class: 'sql-error', id: 'sql-error', role: 'alert' },
    `line ${line}, column ${col}\n`,
    `${line} | ${text}\n`,
    `${' '.repeat(gutter)} | ${' '.repeat(Math.max(0, (col || 1) - 1))}^`);
}

function select(textarea, line, col) {
  const lines = textarea.value.split('\n');
  let at = 0;
  for (let i = 0; i < line - 1 && i < lines.length; i++) at += lines[i].length + 1;
  at += Math.max(0, (col || 1) - 1);
  textarea.focus();
  textarea.setSelectionRange(at, Math.min(textarea.value.length, at + 1));
}

export const rulePage = {
  title: 'Rule',
  render(page, param) {
    const isNew = param === 'new';
    const msg = messages();
    const id = h('input', { id: 'rule-id', required: true, spellcheck: 'false', autocomplete: 'off', disabled: !isNew, value: isNew ? '' : param });
    const desc = h('input', { id: 'rule-description', autocomplete: 'off' });
    const sql = h('textarea', { id: 'rule-sql', rows: '6', spellcheck: 'false', required: true, placeholder: 'SELECT payload.temp AS t, clientid FROM "sensor/#" WHERE t > 30' });
    const enabled = h('input', { type: 'checkbox', id: 'rule-enabled', checked: true });
    const sqlErr = h('div', { class: 'sql-error-wrap' });
    const actions = h('div', { id: 'rule-actions' });
    let editors = [];
    const addAction = (a) => {
      const ed = actionEditor(a, () => {
        editors = editors.filter((x) => x !== ed);
        ed.el.remove();
      });
      editors.push(ed);
      actions.append(ed.el);
    };
    const form = h('form', { id: 'rule-form', class: 'stack', onsubmit: save },
      field('Rule id', id), field('Description', desc), field('SQL', sql, 'EMQX rule SQL: SELECT … FROM "topic/filter" or "$events/…" [WHERE …]'), sqlErr,
      h('label', { class: 'check' }, enabled, ' enabled'),
      h('h2', {}, 'Actions'), actions,
      h('div', { class: 'actions' },
        h('button', { type: 'button', onclick: () => addAction({ type: 'republish', topic: '', qos: 0 }) }, 'Add action'),
        h('button', { type: 'submit', id: 'rule-save' }, isNew ? 'Create rule' : 'Save changes')));

    // Dry run.
    const tTopic = h('input', { id: 'test-topic', value: 'sensor/1', spellcheck: 'false' });
    const tClient = h('input', { id: 'test-clientid', value: 'c_test', spellcheck: 'false' });
    const tUser = h('input', { id: 'test-username', spellcheck: 'false' });
    const tPayload = h('textarea', { id: 'test-payload', rows: '3', spellcheck: 'false' });
    tPayload.value = '{"temp": 31}';
    const tOut = h('div', { id: 'test-output', 'aria-live': 'polite' });
    const testMsg = messages();
    const test = h('form', { id: 'rule-test', class: 'stack', onsubmit: dryRun },
      h('p', { class: 'hint' }, 'Runs the SQL above and its actions on a sample message; nothing is published.'),
      h('div', { class: 'row' }, field('Topic', tTopic), field('Client id', tClient), field('User name', tUser)),
      field('Payload', tPayload), h('button', { type: 'submit', id: 'rule-test-run' }, 'Dry run'), testMsg.el, tOut);

    const metrics = h('div', { id: 'rule-metrics' });
    let serverEnabled = true;
    const toggle = h('button', { type: 'button', id: 'rule-toggle', onclick: () => switchRule(param, !serverEnabled, msg, loadRule) }, 'Disable');
    page.append(
      h('p', { class: 'crumbs' }, h('a', { href: '#/rules' }, 'Rules'), ' / '),
      h('h1', {}, isNew ? 'New rule' : `Rule ${param}`), msg.el);
    if (!isNew) {
      page.append(h('div', { class: 'actions' },
        toggle,
        h('button', { type: 'button', class: 'danger', onclick: () => deleteRule(param, msg, () => { location.hash = '#/rules'; }) }, 'Delete')),
      h('h2', {}, 'Metrics'), metrics);
    }
    page.append(h('div', { class: 'split' },
      h('section', { 'aria-labelledby': 'edit-title' }, h('h2', { id: 'edit-title' }, 'Definition'), form),
      h('section', { 'aria-labelledby': 'test-title' }, h('h2', { id: 'test-title' }, 'Dry run'), test)));

    function ruleBody() {
      return {
        id: id.value.trim(),
        sql: sql.value,
        description: desc.value,
        enabled: enabled.checked,
        actions: editors.map((e) => e.value()),
      };
    }

    async function save(ev) {
      ev.preventDefault();
      clear(sqlErr);
      const body = ruleBody();
      try {
        if (isNew) {
          await api.api('POST', '/api/v1/rules', body);
          msg.ok(`Rule ${body.id} created.`);
          location.hash = `#/rules/${api.enc(body.id)}`;
        } else {
          await api.api('PUT', `/api/v1/rules/${api.enc(param)}`, body);
          msg.ok(`Rule ${param} saved.`);
        }
      } catch (e) {
        msg.error(e);
        const pos = e.body && sqlError(sql.value, e);
        if (pos) {
          sqlErr.append(pos);
          select(sql, e.body.line, e.body.column);
        }
      }
    }

    async function dryRun(ev) {
      ev.preventDefault();
      clear(tOut);
      testMsg.clear();
      clear(sqlErr);
      const sample = { topic: tTopic.value, clientid: tClient.value, payload: tPayload.value };
      if (tUser.value) sample.username = tUser.value;
      try {
        const r = await api.api('POST', '/api/v1/rules/test', { sql: sql.value, sample, actions: editors.map((e) => e.value()) });
        tOut.append(h('p', { id: 'test-matched', class: r.matched ? 'msg ok' : 'msg' }, r.matched ? `Matched: ${r.rows.length} output row(s).` : 'No output: FROM or WHERE did not match this sample.'));
        r.rows.forEach((row, i) => {
          tOut.append(h('h3', {}, `Row ${i + 1}`), h('pre', { class: 'payload test-row' }, JSON.stringify(row, null, 2)));
          const outs = r.outputs[i] || [];
          outs.forEach((o, j) => {
            let body;
            if (o.error) body = h('p', { class: 'msg error' }, o.error);
            else if (o.type === 'republish' || o.type === 'bridge') {
              const binary = o.payload === null;
              body = [h('p', {}, o.type === 'bridge' ? ['sends through bridge ', h('code', {}, o.bridge), ' to '] : 'publishes to ', h('code', { class: 'out-topic' }, o.topic), ` (QoS ${o.qos}${o.retain ? ', retained' : ''}${binary ? ', binary, shown in hex' : ''}):`),
                h('pre', { class: 'payload out-payload' }, binary ? hexdump(fromBase64(o.payload_base64)) : o.payload)];
            }
            else if (o.type === 'log') body = h('pre', { class: 'payload' }, JSON.stringify(o.output));
            else body = [h('p', {}, 'hands these rows to plugin ', h('code', {}, o.plugin), ' (not called in a dry run):'), h('pre', { class: 'payload' }, o.rows)];
            tOut.append(h('div', { class: 'test-action' }, h('h4', {}, `Action ${j + 1}: ${o.type}`), body));
          });
        });
      } catch (e) {
        testMsg.error(e);
        const pos = e.body && sqlError(sql.value, e);
        if (pos) sqlErr.append(pos);
      }
    }

    let last = null;
    async function loadRule() {
      const r = await api.api('GET', `/api/v1/rules/${api.enc(param)}`);
      if (!loaded) {
        desc.value = r.description || '';
        sql.value = r.sql;
        (r.actions || []).forEach(addAction);
        enabled.checked = r.enabled;
        loaded = true;
      }
      serverEnabled = r.enabled;
      toggle.textContent = r.enabled ? 'Disable' : 'Enable';
      const m = r.metrics || {};
      // Latency over the last interval, from two readings.
      let recent = null;
      if (last && m.action_runs > last.action_runs) {
        recent = (m.action_seconds_total - last.action_seconds_total) / (m.action_runs - last.action_runs);
      }
      last = m;
      const facts = [
        ['State', r.enabled ? 'enabled' : 'disabled'], ['Source', r.source],
        ['Matched', num(m.matched), 'rule-matched'], ['Passed', num(m.passed), 'rule-passed'], ['No result', num(m.no_result)],
        ['Failed', num(m.failed)], ['Actions ok', num(m.actions_success), 'rule-actions-ok'], ['Actions failed', num(m.actions_failed)],
        ['Evaluation, mean', seconds(m.eval_seconds_avg)], ['Action latency, mean', seconds(m.action_seconds_avg)],
        ['Action latency, last 2 s', recent === null ? '–' : seconds(recent)],
      ];
      clear(metrics, h('dl', { class: 'facts' }, facts.map(([k, v, idAttr]) => [h('dt', {}, k), h('dd', { id: idAttr }, v)])));
    }
    let loaded = false;
    if (isNew) {
      addAction({ type: 'republish', topic: '', qos: 0 });
      return null;
    }
    return every(2000, loadRule, (e) => msg.error(e));
  },
};
