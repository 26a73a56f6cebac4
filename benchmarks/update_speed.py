"""Seconds per update step of every agent and of TRL's ``DPOTrainer``, on the same model and the same pairs.

    python benchmarks/update_speed.py                    # the default pi_0, 256 pairs (about 55 without ties)
    python benchmarks/update_speed.py --reference tiny --pairs 64 --minibatch 16

One batch of pairs is collected once (pi_0's last-turn pairs; ties dropped so that DPO and TRL see the
same pairs) and given to every pair agent's ``update`` (REFUEL, REBEL, DPO: one epoch, minibatch M
pairs = 2M sequences per step). TRL's ``DPOTrainer`` (``loss_type="sigmoid"``, explicit ``ref_model``,
fp32, ``use_cpu=True``) trains on the same pairs in TRL's preference format with per-device batch M, in
three settings: TRL's defaults (gradient checkpointing on, reference forward at every step), gradient
checkpointing off, and off with ``precompute_ref_log_probs=True`` (what our agents do: reference/old
log-probabilities are computed once, at collection). PPO has no pairs: it updates on 2M whole dialogues
per step (the same number of sequences), from its own batch of pi_0's dialogues.

Times: each agent is warmed up with one update, then timed over ``--repeats`` updates (median of the
per-step times, an update's wall time over its optimiser steps). TRL: median over its steps after the
first, measured by a callback. Target: no agent's step slower than TRL's fastest setting (ratio <= 1).
"""

from __future__ import annotations

import argparse
import os
import copy
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see agents/cli.py: spinning OpenMP threads on a shared CPU

import torch  # noqa: E402


def load_reference(which: str):
    from agents.engine.reference import ReferenceConfig, reference_policy

    kw = {"default": {},
          "tiny": dict(hidden_size=32, num_layers=2, num_heads=2, n_dialogues=300, epochs=4, lr=1e-2, batch_size=16)}[which]
    return reference_policy(ReferenceConfig(**kw), log=lambda m: print(m, flush=True))


def fresh_policy(pi0, name):
    from agents.engine.policy import Policy

    m = copy.deepcopy(pi0.model)
    m.requires_grad_(True)
    return Policy(m, pi0.tokenizer, name)


def timed_updates(agent, batch, minibatch, repeats):
    agent.update(batch)  # warm-up
    steps = math.ceil(len(batch) / minibatch) * agent.config.epochs
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        agent.update(batch)
        times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times)


def time_pair_agents(names, pi0, batch, minibatch, lr, repeats):
    from agents.base import make_agent

    out = {}
    for name in names:
        agent = make_agent(name, policy=fresh_policy(pi0, name), ref_policy=pi0, epochs=1, minibatch_size=minibatch,
                           lr=lr, seed=0)
        out[name] = timed_updates(agent, batch, minibatch, repeats)
    return out


def time_ppo(pi0, env, n_dialogues, minibatch, lr, repeats):
    from agents.base import make_agent

    agent = make_agent("ppo", policy=fresh_policy(pi0, "ppo"), ref_policy=pi0, batch_size=n_dialogues, epochs=1,
                       minibatch_size=minibatch, lr=lr, seed=0)
    return timed_updates(agent, agent.collect(env), minibatch, repeats)


TRL_SETTINGS = {
    "TRL defaults (gradient checkpointing, ref forward each step)": {},
    "TRL, no gradient checkpointing": {"gradient_checkpointing": False},
    "TRL, no gradient checkpointing, precomputed ref log-probs": {"gradient_checkpointing": False,
                                                                 "precompute_ref_log_probs": True},
}


def time_trl(pi0, dataset, minibatch, lr, steps, clock=time.perf_counter, **overrides):
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.t0 = [], None

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = clock()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(clock() - self.t0)

    timer = Timer()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = DPOConfig(output_dir=tmp, per_device_train_batch_size=minibatch, gradient_accumulation_steps=1,
                        max_steps=steps, learning_rate=lr, loss_type="sigmoid", beta=0.1, bf16=False, fp16=False,
                        use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no",
                        dataloader_num_workers=0, disable_tqdm=True, seed=0, max_length=None, **overrides)
        policy, ref = fresh_policy(pi0, "trl"), fresh_policy(pi0, "trl-ref")
        ref.model.requires_grad_(False)
        trainer = DPOTrainer(model=policy.model, ref_model=ref.model, args=cfg, train_dataset=dataset,
                             processing_class=pi0.tokenizer, callbacks=[timer])
        trainer.train()
    times = timer.times[1:] or timer.times
    return statistics.median(times), len(times)


def add_workload_args(ap) -> None:
    """The update benchmarks' shared workload options (this script and update_profile.py)."""
    ap.add_argument("--reference", choices=["tiny", "default"], default="default",
                    help="pi_0: the library default (cached; built on first use) or a tiny one")
    ap.add_argument("--pairs", type=int, default=256, help="pairs collected (before ties are dropped)")
    ap.add_argument("--minibatch", type=int, default=8, help="pairs per optimiser step")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--collect-temperature", type=float, default=2.0,
                    help="sampling temperature of the collection only (the shipped pi_0 is nearly deterministic: at 1.0 "
                         "almost every pair is two identical responses or a tie)")


def collect_pairs(args):
    """One batch of pairs on pi_0's dialogues, the same for every learner (DPO's collection drops ties):
    (env, pi_0, the collector, the batch, collection wall seconds)."""
    import gymnasium as gym

    import refuel_env  # noqa: F401
    from agents.base import make_agent

    env = gym.make_vec("RefuelDialogue-v0", num_envs=1)
    pi0 = load_reference(args.reference)
    pi0.model.requires_grad_(False)
    collector = make_agent("dpo", policy=fresh_policy(pi0, "collector"), ref_policy=pi0, batch_size=args.pairs,
                           seed=0, temperature=args.collect_temperature)  # DPO's default: pi_0's dialogues, last-turn pairs
    t0 = time.perf_counter()
    batch = collector.collect(env)
    seconds = time.perf_counter() - t0
    if len(batch) < args.minibatch:
        raise SystemExit(f"only {len(batch)} pairs without ties; raise --pairs")
    return env, pi0, collector, batch, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_args(ap)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timed updates per agent (after one warm-up)")
    ap.add_argument("--agents", default="refuel,rebel,dpo,ppo")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' renamed-argument notices inside TRL

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    env, pi0, collector, batch, _ = collect_pairs(args)
    n = len(batch)
    names = [a for a in args.agents.split(",") if a]
    print(f"{n} pairs (of {args.pairs}; ties dropped), minibatch {args.minibatch} pairs, torch threads {args.threads}, "
          f"model {sum(p.numel() for p in pi0.model.parameters()) / 1e6:.2f}M parameters", flush=True)

    results = time_pair_agents([a for a in names if a != "ppo"], pi0, batch, args.minibatch, args.lr, args.repeats)
    if "ppo" in names:
        results["ppo"] = time_ppo(pi0, env, 2 * n, 2 * args.minibatch, args.lr, args.repeats)
    dataset = collector.preference_dataset(batch)
    steps = max(4, 2 * math.ceil(n / args.minibatch))
    trl = {label: time_trl(pi0, dataset, args.minibatch, args.lr, steps, **kw) for label, kw in TRL_SETTINGS.items()}

    print()
    for label, (sec, k) in trl.items():
        print(f"{label:<62} {sec * 1e3:8.1f} ms per step (median of {k} steps)")
    fastest_label, (fastest, _) = min(trl.items(), key=lambda kv: kv[1][0])
    print(f"\nratios to the fastest TRL setting ({fastest_label}); target <= 1.00")
    print(f"{'agent':<8} {'ms/step':>9} {'ratio':>7}  {'vs TRL defaults':>15}")
    default = trl[next(iter(TRL_SETTINGS))][0]
    missed = []
    for name, sec in results.items():
        ratio = sec / fastest
        verdict = "met" if ratio <= 1 else f"MISSED by {100 * (ratio - 1):.0f}%"
        print(f"{name:<8} {sec * 1e3:>9.1f} {ratio:>7.2f}  {sec / default:>15.2f}  {verdict}")
        if ratio > 1:
            missed.append(name)
    print("\nall agents at or below TRL's fastest step time" if not missed else f"\nslower than TRL: {', '.join(missed)}")


if __name__ == "__main__":
    main()
