"""Configuration of training, evaluation and the comparison benchmark: dataclasses and presets.

One :class:`ExperimentConfig` drives ``refuel bench``, ``refuel train`` and ``refuel eval``. It can be
built from a preset (:data:`PRESETS`: ``"quick"``, ``"default"``, ``"full"``), read from a JSON, TOML
or YAML file (:func:`load_config`), and overridden field by field with dotted paths
(:func:`apply_overrides`, ``--set eval.n_dialogues=128`` on the command line).

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

    def kwargs(self) -> dict:
        out = {"task": self.task, "task_kwargs": dict(self.task_kwargs), "max_turns": self.max_turns,
               "horizon": self.horizon, "user": self.user, "judge": self.judge,
               "user_kwargs": dict(self.user_kwargs), "judge_kwargs": dict(self.judge_kwargs)}
        for k in ("max_message_chars", "max_total_chars"):
            if getattr(self, k) is not None:
                out[k] = int(getattr(self, k))
        return out

    def make(self, num_envs: int = 1):
        """The batched env (``gym.make_vec("RefuelDialogue-v0", ...)``); agents roll out through its core."""
        import gymnasium as gym

        import refuel_env  # noqa: F401  (registers the env)

        return gym.make_vec("RefuelDialogue-v0", num_envs=num_envs, **self.kwargs())


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
    lora: dict | None = None
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

    def reference_config(self, env: EnvConfig):
        from .reference import ReferenceConfig

        task = {k: env.task_kwargs[k] for k in ("n_items", "noise") if k in env.task_kwargs}
        return ReferenceConfig(**{"max_turns": env.max_turns, **task, **self.reference})

    def load(self, env: EnvConfig, name: str = "pi_0", log=print, lora: bool = True, seed: int = 0):
        """A fresh, trainable copy of pi_0 (built and cached on first use); with LoRA adapters when
        ``self.lora`` is set and ``lora`` is True (their random init drawn with ``seed``)."""
        from .policy import Policy
        from .reference import reference_policy

        defaults = PolicyConfig()
        opts = {k: getattr(self, k) for k in ("dtype", "device", "gradient_checkpointing", "generation_batch_size",
                                              "score_batch_size") if getattr(self, k) != getattr(defaults, k)}
        if lora and self.lora not in (None, False):
            opts.update(lora=self.lora, lora_seed=seed)
        if self.model:
            from refuel_env.models import resolve_model

            return Policy.from_pretrained(resolve_model(self.model), name=name, **opts)
        if env.task != "guess-item-v0":
            raise ValueError(f"the built-in pi_0 is for guess-item-v0; for task {env.task!r} set policy.model to a "
                             "Hugging Face model directory (or \"smollm2\")")
        policy = reference_policy(self.reference_config(env), cache=self.cache, log=log)
        policy.name = name
        policy.place(device=opts.get("device"), dtype=opts.get("dtype"))
        policy.generation_batch_size, policy.score_batch_size = self.generation_batch_size, int(self.score_batch_size)
        if self.gradient_checkpointing:
            policy.enable_gradient_checkpointing()
        if "lora" in opts:
            policy.add_lora(self.lora, seed=seed)
        return policy

    def load_with_reference(self, env: EnvConfig, name: str = "policy", log=print, seed: int = 0):
        """The policy to train and pi_0. With LoRA, pi_0 is the policy's own model with its adapters disabled
        (one copy of the base weights); without, a separate frozen copy."""
        policy = self.load(env, name=name, log=log, seed=seed)
        if policy.is_lora:
            return policy, policy.reference("pi_0")
        ref = self.load(env, name="pi_0", log=log, lora=False)
        ref.model.requires_grad_(False)
        ref.model.eval()
        return policy, ref


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


@dataclass
class AgentSpec:
    """One row of the comparison: a label, a registered agent name, and its options."""

    label: str
    agent: str
    options: dict = field(default_factory=dict)


#: The paper's rows, by label. "pi_0" is the untrained reference itself.
STANDARD_ROWS: dict[str, AgentSpec] = {
    "pi_0": AgentSpec("pi_0", "pi_0"),
    "refuel": AgentSpec("refuel", "refuel"),
    "rebel": AgentSpec("rebel", "rebel", {"target": "last_turn", "rollin": "reference"}),
    "dpo-offline": AgentSpec("dpo-offline", "dpo", {"online": False}),
    "dpo-online": AgentSpec("dpo-online", "dpo", {"online": True}),
    "ppo": AgentSpec("ppo", "ppo"),
}
ALIASES = {"dpo": "dpo-offline", "reference": "pi_0", "pi0": "pi_0"}
DEFAULT_ROWS = ["pi_0", "refuel", "rebel", "dpo-offline", "dpo-online", "ppo"]


def agent_spec(item: Any) -> AgentSpec:
    """A row from a label ("refuel", "dpo-online", ...), any registered agent name, or a dict/AgentSpec."""
    if isinstance(item, AgentSpec):
        return item
    if isinstance(item, dict):
        return AgentSpec(label=item.get("label", item["agent"]), agent=item["agent"], options=dict(item.get("options", {})))
    name = str(item).strip()
    name = ALIASES.get(name, name)
    if name in STANDARD_ROWS:
        return copy.deepcopy(STANDARD_ROWS[name])
    return AgentSpec(name, name)


@dataclass
class ExperimentConfig:
    """Everything a benchmark (or one training run) depends on. Identical for every row."""

    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
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
    checkpoint_every: int = 1
    """Trainer checkpoints (latest kept) every this many iterations: an interrupted run resumes from there."""
    threads: int | None = None
    """torch.set_num_threads; None leaves torch's default."""
    preset: str | None = None
    """Name of the preset this config started from (informational)."""

    def __post_init__(self):
        self.env = self.env if isinstance(self.env, EnvConfig) else EnvConfig(**self.env)
        self.policy = self.policy if isinstance(self.policy, PolicyConfig) else PolicyConfig(**self.policy)
        self.eval = self.eval if isinstance(self.eval, EvalConfig) else EvalConfig(**self.eval)
        if isinstance(self.agents, str):
            self.agents = [a for a in self.agents.split(",") if a.strip()]
        self.agents = [agent_spec(a) for a in self.agents]
        labels = [a.label for a in self.agents]
        if len(set(labels)) != len(labels):
            raise ValueError(f"agent labels must be unique, got {labels}; give repeated agents distinct labels")
        if isinstance(self.seeds, (int, str)):
            self.seeds = [int(s) for s in str(self.seeds).split(",") if s.strip()]
        self.seeds = [int(s) for s in self.seeds]
        if not self.seeds:
            raise ValueError("seeds must list at least one seed")
        if self.iterations < 0 or self.pairs_per_iteration < 1:
            raise ValueError("need iterations >= 0 and pairs_per_iteration >= 1")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def ppo_dialogues(self) -> int:
        return int(self.ppo_dialogues_per_iteration or 2 * self.pairs_per_iteration)

    def unit_fingerprint(self) -> str:
        """Hash of everything a (row, seed) unit's result depends on apart from the row and seed: a re-run
        with the same ``--out`` reuses a finished unit only when this matches."""
        d = self.to_dict()
        for k in ("agents", "seeds", "threads", "preset"):
            d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- presets
def _quick() -> ExperimentConfig:
    # Sized by measurement on the 2-core CPU this was built on (see benchmarks/bench_memory.py): the library's
    # default pi_0 (built and cached on first use, ~3 min) + 5 trained rows + evaluation in well under 10 min.
    return ExperimentConfig(
        preset="quick", seeds=[0], iterations=10, pairs_per_iteration=32,
        eval=EvalConfig(n_dialogues=128, curve_every=2, curve_n_dialogues=64, examples=2, bootstrap=1000),
        agent_options={"lr": 3e-4, "epochs": 2, "minibatch_size": 16, "max_new_tokens": 24, "temperature": 1.0},
        threads=2)


def _default() -> ExperimentConfig:
    return ExperimentConfig(preset="default", seeds=[0, 1, 2], iterations=12, pairs_per_iteration=48,
                            eval=EvalConfig(n_dialogues=128, curve_every=2, curve_n_dialogues=64))


def _full() -> ExperimentConfig:
    return ExperimentConfig(preset="full", seeds=[0, 1, 2, 3, 4], iterations=60, pairs_per_iteration=128,
                            eval=EvalConfig(n_dialogues=512, curve_every=5, curve_n_dialogues=128, examples=5),
                            agent_options={"lr": 1e-4, "epochs": 2, "minibatch_size": 32, "max_new_tokens": 24,
                                           "temperature": 1.0})


PAPER_POLICY = "meta-llama/Meta-Llama-3-8B-Instruct"
PAPER_USER = "meta-llama/Meta-Llama-3.1-70B-Instruct"
PAPER_JUDGE = "RLHFlow/ArmoRM-Llama3-8B-v0.1"
PAPER_PAIRS_PER_ITERATION = 60000
"""Pairs collected per iteration in the paper preset: the default ``total_episodes`` of the reference code's
training script (``setting_one/refuel.py`` in ZhaolinGao/REFUEL); the paper's text does not fix it where we
looked. Scale it with ``--pairs-per-iteration``."""
USER_BASE_URL_ENV = ("REFUEL_USER_BASE_URL", "OPENAI_BASE_URL")
"""Environment variables read (first set wins) for the base URL of the server of the paper preset's user
simulator; default ``http://127.0.0.1:8000/v1`` (``vllm serve`` on this machine)."""


def _paper(prompts: str = "ultrainteract") -> ExperimentConfig:
    """The REFUEL paper's setting (arXiv 2410.04612, setting one), on a prompt set (``"ultrainteract"``, ``"hh"``).

    Policy Llama-3-8B-Instruct, full fine-tuning in bf16; user simulator Llama-3.1-70B-Instruct with the
    paper's prompt, served by vLLM or any OpenAI-compatible server (``vllm serve
    meta-llama/Meta-Llama-3.1-70B-Instruct --tensor-parallel-size 4``; base URL from ``$REFUEL_USER_BASE_URL``
    or ``$OPENAI_BASE_URL``, API key from ``$OPENAI_API_KEY``); judge ArmoRM (its custom code needs the
    explicit ``trust_remote_code=True`` set here); H ~ U{1..5}; sampling temperature 0.8, responses up to
    1024 tokens (both sides); REFUEL with eta = 1 (the reference code's default), lr 3e-7, a gradient step
    per 128 pairs (the paper's batch size), one pass over each iteration's pairs, two iterations.

    Its optimiser: AdamW with betas (0.9, 0.95) and weight decay 1e-6, a cosine schedule with 10% warm-up
    within each iteration, and micro-batches of one pair with gradient accumulation (the reference code:
    1 pair per device x 32 accumulation steps x 4 GPUs = 128). Not reproduced: its DeepSpeed training with
    fp32 master weights (our multi-process training is plain DDP; parameter sharding is refused);
    ``refuel train --dry-run`` says what that means for memory. The length filter of the prompts counts 4 characters per token (the paper:
    Llama-3's tokenizer).
    """
    import os

    from refuel_env.tasks.open_chat import PAPER_TASK_KWARGS

    base_url = next((os.environ[k] for k in USER_BASE_URL_ENV if os.environ.get(k)), "http://127.0.0.1:8000/v1")
    task_kwargs = {k: v for k, v in PAPER_TASK_KWARGS.items() if k != "max_turns"}  # env.max_turns says it
    task_kwargs.update(prompts=prompts, backend="openai", user_model=PAPER_USER, reward_model=PAPER_JUDGE,
                       judge="reward-model", trust_remote_code=True,
                       user_params={"max_new_tokens": 1024, "temperature": 0.8},
                       backend_kwargs={"base_url": base_url, "api_key_env": "OPENAI_API_KEY", "timeout": 600.0,
                                       "concurrency": 32})
    env = EnvConfig(task="open-chat-v0", task_kwargs=task_kwargs, max_turns=5, horizon="uniform", user="llm",
                    judge="rule", user_kwargs={"format": "paper"},
                    judge_kwargs={"device": "cuda", "batch_size": 8, "max_length": 4096},
                    max_message_chars=8192, max_total_chars=65536)
    policy = PolicyConfig(model=PAPER_POLICY, dtype="bfloat16", device="cuda", gradient_checkpointing=True,
                          generation_batch_size=16, score_batch_size=2)
    return ExperimentConfig(
        preset=f"paper-{prompts}", env=env, policy=policy, agents=["refuel"], seeds=[0], iterations=2,
        pairs_per_iteration=PAPER_PAIRS_PER_ITERATION,
        eval=EvalConfig(n_dialogues=500, seed=1234, temperature=None, curve_every=1, curve_n_dialogues=128,
                        examples=5, bootstrap=2000),
        agent_options={"lr": 3e-7, "epochs": 1, "minibatch_size": 128, "micro_batch_size": 1, "max_new_tokens": 1024,
                       "temperature": 0.8, "eta": 1.0, "weight_decay": 1e-6, "lr_schedule": "cosine",
                       "warmup_ratio": 0.1, "adam_betas": [0.9, 0.95]},
        checkpoint_every=1)


PRESETS = {"quick": _quick, "default": _default, "full": _full,
           "paper-ultrainteract": lambda: _paper("ultrainteract"), "paper-hh": lambda: _paper("hh")}


def preset(name: str) -> ExperimentConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None


# ---------------------------------------------------------------------------------------------- files
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
        sub = {"env": EnvConfig, "policy": PolicyConfig, "eval": EvalConfig}.get(k) if cls is ExperimentConfig else None
        if sub is not None and isinstance(v, dict):
            _check_keys(v, sub, where + k + ".")


def from_dict(d: dict, base: ExperimentConfig | None = None) -> ExperimentConfig:
    """An ExperimentConfig from a (partial) dict on top of ``base`` (or of a preset named by d["preset"])."""
    d = dict(d)
    if base is None:
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
    """A command-line value: JSON when it parses (numbers, true/false/null, lists, tables), else the string."""
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


def agent_kwargs(cfg: ExperimentConfig, spec: AgentSpec, seed: int) -> dict:
    """The options one row's agent is built with: the common ones its config knows, the matched batch size,
    the row's own options, and the seed."""
    from . import dpo, ppo, rebel, refuel  # noqa: F401  (register the built-in agents)
    from .base import AGENTS
    from .pairs import PairAgent

    cls = AGENTS.get(spec.agent)
    config_cls = getattr(cls, "Config", None)
    known = {f.name for f in dataclasses.fields(config_cls)} if config_cls and dataclasses.is_dataclass(config_cls) else None
    common = dict(cfg.agent_options)
    # pair agents count pairs (two dialogues each); agents that sample whole dialogues count dialogues
    per_pair = isinstance(cls, type) and issubclass(cls, PairAgent)
    common["batch_size"] = cfg.pairs_per_iteration if per_pair else cfg.ppo_dialogues
    common["seed"] = seed
    out = {k: v for k, v in common.items() if known is None or k in known}
    out.update(spec.options)
    return out
