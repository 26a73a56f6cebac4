"""The ``refuel`` command: ``refuel bench``, ``refuel train``, ``refuel eval``, ``refuel list``.

    refuel bench --preset quick --out runs/quick
    refuel bench --config bench.toml --agents refuel,ppo,my-agent --import my_agents.py --out runs/mine
    refuel train --agent refuel --iterations 20 --out runs/refuel --set agent_options.lr=1e-4
    refuel eval --checkpoint runs/refuel/checkpoints/final --out runs/refuel/eval
    refuel train --preset paper-ultrainteract --out runs/paper --dry-run   # check it, print the plan and hardware

Configuration: a preset (``--preset``), then a JSON/TOML/YAML file (``--config``), then flags, then
``--set key=value`` (dotted keys of :class:`agents.harness.config.ExperimentConfig`; values parsed as JSON).
``python -m agents`` is the same command (``accelerate launch -m agents train ...``).

Before any work, every command checks ``--out`` (a file there is an error), the whole configuration (what
``--dry-run`` checks: names, keys, types and ranges of values, agent options, remote code), and takes the
lock of ``--out`` (a second run on the same directory is refused, naming the first one's pid). Messages go
to stderr through :mod:`logging` (``--quiet``, ``--verbose``); results go to stdout. Exit status: 0 done,
1 some benchmark rows failed, 2 refused (a problem found before the work started, or no usable checkpoint
to resume from), 130 interrupted (resumable).
"""

from __future__ import annotations

import os

# OpenMP threads that spin while they wait make torch 10-20x slower on a CPU shared with other work (measured on
# a 2-core machine); passive waiting costs nothing measurable when the CPU is free. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import importlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from .config import ExperimentConfig, apply_overrides, from_dict, parse_value, read_config_file  # noqa: E402
from .console import console  # noqa: E402
from .guard import LockedError, RunLock, check_out_dir  # noqa: E402
from .presets import PRESETS, preset  # noqa: E402
from .commands import SHIPPED_PI0, cmd_pi0, cmd_tune  # noqa: E402
from .rows import BUILTIN_AGENTS, DEFAULT_ROWS, REFERENCE_ROWS, STANDARD_ROWS, agent_spec  # noqa: E402

logger = logging.getLogger("agents.harness.cli")


def import_plugin(spec: str) -> None:
    """Import a module by name or a .py file by path (to register custom agents, tasks, judges ...)."""
    path = Path(spec)
    if spec.endswith(".py") or path.exists():
        if not path.exists():
            raise FileNotFoundError(f"--import {spec}: no such file")
        name = f"refuel_plugin_{path.stem}"
        if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path.resolve()):
            return  # already imported (its registrations stand)
        mod_spec = importlib.util.spec_from_file_location(name, path.resolve())
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module
        mod_spec.loader.exec_module(module)
    else:
        importlib.import_module(spec)


def build_config(args) -> ExperimentConfig:
    base = preset(args.preset) if args.preset else None
    if args.config:
        cfg = from_dict(read_config_file(args.config), base)
    else:
        cfg = base or preset("default")
    flags = {}
    for key, attr in (("agents", "agents"), ("seeds", "seeds"), ("iterations", "iterations"),
                      ("pairs_per_iteration", "pairs_per_iteration"), ("threads", "threads"),
                      ("eval.n_dialogues", "eval_dialogues"), ("eval.seed", "eval_seed")):
        v = getattr(args, attr, None)
        if v is not None:
            flags[key] = v
    for item in args.set or []:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        flags[k.strip()] = parse_value(v)
    return apply_overrides(cfg, flags) if flags else cfg


def check_agents(cfg: ExperimentConfig) -> None:
    from ..base import agent_registry

    agents = agent_registry()
    for spec in cfg.agents:
        if spec.agent not in REFERENCE_ROWS and spec.agent not in agents:
            raise KeyError(f"unknown agent {spec.agent!r} (row {spec.label!r}); registered: {', '.join(agents.names())}; "
                           f"standard rows: {', '.join(STANDARD_ROWS)}. Register your own with "
                           "@agents.register_agent(name) and load it with --import MODULE_OR_FILE")


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=sorted(PRESETS), help="start from a preset (default: 'default')")
    p.add_argument("--config", help="a JSON, TOML or YAML file of ExperimentConfig fields (on top of the preset)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config field by dotted key, e.g. --set eval.n_dialogues=128 (repeatable)")
    p.add_argument("--import", dest="imports", action="append", metavar="MODULE_OR_FILE",
                   help="import a module or .py file first (to register custom agents); repeatable")
    p.add_argument("--iterations", type=int)
    p.add_argument("--pairs-per-iteration", type=int)
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--eval-dialogues", type=int, help="held-out dialogues of the final evaluation")
    p.add_argument("--eval-seed", type=int)
    p.add_argument("--no-progress", action="store_true", help="no progress bars (neither ours nor Hugging Face's)")
    p.add_argument("-q", "--quiet", action="count", default=0, help="only warnings and errors on stderr")
    p.add_argument("-v", "--verbose", action="count", default=0, help="debug messages too, with times and sources")


def add_dry_run(p: argparse.ArgumentParser, promise: str) -> None:
    p.add_argument("--dry-run", action="store_true",
                   help=f"check the configuration, print it (JSON, stdout) and the plan and hardware estimate (stderr); "
                        f"{promise}")
    p.add_argument("--gpu-gib", type=float, default=80.0, help="GPU memory the --dry-run estimate assumes (default 80)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="refuel", description="refuel-env: train and compare multi-turn RL agents")
    sub = ap.add_subparsers(dest="command", required=True)

    b = sub.add_parser("bench", help="train every agent on identical envs, seeds and budgets; write a report")
    add_common(b)
    b.add_argument("--out", help="output directory (re-running with the same one resumes); default runs/bench-PRESET")
    b.add_argument("--agents", help=f"comma-separated rows or registered agents (default {','.join(DEFAULT_ROWS)})")
    b.add_argument("--seeds", help="comma-separated training seeds")
    b.add_argument("--no-retry-failed", action="store_true", help="keep failed units of an earlier run as failed")
    add_dry_run(b, "load and download nothing")

    t = sub.add_parser("train", help="train one agent (metrics.jsonl, TensorBoard, checkpoints; resumes)")
    add_common(t)
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--agent", default="refuel", help="a standard row or a registered agent (default refuel)")
    t.add_argument("--seed", type=int, help="training seed (default: the config's first seed)")
    t.add_argument("--eval-every", type=int, help="evaluate every N iterations (default eval.curve_every)")
    t.add_argument("--no-resume", action="store_true", help="start over even if OUT has a checkpoint")
    add_dry_run(t, "load and download nothing, write nothing")

    tu = sub.add_parser("tune", help="the same grid (lr x each row's own scale) for every row, on tuning seeds; writes "
                                     "the chosen settings (tuned.json) and the grid's table")
    add_common(tu)
    tu.add_argument("--out", required=True, help="output directory (re-running with the same one resumes)")
    tu.add_argument("--agents", help="comma-separated rows to tune (default: the config's rows)")

    e = sub.add_parser("eval", help="per-turn win rate of a checkpoint against pi_0")
    add_common(e)
    e.add_argument("--checkpoint", required=True, help="a trainer/agent checkpoint directory or a Hugging Face model directory")
    e.add_argument("--out", help="write eval.json and eval.md here")

    sub.add_parser("list", help="presets, standard rows and registered agents")

    pz = sub.add_parser("pi0", help="build the pi_0 checkpoints that ship with the package (with their manifests)")
    pz.add_argument("action", choices=["build"], help="build: rebuild from the recipes, measure, write manifests")
    pz.add_argument("--preset", action="append", help="a preset whose pi_0 to build (repeatable; default: those that "
                                                      "ship: " + ", ".join(SHIPPED_PI0) + ", and the small one)")
    pz.add_argument("--dest", help="where to write them (default: agents/engine/pi0 in the package)")
    return ap


# ---------------------------------------------------------------------------------------------- commands
def cmd_bench(args, cfg: ExperimentConfig) -> int:
    from .bench import run_bench
    from .report import print_summary

    out = bench_out(args, cfg)
    logger.info(f"[bench] {len(cfg.agents)} rows x {len(cfg.seeds)} seeds, {cfg.iterations} iterations each; "
                f"output in {out}")
    results = run_bench(cfg, out, progress=not args.no_progress, retry_failed=not args.no_retry_failed)
    print_summary(results)
    logger.info(f"\n[bench] report: {out / 'report.md'}  results: {out / 'results.json'}")
    return 1 if any(r["status"] == "failed" for r in results["rows"]) else 0


def bench_out(args, cfg: ExperimentConfig) -> Path:
    return Path(args.out or f"runs/bench-{cfg.preset or 'custom'}")


def validate(cfg: ExperimentConfig, command: str) -> list[str]:
    """Every check of ``--dry-run`` (:func:`agents.harness.validate.check`), for every run, before any work:
    raises :class:`~agents.harness.validate.ConfigError` listing every problem; returns the notes."""
    from .validate import ConfigError, check

    problems, notes = check(cfg, command)
    if problems:
        raise ConfigError(problems)
    return notes


def dry_run(cfg: ExperimentConfig, command: str, gpu_gib: float = 80.0, notes: list[str] = ()) -> int:
    """Print the resolved configuration (stdout, JSON) and the plan with its hardware estimate and the notes of
    the checks (stderr); :func:`validate` has found no problem. Loads, downloads and writes nothing."""
    from .plan import plan_text

    print(json.dumps(cfg.to_dict(), indent=2))
    text = plan_text(cfg, command, gpu_gib)
    if notes:
        text += "\n\nNotes:\n" + "\n".join(f"  - {n}" for n in notes)
    print(text, file=sys.stderr)
    return 0


def _threads(cfg: ExperimentConfig) -> None:
    import torch

    from .process_memory import return_freed_memory

    return_freed_memory()  # a CPU run's resident memory follows what it holds (see process_memory)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))


def _print_eval(res, title: str) -> str:
    lines = [f"{title}", "", "| turn h | win rate vs pi_0 [95% CI] | judge score | pi_0 judge score |", "|---|---|---|---|"]
    for h, w, ci, s, r in zip(res.turns, res.win_rate, res.win_ci, res.score, res.reference_score):
        lines.append(f"| {h} | {100 * w:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}] | {s:.3f} | {r:.3f} |")
    text = "\n".join(lines)
    print(text)
    return text


def cmd_train(args, cfg: ExperimentConfig) -> int:
    from ..engine.distributed import current
    from .build import build_agent, make_env, sampling
    from .evaluate import Evaluator
    from .trainer import train

    dist = current()  # under `accelerate launch`: join the process group (and take this process's GPU) first
    spec = cfg.agents[0]
    seed = cfg.seeds[0] if args.seed is None else args.seed
    out = Path(args.out)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps({"agent": spec.label, "seed": seed, "config": cfg.to_dict()}, indent=2))
    with dist.main_process_first():  # a pi_0 built on first use is built (and cached) once
        _threads(cfg)
        env = make_env(cfg.env)
        agent = build_agent(cfg, spec, seed)
    e, ref = cfg.eval, agent.ref_policy
    every = e.curve_every if args.eval_every is None else args.eval_every
    curve = Evaluator(env, ref, e.curve_n_dialogues, e.seed + 1, sampling(cfg), e.temperature, 0, 200,
                      desc="curve point")
    res = train(agent, env, cfg.iterations, eval_every=every, out=out, eval_fn=lambda ag: curve(ag.policy, ag.sampling),
                checkpoint_every=cfg.checkpoint_every, resume=not args.no_resume, progress=not args.no_progress)
    if not dist.is_main:  # the main process evaluates and writes
        return 0
    final = Evaluator(env, ref, e.n_dialogues, e.seed, sampling(cfg), e.temperature, e.examples,
                      e.bootstrap, desc="final evaluation")(agent.policy, agent.sampling)
    (out / "eval.json").write_text(json.dumps({"budget": res.budget, "eval": final.to_dict()}, indent=2))
    text = _print_eval(final, f"{spec.label} (seed {seed}) after {agent.iteration} iterations, "
                              f"{res.budget['dialogues']} dialogues, {res.budget['tokens_generated']} tokens generated")
    (out / "eval.md").write_text(text + "\n")
    logger.info(f"[train] final checkpoint: {res.checkpoint}")
    return 0


def cmd_eval(args, cfg: ExperimentConfig) -> int:
    from .build import load_checkpoint_policy, load_reference, make_env, sampling
    from .evaluate import Evaluator

    _threads(cfg)
    env = make_env(cfg.env)
    base = None
    if cfg.policy.model:
        from refuel_env.models import resolve_model

        base = resolve_model(cfg.policy.model)
    policy, params = load_checkpoint_policy(args.checkpoint, base_model=base, dtype=cfg.policy.dtype,
                                            device=cfg.policy.device)
    # pi_0: with LoRA, the same base weights with the adapters off
    ref = policy.reference("pi_0") if policy.is_lora else load_reference(cfg.policy, cfg.env)
    e = cfg.eval
    res = Evaluator(env, ref, e.n_dialogues, e.seed, sampling(cfg), e.temperature, e.examples,
                    e.bootstrap, desc="evaluation")(policy, params or sampling(cfg))
    text = _print_eval(res, f"{args.checkpoint}: {res.n_dialogues} held-out dialogues, temperature {res.temperature}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps({"checkpoint": str(args.checkpoint), "config": cfg.to_dict(),
                                                   "eval": res.to_dict()}, indent=2))
        (out / "eval.md").write_text(text + "\n")
    return 0


def cmd_list(args, cfg=None) -> int:
    if "agents.base" in sys.modules:  # loaded already (plugins, or a caller): the registry as it stands
        from ..base import agent_registry

        names = agent_registry().names()
    else:  # without importing torch: the built-in agents (tests/test_cli.py checks the list against the registry)
        names = list(BUILTIN_AGENTS)
    print("presets:", ", ".join(PRESETS))
    print("standard rows:", ", ".join(f"{k} ({v.agent}{' ' + json.dumps(v.options) if v.options else ''})"
                                      for k, v in STANDARD_ROWS.items()))
    print("registered agents:", ", ".join(names))
    return 0


def prepare(args) -> tuple[ExperimentConfig | None, list[str], Path | None]:
    """Everything checked before any work, in order: ``--out`` (and ``--checkpoint``), plugins, the configuration
    and its every value. Returns (config, notes of the checks, the directory to lock)."""
    out = check_out_dir(args.out) if getattr(args, "out", None) else None
    if args.command == "eval":
        from .build import checkpoint_model_dir

        checkpoint_model_dir(args.checkpoint)
    for mod in getattr(args, "imports", None) or []:
        import_plugin(mod)
    if args.command in ("list", "pi0"):
        return None, [], None
    if args.command == "bench" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("the benchmark runs in one process; under `accelerate launch` train one agent "
                         "(`-m agents train`)")
    cfg = build_config(args)
    if args.command == "train":
        spec = agent_spec(args.agent)
        if spec.agent in REFERENCE_ROWS:
            raise ValueError(f"{spec.label} is a reference that is evaluated, not trained; pick an agent to train "
                             "(refuel, rebel, dpo, ppo, sft, or a row such as REBEL-LT-MIXED)")
        cfg.agents = [spec]
    if args.command == "bench":
        out = check_out_dir(bench_out(args, cfg))
    check_agents(cfg)
    notes = validate(cfg, args.command)
    return cfg, notes, out


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    verbosity = getattr(args, "verbose", 0) - getattr(args, "quiet", 0)
    with console(verbosity, progress=not getattr(args, "no_progress", False)):
        return run(args, "refuel " + " ".join(sys.argv[1:] if argv is None else argv))


def run(args, command_line: str) -> int:
    """The parsed command: checks, then (unless a dry run) the lock of ``--out``, then the work."""
    try:  # problems found before any work: one clear message, exit status 2
        cfg, notes, out = prepare(args)
        if getattr(args, "dry_run", False):
            return dry_run(cfg, args.command, args.gpu_gib, notes)
    except (KeyError, ValueError, TypeError, FileNotFoundError, ImportError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        logger.error(f"refuel {args.command}: error: {msg}")
        return 2
    for n in notes:
        logger.warning(f"[refuel] note: {n}")
    lock = RunLock(out, command_line) if out is not None and int(os.environ.get("RANK", "0")) == 0 else None
    try:
        if lock is not None:
            lock.acquire()
    except LockedError as e:
        logger.error(f"refuel {args.command}: error: {e}")
        return 2

    def terminated(signum, frame):  # `kill` stops a run the way Ctrl-C does: finished work is kept, re-run resumes
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, terminated)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        return {"bench": cmd_bench, "train": cmd_train, "tune": cmd_tune, "eval": cmd_eval,
                "list": cmd_list, "pi0": cmd_pi0}[args.command](args, cfg)
    except KeyboardInterrupt:
        logger.warning("\n[refuel] interrupted; run the same command again to resume from what finished")
        return 130
    except RuntimeError as e:
        from .checkpoints import CheckpointError

        if not isinstance(e, CheckpointError):
            raise
        logger.error(f"refuel {args.command}: error: {e}")
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if lock is not None:
            lock.release()


if __name__ == "__main__":
    sys.exit(main())
