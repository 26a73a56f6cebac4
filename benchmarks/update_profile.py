"""Where one update step's time goes (REFUEL, REBEL, DPO), and DPO's step against TRL's ``DPOTrainer``.

    python benchmarks/update_profile.py                           # the default pi_0, 256 pairs
    python benchmarks/update_profile.py --reference tiny --pairs 64 --minibatch 16

The same batch of pairs as ``benchmarks/update_speed.py`` (collected once from pi_0, ties dropped) is given
to every pair agent's ``update``; each agent is warmed up with one update, then ``--repeats`` updates are
timed with the update's pieces wrapped in timers (process CPU time, ``time.process_time``, with one torch
thread by default, as in issue 11: on a CPU shared with other jobs wall time swings by 30% between rounds;
``--wall`` for wall-clock time):

- decoder: the model's forward pass to its last hidden states (``agents.engine.scoring.last_hidden``);
- scoring: the rest of ``Policy.token_logprobs``: the LM head at the turn tokens, logsumexp and gather
  (with older code, which has no ``last_hidden``, the whole forward is under decoder and scoring is nan);
- backward: ``Tensor.backward`` (the scoring chunks are recomputed in it);
- optimiser: ``zero_grad``, ``clip_grad_norm_`` and ``optimizer.step``;
- data prep and loss: the rest (minibatch selection, padding trims, the loss, bookkeeping).

TRL: ``DPOTrainer`` on the same pairs (see ``update_speed.py``: explicit ``ref_model``, fp32, ``use_cpu``),
in its settings (defaults; no gradient checkpointing; and that with precomputed reference log-probs; TRL
1.16's ``padding_free`` falls back to padding, and it has no ``use_logits_to_keep``); the median step time after the first
step, on the same clock. Ratio: our DPO step over TRL's fastest setting; target (issue 11) at most 0.80. Agents and TRL run in
the same process, one after another, interleaved over ``--rounds`` rounds (the median over rounds is
reported), so that a load change on a shared machine hits both.
"""

from __future__ import annotations

import argparse
import io
import math
import statistics
import sys
import time
import warnings
from collections import defaultdict
from contextlib import ExitStack, contextmanager, redirect_stdout
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from update_speed import TRL_SETTINGS, add_workload_args, collect_pairs, fresh_policy, time_trl  # noqa: E402

CLOCK = [time.process_time]  # --wall: time.perf_counter
PIECES = ("decoder", "scoring", "backward", "optimiser", "data prep and loss")
TRL_EXTRA: dict = {}  # padding_free: TRL 1.16 disables it ("temporarily unavailable after a refactor")


@contextmanager
def patched(obj, name: str, clock: dict, key: str):
    orig = getattr(obj, name)

    def timed(*a, **kw):
        t0 = CLOCK[0]()
        try:
            return orig(*a, **kw)
        finally:
            clock[key] += CLOCK[0]() - t0

    setattr(obj, name, timed)
    try:
        yield
    finally:
        setattr(obj, name, orig)


def profile_agent(agent, batch, minibatch: int, repeats: int) -> dict:
    """Seconds per optimiser step: total and per piece (median over ``repeats`` updates)."""
    import agents.engine.policy as policy_module

    agent.update(batch)  # warm-up
    steps = math.ceil(len(batch) / minibatch) * agent.config.epochs
    split = hasattr(policy_module, "last_hidden")  # older code (before memory-safe scoring): forward as one piece
    rows = []
    for _ in range(repeats):
        clock = defaultdict(float)
        with ExitStack() as stack:
            stack.enter_context(patched(policy_module.Policy, "token_logprobs", clock, "forward"))
            if split:
                stack.enter_context(patched(policy_module, "last_hidden", clock, "decoder"))
            for obj, name in ((torch.Tensor, "backward"), (torch.nn.utils, "clip_grad_norm_"),
                              (agent.optimizer, "step"), (agent.optimizer, "zero_grad")):
                stack.enter_context(patched(obj, name, clock, "backward" if name == "backward" else "optimiser"))
            t0 = CLOCK[0]()
            agent.update(batch)
            total = CLOCK[0]() - t0
        if split:
            clock["scoring"] = clock["forward"] - clock["decoder"]
        else:
            clock["decoder"], clock["scoring"] = clock["forward"], float("nan")
        clock["data prep and loss"] = total - clock["forward"] - clock["backward"] - clock["optimiser"]
        rows.append({"total": total / steps, **{k: clock[k] / steps for k in PIECES}})
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def trl_settings() -> dict:
    import dataclasses

    from trl import DPOConfig

    have = {f.name for f in dataclasses.fields(DPOConfig)}
    out = dict(TRL_SETTINGS)
    out.update({k: v for k, v in TRL_EXTRA.items() if set(v) <= have})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_args(ap)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--wall", action="store_true", help="wall-clock time instead of process CPU time")
    ap.add_argument("--repeats", type=int, default=3, help="profiled updates per agent per round (after a warm-up)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of (agents, TRL), interleaved")
    ap.add_argument("--agents", default="refuel,rebel,dpo")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.wall:
        CLOCK[0] = time.perf_counter
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="trl")

    from transformers.utils import logging as hf_logging

    from agents.base import make_agent

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    _, pi0, collector, batch, collect_s = collect_pairs(args)
    n = len(batch)
    dataset = collector.preference_dataset(batch)
    steps = max(4, 2 * math.ceil(n / args.minibatch))
    names = [a for a in args.agents.split(",") if a]
    print(f"$ python benchmarks/update_profile.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"{n} pairs (of {args.pairs}; ties dropped), {'wall' if args.wall else 'process CPU'} time, minibatch {args.minibatch} pairs (= {2 * args.minibatch} "
          f"sequences), torch threads {args.threads}, model {sum(p.numel() for p in pi0.model.parameters()) / 1e6:.2f}M "
          f"parameters; collection (pi_0's dialogues, judge, old/reference log-probs) {collect_s:.1f} s wall, outside "
          "the update", flush=True)
    settings = trl_settings()
    ours, trl = defaultdict(list), defaultdict(list)
    for r in range(args.rounds):
        for name in names:
            agent = make_agent(name, policy=fresh_policy(pi0, name), ref_policy=pi0, epochs=1,
                               minibatch_size=args.minibatch, lr=args.lr, seed=0)
            ours[name].append(profile_agent(agent, batch, args.minibatch, args.repeats))
        for label, kw in settings.items():
            try:
                with redirect_stdout(io.StringIO()):  # the Trainer's end-of-training log line
                    trl[label].append(time_trl(pi0, dataset, args.minibatch, args.lr, steps, CLOCK[0], **kw)[0])
            except Exception as e:  # noqa: BLE001 - a setting this TRL or this model cannot run: recorded
                print(f"  {label}: failed ({type(e).__name__}: {str(e)[:160]})", flush=True)
                trl[label].append(float("nan"))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]['total'] * 1e3:.1f} ms" for k, v in ours.items())
              + "; TRL " + ", ".join(f"{v[-1] * 1e3:.1f}" for v in trl.values()) + " ms", flush=True)

    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in ours.items()}
    print("\nours, ms per optimiser step (median over rounds of the median over updates), and shares:")
    print(f"{'agent':<7} {'total':>7}  " + "  ".join(f"{p:>18}" for p in PIECES))
    for name, m in med.items():
        print(f"{name:<7} {m['total'] * 1e3:>7.1f}  " + "  ".join(
            f"{m[p] * 1e3:>9.1f} ({100 * m[p] / m['total']:>4.1f}%)" for p in PIECES))
    trl_med = {k: statistics.median(v) for k, v in trl.items() if not any(math.isnan(x) for x in v)}
    print("\nTRL DPOTrainer, ms per step (median over rounds):")
    for label, v in trl.items():
        print(f"  {label:<66} " + (f"{trl_med[label] * 1e3:8.1f}" if label in trl_med else "  failed")
              + "   rounds: " + ", ".join(f"{x * 1e3:.1f}" for x in v))
    if not trl_med:
        return
    fastest_label = min(trl_med, key=trl_med.get)
    fastest = trl_med[fastest_label]
    print(f"\nratios to TRL's fastest setting ({fastest_label}: {fastest * 1e3:.1f} ms)")
    for name, m in med.items():
        per_round = [r["total"] / min(t[i] for t in trl.values() if not math.isnan(t[i]))
                     for i, r in enumerate(ours[name])]
        line = f"  {name:<7} {m['total'] / fastest:.2f}  (per round: {', '.join(f'{x:.2f}' for x in per_round)})"
        if name == "dpo":
            line += f"  target <= 0.80: {'met' if m['total'] / fastest <= 0.8 else 'MISSED'}"
        print(line)


if __name__ == "__main__":
    main()
