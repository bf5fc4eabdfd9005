#!/usr/bin/env python3
"""Turns h2load's summary (stdin) and, when given, its per-request log file
(`--log-file`: start µs, status, duration µs) into the JSON line the other
measurements print: requests, rps, p50/p99/p99.9 (µs), errors."""
import json
import re
import sys

text = sys.stdin.read()
finished = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
counts = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", text)
codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
if not (finished and counts and codes):
    sys.exit("h2load printed no summary:\n" + text)
seconds = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
total, done, succeeded, failed, errored, timeouts = (int(g) for g in counts.groups())
result = {
    "requests": done,
    "duration_us": int(seconds * 1e6),
    "rps": float(finished.group(3)),
    "errors": (total - succeeded) + int(codes.group(3)) + int(codes.group(4)),
}
if len(sys.argv) > 1:
    latencies = sorted(int(line.split("\t")[2]) for line in open(sys.argv[1]) if line.strip())
    if latencies:
        def pct(p):
            return latencies[min(len(latencies) - 1, int(len(latencies) * p / 100))]
        result.update(p50_us=pct(50), p90_us=pct(90), p99_us=pct(99), p999_us=pct(99.9), max_us=latencies[-1])
print(json.dumps(result))
