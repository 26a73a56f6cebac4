"""A KV-cached batched sampling loop for ``transformers`` causal LMs (the transformers back end's fast path).

One call samples a continuation for every prompt of a batch::

    decoder = KVDecoder(model)
    rows = decoder.run(prompts, pad_token_id, max_new_tokens, pick, done)

- **Prefill once per distinct prompt, in length groups.** A prompt that occurs in several rows is
  prefilled once and its cache copied. The prompts are sorted by length and prefilled in a few groups, each
  padded on the left only to its own longest prompt (the groups minimise padded tokens plus a fixed
  cost per forward pass, ``group_cost`` prompt tokens), and written right-aligned into ONE cache, so
  that decoding runs the whole batch in one forward pass per step.
- **In-place cache.** :class:`BufferLayer` is a full-attention cache layer over one preallocated
  buffer per layer: each step writes its keys and values in place and attends over a view of the
  filled part, instead of ``DynamicCache``'s concatenation, which copies the whole cache every step.
- **Finished rows leave the batch.** When a quarter of the rows have ended (end of turn or stop
  string), the cache keeps only the others (``Cache.batch_select_indices``).

``pick(logits, rows, step)`` chooses the next token of each row (``rows``: the rows' indices in the
prompt list, so that a sampler can look up each row's own random stream); ``done(row, tokens)`` says
whether a row has ended. A row's tokens depend only on its prompt, its own random numbers and the
model, up to the float effects of how much padding shares its forward passes.

Models whose config has sliding-window or non-attention layers, or a ``transformers`` without
``CacheLayerMixin``, run the same loop over a plain ``DynamicCache`` (one prefill group).
"""

from __future__ import annotations

import inspect
from typing import Callable, Sequence

import numpy as np
import torch
from transformers import DynamicCache

try:  # transformers >= 4.56: caches are lists of layer objects
    from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer
except ImportError:  # pragma: no cover - older transformers: plain DynamicCache only
    Cache = CacheLayerMixin = DynamicLayer = None

GROUP_COST = 64
"""Default fixed cost of one prefill forward pass, in prompt tokens (about right for small models on a CPU)."""

PRUNE_FRACTION = 0.25
"""Finished rows leave the batch once they are this share of it (each removal copies the cache once)."""


class BufferLayer(CacheLayerMixin if CacheLayerMixin is not None else object):
    """A full-attention cache layer over one preallocated buffer ``[batch, heads, capacity, head_dim]``.

    ``update`` writes the new keys and values in place at the current length and returns views of
    the filled part. While ``target = (start, stop, end)`` is set, ``update`` is a prefill of rows
    ``start:stop`` only: their states are written right-aligned to end at position ``end`` and
    returned as they are (the group attends to itself); the length stays 0 until :meth:`filled`.
    """

    is_sliding = False
    is_compileable = False

    def __init__(self, batch: int, capacity: int):
        super().__init__()
        self.batch, self.capacity, self.length = int(batch), int(capacity), 0
        self.target: tuple[int, int, int] | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        # not zeroed: a prefill zeroes the positions left of its rows' prompts (masked, but read by attention, where
        # 0 * NaN would be NaN), and every later position is written before it is read
        shape = (self.batch, key_states.shape[1], self.capacity)
        self.keys = key_states.new_empty(*shape, key_states.shape[-1])
        self.values = value_states.new_empty(*shape, value_states.shape[-1])
        self.device, self.is_initialized = key_states.device, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        if self.target is not None:
            start, stop, end = self.target
            self.keys[start:stop, :, end - n:end] = key_states
            self.values[start:stop, :, end - n:end] = value_states
            self.keys[start:stop, :, :end - n] = 0
            self.values[start:stop, :, :end - n] = 0
            return key_states, value_states
        if self.length + n > self.capacity:
            raise RuntimeError(f"BufferLayer is full ({self.capacity} positions); size it for prompt + new tokens")
        self.keys[:, :, self.length:self.length + n] = key_states
        self.values[:, :, self.length:self.length + n] = value_states
        self.length += n
        return self.keys[:, :, :self.length], self.values[:, :, :self.length]

    def filled(self, length: int) -> None:
        """End of the group prefill: positions ``:length`` hold every row's prompt."""
        self.target, self.length = None, int(length)

    def get_mask_sizes(self, query_length) -> tuple[int, int]:
        q = query_length if isinstance(query_length, int) else int(query_length.shape[0])  # older API: cache_position
        return self.length + q, 0

    def get_seq_length(self, *args) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.capacity

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self.keys, self.values = self.keys[indices], self.values[indices]
        self.batch = len(indices)


def prefill_groups(lengths: Sequence[int], group_cost: int) -> list[tuple[int, int]]:
    """Split lengths sorted in ascending order into contiguous groups ``(start, stop)`` that minimise
    ``sum(group size * longest length in group) + group_cost * number of groups`` (dynamic programming)."""
    n = len(lengths)
    lens = np.asarray(lengths, dtype=np.float64)
    best = np.zeros(n + 1)
    cut = np.zeros(n + 1, dtype=int)
    for j in range(1, n + 1):  # best[j]: rows :j; the last group is i:j, padded to lengths[j - 1]
        cost = best[:j] + (j - np.arange(j)) * lens[j - 1] + group_cost
        cut[j] = int(np.argmin(cost))
        best[j] = cost[cut[j]]
    groups, j = [], n
    while j > 0:
        groups.append((int(cut[j]), j))
        j = cut[j]
    return groups[::-1]


class KVDecoder:
    """Batched sampling with a KV cache for one model (see the module docstring).

    Args:
        model: a ``transformers`` causal LM (a peft model too), in eval mode, under ``torch.no_grad``.
        group_cost: fixed cost of a prefill forward pass in prompt tokens; ``None``: :data:`GROUP_COST`
            on a CPU, a very large cost (one group) on an accelerator, where a pass costs little per token.
    """

    def __init__(self, model, group_cost: int | None = None):
        self.model = model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        params = inspect.signature(base.forward).parameters
        self.cache_arg = next((a for a in ("cache", "past_key_values") if a in params), None)
        self.keep_arg = "logits_to_keep" if "logits_to_keep" in params else None
        self.buffered = CacheLayerMixin is not None and _full_attention_only(base.config)
        self.group_cost = group_cost

    @property
    def supported(self) -> bool:
        """Whether the model's forward takes a cache argument (else use ``generate``)."""
        return self.cache_arg is not None

    def _forward(self, ids, mask, positions, cache, last_only: bool):
        kw = {self.keep_arg: 1} if (last_only and self.keep_arg) else {}
        attn = None if bool(mask.all()) else mask  # no padding: let attention use its causal fast path
        out = self.model(input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=True,
                         **{self.cache_arg: cache}, **kw)
        return out.logits[:, -1]

    def _prefill(self, ids: list[list[int]], pad_id: int, capacity: int, device):
        """Cache and last-position logits of the prompts (sorted by length, ascending)."""
        lengths = [len(p) for p in ids]
        width = lengths[-1]
        if self.buffered:
            cost = self.group_cost if self.group_cost is not None else (GROUP_COST if device.type == "cpu" else 10**9)
            groups = prefill_groups(lengths, cost)
            cache = Cache(layers=[BufferLayer(len(ids), capacity) for _ in range(_num_layers(self.model.config))])
        else:
            groups, cache = [(0, len(ids))], _dynamic_cache(self.model.config)
        logits = []
        for start, stop in groups:
            tokens, mask = pad_left(ids[start:stop], pad_id, device)
            if self.buffered:
                for layer in cache.layers:
                    layer.target = (start, stop, width)
            positions = (mask.cumsum(-1) - 1).clamp_(min=0)
            logits.append(self._forward(tokens, mask, positions, cache, last_only=True))
        if self.buffered:
            for layer in cache.layers:
                layer.filled(width)
        return cache, torch.cat(logits)

    @torch.no_grad()
    def run(self, prompts: Sequence[Sequence[int]], pad_id: int, max_new_tokens: int,
            pick: Callable, done: Callable[[int, list[int]], bool]) -> list[list[int]]:
        """Sampled tokens of each prompt (a row stops after the token for which ``done`` is true)."""
        device = next(self.model.parameters()).device
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # batch row j is prompts[order[j]]
        slot: dict[tuple, int] = {}
        for i in order:  # a prompt asked several times (two responses from one state) is prefilled once
            slot.setdefault(tuple(prompts[i]), len(slot))
        lengths = torch.tensor([len(prompts[i]) for i in order], device=device)
        width = int(lengths[-1])
        cache, logits = self._prefill([list(p) for p in slot], pad_id, width + max_new_tokens, device)
        if len(slot) < len(order):
            expand = torch.tensor([slot[tuple(prompts[i])] for i in order], device=device)
            cache.batch_select_indices(expand)
            logits = logits[expand]
        mask = torch.zeros(len(order), width + max_new_tokens, dtype=torch.long, device=device)
        mask[:, :width] = torch.arange(width, device=device)[None, :] >= width - lengths[:, None]
        rows = torch.tensor(order, device=device)  # each batch row's index in `prompts`
        live = [True] * len(order)
        out: list[list[int]] = [[] for _ in prompts]
        for step in range(max_new_tokens):
            tokens = pick(logits, rows, step)
            for j, (r, t) in enumerate(zip(rows.tolist(), tokens.tolist())):
                if live[j]:
                    out[r].append(t)
                    live[j] = not done(r, out[r])
            n_live = sum(live)
            if n_live == 0 or step == max_new_tokens - 1:
                break
            if len(live) - n_live >= max(1, PRUNE_FRACTION * len(live)):
                keep = torch.tensor([j for j, a in enumerate(live) if a], device=device)
                cache.batch_select_indices(keep)
                rows, tokens, lengths, mask = rows[keep], tokens[keep], lengths[keep], mask[keep]
                live = [True] * n_live
            mask[:, width + step] = 1
            positions = (lengths + step)[:, None]
            logits = self._forward(tokens[:, None], mask[:, :width + step + 1], positions, cache, last_only=False)
        return out


def pad_left(rows: Sequence[Sequence[int]], pad_id: int, device):
    """Token ids ``[B, width]`` padded on the left with ``pad_id``, and the attention mask (1 on real tokens)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def _num_layers(config) -> int:
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(getattr(cfg, "num_hidden_layers", -1))


def _dynamic_cache(config):
    """``DynamicCache`` with the model's layer types (sliding windows...) where this transformers supports it."""
    try:
        return DynamicCache(config=config)
    except TypeError:  # pragma: no cover - older transformers
        return DynamicCache()


def _full_attention_only(config) -> bool:
    """Whether every layer of the model is plain full attention (what :class:`BufferLayer` implements)."""
    try:
        layers = DynamicCache(config=config).layers
    except (TypeError, AttributeError, ValueError):
        return False
    return len(layers) == _num_layers(config) and all(type(layer) is DynamicLayer for layer in layers)
