"""agents: REFUEL, REBEL, DPO and PPO on one rollout-and-update interface.

    from agents import make_agent, register_agent, Agent, Policy

Layers (each imports only the ones above it):

- :mod:`agents.engine`: the model and rollout machinery (policy, chat turn masks, rollout engine, pi_0,
  the shared optimisation step, multi-process helpers);
- :mod:`agents.base`: the interface every algorithm implements, and the agent registry;
- :mod:`agents.algorithms`: REFUEL, REBEL, DPO, PPO (each reads as its paper's equation);
- :mod:`agents.harness`: the experiment front end and run loop (config, presets, builders, validation,
  plan, trainer, evaluation, benchmark, report, the ``refuel`` command).

Names are imported on first use, so that ``import agents.harness.cli`` (``refuel --help``) stays light.
"""

import importlib
import os

# On a small, busy CPU, OpenMP's busy-waiting threads make torch many times slower (measured: 20x on 2 cores
# under load); passive waiting costs nothing when the machine is idle. Only effective before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_EXPORTS = {"AGENTS": "base", "Agent": "base", "AgentConfig": "base", "Batch": "base", "make_agent": "base",
            "register_agent": "base", "agent_registry": "base", "Policy": "engine.policy"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'agents' has no attribute {name!r}")
