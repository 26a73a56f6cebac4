"""The built-in pi_0 checkpoints that ship with the package, each with a manifest.

Building pi_0 takes minutes of CPU (thousands of supervised steps); the pi_0 of the presets' configurations is
therefore built once, by ``refuel pi0 build``, and shipped as package data under ``agents/engine/pi0/pi0-<key>/``
(safetensors weights, config, tokenizer, and ``manifest.json``). :func:`agents.engine.reference.reference_policy`
loads a shipped one in a second when its recipe's key matches; other configurations are built on first use and
cached, as before.

The manifest records the recipe (every field of ``ReferenceConfig``), its key (a hash of the recipe and the
recipe version), a hash of the builder's source, the task configuration, the versions of torch and transformers it
was built with, the build time, and pi_0's measured scores (:func:`measure`). A rebuild from the recipe on another
machine gives equal scores within float-rounding effects (``tests/test_shipped_pi0.py`` rebuilds the small one and
compares it with its manifest within :data:`SCORE_TOLERANCE`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

logger = logging.getLogger(__name__)

SHIPPED = Path(__file__).parent / "pi0"
"""Where shipped checkpoints live (package data)."""
SCORE_TOLERANCE = 0.05
"""Largest difference of a rebuilt pi_0's mean final-turn score from its manifest's (same held-out dialogues)."""
EVAL = {"n_dialogues": 512, "seed": 1234, "temperature": 1.0, "max_new_tokens": 24}
"""How :func:`measure` evaluates pi_0: held-out dialogues at H = H_max, sampled."""


def shipped_path(cfg, root: Path = SHIPPED) -> Path | None:
    """The shipped checkpoint of recipe ``cfg``, if there is one."""
    path = Path(root) / f"pi0-{cfg.key()}"
    return path if (path / "manifest.json").is_file() and (path / "config.json").is_file() else None


def builder_hash() -> str:
    """A hash of the source that builds pi_0 (a shipped checkpoint from other code is flagged, not refused)."""
    src = (Path(__file__).parent / "reference.py").read_bytes()
    return hashlib.sha256(src).hexdigest()[:16]


def measure(policy, cfg, n_dialogues: int = EVAL["n_dialogues"], seed: int = EVAL["seed"]) -> dict:
    """pi_0's mean judge score per turn on held-out dialogues of its task at H = H_max (sampled at temperature 1)."""
    import gymnasium as gym
    import numpy as np

    import refuel_env  # noqa: F401
    from refuel_env.types import SamplingParams

    from .rollout import RolloutEngine

    env = gym.make_vec("RefuelDialogue-v0", num_envs=1, max_turns=cfg.max_turns,
                       task_kwargs={"n_items": cfg.n_items, "noise": cfg.noise, "tell_horizon": cfg.tell_horizon})
    params = SamplingParams(max_new_tokens=EVAL["max_new_tokens"], temperature=EVAL["temperature"])
    H = cfg.max_turns
    states = RolloutEngine(env).dialogues(n_dialogues, policy, np.random.default_rng([seed, 0]), params, split="eval",
                                          horizons=[H] * n_dialogues, sampling_rng=np.random.default_rng([seed, 1]))
    scores = np.array([[s.scores[min(h, len(s.scores)) - 1] for h in range(1, H + 1)] for s in states])
    return {"per_turn": [round(float(x), 4) for x in scores.mean(0)], "final": round(float(scores[:, -1].mean()), 4),
            **{k: v for k, v in EVAL.items()}}


def manifest(cfg, policy, build_seconds: float) -> dict:
    import torch
    import transformers

    from .reference import RECIPE_VERSION

    return {"key": cfg.key(), "recipe": asdict(cfg), "recipe_version": RECIPE_VERSION, "builder_sha256": builder_hash(),
            "task": {"task": "guess-item-v0", "n_items": cfg.n_items, "max_turns": cfg.max_turns, "noise": cfg.noise,
                     "tell_horizon": cfg.tell_horizon, "demo_epsilon": cfg.epsilon, "demo_final_error": cfg.final_error},
            "torch": torch.__version__, "transformers": transformers.__version__,
            "build_seconds": round(build_seconds, 1), "scores": measure(policy, cfg),
            "created": time.strftime("%Y-%m-%d %H:%M:%S")}


def build_reference_and_measure(cfg, log=logger.info):
    """Build pi_0 of recipe ``cfg`` from scratch; return its manifest, with the policy under ``"policy"``."""
    from .reference import build_reference

    t0 = time.perf_counter()
    policy = build_reference(cfg, log=log)
    return {**manifest(cfg, policy, time.perf_counter() - t0), "policy": policy}


def ship(cfg, root: Path = SHIPPED, log=logger.info) -> Path:
    """Build pi_0 of recipe ``cfg`` from scratch and write it, with its manifest, under ``root`` (replacing an
    earlier one of the same key)."""
    info = build_reference_and_measure(cfg, log)
    policy, seconds = info.pop("policy"), info["build_seconds"]
    path = Path(root) / f"pi0-{cfg.key()}"
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save(str(tmp))
    (tmp / "manifest.json").write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    log(f"[pi_0] shipped {path.name}: final-turn score {info['scores']['final']:.3f}, built in {seconds:.0f} s")
    return path


def read_manifest(path: Path) -> dict:
    return json.loads((Path(path) / "manifest.json").read_text())
