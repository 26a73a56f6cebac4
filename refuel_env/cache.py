"""Record/replay cache of back-end calls, on disk (SQLite).

``CachedBackend(backend, path)`` answers a request from the cache when the same request was made
before, and otherwise asks the wrapped back end (ONE batched call for all the misses of a batch)
and records the answer. A request is keyed by (back end kind, model id, conversation, sampling
parameters, seed), or for ``next_token_logprobs`` by (kind, model, conversation, candidates).

What it is for:

- Reproducibility with any back end: an HTTP server or a GPU engine whose samples are not
  bit-reproducible replays the recorded answers, so a branched or restored dialogue (and
  Gymnasium's determinism checks) sees exactly the same user replies and judge scores.
- Speed and cost: re-running an evaluation or a benchmark does not pay for the same calls twice.
- Offline tests and CI: record once, then ``mode="replay"`` fails loudly on any request that was
  not recorded instead of calling a model.

Requests without seeds (``seeds=None``) are not reproducible by definition; they are passed
through uncached and counted in ``stats["uncached"]``.

``path=":memory:"`` keeps the cache in this process's memory only (SQLite's in-memory database):
nothing is written to disk, and a repeated request within the run (an evaluation that judges the
same dialogues again) is answered without calling the model.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .backends.base import Generation, check_conversations, check_seeds, sha256
from .types import Conversation, SamplingParams

SCHEMA_VERSION = 1
MODES = ("readwrite", "replay", "record")
MEMORY = ":memory:"


class CacheMiss(KeyError):
    """A request that ``mode="replay"`` could not answer from the cache."""

    def __str__(self) -> str:
        return str(self.args[0])


class CachedBackend:
    """A back end wrapped in an on-disk record/replay cache.

    Args:
        backend: the back end to call on a miss.
        path: SQLite file (created with its parent directories). Several processes may share it.
            ``":memory:"``: an in-memory cache private to this object (a pickled copy starts empty).
        mode: ``"readwrite"`` (answer hits, call and record misses), ``"replay"`` (a miss is a
            :class:`CacheMiss` error: nothing is ever generated), or ``"record"`` (always call and
            overwrite the recorded answer).

    ``stats`` counts ``hits``, ``misses``, ``uncached`` rows, the ``prompt_tokens`` and
    ``completion_tokens`` of the answers returned (hits included), ``inner_calls`` and
    ``inner_seconds`` (time spent in the wrapped back end) and ``seconds`` (total).
    """

    def __init__(self, backend: Any, path: str | Path, mode: str = "readwrite"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not hasattr(backend, "generate"):
            raise TypeError(f"{backend!r} is not a back end (it has no generate method)")
        self.backend, self.path, self.mode = backend, Path(path), mode
        self.kind = str(getattr(backend, "name", type(backend).__name__))
        self.stats = {"hits": 0, "misses": 0, "uncached": 0, "prompt_tokens": 0, "completion_tokens": 0,
                      "inner_calls": 0, "inner_seconds": 0.0, "seconds": 0.0}
        self._lock = threading.Lock()
        self._open()

    # ------------------------------------------------------------------ storage
    def _open(self) -> None:
        if str(self.path) != MEMORY:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=60, check_same_thread=False)
        with self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, kind TEXT, model TEXT, "
                             "request TEXT, response TEXT, created REAL)")

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_db", None)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._open()

    def close(self) -> None:
        self._db.close()

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0])

    def _get(self, keys: Sequence[str]) -> dict[str, Any]:
        if self.mode == "record" or not keys:
            return {}
        out = {}
        uniq = list(dict.fromkeys(keys))
        with self._lock:
            for k in range(0, len(uniq), 500):
                part = uniq[k:k + 500]
                q = f"SELECT key, response FROM calls WHERE key IN ({','.join('?' * len(part))})"
                out.update({key: json.loads(resp) for key, resp in self._db.execute(q, part)})
        return out

    def _put(self, rows: Sequence[tuple[str, str, dict, Any]]) -> None:
        now = time.time()
        with self._lock, self._db:
            self._db.executemany("INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?, ?, ?)",
                                 [(key, kind, self.model_id, json.dumps(req, ensure_ascii=False),
                                   json.dumps(resp, ensure_ascii=False), now) for key, kind, req, resp in rows])

    # ------------------------------------------------------------------ keys
    @property
    def model_id(self) -> str:
        return str(getattr(self.backend, "model_id", "unknown"))

    @property
    def name(self) -> str:
        return f"cached-{self.kind}"

    def request(self, conversation: Conversation, params: SamplingParams, seed: int) -> dict:
        return {"v": SCHEMA_VERSION, "backend": self.kind, "model": self.model_id,
                "messages": [[m["role"], m["content"]] for m in conversation], "params": list(params.key()),
                "seed": int(seed)}

    @staticmethod
    def key_of(request: dict) -> str:
        return sha256(json.dumps(request, ensure_ascii=False, sort_keys=True, separators=(",", ":")))

    def _miss(self, n: int, what: str) -> None:
        if self.mode == "replay":
            raise CacheMiss(f"{n} {what} not in the cache {self.path} (mode='replay'); record them first with "
                            "mode='readwrite' (or 'record'), or check that the model id, prompts, sampling "
                            "parameters and seeds match the recording")

    # ------------------------------------------------------------------ generation
    def generate_with_tokens(self, conversations: Sequence[Conversation], params: SamplingParams,
                             seeds: Sequence[int] | None = None) -> list[Generation]:
        t0 = time.perf_counter()
        convs = check_conversations(conversations)
        if not convs:
            return []
        if seeds is None:
            self.stats["uncached"] += len(convs)
            gens = self._inner(convs, params, None)
        else:
            seeds = check_seeds(seeds, len(convs))
            reqs = [self.request(c, params, s) for c, s in zip(convs, seeds)]
            keys = [self.key_of(r) for r in reqs]
            found = self._get(keys)
            missing = list(dict.fromkeys(k for k in keys if k not in found))
            self.stats["hits"] += len(keys) - sum(k not in found for k in keys)
            self.stats["misses"] += sum(k not in found for k in keys)
            if missing:
                self._miss(len(missing), "generation requests")
                first = {k: i for i, k in reversed(list(enumerate(keys)))}
                idx = [first[k] for k in missing]
                new = self._inner([convs[i] for i in idx], params, [seeds[i] for i in idx])
                self._put([(keys[i], "generate", reqs[i], g.to_dict()) for i, g in zip(idx, new)])
                found.update({keys[i]: g.to_dict() for i, g in zip(idx, new)})
            gens = [Generation.from_dict(found[k]) for k in keys]
        self.stats["prompt_tokens"] += sum(g.prompt_tokens or 0 for g in gens)
        self.stats["completion_tokens"] += sum(g.completion_tokens or 0 for g in gens)
        self.stats["seconds"] += time.perf_counter() - t0
        return gens

    def _inner(self, convs: list[Conversation], params: SamplingParams, seeds: list[int] | None) -> list[Generation]:
        t0 = time.perf_counter()
        if hasattr(self.backend, "generate_with_tokens"):
            gens = list(self.backend.generate_with_tokens(convs, params, seeds))
        else:
            gens = [Generation(text=t) for t in self.backend.generate(convs, params, seeds)]
        self.stats["inner_calls"] += 1
        self.stats["inner_seconds"] += time.perf_counter() - t0
        if len(gens) != len(convs):
            raise RuntimeError(f"{self.backend!r} returned {len(gens)} completions for {len(convs)} conversations")
        return gens

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams,
                 seeds: Sequence[int] | None = None) -> list[str]:
        return [g.text for g in self.generate_with_tokens(conversations, params, seeds)]

    def __getattr__(self, name: str) -> Any:
        # next_token_logprobs exists exactly when the wrapped back end has it
        if name == "next_token_logprobs" and hasattr(self.__dict__.get("backend"), "next_token_logprobs"):
            return self._next_token_logprobs
        raise AttributeError(name)

    def _next_token_logprobs(self, conversations: Sequence[Conversation], candidates: Sequence[str]) -> np.ndarray:
        t0 = time.perf_counter()
        convs = check_conversations(conversations)
        reqs = [{"v": SCHEMA_VERSION, "backend": self.kind, "model": self.model_id, "kind": "logprobs",
                 "messages": [[m["role"], m["content"]] for m in c], "candidates": list(candidates)} for c in convs]
        keys = [self.key_of(r) for r in reqs]
        found = self._get(keys)
        missing = list(dict.fromkeys(k for k in keys if k not in found))
        self.stats["hits"] += sum(k in found for k in keys)
        self.stats["misses"] += sum(k not in found for k in keys)
        if missing:
            self._miss(len(missing), "log-probability requests")
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            idx = [first[k] for k in missing]
            t1 = time.perf_counter()
            lp = np.asarray(self.backend.next_token_logprobs([convs[i] for i in idx], candidates), dtype=float)
            self.stats["inner_calls"] += 1
            self.stats["inner_seconds"] += time.perf_counter() - t1
            self._put([(keys[i], "logprobs", reqs[i], row.tolist()) for i, row in zip(idx, lp)])
            found.update({keys[i]: row.tolist() for i, row in zip(idx, lp)})
        self.stats["seconds"] += time.perf_counter() - t0
        return np.array([found[k] for k in keys], dtype=float).reshape(len(convs), len(candidates))

    def __repr__(self) -> str:
        return f"CachedBackend({self.backend!r}, path={str(self.path)!r}, mode={self.mode!r})"
