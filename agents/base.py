"""The one interface every algorithm implements, the agent registry, and shared plumbing.

    agent = make_agent("refuel", policy=..., eta=1.0)
    batch = agent.collect(env)      # through the shared rollout engine
    metrics = agent.update(batch)   # one optimisation phase
    agent.act(observations)         # answers for a batch of dialogues
    agent.save(path); agent.load(path)

A new algorithm is a subclass (or any class with these methods) registered with
``@register_agent("name")``; the trainer, evaluation and benchmark take it unchanged.
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

from refuel_env.registry import Registry

from .policy import Policy
from .rollout import RolloutEngine

AGENTS: Registry = Registry("agent")


def register_agent(name: str):
    """Class decorator: ``@register_agent("my-algo")`` makes ``make_agent("my-algo", ...)`` work."""
    return AGENTS.register(name)


def make_agent(name: Any, **config) -> "Agent":
    """Build an agent by registered name (``"refuel"``, ``"rebel"``, ``"dpo"``, ``"ppo"``, ...) or from a class."""
    from . import dpo, ppo, rebel, refuel  # noqa: F401  (register the built-in agents)

    cls = AGENTS.get(name) if isinstance(name, str) else name
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
    max_grad_norm: float = 1.0
    """Gradient clipping."""
    temperature: float = 1.0
    """Sampling temperature of the policy (log-probabilities use the same temperature)."""
    max_new_tokens: int = 24
    """Longest response."""


@dataclass
class Batch:
    """What ``collect`` gathered: algorithm-specific ``data`` and budget ``stats``
    (``dialogues``, ``tokens_generated``, ``pairs``, and counts of what was dropped and why)."""

    data: dict
    stats: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.stats.get("examples", 0))


class Agent:
    """Shared plumbing: policy, frozen reference, optimiser, seeded randomness, checkpoints."""

    name = "agent"
    Config = AgentConfig

    def __init__(self, policy: Policy | None = None, ref_policy: Policy | None = None,
                 config: AgentConfig | None = None, **overrides):
        cfg = config or self.Config()
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cfg)}
        if unknown:
            raise TypeError(f"unknown {type(self).__name__} options {sorted(unknown)}; "
                            f"known: {[f.name for f in dataclasses.fields(cfg)]}")
        self.config = dataclasses.replace(cfg, **overrides)
        if policy is None:
            from .reference import reference_policy

            policy = reference_policy()
        self.policy = policy
        self.policy.temperature, self.policy.max_new_tokens = self.config.temperature, self.config.max_new_tokens
        self.ref_policy = ref_policy if ref_policy is not None else policy.clone("pi_0")
        self.ref_policy.temperature, self.ref_policy.max_new_tokens = self.config.temperature, self.config.max_new_tokens
        torch.manual_seed(self.config.seed)
        self.setup()
        self.optimizer = torch.optim.AdamW(self.parameters(), lr=self.config.lr, weight_decay=0.0)
        self.rng = np.random.default_rng(self.config.seed)
        self.iteration = 0
        self.skipped = {"nonfinite_loss": 0, "empty_batches": 0}

    # hooks for subclasses
    def setup(self) -> None:
        """Build extra modules (e.g. a value head) before the optimiser is made."""

    def parameters(self):
        return [p for p in self.policy.model.parameters() if p.requires_grad]

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
        return self.policy.act(observations, seed=int(self.rng.integers(2**31)), temperature=temperature)

    def engine(self, env) -> RolloutEngine:
        eng = getattr(self, "_engine", None)
        if eng is None or eng.core is not getattr(getattr(env, "unwrapped", env), "core", None):
            self._engine = eng = RolloutEngine(env)
        return eng

    # shared optimisation step
    def minibatches(self, n: int):
        mb = max(1, self.config.minibatch_size)
        for _ in range(self.config.epochs):
            perm = self.rng.permutation(n)
            for i in range(0, n, mb):
                yield perm[i:i + mb]

    def optimise(self, loss: torch.Tensor) -> bool:
        """One gradient step; a non-finite loss is skipped and counted, never applied."""
        if not torch.isfinite(loss):
            self.skipped["nonfinite_loss"] += 1
            self.optimizer.zero_grad(set_to_none=True)
            return False
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(self.parameters(), self.config.max_grad_norm)
        if not torch.isfinite(gn):
            self.skipped["nonfinite_loss"] += 1
            self.optimizer.zero_grad(set_to_none=True)
            return False
        self.optimizer.step()
        return True

    def budget(self, engine: RolloutEngine, before: dict) -> dict:
        return {k: engine.stats[k] - before.get(k, 0) for k in ("dialogues", "tokens_generated")}

    # checkpoints
    def save(self, path: str | Path) -> None:
        """A Hugging Face-format checkpoint (safetensors) with the config, optimiser and random state."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.policy.save(str(path / "policy"))
        state = {"optimizer": self.optimizer.state_dict(), "iteration": self.iteration,
                 "rng": json.dumps(self.rng.bit_generator.state), "torch_rng": torch.get_rng_state(),
                 "skipped": json.dumps(self.skipped), "extra": self.extra_state()}
        torch.save(state, path / "agent_state.pt")
        (path / "agent_config.json").write_text(json.dumps({"agent": self.name, **asdict(self.config)}, indent=2))

    def load(self, path: str | Path) -> None:
        from safetensors.torch import load_file

        path = Path(path)
        meta = json.loads((path / "agent_config.json").read_text())
        if meta.get("agent") != self.name:
            raise ValueError(f"{path} is a checkpoint of agent {meta.get('agent')!r}, not {self.name!r}")
        saved_cfg = json.loads((path / "policy" / "config.json").read_text())
        mine = self.policy.model.config.to_dict()
        keys = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
        diff = {k: (saved_cfg.get(k), mine.get(k)) for k in keys if saved_cfg.get(k) != mine.get(k)}
        if diff:
            raise ValueError(f"{path} holds a checkpoint of another model (saved vs this policy: {diff}); "
                             "load it into an agent built on the same architecture")
        weights = {}
        for f in sorted((path / "policy").glob("*.safetensors")):
            weights.update(load_file(str(f)))
        missing, unexpected = self.policy.model.load_state_dict(weights, strict=False)
        real_missing = [k for k in missing if "lm_head" not in k]  # tied embeddings are not saved twice
        if real_missing or unexpected:
            raise ValueError(f"checkpoint {path} does not fit this policy: missing {real_missing[:5]}, unexpected {unexpected[:5]}")
        state = torch.load(path / "agent_state.pt", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration = int(state["iteration"])
        self.rng.bit_generator.state = json.loads(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        self.skipped = json.loads(state["skipped"])
        self.load_extra_state(state["extra"])


def finite_or_skip(x: np.ndarray) -> np.ndarray:
    """Mask of rows whose every value is finite."""
    return np.isfinite(x).reshape(len(x), -1).all(1)


def mean(xs) -> float:
    xs = [float(x) for x in xs]
    return float(sum(xs) / len(xs)) if xs else math.nan
