"""Peak memory (and wall time) of ``refuel bench --preset quick``.

    python benchmarks/bench_memory.py                      # pi_0 from the cache if it is there
    python benchmarks/bench_memory.py --fresh-cache        # build pi_0 too (the first run a user makes)
    python benchmarks/bench_memory.py -- --agents refuel,ppo   # extra arguments for refuel bench

Runs the benchmark in a child process and reads its peak resident set size with
``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``. Targets: peak RSS < 4 GiB; and, for the quick
preset, wall time <= 10 min including building pi_0 the first time.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEMORY_TARGET_GIB = 4.0
TIME_TARGET_S = 600.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--out", help="benchmark output directory (default: a temporary one)")
    ap.add_argument("--fresh-cache", action="store_true", help="build pi_0 in an empty cache (as on a first run)")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="arguments after -- go to refuel bench")
    args = ap.parse_args()
    extra = [a for a in args.extra if a != "--"]

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or str(Path(tmp) / "bench")
        env = dict(os.environ)
        if args.fresh_cache:
            env["REFUEL_ENV_CACHE"] = str(Path(tmp) / "cache")
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        cmd = [sys.executable, "-m", "agents.harness.cli", "bench", "--preset", args.preset, "--out", out, "--no-progress", *extra]
        print("running:", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, env=env, cwd=str(ROOT))
        wall = time.perf_counter() - t0
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux
    print(f"\nexit status {rc}")
    mem_ok = peak_gib < MEMORY_TARGET_GIB
    print(f"peak RSS {peak_gib:.2f} GiB: {peak_gib / MEMORY_TARGET_GIB:.0%} of the {MEMORY_TARGET_GIB:.0f} GiB target "
          + ("(met)" if mem_ok else f"(MISSED by {peak_gib - MEMORY_TARGET_GIB:.2f} GiB)"))
    if args.preset == "quick":
        time_ok = wall <= TIME_TARGET_S
        print(f"wall time {wall:.0f} s{' with a fresh pi_0 build' if args.fresh_cache else ''}: "
              f"{wall / TIME_TARGET_S:.0%} of the {TIME_TARGET_S:.0f} s target "
              + ("(met)" if time_ok else f"(MISSED by {wall - TIME_TARGET_S:.0f} s)"))
    sys.exit(rc)


if __name__ == "__main__":
    main()
