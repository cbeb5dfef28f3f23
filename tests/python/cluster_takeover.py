"""Paho (MQTT 5.0) across a takeover: python3 cluster_takeover.py PORT_A PORT_B CLIENT_ID N

Client A connects to PORT_A (clean start off, session expiry 300 s) and
subscribes pt/# (QoS 1). Client B connects to PORT_B with the same client id:
B's CONNACK must say session present, and A must get DISCONNECT 0x8E (session
taken over). Prints "taken over", then "TOPIC PAYLOAD" for the first N
messages B receives on topics not ending in /probe, and exits 0.
"""
import queue
import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from common import fail, get

port_a, port_b, cid, n = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])


def client(port):
    # No automatic reconnect: a reconnecting A would take the session back.
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5,
                    reconnect_on_failure=False)
    q = {"connack": queue.Queue(), "disconnect": queue.Queue(), "suback": queue.Queue(),
         "message": queue.Queue()}
    c.on_connect = lambda c_, u, flags, rc, props: q["connack"].put((flags, rc))
    c.on_disconnect = lambda c_, u, flags, rc, props: q["disconnect"].put(rc)
    c.on_subscribe = lambda c_, u, mid, rcs, props: q["suback"].put(rcs)
    c.on_message = lambda c_, u, msg: q["message"].put(msg)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 300
    c.connect("127.0.0.1", port, keepalive=30, clean_start=False, properties=props)
    c.loop_start()
    flags, rc = get(q["connack"], "CONNACK")
    if rc.is_failure:
        fail(f"CONNACK refused: {rc}")
    return c, q, flags


a, qa, _ = client(port_a)
a.subscribe("pt/#", qos=1)
get(qa["suback"], "SUBACK")
time.sleep(0.5)
b, qb, flags = client(port_b)
if not flags.session_present:
    fail("B's CONNACK: session not present")
rc = get(qa["disconnect"], "A's DISCONNECT")
if rc.value != 0x8E:
    fail(f"A closed with {rc} ({rc.value:#x}), not 0x8E")
print("taken over", flush=True)
deadline = time.time() + 25
got = 0
while got < n:
    if time.time() > deadline:
        fail(f"only {got} of {n} messages")
    try:
        m = qb["message"].get(timeout=1)
    except queue.Empty:
        continue
    if m.topic.endswith("/probe"):
        continue
    print(m.topic, m.payload.decode(), flush=True)
    got += 1
b.disconnect()
b.loop_stop()
