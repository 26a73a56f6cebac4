"""OpenAI-compatible HTTP back end: ``POST {base_url}/chat/completions`` on any such server.

Works with vLLM's server (``vllm serve``), llama.cpp's (``python -m llama_cpp.server``), and other
servers that implement the OpenAI chat-completions API. Standard library only (``urllib``).

- One request per conversation, sent concurrently (``concurrency`` threads), each with its own
  ``seed`` (servers that honour seeds, like vLLM, then reproduce a row's sample), ``temperature``,
  ``top_p``, ``max_tokens``, ``n`` and ``stop``. ``group_identical=True`` sends identical
  conversations as one request with ``n`` = their number (cheaper; a row's sample then depends on
  how many duplicates the batch has).
- Timeouts, and retries with exponential backoff on connection errors, timeouts, HTTP 408/409/429/5xx
  and malformed responses; after the last attempt a :class:`BackendError` says what failed and what
  to check. Other HTTP errors (400, 401, 404...) fail at once with the server's message.
- The server must return exactly ``n`` completions for a request, or the call fails.
- The API key is read from the environment variable named by ``api_key_env`` at each request; it
  is never stored on the object, logged, or put in an error message or ``repr``.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..registry import BACKENDS
from ..types import Conversation, SamplingParams
from .base import (BackendBase, BackendError, Generation, cut_at_stop)

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
SEED_MODULUS = 2**31 - 1  # llama.cpp and others take 32-bit seeds


class _Retryable(Exception):
    pass


class OpenAIBackend(BackendBase):
    """Client of an OpenAI-compatible chat-completions server.

    Args:
        model: the model name the server serves (``"model"`` in the request).
        base_url: the API root, e.g. ``"http://127.0.0.1:8000/v1"``.
        api_key_env: name of the environment variable holding the API key (``None``: send no key).
        timeout: seconds to wait for one response.
        max_retries: retries after the first attempt (so ``max_retries + 1`` attempts in all).
        backoff / max_backoff: the wait before retry k is ``min(backoff * 2**k, max_backoff)`` seconds.
        concurrency: requests in flight at once.
        group_identical: send identical conversations as one request with ``n`` > 1.
        send_seed: send each row's seed (reduced modulo 2**31 - 1).
        extra_body: more fields for every request (e.g. ``{"top_k": 20}`` for vLLM).
    """

    who = "the OpenAI-compatible server"

    name = "openai"

    def __init__(self, model: str, base_url: str = "http://127.0.0.1:8000/v1", api_key_env: str | None = "OPENAI_API_KEY",
                 timeout: float = 60.0, max_retries: int = 3, backoff: float = 0.5, max_backoff: float = 8.0,
                 concurrency: int = 8, group_identical: bool = False, send_seed: bool = True,
                 extra_body: dict | None = None):
        super().__init__()
        if not isinstance(model, str) or not model:
            raise ValueError("model must be the served model's name, e.g. 'meta-llama/Meta-Llama-3-8B-Instruct'")
        if timeout <= 0 or max_retries < 0 or backoff < 0 or concurrency < 1:
            raise ValueError("need timeout > 0, max_retries >= 0, backoff >= 0 and concurrency >= 1")
        self.model_id = model
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.api_key_env = api_key_env
        self.timeout, self.max_retries, self.backoff, self.max_backoff = float(timeout), int(max_retries), float(backoff), float(max_backoff)
        self.concurrency, self.group_identical, self.send_seed = int(concurrency), bool(group_identical), bool(send_seed)
        self.extra_body = dict(extra_body or {})
        self.stats.update({"requests": 0, "retries": 0})

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.model_id!r}, base_url={self.base_url!r})"

    # ------------------------------------------------------------------ HTTP
    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _post_once(self, body: dict) -> dict:
        req = urllib.request.Request(self.url, data=json.dumps(body).encode("utf-8"), headers=self._headers(), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:500].decode("utf-8", "replace")
            msg = f"HTTP {e.code} from {self.url}: {detail}"
            if e.code in RETRY_STATUS:
                raise _Retryable(msg) from None
            hint = {401: " (check the API key in the environment variable "
                         f"{self.api_key_env!r})", 404: f" (check base_url {self.base_url!r} and the model name "
                                                        f"{self.model_id!r})"}.get(e.code, "")
            raise BackendError(msg + hint) from None
        except (socket.timeout, TimeoutError) as e:
            raise _Retryable(f"no response from {self.url} within {self.timeout:g} s (timeout)") from e
        except urllib.error.URLError as e:
            if isinstance(e.reason, (socket.timeout, TimeoutError)):
                raise _Retryable(f"no response from {self.url} within {self.timeout:g} s (timeout)") from e
            raise _Retryable(f"could not connect to {self.url}: {e.reason}; is the server running there?") from e
        except (ConnectionError, OSError) as e:
            raise _Retryable(f"connection to {self.url} failed: {e!r}") from e
        try:
            data = json.loads(raw)
        except ValueError:
            raise _Retryable(f"malformed JSON from {self.url}: {raw[:200]!r}") from None
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise _Retryable(f"malformed response from {self.url} (no 'choices' list): {str(data)[:200]}")
        return data

    def _post(self, body: dict) -> dict:
        last = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.stats["retries"] += 1
                time.sleep(min(self.backoff * 2 ** (attempt - 1), self.max_backoff))
            try:
                self.stats["requests"] += 1
                return self._post_once(body)
            except _Retryable as e:
                last = e
        raise BackendError(f"request to the OpenAI-compatible server failed after {self.max_retries + 1} attempts: "
                           f"{last}. Check that the server is up and serves model {self.model_id!r}, or raise "
                           "timeout / max_retries")

    def _request(self, conv: Conversation, params: SamplingParams, seed: int, n: int) -> list[Generation]:
        body = {"model": self.model_id, "messages": [{"role": m["role"], "content": m["content"]} for m in conv],
                "max_tokens": int(params.max_new_tokens), "temperature": float(params.temperature),
                "top_p": float(params.top_p), "n": int(n), **self.extra_body}
        if self.send_seed:
            body["seed"] = int(seed) % SEED_MODULUS
        if params.stop:
            body["stop"] = list(params.stop)
        data = self._post(body)
        choices = sorted(data["choices"], key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
        if len(choices) != n:
            raise BackendError(f"the server at {self.url} returned {len(choices)} completions for a request that asked "
                               f"for n={n}; it must return exactly n (does it support the 'n' parameter?)")
        usage = data.get("usage") or {}
        gens = []
        for c in choices:
            msg = c.get("message") if isinstance(c, dict) else None
            text = msg.get("content") if isinstance(msg, dict) else None
            if not isinstance(text, str):
                raise BackendError(f"malformed completion from {self.url}: {str(c)[:200]}")
            text, cut = cut_at_stop(text, params.stop)
            reason = "length" if c.get("finish_reason") == "length" else ("stop_string" if cut else "stop")
            gens.append(Generation(text=text, token_ids=None, finish_reason=reason,
                                   prompt_tokens=usage.get("prompt_tokens"),
                                   completion_tokens=usage.get("completion_tokens") if n == 1 else None))
        return gens

    # ------------------------------------------------------------------ protocol
    def _generate(self, convs: list[Conversation], params: SamplingParams, seeds: list[int]) -> list[Generation]:
        groups: list[list[int]] = []
        if self.group_identical:
            where: dict = {}
            for i, c in enumerate(convs):
                key = json.dumps(c, sort_keys=True)
                if key not in where:
                    where[key] = len(groups)
                    groups.append([])
                groups[where[key]].append(i)
        else:
            groups = [[i] for i in range(len(convs))]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(groups))) as pool:
            results = list(pool.map(lambda g: self._request(convs[g[0]], params, seeds[g[0]], len(g)), groups))
        out: list[Generation | None] = [None] * len(convs)
        for g, gens in zip(groups, results):
            for i, gen in zip(g, gens):
                out[i] = gen
        return out


@BACKENDS.register("openai")
def _make_openai(model: str | None = None, **kwargs: Any) -> OpenAIBackend:
    kwargs.pop("task", None)
    if not model:
        raise ValueError("the openai back end needs model=<served model name> and base_url=<http://host:port/v1>")
    return OpenAIBackend(model, **kwargs)
