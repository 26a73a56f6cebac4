"""The one place that builds what a run needs from its configuration: the env, the policy, pi_0 and the agents.

``refuel bench``, ``refuel train`` and ``refuel eval`` all go through here, so that they build the same
things the same way (with LoRA, pi_0 is always the policy's own base weights with the adapters off).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from refuel_env.types import SamplingParams

from .config import EnvConfig, ExperimentConfig, PolicyConfig
from .rows import AgentSpec

logger = logging.getLogger(__name__)


def make_env(env: EnvConfig, num_envs: int = 1):
    """The batched env (``gym.make_vec("RefuelDialogue-v0", ...)``); agents roll out through its dialogue machine."""
    import gymnasium as gym

    import refuel_env  # noqa: F401  (registers the env)

    return gym.make_vec("RefuelDialogue-v0", num_envs=num_envs, **env.kwargs())


def reference_config(pol: PolicyConfig, env: EnvConfig):
    """The :class:`~agents.engine.reference.ReferenceConfig` of the built-in pi_0 for this env."""
    from ..engine.reference import ReferenceConfig

    names = {"n_items": "n_items", "noise": "noise", "tell_horizon": "tell_horizon", "demo_epsilon": "epsilon",
             "demo_final_error": "final_error"}  # the task's settings that pi_0's demonstrations depend on
    task = {mine: env.task_kwargs[k] for k, mine in names.items() if k in env.task_kwargs}
    return ReferenceConfig(**{"max_turns": env.max_turns, **task, **pol.reference})


def sampling(cfg: ExperimentConfig) -> SamplingParams:
    """How pi_0 samples in a run: the agents' common ``temperature`` and ``max_new_tokens``."""
    o = cfg.agent_options
    return SamplingParams(max_new_tokens=int(o.get("max_new_tokens", 24)), temperature=float(o.get("temperature", 1.0)))


def load_policy(pol: PolicyConfig, env: EnvConfig, name: str = "pi_0", log=logger.info, lora: bool = True, seed: int = 0,
                frozen: bool = False):
    """A fresh, trainable copy of pi_0 (built and cached on first use); with LoRA adapters when ``pol.lora`` is
    set and ``lora`` is True (their random init drawn with ``seed``). ``frozen``: a read-only pi_0 of a model
    directory is the process's shared copy of its weights (also the env's user's and judge's, when they run the
    same checkpoint: :func:`refuel_env.models.frozen_model`)."""
    from ..engine.policy import Policy
    from ..engine.reference import reference_policy

    defaults = PolicyConfig()
    opts = {k: getattr(pol, k) for k in ("dtype", "device", "gradient_checkpointing", "generation_batch_size",
                                         "score_batch_size") if getattr(pol, k) != getattr(defaults, k)}
    if lora and pol.lora not in (None, False):
        opts.update(lora=pol.lora, lora_seed=seed)
    if pol.model:
        from refuel_env.models import resolve_model

        if frozen:
            opts.pop("gradient_checkpointing", None)  # nothing to recompute: a frozen pi_0 takes no gradient
        return Policy.from_pretrained(resolve_model(pol.model), name=name, frozen=frozen, **opts)
    if env.task != "guess-item-v0":
        raise ValueError(f"the built-in pi_0 is for guess-item-v0; for task {env.task!r} set policy.model to a "
                         "Hugging Face model directory (or \"smollm2\")")
    policy = reference_policy(reference_config(pol, env), cache=pol.cache, log=log)
    policy.name = name
    policy.place(device=opts.get("device"), dtype=opts.get("dtype"))
    policy.generation_batch_size, policy.score_batch_size = pol.generation_batch_size, int(pol.score_batch_size)
    if pol.gradient_checkpointing:
        policy.enable_gradient_checkpointing()
    if "lora" in opts:
        policy.add_lora(pol.lora, seed=seed)
    return policy


def load_reference(pol: PolicyConfig, env: EnvConfig, log=logger.info):
    """pi_0, frozen (requires no gradients, eval mode)."""
    ref = load_policy(pol, env, name="pi_0", log=log, lora=False, frozen=True)
    ref.model.requires_grad_(False)
    ref.model.eval()
    return ref


def policy_and_reference(pol: PolicyConfig, env: EnvConfig, name: str = "policy", log=logger.info, seed: int = 0,
                         reference=None):
    """The policy to train and its pi_0. With LoRA, pi_0 is the policy's own model with its adapters disabled
    (one copy of the base weights); without, ``reference`` (a frozen pi_0 shared by several agents) or a
    freshly loaded frozen copy."""
    policy = load_policy(pol, env, name=name, log=log, seed=seed)
    if policy.is_lora:
        return policy, policy.reference("pi_0")
    return policy, reference if reference is not None else load_reference(pol, env, log=log)


def agent_kwargs(cfg: ExperimentConfig, spec: AgentSpec, seed: int) -> dict:
    """The options one row's agent is built with: the common ones its config knows, the matched batch size, the
    row's tuned settings (``cfg.tuned``, under its label or the row it is tuned as), the row's own options, the
    seed; then the options the row negates (the negative control's eta)."""
    from ..algorithms.pairs import PairAgent
    from ..base import agent_registry

    cls = agent_registry().get(spec.agent)
    config_cls = getattr(cls, "Config", None)
    known = {f.name for f in dataclasses.fields(config_cls)} if config_cls and dataclasses.is_dataclass(config_cls) else None
    common = dict(cfg.agent_options)
    # pair agents count pairs (two dialogues each); agents that sample whole dialogues count dialogues
    per_pair = isinstance(cls, type) and issubclass(cls, PairAgent)
    common["batch_size"] = cfg.pairs_per_iteration if per_pair else cfg.ppo_dialogues
    common["seed"] = seed
    out = {k: v for k, v in common.items() if known is None or k in known}
    out.update(cfg.tuned.get(spec.tune_as or spec.label, {}))
    out.update(spec.options)
    for k in spec.negate:
        default = next((f.default for f in dataclasses.fields(config_cls) if f.name == k), None) if known else None
        if not isinstance(out.get(k, default), (int, float)):
            raise ValueError(f"row {spec.label!r} negates {k!r}, which its agent {spec.agent!r} does not have as a number")
        out[k] = -out.get(k, default)
    return out


def training_env(cfg: ExperimentConfig, spec: AgentSpec):
    """The env row ``spec`` trains on: the common env, or its variant when the row declares one (``spec.env``);
    every row is evaluated on the common env."""
    if not spec.env:
        return None
    from .config import merge

    return make_env(EnvConfig(**merge(dataclasses.asdict(cfg.env), spec.env)))


def build_agent(cfg: ExperimentConfig, spec: AgentSpec, seed: int, reference=None, log=logger.info):
    """Row ``spec``'s agent for training seed ``seed``: a fresh copy of pi_0 (with LoRA adapters if configured)
    as its policy, and pi_0 (``reference`` if given and the policy has no adapters) as its frozen reference."""
    from ..base import make_agent

    policy, ref = policy_and_reference(cfg.policy, cfg.env, name=spec.label, log=log, seed=seed, reference=reference)
    return make_agent(spec.agent, policy=policy, ref_policy=ref, **agent_kwargs(cfg, spec, seed))


def checkpoint_model_dir(path: str | Path) -> tuple[Path, Path]:
    """(the checkpoint, its model directory) of what ``refuel eval --checkpoint`` names: a run's checkpoint
    (``RUN/checkpoints/final``; a run directory stands for its final checkpoint), a checkpoint of the earlier
    layout (model in ``policy/``), or any Hugging Face model directory. Checked before any work: a missing
    directory, or a checkpoint whose files do not match its manifest, is an error that says what to do."""
    path = Path(path)
    if (path / "checkpoints" / "final").is_dir():
        path = path / "checkpoints" / "final"  # a run directory: its final checkpoint
    if not path.is_dir():
        raise FileNotFoundError(f"--checkpoint {path} is not a directory; give a run's checkpoints/final (or "
                                "checkpoints/latest), or a Hugging Face model directory")
    model_dir = path / "policy" if (path / "policy").is_dir() else path
    if not any((model_dir / n).exists() for n in ("config.json", "adapter_config.json")):
        raise FileNotFoundError(f"--checkpoint {path} holds no model (no config.json, no adapter_config.json); give a "
                                "run's checkpoints/final (or checkpoints/latest), or a Hugging Face model directory")
    if (path / "trainer_state.json").exists():
        from .checkpoints import verify

        problem, _ = verify(path)
        if problem is not None:
            raise ValueError(f"--checkpoint {path} is damaged: {problem}; evaluate the run's checkpoints/latest or "
                             "checkpoints/previous instead")
    return path, model_dir


def load_checkpoint_policy(path: str | Path, base_model: str | None = None, dtype=None, device=None):
    """The policy of an agent checkpoint (or a model directory; see :func:`checkpoint_model_dir`) and the
    sampling it was trained with (from the checkpoint's ``agent_config.json``, None if it has none). A LoRA
    checkpoint's adapters go on ``base_model`` (default: the base model they name)."""
    from ..engine.policy import Policy

    path, model_dir = checkpoint_model_dir(path)
    policy = Policy.from_pretrained(str(model_dir), name=path.name, base_model=base_model, dtype=dtype, device=device,
                                    trainable=False)
    meta = path / "agent_config.json"
    params = None
    if meta.exists():
        m = json.loads(meta.read_text())
        params = SamplingParams(max_new_tokens=int(m.get("max_new_tokens", 32)), temperature=float(m.get("temperature", 1.0)))
    return policy, params
