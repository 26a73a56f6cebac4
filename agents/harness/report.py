"""Benchmark reports: Markdown tables, JSON, and the PNG plots of :mod:`agents.harness.plots`.

``write_report(results, out)`` writes ``report.md``, ``results.json``, ``learning_curves.png``, ``win_rates.png``
and ``paired.png``; :func:`win_rate_table` and :func:`budget_table` give the Markdown tables alone.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .plots import plot_learning_curves, plot_paired, plot_win_rates


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


def paired_table(results: dict) -> str:
    """REFUEL minus each other row per turn (percentage points of win rate against pi_0), paired, with 95% CIs."""
    diffs = {b: d for b, d in (results.get("paired", {}).get("REFUEL") or {}).items() if d}
    if not diffs:
        return ""
    turns = results["turns"]
    lines = ["| REFUEL minus | " + " | ".join(f"h = {h}" for h in turns) + " | growth h=1 to H |",
             "|---|" + "---|" * (len(turns) + 1)]
    for b, d in diffs.items():
        cells = [_cell(m, ci) for m, ci in zip(d["wins"]["mean"], d["wins"]["ci"])]
        lines.append(f"| {b} | " + " | ".join(cells) + f" | {_cell(d['growth']['mean'], d['growth']['ci'])} |")
    return "\n".join(lines)


def decomposition_table(results: dict) -> str:
    """Planning (score after turn H-1), final score, execution loss, and the share of pi_0's gap to the expert closed."""
    lines = ["| Method | planning: score after turn H-1 | final score (turn H) | execution loss | gap to EXPERT closed |",
             "|---|---|---|---|---|"]
    for r in results["rows"]:
        d = r.get("decomposition")
        if not d:
            continue
        gap = d.get("gap_closed")
        lines.append(f"| {r['label']} | {d['planning']:.3f} [{d['planning_ci'][0]:.3f}, {d['planning_ci'][1]:.3f}] | "
                     f"{d['final']:.3f} [{d['final_ci'][0]:.3f}, {d['final_ci'][1]:.3f}] | "
                     f"{d['execution_loss']:+.3f} [{d['execution_loss_ci'][0]:+.3f}, {d['execution_loss_ci'][1]:+.3f}] | "
                     f"{'n/a' if gap is None or not math.isfinite(gap) else f'{100 * gap:.0f}%'} |")
    return "\n".join(lines)


def signal_table(results: dict) -> str:
    """Per pair row and branching turn h: pairs drawn, the share kept, the share with a return difference."""
    rows = [r for r in results["rows"] if r.get("signal")]
    if not rows:
        return ""
    turns = results["turns"]
    lines = ["| Method | " + " | ".join(f"h = {h}: drawn / kept / signal" for h in turns) + " |",
             "|---|" + "---|" * len(turns)]
    for r in rows:
        cells = []
        for h in turns:
            t = r["signal"].get(str(h), {})
            cells.append("-" if not t.get("drawn") else
                         f"{t['drawn']} / {100 * t['kept_share']:.0f}% / {100 * t['signal_share']:.0f}%")
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def differing_examples(results: dict, limit: int = 2) -> list[str]:
    """Held-out dialogues on which REFUEL and another row ended differently at the final turn (the same dialogue:
    same opening, hidden goal and seeds), side by side."""
    rows = {r["label"]: r for r in results["rows"]}
    mine = (rows.get("REFUEL") or {}).get("examples") or []
    out = []
    for label, row in rows.items():
        if label == "REFUEL" or not row.get("examples"):
            continue
        shown = 0
        for a, b in zip(mine, row["examples"]):
            if shown >= limit or a["policy"]["scores"][-1:] == b["policy"]["scores"][-1:]:
                continue
            out += [f"### REFUEL vs {label} (held-out dialogue with goal `{a['policy']['goal']}`)", "",
                    "**REFUEL**", "", _dialogue_md(a["policy"]), "", f"**{label}**", "", _dialogue_md(b["policy"]), ""]
            shown += 1
    return out


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
    env = cfg["env"]
    told = "states H in its opening" if env["task_kwargs"].get("tell_horizon") else (
        "is not told H: the user asks for the final answer on the last turn, as in the paper")
    parts += [f"Created {results.get('created', '')}; total wall time {results.get('wall_seconds', float('nan')):.0f} s. "
              f"Task `{env['task']}` ({json.dumps(env['task_kwargs'])}), H_max = {env['max_turns']}; the policy {told}. "
              f"Training horizons `{env['horizon']}` (the paper: H ~ U{{1..H_max}}); seeds {seeds}; {cfg['iterations']} "
              f"iterations per agent, {cfg['pairs_per_iteration']} pairs (= {2 * cfg['pairs_per_iteration']} dialogues) "
              f"per iteration for pair agents, {cfg.get('ppo_dialogues_per_iteration') or 2 * cfg['pairs_per_iteration']} "
              "dialogues per iteration for PPO and other whole-dialogue agents."
              + (f" Tuned settings (`refuel tune`): {json.dumps(cfg['tuned'])}." if cfg.get("tuned") else ""), ""]
    if results.get("verdict"):
        parts += ["## Verdict", "", *[f"- {v}" for v in results["verdict"]], "",
                  f"The 95% intervals of the final-turn win rates have a mean half-width of "
                  f"{_pct(results.get('final_turn_half_width'))} points: the smallest effect this run can detect.", ""]
    parts += ["## Win rate against pi_0 per turn (%)", "",
              f"Each policy and pi_0 hold {ev['n_dialogues']} held-out dialogues (split `eval`, every one with horizon "
              f"H = H_max = {env['max_turns']}) with the same user and the same seeds (eval seed {ev['seed']}); decoding "
              f"is sampled at temperature {temp} on both sides. The judge compares the two dialogues after turn h (a "
              "dialogue that ended earlier counts with its last state); ties count one half. Mean over seeds, with 95% "
              "hierarchical bootstrap CIs (seeds, then dialogues).", "", win_rate_table(results), "",
              "![win rates](win_rates.png)", ""]
    if paired_table(results):
        parts += ["## REFUEL against each row (paired, percentage points)", "",
                  "The difference of win rates against pi_0 on the same held-out dialogues and training seeds, per turn, "
                  "and its growth from turn 1 to the final turn; 95% hierarchical bootstrap intervals.", "",
                  paired_table(results), "", "![paired](paired.png)", ""]
    if decomposition_table(results):
        parts += ["## Planning and execution", "",
                  "Planning: the best final score reachable from the first H-1 turns (the judge's score after turn H-1: "
                  "the probability that the best guess would be right). Execution loss: planning minus the final score "
                  "(what the last turn lost). Gap closed: (final - pi_0's final) / (EXPERT's final - pi_0's final).", "",
                  decomposition_table(results), ""]
    if signal_table(results):
        parts += ["## Learning signal of the pairs", "",
                  "Per branching turn h, summed over seeds and iterations: pairs drawn, the share kept (distinct "
                  "responses, finite returns, and for DPO a winner), and the share with a return difference.", "",
                  signal_table(results), ""]
    parts += ["## Mean judge score per turn", "", score_table(results), "",
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
    examples = differing_examples(results)
    if examples:
        parts += ["## Example dialogues where REFUEL and another row differ at the final turn", "", *examples]
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
             "learning_curves": out / "learning_curves.png", "win_rates": out / "win_rates.png",
             "paired": out / "paired.png"}
    tmp = paths["results"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(json_clean(results), indent=2, default=str, allow_nan=False))
    os.replace(tmp, paths["results"])
    paths["report"].write_text(markdown_report(results))
    for key, plot in (("learning_curves", plot_learning_curves), ("win_rates", plot_win_rates), ("paired", plot_paired)):
        try:
            plot(results, paths[key])
        except Exception as e:  # a broken plot must not cost the tables
            warnings.warn(f"could not draw {paths[key].name}: {e!r}")
    return paths


def print_summary(results: dict, file: Any = None) -> None:
    print("\nWin rate against pi_0 per turn (%), mean over seeds [95% CI]\n", file=file)
    print(win_rate_table(results), file=file)
    for v in results.get("verdict") or []:
        print(f"- {v}", file=file)
    print("\nBudget (mean per seed)\n", file=file)
    print(budget_table(results), file=file)
