"""Rollout throughput of the batched vector env against a one-dialogue-at-a-time loop.

    python benchmarks/env_throughput.py                       # built-in task, scripted user and rule judge
    python benchmarks/env_throughput.py --user-latency-ms 5   # plus a user that costs 5 ms per call (a model server)
    python benchmarks/env_throughput.py --compare 6c4bebf     # this tree against an older commit, in one run

The workload is the same for every configuration: the same task (guess-item, 8 items, fixed horizon
H = 4), the same number of dialogues, the same seeds, and the same assistant messages, drawn once up
front (random attribute questions on turns 1..H-1 and a random guess on turn H, so that every
dialogue lasts exactly H turns and no policy time is measured). Measured:

- ``vector N``: ``gym.make_vec("RefuelDialogue-v0", num_envs=N)``, ``reset(seed=[...])`` and H steps per batch;
- ``loop``: 64 single envs from ``gym.make`` (default wrappers included), one dialogue at a time.

Printed: dialogues per second (best of ``--repeat`` runs), the ratio to the loop, and the process CPU time per
dialogue-turn (resets included: CPU time / (dialogues x H)). With
``--user-latency-ms`` the user simulator is the scripted one plus a fixed cost per call (``time.sleep``), a
stand-in for an LLM user behind a server, where one batched call costs about as much as one single call.

``--compare COMMIT`` exports COMMIT's tree (``git archive``) to a temporary directory and measures both trees
in alternating subprocesses (base, new, new, base, ...; each imports its own ``refuel_env``), so that a busy
machine slows both alike: CPU microseconds per dialogue-turn of the vector env at 64 envs and of the loop,
and the time of ``gym.make_vec(..., num_envs=64)``. Printed: the median over the rounds and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.environ.get("REFUEL_TREE", str(ROOT)))  # --compare runs this file against another tree
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


def run_vector(num_envs: int, actions: list[list[str]], env_kwargs: dict, cpu: list | None = None) -> float:
    vec = gym.make_vec("RefuelDialogue-v0", num_envs=num_envs, **env_kwargs)
    horizon = len(actions[0])
    c0, t0 = time.process_time(), time.perf_counter()
    for start in range(0, len(actions), num_envs):
        batch = actions[start:start + num_envs]
        vec.reset(seed=list(range(start, start + num_envs)))
        for t in range(horizon):
            _, _, term, trunc, _ = vec.step([a[t] for a in batch])
        assert (term | trunc).all()
    elapsed = time.perf_counter() - t0
    if cpu is not None:
        cpu.append((time.process_time() - c0) / (len(actions) * horizon) * 1e6)
    vec.close()
    return len(actions) / elapsed


def run_loop(n_envs: int, actions: list[list[str]], env_kwargs: dict, cpu: list | None = None) -> float:
    envs = [gym.make("RefuelDialogue-v0", **env_kwargs) for _ in range(n_envs)]
    c0, t0 = time.process_time(), time.perf_counter()
    for j, acts in enumerate(actions):
        env = envs[j % n_envs]
        env.reset(seed=j)
        for a in acts:
            _, _, term, trunc, _ = env.step(a)
        assert term or trunc
    elapsed = time.perf_counter() - t0
    if cpu is not None:
        cpu.append((time.process_time() - c0) / sum(map(len, actions)) * 1e6)
    return len(actions) / elapsed


def measure(env_kwargs: dict, num_envs: list[int], n_dialogues: int, horizon: int, loop_envs: int, repeat: int,
            cpu: dict | None = None) -> dict:
    """Dialogues per second of each configuration (best of ``repeat``); ``cpu`` gets the CPU microseconds per
    dialogue-turn (also the best)."""
    task = GuessItemTask(**env_kwargs.get("task_kwargs", {}))
    actions = workload(n_dialogues, horizon, task)
    times: dict[str, list] = {"loop": []}
    loop = max(run_loop(loop_envs, actions, env_kwargs, times["loop"]) for _ in range(repeat))
    rows = {"loop": loop}
    for n in num_envs:
        times[f"vector {n}"] = []
        rows[f"vector {n}"] = max(run_vector(n, actions, env_kwargs, times[f"vector {n}"]) for _ in range(repeat))
    if cpu is not None:
        cpu.update({k: min(v) for k, v in times.items()})
    return rows


def print_table(title: str, rows: dict, cpu: dict | None = None) -> None:
    loop = rows["loop"]
    print(f"\n{title}")
    print(f"{'configuration':<14} {'dialogues/s':>12} {'vs loop':>8}" + (f" {'CPU us/dialogue-turn':>21}" if cpu else ""))
    for name, v in rows.items():
        print(f"{name:<14} {v:>12.1f} {v / loop:>7.2f}x" + (f" {cpu[name]:>21.1f}" if cpu else ""))


def make_vec_seconds(num_envs: int = 64, repeat: int = 3) -> dict:
    """CPU and wall seconds of ``gym.make_vec("RefuelDialogue-v0", num_envs=...)`` (median of ``repeat``)."""
    cpu, wall = [], []
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        gym.make_vec("RefuelDialogue-v0", num_envs=num_envs).close()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - t0)
    return {"cpu": statistics.median(cpu), "wall": statistics.median(wall)}


def worker(args: argparse.Namespace) -> None:
    """One round of --compare, in a subprocess that imports the tree named by $REFUEL_TREE."""
    base = {"horizon": "fixed", "max_turns": args.horizon, "task_kwargs": {"n_items": args.n_items}}
    cpu: dict = {}
    rows = measure(base, [64], args.dialogues, args.horizon, args.loop_envs, args.repeat, cpu)
    make = make_vec_seconds()
    out = {"vector 64 CPU us/dialogue-turn": cpu["vector 64"], "loop CPU us/dialogue-turn": cpu["loop"],
           "vector 64 / loop (dialogues/s)": rows["vector 64"] / rows["loop"],
           "make_vec(64) CPU s": make["cpu"], "make_vec(64) wall s": make["wall"]}
    Path(args.worker_json).write_text(json.dumps(out))


def compare(args: argparse.Namespace) -> dict:
    """This tree against ``args.compare``, measured in alternating subprocesses; prints and returns the medians."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", args.compare], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        trees = {"base": Path(tmp), "new": ROOT}
        figures: dict[str, list[dict]] = {"base": [], "new": []}
        for r in range(args.rounds):
            for name in (("base", "new") if r % 2 == 0 else ("new", "base")):
                out = Path(tmp) / f"{name}-{r}.json"
                cmd = [sys.executable, str(Path(__file__).resolve()), "--worker-json", str(out), "--dialogues",
                       str(args.dialogues), "--horizon", str(args.horizon), "--n-items", str(args.n_items),
                       "--loop-envs", str(args.loop_envs), "--repeat", str(args.repeat)]
                subprocess.run(cmd, check=True, cwd=trees[name], env={**os.environ, "REFUEL_TREE": str(trees[name])})
                figures[name].append(json.loads(out.read_text()))
    med = {name: {k: statistics.median(f[k] for f in rows) for k in rows[0]} for name, rows in figures.items()}
    best = {name: {k: (max if "/ loop" in k else min)(f[k] for f in rows) for k in rows[0]} for name, rows in figures.items()}
    print(f"\n{args.compare} (base) against this tree (new): {args.rounds} alternating rounds, {args.dialogues} "
          f"dialogues of H = {args.horizon} each, best of {args.repeat} runs per round; median and best round")
    print(f"{'figure':<34} {'base':>9} {'new':>9} {'ratio':>7}   {'base best':>9} {'new best':>9} {'ratio':>7}")
    for k in med["base"]:
        row = [med["base"][k], med["new"][k], best["base"][k], best["new"][k]]
        flip = "/ loop" in k  # higher is better there: new/base
        r1, r2 = (row[1] / row[0], row[3] / row[2]) if flip else (row[0] / row[1], row[2] / row[3])
        print(f"{k:<34} {row[0]:>9.4g} {row[1]:>9.4g} {r1:>6.2f}x   {row[2]:>9.4g} {row[3]:>9.4g} {r2:>6.2f}x")
    print("ratio: how many times better new is (base/new for costs, new/base for the vector/loop speed-up)")
    return {"median": med, "best": best}


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
    p.add_argument("--compare", metavar="COMMIT", help="measure this tree against COMMIT (see the module docstring)")
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds of --compare")
    p.add_argument("--worker-json", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker_json:
        worker(args)
        return {}
    if args.compare:
        med = compare(args)
        if args.json:
            args.json.write_text(json.dumps(med, indent=2))
        return med

    base = {"horizon": "fixed", "max_turns": args.horizon, "task_kwargs": {"n_items": args.n_items}}
    print(f"workload: {args.dialogues} dialogues, guess-item with {args.n_items} items, H = {args.horizon} "
          f"(every dialogue lasts H turns), scripted assistant messages drawn up front; best of {args.repeat}")
    cpu: dict = {}
    results = {"scripted user, rule judge": measure(base, args.num_envs, args.dialogues, args.horizon, args.loop_envs,
                                                    args.repeat, cpu)}
    print_table("scripted user, rule judge", results["scripted user, rule judge"], cpu)
    results["CPU us per dialogue-turn"] = cpu
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
