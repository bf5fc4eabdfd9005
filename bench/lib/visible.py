#!/usr/bin/env python3
"""Publish-to-visible latency: publish through instance A, poll instance B until
the publication is served, N times in a row. Prints one JSON line."""
import http.client
import json
import statistics
import sys
import time

a_port, b_port, token, commune, n = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
a = http.client.HTTPConnection("127.0.0.1", a_port)
b = http.client.HTTPConnection("127.0.0.1", b_port)
body = {"communes": [commune], "title": "Alerte", "body": "Vigilance orange orages.", "category": "weather",
        "priority": "urgent", "notify": False}
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
    while True:
        b.request("GET", f"/v1/publications/{pid}")
        r = b.getresponse()
        r.read()
        if r.status == 200:
            break
        if time.perf_counter() - start > 10:
            sys.exit("publication never became visible")
        time.sleep(0.0005)
    samples.append((time.perf_counter() - start) * 1e6)
    time.sleep(0.01)
samples.sort()
pct = lambda p: samples[min(len(samples) - 1, int(round(p / 100 * (len(samples) - 1))))]
print(json.dumps({"samples": n, "p50_us": pct(50), "p99_us": pct(99), "max_us": samples[-1],
                  "mean_us": statistics.mean(samples)}))
