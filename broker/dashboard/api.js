// The admin API from the browser: the bearer token (kept in session storage,
// never in a URL), JSON errors turned into messages, and the connection
// state (online / reconnecting) the whole page shows.

const KEY = 'midge.admin.token';

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body || {};
  }
}

export function token() {
  return sessionStorage.getItem(KEY);
}

export function setToken(t) {
  sessionStorage.setItem(KEY, t);
}

export function clearToken() {
  sessionStorage.removeItem(KEY);
}

// --- connection state --------------------------------------------------

const listeners = new Set();
let online = true;
let probing = false;

export function onConnection(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

export function isOnline() {
  return online;
}

function setOnline(v) {
  if (v === online) return;
  online = v;
  for (const fn of listeners) fn(v);
  if (!v) probe();
}

// While offline: ask for the status every 2 s until the broker answers.
async function probe() {
  if (probing) return;
  probing = true;
  while (!online) {
    await new Promise((r) => setTimeout(r, 2000));
    try {
      const r = await fetch('/api/v1/status', { headers: auth(), cache: 'no-store' });
      if (r.status === 401) {
        probing = false;
        setOnline(true);
        unauthorized('The broker no longer accepts this token (it may have restarted with another one). Log in again.');
        return;
      }
      if (r.ok) setOnline(true);
    } catch (_) {
      // Still down.
    }
  }
  probing = false;
}

// --- 401 after login ----------------------------------------------------

let onUnauthorized = () => {};
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}
function unauthorized(msg) {
  onUnauthorized(msg);
}

function auth(t = token()) {
  return t ? { Authorization: `Bearer ${t}` } : {};
}

// One API call. Resolves with the JSON answer (null for 204); rejects with
// an ApiError whose message is the API's `error` text, or says the broker
// cannot be reached (and the page switches to "reconnecting").
export async function api(method, path, body, opts = {}) {
  const headers = { ...auth(opts.token), Accept: 'application/json' };
  const init = { method, headers, cache: 'no-store', signal: opts.signal };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(path, init);
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    setOnline(false);
    throw new ApiError(0, 'Cannot reach the broker: reconnecting…');
  }
  setOnline(true);
  const text = await r.text();
  let json = null;
  if (text) {
    try {
      json = JSON.parse(text);
    } catch (_) {
      json = null;
    }
  }
  if (!r.ok) {
    const msg = json && typeof json.error === 'string' ? json.error : `HTTP ${r.status} ${r.statusText}`;
    const err = new ApiError(r.status, msg, json);
    if (r.status === 401 && !opts.token) {
      unauthorized(`The broker refused the token: ${msg}. Log in again.`);
    }
    throw err;
  }
  return json;
}

// Checks a token without keeping it: resolves with the status, rejects with
// a message fit for the login form.
export async function tryToken(t) {
  try {
    return await api('GET', '/api/v1/status', undefined, { token: t });
  } catch (e) {
    if (e.status === 401) throw new Error(`The broker refused this token (${e.message}).`);
    throw e;
  }
}

// The metrics stream (server-sent events read with fetch, so the token goes
// in a header): calls onEvent(name, data) until `signal` aborts; on a
// failure reports the page offline and tries again once it is back.
export async function stream(path, onEvent, signal) {
  while (!signal.aborted) {
    try {
      const r = await fetch(path, { headers: { ...auth(), Accept: 'text/event-stream' }, cache: 'no-store', signal });
      if (r.status === 401) {
        unauthorized('The broker refused the token. Log in again.');
        return;
      }
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      setOnline(true);
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          let name = 'message';
          const data = [];
          for (const line of block.split('\n')) {
            if (line.startsWith('event:')) name = line.slice(6).trim();
            else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
          }
          if (data.length) onEvent(name, JSON.parse(data.join('\n')));
        }
      }
      // The broker ended the stream (shutting down).
      throw new Error('stream ended');
    } catch (e) {
      if (signal.aborted) return;
      setOnline(false);
      await until(() => online || signal.aborted);
    }
  }
}

function until(cond) {
  return new Promise((resolve) => {
    const t = setInterval(() => {
      if (cond()) {
        clearInterval(t);
        resolve();
      }
    }, 250);
  });
}

export const enc = encodeURIComponent;
