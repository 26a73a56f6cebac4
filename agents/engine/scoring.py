"""Memory-safe log-probabilities of chosen tokens (what :meth:`Policy.token_logprobs` computes).

The naive way, ``log_softmax(model(ids).logits / temperature).gather(ids)``, holds the full-vocabulary logits
of every position ([N, T, V] floats: 3 GiB for SmolLM2 at batch 64 and 256 tokens), a second copy of them
for the temperature, and a KV cache nobody reads. Here instead:

- the model runs to its last hidden states only (``use_cache=False``; the causal LM's own forward is called,
  so DDP and peft wrappers still see it, with ``logits_to_keep`` set to keep no position, and the decoder's
  output is taken by a forward hook);
- the LM head is applied only at the positions asked for (the turn mask's, when given), in chunks of about
  :data:`CHUNK_ELEMENTS` logits, each reduced at once to ``logit[target] - logsumexp(logits)``;
- the temperature divides each chunk's logits in place (out of place, chunk-sized, under autograd);
- under autograd, when there is more than one chunk, each is checkpointed (``torch.utils.checkpoint``,
  non-reentrant): its logits are recomputed in the backward pass, never kept, so the gradients are the same
  and the memory is one chunk (a single chunk is kept as is: no recomputation for small vocabularies).

Models without these pieces (no ``get_output_embeddings``/``get_decoder``, or no ``logits_to_keep``
argument) take their logits from the forward pass as before, and still get the chunked reduction.
Index tensors are built on the inputs' device; on PyTorch's ``meta`` device (shapes only, no data to find
the mask's positions in) every position is scored and the mask applied after.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

CHUNK_ELEMENTS = 1 << 24
"""Logits per chunk (64 MiB in float32): about 340 positions at SmolLM2's 49,152-token vocabulary."""

_TAKES_LOGITS_TO_KEEP: dict[type, bool] = {}


def _core(model):
    """The Hugging Face model inside DDP and peft wrappers."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
        model = model.get_base_model()
    return model


def _parts(model):
    """(decoder, head) of a causal LM whose forward takes ``logits_to_keep``, else None."""
    core = _core(model)
    kind = type(core)
    if kind not in _TAKES_LOGITS_TO_KEEP:
        try:
            _TAKES_LOGITS_TO_KEEP[kind] = "logits_to_keep" in inspect.signature(core.forward).parameters
        except (TypeError, ValueError):
            _TAKES_LOGITS_TO_KEEP[kind] = False
    if not _TAKES_LOGITS_TO_KEEP[kind] or not hasattr(core, "get_decoder") or not hasattr(core, "get_output_embeddings"):
        return None
    decoder, head = core.get_decoder(), core.get_output_embeddings()
    if decoder is None or head is None or decoder is core:
        return None
    return decoder, head


def last_hidden(model, input_ids, attention_mask, hidden: bool = False):
    """(hidden states [N, T, H], head, the same hidden states) from one forward pass without logits and
    without a KV cache; or (logits [N, T, V], None, last hidden states if ``hidden``) for a model without the
    pieces (see the module's docstring)."""
    parts = _parts(model)
    if parts is None:
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=hidden)
        return out.logits, None, (out.hidden_states[-1] if hidden else None)
    decoder, head = parts
    seen = []

    def grab(_module, _args, out):
        seen.append(out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0])

    handle = decoder.register_forward_hook(grab)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
              logits_to_keep=torch.zeros(0, dtype=torch.long, device=input_ids.device))
    finally:
        handle.remove()
    return seen[-1], head, seen[-1]


def _chunk_logprobs(rows: torch.Tensor, targets: torch.Tensor, head: Callable | None, temperature: float):
    logits = rows if head is None else head(rows)
    fresh = head is not None and not torch.is_grad_enabled()
    logits = logits.float()
    if temperature != 1.0:
        logits = logits.div_(temperature) if fresh else logits / temperature
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, -1)


def chosen_logprobs(states: torch.Tensor, head: Callable | None, targets: torch.Tensor, mask: torch.Tensor | None,
                    temperature: float = 1.0, chunk_elements: int | None = None) -> torch.Tensor:
    """Log-probabilities [N, L] (float32) of ``targets`` [N, L] at ``temperature``.

    ``states`` [N, L, H]: the hidden states that predict the targets (``head`` maps rows of them to logits),
    or the logits themselves (``head=None``). ``mask`` [N, L]: positions to score (None: all); the others
    are 0. Differentiable (chunks checkpointed when there are several)."""
    n, length = targets.shape
    meta = states.device.type == "meta"
    if mask is None or meta:
        idx = None
        rows, tg = states.reshape(n * length, -1), targets.reshape(-1)
    else:
        idx = (mask != 0).nonzero(as_tuple=True)
        rows, tg = states[idx], targets[idx]
    vocab = rows.shape[-1] if head is None else _vocab(head, rows)
    size = max(1, (chunk_elements or CHUNK_ELEMENTS) // max(vocab, 1))
    # checkpointed when there is more than one chunk (one chunk's logits may stay: a bounded size)
    ckpt = rows.shape[0] > size and torch.is_grad_enabled() and (rows.requires_grad or any(
        p.requires_grad for p in getattr(head, "parameters", list)()))
    parts = []
    for i in range(0, rows.shape[0], size):
        r, t = rows[i:i + size], tg[i:i + size]
        parts.append(checkpoint(_chunk_logprobs, r, t, head, temperature, use_reentrant=False) if ckpt
                     else _chunk_logprobs(r, t, head, temperature))
    lp = torch.cat(parts) if parts else rows.new_zeros(0, dtype=torch.float32)
    if idx is None:
        lp = lp.view(n, length)
        return lp if mask is None else lp * (mask != 0)
    return torch.zeros(n, length, dtype=torch.float32, device=states.device).index_put(idx, lp)


def _vocab(head, rows) -> int:
    w = getattr(head, "weight", None)
    if isinstance(w, torch.Tensor) and w.dim() == 2:
        return int(w.shape[0])
    return int(getattr(head, "out_features", 0) or 32768)
