"""agents: REFUEL, REBEL, DPO and PPO on one rollout-and-update interface.

    from agents import make_agent, register_agent
"""

import os

# On a small, busy CPU, OpenMP's busy-waiting threads make torch many times slower (measured: 20x on 2 cores
# under load); passive waiting costs nothing when the machine is idle. Only effective before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .base import AGENTS, Agent, AgentConfig, Batch, make_agent, register_agent  # noqa: E402

__all__ = ["AGENTS", "Agent", "AgentConfig", "Batch", "make_agent", "register_agent"]
