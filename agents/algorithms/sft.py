"""SFT: behaviour cloning of a scripted speaker, the benchmark's positive control.

Each iteration rolls out ``batch_size`` whole dialogues of a speaker the task provides (``speaker="expert"``:
``task.expert_speaker``, a policy known to be better than pi_0; ``"offline"``: the behaviour policy of the task's
offline data), with horizons drawn as in training, and minimises the negative log-likelihood of their assistant
turns (the same turn masks as every other loss):

    loss = - sum_{assistant tokens} ln pi(token | prefix) / (number of assistant tokens)

Its budget is counted like PPO's (whole dialogues); it generates no tokens of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..base import Agent, AgentConfig, Batch, register_agent
from ..engine.chat import TemplateError

SPEAKERS = ("expert", "offline")


@dataclass
class SFTConfig(AgentConfig):
    speaker: str = "expert"
    """Whose dialogues are cloned: "expert" (the task's expert_speaker) or "offline" (its offline data's policy)."""

    def __post_init__(self):
        super().__post_init__()
        if self.speaker not in SPEAKERS:
            raise ValueError(f"speaker must be one of {SPEAKERS}, got {self.speaker!r}")


@register_agent("sft")
class SFTAgent(Agent):
    name = "sft"
    Config = SFTConfig

    def collect(self, env) -> Batch:
        eng = self.engine(env)
        before = dict(eng.stats)
        task = eng.machine.task
        seed = int(self.rng.integers(2**31))
        speaker = task.expert_speaker(seed=seed) if self.config.speaker == "expert" else task.offline_speaker(seed=seed)
        states = eng.dialogues(self.config.batch_size, speaker, self.rng, self.sampling)
        rows, errors = [], 0
        for s in states:
            try:
                rows.append(self.policy.chat.dialogue_row(s.messages[:1], s.messages[1:]))
            except TemplateError:
                errors += 1
        stats = {**self.budget(eng, before), "examples": len(rows), "template_errors": errors,
                 "mean_return": float(np.mean([s.scores[-1] for s in states])) if states else float("nan")}
        return Batch({"enc": self.policy.chat.pad_rows(rows)} if rows else {}, stats)

    def update(self, batch: Batch) -> dict[str, float]:
        if len(batch) == 0:
            self.skipped["empty_batches"] += 1
            return {"loss": float("nan")}
        self.policy.model.train()
        losses = []
        for idx in self.minibatches(len(batch)):
            enc = batch.data["enc"].select(torch.as_tensor(idx))
            lp = self.policy.token_logprobs(enc, temperature=self.config.temperature, turns_only=True)
            mask = enc.turn_mask[:, 1:].to(lp.device).float()
            out = self.optimise(-(lp * mask).sum() / mask.sum())
            if out:
                losses.append(out["loss"])
        self.policy.model.eval()
        return {"loss": float(np.mean(losses)) if losses else float("nan")}
