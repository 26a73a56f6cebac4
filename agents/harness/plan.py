"""The plan of ``--dry-run``: what a run would do, per row and iteration, and what it needs.

    print(plan_text(cfg))                      # the plan and the hardware estimate (run validate.check first)

The plan: iterations, pairs and dialogues per iteration, the batched generation, user and judge calls of one
iteration with their expected rows per call (every message assumed to run to its token limit where lengths
matter), gradient steps, evaluation work, and the largest token counts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

from .hardware import hardware_text, local_config, token_budget
from .validate import agent_class


def horizon_probs(hmax: int, mode: Any) -> list[float]:
    """P(H = k), k = 1..hmax, of the env's horizon sampling."""
    if mode == "uniform":
        return [1.0 / hmax] * hmax
    k0 = hmax if mode == "fixed" else int(mode)
    return [1.0 if k == k0 else 0.0 for k in range(1, hmax + 1)]


def pair_profile(n: int, hmax: int, target: str, continuations: int = 1) -> list[tuple[str, float, float]]:
    """Expected rows of each batched step of ``RolloutEngine.pairs``: (phase, speaker rows (= judge rows), user rows),
    from the law of the engine's own draw of H and h; no early endings."""
    from ..engine.rollout import pair_turn_probabilities

    dist = pair_turn_probabilities(hmax, target)
    steps = []
    for k in range(1, hmax):
        rows = n * sum(p for H, h, p in dist if h - 1 >= k)
        if rows > 0:
            steps.append((f"roll-in turn {k}", rows, rows))
    steps.append(("branch: 2 responses at turn h", 2 * n, 2 * n * sum(p for H, h, p in dist if H > h)))
    if target != "last_turn":
        w = 2 * n * continuations
        for k in range(1, hmax):
            rows = w * sum(p for H, h, p in dist if H - h >= k)
            if rows > 0:
                steps.append((f"continuation turn h+{k}", rows, w * sum(p for H, h, p in dist if H - h > k)))
    return steps


def dialogue_profile(n: int, hmax: int, mode: Any) -> list[tuple[str, float, float]]:
    ph = horizon_probs(hmax, mode)
    return [(f"turn {k}", n * sum(ph[k - 1:]), n * sum(ph[k:])) for k in range(1, hmax + 1) if sum(ph[k - 1:]) > 0]


def _fmt_n(x: float) -> str:
    return f"{x:,.0f}" if x >= 10 else f"{x:.1f}".rstrip("0").rstrip(".")


def row_plan(cfg: Any, spec: Any) -> list[str]:
    """The work of one training iteration of a row, and of its evaluations."""
    from ..algorithms.pairs import PairAgent
    from .build import agent_kwargs

    cls = agent_class(spec.agent)
    kw = agent_kwargs(cfg, spec, cfg.seeds[0])
    hmax = int(cfg.env.max_turns)
    n = int(kw.get("batch_size", cfg.pairs_per_iteration))
    mb, epochs = int(kw.get("minibatch_size", 32)), int(kw.get("epochs", 1))
    lines = [(f"row {spec.label!r} (agent {spec.agent}{', ' + json.dumps(spec.options) if spec.options else ''}), "
              f"seeds {cfg.seeds}, {cfg.iterations} iteration(s)")]
    if issubclass(cls, PairAgent):
        conf = cls.Config(**{k: v for k, v in kw.items() if k in {f.name for f in dataclasses.fields(cls.Config)}})
        target, k = conf.target, int(getattr(conf, "continuations", 1))
        rollin, responder = conf.rollin, conf.responder
        steps = pair_profile(n, hmax, target, k)
        speakers = {"roll-in": {"current": "policy", "reference": "pi_0", "offline": "scripted", "none": "-"}[rollin],
                    "branch": "policy" if responder == "current" else "pi_0",
                    "continuation": "policy" if responder == "current" else "pi_0"}
        how = {"last_turn": "h = H (last-turn target)",
               "multi_turn": "h = 1, both branches continued to H (multi-turn target: whole dialogues)",
               "relative_future": "h ~ U{1..H}, both branches continued to H"
                                  + (f", {k} times each (Q-hat: their mean)" if k > 1 else "")}[target]
        extra = f" + {2 * n * (k - 1):,} continuation copies" if k > 1 else ""
        lines.append(f"  per iteration: {n:,} pairs = {2 * n:,} dialogues ({n:,} started, rolled in to turn h and branched, "
                     f"+ {n:,} second branches{extra}); H ~ U{{1..{hmax}}}, {how}")
        seqs, steps_per_epoch = 2 * n, math.ceil(n / mb)
        micro = min(int(kw.get("micro_batch_size") or mb), mb)
        accumulation = f", {math.ceil(mb / micro)} accumulated micro-batches of {micro}" if micro < mb else ""
        lines.append(f"  update: {epochs} epoch(s) x {steps_per_epoch:,} gradient step(s) of {mb} pairs{accumulation} "
                     f"({2 * micro} sequences per forward/backward pass); log-probs of all {seqs:,} responses under "
                     "the data's policy first (no gradient)")
    else:
        steps = dialogue_profile(n, hmax, cfg.env.horizon)
        speakers = {"turn": "policy"}
        custom = "" if cls.__module__.startswith("agents.") else " (a custom agent: assumed to roll out whole dialogues)"
        lines.append(f"  per iteration: {n:,} whole dialogues, horizons {cfg.env.horizon} in 1..{hmax}{custom}")
        lines.append(f"  update: {epochs} epoch(s) over the dialogues' assistant tokens, minibatches of {mb}")
    lines.append("  batched calls of one iteration (expected rows per call; the policy's generate call is split into "
                 f"chunks of {cfg.policy.generation_batch_size or 'all'} rows):")
    lines.append(f"    {'step':<32} {'speaker':<9} {'generate rows':>14} {'user rows':>11} {'judge rows':>11}")
    gen_rows = user_rows = judge_rows = 0.0
    for phase, rows, urows in steps:
        who = speakers[phase.split()[0].rstrip(":")]
        lines.append(f"    {phase:<32} {who:<9} {_fmt_n(rows):>14} {_fmt_n(urows):>11} {_fmt_n(rows):>11}")
        gen_rows += rows if who == "policy" else 0
        user_rows += urows
        judge_rows += rows
    t = token_budget(cfg)
    lines.append(f"  per iteration: {len(steps)} generate calls, {sum(1 for s in steps if s[2] > 0)} user calls, "
                 f"{len(steps)} judge calls; ~{_fmt_n(gen_rows)} policy responses (at most "
                 f"{_fmt_n(gen_rows * t['response'])} tokens at {t['response']} max new tokens each), ~{_fmt_n(user_rows)} "
                 f"user replies (at most {t['user']} tokens each), ~{_fmt_n(judge_rows)} dialogues scored by the judge")
    e = cfg.eval
    curve = (cfg.iterations // e.curve_every) if e.curve_every else 0
    lines.append(f"  evaluation: final {e.n_dialogues} held-out dialogues to H_max = {hmax} "
                 f"({hmax} generate calls of {e.n_dialogues} rows; pi_0's side once more, then cached)"
                 + (f"; learning curve: {curve} x {e.curve_n_dialogues} dialogues" if curve and e.curve_n_dialogues else ""))
    return lines


def describe(cfg: Any) -> list[str]:
    env, tk, pol = cfg.env, cfg.env.task_kwargs, cfg.policy
    lines = [f"task {env.task} {json.dumps({k: v for k, v in tk.items() if k not in ('backend_kwargs',)}, default=str)}",
             (f"  H_max {env.max_turns}, training horizons {env.horizon}; user {env.user} "
              f"{json.dumps(env.user_kwargs)}, judge {env.judge} {json.dumps(env.judge_kwargs)}")]
    bk = tk.get("backend_kwargs") or {}
    if tk.get("backend") == "openai":
        key = bk.get("api_key_env", "OPENAI_API_KEY")
        lines.append(f"  user model served at {bk.get('base_url', 'http://127.0.0.1:8000/v1')} (OpenAI-compatible); API key "
                     f"from ${key}: {'set' if key and os.environ.get(key) else 'not set'}")
    lora = "full fine-tuning" if pol.lora in (None, False) else f"LoRA {json.dumps(pol.lora if isinstance(pol.lora, dict) else {})}"
    lines.append(f"policy {pol.model or 'built-in pi_0'}: dtype {pol.dtype or 'as stored'}, device {pol.device or 'cpu'}, "
                 f"{lora}, gradient checkpointing {'on' if pol.gradient_checkpointing else 'off'}")
    if pol.model and pol.model.count("/") == 1 and not Path(pol.model).exists():
        d, _ = local_config(pol.model)
        lines.append(f"  {pol.model} is a hub id: {'in the local Hugging Face cache' if d else 'not cached: downloaded at the first real run'}"
                     + (" (gated: accept the licence on the hub and set HF_TOKEN)" if pol.model.startswith("meta-llama/") and not d else ""))
    lines.append(f"agent options {json.dumps(cfg.agent_options)}")
    return lines


def plan_text(cfg: Any, command: str = "train", gpu_gib: float = 80.0) -> str:
    """The dry run's report (call :func:`check` first)."""
    lines = [(f"refuel {command} --dry-run: the configuration is valid (preset {cfg.preset or 'none'}); nothing "
              "was loaded or downloaded"), ""]
    lines += describe(cfg) + [""]
    lines.append("Plan:")
    for spec in cfg.agents:
        if spec.agent in ("pi_0", "expert"):
            lines.append(f"row {spec.label!r}: {'the untrained reference' if spec.agent == 'pi_0' else 'the task expert'}, "
                         "evaluated only")
            continue
        lines += row_plan(cfg, spec)
    lines.append("")
    lines += hardware_text(cfg, gpu_gib)
    return "\n".join(lines)
