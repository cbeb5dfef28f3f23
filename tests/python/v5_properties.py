"""MQTT 5.0 user properties (order preserved) and subscription identifiers."""
from common import *

p = port()
t = uid("paho/props")
sub = Client(p, v5=True)
sub.connect()
sp = Properties(PacketTypes.SUBSCRIBE)
sp.SubscriptionIdentifier = 17
sub.subscribe(t, 1, properties=sp)
sp2 = Properties(PacketTypes.SUBSCRIBE)
sp2.SubscriptionIdentifier = 23
sub.subscribe(t.rsplit("/", 1)[0] + "/#", 0, properties=sp2)

pub = Client(p, v5=True)
pub.connect()
pp = Properties(PacketTypes.PUBLISH)
pp.UserProperty = [("b", "1"), ("a", "2"), ("b", "3")]
pp.ContentType = "text/plain"
pp.ResponseTopic = "paho/reply"
pp.CorrelationData = b"\x01\x02"
pub.publish(t, b"props", qos=1, properties=pp)
m = sub.message()
props = m.properties
if props.UserProperty != [("b", "1"), ("a", "2"), ("b", "3")]:
    fail(f"user properties {props.UserProperty}")
if props.ContentType != "text/plain" or props.ResponseTopic != "paho/reply" or props.CorrelationData != b"\x01\x02":
    fail(f"properties {props}")
ids = props.SubscriptionIdentifier
ids = sorted(ids if isinstance(ids, list) else [ids])
if ids != [17, 23]:
    fail(f"subscription identifiers {ids}")
if m.qos != 1:
    fail(f"qos {m.qos}, expected the highest of the overlapping subscriptions")
sub.no_message()
sub.disconnect()
pub.disconnect()
print("ok")
