"""What every text-generation back end shares: the :class:`Generation` record, input checks, stop strings.

A back end turns a batch of conversations into one assistant completion each::

    texts = backend.generate(conversations, SamplingParams(max_new_tokens=64, temperature=0.7), seeds=[1, 2])

and, where it can, :meth:`generate_with_tokens` returns :class:`Generation` records that also carry
the sampled token ids and token counts (agents need the ids; the LLM user counts the tokens).
The same conversation, parameters and seed give the same completion; ``seeds=None`` draws fresh
random seeds (not reproducible).
"""

from __future__ import annotations

import hashlib
import time
import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..types import ROLES, Conversation, SamplingParams


class BackendError(RuntimeError):
    """A back end could not produce the completions it was asked for."""


@dataclass
class Generation:
    """One completion.

    Attributes:
        text: the assistant's reply, end-of-turn token removed and cut before the first stop string.
        token_ids: the token ids the model sampled (end-of-turn token included when it was sampled),
            or ``None`` where the back end does not expose them (HTTP servers).
        finish_reason: ``"stop"`` (end of turn), ``"stop_string"`` (a ``params.stop`` string) or ``"length"``.
        prompt_tokens / completion_tokens: token counts (``None`` where unknown).
    """

    text: str
    token_ids: list[int] | None = None
    finish_reason: str = "stop"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"text": self.text, "token_ids": self.token_ids, "finish_reason": self.finish_reason,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "extra": self.extra}

    @classmethod
    def from_dict(cls, d: dict) -> "Generation":
        return cls(text=d["text"], token_ids=d.get("token_ids"), finish_reason=d.get("finish_reason", "stop"),
                   prompt_tokens=d.get("prompt_tokens"), completion_tokens=d.get("completion_tokens"),
                   extra=d.get("extra") or {})


def check_conversations(conversations: Any) -> list[Conversation]:
    """Validate a batch of conversations; return it as a list. Errors say which one is wrong and why."""
    if isinstance(conversations, (str, dict)) or not isinstance(conversations, Sequence):
        raise TypeError("conversations must be a list of conversations (each a list of {'role', 'content'} dicts); "
                        f"got {type(conversations).__name__}. Wrap a single conversation in a list: [messages]")
    out = list(conversations)
    if out and isinstance(out[0], dict):
        raise TypeError("conversations must be a list of conversations, and this looks like a single conversation "
                        "(a list of messages). Wrap a single conversation in a list: [messages]")
    for i, conv in enumerate(out):
        if isinstance(conv, (str, dict)) or not isinstance(conv, Sequence) or len(conv) == 0:
            raise TypeError(f"conversation {i} must be a non-empty list of {{'role', 'content'}} messages, got {conv!r:.80}")
        for j, m in enumerate(conv):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise ValueError(f"conversation {i}, message {j} is {m!r:.80}; each message must be "
                                 f"{{'role': one of {ROLES}, 'content': str}}")
    return out


def check_seeds(seeds: Sequence[int] | None, n: int, rng: np.random.Generator | None = None) -> list[int]:
    """One non-negative int seed per row; ``None`` draws fresh ones from ``rng`` (or OS entropy)."""
    if seeds is None:
        rng = rng if rng is not None else np.random.default_rng()
        return [int(x) for x in rng.integers(0, 2**63 - 1, size=n)]
    seeds = list(seeds)
    if len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} conversations; pass one seed per conversation or seeds=None")
    out = []
    for s in seeds:
        if isinstance(s, (bool, float)) or not isinstance(s, (int, np.integer)) or s < 0:
            raise ValueError(f"seeds must be non-negative ints, got {s!r}")
        out.append(int(s) % (2**63))
    return out


def check_params(params: SamplingParams) -> SamplingParams:
    if not isinstance(params, SamplingParams):
        raise TypeError(f"params must be a refuel_env.SamplingParams, got {type(params).__name__}")
    if int(params.max_new_tokens) < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {params.max_new_tokens}")
    if not params.temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {params.temperature}")
    if not 0 < params.top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {params.top_p}")
    if isinstance(params.stop, str) or any(not isinstance(s, str) or not s for s in params.stop):
        raise ValueError(f"params.stop must be a tuple of non-empty strings, got {params.stop!r}")
    return params


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` before the earliest stop string; return (text, whether one was found)."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def check_count(outputs: Sequence[Any], n: int, who: str) -> None:
    if len(outputs) != n:
        raise BackendError(f"{who} returned {len(outputs)} completions for {n} conversations; a back end must "
                           "return exactly one completion per conversation (check the server or engine configuration)")


def first_token_ids(candidates: Sequence[str], encode) -> list[int]:
    """The first token of each candidate answer under ``encode`` (text -> token ids, no special tokens); they
    must all differ, so that one next-token distribution ranks them."""
    if isinstance(candidates, str) or not candidates:
        raise ValueError("candidates must be a non-empty list of strings, e.g. ['Yes', 'No']")
    ids = []
    for c in candidates:
        toks = encode(c)
        if not toks:
            raise ValueError(f"candidate {c!r} tokenizes to nothing")
        ids.append(int(toks[0]))
    if len(set(ids)) != len(ids):
        raise ValueError(f"candidates {list(candidates)} do not all start with different tokens "
                         f"(first tokens {ids}); choose answers that differ in their first token")
    return ids


def conversation_key(conversation: Conversation) -> str:
    """A stable text form of a conversation (for cache keys and hashing)."""
    return json.dumps([[m["role"], m["content"]] for m in conversation], ensure_ascii=False, separators=(",", ":"))


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class BackendBase:
    """Convenience base class: ``generate`` in terms of ``generate_with_tokens``, and running stats.

    ``stats`` counts calls, rows, prompt and completion tokens, and wall seconds (wall time is not
    deterministic, which is why it lives here and not in the env's ``info``).
    """

    model_id: str = "unknown"
    name: str = "backend"
    who: str | None = None  # names the back end in count errors (default: its class name)

    def __init__(self) -> None:
        self.stats = {"calls": 0, "rows": 0, "prompt_tokens": 0, "completion_tokens": 0, "seconds": 0.0}

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams,
                 seeds: Sequence[int] | None = None) -> list[str]:
        return [g.text for g in self.generate_with_tokens(conversations, params, seeds)]

    def generate_with_tokens(self, conversations: Sequence[Conversation], params: SamplingParams,
                             seeds: Sequence[int] | None = None) -> list[Generation]:
        """One :class:`Generation` per conversation: inputs checked, seeds drawn if none are given, the
        number of outputs checked, and the call counted in ``stats``. Back ends implement :meth:`_generate`."""
        convs = check_conversations(conversations)
        params = check_params(params)
        if not convs:
            return []
        seeds = check_seeds(seeds, len(convs))
        t0 = time.perf_counter()
        gens = self._generate(convs, params, seeds)
        check_count([g for g in gens if g is not None], len(convs), self.who or type(self).__name__)
        self._count(gens, time.perf_counter() - t0)
        return gens

    def _generate(self, convs: list[Conversation], params: SamplingParams,
                  seeds: list[int]) -> list[Generation]:  # pragma: no cover
        raise NotImplementedError

    def _count(self, gens: Sequence[Generation], seconds: float) -> None:
        self.stats["calls"] += 1
        self.stats["rows"] += len(gens)
        self.stats["prompt_tokens"] += sum(g.prompt_tokens or 0 for g in gens)
        self.stats["completion_tokens"] += sum(g.completion_tokens or 0 for g in gens)
        self.stats["seconds"] += seconds

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_id={self.model_id!r})"
