"""Quickstart: the dialogue environment, a REFUEL agent, a few iterations, and the per-turn win rate.

    python examples/quickstart.py                 # about a minute on a laptop CPU once pi_0 is cached
    python examples/quickstart.py --agent ppo     # any registered agent: refuel, rebel, dpo, ppo, ...

The first run builds the offline reference policy pi_0 (a small model fine-tuned on demonstrations)
and caches it under ~/.cache/refuel_env (or $REFUEL_ENV_CACHE).
"""

from __future__ import annotations

import argparse

import gymnasium as gym

import refuel_env  # noqa: F401  (registers RefuelDialogue-v0)
from agents.base import make_agent
from agents.harness.evaluate import evaluate
from agents.engine.reference import reference_policy


def main() -> None:
    ap = argparse.ArgumentParser(description="refuel-env quickstart")
    ap.add_argument("--agent", default="refuel")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32, help="pairs (dialogues for PPO) per iteration")
    args = ap.parse_args()

    # 1. The environment: the agent is the assistant; a scripted user hides an animal, a rule judge scores.
    env = gym.make("RefuelDialogue-v0")
    obs, info = env.reset(seed=0)
    print("user:", obs["messages"][-1]["content"])
    obs, reward, terminated, truncated, info = env.step("Is it a mammal?")
    print("user:", obs["messages"][-1]["content"], f"(judge score so far: {info['score']:.2f})")

    # 2. An agent on the reference policy pi_0; collect() rolls out through the shared engine, update() learns.
    agent = make_agent(args.agent, policy=reference_policy(), batch_size=args.batch_size, seed=0)
    for it in range(args.iterations):
        batch = agent.collect(env)
        metrics = agent.update(batch)
        print(f"iteration {it + 1}: {batch.stats['dialogues']} dialogues, {batch.stats['tokens_generated']} tokens, "
              f"mean return {batch.stats['mean_return']:.3f}, loss {metrics['loss']:.4f}")

    # 3. Win rate against pi_0 at every turn: same user, same seeds, held-out opening states.
    res = evaluate(agent.policy, env, agent.ref_policy, n_dialogues=64)
    for h, w, (lo, hi), s in zip(res.turns, res.win_rate, res.win_ci, res.score):
        print(f"turn {h}: win rate vs pi_0 {w:.2f} [{lo:.2f}, {hi:.2f}], judge score {s:.3f}")
    print(agent.act([obs])[0])


if __name__ == "__main__":
    main()
