"""Rollout throughput of the batched vector env against a one-dialogue-at-a-time loop.

    python benchmarks/env_throughput.py                       # built-in task, scripted user and rule judge
    python benchmarks/env_throughput.py --user-latency-ms 5   # plus a user that costs 5 ms per call (a model server)

The workload is the same for every configuration: the same task (guess-item, 8 items, fixed horizon
H = 4), the same number of dialogues, the same seeds, and the same assistant messages, drawn once up
front (random attribute questions on turns 1..H-1 and a random guess on turn H, so that every
dialogue lasts exactly H turns and no policy time is measured). Measured:

- ``vector N``: ``gym.make_vec("RefuelDialogue-v0", num_envs=N)``, ``reset(seed=[...])`` and H steps per batch;
- ``loop``: 64 single envs from ``gym.make`` (default wrappers included), one dialogue at a time.

Printed: dialogues per second (best of ``--repeat`` runs) and the ratio to the loop. With
``--user-latency-ms`` the user simulator is the scripted one plus a fixed cost per call (``time.sleep``), a
stand-in for an LLM user behind a server, where one batched call costs about as much as one single call.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import refuel_env  # noqa: E402,F401  (registers RefuelDialogue-v0)
from refuel_env.sb3 import guess_item_candidates  # noqa: E402
from refuel_env.tasks.guess_item import ATTRIBUTE_NAMES, GuessItemTask  # noqa: E402


class LatencyUser:
    """The task's scripted user plus a fixed cost per call (one call answers the whole batch)."""

    def __init__(self, task: GuessItemTask, latency_s: float):
        self.inner, self.latency_s = task.make_scripted_user(), latency_s

    def reply(self, states):
        time.sleep(self.latency_s)
        return self.inner.reply(states)


def workload(n_dialogues: int, horizon: int, task: GuessItemTask, seed: int = 0) -> list[list[str]]:
    """Assistant messages for every dialogue and turn, drawn once: questions, then a final guess."""
    rng = np.random.default_rng(seed)
    texts = guess_item_candidates(task)
    questions, guesses = texts[: len(ATTRIBUTE_NAMES)], texts[len(ATTRIBUTE_NAMES):]
    return [[questions[int(rng.integers(len(questions)))] for _ in range(horizon - 1)] + [guesses[int(rng.integers(len(guesses)))]]
            for _ in range(n_dialogues)]


def run_vector(num_envs: int, actions: list[list[str]], env_kwargs: dict) -> float:
    vec = gym.make_vec("RefuelDialogue-v0", num_envs=num_envs, **env_kwargs)
    horizon = len(actions[0])
    t0 = time.perf_counter()
    for start in range(0, len(actions), num_envs):
        batch = actions[start:start + num_envs]
        vec.reset(seed=list(range(start, start + num_envs)))
        for t in range(horizon):
            _, _, term, trunc, _ = vec.step([a[t] for a in batch])
        assert (term | trunc).all()
    elapsed = time.perf_counter() - t0
    vec.close()
    return len(actions) / elapsed


def run_loop(n_envs: int, actions: list[list[str]], env_kwargs: dict) -> float:
    envs = [gym.make("RefuelDialogue-v0", **env_kwargs) for _ in range(n_envs)]
    t0 = time.perf_counter()
    for j, acts in enumerate(actions):
        env = envs[j % n_envs]
        env.reset(seed=j)
        for a in acts:
            _, _, term, trunc, _ = env.step(a)
        assert term or trunc
    elapsed = time.perf_counter() - t0
    return len(actions) / elapsed


def measure(env_kwargs: dict, num_envs: list[int], n_dialogues: int, horizon: int, loop_envs: int, repeat: int) -> dict:
    task = GuessItemTask(**env_kwargs.get("task_kwargs", {}))
    actions = workload(n_dialogues, horizon, task)
    loop = max(run_loop(loop_envs, actions, env_kwargs) for _ in range(repeat))
    rows = {"loop": loop}
    for n in num_envs:
        rows[f"vector {n}"] = max(run_vector(n, actions, env_kwargs) for _ in range(repeat))
    return rows


def print_table(title: str, rows: dict) -> None:
    loop = rows["loop"]
    print(f"\n{title}")
    print(f"{'configuration':<14} {'dialogues/s':>12} {'vs loop':>8}")
    for name, v in rows.items():
        print(f"{name:<14} {v:>12.1f} {v / loop:>7.2f}x")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dialogues", type=int, default=1024, help="dialogues per configuration (a multiple of 64)")
    p.add_argument("--horizon", type=int, default=4)
    p.add_argument("--n-items", type=int, default=8)
    p.add_argument("--num-envs", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--loop-envs", type=int, default=64, help="single envs in the one-at-a-time loop")
    p.add_argument("--repeat", type=int, default=3, help="runs per configuration; the best is kept")
    p.add_argument("--user-latency-ms", type=float, default=0.0,
                   help="also measure with a user simulator that costs this much per call (0: skip)")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)

    base = {"horizon": "fixed", "max_turns": args.horizon, "task_kwargs": {"n_items": args.n_items}}
    print(f"workload: {args.dialogues} dialogues, guess-item with {args.n_items} items, H = {args.horizon} "
          f"(every dialogue lasts H turns), scripted assistant messages drawn up front; best of {args.repeat}")
    results = {"scripted user, rule judge": measure(base, args.num_envs, args.dialogues, args.horizon, args.loop_envs, args.repeat)}
    print_table("scripted user, rule judge", results["scripted user, rule judge"])
    if args.user_latency_ms > 0:
        task = GuessItemTask(n_items=args.n_items, max_turns=args.horizon)
        kwargs = {**base, "task": task, "user": LatencyUser(task, args.user_latency_ms / 1000)}
        kwargs.pop("task_kwargs"), kwargs.pop("max_turns")
        title = f"user with {args.user_latency_ms:g} ms per call, rule judge"
        n = max(64, args.dialogues // 8 // 64 * 64)  # fewer dialogues: the loop is slow here
        results[title] = measure(kwargs, args.num_envs, n, args.horizon, args.loop_envs, 1)
        print_table(f"{title} ({n} dialogues)", results[title])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
