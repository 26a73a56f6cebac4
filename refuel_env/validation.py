"""Checks of everything that enters the environment: constructor arguments, reset options, saved states, actions.

Every check either returns the value in canonical form (a plain ``str`` for ``np.str_`` or a str subclass, a
Python ``int`` for ``np.int64``, a new list of new message dicts) or raises ``TypeError``/``ValueError`` with a
message that names the argument and says how to fix it. No check changes anything, so a caller that runs them
all before assigning anything is transactional: a refused call leaves the env exactly as it was.

What is refused, and why it matters:

- bools where numbers are expected (``horizon=True`` is not 1), floats where ints are expected (``2.7``
  turns are not 2), numbers out of range (``max_turns`` in 1..:data:`MAX_TURNS`);
- text that is not a ``str``, or that UTF-8 cannot encode (a lone surrogate, e.g. from a byte-level decoder:
  it would break the record/replay cache and every tokenizer downstream);
- chat messages that are not ``{"role": "system"|"user"|"assistant", "content": str}``;
- saved states whose parts disagree (a turn beyond the horizon, a goal the task does not have) or whose
  random state names anything but one of numpy's bit generators.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .rng import BIT_GENERATORS, LazyRng, freeze, from_state
from .types import ROLES, DialogueState, JudgeScore, UserTurn, copy_plain

MAX_TURNS = 1000
"""Largest H_max (``max_turns``) an env accepts."""
MAX_CHARS = 10_000_000
"""Largest ``max_message_chars`` / ``max_total_chars`` an env accepts (the action space samples up to this)."""
MAX_ENVS = 1_000_000
"""Largest ``num_envs`` of the vector env."""
NEW_STATE_OPTIONS = {
    "state": "a DialogueState or its to_dict() form, restored exactly",
    "prefix": "chat messages ending with a user message, to start from",
    "horizon": "H, an int in 1..max_turns (None: sampled)",
    "goal": "the user's hidden goal",
    "split": "'train' or 'eval'",
}
"""The options of ``DialogueMachine.new_state`` (and of the single env's and the PettingZoo env's ``reset``)."""
STATE_KEYS = ("task_id", "messages", "goal", "horizon", "turn", "user_rng", "judge_rng", "memory", "scores", "done",
              "ended_by_user")


def _kind(value: Any) -> str:
    return type(value).__name__


# ------------------------------------------------------------------------------------------ scalars
def as_int(value: Any, name: str, lo: int | None = None, hi: int | None = None, fix: str = "") -> int:
    """``value`` as a Python int in ``lo..hi``; bools, floats and strings are refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r} ({_kind(value)}){'; ' + fix if fix else ''}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        span = f"in {lo}..{hi}" if lo is not None and hi is not None else (f">= {lo}" if lo is not None else f"<= {hi}")
        raise ValueError(f"{name} must be an int {span}, got {value}{'; ' + fix if fix else ''}")
    return value


def as_real(value: Any, name: str, lo: float = -math.inf, hi: float = math.inf, hi_open: bool = False) -> float:
    """``value`` as a finite float in ``[lo, hi]`` (``[lo, hi)`` with ``hi_open``); bools and strings are refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r} ({_kind(value)})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if value < lo or value > hi or (hi_open and value == hi):
        raise ValueError(f"{name} must be in [{lo}, {hi}{')' if hi_open else ']'}, got {value}")
    return value


def as_bool(value: Any, name: str) -> bool:
    """``value`` as a bool; only ``True``/``False`` (or numpy's) are accepted: ``bool("no")`` is True."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r} ({_kind(value)})")
    return bool(value)


def as_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return str.__str__(value)


def utf8_problem(text: str) -> str | None:
    """None if ``text`` can be encoded as UTF-8, otherwise what is wrong with it and where."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"a lone surrogate {text[e.start]!r} (U+{ord(text[e.start]):04X}) at position {e.start}"
    return None


def as_text(value: Any, name: str, max_chars: int | None = None, fix: str = "") -> str:
    """``value`` as a plain ``str`` that UTF-8 can encode, of at most ``max_chars`` characters."""
    if type(value) is not str:
        if not isinstance(value, str):
            hint = "; decode token ids with your tokenizer first" if isinstance(value, (list, np.ndarray)) else ""
            raise TypeError(f"{name} must be a str, got {_kind(value)}{hint}{'; ' + fix if fix else ''}")
        value = str.__str__(value)  # np.str_ and other str subclasses are stored as plain str
    problem = utf8_problem(value)
    if problem:
        raise ValueError(f"{name} contains {problem}, which cannot be encoded as UTF-8; clean the text first, e.g. "
                         "text.encode('utf-8', 'replace').decode('utf-8')")
    if max_chars is not None and len(value) > max_chars:
        raise ValueError(f"{name} has {len(value)} characters, more than the {max_chars} allowed"
                         f"{'; ' + fix if fix else ''}")
    return value


def as_dict(value: Any, name: str, fix: str = "") -> dict:
    """``None`` as ``{}``, a mapping as a new dict; anything else is refused."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a dict or None, got {_kind(value)}{'; ' + fix if fix else ''}")
    return dict(value)


def as_list(value: Any, name: str, n: int | None = None, what: str = "entries") -> list:
    """A list, tuple, 1-D array or other sequence as a list (of ``n`` entries if given); a str is refused."""
    ok = isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.ndim == 1) or (
        isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray)))
    if not ok:
        raise TypeError(f"{name} must be a list of {n if n is not None else ''} {what}, got {_kind(value)}"
                        + (f" {value!r:.60}" if isinstance(value, (str, bytes)) else ""))
    out = list(value)
    if n is not None and len(out) != n:
        raise ValueError(f"{name} has {len(out)} {what} for {n} envs; pass exactly one per env")
    return out


# ------------------------------------------------------------------------------------------ conversations
def as_messages(value: Any, name: str, max_chars: int | None = None) -> list[dict]:
    """A conversation as a new list of new ``{"role", "content"}`` dicts (plain str values)."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of chat messages {{'role': ..., 'content': ...}}, got {_kind(value)}")
    out = []
    for i, m in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(m, Mapping):
            raise TypeError(f"{where} must be a chat message {{'role': ..., 'content': ...}}, got {_kind(m)}")
        if set(m) != {"role", "content"}:
            missing, extra = {"role", "content"} - set(m), set(m) - {"role", "content"}
            raise ValueError(f"{where} has keys {sorted(map(str, m))}; a chat message has exactly 'role' and 'content'"
                             + (f" (missing {sorted(missing)})" if missing else "")
                             + (f" (drop {sorted(map(str, extra))})" if extra else ""))
        role = m["role"]
        if not isinstance(role, str) or role not in ROLES:
            raise ValueError(f"{where}['role'] must be one of {', '.join(ROLES)}, got {role!r}")
        out.append({"role": str.__str__(role), "content": as_text(m["content"], f"{where}['content']", max_chars)})
    return out


# ------------------------------------------------------------------------------------------ options
def check_options(options: Any, allowed: Mapping[str, str], where: str = "reset") -> dict:
    """``options`` as a new dict; unknown keys are refused with the list of known ones (``allowed``: key -> meaning)."""
    options = as_dict(options, f"{where}(options=...)")
    unknown = [k for k in options if k not in allowed]
    if unknown:
        known = "; ".join(f"{k!r} ({v})" for k, v in allowed.items())
        raise ValueError(f"unknown {where} option(s) {', '.join(map(repr, unknown))}; known: {known}")
    return options


def as_seed(seed: Any, name: str = "seed") -> int | None:
    """None or a non-negative int (what ``np.random.default_rng`` takes)."""
    if seed is None or (type(seed) is int and seed >= 0):
        return seed
    return as_int(seed, name, 0, None, "pass a non-negative int, or None for a random seed")


# ------------------------------------------------------------------------------------------ saved states
def as_rng(value: Any, name: str) -> Any:
    """A random generator of a state: a ``np.random.Generator``, a not-yet-built :class:`~refuel_env.rng.LazyRng`,
    or a ``bit_generator.state`` dict of one of numpy's bit generators (returned as a LazyRng of its exact state)."""
    if isinstance(value, (np.random.Generator, LazyRng)):
        return freeze(value)  # an exact copy, built when first used
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a numpy Generator or its bit_generator.state dict, got {_kind(value)}")
    kind = value.get("bit_generator")
    if not isinstance(kind, str) or kind not in BIT_GENERATORS:
        raise ValueError(f"{name}['bit_generator'] must be one of {', '.join(BIT_GENERATORS)}, got {kind!r}; pass "
                         "the dict that DialogueState.to_dict() wrote")
    try:
        g = from_state(dict(value))
    except Exception as e:  # numpy raises TypeError, ValueError or KeyError for a malformed state
        raise ValueError(f"{name} is not a valid {kind} state ({type(e).__name__}: {e}); pass the dict that "
                         "DialogueState.to_dict() wrote") from None
    return LazyRng(saved=g.bit_generator.state)


def as_scores(value: Any, name: str) -> list[float]:
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of numbers, got {_kind(value)}")
    return [as_real(v, f"{name}[{i}]") for i, v in enumerate(value)]


def as_state(value: Any, name: str = "options['state']") -> DialogueState:
    """A new :class:`DialogueState` from a state or its ``to_dict()`` form, every field checked and copied (the
    random generators as exact lazy copies); the task-specific checks are :func:`check_state_for`'s."""
    if isinstance(value, DialogueState):
        d = {k: getattr(value, k) for k in STATE_KEYS if k not in ("user_rng", "judge_rng")}
        d["user_rng"], d["judge_rng"] = value.__dict__.get("_user_rng"), value.__dict__.get("_judge_rng")
    elif isinstance(value, Mapping):
        d = value
        missing, extra = [k for k in STATE_KEYS if k not in d], [k for k in d if k not in STATE_KEYS]
        if missing or extra:
            raise ValueError(f"{name} is not a DialogueState.to_dict() form: " + "; ".join(
                ([f"missing {missing}"] if missing else []) + ([f"unknown keys {extra}"] if extra else []))
                + "; pass env.get_state() or its to_dict()")
    else:
        raise TypeError(f"{name} must be a DialogueState or its to_dict() form, got {_kind(value)}")
    if not isinstance(d["task_id"], str):
        raise TypeError(f"{name}['task_id'] must be a str, got {_kind(d['task_id'])}")
    horizon = as_int(d["horizon"], f"{name}['horizon']", 1, MAX_TURNS)
    turn = as_int(d["turn"], f"{name}['turn']", 0, horizon, "a dialogue's turn is at most its horizon")
    scores = as_scores(d["scores"], f"{name}['scores']")
    done, ended = as_bool(d["done"], f"{name}['done']"), as_bool(d["ended_by_user"], f"{name}['ended_by_user']")
    if len(scores) > turn:
        raise ValueError(f"{name} has {len(scores)} scores for {turn} turns; there is at most one score per turn")
    if turn == horizon and not done:
        raise ValueError(f"{name} is at its horizon (turn {turn} of {horizon}) but not done; a dialogue at its "
                         "horizon is over (done=True)")
    if ended and not done:
        raise ValueError(f"{name} was ended by the user but is not done; set done=True or ended_by_user=False")
    memory = d["memory"]
    if not isinstance(memory, dict):
        raise TypeError(f"{name}['memory'] must be a dict, got {_kind(memory)}")
    return DialogueState(str.__str__(d["task_id"]), as_messages(d["messages"], f"{name}['messages']"),
                         copy_plain(d["goal"]), horizon, turn, as_rng(d["user_rng"], f"{name}['user_rng']"),
                         as_rng(d["judge_rng"], f"{name}['judge_rng']"), copy_plain(memory), scores, done, ended)


def check_goal(task: Any, goal: Any, name: str) -> Any:
    """The task's check of a hidden goal (``task.check_goal``; a task without one accepts any goal)."""
    check = getattr(task, "check_goal", None)
    if check is None:
        return goal
    try:
        out = check(goal)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{name}: {e}") from None
    return goal if out is None else out


def check_memory(task: Any, memory: Any, name: str) -> None:
    check = getattr(task, "check_memory", None)
    if not isinstance(memory, dict):
        raise TypeError(f"{name} must be a dict, got {_kind(memory)}")
    if check is not None:
        try:
            check(memory)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{name}: {e}") from None


def check_state_for(s: DialogueState, task: Any, max_turns: int, max_chars: int, name: str = "options['state']") -> None:
    """The checks of a (structurally checked) state that depend on the env: task, H_max, goal, memory, lengths."""
    if s.task_id != task.task_id:
        raise ValueError(f"{name} is from task {s.task_id!r}, this env runs {task.task_id!r}; restore it in an env "
                         f"made with task={s.task_id!r}")
    if s.horizon > max_turns:
        raise ValueError(f"{name}['horizon'] is {s.horizon}, more than this env's max_turns={max_turns}; restore it "
                         "in an env with a larger max_turns")
    for i, m in enumerate(s.messages):
        if len(m["content"]) > max_chars:
            raise ValueError(f"{name}['messages'][{i}] has {len(m['content'])} characters, more than this env's "
                             f"max_total_chars={max_chars}")
    s.goal = check_goal(task, s.goal, f"{name}['goal']")
    check_memory(task, s.memory, f"{name}['memory']")


def check_new_state_options(options: Any, task: Any, max_turns: int, max_chars: int, name: str = "options") -> dict:
    """The options of ``DialogueMachine.new_state``, every value checked and in canonical form: a restored ``state``
    as a new, checked :class:`DialogueState`, a ``prefix`` as new message dicts, ``split`` always present."""
    opts = check_options(options, NEW_STATE_OPTIONS)
    if "state" in opts:
        clash = [k for k in ("prefix", "horizon", "goal") if opts.get(k) is not None]
        if clash:
            raise ValueError(f"{name}['state'] restores the whole dialogue (its horizon and goal included); drop "
                             f"{', '.join(map(repr, clash))}, or edit the state itself")
        s = as_state(opts["state"], f"{name}['state']")
        check_state_for(s, task, max_turns, max_chars, f"{name}['state']")
        opts["state"] = s
    opts["split"] = as_choice(opts.get("split", "train"), f"{name}['split']", ("train", "eval"))
    if opts.get("horizon") is not None:
        opts["horizon"] = as_int(opts["horizon"], f"{name}['horizon']", 1, max_turns, f"this env's max_turns is {max_turns}")
    if "goal" in opts:
        opts["goal"] = check_goal(task, opts["goal"], f"{name}['goal']")
    if "prefix" in opts:
        prefix = as_messages(opts["prefix"], f"{name}['prefix']", max_chars)
        if not prefix or prefix[-1]["role"] != "user":
            raise ValueError(f"{name}['prefix'] must be a list of chat messages that ends with a user message")
        turn, h = sum(m["role"] == "assistant" for m in prefix), opts.get("horizon")
        if turn >= max_turns or (h is not None and h <= turn):
            raise ValueError(f"the prefix has {turn} assistant turns, so the horizon must be in {turn + 1}..{max_turns}; "
                             f"got {h if h is not None else f'max_turns={max_turns}'}")
        opts["prefix"] = prefix
    return opts


# ------------------------------------------------------------------------------------------ what components return
def check_user_turn(r: Any, name: str, type_error: type = TypeError, value_error: type = ValueError) -> UserTurn:
    """A UserTurn with plain-str content that UTF-8 can encode, a bool ``end`` and a dict of numbers ``cost``."""
    c = r.content
    if type(c) is str and c.isascii() and type(r.end) is bool and type(r.cost) is dict:
        return r
    if not isinstance(c, str):
        raise type_error(f"{name} has content of type {_kind(c)}; a UserTurn's content must be a str")
    problem = utf8_problem(c)
    if problem:
        raise value_error(f"{name} contains {problem}, which cannot be encoded as UTF-8; clean the text first")
    if not isinstance(r.end, (bool, np.bool_)):
        raise type_error(f"{name} has end={r.end!r}; a UserTurn's end must be True or False")
    if not isinstance(r.cost, Mapping) or not all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
                                                  for v in r.cost.values()):
        raise type_error(f"{name} has cost={r.cost!r}; a UserTurn's cost must be a dict of numbers")
    return UserTurn(str.__str__(c), bool(r.end), dict(r.cost))


def judge_value(js: Any, i: int, judge: Any, error: type) -> float:
    """The score of dialogue ``i`` in a judge's answer ``js``, once it is checked to be a JudgeScore with a finite
    value and dict parts; ``error`` (JudgeError) otherwise."""
    if type(js) is JudgeScore and type(js.value) is float and math.isfinite(js.value) and type(js.components) is dict \
            and type(js.provenance) is dict and type(js.cost) is dict:
        return js.value
    value = getattr(js, "value", js)
    if not isinstance(js, JudgeScore) or isinstance(value, (bool, np.bool_)) \
            or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
        raise error(f"judge {type(judge).__name__} returned {value!r} for dialogue {i}; "
                    "a judge must return a finite JudgeScore (the step was rolled back)")
    for part in ("components", "provenance", "cost"):
        if not isinstance(getattr(js, part), Mapping):
            raise error(f"judge {type(judge).__name__} returned a JudgeScore whose {part} is a "
                        f"{_kind(getattr(js, part))} for dialogue {i}; it must be a dict (the step was rolled back)")
    return float(value)
