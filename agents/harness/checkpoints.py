"""Trainer checkpoints: written atomically, the previous one kept, verified before they are trusted.

    save_checkpoint(agent, out / "checkpoints" / "latest", state, previous=out / "checkpoints" / "previous")
    path, state, damaged = resume(agent, out)          # the newest usable checkpoint, loaded into agent

A checkpoint is what ``agent.save`` writes (a Hugging Face model directory: ``config.json``, safetensors
weights and tokenizer at its root, so ``AutoModelForCausalLM.from_pretrained(path)`` loads it, plus
``agent_state.pt`` and ``agent_config.json``) and ``trainer_state.json``, written last: the trainer's state
and a manifest of every other file with its size and SHA-256. It is written into ``NAME.tmp`` and renamed
into place; the checkpoint it replaces becomes ``previous``. A checkpoint whose files do not match its
manifest (a truncated or damaged file, named in the message), or that does not load, is reported, moved
aside to ``damaged-NAME-TIME`` for inspection, and the previous one is used; the trainer counts these
fallbacks in its logs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)
STATE_FILE = "trainer_state.json"
CANDIDATES = ("latest", "previous", "latest.old")  # newest first; latest.old: the name of earlier versions


class CheckpointError(RuntimeError):
    """No checkpoint under a run directory can be resumed from; the message names each one's problem."""


@contextlib.contextmanager
def quiet_hf():
    """Hide the progress bars ``transformers`` shows when saving and loading (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
        os.fsync(f.fileno())  # on disk before the checkpoint is renamed into place
    return h.hexdigest()


def manifest(path: Path) -> dict:
    """Size and SHA-256 of every file under ``path`` but the trainer state."""
    return {str(f.relative_to(path)): {"size": f.stat().st_size, "sha256": _digest(f)}
            for f in sorted(path.rglob("*")) if f.is_file() and f.name != STATE_FILE}


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_checkpoint(agent: Any, path: Path, state: dict, previous: Path | None = None) -> None:
    """``agent.save`` into ``path`` atomically: written into ``path.tmp`` with a manifest, then renamed into
    place. The checkpoint it replaces becomes ``previous`` (None: it is deleted once the new one is in place)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with quiet_hf():
        agent.save(tmp)
    text = json.dumps({**state, "files": manifest(tmp)}, indent=2)
    with open(tmp / STATE_FILE, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    old = previous if previous is not None else path.with_name(path.name + ".old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    if previous is None:
        shutil.rmtree(old, ignore_errors=True)


def verify(path: Path) -> tuple[str | None, dict | None]:
    """(problem, trainer state) of a checkpoint: problem None when every file matches its manifest."""
    path = Path(path)
    sf = path / STATE_FILE
    if not sf.exists():
        return f"{STATE_FILE} is missing (the checkpoint was never finished)", None
    try:
        state = json.loads(sf.read_text())
        if not isinstance(state, dict) or "budget" not in state:
            raise ValueError("no budget in it")
    except (ValueError, UnicodeDecodeError) as e:
        return f"{STATE_FILE} is damaged ({type(e).__name__}: {e})", None
    for name, want in (state.get("files") or {}).items():
        f = path / name
        if not f.exists():
            return f"{name} is missing", state
        size = f.stat().st_size
        if size != want["size"]:
            return f"{name} is damaged: {size} bytes, {want['size']} expected (truncated?)", state
        if _digest(f) != want["sha256"]:
            return f"{name} is damaged: its SHA-256 does not match the one recorded when it was written", state
    return None, state


def latest_checkpoint(out: str | Path) -> Path | None:
    """The newest checkpoint under ``out/checkpoints`` whose files all match their manifest, if any."""
    ck = Path(out) / "checkpoints"
    for name in CANDIDATES:
        if (ck / name).exists() and verify(ck / name)[0] is None:
            return ck / name
    return None


def resume(agent: Any, out: str | Path) -> tuple[Path | None, dict | None, list[tuple[Path, str]]]:
    """Load the newest usable checkpoint under ``out/checkpoints`` into ``agent``.

    Returns (its path, its trainer state, [(path, problem)] of the newer checkpoints passed over); (None, None,
    []) when there is no checkpoint. Raises :class:`CheckpointError` when there are checkpoints but none is
    usable. Pass the ones passed over to :func:`set_aside`, so that the next save does not keep one of them
    as ``previous`` in place of the good one."""
    ck = Path(out) / "checkpoints"
    damaged: list[tuple[Path, str]] = []
    for name in CANDIDATES:
        p = ck / name
        if not p.exists():
            continue
        problem, state = verify(p)
        if problem is None:
            try:
                with quiet_hf():
                    agent.load(p)
            except Exception as e:  # noqa: BLE001 - any failure to load a checkpoint is reported
                if (state or {}).get("files") and isinstance(e, ValueError):
                    raise  # intact files of another agent or model: not damage, and an older one would not do
                problem = f"it does not load ({type(e).__name__}: {e})"
        if problem is None:
            return p, state, damaged
        damaged.append((p, problem))
    if damaged:
        raise CheckpointError(f"no usable checkpoint under {ck}: " + "; ".join(f"{p.name}: {m}" for p, m in damaged)
                              + ". To start over, run with --no-resume (resume=False): it clears the run's metrics "
                                "and checkpoints")
    return None, None, damaged


def set_aside(damaged: list[tuple[Path, str]], log_fn: Callable = log.warning) -> None:
    """Move checkpoints that :func:`resume` passed over to ``damaged-NAME-TIME`` (kept for inspection), saying so."""
    for p, problem in damaged:
        aside = p.with_name(f"damaged-{p.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(p, aside)
        log_fn(f"[train] checkpoint {p} is unusable: {problem}; moved to {aside.name} (delete it once inspected)")
