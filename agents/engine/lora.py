"""LoRA adapters through ``peft``: options, adapter wrapping, and pi_0 as the same model with adapters off.

:func:`add_lora` wraps a model in adapters whose only trainable parameters are the adapters.
:class:`AdapterDisabledPolicy` is then pi_0 *without a second copy of the weights*: the same model run inside
peft's ``disable_adapter()`` context. That is exactly pi_0, since the base weights are frozen and never change.
Checkpoints of a LoRA policy hold the adapters only (peft's ``adapter_model.safetensors`` +
``adapter_config.json``), plus the base model's config as ``base_config.json`` and the tokenizer.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from .policy import Policy

LORA_DEFAULTS = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}
"""LoRA options used where ``policy.lora`` leaves them out (``"all-linear"``: every linear layer but the output layer)."""
LORA_ALIASES = {"alpha": "lora_alpha", "dropout": "lora_dropout"}


def lora_options(options: Any) -> dict:
    """``policy.lora`` with defaults filled in: ``True``/``{}`` mean the defaults; keys ``r``, ``alpha``,
    ``dropout``, ``target_modules``, or any other field of ``peft.LoraConfig``."""
    if options is True:
        options = {}
    if not isinstance(options, dict):
        raise TypeError(f"policy.lora must be a table of LoRA options (r, alpha, dropout, target_modules) or true; "
                        f"got {options!r}")
    opts = dict(LORA_DEFAULTS)
    for k, v in options.items():
        opts[{v2: k2 for k2, v2 in LORA_ALIASES.items()}.get(k, k)] = v  # lora_alpha -> alpha
    return opts


def lora_config(options: Any):
    """A ``peft.LoraConfig`` (task CAUSAL_LM, no bias training) from :func:`lora_options`."""
    try:
        from peft import LoraConfig
    except ImportError:
        raise ImportError("LoRA needs peft: pip install 'refuel-env[peft]' (or pip install peft)") from None
    kw = {LORA_ALIASES.get(k, k): v for k, v in lora_options(options).items()}
    kw.setdefault("bias", "none")
    kw["task_type"] = "CAUSAL_LM"
    try:
        return LoraConfig(**kw)
    except TypeError as e:
        raise TypeError(f"bad LoRA options {options!r}: {e}") from None




def add_lora(model, options: dict | None = None, seed: int | None = 0):
    """``model`` wrapped in LoRA adapters (``peft.get_peft_model``). The adapters start at zero (LoRA's B
    matrices are zero-initialised), so the model's outputs are unchanged; the random A matrices are drawn
    with ``seed`` (without touching torch's global random state)."""
    from peft import get_peft_model

    config = lora_config(options or {})
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # peft asks transformers about gradient checkpointing by a name transformers 5 deprecates (noise)
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        if seed is not None:
            torch.manual_seed(int(seed))
        return get_peft_model(model, config)


class AdapterDisabledPolicy(Policy):
    """A LoRA policy's model with its adapters switched off: pi_0 without a second copy of the base weights.

    It shares the model with the trained policy, so do not freeze or move ``.model`` through this view
    (``requires_grad_(False)`` would freeze the adapters too). Made by :meth:`Policy.reference`."""

    def token_logprobs(self, enc, model=None, temperature: float = 1.0, return_hidden: bool = False,
                       turns_only: bool = False):
        with self.model.disable_adapter():
            return super().token_logprobs(enc, model, temperature, return_hidden, turns_only)

    def generate(self, conversations, params, seed=None):
        with self.model.disable_adapter():
            return super().generate(conversations, params, seed)

    def save(self, path: str) -> None:
        import copy

        base = copy.deepcopy(self.model).unload()  # the base model alone, without adapter layers
        base.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)

    def clone(self, name: str | None = None) -> "Policy":
        import copy

        m = copy.deepcopy(self.model).unload()
        m.requires_grad_(False)
        m.eval()
        return self.frozen(m, name)
