"""Guarded runs and command-line input: the lock on --out, --out checked first, every value type-checked and every
key known, in every mode, before any work; the command's parser and `refuel list` stay light."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents.harness.cli import main
from agents.harness.guard import LOCK_NAME, LockedError, OutDirError, RunLock, check_out_dir

ROOT = Path(__file__).resolve().parents[1]
HOLD = ("import sys, time\nfrom agents.harness.guard import RunLock\n"
        "RunLock(sys.argv[1], 'refuel train --out X (test)').acquire()\nprint('held', flush=True)\ntime.sleep(120)\n")


def dead_pid() -> int:
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(p.stdout)


def test_a_second_lock_on_the_same_directory_is_refused_and_released_after(tmp_path):
    with RunLock(tmp_path, "first"):
        with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
            RunLock(tmp_path, "second").acquire()
    assert not (tmp_path / LOCK_NAME).exists()
    with RunLock(tmp_path, "third") as lock:  # free again
        assert lock.took_over is None


def test_a_stale_lock_of_a_dead_process_is_taken_over_and_says_so(tmp_path, caplog):
    pid = dead_pid()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "command": "refuel bench",
                                                  "started": time.time() - 60}))
    with caplog.at_level(logging.WARNING, logger="agents"):
        with RunLock(tmp_path, "mine") as lock:
            assert lock.took_over["pid"] == pid
            assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert f"pid {pid}" in caplog.text and "no longer running" in caplog.text and "taking it over" in caplog.text


def test_a_run_on_a_directory_another_process_holds_is_refused_naming_its_pid(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = sorted(p.name for p in out.iterdir())
        assert main(["train", "--out", str(out), "--iterations", "1", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and "in use by another run" in err and f"kill {holder.pid}" in err, err
        assert sorted(p.name for p in out.iterdir()) == before  # nothing written
    finally:
        holder.kill()
        holder.wait()
    with RunLock(out) as lock:  # the holder died without releasing: its lock is stale, and is taken over
        assert lock.took_over["pid"] == holder.pid


def test_check_out_dir(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutDirError, match="is a file"):
        check_out_dir(f)
    with pytest.raises(OutDirError, match="is a file, so"):
        check_out_dir(f / "sub" / "dir")
    assert check_out_dir(tmp_path / "new" / "dir") == tmp_path / "new" / "dir"
    assert not (tmp_path / "new").exists()  # checking creates nothing


@pytest.mark.parametrize("argv", [["train"], ["bench", "--preset", "quick"], ["eval", "--checkpoint", "CK"],
                                  ["train", "--dry-run"]])
def test_out_pointing_at_a_file_is_refused_first(argv, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    t0 = time.perf_counter()
    assert main([*argv, "--out", str(f)]) == 2
    assert f"--out {f} is a file" in capsys.readouterr().err
    assert time.perf_counter() - t0 < 5, "refused before any work"


def test_eval_refuses_a_missing_checkpoint_before_any_work(tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "ev")]) == 2
    assert "is not a directory" in capsys.readouterr().err and not (tmp_path / "ev").exists()


@pytest.mark.parametrize("setting, message", [
    ("iterations=abc", "iterations must be an integer, got 'abc'"),
    ("eval.n_dialogues=ten", "eval.n_dialogues must be an integer, got 'ten'"),
    ("eval.temperature=hot", "eval.temperature must be a number or null, got 'hot'"),
    ("seeds=a,b", "seeds must be a list of integers"),
    ("policy.gradient_checkpointing=maybe", "policy.gradient_checkpointing must be true or false, got 'maybe'"),
    ("env=3", "env must be a table"),
    ("agents=3", "agents must be a list of rows"),
    ("agent_options.lr=abc", "lr must be > 0"),
])
def test_values_are_type_checked_naming_the_key(setting, message, tmp_path, capsys):
    assert main(["bench", "--out", str(tmp_path / "run"), "--set", setting]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["train", "bench"])
def test_unknown_keys_are_refused_by_real_runs_too(command, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([command, "--out", str(out), "--set", "agent_options.lrr=1e-4"]) == 2
    assert "['lrr'] is an option of none of the agents" in capsys.readouterr().err
    assert not out.exists()  # refused before any work
    assert main([command, "--out", str(out), "--set", "evall.seed=1"]) == 2
    assert "unknown config key 'evall'" in capsys.readouterr().err


def test_quiet_and_verbose(tmp_path, capsys):
    from agents.harness.console import console

    log = logging.getLogger("agents.harness.test")
    for verbosity, shown in ((-1, {"warn"}), (0, {"info", "warn"}), (1, {"debug", "info", "warn"})):
        with console(verbosity):
            log.debug("debug")
            log.info("info")
            log.warning("warn")
        err = capsys.readouterr().err
        assert {w for w in ("debug", "info", "warn") if w in err} == shown
    assert main(["train", "-q", "--out", str(tmp_path), "--set", "iterations=abc"]) == 2  # errors show when quiet
    assert "iterations must be an integer" in capsys.readouterr().err


def test_help_and_list_do_not_import_torch_transformers_or_gymnasium():
    code = ("import sys, time\nt0 = time.perf_counter()\nfrom agents.harness.cli import main, parser\n"
            "parser().format_help()\nmain(['list'])\n"
            "heavy = [m for m in ('torch', 'transformers', 'gymnasium', 'trl', 'datasets') if m in sys.modules]\n"
            "assert not heavy, heavy\nprint(f'{time.perf_counter() - t0:.2f}', file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "registered agents: dpo, ppo, rebel, refuel" in r.stdout


def test_the_builtin_agents_list_is_the_registry():
    from agents.base import agent_registry
    from agents.harness.rows import BUILTIN_AGENTS

    reg = agent_registry()
    assert sorted(BUILTIN_AGENTS) == sorted(n for n in reg.names() if reg.get(n).__module__.startswith("agents."))
