"""Share of rollout wall time spent inside the policy's own ``generate``.

    python benchmarks/rollout_share.py                   # the default pi_0, 64 pairs / 128 dialogues
    python benchmarks/rollout_share.py --reference tiny --n 128

The shared rollout engine times every speaker call (``RolloutEngine.stats["generate_seconds"]``). This
measures, for the engine calls every agent makes (REFUEL's pairs with continuation, REBEL/DPO's
last-turn pairs, PPO's whole dialogues, and evaluation dialogues with snapshots), the wall time of the
call and the share inside ``generate``; the rest is the environment (user simulator and judge,
``env_seconds``) and the engine's own bookkeeping (state copies, snapshots). Target: >= 90% of rollout
time inside generate.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see agents/cli.py: spinning OpenMP threads on a shared CPU

import numpy as np  # noqa: E402
import torch  # noqa: E402

TARGET = 0.90


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", choices=["tiny", "default"], default="default",
                    help="pi_0: the library default (cached; built on first use) or a tiny one")
    ap.add_argument("--n", type=int, default=64, help="pairs per pair workload; PPO and evaluation use 2n dialogues")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import gymnasium as gym

    import refuel_env  # noqa: F401
    from refuel_env import SamplingParams, machine_of
    from agents.engine.rollout import RolloutEngine
    from transformers.utils import logging as hf_logging

    from update_speed import load_reference

    hf_logging.disable_progress_bar()
    env = gym.make_vec("RefuelDialogue-v0", num_envs=1)
    pi0 = load_reference(args.reference)
    H = machine_of(env).max_turns
    params = SamplingParams(max_new_tokens=24, temperature=1.0)  # the agents' defaults
    workloads = {
        "refuel pairs (relative future)": lambda eng, rng: eng.pairs(args.n, rng, pi0, pi0, "relative_future", params),
        "rebel/dpo pairs (last turn)": lambda eng, rng: eng.pairs(args.n, rng, pi0, pi0, "last_turn", params),
        "ppo dialogues": lambda eng, rng: eng.dialogues(2 * args.n, pi0, rng, params),
        "evaluation dialogues (H_max, snapshots)": lambda eng, rng: eng.dialogues(2 * args.n, pi0, rng, params, split="eval",
                                                                                   horizons=[H] * (2 * args.n),
                                                                                   snapshots=True),
    }
    print(f"pi_0 '{args.reference}' ({sum(p.numel() for p in pi0.model.parameters()) / 1e6:.2f}M parameters), "
          f"torch threads {args.threads}\n")
    print(f"{'workload':<42} {'wall s':>7} {'generate':>9} {'env':>6} {'other':>6}  target >= {TARGET:.0%}")
    worst = 1.0
    for name, run in workloads.items():
        run(RolloutEngine(env), np.random.default_rng(1))  # warm-up
        eng = RolloutEngine(env)
        t0 = time.perf_counter()
        run(eng, np.random.default_rng(0))
        wall = time.perf_counter() - t0
        gen, envs = eng.stats["generate_seconds"] / wall, eng.stats["env_seconds"] / wall
        worst = min(worst, gen)
        verdict = "met" if gen >= TARGET else f"MISSED by {100 * (TARGET - gen):.1f} points"
        print(f"{name:<42} {wall:>7.2f} {gen:>9.1%} {envs:>6.1%} {1 - gen - envs:>6.1%}  {verdict}")
    print(f"\nlowest share inside generate: {worst:.1%} (target >= {TARGET:.0%})")


if __name__ == "__main__":
    main()
