"""The comparison benchmark: every row trained on identical environments, seeds and budgets, then evaluated
against pi_0 per turn.

    results = run_bench(preset("quick"), out="runs/quick")

Rows (``ExperimentConfig.agents``): pi_0 itself, REFUEL, REBEL (last turn, mixed roll-in), DPO offline and
online, PPO, and any registered agent by name. Identical conditions: the same env config, train/eval
split, seeds, iterations and dialogues per iteration (pair agents collect ``pairs_per_iteration`` pairs,
two dialogues each; PPO and other whole-dialogue agents ``2 * pairs_per_iteration`` dialogues). Dialogues
sampled, tokens generated and iterations are measured and reported for every row.

Robustness: each finished (row, seed) unit is stored in ``out/units/<label>-<seed>.json``; a re-run with
the same ``out`` reuses finished units (when the config they ran under is unchanged) and resumes partial
training from the trainer's checkpoints. A row whose agent raises is reported as failed, with its error,
and the rest of the report is still written. Ctrl-C writes the report of what finished, then stops.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from refuel_env.core import machine_of

from .build import agent_kwargs, build_agent, load_reference, make_env, reference_config, sampling, training_env
from .config import ExperimentConfig
from .compare import conclusions, signal_by_turn
from .evaluate import EvalResult, Evaluator, hierarchical_bootstrap_ci
from .rows import REFERENCE_ROWS, AgentSpec
from .trainer import quiet_hf, train

logger = logging.getLogger(__name__)


def package_versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads()}
    for pkg in ("refuel-env", "torch", "transformers", "trl", "gymnasium", "pettingzoo", "stable-baselines3", "numpy",
                "tokenizers", "safetensors", "accelerate", "datasets", "matplotlib"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_default))
    os.replace(tmp, path)


def _default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def unit_name(label: str, seed: int) -> str:
    return f"{label}-{seed}"


class Bench:
    """One benchmark run in ``out`` (see the module docstring). ``run()`` returns the results dict."""

    def __init__(self, cfg: ExperimentConfig, out: str | Path, progress: bool | None = None,
                 log: Callable = logger.info, retry_failed: bool = True):
        self.cfg, self.out, self.progress, self.log = cfg, Path(out), progress, log
        self.retry_failed = retry_failed
        self.fingerprint = cfg.unit_fingerprint()
        self.units: dict[str, dict] = {}
        self.trained_units: list[str] = []  # units trained (not reused) in this call
        self.reference_info: dict = {}

    # ---------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        (self.out / "units").mkdir(parents=True, exist_ok=True)
        old = self.out / "config.json"
        if old.exists():
            prev = json.loads(old.read_text())
            if prev.get("fingerprint") != self.fingerprint and any((self.out / "units").glob("*.json")):
                self.log(f"[bench] {old} was written under another configuration; units that ran under it "
                         "are run again")
        _atomic_json(old, {"fingerprint": self.fingerprint, "config": cfg.to_dict()})
        self.env = make_env(cfg.env)
        t0 = time.perf_counter()
        with quiet_hf():
            self.reference = load_reference(cfg.policy, cfg.env, log=lambda m: self.log(m))
        self.reference_info["load_seconds"] = time.perf_counter() - t0  # includes building pi_0 the first time
        if cfg.policy.model is None:
            self.reference_info["reference_config"] = dict(vars(reference_config(cfg.policy, cfg.env)))
        e, params = cfg.eval, sampling(cfg)
        self.evaluator = Evaluator(self.env, self.reference, e.n_dialogues, e.seed, params, e.temperature, e.examples,
                                   e.bootstrap, progress=self.progress)
        # the learning curve: the same protocol and seed, on the first curve_n_dialogues of the final held-out set
        self.curve_evaluator = Evaluator(self.env, self.reference, e.curve_n_dialogues, e.seed, params,
                                         e.temperature, 0, 200, progress=self.progress)

    # ---------------------------------------------------------------------------------------- units
    def unit_path(self, label: str, seed: int) -> Path:
        return self.out / "units" / f"{unit_name(label, seed)}.json"

    def reusable(self, rec: dict | None, spec: AgentSpec, seed: int) -> bool:
        """Whether a unit of an earlier run stands: same configuration, same row (agent, options, training env)."""
        if not rec or rec.get("fingerprint") != self.fingerprint:
            return False
        if (rec.get("agent"), rec.get("options"), rec.get("env", {})) != (spec.agent, dict(spec.options), dict(spec.env)):
            return False
        if spec.agent not in REFERENCE_ROWS and rec.get("kwargs") != json.loads(json.dumps(agent_kwargs(self.cfg, spec, seed))):
            return False
        return rec.get("status") == "ok" or (rec.get("status") == "failed" and not self.retry_failed)

    def run_unit(self, spec: AgentSpec, seed: int) -> dict:
        cfg = self.cfg
        name = unit_name(spec.label, seed)
        rec: dict[str, Any] = {"label": spec.label, "agent": spec.agent, "options": dict(spec.options),
                               "env": dict(spec.env), "seed": seed,
                               "fingerprint": self.fingerprint}
        run_dir = self.out / "units" / name
        stamp = run_dir / "fingerprint.txt"
        if run_dir.exists() and (not stamp.exists() or stamp.read_text().strip() != self.fingerprint):
            shutil.rmtree(run_dir)  # checkpoints of another configuration: start this unit over
        run_dir.mkdir(parents=True, exist_ok=True)
        stamp.write_text(self.fingerprint)
        t0 = time.perf_counter()
        try:
            if spec.agent in REFERENCE_ROWS:
                rec.update(kwargs={}, budget={"iterations": 0, "dialogues": 0, "tokens_generated": 0, "examples": 0,
                                              "wall_seconds": 0.0}, curve=[], resumed_from=0, iterations_run=0)
                policy, params = self.reference, None
                if spec.agent == "expert":  # the task's expert speaker, the upper reference
                    policy = machine_of(self.env).task.expert_speaker(seed=seed)
            else:
                rec["kwargs"] = agent_kwargs(cfg, spec, seed)
                with quiet_hf():
                    agent = build_agent(cfg, spec, seed, reference=self.reference, log=lambda m: None)
                curve_every = cfg.eval.curve_every if cfg.eval.curve_every and cfg.eval.curve_n_dialogues else 0
                self.curve_evaluator.desc = f"{name} curve point"
                tr = train(agent, training_env(cfg, spec) or self.env, cfg.iterations, eval_every=curve_every,
                           out=run_dir,
                           eval_fn=lambda ag: self.curve_evaluator(ag.policy, ag.sampling),
                           checkpoint_every=cfg.checkpoint_every,
                           resume=True, progress=self.progress, desc=name, log=self.log)
                keys = ("iteration", "dialogues", "tokens_generated", "examples", "wall_seconds", "loss",
                        "batch/mean_return", "eval/score", "eval/win_rate")
                rec.update(budget=tr.budget, resumed_from=tr.resumed_from, iterations_run=tr.iterations_run,
                           curve=[{k: r.get(k) for k in keys} for r in tr.history if "eval/score" in r],
                           skipped=dict(getattr(agent, "skipped", {}) or {}),
                           history=[{k: v for k, v in r.items() if isinstance(v, (int, float)) or v is None}
                                    for r in tr.history])
                policy, params = agent.policy, agent.sampling
                self.trained_units.append(name)
            t1 = time.perf_counter()
            self.evaluator.desc = f"{name} evaluation"
            ev = self.evaluator(policy, params)
            rec.update(status="ok", eval=ev.to_dict(), eval_seconds=time.perf_counter() - t1,
                       unit_seconds=time.perf_counter() - t0)
        except Exception as e:  # a crashing agent is a failed row, not a failed benchmark
            rec.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(),
                       unit_seconds=time.perf_counter() - t0)
            self.log(f"[bench] {name} FAILED: {type(e).__name__}: {e}")
        return rec

    def run(self) -> dict:
        t_start = time.perf_counter()
        self.setup()
        plan = [(spec, seed) for spec in self.cfg.agents for seed in self.cfg.seeds]
        try:
            for k, (spec, seed) in enumerate(plan, 1):
                name = unit_name(spec.label, seed)
                path = self.unit_path(spec.label, seed)
                prev = json.loads(path.read_text()) if path.exists() else None
                if self.reusable(prev, spec, seed):
                    self.log(f"[bench] ({k}/{len(plan)}) {name}: finished in an earlier run, reused")
                    self.units[name] = prev
                    continue
                self.log(f"[bench] ({k}/{len(plan)}) {name}: training {self.cfg.iterations} iterations"
                         if spec.agent not in REFERENCE_ROWS else f"[bench] ({k}/{len(plan)}) {name}: evaluating {spec.agent}")
                rec = self.run_unit(spec, seed)
                _atomic_json(path, rec)
                self.units[name] = rec
                if rec["status"] == "ok":
                    wr = rec["eval"]["win_rate"]
                    self.log(f"[bench] {name}: win rate vs pi_0 by turn {', '.join(f'{w:.2f}' for w in wr)} "
                             f"({rec['unit_seconds']:.0f} s)")
        except KeyboardInterrupt:
            self.log("[bench] interrupted: writing the report of the finished units; re-run the same command to resume")
            self.finish(time.perf_counter() - t_start, interrupted=True)
            raise
        return self.finish(time.perf_counter() - t_start)

    def finish(self, seconds: float, interrupted: bool = False) -> dict:
        from .report import write_report

        results = aggregate(self.cfg, self.units, n_boot=self.cfg.eval.bootstrap)
        ref_eval = next((u["eval"] for u in self.units.values() if u.get("status") == "ok"), None)
        results.update(fingerprint=self.fingerprint, versions=package_versions(),
                       reference={**self.reference_info,
                                  "score": ref_eval and ref_eval.get("reference_score")},
                       wall_seconds=seconds, interrupted=interrupted, trained_units=list(self.trained_units),
                       created=time.strftime("%Y-%m-%d %H:%M:%S"))
        write_report(results, self.out)
        return results


def aggregate(cfg: ExperimentConfig, units: dict[str, dict], n_boot: int = 2000) -> dict:
    """Rows of the report: per turn, mean over seeds with hierarchical bootstrap CIs; budgets; wall times."""
    H = cfg.env.max_turns
    rows = []
    for spec in cfg.agents:
        recs = [units.get(unit_name(spec.label, s)) for s in cfg.seeds]
        ok = [r for r in recs if r and r.get("status") == "ok"]
        failed = [r for r in recs if r and r.get("status") == "failed"]
        row: dict[str, Any] = {"label": spec.label, "agent": spec.agent, "options": dict(spec.options),
                               "seeds": [r["seed"] for r in ok], "failed_seeds": [r["seed"] for r in failed],
                               "errors": [f"seed {r['seed']}: {r['error']}" for r in failed],
                               "missing_seeds": [s for s, r in zip(cfg.seeds, recs) if r is None]}
        row["status"] = ("ok" if ok and not failed and not row["missing_seeds"] else
                         "failed" if failed and not ok else "partial" if ok else "not run")
        if ok:
            evs = [EvalResult.from_dict(r["eval"]) for r in ok]
            wins = [np.asarray(e.wins, dtype=float) for e in evs]  # [n, H] each
            scores = [np.asarray(e.scores, dtype=float) for e in evs]
            row["win_rate_per_seed"] = [e.win_rate for e in evs]
            row["score_per_seed"] = [e.score for e in evs]
            row["win_rate"] = [float(np.mean([e.win_rate[h] for e in evs])) for h in range(H)]
            row["win_ci"] = [list(hierarchical_bootstrap_ci([w[:, h] for w in wins], n_boot, h)) for h in range(H)]
            row["score"] = [float(np.mean([e.score[h] for e in evs])) for h in range(H)]
            row["score_ci"] = [list(hierarchical_bootstrap_ci([s[:, h] for s in scores], n_boot, 100 + h))
                               for h in range(H)]
            row["reference_score"] = evs[0].reference_score
            row["n_dialogues"] = evs[0].n_dialogues
            budgets = [r["budget"] for r in ok]
            row["budget_per_seed"] = budgets
            row["budget"] = {k: float(np.mean([b.get(k, 0) for b in budgets]))
                             for k in ("iterations", "dialogues", "tokens_generated", "examples")}
            row["train_seconds"] = float(np.mean([b.get("wall_seconds", 0.0) for b in budgets]))
            row["eval_seconds"] = float(np.mean([r.get("eval_seconds", 0.0) for r in ok]))
            row["curves"] = [{"seed": r["seed"], "points": r.get("curve", [])} for r in ok]
            row["examples"] = ok[0]["eval"].get("examples", [])
            row["signal"] = signal_by_turn([r.get("history", []) for r in ok], H)
        rows.append(row)
    results = {"config": cfg.to_dict(), "turns": list(range(1, H + 1)), "rows": rows,
               "units": {k: {kk: vv for kk, vv in v.items() if kk != "history"} for k, v in units.items()}}
    results.update(conclusions(results, units, cfg.seeds, n_boot))
    return results


def run_bench(cfg: ExperimentConfig, out: str | Path, progress: bool | None = None, log: Callable = logger.info,
              retry_failed: bool = True) -> dict:
    """Run (or resume) the benchmark in ``out``; write report.md, results.json and plots there; return the results."""
    return Bench(cfg, out, progress=progress, log=log, retry_failed=retry_failed).run()
