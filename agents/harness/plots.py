"""The benchmark's plots (matplotlib, Agg back end): learning curves, per-turn win rates, REFUEL's paired margins."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .evaluate import bootstrap_ci


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _yerr(values: np.ndarray, ci) -> np.ndarray:
    """Matplotlib error bars (below, above) from [low, high] intervals."""
    ci = np.asarray(ci, dtype=float)
    return np.vstack([values - ci[:, 0], ci[:, 1] - values]).clip(min=0)


def curve_points(row: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(dialogues sampled, mean final-turn score over seeds, [low, high] over seeds) at each learning-curve point
    of a row; the last point is the final evaluation on the whole held-out set."""
    curves = [c["points"] for c in row.get("curves", []) if c.get("points")]
    if not curves:
        return None
    n = min(len(p) for p in curves)
    x = np.mean([[p["dialogues"] for p in pts[:n]] for pts in curves], 0)
    ys = np.array([[p["eval/score"] for p in pts[:n]] for pts in curves])  # [seeds, points]
    if "score_per_seed" in row and len(row["score_per_seed"]) == len(curves):  # the final table's value
        x = np.append(x, float(row.get("budget", {}).get("dialogues", x[-1])))
        ys = np.hstack([ys, np.array([[s[-1]] for s in row["score_per_seed"]])])
    ci = np.array([bootstrap_ci(ys[:, k], 1000, k) for k in range(ys.shape[1])])
    return x, ys.mean(0), ci


def plot_learning_curves(results: dict, path: Path) -> bool:
    """Judge score at the final turn on held-out dialogues against dialogues sampled, per row, with intervals over
    seeds. Intermediate points use the first ``eval.curve_n_dialogues`` of the final evaluation's held-out dialogues
    (same protocol and seeds); the last point is the final evaluation itself."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    drawn = False
    for i, row in enumerate(results["rows"]):
        pts = curve_points(row)
        if pts is None:
            continue
        x, y, ci = pts
        color = f"C{i % 10}"
        ax.plot(x, y, color=color, lw=2, marker="o", ms=3, label=row["label"], ls=("-", "--", ":", "-.")[(i // 10) % 4])
        ax.fill_between(x, ci[:, 0], ci[:, 1], color=color, alpha=0.12)
        drawn = True
    for label, ls in (("pi_0", ":"), ("EXPERT", "--")):
        ref = next((r for r in results["rows"] if r["label"] == label and "score" in r), None)
        if ref:
            ax.axhline(ref["score"][-1], color="k", ls=ls, lw=1, label=f"{label} (final turn)")
    ax.set_xlabel("dialogues sampled")
    ax.set_ylabel("judge score at the final turn (held-out)")
    ax.set_title("Learning curves (mean over seeds, 95% interval over seeds)")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def plot_win_rates(results: dict, path: Path) -> bool:
    """Per-turn win rate against pi_0 with 95% CIs, and mean judge score per turn."""
    plt = _pyplot()
    turns = np.asarray(results["turns"])
    rows = [r for r in results["rows"] if "win_rate" in r]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.6))
    width = 0.8 / max(1, len(rows))
    for i, row in enumerate(rows):
        x = turns + (i - (len(rows) - 1) / 2) * width
        w = np.asarray(row["win_rate"])
        a1.bar(x, w, width=width, yerr=_yerr(w, row["win_ci"]), capsize=2, color=f"C{i % 10}", label=row["label"])
        s = np.asarray(row["score"])
        a2.errorbar(turns, s, yerr=_yerr(s, row["score_ci"]), marker="o", capsize=3,
                    color=f"C{i % 10}", label=row["label"], ls=("-", "--")[(i // 10) % 2])
    a1.axhline(0.5, color="k", ls="--", lw=1)
    a1.set(xticks=turns, xlabel="turn h", ylabel="win rate against pi_0", ylim=(0, 1),
           title="Win rate vs pi_0 per turn (95% CI)")
    a2.set(xticks=turns, xlabel="turn h", ylabel="mean judge score", title="Mean judge score per turn (95% CI)")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        if rows:
            a.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return bool(rows)


def plot_paired(results: dict, path: Path) -> bool:
    """REFUEL minus each other row, per turn: the paired difference of win rates against pi_0, with 95% CIs."""
    diffs = {b: d for b, d in (results.get("paired", {}).get("REFUEL") or {}).items() if d}
    if not diffs:
        return False
    plt = _pyplot()
    turns = np.asarray(results["turns"])
    fig, ax = plt.subplots(figsize=(9, 4.6))
    width = 0.8 / len(diffs)
    for i, (base, d) in enumerate(diffs.items()):
        m = np.asarray(d["wins"]["mean"])
        ax.bar(turns + (i - (len(diffs) - 1) / 2) * width, m, width=width, yerr=_yerr(m, d["wins"]["ci"]), capsize=2,
               color=f"C{i % 10}", label=f"REFUEL - {base}")
    ax.axhline(0, color="k", lw=1)
    ax.set(xticks=turns, xlabel="turn h", ylabel="difference of win rates against pi_0",
           title="REFUEL against each row, paired on the same held-out dialogues (95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
