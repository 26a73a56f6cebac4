"""Summary of a `make mutation` run (mutmut 3): per module killed / survived / timeout / no tests, the surviving
mutants each with why it survives (benchmarks/results/mutation/equivalents.md: a reviewed reason per mutant), and
the score, written to benchmarks/results/mutation/summary.txt. Its last line is

    mutation score: X% (killed K of N)

where K counts the mutants a test detected (a failing test or a timeout) and N every mutant generated, less
those reviewed as equivalent programs (the standard definition: an equivalent mutant is no bug to catch).
Mutants without a covering fast test, and survivors without a reviewed reason, count as not killed.

    python benchmarks/mutation_summary.py [--mutants mutants] [--out benchmarks/results/mutation/summary.txt]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "mutation"
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
          -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", -11: "segfault", -9: "segfault",
          None: "not checked"}  # mutmut.stats.status_by_exit_code (3.x); anything else: "suspicious"
DETECTED = ("killed", "timeout", "segfault")


def equivalents(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """``- `mutant.name`: reason`` lines of the reviewed file: those under a heading ``## Equivalent ...`` are
    equivalent programs (left out of N); those under any other heading survive for a stated reason (they count
    as not killed)."""
    equivalent, explained, section = {}, {}, ""
    if path.exists():
        for line in path.read_text().splitlines():
            if line.startswith("#"):
                section = line.lower()
            m = re.match(r"^\s*[-*]\s+`([^`]+)`\s*:\s*(.+)$", line)
            if m:
                (equivalent if "equivalent" in section else explained)[m.group(1)] = m.group(2).strip()
    return equivalent, explained


def diff_line(name: str, mutants: Path, module: str = "") -> str:
    """The mutated line of a mutant (as ``mutmut show`` gives it), for the summary."""
    try:  # in-process: one `mutmut show` per survivor would start Python hundreds of times
        from mutmut.mutation.diff_apply import get_diff_for_mutant

        out = get_diff_for_mutant(name, path=module)
    except Exception:  # noqa: BLE001 - another mutmut version: ask the command
        try:
            out = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=mutants.parent,
                                 capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.TimeoutExpired):
            return ""
    plus = [ln[1:].strip() for ln in out.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    return plus[0][:110] if plus else ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mutants", type=Path, default=ROOT / "mutants")
    ap.add_argument("--out", type=Path, default=RESULTS / "summary.txt")
    ap.add_argument("--equivalents", type=Path, default=RESULTS / "equivalents.md")
    ap.add_argument("--minutes", type=float, default=None, help="wall time of the run, for the record")
    ap.add_argument("--no-diff", action="store_true", help="do not show each survivor's mutated line")
    ap.add_argument("--note", action="append", default=[], help="a line to record under the header (how the run went)")
    args = ap.parse_args(argv)

    metas = sorted(args.mutants.rglob("*.py.meta"))
    if not metas:
        print(f"no mutmut results under {args.mutants}: run `make mutation` first", file=sys.stderr)
        return 2
    reviewed, explained = equivalents(args.equivalents)
    per_module: dict[str, Counter] = {}
    survivors: list[tuple[str, str, str]] = []  # (module, mutant, status)
    for meta in metas:
        module = str(meta.relative_to(args.mutants))[: -len(".meta")]
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if not codes:
            continue
        c = per_module.setdefault(module, Counter())
        for name, code in sorted(codes.items(), key=lambda kv: (kv[0].rsplit("__mutmut_", 1)[0],
                                                                 int(kv[0].rsplit("_", 1)[1]))):
            status = STATUS.get(code, "suspicious")
            c[status] += 1
            if status == "not checked":  # an interrupted run: counted apart, not in the score
                continue
            if status not in DETECTED:
                if name in reviewed:
                    c["equivalent"] += 1
                survivors.append((module, name, status))
    unchecked = sum(c["not checked"] for c in per_module.values())
    total = sum(sum(v for k, v in c.items() if k not in ("equivalent", "not checked")) for c in per_module.values())
    detected = sum(c[s] for c in per_module.values() for s in DETECTED)
    n_equiv = sum(c["equivalent"] for c in per_module.values())
    n = total - n_equiv
    lines = ["Mutation testing (issue #13): mutmut 3 on the algorithms, the rollout engine, the turn masks and the env "
             "core;", "each mutant is run against the fast tests that call the mutated function (pyproject.toml, "
             "[tool.mutmut]).", ""]
    if args.minutes is not None:
        lines.append(f"wall time of the run: {args.minutes:.1f} min")
        lines.append("")
    if args.note:
        lines += args.note + [""]
    head = f"{'module':38s} {'mutants':>7s} {'killed':>7s} {'timeout':>7s} {'survived':>8s} {'no tests':>8s} " \
           f"{'equivalent':>10s} {'score':>6s}"
    lines += [head, "-" * len(head)]
    for module, c in sorted(per_module.items()):
        m = sum(v for k, v in c.items() if k not in ("equivalent", "not checked"))
        det = sum(c[s] for s in DETECTED)
        denom = m - c["equivalent"]
        lines.append(f"{module:38s} {m:7d} {c['killed'] + c['segfault']:7d} {c['timeout']:7d} {c['survived']:8d} "
                     f"{c['no tests']:8d} {c['equivalent']:10d} {100 * det / max(denom, 1):5.1f}%")
    if unchecked:
        lines += ["", f"THE RUN WAS INTERRUPTED: {unchecked} mutants were not checked; per module: "
                      + ", ".join(f"{mod} {c['not checked']}" for mod, c in sorted(per_module.items()) if c["not checked"])
                      + ". The score below is over the checked mutants only."]
    lines += ["", f"raw: {detected} of {total} mutants detected ({100 * detected / max(total, 1):.1f}%); "
                  f"{n_equiv} reviewed as equivalent (benchmarks/results/mutation/equivalents.md)", ""]
    unexplained = [s for s in survivors if s[1] not in reviewed and s[1] not in explained]
    lines.append(f"Surviving mutants ({len(survivors)}: {n_equiv} equivalent, "
                 f"{sum(s[1] in explained for s in survivors)} not equivalent but not killed by a fast test (reason "
                 f"given; they count against the score), {len(unexplained)} not reviewed):")
    for module, name, status in survivors:
        if name in reviewed:
            why = f"equivalent: {reviewed[name]}"
        elif name in explained:
            why = f"NOT KILLED: {explained[name]}"
        else:
            why = "NOT REVIEWED: a test must kill it, or it must be reviewed in equivalents.md"
        shown = "" if args.no_diff else f"\n      mutated: {diff_line(name, args.mutants, module)}"
        lines.append(f"  {name} [{status}]{shown}\n      {why}")
    lines += ["", f"mutation score: {100 * detected / max(n, 1):.1f}% (killed {detected} of {n})"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:len(per_module) + 8]))
    print(lines[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
