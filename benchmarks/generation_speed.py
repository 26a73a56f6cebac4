"""Tokens per second of the transformers back end's sampler: the old path, plain HF ``generate``, the new path.

    python benchmarks/generation_speed.py                         # all workloads, one torch thread
    python benchmarks/generation_speed.py --workloads pi0-64x24 --rounds 5

Paths, run interleaved (round r runs every path once, in turn), timed as process CPU time:

- ``old``: the back end as of commit 6c4bebf (``generate(do_sample=False)`` with a logits processor that
  samples each row with its own ``torch.Generator``), loaded from git into a module at run time;
- ``hf``: plain ``transformers``: render and tokenise the batch (left padding), ``model.generate(do_sample=True)``
  with one global seed (no per-row seeds, so not what the back end promises), decode;
- ``new``: the back end of this checkout (KV-cached loop, counter-based per-row uniforms, prompt LRU).

Workloads (each path runs the same calls; tokens/s = completion tokens / CPU seconds):

- ``pi0-64x24``: the built-in pi_0, 64 different conversations from its own rollouts, 24 new tokens per
  row (end of turn disabled, so every row writes 24 tokens);
- ``pi0-real``: the generate calls of pi_0's own rollouts, replayed as recorded (REFUEL pairs with
  continuation and whole dialogues: 1 to 64 rows per call, responses of about 6 tokens, up to 32; about
  half the rows repeat a conversation of the same call, e.g. REFUEL's two responses from one state);
- ``smollm2``: SmolLM2-135M-Instruct on built-in chat prompts, batch 4 x 16 new tokens (end of turn kept).

pi_0 is built on first use and cached under $REFUEL_ENV_CACHE (several minutes).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
import types
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from refuel_env import SamplingParams  # noqa: E402
from refuel_env.backends import TransformersBackend  # noqa: E402

OLD_COMMIT = "6c4bebf"
PATHS = ("old", "hf", "new")


def old_backend_class():
    """``TransformersBackend`` as of :data:`OLD_COMMIT`, loaded from git (not registered)."""
    src = subprocess.run(["git", "show", f"{OLD_COMMIT}:refuel_env/backends/transformers_backend.py"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    src = src.replace('@BACKENDS.register("transformers")', "")
    module = types.ModuleType("refuel_env.backends._old_transformers_backend")
    module.__package__ = "refuel_env.backends"
    exec(compile(src, f"{OLD_COMMIT}:transformers_backend.py", "exec"), module.__dict__)
    return module.TransformersBackend


class PlainHF:
    """What a user of ``transformers`` would write: batch chat template, left padding, ``generate(do_sample=True)``."""

    def __init__(self, model, tokenizer, stop_token_ids, pad_token_id):
        self.model, self.tok, self.stop, self.pad = model, tokenizer, list(stop_token_ids), pad_token_id

    def generate_with_tokens(self, convs, params, seeds):
        texts = [self.tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs]
        self.tok.padding_side = "left"
        enc = self.tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
        torch.manual_seed(seeds[0])
        sample = params.temperature > 0
        kw = dict(temperature=params.temperature, top_p=params.top_p, top_k=None) if sample else {}
        with torch.no_grad():
            seq = self.model.generate(**enc, do_sample=sample, max_new_tokens=params.max_new_tokens,
                                      eos_token_id=self.stop, pad_token_id=self.pad, **kw)
        new = seq[:, enc["input_ids"].shape[1]:].tolist()
        counts = []
        for row in new:
            end = next((k + 1 for k, t in enumerate(row) if t in self.stop), len(row))
            counts.append(end)
        texts = self.tok.batch_decode([r[:n] for r, n in zip(new, counts)], skip_special_tokens=True)
        return [types.SimpleNamespace(text=t, completion_tokens=n) for t, n in zip(texts, counts)]


def make_paths(model, tok, stop_token_ids=None):
    new = TransformersBackend(model, tok, stop_token_ids=stop_token_ids)
    old = old_backend_class()(model, tok, stop_token_ids=stop_token_ids)
    return {"old": old, "hf": PlainHF(model, tok, new.stop_token_ids, new.pad_token_id), "new": new}


def measure(paths: dict, calls: list, rounds: int) -> dict:
    """Interleaved rounds; per path: completion tokens and process CPU seconds over all rounds (after a warm-up)."""
    for b in paths.values():
        b.generate_with_tokens(*calls[0])
    tot = {k: [0, 0.0] for k in paths}
    for _ in range(rounds):
        for name, b in paths.items():
            t0 = time.process_time()
            tokens = sum(g.completion_tokens for c in calls for g in b.generate_with_tokens(*c))
            tot[name][1] += time.process_time() - t0
            tot[name][0] += tokens
    return tot


def report(title: str, tot: dict) -> None:
    print(f"\n{title}")
    print(f"  {'path':<5} {'tokens':>8} {'CPU s':>8} {'tok/s':>8} {'vs old':>7} {'vs hf':>7}")
    rate = {k: n / s for k, (n, s) in tot.items()}
    for k, (n, s) in tot.items():
        print(f"  {k:<5} {n:>8} {s:>8.2f} {rate[k]:>8.0f} {rate[k] / rate['old']:>6.2f}x {rate[k] / rate['hf']:>6.2f}x")


def pi0_calls(policy, seed: int = 0) -> list:
    """The generate calls of pi_0's own rollouts (REFUEL pairs with continuation, whole dialogues), recorded."""
    import gymnasium as gym

    import refuel_env  # noqa: F401
    from agents.engine.rollout import RolloutEngine
    from refuel_env import SamplingParams

    backend, calls = policy.backend(), []
    record = backend.generate_with_tokens

    def recording(convs, params, seeds=None):
        calls.append(([list(c) for c in convs], params, list(seeds)))
        return record(convs, params, seeds)

    backend.generate_with_tokens = recording
    env = gym.make_vec("RefuelDialogue-v0", num_envs=1)
    params = SamplingParams(max_new_tokens=24, temperature=1.0)  # the agents' defaults
    RolloutEngine(env).pairs(32, np.random.default_rng(seed), policy, policy, "relative_future", params)
    RolloutEngine(env).dialogues(64, policy, np.random.default_rng(seed + 1), params)
    del backend.generate_with_tokens
    return calls


def smollm2_calls(batch: int, tokens: int) -> tuple:
    from refuel_env.models import load_smollm2
    from refuel_env.tasks.open_chat import load_builtin_prompts

    model, tok = load_smollm2()
    prompts = load_builtin_prompts()[:batch]
    convs = [[{"role": "user", "content": p}] for p in prompts]
    return model, tok, [(convs, SamplingParams(max_new_tokens=tokens, temperature=0.7), list(range(batch)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", nargs="+", default=["pi0-64x24", "pi0-real", "smollm2"],
                    choices=["pi0-64x24", "pi0-real", "smollm2"])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds for pi_0 workloads")
    ap.add_argument("--smollm2-rounds", type=int, default=3)
    ap.add_argument("--smollm2-batch", type=int, default=4)
    ap.add_argument("--smollm2-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, machine {platform.machine()}")
    print(f"old = commit {OLD_COMMIT}; timing: process CPU time, paths interleaved per round")

    if any(w.startswith("pi0") for w in args.workloads):
        from agents.engine.reference import reference_policy

        policy = reference_policy(log=lambda m: print(m, flush=True))
        model, tok = policy.model, policy.tokenizer
        calls = pi0_calls(policy)
        n_params = sum(p.numel() for p in model.parameters()) / 1e6
        if "pi0-64x24" in args.workloads:
            distinct = {}  # 64 different conversations: no prompt is shared, the sampler's worst case
            for convs, _, seeds in calls:
                for c, s in zip(convs, seeds):
                    distinct.setdefault(str(c), (c, s))
            rows = list(distinct.values())
            pick = np.random.default_rng(0).choice(len(rows), 64, replace=False)
            convs, seeds = [rows[i][0] for i in pick], [rows[i][1] for i in pick]
            paths = make_paths(model, tok, stop_token_ids=[tok.pad_token_id])  # no end of turn: 24 tokens per row
            tot = measure(paths, [(convs, SamplingParams(max_new_tokens=24, temperature=1.0), seeds)], args.rounds)
            report(f"pi0-64x24: pi_0 ({n_params:.2f}M parameters), batch 64 (distinct) x 24 new tokens, temperature 1, "
                   f"{args.rounds} rounds", tot)
        if "pi0-real" in args.workloads:
            sizes = [len(c[0]) for c in calls]
            paths = make_paths(model, tok)
            tot = measure(paths, calls, args.rounds)
            unique = sum(len({str(c) for c in convs}) for convs, _, _ in calls)
            report(f"pi0-real: pi_0's rollout calls replayed ({len(calls)} calls, {sum(sizes)} rows of which {unique} "
                   f"distinct within their call, batch {min(sizes)}-{max(sizes)}, max_new_tokens "
                   f"{calls[0][1].max_new_tokens}), {args.rounds} rounds", tot)
    if "smollm2" in args.workloads:
        model, tok, calls = smollm2_calls(args.smollm2_batch, args.smollm2_tokens)
        tot = measure(make_paths(model, tok), calls, args.smollm2_rounds)
        report(f"smollm2: SmolLM2-135M-Instruct, batch {args.smollm2_batch} x {args.smollm2_tokens} new tokens, "
               f"temperature 0.7, {args.smollm2_rounds} rounds", tot)


if __name__ == "__main__":
    main()
