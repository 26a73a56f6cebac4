"""Public data types shared by the environment and its users.

A conversation is a list of chat messages ``{"role": "system"|"user"|"assistant", "content": str}``:
the format that ``transformers`` chat templates, vLLM and OpenAI-compatible servers all take.

A :class:`DialogueState` is the *whole* state of one dialogue: reading it and restoring it
(``env.get_state()`` / ``env.reset(options={"state": s})``) is how branching works.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Message = dict[str, str]
Conversation = list[Message]
ROLES = ("system", "user", "assistant")


@dataclass
class DialogueState:
    """Everything needed to continue a dialogue exactly as it would have gone on.

    Attributes:
        task_id: id of the task family that produced the episode.
        messages: the conversation so far (opening system/user messages included).
        goal: the user's hidden goal (task specific, e.g. the hidden item's name).
        horizon: H, the number of assistant turns after which the dialogue ends.
        turn: number of assistant turns taken so far (0 right after reset).
        user_rng: random state of the user simulator (answer noise, phrasing, LLM sampling seeds).
        judge_rng: random state of the judge (LLM judge sampling seeds).
        memory: task-specific structured record kept by the user simulator (e.g. the facts it revealed).
        scores: the judge's score of the dialogue after each assistant turn.
        done: True once the dialogue has terminated or been truncated.
        ended_by_user: True when the user simulator closed the dialogue before the horizon.
    """

    task_id: str
    messages: Conversation
    goal: Any
    horizon: int
    turn: int = 0
    user_rng: np.random.Generator = field(default_factory=np.random.default_rng)
    judge_rng: np.random.Generator = field(default_factory=np.random.default_rng)
    memory: dict = field(default_factory=dict)
    scores: list = field(default_factory=list)
    done: bool = False
    ended_by_user: bool = False

    def copy(self) -> "DialogueState":
        """A deep copy: stepping the copy never touches the original (random states included)."""
        return copy.deepcopy(self)

    @property
    def last_assistant(self) -> str:
        for m in reversed(self.messages):
            if m["role"] == "assistant":
                return m["content"]
        return ""

    def to_dict(self) -> dict:
        """JSON-serialisable form (random states as their bit-generator states)."""
        return {
            "task_id": self.task_id,
            "messages": copy.deepcopy(self.messages),
            "goal": self.goal,
            "horizon": self.horizon,
            "turn": self.turn,
            "user_rng": self.user_rng.bit_generator.state,
            "judge_rng": self.judge_rng.bit_generator.state,
            "memory": copy.deepcopy(self.memory),
            "scores": list(self.scores),
            "done": self.done,
            "ended_by_user": self.ended_by_user,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "DialogueState":
        def rng(state):
            g = np.random.Generator(getattr(np.random, state["bit_generator"])())
            g.bit_generator.state = state
            return g

        return cls(
            task_id=d["task_id"], messages=copy.deepcopy(d["messages"]), goal=d["goal"],
            horizon=int(d["horizon"]), turn=int(d["turn"]), user_rng=rng(d["user_rng"]),
            judge_rng=rng(d["judge_rng"]), memory=copy.deepcopy(d["memory"]),
            scores=list(d["scores"]), done=bool(d["done"]), ended_by_user=bool(d["ended_by_user"]),
        )


@dataclass
class UserTurn:
    """A user simulator's reply to one dialogue.

    ``end=True`` closes the dialogue before the horizon (e.g. the item was guessed).
    ``cost`` counts what the reply cost (calls, tokens, cache hits); it must be deterministic,
    because it goes into ``info`` and Gymnasium's determinism checks compare ``info``.
    """

    content: str
    end: bool = False
    cost: dict = field(default_factory=dict)


@dataclass
class JudgeScore:
    """A judge's score of one dialogue at its current turn.

    ``value`` is a finite float (a judge that produces NaN raises instead of returning it);
    ``components`` breaks it down; ``provenance`` says what scored it and how.
    """

    value: float
    components: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    cost: dict = field(default_factory=dict)


@dataclass
class SamplingParams:
    """Sampling parameters of a text-generation back end (one set for a whole batch)."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()

    def key(self) -> tuple:
        return (self.max_new_tokens, float(self.temperature), float(self.top_p), tuple(self.stop))
