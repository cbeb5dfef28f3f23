"""A persistent MQTT 5.0 paho-mqtt subscriber at QoS 2 that moves to another
node when its node dies (the cluster's exactly-once test).

usage: cluster_qos2_failover.py PORT_A PORT_B CLIENT_ID FILTER [TIMEOUT_S]

Connects to PORT_A (clean start off, session expiry 300 s), subscribes
FILTER at QoS 2 and prints "ready"; prints "m <payload>" for each message;
when the connection is lost it connects to PORT_B (same client id, clean
start off) and prints "c <session_present>" for each CONNACK; exits once the
payload "end" arrives.

paho delivers a QoS 2 message when its PUBREL arrives and keeps its QoS 2
receive state across reconnects of one Client, so a message delivered twice
(sent again as a new PUBLISH after it completed) shows up as two lines.
"""
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

port_a, port_b, cid, flt = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 120.0
done = threading.Event()
moved = False

props = Properties(PacketTypes.CONNECT)
props.SessionExpiryInterval = 300

c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
c.reconnect_delay_set(min_delay=1, max_delay=1)


def on_connect(client, userdata, flags, rc, p):
    print(f"c {int(flags.session_present)} {rc}", flush=True)
    if not moved:
        client.subscribe(flt, 2)


def on_subscribe(client, userdata, mid, rcs, p):
    print("ready", flush=True)


def on_disconnect(client, userdata, flags, rc, p):
    global moved
    if not moved:
        moved = True
        # The next reconnect of paho's loop goes to the other node.
        client.connect_async("127.0.0.1", port_b, keepalive=10, clean_start=False,
                             properties=props)


def on_message(client, userdata, msg):
    p = msg.payload.decode()
    print(f"m {p}", flush=True)
    if p == "end":
        done.set()


c.on_connect = on_connect
c.on_subscribe = on_subscribe
c.on_disconnect = on_disconnect
c.on_message = on_message
c.connect("127.0.0.1", port_a, keepalive=10, clean_start=False, properties=props)
c.loop_start()
ok = done.wait(timeout)
time.sleep(0.5)
c.disconnect()
c.loop_stop()
if not ok:
    print(f"FAIL: timed out after {timeout}s", file=sys.stderr, flush=True)
    sys.exit(1)
