"""agents.harness.process_memory: glibc's mmap threshold is fixed, unless the user chose one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CODE = "from agents.harness.process_memory import return_freed_memory as r; print(r())"


def run(**env):
    full = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "REFUEL_KEEP_MALLOC")}
    return subprocess.run([sys.executable, "-c", CODE], env={**full, **env}, capture_output=True, text=True,
                          check=True).stdout.strip()


def glibc() -> bool:
    try:
        return sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):
        return False


@pytest.mark.skipif(not glibc(), reason="glibc on Linux only")
def test_the_threshold_is_set_unless_the_user_set_one_or_opted_out():
    assert run() == "True"
    assert run(MALLOC_MMAP_THRESHOLD_="65536") == "False"
    assert run(REFUEL_KEEP_MALLOC="1") == "False"
