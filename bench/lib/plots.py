#!/usr/bin/env python3
"""Hand-drawn SVG charts of the benchmark results (Python stdlib only, no matplotlib).

    draw_all(groups, out_dir) -> [(caption, filename), ...]

`groups` maps a measurement name (a record's "name" without its trailing " runN")
to its runs, exactly as bench/lib/write_report.py builds it. Every bar is the
median of the runs, with a whisker from the smallest to the largest run. Each
server keeps one colour in every chart. A chart whose data is missing is skipped.

Alone: python3 bench/lib/plots.py bench/out/results.jsonl OUT_DIR
"""
import json
import math
import os
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Optional
from xml.sax.saxutils import escape

# ---------------------------------------------------------------- style

FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
INK = "#222222"
MUTED = "#666666"
GRID = "#e3e3e3"
AXIS = "#555555"
TARGET = "#D55E00"  # dashed target lines, and figures that miss their target

# One colour per server, the same in every chart (Okabe–Ito, colour-blind safe).
COLOURS = {
    "panneau": "#0072B2",
    "nginx": "#009E73",
    "varnish": "#CC79A7",
    "bare": "#E69F00",  # bare MariaDB INSERTs
}
LABELS = {"panneau": "Panneau", "nginx": "nginx", "varnish": "Varnish", "bare": "bare MariaDB INSERT"}

SERVERS = ("panneau", "nginx", "varnish")
FEED_CLUSTERS = [(encoding, conns) for conns in (64, 256) for encoding in ("identity", "gzip")]
WRITE_CLIENTS = (1, 16, 64)
WRITE_TARGET = 0.8
FANOUT_TARGET = 10_000
REPLAY_TARGET = 100_000
RSS_TARGET_MIB = 1024


# ---------------------------------------------------------------- data

@dataclass
class Stat:
    median: float
    lo: float
    hi: float


def stat(runs, key, scale=1.0) -> Optional[Stat]:
    """Median, min and max of one field over the runs; None when absent."""
    values = [r[key] * scale for r in runs or () if isinstance(r.get(key), (int, float))]
    if not values:
        return None
    return Stat(statistics.median(values), min(values), max(values))


def run_count(groups, names) -> int:
    return max((len(groups.get(n) or ()) for n in names), default=0)


def error_note(groups, names, prefix="") -> str:
    bad = ["%s: %d" % (n[len(prefix):], sum(r.get("errors", 0) for r in groups[n]))
           for n in names if groups.get(n) and any(r.get("errors", 0) for r in groups[n])]
    return "Errors: " + ("; ".join(bad) if bad else "none in any run") + "."


# ---------------------------------------------------------------- formatting

def trim(s: str) -> str:
    return s[:-2] if s.endswith(".0") else s


def compact(v: float) -> str:
    """65737 -> 65.7k, 1200000 -> 1.2M, 3.884 -> 3.9, 20000 -> 20k."""
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return trim("%.1f" % (v / div)) + suffix
    if v == int(v):
        return "%d" % v
    return trim("%.2f" % v) if abs(v) < 1 else trim("%.1f" % v)


def thousands(v: float) -> str:
    return "{:,.0f}".format(v)


def kilo(v: float) -> str:
    """A bar's figure: 65737 -> 65.7k, 56000 -> 56.0k, 812 -> 812."""
    return "%.1fk" % (v / 1000) if abs(v) >= 1000 else "%.0f" % v


def one_decimal(v: float) -> str:
    return "%.1f" % v


def tick_label(v: float, axis_max: float) -> str:
    """One style per axis: 20k, 40k … from 10,000 up; 250, 500, 1,000 or 2.5, 5 below."""
    if axis_max >= 10_000:
        return compact(v)
    return "{:,.2f}".format(v).rstrip("0").rstrip(".")


def text_width(s: str, size: float) -> float:
    return len(s) * size * 0.6


# ---------------------------------------------------------------- SVG primitives

def fmt(v: float) -> str:
    return ("%.1f" % v).rstrip("0").rstrip(".")


def text(x, y, s, size=12, anchor="middle", fill=INK, weight=None, halo=False, rotate=False):
    attrs = 'x="%s" y="%s" font-size="%s" text-anchor="%s" fill="%s"' % (fmt(x), fmt(y), size, anchor, fill)
    if weight:
        attrs += ' font-weight="%s"' % weight
    if halo:  # a white outline keeps labels readable over lines and bars
        attrs += ' stroke="#ffffff" stroke-width="3" stroke-linejoin="round" paint-order="stroke"'
    if rotate:
        attrs += ' transform="rotate(-90 %s %s)"' % (fmt(x), fmt(y))
    return "<text %s>%s</text>" % (attrs, escape(s))


def line(x1, y1, x2, y2, stroke=AXIS, width=1.0, dash=None):
    extra = ' stroke-dasharray="%s"' % dash if dash else ""
    return '<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="%s" stroke-width="%s"%s/>' % (
        fmt(x1), fmt(y1), fmt(x2), fmt(y2), stroke, width, extra)


def rect(x, y, w, h, fill, title=None):
    tip = "<title>%s</title>" % escape(title) if title else ""
    return '<rect x="%s" y="%s" width="%s" height="%s" fill="%s">%s</rect>' % (
        fmt(x), fmt(y), fmt(max(w, 0)), fmt(max(h, 0)), fill, tip)


# ---------------------------------------------------------------- charts

@dataclass
class Panel:
    """One grouped bar chart: a cluster of bars (one per series) per category."""
    title: str
    y_label: str                      # with its unit
    categories: list                  # x labels; "\n" splits one over two lines
    values: dict                      # series key -> [Stat or None per category]
    value_fmt: Callable = kilo        # the figure printed above each bar
    target: Optional[float] = None    # dashed line across the whole panel
    target_label: str = ""
    cluster_targets: Optional[list] = None  # dashed segment over each cluster (or None)
    notes: Optional[list] = None      # (text, colour) above each cluster (or None)


@dataclass
class Figure:
    title: str
    subtitle: str
    panels: list
    runs: int = 3
    legend: dict = field(default_factory=dict)  # series key -> label, overriding LABELS
    target_legend: str = "target"
    footnote: str = ""
    width: int = 960
    height: int = 470


def nice_axis(peak: float):
    """An axis top at or above `peak` and a round tick step (1, 2, 2.5 or 5 × 10^k)."""
    if peak <= 0:
        return 1.0, 0.2
    raw = peak / 5
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return math.ceil(peak / step - 1e-9) * step, step


def panel_peak(p: Panel) -> float:
    tops = [s.hi for stats in p.values.values() for s in stats if s]
    tops += [t for t in (p.cluster_targets or []) if t]
    if p.target:
        tops.append(p.target)
    return max(tops, default=0)


def draw_panel(p: Panel, x0, y0, w, h, runs_shown: bool) -> list:
    out = [text(x0 + w / 2, y0 + 14, p.title, 13, weight="bold")]
    left, right, top, bottom = x0 + 70, x0 + w - 14, y0 + 30, y0 + h - 40
    reserve = 22 + (20 if p.notes else 0) + (14 if p.target else 0)  # px above the tallest bar
    axis_max, step = nice_axis(panel_peak(p) * (bottom - top) / (bottom - top - reserve))

    def y(v):
        return bottom - v / axis_max * (bottom - top)

    # grid, ticks, axes
    for i in range(int(round(axis_max / step)) + 1):
        v = i * step
        out.append(line(left, y(v), right, y(v), GRID if i else AXIS))
        out.append(text(left - 6, y(v) + 4, tick_label(v, axis_max), 11, "end", MUTED))
    out.append(line(left, top, left, bottom, AXIS))
    out.append(text(x0 + 16, (top + bottom) / 2, p.y_label, 12, fill=INK, rotate=True))

    series = [s for s in p.values if any(p.values[s])]
    cw = (right - left) / max(len(p.categories), 1)
    bw = min(cw * 0.74 / max(len(series), 1), 80)
    bars, marks, labels = [], [], []
    boxes = []  # (x1, y1, x2, y2) of the figures printed above bars, kept clear by the target label
    for ci, category in enumerate(p.categories):
        cx = left + ci * cw + cw / 2
        gx = cx - bw * len(series) / 2
        for li, part in enumerate(category.split("\n")):
            labels.append(text(cx, bottom + 17 + 14 * li, part, 12, fill=INK if li == 0 else MUTED))
        cluster_top = bottom
        for si, key in enumerate(series):
            s = p.values[key][ci]
            if not s:
                continue
            bx, mid = gx + si * bw, gx + si * bw + bw / 2
            bars.append(rect(bx + 1.5, y(s.median), bw - 3, bottom - y(s.median), COLOURS.get(key, MUTED),
                             "%s: median %s (min %s, max %s)" % (LABELS.get(key, key), p.value_fmt(s.median),
                                                                p.value_fmt(s.lo), p.value_fmt(s.hi))))
            if s.hi > s.lo and runs_shown:
                cap = bw * 0.18
                marks += [line(mid, y(s.lo), mid, y(s.hi), INK, 1.2),
                          line(mid - cap, y(s.lo), mid + cap, y(s.lo), INK, 1.2),
                          line(mid - cap, y(s.hi), mid + cap, y(s.hi), INK, 1.2)]
            label_y = y(max(s.hi, s.median)) - 5
            figure = p.value_fmt(s.median)
            labels.append(text(mid, label_y, figure, 11, weight="bold", halo=True))
            half = text_width(figure, 11) / 2
            boxes.append((mid - half, label_y - 11, mid + half, label_y + 2))
            cluster_top = min(cluster_top, label_y - 12)
        target = (p.cluster_targets or [None] * len(p.categories))[ci]
        if target:
            marks.append(line(gx - 8, y(target), gx + bw * len(series) + 8, y(target), TARGET, 2, "6 4"))
            cluster_top = min(cluster_top, y(target) - 4)
        note = (p.notes or [None] * len(p.categories))[ci]
        if note:
            labels.append(text(cx, cluster_top - 6, note[0], 12, fill=note[1], weight="bold", halo=True))
            half = text_width(note[0], 12) / 2
            boxes.append((cx - half, cluster_top - 18, cx + half, cluster_top - 4))
    if p.target:
        marks.append(line(left, y(p.target), right, y(p.target), TARGET, 2, "6 4"))
        labels.append(target_label(p.target_label, right - 2, y(p.target), boxes))
    return out + bars + marks + labels


def target_label(label, x_end, y_line, boxes):
    """The target's label at the right end of its line: above it, or below where a bar's figure sits."""
    x1 = x_end - text_width(label, 11)
    for y in (y_line - 6, y_line + 15):
        if not any(x1 < bx2 and bx1 < x_end and y - 11 < by2 and by1 < y + 2 for bx1, by1, bx2, by2 in boxes):
            break
    return text(x_end, y, label, 11, "end", TARGET, "bold", halo=True)


def legend_entries(fig: Figure) -> list:
    """(symbol width, symbol drawer(x, y), label) for each legend entry."""
    keys = dict.fromkeys(k for p in fig.panels for k in p.values if any(p.values[k]))
    entries = [(12, lambda x, y, c=COLOURS.get(k, MUTED): [rect(x, y - 10, 12, 12, c)],
                fig.legend.get(k, LABELS.get(k, k))) for k in keys]
    if fig.runs > 1:
        entries.append((10, lambda x, y: [line(x + 5, y - 11, x + 5, y + 3, INK, 1.2),
                                           line(x + 1, y - 11, x + 9, y - 11, INK, 1.2),
                                           line(x + 1, y + 3, x + 9, y + 3, INK, 1.2)],
                        "median; whisker = min–max of %d runs" % fig.runs))
    if any(p.target or any(p.cluster_targets or []) for p in fig.panels):
        entries.append((26, lambda x, y: [line(x, y - 4, x + 26, y - 4, TARGET, 2, "6 4")], fig.target_legend))
    return entries


def draw_legend(fig: Figure, x0, y) -> tuple:
    """The legend on as many rows as it needs; returns its elements and the y of its last row."""
    out, x = [], x0
    for width, symbol, label in legend_entries(fig):
        span = width + 6 + text_width(label, 12)
        if x > x0 and x + span > fig.width - 10:
            x, y = x0, y + 20
        out += symbol(x, y) + [text(x + width + 6, y, label, 12, "start")]
        x += span + 22
    return out, y


def render(fig: Figure) -> str:
    out = [
        '<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
        'font-family="%s">' % (fig.width, fig.height, fig.width, fig.height, FONT),
        "<title>%s</title>" % escape(fig.title),
        rect(0, 0, fig.width, fig.height, "#ffffff"),
        text(20, 28, fig.title, 17, "start", weight="bold"),
        text(20, 47, fig.subtitle, 12, "start", MUTED),
    ]
    legend, legend_y = draw_legend(fig, 20, 72)
    out += legend
    panel_top, footer = legend_y + 14, 24 if fig.footnote else 6
    pw = (fig.width - 20) / len(fig.panels)
    for i, p in enumerate(fig.panels):
        out += draw_panel(p, 10 + i * pw, panel_top, pw, fig.height - panel_top - footer, fig.runs > 1)
    if fig.footnote:
        out.append(text(20, fig.height - 9, fig.footnote, 11, "start", MUTED))
    out.append("</svg>")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + "\n".join(out) + "\n"


# ---------------------------------------------------------------- the figures

def feed_figure(groups, prefix, key, scale, title, y_label, lower_is_better, value_fmt=kilo):
    names = {(srv, enc, c): "%s %s %s c%d" % (prefix, srv, enc, c) for srv in SERVERS for enc, c in FEED_CLUSTERS}
    clusters = [cl for cl in FEED_CLUSTERS if any(groups.get(names[(srv,) + cl]) for srv in SERVERS)]
    values = {srv: [stat(groups.get(names[(srv,) + cl]), key, scale) for cl in clusters] for srv in SERVERS}
    values = {srv: v for srv, v in values.items() if any(v)}
    if not values:
        return None
    nginx = values.get("nginx", [None] * len(clusters))
    notes = []
    for p, n in zip(values.get("panneau", [None] * len(clusters)), nginx):
        if not (p and n and n.median):
            notes.append(None)
            continue
        ratio = p.median / n.median
        ok = ratio <= 1 if lower_is_better else ratio >= 1
        notes.append(("Panneau %.2f× nginx" % ratio, INK if ok else TARGET))
    panel = Panel(
        title="", y_label=y_label,
        categories=["%s\n%d connections" % cl for cl in clusters], values=values,
        cluster_targets=[n.median if n else None for n in nginx], notes=notes, value_fmt=value_fmt)
    goal = "Panneau ≤ nginx" if lower_is_better else "Panneau ≥ 1.0× nginx"
    used = list(names.values())
    return Figure(title=title, subtitle="GET /v1/communes/35238/feed from the warm cache, identical bytes from "
                  "each server; same machine, same load generator.",
                  panels=[panel], runs=run_count(groups, used),
                  target_legend="target: nginx median (%s)" % goal, footnote=error_note(groups, used, prefix + " "))


def write_figure(groups):
    api = [stat(groups.get("write api c%d" % c), "rps") for c in WRITE_CLIENTS]
    bare = [stat(groups.get("write bare c%d" % c), "rps") for c in WRITE_CLIENTS]
    if not any(api):
        return None
    notes, targets = [], []
    for a, b in zip(api, bare):
        ok = a and b and b.median
        ratio = a.median / b.median if ok else None
        notes.append(("API / bare = %.2f" % ratio, INK if ratio >= WRITE_TARGET else TARGET) if ok else None)
        targets.append(WRITE_TARGET * b.median if ok else None)
    panel = Panel(title="", y_label="commands or INSERTs per second",
                  categories=["%d client%s" % (c, "" if c == 1 else "s") for c in WRITE_CLIENTS],
                  values={"panneau": api, "bare": bare}, cluster_targets=targets, notes=notes)
    used = ["write %s c%d" % (kind, c) for kind in ("api", "bare") for c in WRITE_CLIENTS]
    return Figure(title="Write path: durable API commands beside bare MariaDB INSERTs",
                  subtitle="One cluster-mode instance, MariaDB with durable commits, NATS JetStream "
                  "sync_interval: always.",
                  panels=[panel], runs=run_count(groups, used),
                  legend={"panneau": "Panneau API commands"},
                  target_legend="target: API ≥ %.1f × bare" % WRITE_TARGET)


def storm_figure(groups):
    runs = groups.get("storm")
    if not runs:
        return None
    communes = stat(runs, "communes")
    per_instance = ["instance A", "instance B"]
    panels = [
        Panel("Requests per second", "requests/s", ["Panneau"], {"panneau": [stat(runs, "rps")]}),
        Panel("p99 latency", "p99 latency (ms)", ["Panneau"], {"panneau": [stat(runs, "p99_us", 1 / 1000)]},
              value_fmt=one_decimal),
        Panel("KV loads per instance", "KV loads (count)", per_instance,
              {"panneau": [stat(runs, "loads_a"), stat(runs, "loads_b")]}, value_fmt=thousands,
              target=communes.median if communes else None,
              target_label="%s communes" % thousands(communes.median) if communes else ""),
    ]
    errors = sum(r.get("errors", 0) for r in runs)
    return Figure(title="Cold-cache storm", subtitle="Requests/s and p99 latency of the storm run; KV loads counted "
                  "on each of the two instances.", panels=panels, runs=len(runs),
                  target_legend="target: one KV load per commune",
                  footnote="Errors: %s." % (errors or "none in any run"))


def scale_figure(groups):
    runs = groups.get("scale")
    rss = stat(runs, "rss_kb", 1 / 1024)
    if not rss:
        return None
    facts = [("cache entries", stat(runs, "cache_entries"), thousands),
             ("cold start", stat(runs, "cold_start_ms"), lambda v: "%s ms" % thousands(v)),
             ("search p99", stat(runs, "search_p99_us"), lambda v: "%s µs" % thousands(v))]
    subtitle = ", ".join("%s %s" % (name, f(s.median)) for name, s, f in facts if s)
    panel = Panel("Resident memory", "resident memory (MiB)", ["Panneau"], {"panneau": [rss]},
                  value_fmt=lambda v: "%s MiB" % thousands(v), target=RSS_TARGET_MIB,
                  target_label="%s MiB" % thousands(RSS_TARGET_MIB))
    return Figure(title="Memory at scale", subtitle=(subtitle + " (medians)") if subtitle else "",
                  panels=[panel], runs=len(runs), target_legend="target: ≤ %s MiB" % thousands(RSS_TARGET_MIB),
                  width=560)


def fanout_replay_figure(groups):
    panels, facts = [], []
    for name, title, unit, target, size_key, what in (
            ("fanout", "Notification fan-out", "notifications/s", FANOUT_TARGET, "devices", "devices notified"),
            ("replay feeds", "Projection replay", "events/s", REPLAY_TARGET, "events", "events replayed")):
        runs = groups.get(name)
        rate = stat(runs, "rate")
        if not rate:
            continue
        ratio = rate.median / target
        panels.append(Panel(title, unit, ["achieved"], {"panneau": [rate]}, value_fmt=thousands,
                            target=target, target_label="target %s" % thousands(target),
                            notes=[("%.2f× target" % ratio, INK if ratio >= 1 else TARGET)]))
        if isinstance(runs[0].get(size_key), (int, float)):
            facts.append("%s %s" % (thousands(runs[0][size_key]), what))
    if not panels:
        return None
    return Figure(title="Fan-out and replay: achieved vs target",
                  subtitle="Rate per second; " + ", ".join(facts) + " per run." if facts else "Rate per second.",
                  panels=panels, runs=run_count(groups, ["fanout", "replay feeds"]),
                  target_legend="target (higher is better)", width=max(380 * len(panels) + 20, 520))


def chart_specs(groups):
    """(filename, caption, Figure or None) for every chart, in report order."""
    return [
        ("feed-rps.svg", "Cached feed GET, HTTP/1.1: requests per second, Panneau beside nginx and Varnish",
         feed_figure(groups, "feed", "rps", 1, "Cached feed GET, HTTP/1.1: requests per second",
                     "requests per second", False)),
        ("feed-h2-rps.svg", "Cached feed GET, HTTP/2: requests per second, Panneau beside nginx and Varnish",
         feed_figure(groups, "feed h2", "rps", 1, "Cached feed GET, HTTP/2: requests per second",
                     "requests per second", False)),
        ("feed-p99.svg", "Cached feed GET, HTTP/1.1: p99 latency (lower is better)",
         feed_figure(groups, "feed", "p99_us", 1 / 1000, "Cached feed GET, HTTP/1.1: p99 latency",
                     "p99 latency (ms)", True, one_decimal)),
        ("write.svg", "Write path: API commands/s beside bare MariaDB INSERTs/s; target ratio ≥ %.1f"
         % WRITE_TARGET, write_figure(groups)),
        ("storm.svg", "Cold-cache storm: requests/s, p99 latency, and KV loads per instance against "
         "the number of communes", storm_figure(groups)),
        ("scale.svg", "Resident memory at scale against the %s MiB target" % thousands(RSS_TARGET_MIB),
         scale_figure(groups)),
        ("fanout-replay.svg", "Notification fan-out (target 10,000/s) and projection replay "
         "(target 100,000 events/s): achieved vs target", fanout_replay_figure(groups)),
    ]


def draw_all(groups: dict, out_dir: str) -> list:
    """Writes every chart whose data exists into out_dir; returns [(caption, filename)]."""
    os.makedirs(out_dir, exist_ok=True)
    drawn = []
    for filename, caption, figure in chart_specs(groups):
        if figure is not None:
            figure.panels = [p for p in figure.panels if any(any(v) for v in p.values.values())]
        if figure is None or not figure.panels:
            continue
        with open(os.path.join(out_dir, filename), "w", encoding="utf-8") as f:
            f.write(render(figure))
        drawn.append((caption, filename))
    return drawn


def load_groups(results_path: str) -> dict:
    """The same grouping as bench/lib/write_report.py."""
    groups = defaultdict(list)
    with open(results_path, encoding="utf-8") as f:
        for l in f:
            if l.strip():
                r = json.loads(l)
                groups[r["name"].rsplit(" run", 1)[0]].append(r)
    return groups


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: plots.py RESULTS.jsonl OUT_DIR")
    for caption, filename in draw_all(load_groups(sys.argv[1]), sys.argv[2]):
        print("%s\t%s" % (filename, caption))
