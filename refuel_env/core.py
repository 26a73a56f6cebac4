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

import math
import time
from typing import Any, Sequence

import numpy as np

from . import backends, judges, tasks, users  # noqa: F401  (register the built-in components)
from . import rng as _rng
from .infos import StepColumns, StepResult, step_results
from .registry import JUDGES, TASKS, USERS
from .types import DialogueState, JudgeScore, UserTurn
from .validation import (MAX_CHARS, MAX_TURNS, as_choice, as_dict, as_int, as_list, as_text, check_new_state_options,
                         check_user_turn, judge_value)



class EnvError(RuntimeError):
    """Base class of the environment's errors."""


class UserSimulatorError(EnvError):
    pass


class JudgeError(EnvError):
    pass


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
        task_kwargs = as_dict(task_kwargs, "task_kwargs", "pass the task family's keyword arguments as a dict")
        if max_turns is not None:
            max_turns = as_int(max_turns, "max_turns", 1, MAX_TURNS)
            if isinstance(task, str):
                task_kwargs["max_turns"] = max_turns
        if not isinstance(task, str) and not all(hasattr(task, a) for a in ("task_id", "max_turns")):
            raise TypeError(f"task={task!r} is neither a registered name ({', '.join(TASKS.names())}) nor a task object "
                            "(with task_id, max_turns, new_episode, ...; see refuel_env.protocols.Task)")
        self.task = TASKS.make(task, **task_kwargs)
        if max_turns is not None and not isinstance(task, str) and self.task.max_turns != max_turns:
            raise ValueError(f"max_turns={max_turns} disagrees with the task object's max_turns={self.task.max_turns}")
        self.max_turns = as_int(self.task.max_turns, "the task's max_turns", 1, MAX_TURNS)
        self.reward_mode = as_choice(reward_mode, "reward_mode", ("terminal", "per_turn"))
        if isinstance(horizon, str) and horizon in ("uniform", "fixed"):
            self.horizon = str.__str__(horizon)
        elif isinstance(horizon, (int, np.integer)) and not isinstance(horizon, (bool, np.bool_)) \
                and 1 <= horizon <= self.max_turns:
            self.horizon = int(horizon)
        else:
            raise ValueError(f"horizon must be 'uniform', 'fixed' or an int in 1..{self.max_turns}, got {horizon!r}")
        self.max_message_chars = as_int(max_message_chars, "max_message_chars", 1, MAX_CHARS)
        self.max_total_chars = as_int(max_total_chars, "max_total_chars", self.max_message_chars, MAX_CHARS,
                                      "need 1 <= max_message_chars <= max_total_chars")
        self.user = build_component(USERS, user, self.task, "user", **as_dict(user_kwargs, "user_kwargs"))
        self.judge = build_component(JUDGES, judge, self.task, "judge", **as_dict(judge_kwargs, "judge_kwargs"))
        self.stats = {"user_calls": 0, "judge_calls": 0, "user_seconds": 0.0, "judge_seconds": 0.0, "steps": 0}

    # ------------------------------------------------------------------ episodes
    def sample_horizon(self, rng: np.random.Generator) -> int:
        if self.horizon == "uniform":
            return int(rng.integers(1, self.max_turns + 1))
        return self.max_turns if self.horizon == "fixed" else int(self.horizon)

    def check_options(self, options: Any, name: str = "options") -> dict:
        """``options`` of :meth:`new_state`, every value checked and in canonical form (a restored ``state`` as a
        checked :class:`DialogueState`, a ``prefix`` as new message dicts); raises before anything is used."""
        return check_new_state_options(options, self.task, self.max_turns, self.max_total_chars, name)

    def new_state(self, episode_seed: int, options: dict | None = None) -> DialogueState:
        """A fresh dialogue, or one given by ``options``: ``state`` (restore), ``prefix`` (start from
        messages), ``horizon`` (force H), ``goal`` (force the hidden goal), ``split`` ("train"/"eval").
        Everything is checked before anything is built: a bad option raises and changes nothing."""
        return self.new_states([episode_seed], options)[0]

    def new_states(self, seeds: Sequence[int], options: dict | None = None,
                   per_dialogue: Sequence[dict] | None = None) -> list[DialogueState]:
        """N fresh dialogues, one per episode seed; ``options`` as in :meth:`new_state` (for all of them),
        ``per_dialogue``: options of each one (e.g. ``[{"horizon": 2}, {"horizon": 4}]``)."""
        seeds = [x if type(x) is int and x >= 0 else as_int(x, f"seeds[{i}]", 0, None, "episode seeds are non-negative ints")
                 for i, x in enumerate(as_list(seeds, "seeds", what="seeds"))]
        if per_dialogue is not None:
            per_dialogue = as_list(per_dialogue, "per_dialogue", what="option dicts")
            if len(per_dialogue) != len(seeds):
                raise ValueError(f"got {len(per_dialogue)} per-dialogue options for {len(seeds)} seeds")
            common = as_dict(options, "options")
            opts = [self.check_options({**common, **as_dict(p, f"per_dialogue[{i}]")}, f"per_dialogue[{i}]")
                    for i, p in enumerate(per_dialogue)]
        else:
            opts = [self.check_options(options)] * len(seeds)
        fresh = [i for i, o in enumerate(opts) if "state" not in o]
        rngs, users, judges = _rng.dialogue_rngs([seeds[i] for i in fresh],
                                                 [0 if opts[i]["split"] == "train" else 1 for i in fresh])
        out: list[Any] = [o["state"].copy() if "state" in o else None for o in opts]
        for k, i in enumerate(fresh):
            out[i] = self._fresh(opts[i], rngs[k], users[k], judges[k])
        return out

    def _fresh(self, opts: dict, rng: np.random.Generator, user_rng: Any, judge_rng: Any) -> DialogueState:
        """A new dialogue from checked options and its generators (see :func:`refuel_env.rng.dialogue_rngs`)."""
        horizon = opts.get("horizon") or self.sample_horizon(rng)
        messages, goal, memory = self.task.new_episode(rng, horizon, split=opts["split"])
        if "goal" in opts:
            goal = opts["goal"]
        s = DialogueState._new(self.task.task_id, messages, goal, horizon, user_rng, judge_rng, memory)
        if "prefix" in opts:
            s.messages = [dict(m) for m in opts["prefix"]]
            s.turn = sum(m["role"] == "assistant" for m in s.messages)
            if opts.get("horizon") is None:
                s.horizon = max(s.horizon, s.turn + 1)
            s.memory = self.task.memory_from_prefix(s.messages, s.goal)
        return s

    @staticmethod
    def branch(state: DialogueState, k: int = 2) -> list[DialogueState]:
        """``k`` independent deep copies of ``state`` (same hidden goal, same user and judge random states):
        stepping one never touches the others or the original."""
        if not isinstance(state, DialogueState):
            raise TypeError(f"branch() takes a DialogueState, got {type(state).__name__}")
        return [state.copy() for _ in range(as_int(k, "k", 0, None))]

    def observation(self, s: DialogueState) -> dict:
        return {"messages": tuple([{"role": m["role"], "content": m["content"]} for m in s.messages]), "turn": s.turn}

    # ------------------------------------------------------------------ stepping
    def validate(self, states: Sequence[DialogueState], actions: Sequence[Any]) -> list[str]:
        """Check a batch of actions (and that no dialogue has ended); return them as plain ``str``. Changes nothing."""
        if not isinstance(actions, (list, tuple)):
            actions = as_list(actions, "actions", what="actions")
        if len(states) != len(actions):
            raise ValueError(f"got {len(actions)} actions for {len(states)} dialogues")
        limit, out = self.max_message_chars, []
        for i, (s, a) in enumerate(zip(states, actions)):
            if type(a) is not str or not a.isascii() or len(a) > limit or type(s) is not DialogueState or s.done:
                a = self._check_action(states, i, a)
            out.append(a)
        return out

    def _check_action(self, states: Sequence[DialogueState], i: int, a: Any) -> str:
        where, s = (f" (dialogue {i})" if len(states) > 1 else ""), states[i]
        if not isinstance(s, DialogueState):
            raise TypeError(f"states[{i}] is a {type(s).__name__}, not a DialogueState; make states with "
                            "new_state()/new_states()")
        if s.done:
            raise EnvError(f"step() called after the episode ended{where}; call reset() first")
        if not isinstance(a, str):
            raise TypeError(f"the action must be the assistant's message as a str, got {type(a).__name__}{where}; "
                            "decode token ids with your tokenizer first")
        a = as_text(a, f"the assistant's message{where}")
        if len(a) > self.max_message_chars:
            raise ValueError(f"assistant message of {len(a)} characters is longer than max_message_chars="
                             f"{self.max_message_chars}{where}; truncate it or make the env with a larger max_message_chars")
        return a

    def validate_user_replies(self, states: Sequence[DialogueState], user_replies: Sequence[Any]) -> list:
        """Check replies from an external user (see :meth:`step`); return them as ``UserTurn`` or None."""
        user_replies = as_list(user_replies, "user_replies", what="replies")
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
            r = check_user_turn(r, f"the user's reply{where}", TypeError, ValueError)
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
        return step_results(self.step_columns(states, actions, user_replies))

    def step_columns(self, states: Sequence[DialogueState], actions: Sequence[str],
                     user_replies: Sequence[Any] | None = None) -> StepColumns:
        """:meth:`step`, with its outcome as columns (one list per quantity) rather than one StepResult per
        dialogue: what the vector env builds its batched infos from."""
        actions = self.validate(states, actions)
        replies_in = None if user_replies is None else self.validate_user_replies(states, user_replies)
        # the memory needs no copy when neither component mutates it in place (see protocols.UserSimulator)
        copy_memory = not (getattr(self.user, "replaces_memory", False) is True
                           and getattr(self.judge, "replaces_memory", False) is True)
        saved = [s._checkpoint(copy_memory) for s in states]
        try:
            return self._step(states, actions, replies_in)
        except BaseException:
            for s, checkpoint in zip(reversed(states), reversed(saved)):
                s._rollback(checkpoint)
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
              replies_in: Sequence[UserTurn | None] | None = None) -> StepColumns:
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
            for i, r in zip(cont, out):
                if type(r) is not UserTurn or type(r.content) is not str or not r.content.isascii() \
                        or type(r.end) is not bool or type(r.cost) is not dict:
                    if not isinstance(r, UserTurn):
                        raise UserSimulatorError(f"user simulator returned {type(r).__name__} where a UserTurn was "
                                                 "expected; reply() must return refuel_env.UserTurn objects (the step "
                                                 "was rolled back)")
                    r = check_user_turn(r, f"user simulator {type(self.user).__name__}'s reply to dialogue {i} (the "
                                           "step was rolled back)", UserSimulatorError, UserSimulatorError)
                replies[i] = r
        # ONE batched judge call, on the dialogues as they stand after the assistant turn
        scores = self._call(self.judge, "score", list(states), "judge", JudgeError, "retry step() or fix the judge",
                            "JudgeScore", "scores")
        values = [js.value if type(js) is JudgeScore and type(js.value) is float and math.isfinite(js.value)
                  and type(js.components) is dict and type(js.provenance) is dict and type(js.cost) is dict
                  else judge_value(js, i, self.judge, JudgeError) for i, js in enumerate(scores)]
        per_turn, limit, total = self.reward_mode == "per_turn", self.max_message_chars, self.max_total_chars
        c = StepColumns(list(states), score=values, judged=scores)
        history, appended, clipped_, reward_, terminated_, truncated_, turn_, horizon_, ended_ = (
            c.scores, c.replies, c.clipped, c.reward, c.terminated, c.truncated, c.turn, c.horizon, c.ended_by_user)
        for i, (s, value) in enumerate(zip(states, values)):
            scores_i = s.scores
            prev = scores_i[-1] if scores_i else 0.0
            scores_i.append(value)
            reply, clipped = replies.get(i), False
            if reply is not None:
                text = reply.content
                if len(text) > limit:
                    text, clipped = text[:limit], True
                s.messages.append({"role": "user", "content": text})
                s.ended_by_user = reply.end
            turn, horizon, ended = s.turn, s.horizon, s.ended_by_user
            terminated = turn >= horizon or ended
            truncated = not terminated and sum([len(m["content"]) for m in s.messages]) > total
            s.done = done = terminated or truncated
            history.append(scores_i[:])
            appended.append(reply)
            clipped_.append(clipped)
            reward_.append(value - prev if per_turn else (value if done else 0.0))
            terminated_.append(terminated)
            truncated_.append(truncated)
            turn_.append(turn)
            horizon_.append(horizon)
            ended_.append(ended)
        self.stats["steps"] += 1
        return c


def machine_of(env: Any) -> DialogueMachine:
    """The :class:`DialogueMachine` behind a single, vector, PettingZoo or wrapped env of this package
    (``env.unwrapped.machine``)."""
    for obj in (env, getattr(env, "unwrapped", None)):
        machine = getattr(obj, "machine", None)
        if isinstance(machine, DialogueMachine):
            return machine
    raise TypeError(f"{type(env).__name__} is not a refuel_env environment; pass gym.make('RefuelDialogue-v0', ...), "
                    "gym.make_vec('RefuelDialogue-v0', ...) or refuel_env.multiagent.env(...)")
