"""Paho's MQTT 5.0 interoperability flow-control case, as a client that
writes while it reads (raw socket, no MQTT library).

It publishes one QoS 2 message more than the server's Receive Maximum, then
answers every PUBREC it reads with a PUBREL, the way Paho's test client does.
The server must answer DISCONNECT 0x93 (Receive Maximum exceeded) and close;
this client must read that DISCONNECT, not a broken pipe on one of its PUBREL
writes (the server closes gracefully: it goes on reading for a moment after
its DISCONNECT). Exit status 0 on success; a failure says what happened.

Usage: flow_control_linger.py PORT
"""
import socket
import struct
import sys
import time
import uuid


def fail(msg):
    print("FAIL:", msg, file=sys.stderr)
    sys.exit(1)


def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def string(b):
    return struct.pack(">H", len(b)) + b


class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def read_packet(self):
        """(type, flags, body), or None when the server closed."""
        while True:
            if len(self.buf) >= 2:
                length, mult, i = 0, 1, 1
                while i < len(self.buf):
                    b = self.buf[i]
                    length += (b & 0x7F) * mult
                    mult *= 128
                    i += 1
                    if b & 0x80 == 0:
                        if len(self.buf) >= i + length:
                            first = self.buf[0]
                            body = self.buf[i : i + length]
                            self.buf = self.buf[i + length :]
                            return first >> 4, first & 0x0F, body
                        break
            chunk = self.s.recv(4096)
            if not chunk:
                return None
            self.buf += chunk


def receive_maximum(props):
    i = 0
    while i < len(props):
        pid = props[i]
        i += 1
        if pid == 0x21:
            return struct.unpack(">H", props[i : i + 2])[0]
        # Only what a CONNACK carries is skipped here.
        if pid in (0x24, 0x25, 0x28, 0x29, 0x2A, 0x17, 0x19):
            i += 1
        elif pid in (0x13, 0x22):
            i += 2
        elif pid in (0x11, 0x27):
            i += 4
        elif pid in (0x12, 0x15, 0x1A, 0x1C, 0x1F, 0x16):
            i += 2 + struct.unpack(">H", props[i : i + 2])[0]
        elif pid == 0x26:
            for _ in range(2):
                i += 2 + struct.unpack(">H", props[i : i + 2])[0]
        else:
            fail(f"unexpected CONNACK property {pid:#x}")
    return 65535


def main():
    port = int(sys.argv[1])
    c = Conn(port)
    client_id = f"linger-{uuid.uuid4().hex[:8]}".encode()
    body = string(b"MQTT") + bytes([5, 0x02]) + struct.pack(">H", 30) + b"\x00" + string(client_id)
    c.send(packet(0x10, body))
    p = c.read_packet()
    if p is None or p[0] != 2:
        fail(f"expected CONNACK, got {p}")
    ack = p[2]
    if ack[1] != 0:
        fail(f"CONNACK refused: {ack[1]:#x}")
    plen_end = 2
    n, mult = 0, 1
    while True:
        b = ack[plen_end]
        n += (b & 0x7F) * mult
        mult *= 128
        plen_end += 1
        if b & 0x80 == 0:
            break
    rm = receive_maximum(ack[plen_end : plen_end + n])
    if rm > 100:
        fail(f"the broker's Receive Maximum is {rm}: the test wants a small one")

    # One QoS 2 PUBLISH more than the Receive Maximum, all at once.
    topic = b"linger/" + client_id
    for pid in range(1, rm + 2):
        c.send(packet(0x34, string(topic) + struct.pack(">H", pid) + b"\x00" + b"x"))
    # Let the server decide and close before the PUBRECs are answered.
    time.sleep(0.3)

    pubrecs = 0
    while True:
        try:
            p = c.read_packet()
        except OSError as e:
            fail(f"reading after {pubrecs} PUBRECs: {e!r} (no DISCONNECT read)")
        if p is None:
            fail(f"closed after {pubrecs} PUBRECs without a DISCONNECT")
        kind, _, body = p
        if kind == 5:
            pubrecs += 1
            pid = struct.unpack(">H", body[:2])[0]
            try:
                c.send(packet(0x62, struct.pack(">H", pid)))
            except OSError as e:
                fail(f"PUBREL {pid} write failed before the DISCONNECT was read: {e!r}")
            time.sleep(0.05)
        elif kind == 14:
            reason = body[0] if body else 0
            if reason != 0x93:
                fail(f"DISCONNECT {reason:#x}, expected 0x93")
            if pubrecs != rm:
                fail(f"{pubrecs} PUBRECs before the DISCONNECT, expected {rm}")
            print(f"ok: {pubrecs} PUBRECs answered, then DISCONNECT 0x93")
            c.s.close()
            return
        else:
            fail(f"unexpected packet type {kind}")


if __name__ == "__main__":
    main()
