"""Extra memory, CPU time and agreement of sequence scoring: the old path against the memory-safe one.

    python benchmarks/scoring_memory.py                          # SmolLM2-135M, batch 64, 256 tokens, T = 0.7
    python benchmarks/scoring_memory.py --model tiny --batch 16  # the tiny test model (seconds)

The old path is kept here as the reference (what ``Policy.token_logprobs`` computed before): one forward pass
with transformers' defaults (a KV cache is built), every position's full-vocabulary logits, a float copy
divided by the temperature, ``log_softmax`` + ``gather`` (TRL's ``selective_log_softmax``), then the turn mask.
The new path is ``Policy.sequence_logprobs`` (:mod:`agents.engine.scoring`): no KV cache, the LM head at the
turn mask's positions only, in chunks, temperature in place.

Each measurement runs in a fresh subprocess (one torch thread): model and inputs are set up, the peak RSS
is reset (``/proc/self/clear_refs``) after a warm-up call on one row, the scoring runs once (with ``grad``, the backward too), and the extra memory is the peak RSS
(``VmHWM``) minus the RSS before it; CPU time is the process CPU time of the scoring call. Rows:

- ``nograd``: scoring without gradients (how old/reference log-probs are computed), at ``--batch``;
- ``nograd-all``: the same with every position in the turn mask (the new path's worst case);
- ``grad``: ``sequence_logprobs`` and the backward of its sum, at ``--grad-batch`` rows.

The turn mask covers the last ``--response`` tokens of each row (rows are right-padded to lengths between
3/4 of ``--tokens`` and ``--tokens``). Differences, new against old: max abs over the sequence log-probs; for ``grad``, also over
every parameter's gradient (absolute, and relative to that parameter's largest |gradient|). Targets (issue 11): extra memory of ``nograd`` at most 2 GiB, differences
at most 1e-4.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
GIB = 1024 ** 3


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def load(model: str):
    import torch

    from agents.engine.policy import Policy

    if model == "tiny":
        from transformers import LlamaConfig, LlamaForCausalLM

        from agents.engine.reference import build_tokenizer
        from refuel_env.tasks.guess_item import CATALOGUE

        torch.manual_seed(0)
        tok = build_tokenizer(list(CATALOGUE)[:8], 640)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024)
        return Policy(LlamaForCausalLM(cfg).eval(), tok, "tiny")
    from refuel_env.models import resolve_model

    return Policy.from_pretrained(resolve_model(model), name=model)


def inputs(policy, batch: int, tokens: int, response: int, all_positions: bool):
    import torch

    from agents.engine.chat import EncodedTurns

    g = torch.Generator().manual_seed(1)
    vocab = policy.model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, tokens), generator=g)
    lengths = torch.randint(tokens * 3 // 4, tokens + 1, (batch,), generator=g)
    lengths[0] = tokens
    pos = torch.arange(tokens)[None]
    att = (pos < lengths[:, None]).long()
    turn = att.clone() if all_positions else ((pos >= lengths[:, None] - response) & (att > 0)).long()
    turn[:, 0] = 0
    return EncodedTurns(ids * att, att, turn)


def old_sequence_logprobs(model, enc, temperature: float):
    """The reference: the old ``Policy.token_logprobs`` + ``sequence_logprobs``."""
    from trl.trainer.utils import selective_log_softmax

    out = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
    logits = out.logits[:, :-1].float()
    if temperature != 1.0:
        logits = logits / temperature
    lp = selective_log_softmax(logits, enc.input_ids[:, 1:])
    return (lp * enc.turn_mask[:, 1:]).sum(-1)


def child(args) -> None:
    import gc

    import torch

    torch.set_num_threads(1)
    policy = load(args.model)
    grad = args.row == "grad"
    enc = inputs(policy, args.grad_batch if grad else args.batch, args.tokens, args.response, args.row == "nograd-all")
    policy.model.requires_grad_(grad)
    def score(e):
        if args.path == "old":
            return old_sequence_logprobs(policy.model, e, args.temperature)
        return policy.sequence_logprobs(e, temperature=args.temperature)

    with torch.set_grad_enabled(grad):  # warm-up on one row (first-call costs), before the measurement
        score(enc.select(slice(0, 1))).sum().backward() if grad else score(enc.select(slice(0, 1)))
    policy.model.zero_grad(set_to_none=True)
    gc.collect()
    rss0 = status_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to the current RSS
        reset = True
    except OSError:
        reset = False
    t0 = time.process_time()
    with torch.set_grad_enabled(grad):
        seq = score(enc)
        if grad:
            seq.sum().backward()
    cpu = time.process_time() - t0
    peak = status_kib("VmHWM")
    res = {"seq": seq.detach(), "cpu": cpu, "extra_kib": peak - rss0, "peak_reset": reset}
    if grad:
        res["grads"] = {n: p.grad for n, p in policy.model.named_parameters() if p.grad is not None}
    torch.save(res, args.result)


def run_child(args, row: str, path: str) -> dict:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        result = str(Path(tmp) / "r.pt")
        cmd = [sys.executable, __file__, "--child", "--row", row, "--path", path, "--result", result,
               "--model", args.model, "--batch", str(args.batch), "--grad-batch", str(args.grad_batch),
               "--tokens", str(args.tokens), "--response", str(args.response), "--temperature", str(args.temperature)]
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        return torch.load(result)


def diffs(a: dict, b: dict) -> tuple[float, float | None, float | None]:
    """Max |a - b| of the sequence log-probs; of the gradients (absolute, and relative to the largest
    |gradient| of each parameter), when there are any."""
    d = float((a["seq"] - b["seq"]).abs().max())
    if not a.get("grads"):
        return d, None, None
    g_abs = max(float((g - b["grads"][n]).abs().max()) for n, g in a["grads"].items())
    g_rel = max(float((g - b["grads"][n]).abs().max() / b["grads"][n].abs().max().clamp(min=1e-30))
                for n, g in a["grads"].items())
    return d, g_abs, g_rel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="'smollm2', 'tiny', or a model directory")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--grad-batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--response", type=int, default=64, help="turn-mask tokens at the end of each row")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--rows", default="nograd,nograd-all,grad")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--row", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.model == "smollm2":
        from refuel_env.models import convert_smollm2

        convert_smollm2()  # once, before the measurements
    print(f"$ python benchmarks/scoring_memory.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"model {args.model}; batch {args.batch} (grad: {args.grad_batch}) x {args.tokens} tokens, "
          f"turn mask: last {args.response} tokens, temperature {args.temperature}; one torch thread, "
          "each measurement in a fresh process")
    head = f"{'row':<11} {'path':<4} {'extra memory':>13} {'CPU s':>8}"
    print(head)
    summary = {}
    for row in args.rows.split(","):
        res = {p: run_child(args, row, p) for p in ("old", "new")}
        for p, r in res.items():
            print(f"{row:<11} {p:<4} {r['extra_kib'] * 1024 / GIB:>9.2f} GiB {r['cpu']:>8.2f}"
                  + ("" if r["peak_reset"] else "  (peak RSS not reset: includes set-up)"))
        o, n = res["old"], res["new"]
        d, g_abs, g_rel = diffs(n, o)
        summary[row] = {"old_gib": o["extra_kib"] * 1024 / GIB, "new_gib": n["extra_kib"] * 1024 / GIB,
                        "memory_ratio": o["extra_kib"] / max(n["extra_kib"], 1), "cpu_ratio": o["cpu"] / n["cpu"],
                        "max_abs_diff_logprobs": d, "max_abs_diff_grads": g_abs, "max_rel_diff_grads": g_rel,
                        "max_abs_logprob": float(o["seq"].abs().max())}
        s = summary[row]
        print(f"{row:<11} old/new: memory {s['memory_ratio']:.2f}x, CPU {s['cpu_ratio']:.2f}x; max |new - old| of "
              f"the sequence log-probs {d:.2e} (largest |log-prob| {s['max_abs_logprob']:.1f})"
              + ("" if g_abs is None else f"; of the gradients {g_abs:.2e} (relative to each parameter's largest "
                 f"|gradient|: {g_rel:.2e})"))
    if "nograd" in summary:
        s = summary["nograd"]
        print(f"target: nograd extra memory <= 2 GiB: {s['new_gib']:.2f} GiB "
              f"({'met' if s['new_gib'] <= 2 else 'MISSED'}); max diff <= 1e-4: "
              f"{'met' if max(v['max_abs_diff_logprobs'] for v in summary.values()) <= 1e-4 else 'MISSED'}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
