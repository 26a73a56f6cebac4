"""What each trained row does on the final turn, from a finished benchmark's checkpoints (a diagnosis, not a test).

For every unit of the listed rows: 512 held-out dialogues at H = H_max (the benchmark's evaluation split and
seed), and the share of guesses among the turns before the last (pi_0's demonstrator guesses on half of them in
the planning configuration, never in the execution one), and the final assistant turn classified as a guess of an animal still possible, a guess of one already
ruled out, or not a guess (a question or unparsable text); with the score after turn H-1 (planning) and the final
score. Explains a row's execution loss in the report's "Planning and execution" table.

    .venv/bin/python benchmarks/final_turn_behaviour.py runs/comparison REFUEL REBEL-MT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from agents.engine.policy import Policy
from agents.harness.build import load_reference, make_env
from agents.harness.config import from_dict
from agents.harness.evaluate import rollout
from refuel_env import machine_of


def classify(task, state) -> str:
    said = task.parse(state.last_assistant)
    if said.kind != "guess":
        return "not a guess"
    facts = [f for f in state.memory["facts"] if not (f[0] == "guess" and f[1] == said.key)]
    return "guess, still possible" if said.key in task.candidates(facts) else "guess, ruled out"


def main(out: str, *rows: str, n: int = 512) -> None:
    torch.set_num_threads(1)
    out = Path(out)
    cfg = from_dict(json.loads((out / "config.json").read_text())["config"])
    env = make_env(cfg.env)
    task = machine_of(env).task
    H = cfg.env.max_turns
    policies = {"pi_0": [load_reference(cfg.policy, cfg.env, log=lambda *a: None)]}
    for row in rows:
        policies[row] = [Policy.from_pretrained(str(d / "checkpoints" / "final"))
                         for d in sorted((out / "units").glob(f"{row}-[0-9]*")) if d.is_dir()]
    kinds = ["guess, still possible", "guess, ruled out", "not a guess"]
    print(f"{out}: {n} held-out dialogues per unit at H = {H}, eval seed {cfg.eval.seed}, sampled as in the benchmark's evaluation")
    print("| row | units | planning (after H-1) | final | " + " | ".join(kinds) + " | ended early (solved) | "
          "guesses on turns 1..H-1 |")
    print("|---|---|---|---|" + "---|" * (len(kinds) + 2))
    for row, pols in policies.items():
        counts, plan, final, early, asked, guessed = {k: 0 for k in kinds}, [], [], 0, 0, 0
        for pol in pols:
            r = rollout(pol, env, n, seed=cfg.eval.seed, horizon=H)
            for s in r.finals:
                final.append(s.scores[-1])
                said = [m["content"] for m in s.messages if m["role"] == "assistant"][:H - 1]
                asked += len(said)
                guessed += sum(task.parse(t).kind == "guess" for t in said)
                plan.append(s.scores[min(H - 1, len(s.scores)) - 1])
                if s.turn < H:
                    early += 1
                else:
                    counts[classify(task, s)] += 1
        total = len(final)
        print(f"| {row} | {len(pols)} | {np.mean(plan):.3f} | {np.mean(final):.3f} | "
              + " | ".join(f"{100 * counts[k] / total:.1f}%" for k in kinds) + f" | {100 * early / total:.1f}% | {100 * guessed / max(asked, 1):.1f}% |")


if __name__ == "__main__":
    main(*sys.argv[1:])
