// DOM helpers and formatting shared by the pages. Text always goes in as
// text nodes (never as HTML), so nothing a client sends can inject markup.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'value') el.value = v;
    else if (k === 'checked') el.checked = !!v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

// A labelled form field: <label>text <input ...></label>.
export function field(label, input, hint) {
  return h('label', { class: 'field' }, h('span', { class: 'label' }, label), input, hint ? h('small', {}, hint) : null);
}

// A message area: show(error or text, kind) and clear.
export function messages() {
  const el = h('div', { class: 'messages', 'aria-live': 'polite' });
  return {
    el,
    error(e) {
      const text = e && e.message ? e.message : String(e);
      clear(el, h('p', { class: 'msg error', role: 'alert' }, text));
    },
    ok(text) {
      clear(el, h('p', { class: 'msg ok', role: 'status' }, text));
    },
    clear() {
      clear(el);
    },
  };
}

// A table: columns [{title, cell(row) -> node|text, class}], rows.
export function table(columns, rows, { empty = 'Nothing to show.', caption } = {}) {
  const head = h('tr', {}, columns.map((c) => h('th', { scope: 'col', class: c.class }, c.title)));
  const body = rows.length
    ? rows.map((r) => h('tr', {}, columns.map((c) => h('td', { class: c.class, 'data-label': c.title }, c.cell(r)))))
    : [h('tr', {}, h('td', { colspan: columns.length, class: 'empty' }, empty))];
  return h('div', { class: 'table-wrap' }, h('table', {}, caption ? h('caption', {}, caption) : null, h('thead', {}, head), h('tbody', {}, body)));
}

// Pager for {meta: {page, limit, count}} answers.
export function pager(meta, go) {
  const pages = Math.max(1, Math.ceil(meta.count / meta.limit));
  return h('nav', { class: 'pager', 'aria-label': 'Pages' },
    h('button', { type: 'button', disabled: meta.page <= 1, onclick: () => go(meta.page - 1) }, '‹ Previous'),
    h('span', {}, `Page ${meta.page} of ${pages} · ${meta.count} in all`),
    h('button', { type: 'button', disabled: meta.page >= pages, onclick: () => go(meta.page + 1) }, 'Next ›'));
}

// A modal confirmation (native <dialog>: focus is trapped, Escape cancels).
export function confirm(question, action = 'Delete') {
  return new Promise((resolve) => {
    const d = h('dialog', { class: 'confirm', 'aria-label': question },
      h('form', { method: 'dialog' },
        h('p', {}, question),
        h('div', { class: 'buttons' },
          h('button', { value: 'cancel', type: 'submit' }, 'Cancel'),
          h('button', { value: 'ok', type: 'submit', class: 'danger' }, action))));
    d.addEventListener('close', () => {
      resolve(d.returnValue === 'ok');
      d.remove();
    });
    document.body.append(d);
    d.showModal();
  });
}

// --- formatting ------------------------------------------------------------

export function num(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return '–';
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toFixed(a >= 1e10 ? 0 : 1) + 'G';
  if (a >= 1e6) return (v / 1e6).toFixed(a >= 1e7 ? 0 : 1) + 'M';
  if (a >= 1e4) return (v / 1e3).toFixed(a >= 1e5 ? 0 : 1) + 'k';
  if (Number.isInteger(v)) return String(v);
  return v.toFixed(a >= 100 ? 0 : a >= 10 ? 1 : 2);
}

export function bytes(v) {
  if (v === null || v === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return (i === 0 ? String(Math.round(v)) : v.toFixed(v >= 100 ? 0 : 1)) + ' ' + units[i];
}

export function duration(s) {
  s = Math.floor(s);
  const d = Math.floor(s / 86400), hh = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${hh}h ${m}m`;
  if (hh) return `${hh}h ${m}m ${s % 60}s`;
  if (m) return `${m}m ${s % 60}s`;
  return `${s}s`;
}

export function time(ms) {
  if (!ms) return '–';
  const d = new Date(ms);
  return d.toLocaleString();
}

export function seconds(s) {
  if (s === null || s === undefined) return '–';
  if (s >= 1) return s.toFixed(2) + ' s';
  if (s >= 1e-3) return (s * 1e3).toFixed(2) + ' ms';
  return (s * 1e6).toFixed(1) + ' µs';
}

export function proto(v) {
  return v === 5 ? '5.0' : v === 4 ? '3.1.1' : v === 3 ? '3.1' : '–';
}

// Payload views: text when UTF-8, JSON pretty-printed when it parses, hex.
export function decodeUtf8(u8) {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(u8);
  } catch (_) {
    return null;
  }
}

export function prettyJson(text) {
  if (text === null) return null;
  const t = text.trim();
  if (!t || !'{["'.includes(t[0]) && !/^-?\d/.test(t) && !['true', 'false', 'null'].includes(t)) return null;
  try {
    return JSON.stringify(JSON.parse(t), null, 2);
  } catch (_) {
    return null;
  }
}

export function hexdump(u8) {
  const lines = [];
  for (let i = 0; i < u8.length; i += 16) {
    const row = u8.subarray(i, i + 16);
    const hex = Array.from(row, (b) => b.toString(16).padStart(2, '0')).join(' ');
    const ascii = Array.from(row, (b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : '.')).join('');
    lines.push(i.toString(16).padStart(8, '0') + '  ' + hex.padEnd(47) + '  ' + ascii);
  }
  return lines.join('\n');
}

export function fromBase64(b64) {
  const s = atob(b64);
  const u8 = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) u8[i] = s.charCodeAt(i);
  return u8;
}

// A payload viewer with Text / JSON / Hex views, starting on the best one.
export function payloadView(u8) {
  const text = decodeUtf8(u8);
  const json = prettyJson(text);
  const views = [];
  if (json !== null) views.push(['JSON', json]);
  if (text !== null) views.push(['Text', text]);
  views.push(['Hex', hexdump(u8)]);
  const pre = h('pre', { class: 'payload', tabindex: '0' });
  const tabs = h('div', { class: 'tabs', role: 'tablist', 'aria-label': 'Payload view' });
  const show = (i) => {
    pre.textContent = views[i][1] || '(empty)';
    pre.dataset.view = views[i][0].toLowerCase();
    tabs.querySelectorAll('button').forEach((b, j) => b.setAttribute('aria-selected', String(i === j)));
  };
  views.forEach(([name], i) => tabs.append(h('button', { type: 'button', role: 'tab', onclick: () => show(i) }, name)));
  show(0);
  return h('div', { class: 'payload-view' }, tabs, pre, h('small', {}, `${u8.length} bytes`));
}

// Runs `fn` now and every `ms` until the returned stop is called; errors go
// to `onError` and the polling goes on.
export function every(ms, fn, onError) {
  let stopped = false;
  let t = null;
  const tick = async () => {
    if (stopped) return;
    try {
      await fn();
    } catch (e) {
      if (onError && !stopped) onError(e);
    }
    if (!stopped) t = setTimeout(tick, ms);
  };
  tick();
  return () => {
    stopped = true;
    clearTimeout(t);
  };
}
