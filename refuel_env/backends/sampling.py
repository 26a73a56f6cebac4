"""Seeded per-row sampling of next tokens, vectorised over the batch.

Each row ``i`` of a batch draws its token at decoding step ``t`` from ONE uniform number
``u[i, t]`` by inverse-CDF sampling: the token whose interval of the cumulative distribution
holds ``u``. The uniforms come from a counter-based stream (SplitMix64's output function
applied to ``key(seed) + (t + 1) * golden``): ``u[i, t]`` is a pure function of row ``i``'s
seed and the step, so a row's sample depends on its own seed and logits only, never on
which other rows share the batch or on any global random state, and no generator object
is kept per row.

``temperature == 0`` is greedy (argmax, ties to the lowest token id, as in ``transformers``).
``top_p < 1`` keeps the smallest set of most likely tokens whose mass reaches ``top_p``
(nucleus sampling); the probabilities are computed in float64 (float32 on MPS).

torch is imported by the functions, not by this module.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .base import BackendError

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # 2**64 / golden ratio: SplitMix64's counter increment


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function (a bijection on uint64 that mixes every bit); numpy wraps uint64 arithmetic."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uniforms(seeds: Sequence[int], steps: int) -> np.ndarray:
    """``[len(seeds), steps]`` float64 uniforms in [0, 1): row ``i``, column ``t`` is a function of ``(seeds[i], t)`` only.

    Seeds are non-negative ints below 2**64. Adjacent seeds give unrelated streams (the seed is mixed first).
    """
    keys = _mix64(np.asarray([int(s) & _MASK64 for s in seeds], dtype=np.uint64))
    counters = np.asarray([((t + 1) * _GOLDEN) & _MASK64 for t in range(int(steps))], dtype=np.uint64)
    bits = _mix64(keys[:, None] + counters[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0 ** -53  # the top 53 bits: exact in a float64


def check_logits(logits: Any) -> None:
    """A clear error for rows whose logits hold a NaN or are all ``-inf`` (nothing to sample)."""
    import torch

    bad = torch.isnan(logits).any(dim=-1) | ~torch.isfinite(logits).any(dim=-1)
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten().tolist()
        raise BackendError(f"the model produced NaN or all -inf logits for rows {rows}; check the model's "
                           "weights and dtype (float16 on a CPU can overflow: use float32 or bfloat16)")


def sample_tokens(logits: Any, u: Any, temperature: float, top_p: float = 1.0) -> Any:
    """One token id per row of ``logits`` ``[B, V]``, drawn with the uniforms ``u`` ``[B]`` (ignored when greedy).

    Inverse-CDF sampling of ``softmax(logits / temperature)``, restricted to the top-``top_p`` nucleus.
    Returns a long tensor ``[B]`` on the logits' device.
    """
    import torch

    check_logits(logits)
    if temperature == 0:
        return logits.argmax(dim=-1)
    dtype = torch.float32 if logits.device.type == "mps" else torch.float64
    probs = torch.softmax(logits.to(dtype) / float(temperature), dim=-1)
    order = None
    if top_p < 1.0:
        probs, order = probs.sort(dim=-1, descending=True, stable=True)
        probs = probs * ((probs.cumsum(dim=-1) - probs) < top_p)  # keep a token while the mass before it is < top_p
    cum = probs.cumsum(dim=-1)
    target = u.to(device=cum.device, dtype=dtype) * cum[:, -1]
    pos = torch.searchsorted(cum, target[:, None], right=True).clamp_(max=cum.shape[-1] - 1)
    return (order.gather(-1, pos) if order is not None else pos).squeeze(-1)
