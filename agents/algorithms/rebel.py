"""REBEL (single-turn): the REFUEL regression with the last turn's reward as target.

Earlier turns are fixed context; no continuation (h = H); the two responses come from the current policy. The
paper's baselines differ by where the context comes from: ``rollin="offline"`` (the task's offline dialogues:
REBEL-LT-OFFLINE), ``"reference"`` (pi_0 with the simulator: REBEL-LT-MIXED, the default here) or ``"current"``
(on-policy); REBEL-MT regresses on two whole dialogues from the same opening (``target="multi_turn",
rollin="none"``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..base import register_agent
from .refuel import RefuelAgent, RefuelConfig


@dataclass
class RebelConfig(RefuelConfig):
    target: str = "last_turn"
    rollin: str = "reference"


@register_agent("rebel")
class RebelAgent(RefuelAgent):
    name = "rebel"
    Config = RebelConfig
