"""Bit-for-bit replay check: the env of this tree against the env of another commit, on seeded random dialogues.

    python benchmarks/replay_check.py --base 6c4bebf --dialogues 4000

Both trees play the same workload in separate processes (each imports its own ``refuel_env``): seeded
single-env episodes under several configurations (noise, phrasing, per-turn rewards, horizons, reset options,
get_state/restore branches), vector envs with autoreset, the PettingZoo view with the simulator in the user
seat, and the batched machine (new_states, branch, external user replies). Valid actions only: questions in
several phrasings, guesses, unclear and empty messages, non-ASCII text. Every observation, reward, flag and
info is written out as JSON, and the two transcripts must be equal line for line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["Is it a mammal?", "Is the animal a mammal?", "Is it bigger than a person?", "Does it live in water?",
         "Can it fly?", "Is it kept as a pet?", "Does it hunt other animals?", "Does it have four legs?",
         "Can it climb trees?", "Is it a whale?", "My guess is cat.", "I think it is a otter.", "Is it a shark?",
         "Is it a frog?", "Is it a parrot?", "Is it a horse?", "Is it an ostrich?", "Is it a dog?", "",
         "Hmm, let me think.", "Is it big and can it fly?", "Ist es ein Säugetier? 🐋", "Is it a bear?"]
CONFIGS = [{}, {"horizon": "fixed"}, {"reward_mode": "per_turn", "task_kwargs": {"noise": 0.3}},
           {"max_turns": 6, "task_kwargs": {"n_items": 16, "phrasing": "fixed"}},
           {"horizon": 2, "task_kwargs": {"noise": 0.1, "reveal_candidates": False}},
           {"max_message_chars": 30, "max_total_chars": 200, "horizon": "fixed", "max_turns": 8}]


def plain(x):
    """JSON-able form of observations and infos (numpy arrays and scalars as lists and Python numbers)."""
    import numpy as np

    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return {"dtype": str(x.dtype), "shape": list(x.shape), "values": plain(x.tolist())}
    if isinstance(x, np.generic):
        return {"np": type(x).__name__, "v": x.item()}
    return x


def worker(n_dialogues: int, out) -> None:
    import gymnasium as gym
    import numpy as np

    import refuel_env  # noqa: F401
    from refuel_env import multiagent
    from refuel_env.multiagent import SimulatedUser

    def emit(*parts):
        out.write(json.dumps(plain(parts), ensure_ascii=False) + "\n")

    def act(rng, limit=1024):
        return TEXTS[int(rng.integers(len(TEXTS)))][:limit]

    # single envs, several configurations, options and branches
    envs = [gym.make("RefuelDialogue-v0", **c) for c in CONFIGS]
    for k in range(n_dialogues):
        c = k % len(CONFIGS)
        env, rng = envs[c], np.random.default_rng([k, 99])
        limit = CONFIGS[c].get("max_message_chars", 1024)
        options = None
        if k % 7 == 3:
            options = {"split": "eval"}
        elif k % 7 == 5:
            options = {"horizon": int(rng.integers(1, env.unwrapped.machine.max_turns + 1))}
        elif k % 11 == 4:
            options = {"goal": env.unwrapped.task.items[int(rng.integers(env.unwrapped.task.n_items))]}
        obs, info = env.reset(seed=None if k % 5 == 0 and k >= len(CONFIGS) else k, options=options)
        emit("reset", c, k, obs, info)
        saved, done, t = None, False, 0
        while not done:
            if t == 1 and k % 3 == 0:
                saved = env.unwrapped.get_state()
            obs, r, term, trunc, info = env.step(act(rng, limit))
            emit("step", obs, r, term, trunc, info)
            done, t = term or trunc, t + 1
        emit("state", env.unwrapped.get_state().to_dict())
        if saved is not None:  # a second branch from turn 1, and a third from the dict form
            for form in (saved, saved.to_dict()):
                obs, info = env.reset(options={"state": form})
                done = saved.done
                while not done:
                    obs, r, term, trunc, info = env.step(act(rng, limit))
                    emit("branch", obs, r, term, trunc, info)
                    done = term or trunc

    # vector envs with autoreset
    for v, (n, c) in enumerate([(8, 0), (16, 2), (5, 5), (12, 3)]):
        vec = gym.make_vec("RefuelDialogue-v0", num_envs=n, **CONFIGS[c])
        rng = np.random.default_rng([v, 7])
        limit = CONFIGS[c].get("max_message_chars", 1024)
        for rep in range(max(1, n_dialogues // (20 * n))):
            seed = [rep * 1000 + i for i in range(n)] if rep % 2 == 0 else rep
            obs, info = vec.reset(seed=seed, options={"split": "eval"} if rep % 3 == 2 else None)
            emit("vreset", obs, info)
            for _ in range(10):
                emit("vstep", *vec.step([act(rng, limit) for _ in range(n)]))
            states = vec.unwrapped.get_states()
            obs, info = vec.reset(options={"states": states})
            emit("vrestore", obs, info, [s.to_dict() for s in vec.unwrapped.get_states()])

    # PettingZoo with the simulator in the user seat
    for k in range(max(1, n_dialogues // 20)):
        env = multiagent.env(**CONFIGS[k % 3])
        env.reset(seed=k)
        user, rng = SimulatedUser(env), np.random.default_rng([k, 5])
        for agent in env.agent_iter():
            obs, reward, term, trunc, info = env.last()
            emit("aec", agent, obs, reward, term, trunc, info)
            env.step(None if term or trunc else (act(rng) if agent == "assistant" else user(obs)))

    # the batched machine: new_states, branch, external user replies
    machine = refuel_env.machine_of(gym.make("RefuelDialogue-v0", horizon="fixed", max_turns=5,
                                             task_kwargs={"noise": 0.2}))
    rng = np.random.default_rng(3)
    for rep in range(max(1, n_dialogues // 50)):
        states = machine.new_states([rep * 100 + i for i in range(6)], per_dialogue=[{"horizon": 5}] * 6)
        states += machine.branch(states[0], 2)
        for t in range(5):
            live = [s for s in states if not s.done]
            if not live:
                break
            replies = [None if (i + t) % 3 else ("Yes." if t % 2 else "No, it isn't.") for i in range(len(live))]
            replies = [None if s.turn + 1 >= s.horizon else r for s, r in zip(live, replies)]
            results = machine.step(live, [act(rng) for _ in live], user_replies=replies)
            emit("machine", [(r.reward, r.terminated, r.truncated, r.info) for r in results])
        emit("mstates", [s.to_dict() for s in states])


def run_tree(tree: Path, n: int) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as f:
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(n), "--out", f.name],
                       cwd=tree, env=env, check=True)
        return f.read().splitlines()


def export(commit: str, into: Path) -> Path:
    """The tree of ``commit`` in ``into`` (``git archive``)."""
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="6c4bebf", help="commit to compare with")
    p.add_argument("--dialogues", type=int, default=4000, help="single-env dialogues (the other parts scale with it)")
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        with open(args.out, "w", encoding="utf-8") as out:
            worker(args.worker, out)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        base = run_tree(export(args.base, Path(tmp)), args.dialogues)
    new = run_tree(ROOT, args.dialogues)
    counts = {}
    for line in new:
        kind = json.loads(line)[0]
        counts[kind] = counts.get(kind, 0) + 1
    digest = hashlib.sha256("\n".join(new).encode()).hexdigest()[:16]
    print(f"records: {len(new)} ({', '.join(f'{k} {v}' for k, v in counts.items())}); sha256 {digest}")
    if base == new:
        print(f"IDENTICAL to {args.base}: every observation, reward, flag, info and saved state, line for line")
        return 0
    first = next((i for i, (a, b) in enumerate(zip(base, new)) if a != b), min(len(base), len(new)))
    print(f"DIFFERENT from {args.base}: {len(base)} vs {len(new)} records, first difference at record {first}:\n"
          f"base: {base[first][:600] if first < len(base) else '(none)'}\nnew:  {new[first][:600] if first < len(new) else '(none)'}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
