"""The comparison's analysis on synthetic units: paired differences, decomposition, signal shares, controls, the
verdict, and the tuning grid's selection."""

from __future__ import annotations

import numpy as np
import pytest

from agents.harness.compare import conclusions, decomposition, gap_closed, paired_differences, signal_by_turn, verdict
from agents.harness.config import ExperimentConfig, TuneConfig
from agents.harness.tune import grid, grid_config, grid_label, select

SEEDS = [0, 1, 2]


def unit(label, seed, wins, scores):
    return {"status": "ok", "label": label, "seed": seed, "eval": {"wins": wins.tolist(), "scores": scores.tolist()}}


def units_for(rows: dict, n=200, H=3, seed=0):
    """rows: {label: (win probability at h=1, at h=H, final score)}; per-dialogue outcomes drawn around them."""
    rng = np.random.default_rng(seed)
    out = {}
    for label, (w1, wH, final) in rows.items():
        for s in SEEDS:
            wins = np.stack([rng.random(n) < p for p in np.linspace(w1, wH, H)], 1).astype(float)
            scores = np.stack([np.full(n, 0.3), np.full(n, final + 0.02), (rng.random(n) < final).astype(float)], 1)
            out[f"{label}-{s}"] = unit(label, s, wins, scores)
    return out


def test_paired_difference_is_row_a_minus_row_b_on_the_same_dialogues():
    units = units_for({"A": (0.5, 0.8, 0.8), "B": (0.5, 0.5, 0.6)})
    d = paired_differences(units, "A", "B", SEEDS, n_boot=500)
    assert d["wins"]["mean"][-1] == pytest.approx(0.3, abs=0.06)
    assert d["wins"]["ci"][-1][0] > 0 and d["wins"]["ci"][0][0] < 0 < d["wins"]["ci"][0][1]
    assert d["growth"]["ci"][0] > 0  # the margin grows from turn 1 to turn H
    same = paired_differences(units, "A", "A", SEEDS, n_boot=200)
    assert same["wins"]["mean"] == [0.0, 0.0, 0.0] and same["wins"]["ci"][-1] == [0.0, 0.0]
    assert paired_differences(units, "A", "missing", SEEDS) is None


def test_decomposition_splits_the_final_score_into_planning_and_execution():
    units = units_for({"pi_0": (0.5, 0.5, 0.6), "EXPERT": (0.7, 0.7, 1.0)})
    d = decomposition(units, "pi_0", SEEDS, n_boot=300)
    assert d["planning"] == pytest.approx(0.62) and d["final"] == pytest.approx(0.6, abs=0.05)
    assert d["execution_loss"] == pytest.approx(d["planning"] - d["final"])
    assert gap_closed(0.8, 0.6, 1.0) == pytest.approx(0.5) and np.isnan(gap_closed(0.8, 0.6, 0.6))


def test_signal_shares_sum_the_pair_counts_over_seeds_and_iterations():
    hist = [[{"batch/turn1/drawn": 10, "batch/turn1/kept": 6, "batch/turn1/signal": 3}] * 2,
            [{"batch/turn1/drawn": 10, "batch/turn1/kept": 4, "batch/turn1/signal": 1, "batch/turn2/drawn": 5,
              "batch/turn2/kept": 5, "batch/turn2/signal": 5}]]
    s = signal_by_turn(hist, 2)
    assert s["1"] == {"drawn": 30, "kept": 16, "signal": 7, "kept_share": 16 / 30, "signal_share": 7 / 30}
    assert s["2"]["signal_share"] == 1.0 and signal_by_turn([[{"loss": 1.0}]], 2) is None


def test_the_verdict_follows_the_intervals():
    rows = {"pi_0": (0.5, 0.5, 0.6), "EXPERT": (0.8, 0.8, 1.0), "POSITIVE-CONTROL": (0.5, 0.75, 0.8),
            "NEGATIVE-CONTROL": (0.5, 0.25, 0.4), "REFUEL": (0.5, 0.8, 0.85), "REBEL-LT-MIXED": (0.5, 0.5, 0.6),
            "DPO-MT": (0.5, 0.8, 0.85)}
    units = units_for(rows)
    table = []
    for label in rows:
        keys = [k for k in units if k.rsplit("-", 1)[0] == label]
        w = np.stack([np.asarray(units[k]["eval"]["wins"]) for k in keys])
        table.append({"label": label, "win_rate": list(w.mean((0, 1))),
                      "win_ci": [[w[:, :, h].mean() - 0.05, w[:, :, h].mean() + 0.05] for h in range(3)]})
    res = conclusions({"rows": table, "turns": [1, 2, 3]}, units, SEEDS, n_boot=300)
    assert all(c["ok"] for c in res["controls"].values())
    text = " ".join(res["verdict"])
    assert "REFUEL beats REBEL-LT-MIXED" in text and "Not shown: REFUEL and" in text and "DPO-MT" in text
    assert "beats every" not in text
    res["controls"]["NEGATIVE-CONTROL"]["ok"] = False
    assert verdict({"rows": table, "turns": [1, 2, 3], **res})[0].startswith("Power NOT shown")
    one = conclusions({"rows": table, "turns": [1, 2, 3]}, units, SEEDS[:1], n_boot=50)
    assert one["verdict"][0].startswith("ONE training seed") and len(SEEDS) > 1


def test_tuning_gives_every_row_the_same_grid_on_other_seeds_and_picks_the_best_final_score():
    cfg = ExperimentConfig(agents=["pi_0", "REFUEL", "NEGATIVE-CONTROL", "DPO-MT", "PPO", "POSITIVE-CONTROL"],
                           seeds=[0, 1], tune=TuneConfig(lr=[1e-4, 1e-3], seeds=[100], eval_seed=5))
    g = grid(cfg)
    assert set(g) == {"REFUEL", "DPO-MT", "PPO"}  # references, controls and untuned agents are left out
    assert all(len(points) == 4 for points in g.values()) and {"lr", "beta"} == set(g["DPO-MT"][0])
    gc = grid_config(cfg)
    assert gc.seeds == [100] and gc.eval.seed == 5 and len(gc.agents) == 12
    assert gc.agents[0].options["rollin"] == "current"  # a grid point keeps its row's declared options
    results = {"rows": [{"label": grid_label(r, p), "status": "ok",
                         "score_per_seed": [[0, 0, 0, 0.1 * i]]} for r, pts in g.items() for i, p in enumerate(pts)]}
    chosen, table = select(cfg, results)
    assert chosen["REFUEL"] == g["REFUEL"][-1] and sum(t.get("chosen", False) for t in table) == 3
    with pytest.raises(ValueError, match="overlap"):
        grid_config(ExperimentConfig(agents=["REFUEL"], seeds=[100], tune=TuneConfig(seeds=[100])))
