"""Do two benchmark runs reach the same conclusions? (e.g. the comparison preset with 2 and with 1 torch thread)

For every row against pi_0 and for REFUEL against every row, per turn h: the sign of the 95% interval in
each run (+ above, - below, 0 contains the null) and whether the two runs agree. A conclusion is a separated
interval; a disagreement where one run separates and the other does not is a "weak" one (an effect near the
detection limit), a flip of sign is a contradiction.

    .venv/bin/python benchmarks/compare_runs.py runs/comparison runs/comparison-threads1
    .venv/bin/python benchmarks/compare_runs.py benchmarks/results/comparison runs/comparison   # against the record
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path


def sign(ci, null: float) -> str:
    lo, hi = ci
    return "+" if lo > null else "-" if hi < null else "0"


def conclusions(path: Path) -> dict:
    plain = path / "results.json"  # a run's output, or a recorded one (benchmarks/results/*: gzipped)
    d = json.loads(plain.read_text() if plain.exists() else gzip.decompress((path / "results.json.gz").read_bytes()))
    out = {}
    for row in d["rows"]:
        if row["label"] != "pi_0" and row.get("win_ci"):
            for h, ci in enumerate(row["win_ci"], 1):
                out[(f"{row['label']} vs pi_0", h)] = sign(ci, 0.5)
    for base, others in d.get("paired", {}).items():
        for other, p in others.items():
            for h, ci in enumerate(p["wins"]["ci"], 1):
                out[(f"{base} - {other}", h)] = sign(ci, 0.0)
            out[(f"{base} - {other}", "growth")] = sign(p["growth"]["ci"], 0.0)
    return out


def main(a: str, b: str) -> int:
    ca, cb = conclusions(Path(a)), conclusions(Path(b))
    keys = [k for k in ca if k in cb]
    same = sum(ca[k] == cb[k] for k in keys)
    flips = [k for k in keys if {ca[k], cb[k]} == {"+", "-"}]
    weak = [k for k in keys if ca[k] != cb[k] and k not in flips]
    print(f"{a} vs {b}: {len(keys)} comparisons (rows vs pi_0 and paired, per turn and growth)")
    print(f"same conclusion: {same}; one run separated, the other not: {len(weak)}; opposite signs: {len(flips)}")
    for k in weak + flips:
        print(f"  {k[0]}, h = {k[1]}: {ca[k]} vs {cb[k]}")
    final = max(h for _, h in keys if isinstance(h, int))
    print(f"\nat the final turn h = {final}:")
    for k in keys:
        if k[1] == final:
            print(f"  {k[0]:<40} {ca[k]} {cb[k]}{'' if ca[k] == cb[k] else '  <- differs'}")
    return 1 if flips else 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))
