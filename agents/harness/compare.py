"""What the comparison concludes, computed from the per-dialogue outcomes of every (row, seed) unit.

Every unit is evaluated on the same held-out dialogues (same openings, hidden goals, user randomness and
sampling seeds), and a row's seed s is trained from the same seed as every other row's seed s, so rows are
compared *paired*: per turn h, the difference of two rows' outcomes on each held-out dialogue, with a
hierarchical bootstrap interval (training seeds, then dialogues within each seed).

- :func:`paired_differences`: row a minus row b per turn (win rate against pi_0, and judge score);
- :func:`decomposition`: the final score split into planning (the best final score reachable from the first
  H-1 turns: the judge's score after turn H-1) and the execution loss (planning minus the final score), and
  the share of pi_0's gap to the expert each row closed;
- :func:`signal_by_turn`: the share of drawn pairs that were kept and that carried a learning signal;
- :func:`verdict`: sentences computed from the intervals, never from point estimates alone.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .evaluate import hierarchical_bootstrap_ci

LAST_TURN_ROWS = ("REBEL-LT-OFFLINE", "REBEL-LT-MIXED", "DPO-LT-OFFLINE", "DPO-LT-MIXED", "DPO-ONLINE")
MULTI_TURN_ROWS = ("REBEL-MT", "DPO-MT", "PPO")


def _per_seed(units: dict, label: str, seeds: Sequence[int], key: str) -> dict[int, np.ndarray]:
    """{seed: [n, H] array of the unit's per-dialogue ``key`` ("wins" or "scores")} of the finished units."""
    out = {}
    for s in seeds:
        u = units.get(f"{label}-{s}")
        if u and u.get("status") == "ok":
            out[s] = np.asarray(u["eval"][key], dtype=float)
    return out


def _ci(groups: list[np.ndarray], n_boot: int, seed: int) -> list[float]:
    return list(hierarchical_bootstrap_ci(groups, n_boot, seed))


def paired_differences(units: dict, a: str, b: str, seeds: Sequence[int], n_boot: int = 2000) -> dict | None:
    """Row ``a`` minus row ``b`` per turn, on the seeds both finished: win rate against pi_0 and judge score, each a
    mean with a 95% interval; also the growth of the win-rate difference from turn 1 to turn H."""
    out = {}
    for key in ("wins", "scores"):
        xa, xb = _per_seed(units, a, seeds, key), _per_seed(units, b, seeds, key)
        both = [s for s in seeds if s in xa and s in xb and xa[s].shape == xb[s].shape]
        if not both:
            return None
        d = [xa[s] - xb[s] for s in both]  # [n, H] per seed
        H = d[0].shape[1]
        out[key] = {"mean": [float(np.mean([x[:, h].mean() for x in d])) for h in range(H)],
                    "ci": [_ci([x[:, h] for x in d], n_boot, 7 * h + 1) for h in range(H)]}
        if key == "wins":
            growth = [x[:, -1] - x[:, 0] for x in d]
            out["growth"] = {"mean": float(np.mean([g.mean() for g in growth])), "ci": _ci(growth, n_boot, 99)}
        out["seeds"] = both
    return out


def separated(ci: Sequence[float], value: float = 0.0) -> int:
    """+1 when the interval lies above ``value``, -1 below, 0 when it contains it."""
    lo, hi = ci
    return 1 if lo > value else -1 if hi < value else 0


def decomposition(units: dict, label: str, seeds: Sequence[int], n_boot: int = 2000) -> dict | None:
    """Planning (score after turn H-1), final score (turn H) and execution loss (their difference), with 95%
    intervals. Needs H >= 2."""
    sc = _per_seed(units, label, seeds, "scores")
    if not sc:
        return None
    groups = list(sc.values())
    if groups[0].shape[1] < 2:
        return None
    plan = [g[:, -2] for g in groups]
    final = [g[:, -1] for g in groups]
    loss = [g[:, -2] - g[:, -1] for g in groups]
    return {"planning": float(np.mean([x.mean() for x in plan])), "planning_ci": _ci(plan, n_boot, 11),
            "final": float(np.mean([x.mean() for x in final])), "final_ci": _ci(final, n_boot, 12),
            "execution_loss": float(np.mean([x.mean() for x in loss])), "execution_loss_ci": _ci(loss, n_boot, 13)}


def gap_closed(final: float, pi0: float, expert: float) -> float:
    """The share of pi_0's gap to the expert that a final score closes (1: as good as the expert)."""
    return float("nan") if not np.isfinite(expert - pi0) or abs(expert - pi0) < 1e-12 else (final - pi0) / (expert - pi0)


def signal_by_turn(histories: list[list[dict]], hmax: int) -> dict | None:
    """Pairs drawn, kept and with a learning signal (a return difference) per branching turn h, summed over a row's
    seeds and iterations (from the ``batch/turn{h}/...`` counts of its metrics); None for rows without pairs."""
    tot = {h: {"drawn": 0, "kept": 0, "signal": 0} for h in range(1, hmax + 1)}
    seen = False
    for hist in histories:
        for rec in hist:
            for h in tot:
                for k in tot[h]:
                    v = rec.get(f"batch/turn{h}/{k}")
                    if v is not None:
                        tot[h][k] += int(v)
                        seen = True
    if not seen:
        return None
    for h, t in tot.items():
        t["kept_share"] = t["kept"] / t["drawn"] if t["drawn"] else float("nan")
        t["signal_share"] = t["signal"] / t["drawn"] if t["drawn"] else float("nan")
    return {str(h): t for h, t in tot.items()}


def controls(rows: dict) -> dict:
    """Whether the controls separate from pi_0 (50%) at the final turn in the expected direction."""
    out = {}
    for label, want in (("POSITIVE-CONTROL", 1), ("NEGATIVE-CONTROL", -1)):
        row = rows.get(label)
        if row and "win_ci" in row:
            got = separated(row["win_ci"][-1], 0.5)
            out[label] = {"expected": want, "separated": got, "ok": got == want,
                          "win_rate": row["win_rate"][-1], "ci": row["win_ci"][-1]}
    return out


def verdict(results: dict) -> list[str]:
    """Sentences computed from the intervals: the controls, and REFUEL against each baseline at the final turn."""
    rows = {r["label"]: r for r in results["rows"]}
    H = len(results["turns"])
    lines = []
    ctl = results.get("controls") or {}
    if ctl:
        bad = [k for k, v in ctl.items() if not v["ok"]]
        lines.append("Power: both controls separate from pi_0 at the final turn in the expected direction, so the "
                     "benchmark can see an effect of this size." if not bad and len(ctl) == 2 else
                     f"Power NOT shown: {', '.join(bad) or 'a control is missing'} did not separate from pi_0 at the "
                     "final turn; differences between the other rows at this budget are not evidence.")
    diffs = results.get("paired", {}).get("REFUEL", {})
    if "REFUEL" not in rows or not diffs:
        return lines
    wins, losses, ties = [], [], []
    for base, d in diffs.items():
        if d is None or base.endswith("-CONTROL"):  # the controls prove power; they are not baselines
            continue
        sign = separated(d["wins"]["ci"][-1])
        (wins if sign > 0 else losses if sign < 0 else ties).append(base)
    baselines = [b for b in (*LAST_TURN_ROWS, *MULTI_TURN_ROWS) if b in diffs and diffs[b] is not None]
    if baselines and set(wins) >= set(baselines):
        lines.append(f"REFUEL beats every last-turn and multi-turn baseline run here ({', '.join(baselines)}) at the "
                     f"final turn h = {H}, with paired 95% intervals above zero.")
    else:
        if wins:
            lines.append(f"REFUEL beats {', '.join(wins)} at the final turn h = {H} (paired 95% interval above zero).")
        if losses:
            lines.append(f"{', '.join(losses)} beat{'s' if len(losses) == 1 else ''} REFUEL at the final turn h = {H} "
                         "(paired 95% interval below zero).")
        if ties:
            lines.append(f"Not shown: REFUEL and {', '.join(ties)} are not separated at the final turn h = {H} (the "
                         "paired 95% interval contains zero).")
    grows = [b for b in baselines if separated(diffs[b]["growth"]["ci"]) > 0]
    lines.append(f"REFUEL's margin grows from turn 1 to turn {H} (interval of the growth above zero) against: "
                 f"{', '.join(grows) if grows else 'none of the baselines'}.")
    return lines


def conclusions(results: dict, units: dict, seeds: Sequence[int], n_boot: int = 2000) -> dict:
    """The comparison's analysis: per row the planning/execution decomposition and the share of pi_0's gap to the
    expert it closed; REFUEL against every other trained row (paired, per turn); the controls; the half-width of
    the final-turn intervals (the smallest effect the run can detect); and the verdict."""
    rows = {r["label"]: r for r in results["rows"]}
    for label, row in rows.items():
        row["decomposition"] = decomposition(units, label, seeds, n_boot)
    base = (rows.get("pi_0") or {}).get("decomposition") or {}
    top = (rows.get("EXPERT") or {}).get("decomposition") or {}
    for row in rows.values():
        d = row.get("decomposition")
        if d and base and top:
            d["gap_closed"] = gap_closed(d["final"], base["final"], top["final"])
    trained = [r["label"] for r in results["rows"] if r["label"] not in ("pi_0", "EXPERT") and "win_rate" in r]
    paired = {}
    if "REFUEL" in rows:
        paired["REFUEL"] = {b: paired_differences(units, "REFUEL", b, seeds, n_boot) for b in trained if b != "REFUEL"}
    widths = [(r["win_ci"][-1][1] - r["win_ci"][-1][0]) / 2 for r in results["rows"]
              if "win_ci" in r and r["label"] != "pi_0"]
    out = {"paired": paired, "controls": controls(rows),
           "final_turn_half_width": float(np.mean(widths)) if widths else float("nan")}
    out["verdict"] = verdict({**results, **out})
    if len(seeds) < 2:  # the intervals then hold the held-out dialogues' spread only
        out["verdict"].insert(0, "ONE training seed: the intervals cover the held-out dialogues, not the spread between "
                                 "training runs, so the sentences below are not conclusions (the comparison preset "
                                 "has 5 seeds).")
    return out