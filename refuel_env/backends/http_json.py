"""One JSON POST, bounded and retried: the transport under the OpenAI-compatible back end.

Built on ``httpx2``, the maintained successor of ``httpx`` (``openai`` and ``huggingface_hub`` use it too),
and run on asyncio, so that a limit can cancel a request wherever it is: ``httpx2``'s own timeouts bound
each network operation, not a whole response, and a server that sends one byte every 0.4 s would
otherwise hold a request for as long as it likes.

- ``timeout`` bounds each attempt whole, from connecting to the last byte of the body; ``deadline``
  bounds the whole request, retries and waits included.
- Connection errors, timeouts, HTTP 408/409/429/5xx and malformed JSON are retried with exponential
  backoff; a ``Retry-After`` (or ``retry-after-ms``) answer sets the wait instead, up to ``max_retry_after``.
- Redirects are never followed: the API key goes to ``base_url`` and nowhere else, and no other host's
  answer is taken for the server's.
- A body over ``max_response_bytes`` is refused: by its ``Content-Length`` before it is read, or as
  soon as the bytes read pass the cap. The request asks for an uncompressed body and refuses a
  compressed one (a small compressed body can unpack to gigabytes).
- Error texts quote at most :data:`EXCERPT_CHARS` characters of the server's body, with the API key and
  any ``Bearer`` token in it masked.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import json
import math
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, TypeVar

from .base import BackendError

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
EXCERPT_CHARS = 200  # of the server's body, in an error message
ERROR_BODY_BYTES = 4096  # read at most this much of an error response
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"',;}]+")
T = TypeVar("T")


@dataclass(frozen=True)
class PostSettings:
    """How :func:`post_json` sends, retries and bounds one request."""

    timeout: float = 60.0
    """Seconds one attempt may take in all, from connecting to the last byte of the response."""
    deadline: float | None = None
    """Seconds one request may take in all: every attempt, backoff and ``Retry-After`` wait. ``None``: no
    bound beyond ``max_retries + 1`` attempts of ``timeout`` each, and the waits between them."""
    max_retries: int = 3
    """Retries after the first attempt (``max_retries + 1`` attempts in all)."""
    backoff: float = 0.5
    """The wait before retry k is ``min(backoff * 2**k, max_backoff)`` seconds, unless the server sets it."""
    max_backoff: float = 8.0
    """The longest backoff wait, in seconds."""
    max_retry_after: float = 60.0
    """The longest ``Retry-After`` wait, in seconds; a server that asks for more fails the request at once."""
    max_response_bytes: int = 8 * 2**20
    """The largest response body read, in bytes (a chat completion is far smaller)."""

    def __post_init__(self) -> None:
        if not (self.timeout > 0 and self.max_retries >= 0 and self.backoff >= 0 and self.max_backoff >= 0
                and self.max_retry_after >= 0 and self.max_response_bytes > 0
                and (self.deadline is None or self.deadline > 0)):
            raise ValueError("need timeout > 0, max_retries >= 0, backoff, max_backoff and max_retry_after >= 0, "
                             f"max_response_bytes > 0 and deadline None or > 0; got {self}")


class _Retryable(Exception):
    """A failure worth another attempt; ``retry_after`` is the server's requested wait in seconds, if any."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def excerpt(raw: bytes | str, secret: str | None = None, limit: int = EXCERPT_CHARS) -> str:
    """A short, one-line quote of a server's text, with ``secret`` and any ``Bearer`` token masked."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else str(raw)
    text = _BEARER.sub(r"\1<redacted>", text)
    if secret:
        text = text.replace(secret, "<API key>")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + " [...]"


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The wait a server asks for, in seconds: ``retry-after-ms``, or ``Retry-After`` as seconds or an
    HTTP date; ``None`` if it asks for none (or says something unreadable)."""
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue
        return None if math.isnan(seconds) else max(0.0, seconds)
    try:
        when = email.utils.parsedate_to_datetime(headers.get("retry-after") or "")
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time()) if when.tzinfo else None


def run_sync(coro: Awaitable[T]) -> T:
    """Run a coroutine to its end from synchronous code, also where this thread already runs an event loop
    (a notebook): then in a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


@functools.lru_cache(maxsize=1)
def _ssl_context():
    import httpx2

    # made once: loading the trust store takes a good fraction of a second, and a client is made per batch
    return httpx2.create_ssl_context()


def make_client(settings: PostSettings, concurrency: int, https: bool = True):
    """An ``httpx2.AsyncClient`` for one batch: no redirects followed, at most ``concurrency`` connections.
    ``https=False`` (a plain-http server) skips loading the trust store: no TLS to the server is made, and
    no redirect can lead to one (a TLS proxy keeps its own verified context)."""
    import httpx2

    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx2.AsyncClient(verify=_ssl_context() if https else False, timeout=settings.timeout,
                              follow_redirects=False, limits=limits)


async def post_json(client: Any, url: str, body: dict, headers: dict, settings: PostSettings, *,
                    check: Callable[[Any], str | None] | None = None, secret: str | None = None,
                    hints: Mapping[int, str] | None = None, stats: dict | None = None,
                    who: str = "the server", advice: str = "") -> Any:
    """POST ``body`` as JSON to ``url`` and return the decoded JSON answer, within ``settings``.

    ``check(data)`` returns what is wrong with a decoded answer (retried like malformed JSON), or None.
    ``secret`` is masked in error texts; ``hints[status]`` is appended to the error of that HTTP status;
    ``stats["requests"]`` and ``stats["retries"]`` are counted. Raises :class:`BackendError`.
    """
    stats = stats if stats is not None else {}
    end = time.monotonic() + settings.deadline if settings.deadline is not None else math.inf
    last: _Retryable | None = None
    attempts = 0
    for attempt in range(settings.max_retries + 1):
        if attempt:
            wait = last.retry_after
            if wait is not None and wait > settings.max_retry_after:
                raise BackendError(f"request to {who} failed: {last}; the server asks to retry after {wait:g} s "
                                   f"(Retry-After), more than max_retry_after={settings.max_retry_after:g} s. Call "
                                   "again later, lower concurrency, or raise max_retry_after")
            if wait is None:
                wait = min(settings.backoff * 2 ** (attempt - 1), settings.max_backoff)
            if time.monotonic() + wait >= end:
                break
            stats["retries"] = stats.get("retries", 0) + 1
            await asyncio.sleep(wait)
        limit = min(settings.timeout, end - time.monotonic())
        if limit <= 0:
            break
        attempts += 1
        stats["requests"] = stats.get("requests", 0) + 1
        try:
            return await asyncio.wait_for(_attempt(client, url, body, headers, settings, check, secret, hints), limit)
        except asyncio.TimeoutError:
            last = _Retryable(f"no complete response from {url} within {limit:g} s (timeout)")
        except _Retryable as e:
            last = e
    cut = (f" (the deadline of {settings.deadline:g} s leaves no time for another)"
           if attempts <= settings.max_retries else "")
    raise BackendError(f"request to {who} failed after {attempts} attempt{'s' if attempts != 1 else ''}{cut}: "
                       f"{last}. {advice}".rstrip())


async def _attempt(client: Any, url: str, body: dict, headers: dict, settings: PostSettings,
                   check: Callable[[Any], str | None] | None, secret: str | None,
                   hints: Mapping[int, str] | None) -> Any:
    import httpx2

    headers = {"Accept": "application/json", "Accept-Encoding": "identity", **headers}
    try:
        async with client.stream("POST", url, json=body, headers=headers) as resp:
            status = resp.status_code
            if 300 <= status < 400:
                raise BackendError(f"{url} answered HTTP {status}, a redirect to {_origin(resp)}; redirects are not "
                                   "followed, so that the API key goes to base_url alone: set base_url to the "
                                   "address the server redirects to")
            if not 200 <= status < 300:
                msg = f"HTTP {status} from {url}: {excerpt(await _read(resp, ERROR_BODY_BYTES), secret)}"
                if status in RETRY_STATUS:
                    raise _Retryable(msg, retry_after(resp.headers))
                raise BackendError(msg + (hints or {}).get(status, ""))
            raw = await _read(resp, settings.max_response_bytes, url=url)
    except httpx2.TimeoutException:
        raise _Retryable(f"no complete response from {url} within {settings.timeout:g} s (timeout)") from None
    except httpx2.ConnectError as e:
        raise _Retryable(f"could not connect to {url} ({excerpt(str(e), secret)}); is the server running "
                         "there?") from None
    except httpx2.RequestError as e:
        raise _Retryable(f"connection to {url} failed: {type(e).__name__}: {excerpt(str(e), secret)}") from None
    try:
        data = json.loads(bytes(raw))
    except ValueError:
        raise _Retryable(f"malformed JSON from {url}: {excerpt(raw, secret)!r}") from None
    problem = check(data) if check is not None else None
    if problem:
        raise _Retryable(f"malformed response from {url} ({problem}): {excerpt(json.dumps(data), secret)}")
    return data


async def _read(resp: Any, cap: int, url: str | None = None) -> bytearray:
    """The body, uncompressed, up to ``cap`` bytes: an error excerpt (``url`` None) stops there; a reply
    (``url`` given) larger than ``cap`` is refused, by its ``Content-Length`` before any byte is read."""
    encoding = resp.headers.get("content-encoding", "identity").strip().lower()
    if url is not None and encoding not in ("", "identity"):
        raise BackendError(f"{url} sent a compressed response (Content-Encoding: {excerpt(encoding, limit=40)}) "
                           "although the request asked for none; serve the API without compression")
    declared = resp.headers.get("content-length", "")
    if url is not None and declared.isdigit() and int(declared) > cap:
        _too_large(url, f"{int(declared):,} bytes", cap)
    out = bytearray()
    async for chunk in resp.aiter_raw():
        out += chunk
        if len(out) > cap:
            if url is None:
                return out[:cap]
            _too_large(url, f"more than {cap:,} bytes", cap)
    return out


def _too_large(url: str, size: str, cap: int) -> None:
    raise BackendError(f"the response from {url} is {size}, over max_response_bytes={cap:,}; a chat completion is far "
                       "smaller. Check that base_url points at the chat-completions API, or raise max_response_bytes")


def _origin(resp: Any) -> str:
    """Where a redirect points, as ``scheme://host:port`` only (a path or query could carry anything)."""
    try:
        target = resp.url.join(resp.headers.get("location", ""))
        return excerpt(f"{target.scheme}://{target.host}" + (f":{target.port}" if target.port else ""), limit=100)
    except Exception:  # an unreadable Location header
        return "an address it did not give clearly"
