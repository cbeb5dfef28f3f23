"""Will published on abnormal close, not on DISCONNECT."""
from common import *

p = port()
for v5 in (False, True):
    t = uid("paho/will")
    watch = Client(p, v5=v5)
    watch.connect()
    watch.subscribe(t, 1)
    dying = Client(p, v5=v5, will=dict(topic=t, payload=b"died", qos=1))
    dying.connect()
    dying.kill()
    m = watch.message()
    if m.payload != b"died":
        fail(f"will payload {m.payload!r}")
    polite = Client(p, v5=v5, will=dict(topic=t, payload=b"polite", qos=1))
    polite.connect()
    polite.disconnect()
    watch.no_message(0.8)
    watch.disconnect()
print("ok")
