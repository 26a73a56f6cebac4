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

from .rng import LazyRng, freeze

Message = dict[str, str]
Conversation = list[Message]
ROLES = ("system", "user", "assistant")
_ATOMS = (str, int, float, bool, type(None))


def copy_plain(x: Any) -> Any:
    """A deep copy of plain data (dicts, lists and tuples of str/int/float/bool/None), several times faster
    than ``copy.deepcopy`` for the small messages and task memories of a dialogue; anything else is deep-copied."""
    t = type(x)
    if t in _ATOMS:
        return x
    if t is dict:
        return {k: copy_plain(v) for k, v in x.items()}
    if t is list:
        return [copy_plain(v) for v in x]
    if t is tuple:
        return tuple(copy_plain(v) for v in x)
    return copy.deepcopy(x)


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
        """A deep copy: stepping the copy never touches the original (random states included; the copy's
        generators are exact lazy copies, built when first used)."""
        new = copy.copy(self)
        d = new.__dict__
        for k, v in d.items():
            d[k] = freeze(v) if k in _RNG_SLOTS else copy_plain(v)
        return new

    @classmethod
    def _new(cls, task_id: str, messages: Conversation, goal: Any, horizon: int, user_rng: Any, judge_rng: Any,
             memory: dict) -> "DialogueState":
        """A fresh state at turn 0, as ``DialogueState(...)`` makes it, without the dataclass machinery (the
        machine makes one per episode)."""
        s = object.__new__(cls)
        s.__dict__.update(task_id=task_id, messages=messages, goal=goal, horizon=horizon, turn=0, _user_rng=user_rng,
                          _judge_rng=judge_rng, memory=memory, scores=[], done=False, ended_by_user=False)
        return s

    def _checkpoint(self, copy_memory: bool = True) -> tuple:
        """What :meth:`_rollback` needs to undo one step of the machine (which only appends messages and scores,
        advances the turn and the random states, and updates the memory and the flags). A generator not built yet
        needs no saving; ``copy_memory=False`` when the user and the judge replace the memory rather than mutate it."""
        d = self.__dict__
        u, j = d["_user_rng"], d["_judge_rng"]
        return (len(self.messages), self.turn, copy_plain(self.memory) if copy_memory else self.memory, u,
                None if type(u) is LazyRng else u.bit_generator.state, j,
                None if type(j) is LazyRng else j.bit_generator.state, len(self.scores), self.done, self.ended_by_user)

    def _rollback(self, saved: tuple) -> None:
        n, turn, memory, u, ustate, j, jstate, n_scores, done, ended = saved
        del self.messages[n:]
        del self.scores[n_scores:]
        self.turn, self.memory, self.done, self.ended_by_user = turn, memory, done, ended
        for key, g, state in (("_user_rng", u, ustate), ("_judge_rng", j, jstate)):
            if state is not None:
                g.bit_generator.state = state
            self.__dict__[key] = g

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        for name in ("user_rng", "judge_rng"):  # pickles of versions without lazy generators
            if name in state:
                state[f"_{name}"] = state.pop(name)
        self.__dict__.update(state)

    @property
    def last_assistant(self) -> str:
        messages = self.messages
        if messages and messages[-1]["role"] == "assistant":
            return messages[-1]["content"]
        for m in reversed(messages):
            if m["role"] == "assistant":
                return m["content"]
        return ""

    def rng_state(self, name: str) -> dict:
        """``bit_generator.state`` of ``"user_rng"`` or ``"judge_rng"`` (a new dict; a generator not built yet stays so)."""
        g = self.__dict__[f"_{name}"]
        if type(g) is LazyRng:
            return copy.deepcopy(g.saved) if g.saved is not None else g.make().bit_generator.state
        return g.bit_generator.state

    def to_dict(self) -> dict:
        """JSON-serialisable form (random states as their bit-generator states)."""
        return {
            "task_id": self.task_id,
            "messages": copy.deepcopy(self.messages),
            "goal": self.goal,
            "horizon": self.horizon,
            "turn": self.turn,
            "user_rng": self.rng_state("user_rng"),
            "judge_rng": self.rng_state("judge_rng"),
            "memory": copy.deepcopy(self.memory),
            "scores": list(self.scores),
            "done": self.done,
            "ended_by_user": self.ended_by_user,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "DialogueState":
        """The state that :meth:`to_dict` wrote, every field checked (a malformed dict raises a ValueError or
        TypeError that names the field; only numpy's own bit generators are accepted)."""
        from .validation import as_state

        s = as_state(d, "state")
        if cls is not DialogueState:
            s.__class__ = cls
        return s


_RNG_SLOTS = ("_user_rng", "_judge_rng")


def _rng_property(name: str) -> property:
    key = f"_{name}"

    def get(self: DialogueState) -> np.random.Generator:
        g = self.__dict__[key]
        if type(g) is LazyRng:
            g = self.__dict__[key] = g.make()
        return g

    def set(self: DialogueState, value: Any) -> None:
        self.__dict__[key] = value

    return property(get, set, doc=f"The {name.split('_')[0]}'s random generator (built when first used).")


DialogueState.user_rng = _rng_property("user_rng")  # type: ignore[assignment]
DialogueState.judge_rng = _rng_property("judge_rng")  # type: ignore[assignment]


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
