"""The training loop every agent shares: collect, update, log, evaluate, checkpoint, resume.

    result = train(agent, env, iterations=10, eval_every=2, out="runs/refuel")

Writes, under ``out``:

- ``metrics.jsonl``: one JSON line per iteration (and one for iteration 0 when evaluating): the
  agent's update metrics, the batch's budget and drop counts, the *cumulated* budget (``iterations``,
  ``dialogues``, ``tokens_generated``, ``examples``), wall times, counts of skipped non-finite losses
  and empty batches, and evaluation scalars (``eval/...``) when evaluated;
- ``tb/``: the same scalars for TensorBoard (``tensorboard --logdir out``), plus the evaluation score
  against the dialogues sampled so far (``eval_by_dialogues/...``);
- ``checkpoints/latest`` (every ``checkpoint_every`` iterations), ``checkpoints/previous`` (the one before)
  and ``checkpoints/final``: checkpoints by ``agent.save`` (a Hugging Face model directory that
  ``from_pretrained`` loads, plus optimiser and random state) and ``trainer_state.json`` (the cumulated
  budget and a manifest of the files), written atomically (see :mod:`agents.harness.checkpoints`).

Resuming (``resume=True``, the default) loads ``checkpoints/latest`` (or, when a file of it is damaged,
``checkpoints/previous``: reported by file name, and counted in ``metrics.jsonl`` as
``resume/damaged_checkpoints``) and goes on to ``iterations``
(a total, not a count of more iterations); metrics lines of iterations after the checkpoint (from a
run killed between logging and checkpointing) are dropped, so that the log matches the run. A run
killed and resumed reaches the same parameters as an uninterrupted run with the same seed: all the
randomness of collection and updates lives in the agent's checkpointed state, and evaluation draws
from its own generators.

Under a multi-process launch (``accelerate launch``; see :mod:`agents.distributed`) every process runs
``train`` and collects and updates its share; the main process alone evaluates, writes ``out`` and shows
progress (``out`` must be on a file system every process sees, for resuming).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..engine import progress as progress_bars
from .checkpoints import latest_checkpoint, quiet_hf, resume as resume_checkpoint, save_checkpoint, set_aside

__all__ = ["TrainResult", "train", "read_metrics", "latest_checkpoint", "save_checkpoint", "quiet_hf",
           "default_eval_fn"]
logger = logging.getLogger(__name__)

BUDGET_KEYS = ("dialogues", "tokens_generated", "examples")
DROP_KEYS = ("ended_before_branch", "identical_responses", "nonfinite_returns", "unusable_pairs", "template_errors")


@dataclass
class TrainResult:
    history: list = field(default_factory=list)
    """Every metrics record, in order (those of earlier, resumed runs included)."""
    budget: dict = field(default_factory=dict)
    """Cumulated iterations, dialogues, tokens_generated, examples and wall seconds."""
    checkpoint: str | None = None
    """The final checkpoint's directory."""
    resumed_from: int = 0
    """The iteration the run resumed from (0: a fresh run)."""
    iterations_run: int = 0
    """Iterations this call ran."""
    damaged_checkpoints: list = field(default_factory=list)
    """Checkpoints this call found damaged and passed over when resuming ("path: problem")."""


def _finite_scalars(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, bool):
            v = int(v)
        if isinstance(v, (int, float)):
            out[k] = float(v)
    return out


def _json_safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def read_metrics(out: str | Path) -> list[dict]:
    path = Path(out) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill
            break
    return rows


def _write_metrics(out: Path, rows: list[dict]) -> None:
    tmp = out / "metrics.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, out / "metrics.jsonl")


def default_eval_fn(env: Any, n_dialogues: int = 32, seed: int = 1234) -> Callable:
    """Per-turn win rate against the agent's frozen reference and mean judge score on held-out dialogues."""
    from .evaluate import Evaluator

    cache: dict = {}

    def fn(agent):
        ev = cache.get(id(agent.ref_policy))
        if ev is None:
            ev = cache[id(agent.ref_policy)] = Evaluator(env, agent.ref_policy, n_dialogues, seed, agent.sampling,
                                                         examples=0)
        return ev(agent.policy, agent.sampling)

    return fn


def train(agent: Any, env: Any, iterations: int, eval_every: int = 0, out: str | Path | None = None,
          eval_fn: Callable | None = None, checkpoint_every: int = 1, resume: bool = True, progress: bool | None = None,
          tensorboard: bool = True, desc: str | None = None, log: Callable = logger.info) -> TrainResult:
    """Train ``agent`` on ``env`` up to ``iterations`` iterations (a total: a resumed run goes on from its checkpoint).

    Args:
        agent: anything with ``collect(env)``, ``update(batch)``, ``save``/``load`` and ``iteration`` (the count
            of completed iterations, which this loop advances after each update).
        env: the environment the agent collects from.
        iterations: total collect-and-update iterations.
        eval_every: evaluate every this many iterations (and before the first, and after the last); 0: never.
        out: run directory (metrics, TensorBoard, checkpoints); None: nothing written, no resume.
        eval_fn: ``eval_fn(agent)`` -> dict of floats or an :class:`~agents.evaluate.EvalResult`; default:
            win rate against ``agent.ref_policy`` and judge score on 32 held-out dialogues.
        checkpoint_every: save ``checkpoints/latest`` every this many iterations (0: only the final one).
        resume: continue from ``out/checkpoints/latest`` when it exists; False starts over (and clears ``out``'s
            metrics, TensorBoard logs and checkpoints).
        progress: show a tqdm progress bar (None: unless progress bars are off process-wide).
        log: where messages go (default: this module's logger, at INFO).
    """
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    from ..engine.distributed import current

    dist = getattr(agent, "dist", None) or current()
    main = dist.is_main
    if not main:  # the other processes train silently; the main one logs, evaluates and writes
        progress, tensorboard, log = False, False, (lambda *a, **k: None)
    out = Path(out) if out is not None else None
    budget = {"iterations": 0, **{k: 0 for k in BUDGET_KEYS}, "wall_seconds": 0.0, "collect_seconds": 0.0,
              "update_seconds": 0.0, "eval_seconds": 0.0}
    history: list[dict] = []
    resumed_from = fallbacks = 0
    damaged: list = []
    if out is not None:
        if main:
            out.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        ckpt, saved, damaged = resume_checkpoint(agent, out) if resume else (None, None, [])
        dist.barrier()  # every process has loaded before the main one moves damaged checkpoints aside
        if main and damaged:
            set_aside(damaged, log_fn=logger.warning)
        fallbacks = int((saved or {}).get("damaged_checkpoints", 0)) + len(damaged)
        if ckpt is not None:
            budget.update(saved["budget"])
            resumed_from = int(agent.iteration)
            history = [r for r in read_metrics(out) if r.get("iteration", 0) <= resumed_from]
            if main:
                _write_metrics(out, history)
            passed = f" (passed over {len(damaged)} damaged checkpoint(s): {ckpt.name} is the newest usable one)" \
                if damaged else ""
            log(f"[train] resumed {getattr(agent, 'name', type(agent).__name__)} from {ckpt} at iteration "
                f"{resumed_from}{passed}")
        elif main:  # a fresh start: stale logs of an earlier run (or of one killed before its first checkpoint) go
            for p in ("metrics.jsonl", "tb", "checkpoints"):
                q = out / p
                if q.is_dir():
                    shutil.rmtree(q)
                elif q.exists():
                    q.unlink()
        dist.barrier()  # every process has read the checkpoint before the main one writes the next
    write = out if main else None  # where the records and checkpoints go
    if not main:
        eval_every = 0
    if eval_every and eval_fn is None:
        eval_fn = default_eval_fn(env)

    writer = None
    if out is not None and tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out / "tb"), purge_step=resumed_from + 1 if resumed_from else None)
        except ImportError as e:  # pragma: no cover - tensorboard is a declared dependency
            log(f"[train] TensorBoard logging off ({e}); metrics.jsonl is still written")

    def emit(record: dict) -> None:
        history.append(record)
        if write is not None:
            with open(write / "metrics.jsonl", "a") as f:
                f.write(json.dumps({k: _json_safe(v) for k, v in record.items()}) + "\n")
        if writer is not None:
            step = int(record["iteration"])
            for k, v in _finite_scalars(record).items():
                if k == "iteration" or not math.isfinite(v):
                    continue
                tag = k if "/" in k else (f"budget/{k}" if k in budget else f"train/{k}")
                writer.add_scalar(tag, v, step)
                if k.startswith("eval/"):
                    writer.add_scalar("eval_by_dialogues/" + k[5:], v, int(record.get("dialogues", 0)))
            writer.flush()

    def evaluate(record: dict) -> dict:
        t0 = time.perf_counter()
        rng = getattr(agent, "rng", None)
        saved = rng.bit_generator.state if dist.enabled and rng is not None else None
        res = eval_fn(agent)
        if saved is not None:  # the other processes do not evaluate: an eval_fn drawing from agent.rng must not
            rng.bit_generator.state = saved  # put this process's collection out of step with theirs
        dt = time.perf_counter() - t0
        budget["eval_seconds"] += dt
        scal = res.summary() if hasattr(res, "summary") else dict(res)
        record.update(scal)
        record["eval_seconds"] = dt
        return scal

    def state() -> dict:
        return {"budget": dict(budget), "iteration": int(agent.iteration), "damaged_checkpoints": fallbacks}

    def save_latest() -> None:  # the one it replaces is kept as checkpoints/previous
        save_checkpoint(agent, out / "checkpoints" / "latest", state(), previous=out / "checkpoints" / "previous")

    if eval_every and agent.iteration == 0 and not any(r.get("iteration") == 0 for r in history):
        rec = {"iteration": 0, **{k: budget[k] for k in ("dialogues", "tokens_generated", "examples")},
               "wall_seconds": budget["wall_seconds"]}
        evaluate(rec)
        emit(rec)

    bar = progress_bars.bar(progress, total=iterations, initial=min(agent.iteration, iterations),
                            desc=desc or getattr(agent, "name", "train"), leave=True)
    ran = 0
    try:
        while agent.iteration < iterations:
            it = agent.iteration + 1
            t0 = time.perf_counter()
            batch = agent.collect(env)
            t1 = time.perf_counter()
            metrics = agent.update(batch)
            t2 = time.perf_counter()
            agent.iteration = it  # the loop owns the count (an agent that skipped an empty batch used the iteration)
            stats = dict(getattr(batch, "stats", {}) or {})
            budget["iterations"] = it
            for k in BUDGET_KEYS:
                budget[k] += int(stats.get(k, 0) or 0)
            budget["collect_seconds"] += t1 - t0
            budget["update_seconds"] += t2 - t1
            reserved = {"iteration", "wall_seconds", "collect_seconds", "update_seconds", "eval_seconds", *BUDGET_KEYS}
            rec = {"iteration": it, **{k: budget[k] for k in BUDGET_KEYS},
                   **{f"batch/{k}": v for k, v in _finite_scalars(stats).items()},
                   **{(f"update/{k}" if k in reserved else k): v for k, v in _finite_scalars(metrics).items()},
                   **{f"skipped/{k}": v for k, v in dict(getattr(agent, "skipped", {}) or {}).items()},
                   **({"resume/damaged_checkpoints": fallbacks} if fallbacks else {}),
                   "collect_seconds": t1 - t0, "update_seconds": t2 - t1}
            if eval_every and (it % eval_every == 0 or it == iterations):
                evaluate(rec)
            budget["wall_seconds"] += time.perf_counter() - t0
            rec["wall_seconds"] = budget["wall_seconds"]
            emit(rec)
            if write is not None and checkpoint_every and (it % checkpoint_every == 0 or it == iterations):
                save_latest()
            ran += 1
            bar.update(1)
            post = {"loss": rec.get("loss"), "return": stats.get("mean_return")}
            if "eval/win_rate" in rec:
                post["win"] = rec["eval/win_rate"]
            bar.set_postfix({k: f"{v:.3g}" for k, v in post.items() if isinstance(v, (int, float)) and math.isfinite(v)})
    finally:
        bar.close()
        if writer is not None:
            writer.close()

    final = None
    if out is not None:
        final = out / "checkpoints" / "final"
        if main and (ran or not (final / "trainer_state.json").exists()):
            save_checkpoint(agent, final, state())
            if not checkpoint_every:
                save_latest()
        dist.barrier()  # the final checkpoint exists for every process when train returns
    return TrainResult(history=history, budget=dict(budget), checkpoint=str(final) if final else None,
                       resumed_from=resumed_from, iterations_run=ran,
                       damaged_checkpoints=[f"{p}: {m}" for p, m in damaged])
