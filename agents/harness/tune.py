"""``refuel tune``: the same small grid for every row, on tuning seeds and a tuning evaluation set.

    results = run_tune(preset("comparison"), out="runs/tune")   # writes tuning.md, tuning.json, tuned.json

Every row that trains (controls and variants that declare ``tune_as`` take the settings of the row they name)
gets the same grid: ``tune.lr`` x its agent's own scale (``tune.scales``: eta for REFUEL and REBEL, beta for DPO,
the clip range for PPO). Each grid point trains on the tuning seeds (never the comparison's seeds), with the
comparison's budget, and is evaluated on a tuning evaluation set (``tune.eval_seed``: other held-out dialogues
than the comparison's); the point with the highest mean final-turn judge score wins (ties: the first in grid
order). The grid runs as one benchmark (``out/grid``: finished points are reused when the command is run again).
The chosen settings go into ``tuned.json``, whose content is ``ExperimentConfig.tuned``
(``--set tuned=@tuned.json``, or paste it into a preset).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Callable

import numpy as np

from .config import ExperimentConfig
from .rows import REFERENCE_ROWS, AgentSpec

SEP = " | "


def grid(cfg: ExperimentConfig) -> dict[str, list[dict]]:
    """The grid points of every tuned row: {row label: [{"lr": ..., scale: ...}, ...]}."""
    t = cfg.tune
    out = {}
    for spec in cfg.agents:
        if spec.agent in REFERENCE_ROWS or spec.tune_as or spec.agent not in t.scales:
            continue
        name, values = t.scales[spec.agent]
        out[spec.label] = [{"lr": lr, name: v} for lr, v in itertools.product(t.lr, values)]
    return out


def grid_label(row: str, point: dict) -> str:
    return row + SEP + ", ".join(f"{k}={v:g}" for k, v in point.items())


def grid_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The benchmark that runs the grid: one row per (row, grid point), on the tuning seeds and evaluation set."""
    t = cfg.tune
    if set(t.seeds) & set(cfg.seeds):
        raise ValueError(f"tune.seeds {t.seeds} overlap the comparison's seeds {cfg.seeds}: tune on other seeds")
    if t.eval_seed == cfg.eval.seed:
        raise ValueError(f"tune.eval_seed equals eval.seed ({t.eval_seed}): tune on another evaluation set")
    specs = {s.label: s for s in cfg.agents}
    rows = [AgentSpec(grid_label(label, p), specs[label].agent, {**specs[label].options, **p}, env=dict(specs[label].env))
            for label, points in grid(cfg).items() for p in points]
    if not rows:
        raise ValueError("no row to tune: tune.scales names none of the rows' agents")
    ev = dataclasses.replace(cfg.eval, seed=t.eval_seed, n_dialogues=t.eval_dialogues, curve_every=0, examples=0)
    return dataclasses.replace(cfg, agents=rows, seeds=list(t.seeds), eval=ev, tuned={})


def select(cfg: ExperimentConfig, results: dict) -> tuple[dict, list[dict]]:
    """(chosen settings per row, the grid's table rows) from the grid benchmark's results."""
    by_label = {r["label"]: r for r in results["rows"]}
    chosen, table = {}, []
    for row, points in grid(cfg).items():
        best, best_score = None, -np.inf
        for p in points:
            r = by_label.get(grid_label(row, p), {})
            per_seed = [s[-1] for s in r.get("score_per_seed", [])]
            score = float(np.mean(per_seed)) if per_seed else float("nan")
            table.append({"row": row, **p, "final_score": score, "per_seed": per_seed, "status": r.get("status")})
            if np.isfinite(score) and score > best_score:
                best, best_score = p, score
        if best is not None:
            chosen[row] = dict(best)
            for t in table:
                if t["row"] == row:
                    t["chosen"] = all(t[k] == v for k, v in best.items())
    return chosen, table


def tuning_markdown(cfg: ExperimentConfig, chosen: dict, table: list[dict]) -> str:
    t = cfg.tune
    lines = ["# refuel tune", "",
             f"Every row gets the same grid: lr in {t.lr} x its own scale ({', '.join(f'{a}: {n} in {list(v)}' for a, (n, v) in t.scales.items())}); "
             f"{cfg.iterations} iterations, {cfg.pairs_per_iteration} pairs per iteration; tuning seeds {t.seeds} (the "
             f"comparison's: {cfg.seeds}); {t.eval_dialogues} held-out dialogues with eval seed {t.eval_seed} (the "
             f"comparison's: {cfg.eval.seed}). Selected by the mean final-turn judge score.", "",
             "| row | setting | final-turn score (mean) | per seed | chosen |", "|---|---|---|---|---|"]
    for r in table:
        setting = ", ".join(f"{k}={r[k]:g}" for k in r if k not in ("row", "final_score", "per_seed", "status", "chosen"))
        per = ", ".join(f"{x:.3f}" for x in r["per_seed"]) or r.get("status") or "not run"
        lines.append(f"| {r['row']} | {setting} | {r['final_score']:.3f} | {per} | {'**yes**' if r.get('chosen') else ''} |")
    lines += ["", "Chosen settings (`tuned`):", "", "```json", json.dumps(chosen, indent=2), "```", ""]
    return "\n".join(lines)


def run_tune(cfg: ExperimentConfig, out: str | Path, progress: bool = True, log: Callable = print) -> dict:
    """Run (or resume) the grid in ``out/grid``; write ``tuning.md``, ``tuning.json`` and ``tuned.json`` in ``out``."""
    from .bench import run_bench

    out = Path(out)
    results = run_bench(grid_config(cfg), out / "grid", progress=progress, log=log)
    chosen, table = select(cfg, results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tuned.json").write_text(json.dumps(chosen, indent=2) + "\n")
    (out / "tuning.json").write_text(json.dumps({"grid": table, "chosen": chosen, "tune": dataclasses.asdict(cfg.tune)},
                                                indent=2) + "\n")
    (out / "tuning.md").write_text(tuning_markdown(cfg, chosen, table))
    return {"chosen": chosen, "grid": table}
