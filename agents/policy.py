"""The policy: a Hugging Face causal LM with its tokenizer and chat template.

Two jobs: batched generation with seeds (ONE ``generate`` call for N dialogues), and summed
log-probabilities of exactly the tokens of one assistant turn.

The turn mask is the single truth for which tokens a loss sees. For a conversation and its k-th
assistant message, with P = template(messages before it, add_generation_prompt=True) and
F = template(messages up to and including it), the turn's tokens are F[len(P):]: what the chat
template renders for that assistant message, end-of-turn token included (and, as in TRL's
``DPOTrainer``, any separator the template puts after it). We check that P is a prefix of F
(prefix consistency) and raise :class:`TemplateError` when a template breaks it.

Log-probabilities are of the canonical tokenisation of the response text (what the model sees when
the dialogue goes on), not of the sampled ids; both pi_theta and pi_t are evaluated on the same ids.
Logits are divided by the sampling temperature, as in the REFUEL reference code, so that the
log-probabilities are those of the distribution that generated the data.

LoRA (``peft``): :meth:`Policy.add_lora` wraps the model in a ``PeftModel`` whose only trainable
parameters are the adapters. :meth:`Policy.reference` is then pi_0 *without a second copy of the
weights*: the same model run inside peft's ``disable_adapter()`` context. That is exactly pi_0, since
the base weights are frozen and never change. Checkpoints of a LoRA policy hold the adapters only
(peft's ``adapter_model.safetensors`` + ``adapter_config.json``), plus the base ``config.json`` and the
tokenizer; :meth:`Policy.from_pretrained` on such a directory loads the base and puts the adapters on it.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from trl.trainer.utils import selective_log_softmax

from .distributed import cat_rows

Conversation = list[dict]


class TemplateError(ValueError):
    """The tokenizer's chat template cannot be used to mask assistant turns."""


@dataclass
class EncodedTurns:
    """Right-padded token ids of N (context + assistant turn) sequences and their turn masks."""

    input_ids: torch.Tensor  # [N, T]
    attention_mask: torch.Tensor  # [N, T]
    turn_mask: torch.Tensor  # [N, T] 1 on the tokens of the trained turn(s)

    def to(self, device) -> "EncodedTurns":
        return EncodedTurns(self.input_ids.to(device), self.attention_mask.to(device), self.turn_mask.to(device))

    def select(self, idx) -> "EncodedTurns":
        ids, att, m = self.input_ids[idx], self.attention_mask[idx], self.turn_mask[idx]
        width = int(att.sum(1).max())
        return EncodedTurns(ids[:, :width], att[:, :width], m[:, :width])

    @staticmethod
    def cat(parts: Sequence["EncodedTurns"], pad_token_id: int) -> "EncodedTurns":
        """The rows of ``parts`` in order, right-padded to the widest."""
        return EncodedTurns(cat_rows([e.input_ids for e in parts], pad_token_id),
                            cat_rows([e.attention_mask for e in parts]), cat_rows([e.turn_mask for e in parts]))


class Policy:
    """A causal LM that can generate batches of assistant turns and score them.

    Args:
        model: any ``AutoModelForCausalLM``.
        tokenizer: its tokenizer, with a chat template.
        max_new_tokens: longest response generated.
        temperature: sampling temperature (also the temperature of the log-probabilities).
        name: a label for logs and reports.
    """

    def __init__(self, model: PreTrainedModel, tokenizer, max_new_tokens: int = 32, temperature: float = 1.0,
                 name: str = "policy", generation_batch_size: int | None = None, score_batch_size: int = 64):
        if getattr(tokenizer, "chat_template", None) is None:
            raise TemplateError(f"the tokenizer of {name!r} has no chat template; set tokenizer.chat_template "
                                "(e.g. copy one from an instruct model) before using it as a dialogue policy")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.max_new_tokens, self.temperature = int(max_new_tokens), float(temperature)
        self.generation_batch_size = generation_batch_size
        """Rows per ``generate`` call (None: the whole batch in one call)."""
        self.score_batch_size = int(score_batch_size)
        """Rows per forward pass when scoring without gradients (each pass holds [rows, tokens, vocab] logits)."""
        self.stats = {"template_errors": 0}

    @classmethod
    def from_pretrained(cls, path: str, trust_remote_code: bool = False, dtype: Any = None, device: Any = None,
                        lora: dict | None = None, base_model: str | None = None, gradient_checkpointing: bool = False,
                        trainable: bool = True, lora_seed: int | None = 0, **kwargs) -> "Policy":
        """A policy from a Hugging Face model directory (or hub id), or from a LoRA checkpoint directory
        (``adapter_config.json``: the base is loaded from ``base_model``, else from the base the adapters name).

        Args:
            dtype: ``"bfloat16"``, ``"float32"``, ``"auto"``... (None: transformers' default).
            device: where to put the model (``"cuda"``, ``"cpu"``, ``"auto"``: CUDA when available).
            lora: add fresh LoRA adapters with these options (see :func:`lora_config`), drawn with ``lora_seed``.
            gradient_checkpointing: recompute activations in the backward pass (less memory, ~30% more time).
            trainable: for a LoRA checkpoint, whether its adapters are trainable.
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
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
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
        """Wrap the model in LoRA adapters (``peft.get_peft_model``): afterwards only the adapters are trainable.
        The adapters start at zero (LoRA's B matrices are zero-initialised), so the policy is unchanged; the
        random A matrices are drawn with ``seed`` (without touching torch's global random state)."""
        if self.is_lora:
            raise ValueError(f"policy {self.name!r} already has LoRA adapters")
        from peft import get_peft_model

        config = lora_config(options or {})
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            # peft asks transformers about gradient checkpointing by a name transformers 5 deprecates (noise)
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            if seed is not None:
                torch.manual_seed(int(seed))
            self.model = get_peft_model(self.model, config)
        return self

    def reference(self, name: str = "pi_0") -> "Policy":
        """pi_0 of a LoRA policy: this same model with its adapters disabled (no second copy of the weights)."""
        if not self.is_lora:
            raise ValueError(f"policy {self.name!r} has no LoRA adapters; for a frozen copy use clone()")
        return AdapterDisabledPolicy(self.model, self.tokenizer, self.max_new_tokens, self.temperature, name,
                                     self.generation_batch_size, self.score_batch_size)

    def trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    # ---------------------------------------------------------------- tokenisation
    def _template(self, messages: Conversation, add_generation_prompt: bool) -> list[int]:
        out = self.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
        if isinstance(out, dict) or hasattr(out, "keys"):
            out = out["input_ids"]
        return list(out)

    def turn_span(self, messages: Conversation, k: int) -> tuple[list[int], int, int]:
        """Token ids of messages[:k+1] and the [start, end) span of assistant message k within them."""
        if messages[k]["role"] != "assistant":
            raise ValueError(f"message {k} is a {messages[k]['role']!r} message, not an assistant turn")
        prefix = self._template(messages[:k], add_generation_prompt=True)
        full = self._template(messages[: k + 1], add_generation_prompt=False)
        if full[: len(prefix)] != prefix:
            self.stats["template_errors"] += 1
            raise TemplateError(
                "tokenising the dialogue prefix does not give a prefix of the tokens of the whole dialogue "
                f"(policy {self.name!r}, assistant message {k}): the chat template renders earlier turns differently "
                "once a later turn is added, so turn masks would be wrong. Use a prefix-consistent chat template.")
        if len(full) == len(prefix):
            raise TemplateError(f"assistant message {k} renders to no tokens")
        return full, len(prefix), len(full)

    def turn_row(self, context: Conversation, response: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Unpadded token ids of context + response, and the mask of the response turn."""
        msgs = list(context) + [{"role": "assistant", "content": response}]
        ids, a, b = self.turn_span(msgs, len(msgs) - 1)
        m = torch.zeros(len(ids), dtype=torch.long)
        m[a:b] = 1
        return torch.tensor(ids), m

    def pad_rows(self, rows: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> EncodedTurns:
        return self._pad([r[0] for r in rows], [r[1] for r in rows])

    def encode_turns(self, contexts: Sequence[Conversation], responses: Sequence[str]) -> EncodedTurns:
        """Encode (context, response) pairs: the mask covers the response turn only."""
        return self.pad_rows([self.turn_row(c, r) for c, r in zip(contexts, responses, strict=True)])

    def encode_dialogues(self, dialogues: Sequence[Conversation]) -> tuple[EncodedTurns, list[list[tuple[int, int]]]]:
        """Encode whole dialogues; the mask covers every assistant turn. Also returns each turn's span."""
        seqs, masks, spans = [], [], []
        for msgs in dialogues:
            last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
            ids = self._template(list(msgs[: last + 1]), add_generation_prompt=False)
            m = torch.zeros(len(ids), dtype=torch.long)
            sp = []
            for k, msg in enumerate(msgs[: last + 1]):
                if msg["role"] == "assistant":
                    full, a, b = self.turn_span(list(msgs), k)
                    if ids[:b] != full:
                        self.stats["template_errors"] += 1
                        raise TemplateError(f"the tokens of dialogue turns 1..{k} are not a prefix of the whole dialogue's")
                    m[a:b] = 1
                    sp.append((a, b))
            seqs.append(torch.tensor(ids))
            masks.append(m)
            spans.append(sp)
        return self._pad(seqs, masks), spans

    def _pad(self, seqs, masks) -> EncodedTurns:
        ids = pad_sequence(seqs, batch_first=True, padding_value=self.tokenizer.pad_token_id)
        att = pad_sequence([torch.ones_like(s) for s in seqs], batch_first=True, padding_value=0)
        return EncodedTurns(ids, att, pad_sequence(masks, batch_first=True, padding_value=0))

    # ---------------------------------------------------------------- scoring
    def token_logprobs(self, enc: EncodedTurns, model=None, return_hidden: bool = False):
        """Per-token log-probabilities [N, T-1] of input_ids[:, 1:] (and the last hidden states if asked)."""
        enc = enc.to(self.device)
        model = model or self.model
        out = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, output_hidden_states=return_hidden)
        logits = out.logits[:, :-1].float()
        if self.temperature != 1.0:
            logits = logits / self.temperature
        lp = selective_log_softmax(logits, enc.input_ids[:, 1:])
        return (lp, out.hidden_states[-1]) if return_hidden else lp

    def sequence_logprobs(self, enc: EncodedTurns, model=None) -> torch.Tensor:
        """Summed log-probabilities [N] of the masked turn tokens (differentiable)."""
        lp = self.token_logprobs(enc, model)
        return (lp * enc.turn_mask[:, 1:].to(lp.device)).sum(-1)

    @torch.no_grad()
    def sequence_logprobs_nograd(self, enc: EncodedTurns, batch_size: int | None = None, model=None) -> torch.Tensor:
        """:meth:`sequence_logprobs` without gradients, ``batch_size`` (default ``score_batch_size``) rows per pass."""
        batch_size = int(batch_size or self.score_batch_size)
        out = []
        for i in range(0, enc.input_ids.shape[0], batch_size):
            out.append(self.sequence_logprobs(enc.select(slice(i, i + batch_size)), model).cpu())
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

    def generate(self, conversations: Sequence[Conversation], seed: int | None = None, temperature: float | None = None,
                 max_new_tokens: int | None = None) -> list[str]:
        """ONE batched ``generate`` call; row i is sampled with its own seed ``seed + i``, so the same
        seed gives the same responses. ``temperature=0`` is greedy decoding."""
        from refuel_env.types import SamplingParams

        if not conversations:
            self.last_generated_tokens = 0
            return []
        params = SamplingParams(max_new_tokens=int(max_new_tokens or self.max_new_tokens),
                                temperature=self.temperature if temperature is None else float(temperature))
        base = int(torch.randint(2**31 - 1, ()).item()) if seed is None else int(seed)
        gens = self.backend().generate_with_tokens([list(c) for c in conversations], params,
                                                   seeds=[(base + i) % (2**31 - 1) for i in range(len(conversations))])
        self.last_generated_tokens = sum(g.completion_tokens for g in gens)
        return [g.text.strip() for g in gens]

    def act(self, observations, seed: int | None = None, temperature: float | None = None) -> list[str]:
        """Answer a batch of observations (env observations or conversations)."""
        convs = [list(o["messages"]) if isinstance(o, dict) else list(o) for o in observations]
        return self.generate(convs, seed=seed, temperature=temperature)

    # ---------------------------------------------------------------- persistence
    def save(self, path: str) -> None:
        """Safetensors weights, config and tokenizer. A LoRA policy saves its adapters only (peft's format:
        ``adapter_model.safetensors``, ``adapter_config.json``) and the base model's ``config.json``."""
        self.model.save_pretrained(path, safe_serialization=True)
        if self.is_lora:
            self.model.get_base_model().config.save_pretrained(path)
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
        return self._frozen(m, name)

    def _frozen(self, model, name: str | None) -> "Policy":
        return Policy(model, self.tokenizer, self.max_new_tokens, self.temperature, name or f"{self.name}-frozen",
                      self.generation_batch_size, self.score_batch_size)


class AdapterDisabledPolicy(Policy):
    """A LoRA policy's model with its adapters switched off: pi_0 without a second copy of the base weights.

    It shares the model with the trained policy, so do not freeze or move ``.model`` through this view
    (``requires_grad_(False)`` would freeze the adapters too). Made by :meth:`Policy.reference`."""

    def token_logprobs(self, enc: EncodedTurns, model=None, return_hidden: bool = False):
        with self.model.disable_adapter():
            return super().token_logprobs(enc, model, return_hidden)

    def generate(self, conversations, seed=None, temperature=None, max_new_tokens=None) -> list[str]:
        with self.model.disable_adapter():
            return super().generate(conversations, seed, temperature, max_new_tokens)

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
        return self._frozen(m, name)


# ------------------------------------------------------------------------------------------ helpers
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


def torch_dtype(dtype: Any):
    """``"bfloat16"``/``"bf16"``, ``"float16"``, ``"float32"``, ``"auto"`` or a torch dtype (None stays None)."""
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    names = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
    out = getattr(torch, names.get(str(dtype), str(dtype)), None)
    if not isinstance(out, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use bfloat16, float16, float32 or auto")
    return out
