"""REFUEL: regress the relative future (Swamy, Gao et al., 2024, arXiv 2410.04612).

Data: H ~ U{1..H_max}, h ~ U{1..H}; roll in with pi_t to s_h; two responses a, a' ~ pi_t(.|s_h); each
branch continued to H with pi_t and the user; Q-hat = the judge's score at H of each branch.

    loss = mean( ([ln pi(a|s) - ln pi_t(a|s)] - [ln pi(a'|s) - ln pi_t(a'|s)] - eta * (Q(a) - Q(a')))^2 )

Log-probabilities sum over the turn-h response tokens only (end-of-turn token included); later turns
enter through Q alone. pi_t's log-probabilities are computed once, at collection; pi_t is the policy
of the previous iteration. No reward normalisation; pairs with identical responses are dropped.
Logits are scaled by the sampling temperature (as in the reference code; 1.0 by default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..base import register_agent
from .pairs import PairAgent, PairConfig


@dataclass
class RefuelConfig(PairConfig):
    eta: float = 1.0
    """Scale of the return difference the log-ratio difference regresses onto (negative: the target negated, a
    control that must make the policy worse)."""

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.eta, bool) or not isinstance(self.eta, (int, float)) or not math.isfinite(self.eta):
            raise ValueError(f"eta must be a finite number, got {self.eta!r}")


def refuel_loss(logp_a, logp_b, old_a, old_b, returns, eta: float) -> torch.Tensor:
    """The squared regression of the relative log-ratio onto eta times the relative return."""
    return (((logp_a - old_a) - (logp_b - old_b)) - eta * (returns[:, 0] - returns[:, 1])).pow(2).mean()


@register_agent("refuel")
class RefuelAgent(PairAgent):
    name = "refuel"
    Config = RefuelConfig

    def loss(self, logp_a, logp_b, old_a, old_b, returns):
        return refuel_loss(logp_a, logp_b, old_a, old_b, returns, self.config.eta), {}
