"""Checks of a configuration, found without building the env or loading a model (``--dry-run`` runs them,
and so does every real run before it starts).

    problems, notes = check(cfg)               # every problem at once (raise ConfigError(problems))

What is checked: the registered names (task, user, judge, generation back end, agents); that the keyword
arguments of the task, its back end, the user and the judge are ones they take (by their signatures); each
row's agent options, by building the agent's own ``Config`` (whose ``__post_init__`` validates them: the
checks live with what they check); run and evaluation sizes; LoRA options; that a model which needs
``trust_remote_code`` gets it only from the user (:mod:`agents.harness.remote_code`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import math
import typing
from typing import Any

from .hardware import DTYPES
from .remote_code import check_remote_code


class ConfigError(ValueError):
    """A configuration that cannot run; the message lists every problem found."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(self.problems))


def _kwargs_of(factory: Any) -> set[str] | None:
    """The keyword names a factory (function or class) takes; None when it takes any (``**kwargs``)."""
    try:
        target = factory.__init__ if inspect.isclass(factory) else factory
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return None
    names = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"}
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        try:
            ret = typing.get_type_hints(target).get("return")
        except (NameError, TypeError, AttributeError):  # annotations that do not resolve
            ret = None
        inner = _kwargs_of(ret) if inspect.isclass(ret) else None
        return None if inner is None else names | inner
    return names


def _returns(factory: Any) -> Any:
    """The class a factory function is annotated to return, if any."""
    if inspect.isclass(factory):
        return factory
    try:
        ret = typing.get_type_hints(factory).get("return")
    except (NameError, TypeError, AttributeError):  # annotations that do not resolve
        return None
    return ret if inspect.isclass(ret) else None


def _own(task_cls: Any, method: str) -> Any:
    """The class of a task's own user or judge, when its ``make_*`` method is annotated with it."""
    return _returns(getattr(task_cls, method)) if task_cls is not None and hasattr(task_cls, method) else None


def _check_kwargs(problems: list, what: str, factory: Any, kwargs: dict, skip: tuple = ("task",)) -> None:
    known = _kwargs_of(factory)
    if known is None:
        return
    bad = sorted(set(kwargs) - known - set(skip))
    if bad:
        problems.append(f"{what}: unknown argument(s) {bad}; it takes {sorted(known - set(skip))}")


def _number(problems, name, v, lo=None, hi=None, lo_open=False, integer=False, allow_none=False):
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not float(v).is_integer()):
        problems.append(f"{name} must be {'an integer' if integer else 'a number'}, got {v!r}")
        return
    if not math.isfinite(v):
        problems.append(f"{name} must be finite, got {v!r}")
    elif lo is not None and (v <= lo if lo_open else v < lo):
        problems.append(f"{name} must be {'>' if lo_open else '>='} {lo}, got {v!r}")
    elif hi is not None and v > hi:
        problems.append(f"{name} must be <= {hi}, got {v!r}")


def agent_class(name: str):
    from ..base import agent_registry

    return agent_registry().get(name)


def check(cfg: Any, command: str = "train") -> tuple[list[str], list[str]]:
    """(problems, notes) of a configuration, found without building the env or loading a model."""
    import refuel_env  # noqa: F401  (registers tasks, users, judges, back ends; imports no model library)
    from refuel_env.backends import BACKENDS
    from refuel_env.registry import JUDGES, TASKS, USERS

    from ..engine.lora import LORA_ALIASES, lora_options

    problems: list[str] = []
    notes: list[str] = []
    env, pol, ev = cfg.env, cfg.policy, cfg.eval

    # ---- env: names, then the arguments each component takes
    tk = env.task_kwargs
    task_cls = None
    if env.task not in TASKS:
        problems.append(f"env.task: unknown task {env.task!r}; registered: {', '.join(TASKS.names())}")
    else:
        task_factory = TASKS.get(env.task)
        _check_kwargs(problems, f"env.task_kwargs of task {env.task!r}", task_factory, tk, skip=("max_turns",))
        task_cls = _returns(task_factory)
    if env.user != "scripted" and env.user not in USERS:
        problems.append(f"env.user: unknown user simulator {env.user!r}; known: scripted (the task's own), "
                        f"{', '.join(USERS.names())}")
    else:
        user = USERS.get(env.user) if env.user in USERS else _own(task_cls, "make_scripted_user")
        if user is None and env.task == "open-chat-v0":
            user = USERS.get("llm")  # open chat's own user is the LLM user
        if user is not None:
            _check_kwargs(problems, f"env.user_kwargs of user {env.user!r}", user, env.user_kwargs)
    if env.judge != "rule" and env.judge not in JUDGES:
        problems.append(f"env.judge: unknown judge {env.judge!r}; known: rule (the task's own), {', '.join(JUDGES.names())}")
    else:
        judge = JUDGES.get(env.judge) if env.judge in JUDGES else _own(task_cls, "make_rule_judge")
        if judge is None and env.task == "open-chat-v0" and tk.get("judge", "llm") in JUDGES:
            judge = JUDGES.get(tk.get("judge", "llm"))  # open chat's own judge: its judge= argument
        if judge is not None:
            _check_kwargs(problems, f"env.judge_kwargs of judge {env.judge!r}", judge, env.judge_kwargs,
                          skip=("task", "name_or_path", "model", "tokenizer"))
    backend = tk.get("backend")
    if backend is not None:
        if backend not in BACKENDS:
            problems.append(f"env.task_kwargs.backend: unknown back end {backend!r}; registered: {', '.join(BACKENDS.names())}")
        else:
            _check_kwargs(problems, f"env.task_kwargs.backend_kwargs of back end {backend!r}", BACKENDS.get(backend),
                          tk.get("backend_kwargs") or {}, skip=("task", "model"))
    if env.user_kwargs.get("backend_name") not in (None, *BACKENDS.names()):
        problems.append(f"env.user_kwargs.backend_name: unknown back end {env.user_kwargs['backend_name']!r}")
    _number(problems, "env.max_turns", env.max_turns, lo=1, integer=True)
    if not (env.horizon in ("uniform", "fixed") or (isinstance(env.horizon, int) and not isinstance(env.horizon, bool)
                                                     and 1 <= env.horizon <= env.max_turns)):
        problems.append(f"env.horizon must be 'uniform', 'fixed' or an int in 1..{env.max_turns}, got {env.horizon!r}")
    _number(problems, "env.max_message_chars", env.max_message_chars, lo=1, integer=True, allow_none=True)
    _number(problems, "env.max_total_chars", env.max_total_chars, lo=1, integer=True, allow_none=True)
    check_remote_code(cfg, problems, notes)  # never implied by a preset: the user's explicit choice, said out loud
    prompts = tk.get("prompts")
    if prompts in ("hh", "ultrainteract"):
        notes.append(f"prompts {prompts!r} come from the Hugging Face hub (datasets.load_dataset) at the first real run; "
                     "the dry run does not fetch them")

    # ---- policy
    if pol.model is None and env.task != "guess-item-v0":
        problems.append(f"policy.model: the built-in pi_0 is for guess-item-v0; for task {env.task!r} name a Hugging Face "
                        "model directory or hub id")
    if pol.dtype not in DTYPES:
        problems.append(f"policy.dtype must be one of bfloat16, float16, float32, auto; got {pol.dtype!r}")
    if pol.device is not None and not (isinstance(pol.device, str) and pol.device.split(":")[0] in ("cpu", "cuda", "mps", "auto")):
        problems.append(f"policy.device must be cpu, cuda, cuda:N, mps or auto; got {pol.device!r}")
    _number(problems, "policy.generation_batch_size", pol.generation_batch_size, lo=1, integer=True, allow_none=True)
    _number(problems, "policy.score_batch_size", pol.score_batch_size, lo=1, integer=True)
    if pol.lora not in (None, False):
        if importlib.util.find_spec("peft") is None:
            problems.append("policy.lora needs peft: pip install 'refuel-env[peft]'")
        try:
            lo = lora_options(pol.lora)
        except TypeError as e:
            problems.append(str(e))
        else:
            _number(problems, "policy.lora.r", lo["r"], lo=1, integer=True)
            _number(problems, "policy.lora.alpha", lo["alpha"], lo=0, lo_open=True)
            _number(problems, "policy.lora.dropout", lo["dropout"], lo=0, hi=0.999)
            tm = lo["target_modules"]
            if not (isinstance(tm, str) or (isinstance(tm, list) and tm and all(isinstance(t, str) for t in tm))):
                problems.append(f"policy.lora.target_modules must be a module name pattern or a list of names, got {tm!r}")
            extra = set(lo) - {"r", "alpha", "dropout", "target_modules"}
            if extra and importlib.util.find_spec("peft") is not None:
                from peft import LoraConfig

                fields = {f.name for f in dataclasses.fields(LoraConfig)}
                bad = sorted(k for k in extra if LORA_ALIASES.get(k, k) not in fields)
                if bad:
                    problems.append(f"policy.lora: unknown option(s) {bad}; use r, alpha, dropout, target_modules or "
                                    "fields of peft.LoraConfig")

    # ---- agents and their options
    union: set[str] = set()
    open_ended = False  # a row whose agent has no dataclass Config may take any option
    for spec in cfg.agents:
        if spec.agent in ("pi_0", "expert"):
            if spec.agent == "expert" and env.task != "guess-item-v0":
                problems.append(f"row {spec.label!r}: the task {env.task!r} has no expert speaker (guess-item-v0 has)")
            continue
        try:
            cls = agent_class(spec.agent)
        except KeyError as e:
            problems.append(str(e.args[0] if e.args else e))
            continue
        conf = getattr(cls, "Config", None)
        if conf is None or not dataclasses.is_dataclass(conf):
            open_ended = True
            continue
        fields = {f.name: f for f in dataclasses.fields(conf)}
        union |= set(fields)
        bad = sorted(set(spec.options) - set(fields))
        if bad:
            problems.append(f"row {spec.label!r}: unknown option(s) {bad} of agent {spec.agent!r}; its options: {sorted(fields)}")
        opts = {**{k: v for k, v in cfg.agent_options.items() if k in fields}, **spec.options}
        where = f"row {spec.label!r}"
        try:  # the agent's Config validates its own options (in __post_init__)
            conf(**{k: v for k, v in opts.items() if k in fields})
        except (TypeError, ValueError) as e:
            problems.append(f"{where}: {e}")
        if opts.get("rollin") == "offline" and env.task != "guess-item-v0":
            problems.append(f"{where}: rollin='offline' needs a task with offline data (guess-item-v0)")
    unknown_common = sorted(set(cfg.agent_options) - union) if union and not open_ended else []
    if unknown_common:
        problems.append(f"agent_options: {unknown_common} is an option of none of the agents "
                        f"({', '.join(a.agent for a in cfg.agents)}); their options: {sorted(union)}")

    # ---- run and evaluation sizes
    _number(problems, "iterations", cfg.iterations, lo=0, integer=True)
    if command == "train" and cfg.iterations == 0:
        notes.append("iterations = 0: train only evaluates pi_0's starting point")
    _number(problems, "eval.n_dialogues", ev.n_dialogues, lo=1, integer=True)
    _number(problems, "eval.curve_n_dialogues", ev.curve_n_dialogues, lo=0, integer=True)
    _number(problems, "eval.curve_every", ev.curve_every, lo=0, integer=True)
    _number(problems, "eval.bootstrap", ev.bootstrap, lo=0, integer=True)
    _number(problems, "eval.temperature", ev.temperature, lo=0, allow_none=True)
    _number(problems, "checkpoint_every", cfg.checkpoint_every, lo=0, integer=True)
    mb = cfg.agent_options.get("minibatch_size")
    if isinstance(mb, int) and mb > cfg.pairs_per_iteration:
        notes.append(f"minibatch_size {mb} > pairs_per_iteration {cfg.pairs_per_iteration}: one gradient step per epoch "
                     "on all the pairs")
    return problems, notes


