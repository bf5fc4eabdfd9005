#!/usr/bin/env python3
"""Derive data/communes.tsv from Etalab's "découpage administratif" (MIT licence).

Keeps the current communes only (type "commune-actuelle", 34,969 in release 6.0.0)
and the fields the service needs: INSEE code, name, department, postal codes and
population. The output is sorted by INSEE code and is byte-for-byte reproducible:

    python3 tools/build-communes.py ../shared/data/etalab-decoupage-administratif-6.0.0
"""
import json
import pathlib
import sys

source = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/etalab-decoupage-administratif-6.0.0")
communes = json.loads((source / "communes.json").read_text(encoding="utf-8"))
rows = []
for c in communes:
    if c.get("type") != "commune-actuelle":
        continue
    for field in ("code", "nom", "departement"):
        if "\t" in c[field] or "\n" in c[field]:
            sys.exit(f"unexpected separator in {c['code']}")
    rows.append((c["code"], c["nom"], c["departement"], ",".join(c.get("codesPostaux", [])), str(c.get("population", 0))))
rows.sort()
out = pathlib.Path(__file__).resolve().parent.parent / "data" / "communes.tsv"
with out.open("w", encoding="utf-8", newline="\n") as f:
    f.write("# code\tname\tdepartment\tpostcodes\tpopulation\n")
    for row in rows:
        f.write("\t".join(row) + "\n")
print(f"{len(rows)} communes written to {out}")
