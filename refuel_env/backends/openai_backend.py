"""OpenAI-compatible HTTP back end: ``POST {base_url}/chat/completions`` on any such server.

Works with vLLM's server (``vllm serve``), llama.cpp's (``python -m llama_cpp.server``), and other
servers that implement the OpenAI chat-completions API. The transport (:mod:`.http_json`) runs on
``httpx2``; why not the ``openai`` client: it follows redirects (and takes the other host's answer), has
no deadline for a whole response, reads any body whole, and quotes the server's error message whole.

- One request per conversation, sent concurrently (at most ``concurrency`` at once), each with its own
  ``seed`` (servers that honour seeds, like vLLM and llama.cpp, then reproduce a row's sample),
  ``temperature``, ``top_p``, ``max_tokens``, ``n`` and ``stop``. ``group_identical=True`` sends identical
  conversations as one request with ``n`` = their number (cheaper; a row's sample then depends on
  how many duplicates the batch has).
- ``timeout`` bounds each attempt whole (connection to last byte), ``deadline`` each request whole.
  Connection errors, timeouts, HTTP 408/409/429/5xx and malformed responses are retried with exponential
  backoff, or after the wait the server's ``Retry-After`` asks for (up to ``max_retry_after``); after the
  last attempt a :class:`BackendError` says what failed and what to check. Other HTTP errors (400, 401,
  404...), redirects (never followed) and bodies over ``max_response_bytes`` fail at once.
- The server must return exactly ``n`` completions for a request, or the call fails.
- The API key is read from the environment variable named by ``api_key_env`` at each request; it
  is never stored on the object, logged, or put in an error message or ``repr``, and error messages
  quote at most a short, key-masked excerpt of what the server said.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from ..registry import BACKENDS
from ..types import Conversation, SamplingParams
from .base import BackendBase, BackendError, Generation, cut_at_stop
from .http_json import PostSettings, excerpt, make_client, post_json, run_sync

SEED_MODULUS = 2**31 - 1  # llama.cpp and others take 32-bit seeds


class OpenAIBackend(BackendBase):
    """Client of an OpenAI-compatible chat-completions server.

    Args:
        model: the model name the server serves (``"model"`` in the request).
        base_url: the API root, e.g. ``"http://127.0.0.1:8000/v1"``.
        api_key_env: name of the environment variable holding the API key (``None``: send no key).
        timeout: seconds one attempt may take in all, from connecting to the last byte of the response.
        max_retries: retries after the first attempt (so ``max_retries + 1`` attempts in all).
        backoff / max_backoff: the wait before retry k is ``min(backoff * 2**k, max_backoff)`` seconds,
            unless the server's ``Retry-After`` says how long to wait.
        concurrency: requests in flight at once.
        group_identical: send identical conversations as one request with ``n`` > 1.
        send_seed: send each row's seed (reduced modulo 2**31 - 1).
        extra_body: more fields for every request (e.g. ``{"top_k": 20}`` for vLLM).
        deadline: seconds one request may take in all, every attempt and wait included (``None``: no bound
            beyond the attempts' ``timeout`` and the waits between them).
        max_retry_after: the longest ``Retry-After`` wait honoured, in seconds; a server that asks for more
            fails the request at once (call again later, or lower ``concurrency``).
        max_response_bytes: the largest response body read (default 8 MiB); a larger one is refused.
    """

    who = "the OpenAI-compatible server"

    name = "openai"

    def __init__(self, model: str, base_url: str = "http://127.0.0.1:8000/v1", api_key_env: str | None = "OPENAI_API_KEY",
                 timeout: float = 60.0, max_retries: int = 3, backoff: float = 0.5, max_backoff: float = 8.0,
                 concurrency: int = 8, group_identical: bool = False, send_seed: bool = True,
                 extra_body: dict | None = None, deadline: float | None = None, max_retry_after: float = 60.0,
                 max_response_bytes: int = 8 * 2**20):
        super().__init__()
        if not isinstance(model, str) or not model:
            raise ValueError("model must be the served model's name, e.g. 'meta-llama/Meta-Llama-3-8B-Instruct'")
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http:// or https:// URL such as 'http://127.0.0.1:8000/v1', "
                             f"got {base_url!r}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.model_id = model
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.api_key_env = api_key_env
        self.http = PostSettings(timeout=float(timeout), deadline=None if deadline is None else float(deadline),
                                 max_retries=int(max_retries), backoff=float(backoff), max_backoff=float(max_backoff),
                                 max_retry_after=float(max_retry_after), max_response_bytes=int(max_response_bytes))
        self.concurrency, self.group_identical, self.send_seed = int(concurrency), bool(group_identical), bool(send_seed)
        self.extra_body = dict(extra_body or {})
        self.stats.update({"requests": 0, "retries": 0})

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.model_id!r}, base_url={self.base_url!r})"

    # ------------------------------------------------------------------ HTTP
    def _key(self) -> str | None:
        key = (os.environ.get(self.api_key_env) or "").strip() if self.api_key_env else ""
        if key and not (key.isascii() and key.isprintable() and " " not in key):
            raise BackendError(f"the API key in the environment variable {self.api_key_env!r} has spaces or "
                               "characters that cannot go in an HTTP header; check its value")
        return key or None

    def _hints(self, key: str | None) -> dict[int, str]:
        if key:
            auth = f" (check the API key in the environment variable {self.api_key_env!r})"
        elif self.api_key_env:
            auth = f" (no API key was sent: the environment variable {self.api_key_env!r} is not set)"
        else:
            auth = " (no API key was sent: pass api_key_env=<the environment variable that holds it>)"
        return {401: auth, 403: auth,
                404: f" (check base_url {self.base_url!r} and the model name {self.model_id!r})"}

    async def _request(self, client: Any, conv: Conversation, params: SamplingParams, seed: int,
                       n: int) -> list[Generation]:
        body = {"model": self.model_id, "messages": [{"role": m["role"], "content": m["content"]} for m in conv],
                "max_tokens": int(params.max_new_tokens), "temperature": float(params.temperature),
                "top_p": float(params.top_p), "n": int(n), **self.extra_body}
        if self.send_seed:
            body["seed"] = int(seed) % SEED_MODULUS
        if params.stop:
            body["stop"] = list(params.stop)
        key = self._key()
        data = await post_json(
            client, self.url, body, {"Authorization": f"Bearer {key}"} if key else {}, self.http,
            check=lambda d: None if isinstance(d, dict) and isinstance(d.get("choices"), list) else "no 'choices' list",
            secret=key, hints=self._hints(key), stats=self.stats, who=self.who,
            advice=f"Check that the server is up and serves model {self.model_id!r}, or raise timeout / max_retries")
        choices = sorted(data["choices"], key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
        if len(choices) != n:
            raise BackendError(f"the server at {self.url} returned {len(choices)} completions for a request that asked "
                               f"for n={n}; it must return exactly n (does it support the 'n' parameter?)")
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        gens = []
        for c in choices:
            msg = c.get("message") if isinstance(c, dict) else None
            text = msg.get("content") if isinstance(msg, dict) else None
            if not isinstance(text, str):
                raise BackendError(f"malformed completion from {self.url}: {excerpt(json.dumps(c), key)}")
            text, cut = cut_at_stop(text, params.stop)
            reason = "length" if c.get("finish_reason") == "length" else ("stop_string" if cut else "stop")
            gens.append(Generation(text=text, token_ids=None, finish_reason=reason,
                                   prompt_tokens=usage.get("prompt_tokens"),
                                   completion_tokens=usage.get("completion_tokens") if n == 1 else None))
        return gens

    async def _request_all(self, convs: list[Conversation], params: SamplingParams, seeds: list[int],
                           groups: list[list[int]]) -> list[list[Generation]]:
        gate = asyncio.Semaphore(self.concurrency)  # so that timeouts count from the send, not from a queue

        async def one(client: Any, g: list[int]) -> list[Generation]:
            async with gate:
                return await self._request(client, convs[g[0]], params, seeds[g[0]], len(g))

        async with make_client(self.http, self.concurrency, https=self.url.startswith("https://")) as client:
            tasks = [asyncio.ensure_future(one(client, g)) for g in groups]
            try:
                return await asyncio.gather(*tasks)
            finally:  # the first failure ends the batch: stop the other requests before the client closes
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

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
        results = run_sync(self._request_all(convs, params, seeds, groups))
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
