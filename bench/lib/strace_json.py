#!/usr/bin/env python3
"""Turns an `strace -f -c` summary (argv[1]) and the h2load summary of the run
it traced (argv[2]) into one JSON line: the requests answered and the system
calls per response, grouped as writes, reads and waits, and in all."""
import json
import re
import sys

GROUPS = {
    "writes": {"write", "writev", "sendfile", "sendmsg", "sendto"},
    "reads": {"read", "readv", "recvfrom", "recvmsg"},
    "waits": {"epoll_wait", "epoll_pwait", "epoll_pwait2", "futex"},
}

calls = {}
for line in open(sys.argv[1]):
    parts = line.split()
    # "% time  seconds  usecs/call  calls  [errors]  syscall"
    if len(parts) >= 5 and parts[3].isdigit() and parts[-1] != "total":
        calls[parts[-1]] = int(parts[3])
summary = open(sys.argv[2]).read()
succeeded = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", summary)
if not (calls and succeeded and int(succeeded.group(1)) > 0):
    sys.exit("no strace summary or no request answered:\n" + summary)
requests = int(succeeded.group(1))
result = {"requests": requests, "calls": calls}
for group, names in GROUPS.items():
    result[group + "_per_response"] = round(sum(calls.get(n, 0) for n in names) / requests, 3)
result["all_per_response"] = round(sum(calls.values()) / requests, 3)
print(json.dumps(result))
