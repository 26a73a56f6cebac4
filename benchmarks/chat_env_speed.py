"""Seconds per turn of the open-chat env with SmolLM2-135M-Instruct as user and judge, offline on a CPU.

    python benchmarks/chat_env_speed.py                    # batch 1 and 8, one torch thread
    python benchmarks/chat_env_speed.py --threads 2 --batch 1 8 16 --json out.json

The workload is the chat setting of ``examples/configs/smollm2_chat.toml``: ``gym.make_vec("RefuelChat-v0",
num_envs=B)`` on the built-in prompts, horizon fixed at H (2), the simulated user in the "swap" format writing
32-token turns at temperature 0.7, the LLM judge scoring every assistant turn (P(Yes) to a rubric question,
one forward pass), and SmolLM2 as the policy writing 32-token assistant turns. For each batch size B, ``rounds``
batches of B dialogues run to the horizon (after one untimed warm-up step that loads and warms the models).

Measured, per turn (one ``vec.step`` = B dialogue turns): the env step (one batched user call and one
batched judge call; the user is not called on the last turn), split into user and judge time from the core's
counters, and, separately, the policy's own batched generation. Printed as seconds per batched step and per
dialogue turn (divided by B).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import gymnasium as gym  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import refuel_env  # noqa: E402,F401  (registers RefuelChat-v0)
from agents.engine.policy import Policy  # noqa: E402
from refuel_env import SamplingParams  # noqa: E402
from refuel_env.models import resolve_model  # noqa: E402


def measure(batch: int, policy: Policy, params: SamplingParams, horizon: int, user_tokens: int, rounds: int,
            seed: int = 0) -> dict:
    vec = gym.make_vec("RefuelChat-v0", num_envs=batch, horizon="fixed", max_message_chars=1024,
                       task_kwargs={"max_turns": horizon, "user_params": {"max_new_tokens": user_tokens, "temperature": 0.7}},
                       user_kwargs={"format": "swap"})
    core = vec.machine
    obs, _ = vec.reset(seed=seed)
    vec.step(policy.act(list(obs["messages"]), params, seed=seed))  # warm-up: loads the user/judge model, first calls
    gen_s, turns, steps = 0.0, 0, 0
    before = dict(core.stats)
    t_env = 0.0
    for r in range(rounds):
        obs, _ = vec.reset(seed=seed + 1000 * (r + 1))
        for t in range(horizon):
            t0 = time.perf_counter()
            acts = policy.act(list(obs["messages"]), params, seed=seed + r * horizon + t)
            t1 = time.perf_counter()
            obs, _, term, trunc, _ = vec.step(acts)
            t_env += time.perf_counter() - t1
            gen_s += t1 - t0
            turns += batch
            steps += 1
        assert (term | trunc).all()
    user_s = core.stats["user_seconds"] - before["user_seconds"]
    judge_s = core.stats["judge_seconds"] - before["judge_seconds"]
    vec.close()
    return {"batch": batch, "steps": steps, "dialogue_turns": turns,
            "env_s_per_step": t_env / steps, "env_s_per_turn": t_env / turns,
            "user_s_per_step": user_s / steps, "judge_s_per_step": judge_s / steps,
            "policy_s_per_step": gen_s / steps, "policy_s_per_turn": gen_s / turns,
            "total_s_per_turn": (t_env + gen_s) / turns}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="dialogues stepped together")
    p.add_argument("--horizon", type=int, default=2, help="turns per dialogue (H, fixed)")
    p.add_argument("--user-tokens", type=int, default=32, help="max new tokens of a user turn")
    p.add_argument("--policy-tokens", type=int, default=32, help="max new tokens of an assistant turn")
    p.add_argument("--rounds", type=int, default=2, help="batches of dialogues timed per batch size")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    policy = Policy.from_pretrained(resolve_model("smollm2"), name="smollm2")
    params = SamplingParams(max_new_tokens=args.policy_tokens, temperature=0.7)
    load_s = time.perf_counter() - t0
    print(f"SmolLM2-135M-Instruct (float32) as user, judge and policy; torch threads {args.threads}; H = {args.horizon}; "
          f"user {args.user_tokens} / policy {args.policy_tokens} new tokens; {args.rounds} rounds per batch size")
    rows = [measure(b, policy, params, args.horizon, args.user_tokens, args.rounds) for b in args.batch]
    print(f"\n{'batch':>5} {'env s/step':>10} {'user s/step':>11} {'judge s/step':>12} {'env s/turn':>10} "
          f"{'policy s/turn':>13} {'total s/turn':>12}")
    for r in rows:
        print(f"{r['batch']:>5} {r['env_s_per_step']:>10.2f} {r['user_s_per_step']:>11.2f} {r['judge_s_per_step']:>12.2f} "
              f"{r['env_s_per_turn']:>10.2f} {r['policy_s_per_turn']:>13.2f} {r['total_s_per_turn']:>12.2f}")
    print("(a step = one batched vec.step of `batch` dialogue turns; s/turn = per dialogue turn; the user is not "
          "called on the last turn)")
    if args.json:
        meta = {"threads": args.threads, "horizon": args.horizon, "user_tokens": args.user_tokens,
                "policy_tokens": args.policy_tokens, "rounds": args.rounds, "policy_load_s": load_s,
                "cpu_count": os.cpu_count(), "machine": platform.machine(), "torch": torch.__version__,
                "load_average_at_end": os.getloadavg()}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
