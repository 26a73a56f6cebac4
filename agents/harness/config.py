"""Configuration of training, evaluation and the comparison benchmark: dataclasses, files and overrides.

One :class:`ExperimentConfig` drives ``refuel bench``, ``refuel train`` and ``refuel eval``. It can be
built from a preset (:mod:`agents.harness.presets`), read from a JSON, TOML or YAML file
(:func:`load_config`), and overridden field by field with dotted paths (:func:`apply_overrides`,
``--set eval.n_dialogues=128`` on the command line). :mod:`agents.harness.build` turns it into the env,
the policy, pi_0 and the agents.

    cfg = preset("quick")
    cfg = apply_overrides(cfg, {"iterations": 4, "agents": "refuel,ppo"})
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .rows import DEFAULT_ROWS, STANDARD_ROWS, agent_spec

_KINDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false", "dict": "a table",
          "list": "a list", "None": "null"}


def _fits(kind: str, v: Any) -> bool:
    if kind == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == "float":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if kind == "None":
        return v is None
    return isinstance(v, {"str": str, "bool": bool, "dict": dict, "list": list}[kind])


def check_types(obj: Any, prefix: str = "", skip: tuple = ()) -> None:
    """Check every field of a config dataclass against its annotation (``int``, ``float``, ``str``, ``bool``,
    ``dict``, ``list``, unions with ``None``; ``Any`` takes anything); a value that does not fit raises a
    TypeError that names the key (``iterations must be an integer, got 'abc'``). Integral floats become ints."""
    for f in dataclasses.fields(obj):
        if f.name in skip or not isinstance(f.type, str) or f.type == "Any":
            continue
        kinds = [k.strip() for k in f.type.split("|")]
        if not set(kinds) <= set(_KINDS):
            continue  # an annotation this checker does not know: left to the field's own checks
        v = getattr(obj, f.name)
        if "int" in kinds and isinstance(v, float) and v.is_integer():
            setattr(obj, f.name, int(v))
            continue
        if not any(_fits(k, v) for k in kinds):
            want = " or ".join(_KINDS[k] for k in kinds)
            raise TypeError(f"{prefix}{f.name} must be {want}, got {v!r}")


@dataclass
class EnvConfig:
    """The environment every agent trains and is evaluated on (keyword arguments of ``RefuelDialogue-v0``)."""

    task: str = "guess-item-v0"
    """Registered task id."""
    task_kwargs: dict = field(default_factory=lambda: {"n_items": 8, "noise": 0.0})
    """Keyword arguments of the task family."""
    max_turns: int = 4
    """H_max: the longest horizon; evaluation dialogues all run to it."""
    horizon: Any = "uniform"
    """Horizon of training dialogues: "uniform" (H ~ U{1..H_max}, as in the paper), "fixed" or an int."""
    user: str = "scripted"
    """User simulator ("scripted" is the task's own)."""
    judge: str = "rule"
    """Judge ("rule" is the task's own)."""
    user_kwargs: dict = field(default_factory=dict)
    judge_kwargs: dict = field(default_factory=dict)
    max_message_chars: int | None = None
    """Longest message (characters; longer responses are cut); None: the env's default (1024)."""
    max_total_chars: int | None = None
    """Conversation length at which an episode is truncated; None: the env's default (16384)."""

    def __post_init__(self):
        check_types(self, "env.")

    def kwargs(self) -> dict:
        out = {"task": self.task, "task_kwargs": dict(self.task_kwargs), "max_turns": self.max_turns,
               "horizon": self.horizon, "user": self.user, "judge": self.judge,
               "user_kwargs": dict(self.user_kwargs), "judge_kwargs": dict(self.judge_kwargs)}
        for k in ("max_message_chars", "max_total_chars"):
            if getattr(self, k) is not None:
                out[k] = int(getattr(self, k))
        return out


@dataclass
class PolicyConfig:
    """Where pi_0 (the reference policy and every agent's starting point) comes from."""

    model: str | None = None
    """A Hugging Face model directory (``from_pretrained``), or ``"smollm2"`` (the offline SmolLM2-135M-Instruct,
    see :func:`refuel_env.models.resolve_model`); None: the built-in offline pi_0 of the guess-item task."""
    reference: dict = field(default_factory=dict)
    """Overrides of :class:`agents.reference.ReferenceConfig` for the built-in pi_0 (n_dialogues, epochs, ...).
    Its task fields (n_items, max_turns, noise) follow the env config."""
    cache: str | None = None
    """Where the built-in pi_0 is cached (default ``$REFUEL_ENV_CACHE`` or ``~/.cache/refuel_env``)."""
    dtype: str | None = None
    """Weights dtype ("bfloat16", "float32", "auto"); None: as loaded (float32 for the built-in pi_0)."""
    device: str | None = None
    """Where the policy runs ("cuda", "cpu", "auto": CUDA when available); None: where it loads (the CPU)."""
    lora: dict | bool | None = None
    """LoRA adapters through peft (``pip install 'refuel-env[peft]'``): a table of r, alpha, dropout,
    target_modules (or any other ``peft.LoraConfig`` field); ``{}`` or true: r=16, alpha=32, dropout=0.05,
    every linear layer but the output layer. Only the adapters train, and pi_0 is the same model with its
    adapters disabled (no second copy of the weights). None: full fine-tuning."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (much less memory for long dialogues; ~30% slower)."""
    generation_batch_size: int | None = None
    """Rows per ``generate`` call of the policy (None: every dialogue in flight in one call)."""
    score_batch_size: int = 64
    """Rows per forward pass when the policy scores responses without gradients (log-probs at collection)."""

    def __post_init__(self):
        check_types(self, "policy.")


@dataclass
class EvalConfig:
    """Win rate against pi_0 per turn, and the mean judge score per turn (see :mod:`agents.evaluate`)."""

    n_dialogues: int = 64
    """Held-out dialogues (split="eval", horizon H_max) in the final evaluation."""
    seed: int = 1234
    """Seeds the held-out opening states and the sampling: the same for every agent, seed and pi_0."""
    temperature: float | None = None
    """Sampling temperature of both sides; None: the trained policy's (decoding is sampled, never greedy,
    unless this is 0)."""
    curve_every: int = 1
    """Evaluate for the learning curve every this many iterations (0: never)."""
    curve_n_dialogues: int = 32
    """Held-out dialogues per learning-curve point."""
    examples: int = 3
    """Example dialogues kept per agent."""
    bootstrap: int = 2000
    """Bootstrap resamples for the 95% confidence intervals."""

    def __post_init__(self):
        check_types(self, "eval.")


@dataclass
class TuneConfig:
    """The grid of ``refuel tune`` (see :mod:`agents.harness.tune`): the same for every row."""

    lr: list = field(default_factory=lambda: [3e-4, 1e-3])
    """Learning rates tried for every row."""
    scales: dict = field(default_factory=lambda: {"refuel": ["eta", [0.5, 2.0]], "rebel": ["eta", [0.5, 2.0]],
                                                  "dpo": ["beta", [0.1, 0.5]], "ppo": ["clip_range", [0.1, 0.3]]})
    """Each agent's own scale and the values tried: {agent: [option, [values]]}."""
    seeds: list = field(default_factory=lambda: [100, 101])
    """Training seeds of the grid (must differ from the comparison's)."""
    eval_seed: int = 777
    """Seed of the tuning evaluation set (must differ from ``eval.seed``)."""
    eval_dialogues: int = 256
    """Held-out dialogues per grid point and seed."""


@dataclass
class ExperimentConfig:
    """Everything a benchmark (or one training run) depends on. Identical for every row."""

    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    agents: list = field(default_factory=lambda: [copy.deepcopy(STANDARD_ROWS[r]) for r in DEFAULT_ROWS])
    """Rows: labels, registered agent names, or {"label", "agent", "options"} tables."""
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    """Training seeds; every row runs every seed."""
    iterations: int = 10
    """Collect-and-update iterations per agent (the same for every row)."""
    pairs_per_iteration: int = 32
    """batch_size of the pair agents (REFUEL, REBEL, DPO). PPO samples ``ppo_dialogues_per_iteration``
    whole dialogues; by default twice this, so that every row samples the same number of dialogues per
    iteration (a pair costs two dialogues: one rolled in and branched, one more branch)."""
    ppo_dialogues_per_iteration: int | None = None
    """batch_size of PPO and of every other agent that samples whole dialogues (not a PairAgent);
    None: 2 * pairs_per_iteration (matched dialogue budget)."""
    agent_options: dict = field(default_factory=lambda: {"lr": 3e-4, "epochs": 2, "minibatch_size": 16,
                                                         "max_new_tokens": 24, "temperature": 1.0})
    """Options given to every agent whose config has them (lr, epochs, minibatch_size, ...)."""
    tuned: dict = field(default_factory=dict)
    """Tuned settings by row label (``refuel tune`` writes them): ``{"REFUEL": {"lr": 1e-3, "eta": 1.0}, ...}``;
    a row without an entry uses ``agent_options``."""
    checkpoint_every: int = 1
    """Trainer checkpoints (latest kept) every this many iterations: an interrupted run resumes from there."""
    threads: int | None = None
    """torch.set_num_threads; None leaves torch's default."""
    preset: str | None = None
    """Name of the preset this config started from (informational)."""

    def __post_init__(self):
        for name, cls in (("env", EnvConfig), ("policy", PolicyConfig), ("eval", EvalConfig),
                          ("tune", TuneConfig)):
            v = getattr(self, name)
            if not isinstance(v, cls):
                if not isinstance(v, dict):
                    raise TypeError(f"{name} must be a table of {cls.__name__} fields, got {v!r}")
                setattr(self, name, cls(**v))
        if isinstance(self.agents, str):
            self.agents = [a for a in self.agents.split(",") if a.strip()]
        if not isinstance(self.agents, (list, tuple)):
            raise TypeError(f"agents must be a list of rows (labels, agent names or tables) or \"refuel,ppo\", "
                            f"got {self.agents!r}")
        self.agents = [agent_spec(a) for a in self.agents]
        labels = [a.label for a in self.agents]
        if len(set(labels)) != len(labels):
            raise ValueError(f"agent labels must be unique, got {labels}; give repeated agents distinct labels")
        seeds = self.seeds
        try:
            if isinstance(seeds, (int, str)) and not isinstance(seeds, bool):
                seeds = [s for s in str(seeds).split(",") if s.strip()]
            if not isinstance(seeds, (list, tuple)) or any(isinstance(s, (bool, float)) for s in seeds):
                raise ValueError
            self.seeds = [int(s) for s in seeds]
        except (TypeError, ValueError):
            raise TypeError(f"seeds must be a list of integers (or \"0,1,2\"), got {self.seeds!r}") from None
        check_types(self, skip=("env", "policy", "eval", "agents", "seeds"))
        if not self.seeds:
            raise ValueError("seeds must list at least one seed")
        if self.iterations < 0 or self.pairs_per_iteration < 1:
            raise ValueError(f"need iterations >= 0 and pairs_per_iteration >= 1, got {self.iterations} and "
                             f"{self.pairs_per_iteration}")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def ppo_dialogues(self) -> int:
        return int(self.ppo_dialogues_per_iteration or 2 * self.pairs_per_iteration)

    def unit_fingerprint(self) -> str:
        """Hash of everything a (row, seed) unit's result depends on apart from the row and seed: a re-run
        with the same ``--out`` reuses a finished unit only when this matches."""
        d = self.to_dict()
        for k in ("agents", "seeds", "threads", "preset", "tune"):
            d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_config_file(path: str | Path) -> dict:
    """A config file as a dict: ``.json``, ``.toml`` (tomllib; tomli on Python 3.10) or ``.yaml``/``.yml``
    (PyYAML, installed with transformers)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text()
    suffix = path.suffix.lower()
    if suffix == ".json":
        return json.loads(text)
    if suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            try:
                import tomli as tomllib
            except ImportError:
                raise ImportError("reading .toml configs on Python 3.10 needs `pip install tomli`; or use a .json "
                                  "config") from None
        return tomllib.loads(text)
    if suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(text) or {}
    raise ValueError(f"config file {path}: use a .json, .toml or .yaml file")


def merge(base: dict, update: dict) -> dict:
    """Recursive dict update (tables merge, everything else replaces)."""
    out = dict(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _check_keys(d: dict, cls, where: str = "") -> None:
    known = {f.name: f for f in dataclasses.fields(cls)}
    for k, v in d.items():
        if k not in known:
            raise KeyError(f"unknown config key {where + k!r}; known at this level: {sorted(known)}")
        sub = {"env": EnvConfig, "policy": PolicyConfig, "eval": EvalConfig, "tune": TuneConfig}.get(k) \
            if cls is ExperimentConfig else None
        if sub is not None and isinstance(v, dict):
            _check_keys(v, sub, where + k + ".")


def from_dict(d: dict, base: ExperimentConfig | None = None) -> ExperimentConfig:
    """An ExperimentConfig from a (partial) dict on top of ``base`` (or of a preset named by d["preset"])."""
    d = dict(d)
    if base is None:
        from .presets import preset

        base = preset(d["preset"]) if d.get("preset") else ExperimentConfig()
    _check_keys(d, ExperimentConfig)
    b = base.to_dict()
    if isinstance(d.get("env"), dict) and d["env"].get("task", b["env"]["task"]) != b["env"]["task"]:
        b["env"]["task_kwargs"] = {}  # the base's task keyword arguments belong to the other task
    merged = merge(b, d)
    return ExperimentConfig(**merged)


def load_config(path: str | Path, base: ExperimentConfig | None = None) -> ExperimentConfig:
    return from_dict(read_config_file(path), base)


def parse_value(text: str) -> Any:
    """A command-line value: JSON when it parses (numbers, true/false/null, lists, tables), ``@FILE`` for the JSON
    content of a file (``--set tuned=@runs/tune/tuned.json``), else the string."""
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.is_file():
            raise FileNotFoundError(f"{text}: no such file (``@FILE`` reads a JSON file)")
        return json.loads(path.read_text())
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(cfg: ExperimentConfig, overrides: dict) -> ExperimentConfig:
    """Set dotted keys (``{"eval.n_dialogues": 128, "iterations": 4}``); unknown keys are an error."""
    d = {}
    for key, value in overrides.items():
        node = d
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return from_dict(d, cfg)
