"""QoS 0/1/2 round trip for both protocol versions."""
from common import *

p = port()
for v5 in (False, True):
    sub = Client(p, v5=v5)
    sub.connect()
    pub = Client(p, v5=v5)
    pub.connect()
    for qos in (0, 1, 2):
        t = uid("paho/qos")
        sub.subscribe(t, 2)
        pub.publish(t, f"q{qos}".encode(), qos=qos)
        m = sub.message()
        if m.topic != t or m.payload != f"q{qos}".encode() or m.qos != qos:
            fail(f"v5={v5} qos={qos}: got {m.topic} {m.payload!r} qos {m.qos}")
    sub.disconnect()
    pub.disconnect()
print("ok")
