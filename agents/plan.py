"""``--dry-run``: check a configuration and say what a run would do and need, loading and downloading nothing.

    errors, notes = check(cfg)                 # every problem at once (raise ConfigError(errors))
    print(plan_text(cfg))                      # the plan and the hardware estimate

What is checked: the registered names (task, user, judge, generation back end, agents); that the
keyword arguments of the task, its back end, the user and the judge are ones they take (by their
signatures); that agent options are fields of the agent's ``Config``; that values are in range; LoRA
options.

The plan: iterations, pairs and dialogues per iteration, the batched generation, user and judge calls of
one iteration with their expected rows per call (every message assumed to run to its token limit where
lengths matter), gradient steps, evaluation work, and the largest token counts.

The hardware estimate is arithmetic on parameter counts, not a measurement. Parameter counts and
shapes come from a local ``config.json`` (a model directory, or the Hugging Face cache, read without
network), else from :data:`KNOWN_MODELS` (a table of the paper's models in this file). How each figure
is estimated is printed with it (:data:`METHOD`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import math
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GiB = 1024 ** 3


class ConfigError(ValueError):
    """A configuration that cannot run; the message lists every problem found."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(self.problems))


# ------------------------------------------------------------------------------------------ model shapes
@dataclass(frozen=True)
class Arch:
    """The shapes that memory depends on (Llama-style decoder: GQA attention, SwiGLU MLP, RMSNorm)."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    tied: bool = False
    lm_head: bool = True  # False for a reward model (a small score head instead)
    max_positions: int = 8192
    head_dim: int | None = None

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def params(self) -> int:
        h, hd = self.hidden, self.hd
        layer = h * self.heads * hd + 2 * h * self.kv_heads * hd + self.heads * hd * h + 3 * h * self.intermediate + 2 * h
        out = self.vocab * h + self.layers * layer + h
        if self.lm_head and not self.tied:
            out += self.vocab * h
        return out

    def kv_bytes_per_token(self, b: int = 2) -> int:
        return 2 * self.layers * self.kv_heads * self.hd * b

    def lora_params(self, r: int, targets: Any) -> int:
        """Adapter parameters: r * (in + out) for every targeted linear layer of every decoder layer."""
        h, hd, i = self.hidden, self.hd, self.intermediate
        shapes = {"q_proj": (h, self.heads * hd), "k_proj": (h, self.kv_heads * hd), "v_proj": (h, self.kv_heads * hd),
                  "o_proj": (self.heads * hd, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
        if targets in (None, "all-linear"):
            names = list(shapes)
        else:
            names = [t for t in ([targets] if isinstance(targets, str) else targets) if t in shapes]
        return self.layers * sum(r * (a + b) for a, b in (shapes[n] for n in names))


KNOWN_MODELS: dict[str, Arch] = {
    # from the models' config.json on the Hugging Face hub
    "meta-llama/Meta-Llama-3-8B-Instruct": Arch(128256, 4096, 32, 32, 8, 14336, max_positions=8192),
    "meta-llama/Meta-Llama-3.1-8B-Instruct": Arch(128256, 4096, 32, 32, 8, 14336, max_positions=131072),
    "meta-llama/Meta-Llama-3.1-70B-Instruct": Arch(128256, 8192, 80, 64, 8, 28672, max_positions=131072),
    # ArmoRM: the Llama-3-8B backbone without the LM head (its regression and gating heads add < 0.1%)
    "RLHFlow/ArmoRM-Llama3-8B-v0.1": Arch(128256, 4096, 32, 32, 8, 14336, lm_head=False, max_positions=8192),
    "SmolLM2-135M-Instruct": Arch(49152, 576, 30, 9, 3, 1536, tied=True, max_positions=8192),
}
"""Shapes of the paper's models (and the offline SmolLM2), used when no local config.json is found."""
ALIASES = {"meta-llama/Llama-3.1-70B-Instruct": "meta-llama/Meta-Llama-3.1-70B-Instruct",
           "meta-llama/Llama-3.1-8B-Instruct": "meta-llama/Meta-Llama-3.1-8B-Instruct",
           "smollm2": "SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct": "SmolLM2-135M-Instruct"}


def arch_from_config(d: dict) -> Arch:
    d = d.get("text_config", d)
    return Arch(vocab=int(d["vocab_size"]), hidden=int(d["hidden_size"]), layers=int(d["num_hidden_layers"]),
                heads=int(d["num_attention_heads"]), kv_heads=int(d.get("num_key_value_heads") or d["num_attention_heads"]),
                intermediate=int(d.get("intermediate_size") or 4 * d["hidden_size"]),
                tied=bool(d.get("tie_word_embeddings", False)),
                lm_head="ForCausalLM" in " ".join(d.get("architectures") or ["ForCausalLM"]),
                max_positions=int(d.get("max_position_embeddings") or 2048), head_dim=d.get("head_dim"))


def local_config(name: str) -> tuple[dict | None, str]:
    """A model's config.json from a local directory or the Hugging Face cache (never the network)."""
    path = Path(name) / "config.json"
    if path.is_file():
        return json.loads(path.read_text()), f"{path}"
    if name.count("/") == 1 and not Path(name).exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            hit = try_to_load_from_cache(name, "config.json")
        except (ImportError, ValueError, OSError):  # no huggingface_hub, a malformed repo id, ...
            hit = None
        if isinstance(hit, str) and os.path.isfile(hit):
            return json.loads(Path(hit).read_text()), "the Hugging Face cache's config.json"
    return None, ""


def model_arch(name: str | None, builtin: Any = None) -> tuple[Arch | None, str]:
    """(shapes, where they came from) of a model name or directory; ``builtin``: the built-in pi_0's ReferenceConfig."""
    if name is None:
        if builtin is None:
            return None, "unknown"
        return (Arch(builtin.vocab_size, builtin.hidden_size, builtin.num_layers, builtin.num_heads, builtin.num_heads,
                     2 * builtin.hidden_size, tied=True, max_positions=1024), "the built-in pi_0's ReferenceConfig")
    d, where = local_config(name)
    if d is not None:
        try:
            return arch_from_config(d), where
        except (KeyError, TypeError, ValueError):
            pass
    key = ALIASES.get(name, name)
    if key in KNOWN_MODELS:
        return KNOWN_MODELS[key], "the table KNOWN_MODELS in agents/plan.py"
    return None, "unknown (no local config.json, not in agents/plan.py's table)"


# ------------------------------------------------------------------------------------------ checks
DTYPES = {None: None, "auto": None, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "half": 2, "float32": 4,
          "fp32": 4, "float": 4}


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
    from . import dpo, ppo, rebel, refuel  # noqa: F401  (register the built-in agents)
    from .base import AGENTS

    return AGENTS.get(name)


def check(cfg: Any, command: str = "train") -> tuple[list[str], list[str]]:
    """(problems, notes) of a configuration, found without building the env or loading a model."""
    import refuel_env  # noqa: F401  (registers tasks, users, judges, back ends; imports no model library)
    from refuel_env.backends import BACKENDS
    from refuel_env.registry import JUDGES, TASKS, USERS

    from .pairs import ROLLINS, TARGETS, PairAgent
    from .policy import LORA_ALIASES, lora_options

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
    if tk.get("trust_remote_code"):
        notes.append(f"the judge {tk.get('reward_model')!r} loads with trust_remote_code=True (explicit in this config): "
                     "its own modelling code from the hub runs in this process")
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
        if spec.agent == "pi_0":
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
        if "lr" in opts:
            _number(problems, f"{where}: lr", opts["lr"], lo=0, lo_open=True)
        for k in ("epochs", "minibatch_size", "max_new_tokens"):
            if k in opts:
                _number(problems, f"{where}: {k}", opts[k], lo=1, integer=True)
        if "temperature" in opts:
            _number(problems, f"{where}: temperature", opts["temperature"], lo=0)
        for k in ("max_grad_norm", "beta", "eta"):
            if k in opts:
                _number(problems, f"{where}: {k}", opts[k], lo=0, lo_open=True)
        if issubclass(cls, PairAgent):
            if opts.get("rollin", "current") not in ROLLINS or opts.get("target", "relative_future") not in TARGETS \
                    or opts.get("responder", "current") not in ("current", "reference"):
                problems.append(f"{where}: rollin must be one of {ROLLINS}, responder 'current' or 'reference', "
                                f"target one of {TARGETS}")
            if opts.get("temperature", 1.0) == 0:
                problems.append(f"{where}: temperature 0 (greedy) makes the two responses of every pair identical, and "
                                "identical pairs are dropped: use a temperature > 0")
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


# ------------------------------------------------------------------------------------------ the plan
def horizon_probs(hmax: int, mode: Any) -> list[float]:
    """P(H = k), k = 1..hmax, of the env's horizon sampling."""
    if mode == "uniform":
        return [1.0 / hmax] * hmax
    k0 = hmax if mode == "fixed" else int(mode)
    return [1.0 if k == k0 else 0.0 for k in range(1, hmax + 1)]


def pair_profile(n: int, hmax: int, last_turn: bool) -> list[tuple[str, float, float]]:
    """Expected rows of each batched step of ``RolloutEngine.pairs``: (phase, speaker rows (= judge rows), user rows).
    H ~ U{1..H_max} (the engine's own draw), h ~ U{1..H} (h = H for last-turn targets); no early endings."""
    dist = [(H, h, 1.0 / hmax / (1 if last_turn else H)) for H in range(1, hmax + 1)
            for h in ([H] if last_turn else range(1, H + 1))]
    steps = []
    for k in range(1, hmax):
        rows = n * sum(p for H, h, p in dist if h - 1 >= k)
        if rows > 0:
            steps.append((f"roll-in turn {k}", rows, rows))
    steps.append(("branch: 2 responses at turn h", 2 * n, 2 * n * sum(p for H, h, p in dist if H > h)))
    if not last_turn:
        for k in range(1, hmax):
            rows = 2 * n * sum(p for H, h, p in dist if H - h >= k)
            if rows > 0:
                steps.append((f"continuation turn h+{k}", rows, 2 * n * sum(p for H, h, p in dist if H - h > k)))
    return steps


def dialogue_profile(n: int, hmax: int, mode: Any) -> list[tuple[str, float, float]]:
    ph = horizon_probs(hmax, mode)
    return [(f"turn {k}", n * sum(ph[k - 1:]), n * sum(ph[k:])) for k in range(1, hmax + 1) if sum(ph[k - 1:]) > 0]


def _fmt_n(x: float) -> str:
    return f"{x:,.0f}" if x >= 10 else f"{x:.1f}".rstrip("0").rstrip(".")


def _gb(x: float) -> str:
    return f"{x / GiB:,.1f} GiB" if x >= GiB / 10 else f"{x / 1024 ** 2:,.1f} MiB"


def _count(x: float) -> str:
    return f"{x / 1e9:.3g}B" if x >= 1e9 else f"{x / 1e6:.3g}M"


def token_budget(cfg: Any) -> dict:
    """Token limits of one dialogue: opening prompt, responses, user replies, and the longest sequence."""
    tk, env = cfg.env.task_kwargs, cfg.env
    resp = int(cfg.agent_options.get("max_new_tokens", 24))
    user = int((tk.get("user_params") or {}).get("max_new_tokens", 256)) if env.task != "guess-item-v0" else 32
    prompt = int(tk.get("max_prompt_tokens", 128)) if env.task != "guess-item-v0" else 64
    hmax = int(env.max_turns)
    longest = prompt + (hmax - 1) * (resp + user) + resp + 8 * (2 * hmax)  # + chat-template tokens per message
    return {"response": resp, "user": user, "prompt": prompt, "longest_dialogue": longest,
            "user_prompt": longest - resp + 100 + user}  # the transcript the user model reads, + its instructions


def row_plan(cfg: Any, spec: Any) -> list[str]:
    """The work of one training iteration of a row, and of its evaluations."""
    from .config import agent_kwargs
    from .pairs import PairAgent

    cls = agent_class(spec.agent)
    kw = agent_kwargs(cfg, spec, cfg.seeds[0])
    hmax = int(cfg.env.max_turns)
    n = int(kw.get("batch_size", cfg.pairs_per_iteration))
    mb, epochs = int(kw.get("minibatch_size", 32)), int(kw.get("epochs", 1))
    lines = [(f"row {spec.label!r} (agent {spec.agent}{', ' + json.dumps(spec.options) if spec.options else ''}), "
              f"seeds {cfg.seeds}, {cfg.iterations} iteration(s)")]
    if issubclass(cls, PairAgent):
        conf = cls.Config(**{k: v for k, v in kw.items() if k in {f.name for f in dataclasses.fields(cls.Config)}})
        last = conf.target == "last_turn"
        rollin, responder = conf.rollin, conf.responder
        if isinstance(getattr(conf, "online", None), bool):  # DPO: online/offline sets both (DPOAgent.setup)
            rollin = responder = "current" if conf.online else "reference"
        steps = pair_profile(n, hmax, last)
        speakers = {"roll-in": {"current": "policy", "reference": "pi_0", "offline": "scripted"}[rollin],
                    "branch": "policy" if responder == "current" else "pi_0",
                    "continuation": "policy" if responder == "current" else "pi_0"}
        lines.append(f"  per iteration: {n:,} pairs = {2 * n:,} dialogues ({n:,} started, rolled in to turn h and branched, "
                     f"+ {n:,} second branches); H ~ U{{1..{hmax}}}, "
                     + ("h = H (last-turn target)" if last else "h ~ U{1..H}, both branches continued to H"))
        seqs, steps_per_epoch = 2 * n, math.ceil(n / mb)
        micro = min(int(kw.get("micro_batch_size") or mb), mb)
        accumulation = f", {math.ceil(mb / micro)} accumulated micro-batches of {micro}" if micro < mb else ""
        lines.append(f"  update: {epochs} epoch(s) x {steps_per_epoch:,} gradient step(s) of {mb} pairs{accumulation} "
                     f"({2 * micro} sequences per forward/backward pass); log-probs of all {seqs:,} responses under "
                     "the data's policy first (no gradient)")
    else:
        steps = dialogue_profile(n, hmax, cfg.env.horizon)
        speakers = {"turn": "policy"}
        custom = "" if cls.__module__.startswith("agents.") else " (a custom agent: assumed to roll out whole dialogues)"
        lines.append(f"  per iteration: {n:,} whole dialogues, horizons {cfg.env.horizon} in 1..{hmax}{custom}")
        lines.append(f"  update: {epochs} epoch(s) over the dialogues' assistant tokens, minibatches of {mb}")
    lines.append("  batched calls of one iteration (expected rows per call; the policy's generate call is split into "
                 f"chunks of {cfg.policy.generation_batch_size or 'all'} rows):")
    lines.append(f"    {'step':<32} {'speaker':<9} {'generate rows':>14} {'user rows':>11} {'judge rows':>11}")
    gen_rows = user_rows = judge_rows = 0.0
    for phase, rows, urows in steps:
        who = speakers[phase.split()[0].rstrip(":")]
        lines.append(f"    {phase:<32} {who:<9} {_fmt_n(rows):>14} {_fmt_n(urows):>11} {_fmt_n(rows):>11}")
        gen_rows += rows if who == "policy" else 0
        user_rows += urows
        judge_rows += rows
    t = token_budget(cfg)
    lines.append(f"  per iteration: {len(steps)} generate calls, {sum(1 for s in steps if s[2] > 0)} user calls, "
                 f"{len(steps)} judge calls; ~{_fmt_n(gen_rows)} policy responses (at most "
                 f"{_fmt_n(gen_rows * t['response'])} tokens at {t['response']} max new tokens each), ~{_fmt_n(user_rows)} "
                 f"user replies (at most {t['user']} tokens each), ~{_fmt_n(judge_rows)} dialogues scored by the judge")
    e = cfg.eval
    curve = (cfg.iterations // e.curve_every) if e.curve_every else 0
    lines.append(f"  evaluation: final {e.n_dialogues} held-out dialogues to H_max = {hmax} "
                 f"({hmax} generate calls of {e.n_dialogues} rows; pi_0's side once more, then cached)"
                 + (f"; learning curve: {curve} x {e.curve_n_dialogues} dialogues" if curve and e.curve_n_dialogues else ""))
    return lines


# ------------------------------------------------------------------------------------------ hardware
METHOD = (
    "How these are estimated (arithmetic, not measured): parameter counts P from the shapes above. "
    "Weights P x b (b = 2 bytes in bf16, 4 in fp32). Full fine-tuning with torch's AdamW: gradients P x b and two "
    "moment buffers 2 P x b (they take the parameters' dtype). LoRA: adapters (r x (in + out) per targeted layer) "
    "in fp32 (peft casts them up), 16 bytes per adapter parameter with gradients and AdamW; pi_0 is the same "
    "weights with the adapters off (0 extra). Activations kept for the backward pass, per token and decoder layer: "
    "(4h + 2 kv_heads*head_dim + 4i) x b + 8h bytes (attention by SDPA, RMSNorm inputs in fp32); with gradient "
    "checkpointing, h x b per layer plus one layer's working set. Logits: 10 V bytes per token (the bf16 logits, "
    "their fp32 copy and the temperature-scaled copy). KV cache: 2 x layers x kv_heads x head_dim x b per token. "
    "vLLM: weights / TP + KV cache + ~3 GiB runtime per GPU within gpu_memory_utilization 0.9. Lengths: every "
    "message at its token limit (upper bounds).")


MICRO_BATCH_KEYS = ("micro_batch_size",)
"""Agent options that cap the pairs of one forward/backward pass (gradient accumulation), if an agent has them."""


def hardware_text(cfg: Any, gpu_gib: float = 80.0) -> list[str]:
    pol, env, tk = cfg.policy, cfg.env, cfg.env.task_kwargs
    builtin = pol.reference_config(env) if pol.model is None and env.task == "guess-item-v0" else None
    arch, src = model_arch(pol.model, builtin)
    t = token_budget(cfg)
    lines = [f"Hardware (estimates, {gpu_gib:.0f} GiB GPUs assumed):"]
    if arch is None:
        lines.append(f"  policy {pol.model!r}: shapes {src}; no memory estimate")
    else:
        lines += policy_memory(cfg, arch, src, t, gpu_gib)
    user_model = tk.get("user_model")
    if env.task != "guess-item-v0" and isinstance(user_model, str):
        lines += user_memory(cfg, user_model, t, gpu_gib)
    if tk.get("judge") == "reward-model" and tk.get("reward_model"):
        lines += judge_memory(cfg, tk["reward_model"], gpu_gib)
    lines.append("  " + METHOD)
    return lines


def policy_memory(cfg: Any, arch: Arch, src: str, t: dict, gpu_gib: float) -> list[str]:
    pol = cfg.policy
    stored_fp32 = pol.model is None or ALIASES.get(pol.model, pol.model) == "SmolLM2-135M-Instruct"
    b = DTYPES.get(pol.dtype) or (4 if stored_fp32 else 2)  # as stored: the built-in pi_0 and SmolLM2 copy are fp32
    P = arch.params
    seq = min(t["longest_dialogue"], arch.max_positions)
    mb = int(cfg.agent_options.get("minibatch_size", 32))
    # a micro-batch option (gradient accumulation), if the agents have one, bounds what one pass holds
    mb = int(next((cfg.agent_options[k] for k in MICRO_BATCH_KEYS if cfg.agent_options.get(k)), mb))
    lr = cfg.agent_options.get("lr")
    lines = [(f"  policy {pol.model or 'built-in pi_0'}: {_count(P)} parameters (shapes from {src}), "
              f"{'bf16/fp16' if b == 2 else 'fp32'} weights {_gb(P * b)}")]
    if t["longest_dialogue"] > arch.max_positions:
        lines.append(f"    ! the longest possible dialogue ({t['longest_dialogue']:,} tokens: prompt {t['prompt']}, "
                     f"{cfg.env.max_turns} responses of {t['response']}, user replies of {t['user']}) exceeds the model's "
                     f"{arch.max_positions:,}-token context (the estimates below use {arch.max_positions:,}); dialogues "
                     "that long fail at generation")
    if pol.lora not in (None, False):
        from .policy import lora_options

        lo = lora_options(pol.lora)
        L = arch.lora_params(int(lo["r"]), lo["target_modules"])
        train_state = 16 * L
        ref = 0
        lines.append(f"    LoRA r={lo['r']} on {lo['target_modules']}: {L / 1e6:.1f}M trainable parameters "
                     f"({100 * L / P:.2f}%): adapters + gradients + AdamW {_gb(train_state)}; pi_0 = adapters off: +0")
    else:
        train_state = 3 * P * b  # gradients + two AdamW moments
        ref = P * b
        lines.append(f"    full fine-tuning: gradients {_gb(P * b)} + AdamW moments {_gb(2 * P * b)}; "
                     f"pi_0 (a separate frozen copy) {_gb(ref)}")
        if b == 2 and isinstance(lr, (int, float)) and lr < 0.01 * 2 ** -8:
            lines.append(f"    ! lr {lr:g} in 16-bit weights with plain AdamW: a step (~lr) is far below bf16's resolution "
                         f"near typical weights (~0.01 x 2^-8 = {0.01 * 2 ** -8:.1e}), so most updates round away. The paper "
                         f"kept fp32 master weights (DeepSpeed). Use policy.dtype=float32 (weights + AdamW: "
                         f"{_gb(16 * P)}, sharded over GPUs) or LoRA (policy.lora: the adapters train in fp32)")
    per_layer = (4 * arch.hidden + 2 * arch.kv_heads * arch.hd + 4 * arch.intermediate) * b + 8 * arch.hidden
    if pol.gradient_checkpointing:
        act_tok = arch.layers * arch.hidden * b + per_layer
    else:
        act_tok = arch.layers * per_layer
    logit_tok = 10 * arch.vocab
    step_tokens = 2 * mb * seq
    act = step_tokens * (act_tok + logit_tok)
    per_pair = 2 * seq * (act_tok + logit_tok)
    lines.append(f"    training pass: {2 * mb} sequences x {seq:,} tokens in one forward/backward pass "
                 f"(gradient checkpointing {'on' if pol.gradient_checkpointing else 'off'}): activations "
                 f"{(act_tok) / 1024 ** 2:.2f} MiB + logits {logit_tok / 1024 ** 2:.2f} MiB per token = {_gb(act)} "
                 f"({_gb(per_pair)} per pair)")
    kv = arch.kv_bytes_per_token(b)
    gen_rows = pol.generation_batch_size or cfg.pairs_per_iteration * 2
    gen = gen_rows * seq * kv
    score_rows = int(pol.score_batch_size)
    score = score_rows * seq * logit_tok
    optim = train_state - (P * b if pol.lora in (None, False) else 0)  # the AdamW moments stay between updates
    peak_train = P * b + ref + train_state + act
    peak_collect = P * b + ref + optim + max(gen, score)
    lines.append(f"    collection: generate {gen_rows} rows x {seq:,} tokens: KV cache {_gb(gen)} "
                 f"({kv / 1024:.0f} KiB per token); log-probs (no gradient) of {score_rows} sequences per pass: "
                 f"logits {_gb(score)}")
    fit = max(peak_train, peak_collect)
    lines.append(f"    peak on the policy's device ({pol.device or 'cpu'}): training {_gb(peak_train)}, collection "
                 f"{_gb(peak_collect)} -> {'fits' if fit <= gpu_gib * GiB else 'does NOT fit'} in {gpu_gib:.0f} GiB")
    if act > gpu_gib * GiB:
        lines.append(f"    ! the activations of {mb} pairs in one pass do not fit: lower agent_options.micro_batch_size "
                     "(gradient accumulation; the paper: micro-batches of one pair, 32 accumulation steps x 4 GPUs) and "
                     "keep gradient checkpointing on")
    if score > gpu_gib * GiB:
        lines.append(f"    ! scoring {score_rows} sequences per pass does not fit: lower policy.score_batch_size")
    return lines


def user_memory(cfg: Any, user_model: str, t: dict, gpu_gib: float) -> list[str]:
    tk = cfg.env.task_kwargs
    arch, src = model_arch(user_model)
    backend = tk.get("backend", "transformers")
    if arch is None:
        return [f"  user simulator {user_model} via {backend}: shapes {src}; no estimate"]
    P, kv = arch.params, arch.kv_bytes_per_token(2)
    ctx = t["user_prompt"]
    conc = int((tk.get("backend_kwargs") or {}).get("concurrency", 8)) if backend == "openai" else None
    lines = [(f"  user simulator {user_model} via {backend}: {_count(P)} parameters (shapes from {src}), bf16 "
              f"weights {_gb(2 * P)}; KV cache {kv / 1024:.0f} KiB per token, a full request ~{ctx:,} tokens "
              f"(the transcript + {t['user']} new) = {_gb(ctx * kv)}")]
    want = (conc or 1) * ctx * kv
    lines.append(f"    vLLM tensor parallelism (weights / TP + ~3 GiB runtime per GPU, KV cache in the rest of "
                 f"0.9 x {gpu_gib:.0f} GiB); requests in flight: {conc if conc else 'as vLLM schedules'}:")
    best = None
    for tp in (1, 2, 4, 8):
        if arch.heads % tp:  # vLLM splits the attention heads evenly
            continue
        room = tp * (0.9 * gpu_gib * GiB - 2 * P / tp - 3 * GiB)
        ok = room >= want
        lines.append(f"      TP={tp}: weights {_gb(2 * P / tp)} per GPU, KV room {_gb(max(room, 0))} = "
                     f"{max(room, 0) / (ctx * kv):,.0f} full requests -> {'enough' if ok else 'not enough'}")
        if ok and best is None:
            best = tp
    if best is not None:
        lines.append(f"    -> serve it with `vllm serve {user_model} --tensor-parallel-size {best}` ({best} GPU(s), "
                     "besides the policy's)")
    return lines


def judge_memory(cfg: Any, name: str, gpu_gib: float) -> list[str]:
    jk = cfg.env.judge_kwargs
    arch, src = model_arch(name)
    if arch is None:
        return [f"  judge {name}: shapes {src}; no estimate"]
    bs = jk.get("batch_size") or 0
    length = int(jk.get("max_length", 4096))
    work = (bs or 1) * length * (4 * arch.hidden + 2 * arch.intermediate) * 2
    where = jk.get("device") or "cpu"
    return [f"  judge {name}: {_count(arch.params)} parameters (shapes from {src}), bf16 weights "
            f"{_gb(2 * arch.params)} + a forward pass of {bs or 'all'} x {length} tokens ~{_gb(work)}; on {where}"
            + (" (the policy's device too: add it there)" if where == (cfg.policy.device or "cpu") else "")]


# ------------------------------------------------------------------------------------------ text
def describe(cfg: Any) -> list[str]:
    env, tk, pol = cfg.env, cfg.env.task_kwargs, cfg.policy
    lines = [f"task {env.task} {json.dumps({k: v for k, v in tk.items() if k not in ('backend_kwargs',)}, default=str)}",
             (f"  H_max {env.max_turns}, training horizons {env.horizon}; user {env.user} "
              f"{json.dumps(env.user_kwargs)}, judge {env.judge} {json.dumps(env.judge_kwargs)}")]
    bk = tk.get("backend_kwargs") or {}
    if tk.get("backend") == "openai":
        key = bk.get("api_key_env", "OPENAI_API_KEY")
        lines.append(f"  user model served at {bk.get('base_url', 'http://127.0.0.1:8000/v1')} (OpenAI-compatible); API key "
                     f"from ${key}: {'set' if key and os.environ.get(key) else 'not set'}")
    lora = "full fine-tuning" if pol.lora in (None, False) else f"LoRA {json.dumps(pol.lora if isinstance(pol.lora, dict) else {})}"
    lines.append(f"policy {pol.model or 'built-in pi_0'}: dtype {pol.dtype or 'as stored'}, device {pol.device or 'cpu'}, "
                 f"{lora}, gradient checkpointing {'on' if pol.gradient_checkpointing else 'off'}")
    if pol.model and pol.model.count("/") == 1 and not Path(pol.model).exists():
        d, _ = local_config(pol.model)
        lines.append(f"  {pol.model} is a hub id: {'in the local Hugging Face cache' if d else 'not cached: downloaded at the first real run'}"
                     + (" (gated: accept the licence on the hub and set HF_TOKEN)" if pol.model.startswith("meta-llama/") and not d else ""))
    lines.append(f"agent options {json.dumps(cfg.agent_options)}")
    return lines


def plan_text(cfg: Any, command: str = "train", gpu_gib: float = 80.0) -> str:
    """The dry run's report (call :func:`check` first)."""
    lines = [(f"refuel {command} --dry-run: the configuration is valid (preset {cfg.preset or 'none'}); nothing "
              "was loaded or downloaded"), ""]
    lines += describe(cfg) + [""]
    lines.append("Plan:")
    for spec in cfg.agents:
        if spec.agent == "pi_0":
            lines.append("row 'pi_0': the untrained reference, evaluated only")
            continue
        lines += row_plan(cfg, spec)
    lines.append("")
    lines += hardware_text(cfg, gpu_gib)
    return "\n".join(lines)
