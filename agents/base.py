"""The one interface every algorithm implements, and the agent registry.

    agent = make_agent("refuel", policy=..., eta=1.0)
    batch = agent.collect(env)      # through the shared rollout engine
    metrics = agent.update(batch)   # one optimisation phase
    agent.act(observations)         # answers for a batch of dialogues
    agent.save(path); agent.load(path)

A new algorithm is a subclass (or any class with these methods) registered with
``@register_agent("name")``; the trainer, evaluation and benchmark take it unchanged. The built-in ones
(:mod:`agents.algorithms`) register themselves when that package is imported, which :func:`make_agent`
and :func:`agent_registry` do first.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from refuel_env.core import machine_of
from refuel_env.registry import Registry
from refuel_env.types import SamplingParams

from .engine import distributed
from .engine.optimise import Optimising
from .engine.policy import Policy
from .engine.rollout import RolloutEngine

AGENTS: Registry = Registry("agent", hint='decorate your Agent subclass with @agents.register_agent("name") (and '
                                          'on the command line load its file with --import FILE)')


def register_agent(name: str):
    """Class decorator: ``@register_agent("my-algo")`` makes ``make_agent("my-algo", ...)`` work."""
    return AGENTS.register(name)


def agent_registry() -> Registry:
    """The agent registry, with the built-in agents registered."""
    from . import algorithms  # noqa: F401  (the built-in agents register themselves on import, once)

    return AGENTS


def make_agent(name: Any, **config) -> "Agent":
    """Build an agent by registered name (``"refuel"``, ``"rebel"``, ``"dpo"``, ``"ppo"``, ...) or from a class."""
    cls = agent_registry().get(name) if isinstance(name, str) else name
    return cls(**config)


@dataclass
class AgentConfig:
    """Fields shared by every agent (algorithms add their own)."""

    seed: int = 0
    """Seeds rollouts, generation and minibatch order."""
    batch_size: int = 64
    """Pairs (or dialogues, for PPO) collected per iteration."""
    lr: float = 3e-4
    """AdamW learning rate."""
    epochs: int = 2
    """Passes over the batch per update."""
    minibatch_size: int = 32
    """Examples per gradient step."""
    micro_batch_size: int | None = None
    """Rows per forward and backward pass: a minibatch is split into micro-batches whose gradients are
    accumulated before its one optimiser step (gradient accumulation; the step is the same, up to float
    rounding, as on the whole minibatch at once). None: the whole minibatch in one pass."""
    max_grad_norm: float = 1.0
    """Gradient clipping."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_betas: tuple = (0.9, 0.999)
    """AdamW betas."""
    lr_schedule: str = "constant"
    """"constant", or "cosine": within each ``update``, linear warm-up over ``warmup_ratio`` of its optimiser
    steps, then cosine decay to 0 (each iteration is a fresh regression problem, as in the paper's code)."""
    warmup_ratio: float = 0.0
    """Fraction of an update's optimiser steps spent warming up (with ``lr_schedule="cosine"``)."""
    temperature: float = 1.0
    """Sampling temperature of the policy (log-probabilities use the same temperature)."""
    max_new_tokens: int = 24
    """Longest response."""

    def __post_init__(self):
        def number(name, lo, *, integer=False, open_=False, none=False):
            v = getattr(self, name)
            if v is None and none:
                return
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not float(v).is_integer()) \
                    or not math.isfinite(v) or (v <= lo if open_ else v < lo):
                kind = "an integer" if integer else "a finite number"
                raise ValueError(f"{name} must be {'>' if open_ else '>='} {lo} ({kind}), got {v!r}")

        number("lr", 0, open_=True)
        number("max_grad_norm", 0, open_=True)
        number("weight_decay", 0)
        number("temperature", 0)
        for name in ("batch_size", "epochs", "minibatch_size", "max_new_tokens"):
            number(name, 1, integer=True)
        number("micro_batch_size", 1, integer=True, none=True)
        if self.lr_schedule not in ("constant", "cosine") or not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine' and warmup_ratio in [0, 1); got "
                             f"{self.lr_schedule!r}, {self.warmup_ratio}")


@dataclass
class Batch:
    """What ``collect`` gathered: algorithm-specific ``data`` and budget ``stats``
    (``dialogues``, ``tokens_generated``, ``pairs``, and counts of what was dropped and why)."""

    data: dict
    stats: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.stats.get("examples", 0))


class Agent(Optimising):
    """Shared plumbing: policy, frozen reference, optimiser, seeded randomness, checkpoints.

    ``iteration`` counts the completed collect-and-update iterations; the trainer advances it (and saves it).
    """

    name = "agent"
    Config = AgentConfig
    data_parallel = False
    """Whether ``collect`` and ``update`` work under a multi-process launch (see :mod:`agents.engine.distributed`):
    ``collect`` returns the batch of all processes on every process, ``update`` splits each minibatch with
    ``self.dist.share``, runs its forward passes through :meth:`wrapped` and weighs its share in :meth:`optimise`."""

    def __init__(self, policy: Policy | None = None, ref_policy: Policy | None = None,
                 config: AgentConfig | None = None, **overrides):
        cfg = config or self.Config()
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cfg)}
        if unknown:
            raise TypeError(f"unknown {type(self).__name__} options {sorted(unknown)}; "
                            f"known: {[f.name for f in dataclasses.fields(cfg)]}")
        self.config = dataclasses.replace(cfg, **overrides)
        if policy is None:  # the built-in task's pi_0 (built and cached on first use)
            from .engine.reference import reference_policy

            policy = reference_policy()
        self.policy = policy
        self.ref_policy = ref_policy if ref_policy is not None else policy.clone("pi_0")
        torch.manual_seed(self.config.seed)
        self.setup()
        self.optimizer = torch.optim.AdamW(self.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay,
                                           betas=tuple(self.config.adam_betas))
        self.dist = distributed.current()
        self._wrapped: dict[int, torch.nn.Module] = {}
        if self.dist.enabled:  # DDP: wrap the trained modules and the optimiser; the frozen reference follows
            if not self.data_parallel:
                raise NotImplementedError(
                    f"agent {self.name!r} ({type(self).__name__}) is not written for multi-process training (its class "
                    "does not set data_parallel = True); run it in one process, or see 'Multi-process training' in "
                    "the README for what collect and update must do")
            modules = self.modules()
            *wrapped, self.optimizer = self.dist.prepare(*modules, self.optimizer)
            self._wrapped = {id(m): w for m, w in zip(modules, wrapped)}
            self.ref_policy.model.to(self.dist.device)
            torch.manual_seed(self.dist.process_seed(self.config.seed))  # dropout masks: a stream per process
        self.rng = np.random.default_rng(self.config.seed)
        self.iteration = 0
        self.skipped = {"nonfinite_loss": 0, "empty_batches": 0}

    @property
    def sampling(self) -> SamplingParams:
        """How the policy (and pi_0, where it speaks for this agent) samples responses."""
        return SamplingParams(max_new_tokens=int(self.config.max_new_tokens), temperature=float(self.config.temperature))

    # hooks for subclasses
    def setup(self) -> None:
        """Build extra modules (e.g. a value head) before the optimiser is made."""

    def parameters(self):
        return [p for p in self.policy.model.parameters() if p.requires_grad]

    def modules(self) -> list[torch.nn.Module]:
        """The trained modules (those holding ``parameters()``); a subclass with extra modules adds them."""
        return [self.policy.model]

    def wrapped(self, module: torch.nn.Module) -> torch.nn.Module:
        """The module to run the forward passes of an update through: under a multi-process launch its DDP
        wrapper (whose backward averages the gradients over the processes), otherwise the module itself."""
        return self._wrapped.get(id(module), module)

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    # the interface
    def collect(self, env) -> Batch:
        raise NotImplementedError

    def update(self, batch: Batch) -> dict[str, float]:
        raise NotImplementedError

    def act(self, observations, temperature: float | None = None) -> list[str]:
        """Responses of the current policy for a batch of observations (sampled, seeded by the agent)."""
        params = self.sampling if temperature is None else dataclasses.replace(self.sampling, temperature=float(temperature))
        return self.policy.act(observations, params, seed=int(self.rng.integers(2**31)))

    def engine(self, env) -> RolloutEngine:
        """The rollout engine on ``env``'s dialogue machine; under a multi-process launch it rolls out this
        process's share."""
        eng = getattr(self, "_engine", None)
        if eng is None or eng.machine is not machine_of(env):
            self._engine = eng = RolloutEngine(env, dist=self.dist)
        return eng

    def budget(self, engine: RolloutEngine, before: dict) -> dict:
        return {k: engine.stats[k] - before.get(k, 0) for k in ("dialogues", "tokens_generated")}

    # checkpoints
    def save(self, path: str | Path) -> None:
        """A Hugging Face-format checkpoint: the policy's model directory at ``path``'s root (``config.json``,
        safetensors weights or LoRA adapters, tokenizer), so that ``AutoModelForCausalLM.from_pretrained(path)``
        loads it as it loads a ``transformers`` Trainer checkpoint, plus ``agent_config.json`` and
        ``agent_state.pt`` (optimiser and random state) beside it."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.policy.save(str(path))
        state = {"optimizer": self.optimizer.state_dict(), "iteration": self.iteration,
                 "rng": json.dumps(self.rng.bit_generator.state), "torch_rng": torch.get_rng_state(),
                 "skipped": json.dumps(self.skipped), "extra": self.extra_state()}
        torch.save(state, path / "agent_state.pt")
        (path / "agent_config.json").write_text(json.dumps({"agent": self.name, **asdict(self.config)}, indent=2))

    def load(self, path: str | Path) -> None:
        path = Path(path)
        meta = json.loads((path / "agent_config.json").read_text())
        if meta.get("agent") != self.name:
            raise ValueError(f"{path} is a checkpoint of agent {meta.get('agent')!r}, not {self.name!r}")
        model_dir = path / "policy" if (path / "policy").is_dir() else path  # policy/: the earlier layout
        saved = next((model_dir / n for n in ("config.json", "base_config.json") if (model_dir / n).exists()), None)
        if saved is None:
            raise FileNotFoundError(f"{path} holds no model config (config.json, or base_config.json beside LoRA "
                                    "adapters): not a checkpoint that agent.save wrote")
        saved_cfg = json.loads(saved.read_text())
        mine = self.policy.model.config.to_dict()
        keys = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
        diff = {k: (saved_cfg.get(k), mine.get(k)) for k in keys if saved_cfg.get(k) != mine.get(k)}
        if diff:
            raise ValueError(f"{path} holds a checkpoint of another model (saved vs this policy: {diff}); "
                             "load it into an agent built on the same architecture")
        missing, unexpected = self.policy.load_weights(model_dir)  # full weights, or LoRA adapters
        real_missing = [k for k in missing if "lm_head" not in k]  # tied embeddings are not saved twice
        if real_missing or unexpected:
            raise ValueError(f"checkpoint {path} does not fit this policy: missing {real_missing[:5]}, unexpected {unexpected[:5]}")
        state = torch.load(path / "agent_state.pt", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration = int(state["iteration"])
        self.rng.bit_generator.state = json.loads(state["rng"])
        torch.set_rng_state(state["torch_rng"])  # the main process's, under a multi-process launch
        if self.dist.rank:  # the others fork their own stream from it (dropout masks)
            torch.manual_seed(self.dist.process_seed(int(torch.randint(2**31, ()))))
        self.skipped = json.loads(state["skipped"])
        self.load_extra_state(state["extra"])

