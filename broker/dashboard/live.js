// Live topics: the browser itself connects to the broker's MQTT-over-
// WebSocket listener (MQTT 5.0 or 3.1.1), subscribes, shows what arrives
// (pausable, the last 500 kept) and publishes.

import * as api from './api.js';
import { h, clear, field, messages, decodeUtf8, hexdump } from './ui.js';
import { MqttClient } from './mqtt.js';

const MAX = 500;

// ws://host:port/path for a listener from GET /api/v1/listeners: a listener
// bound to every address is reached at the host this page came from.
function urlOf(l) {
  const scheme = l.tls ? 'wss' : 'ws';
  let host = l.address.replace(/:\d+$/, '');
  if (host === '0.0.0.0' || host === '[::]') host = location.hostname.includes(':') ? `[${location.hostname}]` : location.hostname;
  return `${scheme}://${host}:${l.port}${l.path || '/mqtt'}`;
}

function randomId() {
  const b = new Uint8Array(4);
  crypto.getRandomValues(b);
  return 'midge-dash-' + Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

export default {
  title: 'Live topics',
  render(page) {
    const msg = messages();
    const url = h('input', { id: 'live-url', spellcheck: 'false', autocomplete: 'off', placeholder: 'ws://host:8083/mqtt' });
    const version = h('select', { id: 'live-version' }, h('option', { value: '5' }, 'MQTT 5.0'), h('option', { value: '4' }, 'MQTT 3.1.1'));
    const clientId = h('input', { id: 'live-clientid', value: randomId(), spellcheck: 'false', autocomplete: 'off' });
    const user = h('input', { id: 'live-username', autocomplete: 'off', spellcheck: 'false' });
    const pass = h('input', { id: 'live-password', type: 'password', autocomplete: 'off' });
    const connectBtn = h('button', { type: 'submit', id: 'live-connect' }, 'Connect');
    const state = h('span', { id: 'live-state', class: 'badge', role: 'status' }, 'disconnected');
    const connForm = h('form', { class: 'filters', onsubmit: toggleConnection },
      field('WebSocket URL', url), field('Protocol', version), field('Client id', clientId),
      field('User name', user), field('Password', pass), connectBtn, state);

    const subFilter = h('input', { id: 'live-filter', value: '#', spellcheck: 'false', autocomplete: 'off' });
    const subQos = h('select', { id: 'live-sub-qos' }, [0, 1, 2].map((q) => h('option', { value: q }, `QoS ${q}`)));
    const subs = h('ul', { id: 'live-subs', class: 'chips' });
    const subForm = h('form', { class: 'filters', onsubmit: subscribe },
      field('Topic filter', subFilter), field('Max QoS', subQos), h('button', { type: 'submit', id: 'live-subscribe' }, 'Subscribe'));

    const pubTopic = h('input', { id: 'live-pub-topic', value: 'dashboard/test', spellcheck: 'false', autocomplete: 'off' });
    const pubPayload = h('textarea', { id: 'live-pub-payload', rows: '2', spellcheck: 'false' });
    pubPayload.value = 'hello from the dashboard';
    const pubQos = h('select', { id: 'live-pub-qos' }, h('option', { value: '0' }, 'QoS 0'), h('option', { value: '1' }, 'QoS 1'));
    const pubRetain = h('input', { type: 'checkbox', id: 'live-pub-retain' });
    const pubForm = h('form', { class: 'filters', onsubmit: publish },
      field('Topic', pubTopic), field('Payload', pubPayload), field('QoS', pubQos),
      h('label', { class: 'check' }, pubRetain, ' retain'), h('button', { type: 'submit', id: 'live-publish' }, 'Publish'));

    const pauseBtn = h('button', { type: 'button', id: 'live-pause', 'aria-pressed': 'false', onclick: togglePause }, 'Pause');
    const count = h('span', { id: 'live-count' }, '0 messages');
    const list = h('ol', { id: 'live-messages', class: 'live', reversed: true });
    page.append(h('h1', {}, 'Live topics'),
      h('p', { class: 'hint' }, 'This page connects from your browser to the broker’s MQTT-over-WebSocket listener, as any client would.'),
      msg.el, h('h2', {}, 'Connection'), connForm, h('h2', {}, 'Subscriptions'), subForm, subs,
      h('h2', {}, 'Publish'), pubForm,
      h('h2', {}, 'Messages'), h('div', { class: 'actions' }, pauseBtn, h('button', { type: 'button', onclick: () => { clear(list); shown = 0; counted(); } }, 'Clear'), count), list);

    let client = null;
    let paused = false;
    let held = [];
    let shown = 0;
    let alive = true;

    api.api('GET', '/api/v1/listeners').then((r) => {
      const ws = r.data.find((l) => l.name === 'ws') || r.data.find((l) => l.websocket);
      if (!url.value) url.value = ws ? urlOf(ws) : '';
      if (!ws) msg.error(new Error('The broker has no WebSocket listener ([listeners] ws): this page cannot connect.'));
    }).catch((e) => msg.error(e));

    function setState(text, on) {
      state.textContent = text;
      state.className = on ? 'badge on' : 'badge';
      connectBtn.textContent = on ? 'Disconnect' : 'Connect';
    }

    function counted() {
      count.textContent = `${shown} message${shown === 1 ? '' : 's'}${paused ? ` · paused, ${held.length} waiting` : ''}`;
    }

    function show(m) {
      const text = decodeUtf8(m.payload);
      const body = text !== null ? text : hexdump(m.payload);
      const props = m.properties && Object.keys(m.properties).length ? JSON.stringify(m.properties, (k, v) => (v instanceof Uint8Array ? Array.from(v) : v)) : '';
      list.prepend(h('li', { class: 'live-msg' },
        h('div', { class: 'live-head' }, h('time', {}, new Date(m.at).toLocaleTimeString()), ' ',
          h('code', { class: 'live-topic' }, m.topic), ` QoS ${m.qos}${m.retain ? ' · retained' : ''}${text === null ? ' · binary' : ''}`),
        h('pre', { class: 'payload live-payload' }, body), props ? h('small', {}, props) : null));
      shown++;
      while (list.children.length > MAX) list.lastElementChild.remove();
      shown = Math.min(shown, MAX);
    }

    function togglePause() {
      paused = !paused;
      pauseBtn.textContent = paused ? 'Resume' : 'Pause';
      pauseBtn.setAttribute('aria-pressed', String(paused));
      if (!paused) {
        held.forEach(show);
        held = [];
      }
      counted();
    }

    async function toggleConnection(ev) {
      ev.preventDefault();
      msg.clear();
      if (client) {
        client.end();
        client = null;
        setState('disconnected', false);
        clear(subs);
        return;
      }
      const c = new MqttClient({
        url: url.value.trim(), version: Number(version.value), clientId: clientId.value.trim(),
        username: user.value || undefined, password: pass.value || undefined, keepAlive: 30,
      });
      c.onmessage = (m) => {
        m.at = Date.now();
        if (paused) {
          held.push(m);
          if (held.length > MAX) held.shift();
        } else show(m);
        counted();
      };
      c.onclose = (why) => {
        if (client !== c) return;
        client = null;
        clear(subs);
        setState('disconnected', false);
        if (alive) msg.error(new Error(`Disconnected: ${why}`));
      };
      setState('connecting…', false);
      try {
        await c.connect();
        client = c;
        setState(`connected (${version.value === '5' ? 'MQTT 5.0' : 'MQTT 3.1.1'})`, true);
      } catch (e) {
        setState('disconnected', false);
        msg.error(e);
      }
    }

    async function subscribe(ev) {
      ev.preventDefault();
      msg.clear();
      const f = subFilter.value.trim();
      if (!client) {
        msg.error(new Error('Connect first.'));
        return;
      }
      try {
        const granted = await client.subscribe(f, Number(subQos.value));
        const c = client;
        const chip = h('li', { 'data-filter': f }, h('code', {}, f), ` QoS ${granted} `,
          h('button', { type: 'button', class: 'small', 'aria-label': `Unsubscribe from ${f}`, onclick: async () => {
            try {
              await c.unsubscribe(f);
              chip.remove();
            } catch (e) {
              msg.error(e);
            }
          } }, 'Unsubscribe'));
        subs.append(chip);
        msg.ok(`Subscribed to ${f} (granted QoS ${granted}).`);
      } catch (e) {
        msg.error(e);
      }
    }

    async function publish(ev) {
      ev.preventDefault();
      msg.clear();
      if (!client) {
        msg.error(new Error('Connect first.'));
        return;
      }
      const qos = Number(pubQos.value);
      try {
        await client.publish(pubTopic.value.trim(), pubPayload.value, { qos, retain: pubRetain.checked });
        msg.ok(`Published to ${pubTopic.value.trim()}${qos === 1 ? ' (acknowledged)' : ''}.`);
      } catch (e) {
        msg.error(e);
      }
    }

    return () => {
      alive = false;
      if (client) client.end();
      client = null;
    };
  },
};
