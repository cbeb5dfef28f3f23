// A small MQTT 3.1.1 / 5.0 client over WebSocket for the live topic page:
// connect, subscribe, unsubscribe, publish (QoS 0 and 1), receive (QoS 0, 1
// and 2), keep alive. Written for this page only: no will, no topic aliases,
// no session resumption (clean start), no enhanced authentication.

const enc = new TextEncoder();
const dec = new TextDecoder('utf-8', { fatal: false });

// Packet types (high nibble of the first byte).
const CONNECT = 1, CONNACK = 2, PUBLISH = 3, PUBACK = 4, PUBREC = 5, PUBREL = 6,
  PUBCOMP = 7, SUBSCRIBE = 8, SUBACK = 9, UNSUBSCRIBE = 10, UNSUBACK = 11,
  PINGREQ = 12, PINGRESP = 13, DISCONNECT = 14, AUTH = 15;

// MQTT 5.0 properties: id -> [name, kind].
const PROPS = {
  0x01: ['payload_format_indicator', 'byte'], 0x02: ['message_expiry_interval', 'u32'],
  0x03: ['content_type', 'str'], 0x08: ['response_topic', 'str'],
  0x09: ['correlation_data', 'bin'], 0x0B: ['subscription_identifier', 'varint'],
  0x11: ['session_expiry_interval', 'u32'], 0x12: ['assigned_client_identifier', 'str'],
  0x13: ['server_keep_alive', 'u16'], 0x15: ['authentication_method', 'str'],
  0x16: ['authentication_data', 'bin'], 0x17: ['request_problem_information', 'byte'],
  0x18: ['will_delay_interval', 'u32'], 0x19: ['request_response_information', 'byte'],
  0x1A: ['response_information', 'str'], 0x1C: ['server_reference', 'str'],
  0x1F: ['reason_string', 'str'], 0x21: ['receive_maximum', 'u16'],
  0x22: ['topic_alias_maximum', 'u16'], 0x23: ['topic_alias', 'u16'],
  0x24: ['maximum_qos', 'byte'], 0x25: ['retain_available', 'byte'],
  0x26: ['user_property', 'pair'], 0x27: ['maximum_packet_size', 'u32'],
  0x28: ['wildcard_subscription_available', 'byte'],
  0x29: ['subscription_identifier_available', 'byte'],
  0x2A: ['shared_subscription_available', 'byte'],
};

// CONNACK codes of 3.1.1 and the common reason codes of 5.0, for messages.
const V4_CONNACK = ['accepted', 'unacceptable protocol version', 'identifier rejected',
  'server unavailable', 'bad user name or password', 'not authorized'];
const REASONS = {
  0x00: 'success', 0x04: 'disconnect with will', 0x80: 'unspecified error',
  0x81: 'malformed packet', 0x82: 'protocol error', 0x83: 'implementation specific error',
  0x84: 'unsupported protocol version', 0x85: 'client identifier not valid',
  0x86: 'bad user name or password', 0x87: 'not authorized', 0x88: 'server unavailable',
  0x89: 'server busy', 0x8A: 'banned', 0x8B: 'server shutting down',
  0x8C: 'bad authentication method', 0x8D: 'keep alive timeout', 0x8E: 'session taken over',
  0x8F: 'topic filter invalid', 0x90: 'topic name invalid', 0x93: 'receive maximum exceeded',
  0x95: 'packet too large', 0x96: 'message rate too high', 0x97: 'quota exceeded',
  0x98: 'administrative action', 0x99: 'payload format invalid', 0x9A: 'retain not supported',
  0x9B: 'QoS not supported', 0x9C: 'use another server', 0x9D: 'server moved',
  0x9E: 'shared subscriptions not supported', 0x9F: 'connection rate exceeded',
  0xA1: 'subscription identifiers not supported', 0xA2: 'wildcard subscriptions not supported',
};

export function reasonText(code) {
  const name = REASONS[code];
  const hex = '0x' + code.toString(16).toUpperCase().padStart(2, '0');
  return name ? `${name} (${hex})` : hex;
}

// --- writing -------------------------------------------------------------

class Writer {
  constructor() { this.parts = []; this.len = 0; }
  bytes(b) { this.parts.push(b); this.len += b.length; return this; }
  byte(v) { return this.bytes(Uint8Array.of(v & 0xff)); }
  u16(v) { return this.bytes(Uint8Array.of((v >> 8) & 0xff, v & 0xff)); }
  u32(v) { return this.bytes(Uint8Array.of((v >>> 24) & 0xff, (v >> 16) & 0xff, (v >> 8) & 0xff, v & 0xff)); }
  varint(v) { return this.bytes(varint(v)); }
  str(s) { const b = enc.encode(s); if (b.length > 65535) throw new Error('string longer than 65535 bytes'); return this.u16(b.length).bytes(b); }
  bin(b) { return this.u16(b.length).bytes(b); }
  done() {
    const out = new Uint8Array(this.len);
    let at = 0;
    for (const p of this.parts) { out.set(p, at); at += p.length; }
    return out;
  }
}

function varint(v) {
  if (v > 268435455) throw new Error('packet too large');
  const out = [];
  do {
    let b = v % 128;
    v = Math.floor(v / 128);
    if (v > 0) b |= 0x80;
    out.push(b);
  } while (v > 0);
  return Uint8Array.from(out);
}

function packet(first, body) {
  return new Writer().byte(first).varint(body.length).bytes(body).done();
}

// --- reading -------------------------------------------------------------

class Reader {
  constructor(b) { this.b = b; this.at = 0; }
  need(n) { if (this.at + n > this.b.length) throw new Error('malformed packet from the broker (too short)'); }
  byte() { this.need(1); return this.b[this.at++]; }
  u16() { this.need(2); const v = (this.b[this.at] << 8) | this.b[this.at + 1]; this.at += 2; return v; }
  u32() { this.need(4); const v = ((this.b[this.at] << 24) >>> 0) + (this.b[this.at + 1] << 16) + (this.b[this.at + 2] << 8) + this.b[this.at + 3]; this.at += 4; return v; }
  varint() {
    let v = 0, mul = 1;
    for (let i = 0; i < 4; i++) {
      const b = this.byte();
      v += (b & 0x7f) * mul;
      if (!(b & 0x80)) return v;
      mul *= 128;
    }
    throw new Error('malformed variable byte integer from the broker');
  }
  take(n) { this.need(n); const v = this.b.subarray(this.at, this.at + n); this.at += n; return v; }
  bin() { return this.take(this.u16()); }
  str() { return dec.decode(this.bin()); }
  rest() { return this.b.subarray(this.at); }
  left() { return this.b.length - this.at; }
  props() {
    const len = this.varint();
    const end = this.at + len;
    const out = {};
    while (this.at < end) {
      const id = this.varint();
      const def = PROPS[id];
      if (!def) throw new Error(`unknown property 0x${id.toString(16)} from the broker`);
      const [name, kind] = def;
      let v;
      switch (kind) {
        case 'byte': v = this.byte(); break;
        case 'u16': v = this.u16(); break;
        case 'u32': v = this.u32(); break;
        case 'varint': v = this.varint(); break;
        case 'str': v = this.str(); break;
        case 'bin': v = this.bin().slice(); break;
        case 'pair': v = [this.str(), this.str()]; break;
      }
      if (kind === 'pair' || name === 'subscription_identifier') (out[name] ||= []).push(v);
      else out[name] = v;
    }
    return out;
  }
}

// --- the client ----------------------------------------------------------

export class MqttClient {
  // opts: url, version (4 or 5), clientId, username, password, keepAlive (s)
  constructor(opts) {
    this.opts = { version: 5, keepAlive: 30, ...opts };
    this.ws = null;
    this.buf = new Uint8Array(0);
    this.nextId = 1;
    this.pending = new Map(); // packet id -> {resolve, reject, kind}
    this.qos2 = new Set(); // incoming QoS 2 ids awaiting PUBREL
    this.connected = false;
    this.onmessage = () => {};
    this.onclose = () => {};
    this.timer = null;
    this.lastPong = 0;
  }

  get v5() { return this.opts.version === 5; }

  connect() {
    return new Promise((resolve, reject) => {
      let settled = false;
      const fail = (msg) => { if (!settled) { settled = true; reject(new Error(msg)); } };
      let ws;
      try {
        ws = new WebSocket(this.opts.url, ['mqtt']);
      } catch (e) {
        fail(`cannot open ${this.opts.url}: ${e.message}`);
        return;
      }
      ws.binaryType = 'arraybuffer';
      this.ws = ws;
      this.connack = (ok, why, props) => {
        if (settled) return;
        settled = true;
        if (ok) resolve(props); else reject(new Error(why));
      };
      ws.onopen = () => this.send(this.connectPacket());
      ws.onmessage = (ev) => {
        try {
          this.feed(new Uint8Array(ev.data));
        } catch (e) {
          this.close(e.message);
        }
      };
      ws.onerror = () => fail(`WebSocket connection to ${this.opts.url} failed`);
      ws.onclose = (ev) => {
        const was = this.connected;
        this.connected = false;
        clearInterval(this.timer);
        const why = this.closeReason || (ev.reason ? ev.reason : `connection closed (WebSocket code ${ev.code})`);
        fail(why);
        for (const p of this.pending.values()) p.reject(new Error(why));
        this.pending.clear();
        if (was) this.onclose(why);
      };
    });
  }

  connectPacket() {
    const o = this.opts;
    const w = new Writer().str('MQTT').byte(this.v5 ? 5 : 4);
    let flags = 0x02; // clean start
    if (o.username) flags |= 0x80;
    if (o.password) flags |= 0x40;
    w.byte(flags).u16(o.keepAlive);
    if (this.v5) w.varint(0); // no properties
    w.str(o.clientId || '');
    if (o.username) w.str(o.username);
    if (o.password) w.bin(enc.encode(o.password));
    return packet(CONNECT << 4, w.done());
  }

  send(bytes) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(bytes);
  }

  close(why) {
    this.closeReason = why;
    if (this.ws) this.ws.close();
  }

  // Ends the session: DISCONNECT (normal), then the socket.
  end() {
    if (this.connected) this.send(Uint8Array.of(DISCONNECT << 4, 0));
    this.closeReason = 'disconnected';
    this.connected = false;
    clearInterval(this.timer);
    if (this.ws) this.ws.close();
  }

  feed(chunk) {
    const all = new Uint8Array(this.buf.length + chunk.length);
    all.set(this.buf);
    all.set(chunk, this.buf.length);
    let at = 0;
    for (;;) {
      // Fixed header: one byte, then 1-4 bytes of remaining length.
      if (all.length - at < 2) break;
      let len = 0, mul = 1, i = at + 1, complete = false;
      for (; i < all.length && i < at + 5; i++) {
        len += (all[i] & 0x7f) * mul;
        mul *= 128;
        if (!(all[i] & 0x80)) { complete = true; i++; break; }
      }
      if (!complete) {
        if (i >= at + 5) throw new Error('malformed remaining length from the broker');
        break;
      }
      if (all.length - i < len) break;
      this.handle(all[at], all.subarray(i, i + len));
      at = i + len;
    }
    this.buf = all.slice(at);
  }

  handle(first, body) {
    const type = first >> 4;
    const r = new Reader(body);
    switch (type) {
      case CONNACK: {
        r.byte(); // session present
        const code = r.byte();
        const props = this.v5 && r.left() > 0 ? r.props() : {};
        if (code !== 0) {
          const why = this.v5 ? reasonText(code) : (V4_CONNACK[code] || `code ${code}`);
          this.connack(false, `the broker refused the connection: ${why}${props.reason_string ? ' — ' + props.reason_string : ''}`);
          this.close('refused');
          return;
        }
        this.connected = true;
        const ka = props.server_keep_alive ?? this.opts.keepAlive;
        if (ka > 0) {
          this.lastPong = Date.now();
          this.timer = setInterval(() => this.ping(ka), (ka * 1000) / 2);
        }
        this.connack(true, '', props);
        break;
      }
      case PUBLISH: {
        const qos = (first >> 1) & 3;
        const msg = { topic: r.str(), qos, retain: !!(first & 1), dup: !!(first & 8), properties: {} };
        if (qos > 0) msg.id = r.u16();
        if (this.v5) msg.properties = r.props();
        msg.payload = r.rest().slice();
        if (qos === 1) this.send(packet(PUBACK << 4, new Writer().u16(msg.id).done()));
        if (qos === 2) {
          this.send(packet(PUBREC << 4, new Writer().u16(msg.id).done()));
          if (this.qos2.has(msg.id)) return; // a resend before PUBREL: already shown
          this.qos2.add(msg.id);
        }
        this.onmessage(msg);
        break;
      }
      case PUBREL: {
        const id = r.u16();
        this.qos2.delete(id);
        this.send(packet(PUBCOMP << 4, new Writer().u16(id).done()));
        break;
      }
      case PUBACK: case SUBACK: case UNSUBACK: {
        const id = r.u16();
        const p = this.pending.get(id);
        if (!p) return;
        this.pending.delete(id);
        let codes = [];
        if (type === PUBACK) {
          const code = r.left() > 0 ? r.byte() : 0;
          if (code >= 0x80) p.reject(new Error(`the broker refused the publish: ${reasonText(code)}`));
          else p.resolve(code);
          return;
        }
        if (this.v5) r.props();
        while (r.left() > 0) codes.push(r.byte());
        p.resolve(codes);
        break;
      }
      case PUBREC: case PUBCOMP:
        break; // this client publishes QoS 0 and 1 only
      case PINGRESP:
        this.lastPong = Date.now();
        break;
      case DISCONNECT: {
        let why = 'the broker closed the connection';
        if (this.v5 && r.left() > 0) {
          const code = r.byte();
          const props = r.left() > 0 ? r.props() : {};
          why = `the broker disconnected: ${reasonText(code)}${props.reason_string ? ' — ' + props.reason_string : ''}`;
        }
        this.close(why);
        break;
      }
      case AUTH:
        this.close('the broker asked for enhanced authentication, which this page does not do');
        break;
      default:
        this.close(`unexpected packet type ${type} from the broker`);
    }
  }

  ping(keepAlive) {
    if (Date.now() - this.lastPong > keepAlive * 1500 + 1000) {
      this.close('no PINGRESP from the broker within the keep alive');
      return;
    }
    this.send(Uint8Array.of(PINGREQ << 4, 0));
  }

  id() {
    for (let i = 0; i < 65535; i++) {
      const id = this.nextId;
      this.nextId = id === 65535 ? 1 : id + 1;
      if (!this.pending.has(id)) return id;
    }
    throw new Error('too many requests in flight');
  }

  request(kind, build) {
    if (!this.connected) return Promise.reject(new Error('not connected'));
    const id = this.id();
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, kind });
      this.send(build(id));
    });
  }

  // Resolves with the granted QoS (or rejects with the refusal).
  async subscribe(filter, qos) {
    const codes = await this.request('subscribe', (id) => {
      const w = new Writer().u16(id);
      if (this.v5) w.varint(0);
      w.str(filter).byte(qos & 3);
      return packet((SUBSCRIBE << 4) | 2, w.done());
    });
    const c = codes[0];
    if (c === undefined || c >= 0x80) {
      throw new Error(`the broker refused the subscription to ${filter}: ${this.v5 ? reasonText(c ?? 0x80) : 'failure (0x80)'}`);
    }
    return c;
  }

  async unsubscribe(filter) {
    await this.request('unsubscribe', (id) => {
      const w = new Writer().u16(id);
      if (this.v5) w.varint(0);
      w.str(filter);
      return packet((UNSUBSCRIBE << 4) | 2, w.done());
    });
  }

  // QoS 0 resolves once written; QoS 1 on PUBACK.
  publish(topic, payload, { qos = 0, retain = false } = {}) {
    const bytes = typeof payload === 'string' ? enc.encode(payload) : payload;
    const build = (id) => {
      const w = new Writer().str(topic);
      if (qos > 0) w.u16(id);
      if (this.v5) w.varint(0);
      w.bytes(bytes);
      return packet((PUBLISH << 4) | (qos << 1) | (retain ? 1 : 0), w.done());
    };
    if (qos === 0) {
      if (!this.connected) return Promise.reject(new Error('not connected'));
      this.send(build(0));
      return Promise.resolve(0);
    }
    if (qos !== 1) return Promise.reject(new Error('this page publishes with QoS 0 or 1'));
    return this.request('publish', build);
  }
}
