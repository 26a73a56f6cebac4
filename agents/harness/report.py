"""Benchmark reports: Markdown tables, JSON, PNG plots (matplotlib, Agg back end).

``write_report(results, out)`` writes ``report.md``, ``results.json``, ``learning_curves.png`` and
``win_rates.png``; :func:`win_rate_table` and :func:`budget_table` give the Markdown tables alone.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np


def _pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.1f}"


def _cell(mean: float, ci) -> str:
    if mean is None or not math.isfinite(mean):
        return "n/a"
    if ci and all(c is not None and math.isfinite(c) for c in ci):
        return f"{_pct(mean)} [{_pct(ci[0])}, {_pct(ci[1])}]"
    return _pct(mean)


def _status_cell(row: dict, width: int) -> list[str]:
    if row["status"] == "failed":
        msg = "; ".join(row.get("errors", []))[:160].replace("|", "/")
        return [f"FAILED: {msg}"] + [""] * (width - 1)
    return ["not run"] + [""] * (width - 1)


def _label(row: dict) -> str:
    lab = row["label"]
    if row["status"] == "partial":
        lab += f" (partial: seeds {row['seeds']})"
    return lab


def win_rate_table(results: dict) -> str:
    """Per-turn win rate against pi_0 (%), mean over seeds, with 95% bootstrap CIs."""
    turns = results["turns"]
    lines = ["| Method | " + " | ".join(f"h = {h}" for h in turns) + " |",
             "|---|" + "---|" * len(turns)]
    for row in results["rows"]:
        if "win_rate" not in row:
            cells = _status_cell(row, len(turns))
        else:
            cells = [_cell(w, ci) for w, ci in zip(row["win_rate"], row["win_ci"])]
        lines.append(f"| {_label(row)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def score_table(results: dict) -> str:
    """Mean judge score per turn (the policy's own dialogues), with 95% bootstrap CIs."""
    turns = results["turns"]
    lines = ["| Method | " + " | ".join(f"h = {h}" for h in turns) + " |", "|---|" + "---|" * len(turns)]
    for row in results["rows"]:
        if "score" not in row:
            cells = _status_cell(row, len(turns))
        else:
            cells = [("n/a" if not math.isfinite(s) else f"{s:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]")
                     for s, ci in zip(row["score"], row["score_ci"])]
        lines.append(f"| {_label(row)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def budget_table(results: dict) -> str:
    """Iterations, dialogues sampled, tokens generated, training examples and wall time of each row (mean per seed)."""
    lines = ["| Method | iterations | dialogues sampled | tokens generated | training examples | train wall (s) | eval wall (s) |",
             "|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        if "budget" not in row:
            lines.append(f"| {_label(row)} | " + " | ".join(_status_cell(row, 6)) + " |")
            continue
        b = row["budget"]
        lines.append(f"| {_label(row)} | {b['iterations']:.0f} | {b['dialogues']:.0f} | {b['tokens_generated']:.0f} | "
                     f"{b['examples']:.0f} | {row['train_seconds']:.1f} | {row['eval_seconds']:.1f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ plots
def plot_learning_curves(results: dict, path: Path) -> bool:
    """Judge score at the final turn (held-out) against dialogues sampled, per row: seeds faint, mean bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for i, row in enumerate(results["rows"]):
        curves = [c["points"] for c in row.get("curves", []) if c.get("points")]
        if not curves:
            continue
        color = f"C{i % 10}"
        for pts in curves:
            ax.plot([p["dialogues"] for p in pts], [p["eval/score"] for p in pts], color=color, alpha=0.25, lw=1)
        n = min(len(p) for p in curves)
        x = np.mean([[p["dialogues"] for p in pts[:n]] for pts in curves], 0)
        y = np.mean([[p["eval/score"] for p in pts[:n]] for pts in curves], 0)
        ax.plot(x, y, color=color, lw=2, marker="o", ms=3, label=row["label"], ls=("-", "--", ":", "-.")[(i // 10) % 4])
        drawn = True
    ax.set_xlabel("dialogues sampled")
    ax.set_ylabel("judge score at the final turn (held-out)")
    ax.set_title("Learning curves (0 dialogues = pi_0; mean over seeds, seeds faint)")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def _yerr(values: np.ndarray, ci) -> np.ndarray:
    """Matplotlib error bars (below, above) from [low, high] intervals."""
    ci = np.asarray(ci, dtype=float)
    return np.vstack([values - ci[:, 0], ci[:, 1] - values]).clip(min=0)


def plot_win_rates(results: dict, path: Path) -> bool:
    """Per-turn win rate against pi_0 with 95% CIs, and mean judge score per turn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    turns = np.asarray(results["turns"])
    rows = [r for r in results["rows"] if "win_rate" in r]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / max(1, len(rows))
    for i, row in enumerate(rows):
        x = turns + (i - (len(rows) - 1) / 2) * width
        w = np.asarray(row["win_rate"])
        a1.bar(x, w, width=width, yerr=_yerr(w, row["win_ci"]), capsize=2, color=f"C{i % 10}", label=row["label"])
        s = np.asarray(row["score"])
        a2.errorbar(turns, s, yerr=_yerr(s, row["score_ci"]), marker="o", capsize=3,
                    color=f"C{i % 10}", label=row["label"])
    a1.axhline(0.5, color="k", ls="--", lw=1)
    a1.set_xticks(turns)
    a1.set_xlabel("turn h")
    a1.set_ylabel("win rate against pi_0")
    a1.set_ylim(0, 1)
    a1.set_title("Win rate vs pi_0 per turn (95% CI)")
    a2.set_xticks(turns)
    a2.set_xlabel("turn h")
    a2.set_ylabel("mean judge score")
    a2.set_title("Mean judge score per turn (95% CI)")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        if rows:
            a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return bool(rows)


# ------------------------------------------------------------------------------------------------ report
def _dialogue_md(rec: dict) -> str:
    out = [f"goal: `{rec['goal']}`, judge score per turn: {', '.join(f'{s:.2f}' for s in rec['scores'])}", ""]
    for m in rec["messages"]:
        text = m["content"].replace("\n", " ")
        out.append(f"> **{m['role']}**: {text}  ")
    return "\n".join(out)


def markdown_report(results: dict) -> str:
    cfg = results["config"]
    ev = cfg["eval"]
    seeds = cfg["seeds"]
    temp = ev["temperature"] if ev["temperature"] is not None else cfg["agent_options"].get("temperature", "policy's")
    parts = [f"# refuel-env benchmark{' (' + cfg['preset'] + ' preset)' if cfg.get('preset') else ''}", ""]
    if results.get("interrupted"):
        parts += ["**Interrupted**: this report covers the units that finished; re-run the same command to resume.", ""]
    parts += [f"Created {results.get('created', '')}; total wall time {results.get('wall_seconds', float('nan')):.0f} s. "
              f"Task `{cfg['env']['task']}` ({json.dumps(cfg['env']['task_kwargs'])}), H_max = {cfg['env']['max_turns']}, "
              f"training horizons `{cfg['env']['horizon']}`; seeds {seeds}; {cfg['iterations']} iterations per agent, "
              f"{cfg['pairs_per_iteration']} pairs (= {2 * cfg['pairs_per_iteration']} dialogues) per iteration for pair "
              f"agents, {cfg.get('ppo_dialogues_per_iteration') or 2 * cfg['pairs_per_iteration']} dialogues per "
              "iteration for PPO and other whole-dialogue agents.", "",
              "## Win rate against pi_0 per turn (%)", "",
              f"Each policy and pi_0 hold {ev['n_dialogues']} held-out dialogues (split `eval`, horizon H_max) with the "
              f"same user and the same seeds (eval seed {ev['seed']}); decoding is sampled at temperature {temp} on both "
              "sides. The judge compares the two dialogues after turn h (a dialogue that ended earlier counts with its "
              "last state); ties count one half. Mean over seeds, with 95% hierarchical bootstrap CIs (seeds, then "
              "dialogues).", "", win_rate_table(results), "",
              "![win rates](win_rates.png)", "",
              "## Mean judge score per turn", "", score_table(results), "",
              f"pi_0's own mean judge score per turn: "
              f"{', '.join(f'{s:.3f}' for s in (results.get('reference') or {}).get('score') or []) or 'n/a'}.", "",
              "## Budget (mean per seed)", "", budget_table(results), "",
              "![learning curves](learning_curves.png)", ""]
    ref = results.get("reference") or {}
    if "load_seconds" in ref:
        parts += [f"Loading pi_0 took {ref['load_seconds']:.1f} s (this includes building and caching it the first time).", ""]
    failed = [r for r in results["rows"] if r.get("errors")]
    if failed:
        parts += ["## Failures", ""]
        for r in failed:
            parts += [f"- **{r['label']}** ({r['agent']}): " + "; ".join(r["errors"])]
        parts += [""]
    parts += ["## Example dialogues at the final turn", ""]
    for r in results["rows"]:
        exs = r.get("examples") or []
        if not exs:
            continue
        parts += [f"### {r['label']}", ""]
        for i, ex in enumerate(exs, 1):
            parts += [f"Example {i} (win against pi_0 at the final turn: {ex['win_final_turn']:.1f})", "",
                      _dialogue_md(ex["policy"]), ""]
    parts += ["## Configuration", "", "```json", json.dumps(cfg, indent=2), "```", "",
              "## Package versions", "", "```json", json.dumps(results.get("versions", {}), indent=2), "```", ""]
    return "\n".join(parts)


def json_clean(obj: Any) -> Any:
    """NaN and infinities as null (strict JSON), numpy scalars as Python numbers."""
    if isinstance(obj, dict):
        return {str(k): json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_clean(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def write_report(results: dict, out: str | Path) -> dict[str, Path]:
    """Write report.md, results.json and the PNG plots into ``out``; return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"results": out / "results.json", "report": out / "report.md",
             "learning_curves": out / "learning_curves.png", "win_rates": out / "win_rates.png"}
    tmp = paths["results"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(json_clean(results), indent=2, default=str, allow_nan=False))
    os.replace(tmp, paths["results"])
    paths["report"].write_text(markdown_report(results))
    for key, plot in (("learning_curves", plot_learning_curves), ("win_rates", plot_win_rates)):
        try:
            plot(results, paths[key])
        except Exception as e:  # a broken plot must not cost the tables
            warnings.warn(f"could not draw {paths[key].name}: {e!r}")
    return paths


def print_summary(results: dict, file: Any = None) -> None:
    print("\nWin rate against pi_0 per turn (%), mean over seeds [95% CI]\n", file=file)
    print(win_rate_table(results), file=file)
    print("\nBudget (mean per seed)\n", file=file)
    print(budget_table(results), file=file)
