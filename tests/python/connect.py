"""CONNECT with MQTT 3.1.1 and 5.0."""
from common import *

p = port()
c = Client(p, v5=False)
flags, rc, _ = c.connect()
if flags.session_present:
    fail("3.1.1 clean session reported session present")
c.disconnect()

c5 = Client(p, v5=True, client_id="")
flags, rc, props = c5.connect()
if not getattr(props, "AssignedClientIdentifier", None):
    fail("no Assigned Client Identifier for empty client id")
c5.disconnect()
print("ok")
