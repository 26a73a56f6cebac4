"""The policy: a Hugging Face causal LM with its tokenizer and chat template.

Two jobs: batched generation with seeds (ONE back-end call for N dialogues), and summed log-probabilities
of exactly the tokens of one assistant turn (the turn masks of :mod:`agents.engine.chat`). Sampling
settings travel with each call (:class:`refuel_env.SamplingParams`); log-probabilities take the sampling
temperature (logits divided by it, as in the REFUEL reference code), so that they are those of the
distribution that generated the data.

LoRA (``peft``, :mod:`agents.engine.lora`): :meth:`Policy.add_lora` wraps the model in adapters, and
:meth:`Policy.reference` is then pi_0 without a second copy of the weights.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from refuel_env.models import frozen_model, torch_dtype
from refuel_env.types import SamplingParams

from .chat import ChatEncoder, Conversation, EncodedTurns
from .scoring import chosen_logprobs, last_hidden

BASE_CONFIG = "base_config.json"
"""The base model's config in a LoRA policy's directory (beside peft's adapter files)."""


@dataclass
class Generated:
    """What one :meth:`Policy.generate` call produced."""

    texts: list[str]
    """One response per conversation (end-of-turn token removed, surrounding whitespace stripped)."""
    tokens: int
    """Tokens sampled over all rows (end-of-turn tokens included): the generation budget."""


class Policy:
    """A causal LM that can generate batches of assistant turns and score them.

    Args:
        model: any ``AutoModelForCausalLM``.
        tokenizer: its tokenizer, with a chat template.
        name: a label for logs and reports.
        generation_batch_size: rows per back-end call (None: the whole batch in one call).
        score_batch_size: rows per forward pass when scoring without gradients.
    """

    def __init__(self, model: PreTrainedModel, tokenizer, name: str = "policy", generation_batch_size: int | None = None,
                 score_batch_size: int = 64):
        self.chat = ChatEncoder(tokenizer, name)
        self.model, self.name = model, name
        self.generation_batch_size = generation_batch_size
        self.score_batch_size = int(score_batch_size)

    @property
    def tokenizer(self):
        return self.chat.tokenizer

    @classmethod
    def from_pretrained(cls, path: str, trust_remote_code: bool = False, dtype: Any = None, device: Any = None,
                        lora: dict | None = None, base_model: str | None = None, gradient_checkpointing: bool = False,
                        trainable: bool = True, lora_seed: int | None = 0, frozen: bool = False,
                        **kwargs) -> "Policy":
        """A policy from a Hugging Face model directory (or hub id), or from a LoRA checkpoint directory
        (``adapter_config.json``: the base is loaded from ``base_model``, else from the base the adapters name).

        Args:
            dtype: ``"bfloat16"``, ``"float32"``, ``"auto"``... (None: transformers' default).
            device: where to put the model (``"cuda"``, ``"cpu"``, ``"auto"``: CUDA when available).
            lora: add fresh LoRA adapters with these options (see :func:`lora_config`), drawn with ``lora_seed``.
            gradient_checkpointing: recompute activations in the backward pass (less memory, ~30% more time).
            trainable: for a LoRA checkpoint, whether its adapters are trainable.
            frozen: a read-only policy (a frozen pi_0) on the process's shared copy of the weights
                (:func:`refuel_env.models.frozen_model`): the same object as a simulated user's or judge's on
                the same checkpoint, dtype and device. Never train it.
        """
        path = str(path)
        adapter = Path(path) / "adapter_config.json"
        if adapter.exists():
            if lora is not None:
                raise ValueError(f"{path} already holds LoRA adapters; load it without lora=")
            base = base_model or json.loads(adapter.read_text()).get("base_model_name_or_path")
            if not base:
                raise ValueError(f"{path} holds LoRA adapters but does not name their base model; pass base_model= "
                                 "(on the command line: --set policy.model=BASE_MODEL_DIR)")
            policy = cls.from_pretrained(base, trust_remote_code, dtype=dtype, device=device,
                                         gradient_checkpointing=gradient_checkpointing, **kwargs)
            from peft import PeftModel

            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                policy.model = PeftModel.from_pretrained(policy.model, path, is_trainable=trainable)
            return policy
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        if frozen and lora in (None, False) and Path(path).is_dir():
            model = frozen_model(path, dtype=dtype, device=resolve_device(device), trust_remote_code=trust_remote_code)
            return cls(model, tok, name=kwargs.pop("name", str(path)), **kwargs)
        extra = {} if dtype is None else {"dtype": torch_dtype(dtype)}
        model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code, use_safetensors=True,
                                                     **extra)
        policy = cls(model, tok, name=kwargs.pop("name", str(path)), **kwargs)
        policy.place(device=device)
        if gradient_checkpointing:
            policy.enable_gradient_checkpointing()
        if lora is not None and lora is not False:
            policy.add_lora(lora, seed=lora_seed)
        return policy

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def place(self, device: Any = None, dtype: Any = None) -> "Policy":
        """Move the model to ``device`` (``"auto"``: CUDA when available) and/or cast it to ``dtype``."""
        device = resolve_device(device)
        dtype = None if dtype == "auto" else torch_dtype(dtype)
        if device is not None or dtype is not None:
            self.model.to(**{k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None})
        return self

    def enable_gradient_checkpointing(self) -> None:
        # non-reentrant checkpointing also works when the inputs need no gradient (frozen embeddings under LoRA)
        self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # ---------------------------------------------------------------- LoRA
    @property
    def is_lora(self) -> bool:
        """Whether the model is a peft model with adapters."""
        return hasattr(self.model, "peft_config") and hasattr(self.model, "disable_adapter")

    def add_lora(self, options: dict | None = None, seed: int | None = 0) -> "Policy":
        """Wrap the model in LoRA adapters (see :func:`agents.engine.lora.add_lora`); afterwards only they train."""
        from .lora import add_lora

        if self.is_lora:
            raise ValueError(f"policy {self.name!r} already has LoRA adapters")
        self.model = add_lora(self.model, options, seed)
        return self

    def reference(self, name: str = "pi_0") -> "Policy":
        """pi_0 of a LoRA policy: this same model with its adapters disabled (no second copy of the weights)."""
        from .lora import AdapterDisabledPolicy

        if not self.is_lora:
            raise ValueError(f"policy {self.name!r} has no LoRA adapters; for a frozen copy use clone()")
        return AdapterDisabledPolicy(self.model, self.tokenizer, name, self.generation_batch_size, self.score_batch_size)

    def trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    # ---------------------------------------------------------------- scoring
    def token_logprobs(self, enc: EncodedTurns, model=None, temperature: float = 1.0, return_hidden: bool = False,
                       turns_only: bool = False):
        """Per-token log-probabilities [N, T-1] (float32) of input_ids[:, 1:] at ``temperature`` (and the last
        hidden states [N, T, H] if asked). ``turns_only``: only at the turn mask's tokens, 0 elsewhere (the LM
        head runs at those positions alone). Memory-safe: see :mod:`agents.engine.scoring`."""
        enc = enc.to(self.device)
        states, head, hidden = last_hidden(model or self.model, enc.input_ids, enc.attention_mask, return_hidden)
        mask = enc.turn_mask[:, 1:] if turns_only else None
        lp = chosen_logprobs(states[:, :-1], head, enc.input_ids[:, 1:], mask, temperature)
        return (lp, hidden) if return_hidden else lp

    def sequence_logprobs(self, enc: EncodedTurns, model=None, temperature: float = 1.0) -> torch.Tensor:
        """Summed log-probabilities [N] of the masked turn tokens (differentiable)."""
        return self.token_logprobs(enc, model, temperature, turns_only=True).sum(-1)

    @torch.no_grad()
    def sequence_logprobs_nograd(self, enc: EncodedTurns, temperature: float = 1.0, batch_size: int | None = None,
                                 model=None) -> torch.Tensor:
        """:meth:`sequence_logprobs` without gradients, ``batch_size`` (default ``score_batch_size``) rows per pass."""
        batch_size = int(batch_size or self.score_batch_size)
        out = []
        for i in range(0, enc.input_ids.shape[0], batch_size):
            out.append(self.sequence_logprobs(enc.select(slice(i, i + batch_size)), model, temperature).cpu())
        return torch.cat(out) if out else torch.zeros(0)

    # ---------------------------------------------------------------- generation
    def backend(self):
        """The generation back end: ``refuel_env``'s batched ``TransformersBackend`` over this model
        (per-row seeded sampling, end-of-turn stopping, context checks)."""
        from refuel_env.backends.transformers_backend import TransformersBackend

        b = getattr(self, "_backend", None)
        if b is None or b.model is not self.model or b.batch_size != self.generation_batch_size:
            self._backend = TransformersBackend(self.model, self.tokenizer, batch_size=self.generation_batch_size)
        return self._backend

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams, seed: int | None = None) -> Generated:
        """ONE batched back-end call; row i is sampled with its own seed ``seed + i``, so the same seed gives the
        same responses. ``params.temperature == 0`` is greedy decoding."""
        if not conversations:
            return Generated([], 0)
        base = int(torch.randint(2**31 - 1, ()).item()) if seed is None else int(seed)
        gens = self.backend().generate_with_tokens([list(c) for c in conversations], params,
                                                   seeds=[(base + i) % (2**31 - 1) for i in range(len(conversations))])
        return Generated([g.text.strip() for g in gens], sum(g.completion_tokens for g in gens))

    def act(self, observations, params: SamplingParams, seed: int | None = None) -> list[str]:
        """Answer a batch of observations (env observations or conversations)."""
        convs = [list(o["messages"]) if isinstance(o, dict) else list(o) for o in observations]
        return self.generate(convs, params, seed=seed).texts

    # ---------------------------------------------------------------- persistence
    def save(self, path: str) -> None:
        """Safetensors weights, config and tokenizer. A LoRA policy saves its adapters only (peft's format:
        ``adapter_model.safetensors``, ``adapter_config.json``, which names the base model) and the base model's
        config as ``base_config.json`` (not ``config.json``: transformers would take the directory for a whole
        model), so that ``AutoModelForCausalLM.from_pretrained(path)`` loads base and adapters, as for any
        peft adapter directory."""
        self.model.save_pretrained(path, safe_serialization=True)
        if self.is_lora:
            cfg = self.model.get_base_model().config.to_dict()
            (Path(path) / BASE_CONFIG).write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str))
        self.tokenizer.save_pretrained(path)

    def load_weights(self, path: str | Path) -> tuple[list[str], list[str]]:
        """Load the weights that :meth:`save` wrote into this policy's model (same architecture; for a LoRA
        policy, same adapter shapes). Returns the (missing, unexpected) keys; for adapters, missing means
        adapter weights absent from the file (the base weights are this policy's own)."""
        from safetensors.torch import load_file

        path = Path(path)
        adapter_file = path / "adapter_model.safetensors"
        if self.is_lora:
            if not adapter_file.exists():
                raise ValueError(f"{path} holds full model weights, not LoRA adapters, but policy {self.name!r} has "
                                 "LoRA adapters; load it into a policy built without policy.lora")
            from peft import set_peft_model_state_dict

            try:
                res = set_peft_model_state_dict(self.model, load_file(str(adapter_file)))
            except RuntimeError as e:  # size mismatches: another rank or other target modules
                raise ValueError(f"the LoRA adapters in {path} do not fit policy {self.name!r} (different r or "
                                 f"target_modules?): {e}") from e
            return [k for k in res.missing_keys if "lora_" in k], list(res.unexpected_keys)
        if adapter_file.exists():
            raise ValueError(f"{path} holds LoRA adapters; load it into a policy built with the same policy.lora")
        weights = {}
        for f in sorted(path.glob("*.safetensors")):
            weights.update(load_file(str(f)))
        missing, unexpected = self.model.load_state_dict(weights, strict=False)
        return list(missing), list(unexpected)

    def clone(self, name: str | None = None) -> "Policy":
        import copy

        m = copy.deepcopy(self.model)
        m.requires_grad_(False)
        m.eval()
        return self.frozen(m, name)

    def frozen(self, model, name: str | None) -> "Policy":
        """A policy on ``model`` with this one's tokenizer and settings."""
        return Policy(model, self.tokenizer, name or f"{self.name}-frozen", self.generation_batch_size,
                      self.score_batch_size)


def resolve_device(device: Any) -> Any:
    """``"auto"``: CUDA when available, else the CPU; anything else as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
