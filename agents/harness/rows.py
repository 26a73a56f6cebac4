"""The rows of the comparison: a label, a registered agent, and the agent's options.

A row is a declared configuration, validated by its agent's ``Config`` (contradictory options are refused):
``agent_spec("DPO-LT-MIXED")`` is DPO whose pairs' contexts are rolled in by pi_0 and whose two responses at the
last turn come from the current policy. Any registered agent name is also a row (with its defaults).

The paper's rows (REFUEL, arXiv 2410.04612): REFUEL; the last-turn baselines REBEL-LT-* and DPO-LT-* (the two
responses at the last turn H, earlier turns fixed context: from the task's offline dialogues, "OFFLINE", or
rolled in by pi_0, "MIXED"); the multi-turn baselines REBEL-MT and DPO-MT (the whole dialogue is one response,
pairs are two dialogues from the same opening); plus PPO and iterative online DPO (DPO-ONLINE). Controls prove
that the benchmark can see an effect: POSITIVE-CONTROL (pi_0 fine-tuned on the task expert's dialogues) and
NEGATIVE-CONTROL (REFUEL with its target negated). Reference rows are evaluated without training: pi_0 itself,
and EXPERT (the task's expert speaker, the upper reference).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

REFERENCE_ROWS = ("pi_0", "expert")
"""Agents that are evaluated, not trained: pi_0 itself and the task's expert speaker."""


@dataclass
class AgentSpec:
    """One row of the comparison: a label, a registered agent name, and its options."""

    label: str
    agent: str
    options: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    """Overrides of the env this row *trains* on (e.g. ``{"task_kwargs": {"graded": True}}``); every row is
    evaluated on the common env."""
    negate: tuple = ()
    """Options whose tuned value this row uses negated (the negative control: ``("eta",)``)."""
    tune_as: str | None = None
    """The row whose tuned settings this row takes (controls and variants are not tuned themselves)."""


LAST_TURN = {"target": "last_turn", "responder": "current"}
MULTI_TURN = {"target": "multi_turn", "rollin": "none", "responder": "current"}

#: The rows by label.
STANDARD_ROWS: dict[str, AgentSpec] = {r.label: r for r in [
    AgentSpec("pi_0", "pi_0"),
    AgentSpec("EXPERT", "expert"),
    AgentSpec("POSITIVE-CONTROL", "sft", {"speaker": "expert"}),
    AgentSpec("NEGATIVE-CONTROL", "refuel", {}, negate=("eta",), tune_as="REFUEL"),
    AgentSpec("REFUEL", "refuel", {"rollin": "current", "responder": "current", "target": "relative_future"}),
    AgentSpec("REBEL-LT-OFFLINE", "rebel", {**LAST_TURN, "rollin": "offline"}),
    AgentSpec("REBEL-LT-MIXED", "rebel", {**LAST_TURN, "rollin": "reference"}),
    AgentSpec("REBEL-MT", "rebel", MULTI_TURN),
    AgentSpec("DPO-LT-OFFLINE", "dpo", {**LAST_TURN, "rollin": "offline"}),
    AgentSpec("DPO-LT-MIXED", "dpo", {**LAST_TURN, "rollin": "reference"}),
    AgentSpec("DPO-MT", "dpo", MULTI_TURN),
    AgentSpec("DPO-ONLINE", "dpo", {**LAST_TURN, "rollin": "current"}),
    AgentSpec("PPO", "ppo"),
    # variants that raise the share of pairs with a learning signal: named rows, never silently REFUEL
    AgentSpec("REFUEL-GRADED", "refuel", {"rollin": "current", "responder": "current"},
              env={"task_kwargs": {"graded": True}}, tune_as="REFUEL"),
    AgentSpec("REFUEL-K4", "refuel", {"rollin": "current", "responder": "current", "continuations": 4},
              tune_as="REFUEL"),
]}
ALIASES = {"reference": "pi_0", "pi0": "pi_0", "informative": "EXPERT", "refuel": "REFUEL", "ppo": "PPO"}
PAPER_ROWS = ["pi_0", "EXPERT", "POSITIVE-CONTROL", "NEGATIVE-CONTROL", "REFUEL", "REBEL-LT-OFFLINE",
              "REBEL-LT-MIXED", "REBEL-MT", "DPO-LT-OFFLINE", "DPO-LT-MIXED", "DPO-MT", "DPO-ONLINE", "PPO"]
"""The comparison's rows: references, controls, REFUEL, the paper's baselines, PPO."""
DEFAULT_ROWS = ["pi_0", "REFUEL", "REBEL-LT-MIXED", "DPO-LT-MIXED", "DPO-ONLINE", "PPO"]
BUILTIN_AGENTS = ("dpo", "ppo", "rebel", "refuel", "sft")
"""The agents :mod:`agents.algorithms` registers (``refuel list`` shows them without importing torch)."""


def agent_spec(item: Any) -> AgentSpec:
    """A row from a label ("REFUEL", "DPO-LT-MIXED", ...), any registered agent name, or a dict/AgentSpec."""
    if isinstance(item, AgentSpec):
        return item
    if isinstance(item, dict):
        known = {"label", "agent", "options", "env", "negate", "tune_as"}
        bad = set(item) - known
        if bad or not isinstance(item.get("agent"), str) or not isinstance(item.get("options", {}), dict):
            raise ValueError(f"a row table takes {sorted(known)} (agent = <a registered agent name> required, options "
                             f"as a table), got {item!r}")
        return AgentSpec(label=item.get("label", item["agent"]), agent=item["agent"],
                         options=dict(item.get("options", {})), env=dict(item.get("env", {})),
                         negate=tuple(item.get("negate", ())), tune_as=item.get("tune_as"))
    name = str(item).strip()
    name = ALIASES.get(name, name)
    if name in STANDARD_ROWS:
        return copy.deepcopy(STANDARD_ROWS[name])
    return AgentSpec(name, name)
