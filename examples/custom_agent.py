"""A new algorithm in under 100 lines: rejection-sampling fine-tuning (RFT).

Each iteration samples whole dialogues with the current policy, keeps the best ``keep_fraction`` of them
by the judge's final score (those that scored above zero), and fine-tunes on their assistant turns (the
same turn masks every other loss uses). Registered as "rft", it runs through the trainer, the evaluation
and the benchmark unchanged:

    python examples/custom_agent.py --iterations 4
    refuel bench --preset quick --import examples/custom_agent.py --agents pi_0,refuel,rft --out runs/rft
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import torch

from agents.base import Agent, AgentConfig, Batch, register_agent
from agents.engine.chat import TemplateError


@dataclass
class RFTConfig(AgentConfig):
    keep_fraction: float = 0.25
    """Share of the sampled dialogues kept (the best by final judge score)."""


@register_agent("rft")
class RFTAgent(Agent):
    name = "rft"
    Config = RFTConfig

    def collect(self, env) -> Batch:
        eng = self.engine(env)  # the shared rollout engine: one generate call per turn for the whole batch
        before = dict(eng.stats)
        states = eng.dialogues(self.config.batch_size, self.policy, self.rng, self.sampling)
        returns = np.array([s.scores[-1] for s in states], dtype=float)
        best = [int(i) for i in np.argsort(-returns, kind="stable")[: max(1, int(len(states) * self.config.keep_fraction))]
                if returns[i] > 0]
        keep = []
        for i in best:  # drop (and count) dialogues the chat template cannot mask
            try:
                self.policy.chat.encode_dialogues([states[i].messages])
                keep.append(i)
            except TemplateError:
                pass
        stats = {**self.budget(eng, before), "examples": len(keep), "template_errors": len(best) - len(keep),
                 "mean_return": float(returns.mean()) if len(returns) else float("nan")}
        if not keep:
            return Batch({}, stats)
        enc, _ = self.policy.chat.encode_dialogues([states[i].messages for i in keep])
        return Batch({"enc": enc}, stats)

    def update(self, batch: Batch) -> dict[str, float]:
        if len(batch) == 0:
            self.skipped["empty_batches"] += 1
            return {"loss": float("nan")}
        self.policy.model.train()
        losses = []
        for idx in self.minibatches(len(batch)):
            enc = batch.data["enc"].select(torch.as_tensor(idx))
            mask = enc.turn_mask[:, 1:].float()
            loss = -(self.policy.token_logprobs(enc) * mask).sum() / mask.sum()  # NLL of the kept assistant turns
            if self.optimise(loss):
                losses.append(float(loss.detach()))
        self.policy.model.eval()
        return {"loss": float(np.mean(losses)) if losses else float("nan"), "kept": len(batch)}


def main() -> None:
    import gymnasium as gym

    import refuel_env  # noqa: F401
    from agents.base import make_agent
    from agents.harness.evaluate import evaluate
    from agents.engine.reference import reference_policy
    from agents.harness.trainer import train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", default="runs/rft")
    args = ap.parse_args()
    env = gym.make_vec("RefuelDialogue-v0", num_envs=1)
    agent = make_agent("rft", policy=reference_policy(), batch_size=args.batch_size, lr=1e-4)
    res = train(agent, env, args.iterations, eval_every=2, out=args.out)
    ev = evaluate(agent.policy, env, agent.ref_policy, n_dialogues=64)
    print(f"{res.budget['dialogues']} dialogues sampled; win rate vs pi_0 by turn:",
          ", ".join(f"{w:.2f}" for w in ev.win_rate))


if __name__ == "__main__":
    main()
