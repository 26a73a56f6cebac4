"""The rows of the comparison: a label, a registered agent, and the agent's options.

A row is a declared configuration: ``agent_spec("dpo-online")`` is DPO with its pairs' contexts and responses
from the current policy. Any registered agent name is also a row (with its defaults).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any


@dataclass
class AgentSpec:
    """One row of the comparison: a label, a registered agent name, and its options."""

    label: str
    agent: str
    options: dict = field(default_factory=dict)


#: The paper's rows, by label. "pi_0" is the untrained reference itself.
STANDARD_ROWS: dict[str, AgentSpec] = {
    "pi_0": AgentSpec("pi_0", "pi_0"),
    "refuel": AgentSpec("refuel", "refuel"),
    "rebel": AgentSpec("rebel", "rebel", {"target": "last_turn", "rollin": "reference"}),
    "dpo-offline": AgentSpec("dpo-offline", "dpo", {"rollin": "reference", "responder": "reference"}),
    "dpo-online": AgentSpec("dpo-online", "dpo", {"rollin": "current", "responder": "current"}),
    "ppo": AgentSpec("ppo", "ppo"),
}
BUILTIN_AGENTS = ("dpo", "ppo", "rebel", "refuel")
"""The agents :mod:`agents.algorithms` registers (``refuel list`` shows them without importing torch)."""
ALIASES = {"dpo": "dpo-offline", "reference": "pi_0", "pi0": "pi_0"}
DEFAULT_ROWS = ["pi_0", "refuel", "rebel", "dpo-offline", "dpo-online", "ppo"]


def agent_spec(item: Any) -> AgentSpec:
    """A row from a label ("refuel", "dpo-online", ...), any registered agent name, or a dict/AgentSpec."""
    if isinstance(item, AgentSpec):
        return item
    if isinstance(item, dict):
        if not isinstance(item.get("agent"), str) or not isinstance(item.get("options", {}), dict):
            raise TypeError(f"a row table needs agent = <a registered agent name> (and optionally label, and options "
                            f"as a table), got {item!r}")
        return AgentSpec(label=item.get("label", item["agent"]), agent=item["agent"], options=dict(item.get("options", {})))
    name = str(item).strip()
    name = ALIASES.get(name, name)
    if name in STANDARD_ROWS:
        return copy.deepcopy(STANDARD_ROWS[name])
    return AgentSpec(name, name)
