#!/usr/bin/env python3
"""Adds to a wrk JSON line the CPU time each process spent per command.

Usage: cpu_per_command.py WRK_JSON "BEFORE_TICKS" "AFTER_TICKS" NAME... [--catch-up SECONDS]
The ticks are those of `cpu_ticks` in bench/run (user + system, one number per
process, in the order of the NAMEs). Prints the JSON line with
`cpu_ms_per_command_<name>` for each process (and `catch_up_s` if given)."""
import json
import os
import sys

args = sys.argv[1:]
catch_up = None
if "--catch-up" in args:
    at = args.index("--catch-up")
    catch_up = float(args[at + 1])
    del args[at:at + 2]
line, before, after, names = args[0], args[1].split(), args[2].split(), args[3:]
if not (len(names) == len(before) == len(after)):
    sys.exit("cpu_per_command.py: %d names for %d and %d tick counts" % (len(names), len(before), len(after)))
hz = os.sysconf("SC_CLK_TCK")
d = json.loads(line)
for name, b, a in zip(names, before, after):
    d["cpu_ms_per_command_" + name] = (int(a) - int(b)) * 1000 / hz / max(d["requests"], 1)
if catch_up is not None:
    d["catch_up_s"] = catch_up
print(json.dumps(d))
