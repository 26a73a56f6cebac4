"""The planted bugs of issue #13 (benchmarks/results/mutation/planted/*.diff) still apply to the code, so that
``benchmarks/check_planted.py`` can replay them against the tests that catch them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DIFFS = sorted((ROOT / "benchmarks" / "results" / "mutation" / "planted").glob("*.diff"))


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.parametrize("diff", DIFFS, ids=[d.stem for d in DIFFS])
def test_each_planted_bug_applies_to_the_current_code(diff):
    out = subprocess.run(["git", "apply", "--check", str(diff)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, f"{diff.name} no longer applies: re-plant it on the current code ({out.stderr.strip()})"


def test_there_are_planted_bugs():
    assert len(DIFFS) >= 4
