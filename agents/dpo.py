"""DPO against a frozen reference, on pairs ranked by the judge.

    loss = mean( -log sigmoid( beta * ([ln pi(y_w|x) - ln pi_ref(y_w|x)] - [ln pi(y_l|x) - ln pi_ref(y_l|x)]) ) )

Equal to TRL's ``DPOTrainer`` with ``loss_type="sigmoid"`` on the same model and pairs (tested).
``online=False`` (default): contexts and responses come from pi_0 ("DPO-LT-OFFLINE"); ``online=True``:
from the current policy (iterative DPO). Ties carry no preference and are dropped (counted).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import register_agent
from .pairs import PairAgent, PairConfig


@dataclass
class DPOConfig(PairConfig):
    beta: float = 0.1
    """Inverse temperature of the implicit reward."""
    online: bool = False
    """True: pairs on the current policy's dialogues; False: on pi_0's (offline)."""
    target: str = "last_turn"


def dpo_loss(logp_w, logp_l, ref_w, ref_l, beta: float) -> torch.Tensor:
    return -F.logsigmoid(beta * ((logp_w - ref_w) - (logp_l - ref_l))).mean()


@register_agent("dpo")
class DPOAgent(PairAgent):
    name = "dpo"
    Config = DPOConfig
    anchor = "reference"

    def setup(self) -> None:
        src = "current" if self.config.online else "reference"
        self.config.rollin, self.config.responder = src, src
        super().setup()

    def usable(self, returns) -> bool:
        return returns[0] != returns[1]

    def loss(self, logp_a, logp_b, ref_a, ref_b, returns):
        a_wins = (returns[:, 0] > returns[:, 1]).unsqueeze(-1)
        lp = torch.stack([logp_a, logp_b], -1)
        ref = torch.stack([ref_a, ref_b], -1)
        order = torch.where(a_wins, torch.tensor([0, 1]), torch.tensor([1, 0]))
        lp, ref = lp.gather(-1, order), ref.gather(-1, order)
        margin = (lp[:, 0] - ref[:, 0]) - (lp[:, 1] - ref[:, 1])
        return dpo_loss(lp[:, 0], lp[:, 1], ref[:, 0], ref[:, 1], self.config.beta), {
            "reward_accuracy": float((margin > 0).float().mean())}
