"""Paho subscriber for the cluster test: python3 cluster_sub.py PORT FILTER N

Subscribes FILTER (QoS 1) on 127.0.0.1:PORT and prints "TOPIC PAYLOAD" for
the first N messages whose topic does not end in /probe, then exits 0.
"""
import sys
import time

from common import Client, fail

port, flt, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
c = Client(port, v5=False)
c.connect()
c.subscribe(flt, qos=1)
print("subscribed", flush=True)
deadline = time.time() + 25
got = 0
while got < n:
    if time.time() > deadline:
        fail(f"only {got} of {n} messages")
    m = c.message()
    if m.topic.endswith("/probe"):
        continue
    print(m.topic, m.payload.decode(), flush=True)
    got += 1
c.disconnect()
