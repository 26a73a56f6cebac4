"""Plant each bug of benchmarks/results/mutation/planted/*.diff in a scratch copy of the project and run the test
that must catch it: the test must fail with the bug and pass without it (issue #13).

    python benchmarks/check_planted.py            # every planted bug
    python benchmarks/check_planted.py ppo_no_clipping
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLANTED = ROOT / "benchmarks" / "results" / "mutation" / "planted"
TESTS = {  # bug: the named test that catches it
    "ppo_no_clipping": "tests/test_losses.py::test_ppo_policy_loss_clips_the_ratio_by_hand",
    "ppo_no_kl_penalty": "tests/test_losses.py::test_ppo_collect_pays_the_kl_penalty_to_a_reference_that_differs",
    "refuel_continued_by_pi0": "tests/test_rows.py::test_each_row_rolls_in_responds_and_continues_with_its_own_speakers",
    "refuel_responder_pi0": "tests/test_rows.py::test_each_row_rolls_in_responds_and_continues_with_its_own_speakers",
    "evaluate_score_ties_zero": "tests/test_evaluate.py::test_ties_count_one_half_on_every_comparison_path",
}


def run(copy: Path, test: str) -> int:
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", test]
    out = subprocess.run(cmd, cwd=copy, capture_output=True, text=True)
    print("   ", (out.stdout.strip().splitlines() or ["(no output)"])[-1])
    return out.returncode


def main(names: list[str]) -> int:
    bad = 0
    for name in names or list(TESTS):
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "project"
            files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                                   text=True, check=True).stdout.split()
            for f in files:
                if (ROOT / f).is_file():
                    (copy / f).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / f, copy / f)
            subprocess.run(["git", "apply", str(PLANTED / f"{name}.diff")], cwd=copy, check=True)
            print(f"{name}: planted, running {TESTS[name]}")
            planted = run(copy, TESTS[name])
            subprocess.run(["git", "apply", "-R", str(PLANTED / f"{name}.diff")], cwd=copy, check=True)
            print(f"{name}: reverted")
            clean = run(copy, TESTS[name])
        ok = planted != 0 and clean == 0
        bad += not ok
        print(f"{name}: {'CAUGHT' if ok else 'NOT CAUGHT'} (exit {planted} planted, {clean} reverted)\n")
    return bad


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
