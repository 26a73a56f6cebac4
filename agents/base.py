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

from refuel_env.core import machine_of
from refuel_env.registry import Registry

from . import distributed
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
    data_parallel = False
    """Whether ``collect`` and ``update`` work under a multi-process launch (see :mod:`agents.distributed`):
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
        if policy is None:
            from .reference import reference_policy

            policy = reference_policy()
        self.policy = policy
        self.policy.temperature, self.policy.max_new_tokens = self.config.temperature, self.config.max_new_tokens
        self.ref_policy = ref_policy if ref_policy is not None else policy.clone("pi_0")
        self.ref_policy.temperature, self.ref_policy.max_new_tokens = self.config.temperature, self.config.max_new_tokens
        torch.manual_seed(self.config.seed)
        self.setup()
        if self.config.lr_schedule not in ("constant", "cosine") or not 0 <= self.config.warmup_ratio < 1:
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine' and warmup_ratio in [0, 1); got "
                             f"{self.config.lr_schedule!r}, {self.config.warmup_ratio}")
        if self.config.micro_batch_size is not None and self.config.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be None or >= 1, got {self.config.micro_batch_size}")
        self.optimizer = torch.optim.AdamW(self.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay,
                                           betas=tuple(self.config.adam_betas))
        self._steps = (0, 1)  # (optimiser steps taken in this update, steps it will take): the lr schedule
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
        return self.policy.act(observations, seed=int(self.rng.integers(2**31)), temperature=temperature)

    def engine(self, env) -> RolloutEngine:
        """The rollout engine on ``env``; under a multi-process launch it rolls out this process's share."""
        eng = getattr(self, "_engine", None)
        if eng is None or eng.machine is not machine_of(env):
            self._engine = eng = RolloutEngine(env, dist=self.dist)
        return eng

    # shared optimisation step
    def minibatches(self, n: int):
        """Global indices of each minibatch (the same on every process; see :meth:`optimise` for splitting one)."""
        mb = max(1, self.config.minibatch_size)
        self._steps = (0, self.config.epochs * -(-n // mb))
        for _ in range(self.config.epochs):
            perm = self.rng.permutation(n)
            for i in range(0, n, mb):
                yield perm[i:i + mb]

    def micro_batches(self, rows):
        """``rows`` (this process's share of a minibatch) in chunks of ``micro_batch_size``."""
        k = self.config.micro_batch_size or max(len(rows), 1)
        return [rows[i:i + k] for i in range(0, len(rows), k)] or [rows]

    def lr_now(self) -> float:
        """The learning rate of the next optimiser step (see ``lr_schedule``)."""
        c = self.config
        if c.lr_schedule == "constant":
            return c.lr
        step, total = self._steps
        warm = int(c.warmup_ratio * total)
        if step < warm:
            return c.lr * (step + 1) / (warm + 1)
        return c.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(total - warm, 1)))

    def accumulate_step(self, parts, weight: float = 1.0) -> dict | None:
        """One optimiser step on a minibatch given as micro-batches (gradient accumulation).

        ``parts`` yields ``(loss, fraction, info)`` per micro-batch: its mean loss, its fraction of what this
        process's share of the minibatch loss averages over (rows, or tokens), and scalar metrics. Each
        micro-batch is backpropagated before the next is computed (a generator keeps one micro-batch's
        activations alive at a time); ``weight`` is as in :meth:`optimise`."""
        self.optimizer.zero_grad(set_to_none=True)
        total, agg = 0.0, {}
        scale = weight * self.dist.world_size if self.dist.enabled else 1.0
        for loss, fraction, info in parts:
            scaled = loss * (fraction * scale)
            self.dist.backward(scaled) if self.dist.enabled else scaled.backward()
            total = total + loss.detach() * fraction
            for k, v in info.items():
                agg[k] = agg.get(k, 0.0) + float(v) * fraction
        return self.optimise(torch.as_tensor(total), weight, agg, backward_done=True)

    def optimise(self, loss: torch.Tensor, weight: float = 1.0, info: dict | None = None,
                 backward_done: bool = False) -> dict | None:
        """One gradient step; a non-finite loss (or gradient) is skipped and counted, never applied.

        Returns the minibatch's ``loss`` and ``info`` values as floats, or None when the step was skipped.

        One process: ``loss`` is the minibatch's loss (``weight`` is 1). Under a multi-process launch each process
        passes the mean loss over its share of the minibatch (:meth:`Distributed.share`, forwarded through
        :meth:`wrapped`) and ``weight`` = its share's fraction of what the minibatch's loss averages over (rows,
        or tokens); the step then equals one process's step on the whole minibatch, and the values returned are
        the whole minibatch's. A process with no share passes a zero loss that touches the parameters (e.g.
        ``logp.sum() * 0``) and weight 0, so that every process takes part in the gradient average.
        """
        info = info or {}
        if self.config.lr_schedule != "constant":
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_now()
        self._steps = (self._steps[0] + 1, self._steps[1])
        if not self.dist.enabled:
            if not torch.isfinite(loss):
                self.skipped["nonfinite_loss"] += 1
                self.optimizer.zero_grad(set_to_none=True)
                return None
            if not backward_done:
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(self.parameters(), self.config.max_grad_norm)
            if not torch.isfinite(gn):
                self.skipped["nonfinite_loss"] += 1
                self.optimizer.zero_grad(set_to_none=True)
                return None
            self.optimizer.step()
            return {"loss": float(loss.detach()), **{k: float(v) for k, v in info.items()}}
        # every process runs the backward (DDP averages the gradients of all of them), then they agree on skipping
        if not backward_done:
            self.optimizer.zero_grad(set_to_none=True)
            self.dist.backward(loss * (weight * self.dist.world_size))
        gn = self.dist.clip_grad_norm_(self.parameters(), self.config.max_grad_norm)
        keys = sorted(info)
        mine = [float(loss.detach()), *(float(info[k]) for k in keys)]
        table = self.dist.all_gather_floats([x * weight if weight else 0.0 for x in mine] + [float(gn)])
        norms = table[:, -1]
        if np.all(np.isfinite(norms)) and not np.allclose(norms, norms[0], rtol=1e-5, atol=0):
            raise RuntimeError(f"the processes' gradient norms differ ({norms.tolist()}): the update did not run its "
                               "forward passes through agent.wrapped(module), so DDP did not average the gradients")
        values = table[:, :-1].sum(0)
        if not (np.isfinite(values[0]) and np.all(np.isfinite(norms))):
            self.skipped["nonfinite_loss"] += 1
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.step()
        return dict(zip(["loss", *keys], values.tolist()))

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
        missing, unexpected = self.policy.load_weights(path / "policy")  # full weights, or LoRA adapters
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


def finite_or_skip(x: np.ndarray) -> np.ndarray:
    """Mask of rows whose every value is finite."""
    return np.isfinite(x).reshape(len(x), -1).all(1)


def mean(xs) -> float:
    xs = [float(x) for x in xs]
    return float(sum(xs) / len(xs)) if xs else math.nan
