"""DPO against a frozen reference, on pairs ranked by the judge.

    loss = mean( -log sigmoid( beta * ([ln pi(y_w|x) - ln pi_ref(y_w|x)] - [ln pi(y_l|x) - ln pi_ref(y_l|x)]) ) )

Equal to TRL's ``DPOTrainer`` with ``loss_type="sigmoid"`` on the same model and pairs (tested). Where the
pairs come from is declared like every pair agent's (``rollin``, ``responder``, ``target``; see
:mod:`agents.algorithms.pairs`): by default the paper's DPO-LT-MIXED (contexts rolled in by pi_0, two responses of
the current policy at the last turn); iterative online DPO rolls in with the current policy too
(``rollin="current"``); DPO-MT compares two whole dialogues (``target="multi_turn", rollin="none"``). Ties carry no
preference and are dropped (counted).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..base import register_agent
from .pairs import PairAgent, PairConfig


@dataclass
class DPOConfig(PairConfig):
    beta: float = 0.1
    """Inverse temperature of the implicit reward."""
    rollin: str = "reference"
    target: str = "last_turn"

    def __post_init__(self):
        super().__post_init__()
        if not (isinstance(self.beta, (int, float)) and not isinstance(self.beta, bool) and 0 < self.beta < float("inf")):
            raise ValueError(f"beta must be a finite number > 0, got {self.beta!r}")


def dpo_loss(logp_w, logp_l, ref_w, ref_l, beta: float) -> torch.Tensor:
    return -F.logsigmoid(beta * ((logp_w - ref_w) - (logp_l - ref_l))).mean()


@register_agent("dpo")
class DPOAgent(PairAgent):
    name = "dpo"
    Config = DPOConfig
    anchor = "pi_ref"
    needs_preference = True

    def loss(self, logp_a, logp_b, ref_a, ref_b, returns):
        a_wins = returns[:, 0] > returns[:, 1]
        lp_w, lp_l = torch.where(a_wins, logp_a, logp_b), torch.where(a_wins, logp_b, logp_a)
        ref_w, ref_l = torch.where(a_wins, ref_a, ref_b), torch.where(a_wins, ref_b, ref_a)
        margin = (lp_w - ref_w) - (lp_l - ref_l)
        return dpo_loss(lp_w, lp_l, ref_w, ref_l, self.config.beta), {"reward_accuracy": (margin > 0).float().mean()}
