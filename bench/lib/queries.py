#!/usr/bin/env python3
"""Writes N search queries taken from the real commune list: name prefixes as
residents type them (lower case, often without accents, "st" for "saint"),
whole names, and postal-code prefixes. Deterministic for a given seed."""
import random
import sys
import unicodedata
import urllib.parse

tsv, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
rows = [l.rstrip("\n").split("\t") for l in open(tsv, encoding="utf-8") if not l.startswith("#")]
weights = [max(1, int(r[4])) for r in rows]

def plain(s):
    return "".join(c for c in unicodedata.normalize("NFD", s) if unicodedata.category(c) != "Mn")

out = []
for _ in range(n):
    code, name, _dep, postcodes, _pop = rng.choices(rows, weights=weights)[0]
    kind = rng.random()
    if kind < 0.55:
        q = name.lower()
        if rng.random() < 0.5:
            q = plain(q)
        q = q.replace("saint-", "st " if rng.random() < 0.3 else "saint-")
        q = q[: rng.randint(2, max(2, len(q)))]
    elif kind < 0.75:
        q = name
    elif kind < 0.95 and postcodes:
        pc = rng.choice(postcodes.split(","))
        q = pc[: rng.randint(2, 5)]
    else:
        q = code
    out.append(urllib.parse.quote(q))
sys.stdout.write("\n".join(out) + "\n")
