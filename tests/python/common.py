"""Shared helpers for the paho-mqtt interop scripts (paho-mqtt 2.x)."""
import queue
import sys
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

TIMEOUT = 5.0


def fail(msg):
    print("FAIL:", msg, file=sys.stderr)
    sys.exit(1)


def uid(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class Client:
    """A paho client with its network loop in a thread and queues for events."""

    def __init__(self, port, v5=False, client_id=None, will=None, clean=True):
        self.v5 = v5
        proto = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        cid = uid("paho") if client_id is None else client_id
        if v5:
            self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=proto)
        else:
            self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=proto, clean_session=clean)
        self.connacks = queue.Queue()
        self.messages = queue.Queue()
        self.subacks = queue.Queue()
        self.published = queue.Queue()
        self.c.on_connect = lambda c, u, flags, rc, props: self.connacks.put((flags, rc, props))
        self.c.on_message = lambda c, u, msg: self.messages.put(msg)
        self.c.on_subscribe = lambda c, u, mid, rcs, props: self.subacks.put((mid, rcs, props))
        self.c.on_publish = lambda c, u, mid, rc, props: self.published.put(mid)
        if will:
            self.c.will_set(**will)
        self.port = port

    def connect(self, properties=None, clean_start=True):
        if self.v5:
            self.c.connect("127.0.0.1", self.port, keepalive=30, clean_start=clean_start, properties=properties)
        else:
            self.c.connect("127.0.0.1", self.port, keepalive=30)
        self.c.loop_start()
        flags, rc, props = get(self.connacks, "CONNACK")
        if rc.is_failure:
            fail(f"CONNACK refused: {rc}")
        return flags, rc, props

    def subscribe(self, topic, qos=0, **kw):
        self.c.subscribe(topic, qos, **kw) if self.v5 else self.c.subscribe(topic, qos)
        return get(self.subacks, "SUBACK")

    def publish(self, topic, payload, qos=0, retain=False, properties=None):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        info.wait_for_publish(timeout=TIMEOUT)
        if not info.is_published():
            fail(f"publish to {topic} not completed")

    def message(self):
        return get(self.messages, "PUBLISH")

    def no_message(self, wait=0.5):
        try:
            m = self.messages.get(timeout=wait)
        except queue.Empty:
            return
        fail(f"unexpected message on {m.topic}: {m.payload!r}")

    def disconnect(self):
        self.c.disconnect()
        self.c.loop_stop()

    def kill(self):
        """Abnormal close: drop the socket without DISCONNECT."""
        self.c.loop_stop()
        sock = self.c.socket()
        if sock is not None:
            sock.close()


def get(q, what):
    try:
        return q.get(timeout=TIMEOUT)
    except queue.Empty:
        fail(f"timed out waiting for {what}")


def port():
    if len(sys.argv) < 2:
        fail("usage: script.py PORT")
    return int(sys.argv[1])
