"""Does a few iterations of each agent raise the judge score above pi_0's? (the learning test, over seeds)

The setting of ``tests/test_learning.py``: the guess-item task with 4 animals and H_max = 3, the tiny pi_0
recipe of ``tests/conftest.py`` (built in seconds), 10 iterations of 64 pairs (PPO: 128 dialogues), the
per-agent options of the test, and the mean final-turn judge score on 512 held-out dialogues. Prints, per
agent and training seed, the score, the gain over pi_0 and the seconds per iteration, and a control:
REFUEL with its target negated (eta = -1).

    python benchmarks/learning_gain.py --seeds 0,1,2,3
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import gymnasium as gym  # noqa: E402

import refuel_env  # noqa: E402,F401
from agents.base import make_agent  # noqa: E402
from agents.harness.evaluate import rollout  # noqa: E402
from agents.engine.policy import Policy  # noqa: E402
from agents.engine.reference import ReferenceConfig, reference_policy  # noqa: E402
from conftest import TINY_REFERENCE  # noqa: E402
from test_learning import LEARNING, SMALL_TASK  # noqa: E402

CONTROL = {"refuel, eta=-1 (control)": ("refuel", {"lr": 1e-3, "eta": -1.0})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2,3")
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--eval-dialogues", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    seeds = [int(s) for s in a.seeds.split(",")]
    H = SMALL_TASK["max_turns"]
    env = gym.make_vec("RefuelDialogue-v0", num_envs=1, max_turns=H, task_kwargs={"n_items": SMALL_TASK["n_items"]})
    with tempfile.TemporaryDirectory() as cache:
        pi0 = reference_policy(ReferenceConfig(**{**TINY_REFERENCE, **SMALL_TASK}), cache=cache, log=lambda *x: None)

    def score(policy) -> float:
        r = rollout(policy, env, a.eval_dialogues, seed=999, horizon=H)
        return float(np.mean([s.scores[-1] for s in r.finals]))

    def fresh() -> Policy:
        return Policy(copy.deepcopy(pi0.model), pi0.tokenizer, name="pi")

    s0 = score(pi0)
    print(f"pi_0: {s0:.3f} (mean final-turn judge score, {a.eval_dialogues} held-out dialogues)\n")
    print("| agent | seed | score | gain over pi_0 | s / iteration |\n|---|---|---|---|---|")
    summary = []
    for row, (name, options) in {**LEARNING, **CONTROL}.items():
        gains, secs = [], []
        for seed in seeds:
            agent = make_agent(name, policy=fresh(), ref_policy=fresh(), seed=seed,
                               batch_size=128 if name == "ppo" else 64, epochs=2, minibatch_size=16, **options)
            t0 = time.perf_counter()
            for _ in range(a.iterations):
                agent.update(agent.collect(env))
            secs.append((time.perf_counter() - t0) / a.iterations)
            s = score(agent.policy)
            gains.append(s - s0)
            print(f"| {row} | {seed} | {s:.3f} | {s - s0:+.3f} | {secs[-1]:.2f} |", flush=True)
        summary.append(f"| {row} | {np.mean(gains):+.3f} | {np.min(gains):+.3f} | {np.max(gains):+.3f} | "
                       f"{np.mean(secs):.2f} |")
    print(f"\nOver seeds {a.seeds}:\n\n| agent | mean gain | min | max | s / iteration |\n|---|---|---|---|---|")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
