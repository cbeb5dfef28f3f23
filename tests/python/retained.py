"""Retained messages: set, replace, delete."""
from common import *

p = port()
for v5 in (False, True):
    t = uid("paho/ret")
    pub = Client(p, v5=v5)
    pub.connect()
    pub.publish(t, b"first", qos=1, retain=True)
    pub.publish(t, b"second", qos=1, retain=True)
    sub = Client(p, v5=v5)
    sub.connect()
    sub.subscribe(t, 1)
    m = sub.message()
    if m.payload != b"second" or not m.retain:
        fail(f"retained: {m.payload!r} retain={m.retain}")
    sub.no_message()
    pub.publish(t, b"", qos=1, retain=True)
    # The empty retained publish reaches the live subscriber; drain it.
    sub.message()
    sub2 = Client(p, v5=v5)
    sub2.connect()
    sub2.subscribe(t, 1)
    sub2.no_message()
    for c in (pub, sub, sub2):
        c.disconnect()
print("ok")
