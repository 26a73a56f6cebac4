"""The component protocols. Every method is batched: one call serves N dialogues.

Implementations are chosen by name through the registries in :mod:`refuel_env.registry`,
or passed as objects to the environment.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from .types import Conversation, DialogueState, JudgeScore, SamplingParams, UserTurn


@runtime_checkable
class Task(Protocol):
    """A family of episodes: opening messages, hidden goals, and the task's own components.

    ``task_id`` is versioned (``"guess-item-v0"``); ``max_turns`` is H_max. Every method below is called by
    the environment or the agents; a task that lacks a component raises a ValueError that says so.
    """

    task_id: str
    max_turns: int

    def new_episode(self, rng: np.random.Generator, horizon: int, split: str = "train") -> tuple[Conversation, Any, dict]:
        """Return (opening messages, hidden goal, initial memory) for a dialogue of ``horizon`` turns."""

    def memory_from_prefix(self, messages: Conversation, goal: Any) -> dict:
        """Rebuild the task memory for a dialogue that starts from a given prefix."""

    def check_goal(self, goal: Any) -> Any:
        """Return ``goal`` (in canonical form, e.g. a plain str) if it is a hidden goal this task can have, and
        raise a ValueError or TypeError that says which goals are valid otherwise. Called on ``reset`` options and
        restored states before anything is assigned (a task object without it accepts any goal)."""

    def check_memory(self, memory: dict) -> None:
        """Raise a ValueError or TypeError if ``memory`` is not a memory of this task (a restored state's);
        the env has already checked that it is a dict (a task object without it accepts any dict)."""

    def make_scripted_user(self, **kwargs: Any) -> "UserSimulator":
        """The task's own user simulator (``user="scripted"``)."""

    def make_rule_judge(self, **kwargs: Any) -> "Judge":
        """The task's own judge (``judge="rule"``)."""

    def make_backend(self, role: str) -> "Backend | None":
        """The text-generation back end of the task's ``"user"`` or ``"judge"`` model (None: it needs none)."""

    def expert_speaker(self, seed: int | None = None) -> Any:
        """A policy known to be good at the task (``act(conversations) -> list[str]``): the benchmark's upper
        reference and the source of its positive control; raises ValueError if the task has none."""

    def offline_speaker(self, seed: int | None = None) -> Any:
        """The behaviour policy of the task's offline data (an object with ``act(conversations) -> list[str]``),
        for roll-ins from offline dialogues (``rollin="offline"``); raises ValueError if the task has none."""


@runtime_checkable
class UserSimulator(Protocol):
    """Optional attribute ``replaces_memory = True``: the simulator never mutates a state's ``memory`` in place
    (it assigns a new dict when it changes it). When the user and the judge both say so, a step keeps the old
    memory by reference for its rollback instead of copying it. Leave it out if unsure: the default copies."""

    def reply(self, states: Sequence[DialogueState]) -> list[UserTurn]:
        """The user's next message for each dialogue (each ends with an assistant message).

        May advance each state's ``user_rng`` and update its ``memory``; must not touch ``messages``.
        """


@runtime_checkable
class Judge(Protocol):
    """Optional attribute ``replaces_memory = True``, as for :class:`UserSimulator` (a judge that only reads the
    memory may say so)."""

    def score(self, states: Sequence[DialogueState]) -> list[JudgeScore]:
        """Score each dialogue as it stands after its latest assistant turn."""

    def compare(self, states_a: Sequence[DialogueState], states_b: Sequence[DialogueState]) -> list[float]:
        """Probability that dialogue a is better than dialogue b (0.5 = tie), position-swapped where it matters."""


@runtime_checkable
class Backend(Protocol):
    """A text-generation back end: ``transformers``, vLLM, or an OpenAI-compatible server."""

    model_id: str

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams,
                 seeds: Sequence[int] | None = None) -> list[str]:
        """One assistant completion per conversation; same seeds and inputs give the same outputs."""
