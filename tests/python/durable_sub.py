"""A durable (clean session 0) paho-mqtt subscriber for the persistence tests.

usage: durable_sub.py PORT CLIENT_ID FILTER QOS MODE [TIMEOUT_S]

MODE "setup": connect, subscribe FILTER at QOS, disconnect cleanly.
MODE "run":   connect without subscribing (the broker must remember the
              subscription), print "c <session_present>" for each CONNACK and
              "m <payload>" for each message, and reconnect whenever the broker
              goes away, until the payload "end" arrives.

paho delivers a QoS 2 message when its PUBREL arrives and keeps QoS 2 receive
state across reconnects of one process, so exactly-once is observable here.
"""
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

port, cid, flt, qos, mode = (int(sys.argv[1]), sys.argv[2], sys.argv[3],
                             int(sys.argv[4]), sys.argv[5])
timeout = float(sys.argv[6]) if len(sys.argv) > 6 else 60.0
done = threading.Event()

c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, clean_session=False,
                protocol=mqtt.MQTTv311)
c.reconnect_delay_set(min_delay=1, max_delay=1)


def on_connect(client, userdata, flags, rc, props):
    print(f"c {int(flags.session_present)} {rc}", flush=True)
    if mode == "setup":
        client.subscribe(flt, qos)


def on_subscribe(client, userdata, mid, rcs, props):
    print(f"s {[int(r.value) for r in rcs]}", flush=True)
    client.disconnect()
    done.set()


def on_message(client, userdata, msg):
    p = msg.payload.decode()
    print(f"m {p}", flush=True)
    if p == "end":
        client.disconnect()
        done.set()


c.on_connect = on_connect
c.on_subscribe = on_subscribe
c.on_message = on_message
c.connect("127.0.0.1", port, keepalive=10)
c.loop_start()
ok = done.wait(timeout)
time.sleep(0.2)
c.loop_stop()
if not ok:
    print(f"FAIL: timed out after {timeout}s", file=sys.stderr, flush=True)
    sys.exit(1)
