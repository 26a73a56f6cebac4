"""The batched dialogue state machine. Single, vector and PettingZoo environments are views of it.

:class:`DialogueMachine` is public API: it is what a learning algorithm drives when the Gymnasium
step API is too narrow (branching K responses from one state, rolling dialogues in to different turns).
Get it from any env of this package with :func:`machine_of` (``env.unwrapped.machine``)::

    machine = refuel_env.machine_of(env)
    states = machine.new_states(seeds=[1, 2, 3])                 # create N dialogues
    results = machine.step(states, ["Is it a mammal?"] * 3)      # step a batch: ONE user call, ONE judge call
    a, b = machine.branch(states[0], 2)                          # independent copies of one state

One :meth:`DialogueMachine.step` call advances N dialogues with ONE call to the user simulator and ONE
call to the judge. Every step is transactional: if validation, the user or the judge fails, every
state is rolled back and the error says what to do.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from . import backends, judges, tasks, users  # noqa: F401  (register the built-in components)
from .registry import JUDGES, TASKS, USERS
from .types import DialogueState, JudgeScore, UserTurn


class EnvError(RuntimeError):
    """Base class of the environment's errors."""


class UserSimulatorError(EnvError):
    pass


class JudgeError(EnvError):
    pass


@dataclass
class StepResult:
    reward: float
    terminated: bool
    truncated: bool
    info: dict = field(default_factory=dict)


def build_component(registry, spec, task, kind: str, **kwargs):
    """A component from a name (``"scripted"``/``"rule"`` ask the task for its own) or an object."""
    if isinstance(spec, str):
        if kind == "user" and spec == "scripted":
            return task.make_scripted_user(**kwargs)
        if kind == "judge" and spec == "rule":
            return task.make_rule_judge(**kwargs)
        if spec not in registry:
            own = "scripted" if kind == "user" else "rule"
            raise KeyError(f"unknown {kind} {spec!r}; known: {', '.join([own] + registry.names())} ({own!r} is the task's "
                           f"own). Pass one of these names, an object with a "
                           f"{'reply(states)' if kind == 'user' else 'score(states)'} method, or register your own with "
                           f"refuel_env.registry.{kind.upper()}S.register(name)")
        return registry.get(spec)(task=task, **kwargs)
    if not hasattr(spec, "reply" if kind == "user" else "score"):
        raise TypeError(f"{kind}={spec!r} is neither a registered name nor an object with a "
                        f"{'reply(states)' if kind == 'user' else 'score(states)'} method")
    return spec


_ATOMS = (str, int, float, bool, type(None))


def _copy_plain(x: Any) -> Any:
    """A deep copy of plain data (dicts, lists and tuples of str/int/float/bool/None), several times faster
    than ``copy.deepcopy`` for the small task memories snapshotted at every step; anything else is deep-copied."""
    t = type(x)
    if t in _ATOMS:
        return x
    if t is dict:
        return {k: _copy_plain(v) for k, v in x.items()}
    if t is list:
        return [_copy_plain(v) for v in x]
    if t is tuple:
        return tuple(_copy_plain(v) for v in x)
    return copy.deepcopy(x)


class DialogueMachine:
    """The batched dialogue state machine: dialogues are :class:`DialogueState` values, and one
    :meth:`step` advances any batch of them (one user call, one judge call).

    Args:
        task: task name (see ``refuel_env.registry.TASKS.names()``) or a task object.
        task_kwargs: keyword arguments of the task family (e.g. ``n_items``, ``noise``).
        user: user simulator name or object (``"scripted"`` is the task's own).
        judge: judge name or object (``"rule"`` is the task's own).
        max_turns: H_max; overrides the task's.
        horizon: ``"uniform"`` (H uniform in 1..H_max, as in the paper), ``"fixed"`` (H = H_max), or an int.
        reward_mode: ``"terminal"`` (the judge's score at the horizon, on the last step) or ``"per_turn"``
            (the change in the judge's score at each turn; the rewards sum to the final score).
        max_message_chars: longest assistant message ``step`` accepts (longer is an error); user
            replies longer than this are clipped and flagged in ``info``.
        max_total_chars: conversation length at which the episode is truncated.
    """

    def __init__(self, task: Any = "guess-item-v0", task_kwargs: dict | None = None, user: Any = "scripted",
                 judge: Any = "rule", max_turns: int | None = None, horizon: Any = "uniform",
                 reward_mode: str = "terminal", max_message_chars: int = 1024, max_total_chars: int = 16384,
                 user_kwargs: dict | None = None, judge_kwargs: dict | None = None):
        task_kwargs = dict(task_kwargs or {})
        if max_turns is not None and isinstance(task, str):
            task_kwargs["max_turns"] = max_turns
        self.task = TASKS.make(task, **task_kwargs)
        if max_turns is not None and not isinstance(task, str) and self.task.max_turns != max_turns:
            raise ValueError(f"max_turns={max_turns} disagrees with the task object's max_turns={self.task.max_turns}")
        self.max_turns = int(self.task.max_turns)
        if reward_mode not in ("terminal", "per_turn"):
            raise ValueError(f"reward_mode must be 'terminal' or 'per_turn', got {reward_mode!r}")
        if not (horizon in ("uniform", "fixed") or (isinstance(horizon, int) and 1 <= horizon <= self.max_turns)):
            raise ValueError(f"horizon must be 'uniform', 'fixed' or an int in 1..{self.max_turns}, got {horizon!r}")
        if max_message_chars < 1 or max_total_chars < max_message_chars:
            raise ValueError("need 1 <= max_message_chars <= max_total_chars")
        self.horizon, self.reward_mode = horizon, reward_mode
        self.max_message_chars, self.max_total_chars = int(max_message_chars), int(max_total_chars)
        self.user = build_component(USERS, user, self.task, "user", **(user_kwargs or {}))
        self.judge = build_component(JUDGES, judge, self.task, "judge", **(judge_kwargs or {}))
        self.stats = {"user_calls": 0, "judge_calls": 0, "user_seconds": 0.0, "judge_seconds": 0.0, "steps": 0}

    # ------------------------------------------------------------------ episodes
    def sample_horizon(self, rng: np.random.Generator) -> int:
        if self.horizon == "uniform":
            return int(rng.integers(1, self.max_turns + 1))
        return self.max_turns if self.horizon == "fixed" else int(self.horizon)

    def new_state(self, episode_seed: int, options: dict | None = None) -> DialogueState:
        """A fresh dialogue, or one given by ``options``: ``state`` (restore), ``prefix`` (start from
        messages), ``horizon`` (force H), ``goal`` (force the hidden goal), ``split`` ("train"/"eval")."""
        options = options or {}
        if "state" in options:
            s = options["state"]
            s = DialogueState.from_dict(s) if isinstance(s, dict) else s
            if not isinstance(s, DialogueState):
                raise TypeError("options['state'] must be a DialogueState or its to_dict() form")
            if s.task_id != self.task.task_id:
                raise ValueError(f"state is from task {s.task_id!r}, this env runs {self.task.task_id!r}")
            return s.copy()
        split = options.get("split", "train")
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        rng = np.random.default_rng([episode_seed, 0, 0 if split == "train" else 1])
        horizon = int(options.get("horizon") or self.sample_horizon(rng))
        if not 1 <= horizon <= self.max_turns:
            raise ValueError(f"horizon {horizon} outside 1..{self.max_turns}")
        messages, goal, memory = self.task.new_episode(rng, horizon, split=split)
        if "goal" in options:
            goal = options["goal"]
        s = DialogueState(self.task.task_id, messages, goal, horizon,
                          user_rng=np.random.default_rng([episode_seed, 1]),
                          judge_rng=np.random.default_rng([episode_seed, 2]), memory=memory)
        if "prefix" in options:
            prefix = [dict(m) for m in options["prefix"]]
            if not prefix or prefix[-1]["role"] != "user" or any(m.get("role") not in ("system", "user", "assistant") for m in prefix):
                raise ValueError("options['prefix'] must be a list of chat messages that ends with a user message")
            s.messages = prefix
            s.turn = sum(m["role"] == "assistant" for m in prefix)
            if "horizon" not in options:
                s.horizon = max(s.horizon, s.turn + 1)
            if not s.turn < s.horizon <= self.max_turns:
                raise ValueError(f"the prefix has {s.turn} assistant turns, so the horizon must be in "
                                 f"{s.turn + 1}..{self.max_turns}; got {s.horizon}")
            s.memory = self.task.memory_from_prefix(prefix, s.goal)
        return s

    def new_states(self, seeds: Sequence[int], options: dict | None = None,
                   per_dialogue: Sequence[dict] | None = None) -> list[DialogueState]:
        """N fresh dialogues, one per episode seed; ``options`` as in :meth:`new_state` (for all of them),
        ``per_dialogue``: options of each one (e.g. ``[{"horizon": 2}, {"horizon": 4}]``)."""
        if per_dialogue is not None and len(per_dialogue) != len(seeds):
            raise ValueError(f"got {len(per_dialogue)} per-dialogue options for {len(seeds)} seeds")
        return [self.new_state(int(seed), {**(options or {}), **(per_dialogue[i] if per_dialogue else {})})
                for i, seed in enumerate(seeds)]

    @staticmethod
    def branch(state: DialogueState, k: int = 2) -> list[DialogueState]:
        """``k`` independent deep copies of ``state`` (same hidden goal, same user and judge random states):
        stepping one never touches the others or the original."""
        return [state.copy() for _ in range(int(k))]

    def observation(self, s: DialogueState) -> dict:
        return {"messages": tuple({"role": m["role"], "content": m["content"]} for m in s.messages), "turn": s.turn}

    # ------------------------------------------------------------------ stepping
    def validate(self, states: Sequence[DialogueState], actions: Sequence[Any]) -> None:
        if len(states) != len(actions):
            raise ValueError(f"got {len(actions)} actions for {len(states)} dialogues")
        for i, (s, a) in enumerate(zip(states, actions)):
            where = f" (dialogue {i})" if len(states) > 1 else ""
            if s.done:
                raise EnvError(f"step() called after the episode ended{where}; call reset() first")
            if not isinstance(a, str):
                raise TypeError(f"the action must be the assistant's message as a str, got {type(a).__name__}{where}; "
                                "decode token ids with your tokenizer first")
            if len(a) > self.max_message_chars:
                raise ValueError(f"assistant message of {len(a)} characters is longer than max_message_chars="
                                 f"{self.max_message_chars}{where}; truncate it or make the env with a larger max_message_chars")

    def validate_user_replies(self, states: Sequence[DialogueState], user_replies: Sequence[Any]) -> list:
        """Check replies from an external user (see :meth:`step`); return them as ``UserTurn`` or None."""
        if len(user_replies) != len(states):
            raise ValueError(f"got {len(user_replies)} user replies for {len(states)} dialogues; pass one per "
                             "dialogue (None where the simulator should reply)")
        out = []
        for i, (s, r) in enumerate(zip(states, user_replies)):
            where = f" (dialogue {i})" if len(states) > 1 else ""
            if r is None:
                out.append(None)
                continue
            if isinstance(r, str):
                r = UserTurn(r)
            if not isinstance(r, UserTurn) or not isinstance(r.content, str):
                raise TypeError(f"a user reply must be a str, a UserTurn or None, got {type(r).__name__}{where}")
            if len(r.content) > self.max_message_chars:
                raise ValueError(f"user message of {len(r.content)} characters is longer than max_message_chars="
                                 f"{self.max_message_chars}{where}; shorten it or make the env with a larger max_message_chars")
            if s.turn + 1 >= s.horizon:
                raise ValueError(f"dialogue{where} reaches its horizon with this step, so no user reply follows it; "
                                 "pass None for it")
            out.append(r)
        return out

    def step(self, states: Sequence[DialogueState], actions: Sequence[str],
             user_replies: Sequence[Any] | None = None) -> list[StepResult]:
        """Advance each dialogue by one assistant turn (and the user's reply, unless the dialogue ends).

        ``user_replies`` (optional, one per dialogue): ``None`` where the user simulator replies, or the
        reply of an external user (a learned or human user in the user seat, e.g. from the PettingZoo
        view) as a ``str`` or :class:`UserTurn` (``end=True`` closes the dialogue). An external reply is
        used verbatim and the task memory is rebuilt from the text with ``task.memory_from_prefix``. The
        simulator is called once, for the dialogues that have no external reply.
        """
        self.validate(states, actions)
        replies_in = None if user_replies is None else self.validate_user_replies(states, user_replies)
        saved = [(len(s.messages), s.turn, _copy_plain(s.memory), s.user_rng.bit_generator.state,
                  s.judge_rng.bit_generator.state, len(s.scores), s.done, s.ended_by_user) for s in states]
        try:
            return self._step(states, actions, replies_in)
        except BaseException:
            for s, (n, turn, mem, urng, jrng, ns, done, ended) in zip(states, saved):
                del s.messages[n:]
                del s.scores[ns:]
                s.turn, s.memory, s.done, s.ended_by_user = turn, mem, done, ended
                s.user_rng.bit_generator.state, s.judge_rng.bit_generator.state = urng, jrng
            raise

    def _call(self, component, method: str, batch: list, kind: str, error, fix: str, item: str, what: str) -> list:
        """One batched call of a user simulator or judge: timed, counted, errors wrapped, count checked."""
        t0 = time.perf_counter()
        name = type(component).__name__
        try:
            out = getattr(component, method)(batch)
        except Exception as e:
            raise error(f"{kind} {name} failed: {e!r}. The env state is unchanged; {fix}") from e
        self.stats[f"{kind}_seconds"] += time.perf_counter() - t0
        self.stats[f"{kind}_calls"] += 1
        if not isinstance(out, list) or len(out) != len(batch):
            got = len(out) if hasattr(out, "__len__") else repr(out)
            raise error(f"{kind} {name} returned {got} {what} for {len(batch)} dialogues; {method}() must "
                        f"return one {item} each (the step was rolled back)")
        return out

    def _step(self, states: Sequence[DialogueState], actions: Sequence[str],
              replies_in: Sequence[UserTurn | None] | None = None) -> list[StepResult]:
        for s, a in zip(states, actions):
            s.messages.append({"role": "assistant", "content": a})
            s.turn += 1
        # ONE batched user call for every dialogue that goes on and has no external reply
        cont = [i for i, s in enumerate(states) if s.turn < s.horizon]
        replies = {}
        if replies_in is not None:
            for i in cont:
                r = replies_in[i]
                if r is not None:  # an external user: its text is the truth, the memory follows from it
                    s = states[i]
                    s.memory = self.task.memory_from_prefix(s.messages + [{"role": "user", "content": r.content}], s.goal)
                    replies[i] = r
            cont = [i for i in cont if i not in replies]
        if cont:
            out = self._call(self.user, "reply", [states[i] for i in cont], "user", UserSimulatorError,
                             "retry step() with the same action, or fix the simulator", "UserTurn", "replies")
            bad = [type(r).__name__ for r in out if not isinstance(r, UserTurn)]
            if bad:
                raise UserSimulatorError(f"user simulator returned {bad[0]} where a UserTurn was expected; reply() must "
                                         "return refuel_env.UserTurn objects (the step was rolled back)")
            replies.update(zip(cont, out))
        # ONE batched judge call, on the dialogues as they stand after the assistant turn
        scores = self._call(self.judge, "score", list(states), "judge", JudgeError, "retry step() or fix the judge",
                            "JudgeScore", "scores")
        results = []
        for i, (s, js) in enumerate(zip(states, scores)):
            if not isinstance(js, JudgeScore) or not math.isfinite(js.value):
                raise JudgeError(f"judge {type(self.judge).__name__} returned {getattr(js, 'value', js)!r} for dialogue {i}; "
                                 "a judge must return a finite JudgeScore (the step was rolled back)")
            prev = s.scores[-1] if s.scores else 0.0
            s.scores.append(float(js.value))
            info = {"turn": s.turn, "horizon": s.horizon, "score": float(js.value), "scores": list(s.scores),
                    "judge": {"components": dict(js.components), "provenance": dict(js.provenance)},
                    "cost": {**js.cost}}
            reply = replies.get(i)
            if reply is not None:
                text = reply.content if isinstance(reply.content, str) else str(reply.content)
                if len(text) > self.max_message_chars:
                    text, info["user_clipped"] = text[: self.max_message_chars], True
                s.messages.append({"role": "user", "content": text})
                for k, v in reply.cost.items():
                    info["cost"][k] = info["cost"].get(k, 0) + v
                s.ended_by_user = bool(reply.end)
            terminated = s.turn >= s.horizon or s.ended_by_user
            truncated = not terminated and sum(len(m["content"]) for m in s.messages) > self.max_total_chars
            s.done = terminated or truncated
            info["ended_by_user"] = s.ended_by_user
            if self.reward_mode == "per_turn":
                reward = float(js.value) - prev
            else:
                reward = float(js.value) if s.done else 0.0
            results.append(StepResult(reward, terminated, truncated, info))
        self.stats["steps"] += 1
        return results


def machine_of(env: Any) -> DialogueMachine:
    """The :class:`DialogueMachine` behind a single, vector, PettingZoo or wrapped env of this package
    (``env.unwrapped.machine``)."""
    for obj in (env, getattr(env, "unwrapped", None)):
        machine = getattr(obj, "machine", None)
        if isinstance(machine, DialogueMachine):
            return machine
    raise TypeError(f"{type(env).__name__} is not a refuel_env environment; pass gym.make('RefuelDialogue-v0', ...), "
                    "gym.make_vec('RefuelDialogue-v0', ...) or refuel_env.multiagent.env(...)")
