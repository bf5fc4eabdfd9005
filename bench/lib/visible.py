#!/usr/bin/env python3
"""Publish-to-visible latency: publish through instance A, poll instance B until
the publication is served, N times in a row. Prints one JSON line.

COMMUNES is one INSEE code, or several separated by commas, or @FILE (one code
per line): a publication to all of them (a department-wide alert). The
projector writes the publication's record after every feed it changes, so B
serving the publication means every one of those feeds is written in the
bucket.

With RETRACT=1 each publication is retracted once measured, and the next one
waits until B answers 410 for it: every sample then meets feeds of the same
size (a department-wide publication lists its communes, and 20 of them would
make each feed of the department several times larger)."""
import http.client
import json
import os
import statistics
import sys
import time

a_port, b_port, token, communes, n = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
if communes.startswith("@"):
    communes = [line.strip() for line in open(communes[1:]) if line.strip()]
else:
    communes = communes.split(",")
a = http.client.HTTPConnection("127.0.0.1", a_port)
b = http.client.HTTPConnection("127.0.0.1", b_port)
body = {"communes": communes, "title": "Alerte", "body": "Vigilance orange orages.", "category": "weather",
        "priority": "urgent", "notify": False}


def wait_for(pid, status, since, what):
    """Polls B every 0.5 ms until it answers `status` for the publication."""
    while True:
        b.request("GET", f"/v1/publications/{pid}")
        r = b.getresponse()
        r.read()
        if r.status == status:
            return
        if time.perf_counter() - since > 10:
            sys.exit(f"{what} never became visible")
        time.sleep(0.0005)


samples = []
for _ in range(n):
    start = time.perf_counter()
    a.request("POST", "/v1/publications", json.dumps(body),
              {"Content-Type": "application/json", "Authorization": "Bearer " + token})
    response = a.getresponse()
    payload = response.read()
    if response.status != 201:
        sys.exit(f"publish failed: {response.status} {payload[:200]}")
    pid = json.loads(payload)["id"]
    wait_for(pid, 200, start, "publication")
    samples.append((time.perf_counter() - start) * 1e6)
    if os.environ.get("RETRACT") == "1":
        a.request("DELETE", f"/v1/publications/{pid}", headers={"Authorization": "Bearer " + token})
        response = a.getresponse()
        response.read()
        if response.status != 204:
            sys.exit(f"retract failed: {response.status}")
        wait_for(pid, 410, time.perf_counter(), "retraction")
    time.sleep(0.01)
samples.sort()
pct = lambda p: samples[min(len(samples) - 1, int(round(p / 100 * (len(samples) - 1))))]
print(json.dumps({"samples": n, "communes": len(communes), "p50_us": pct(50), "p99_us": pct(99), "max_us": samples[-1],
                  "mean_us": statistics.mean(samples)}))
