"""The comparison benchmark on a tiny configuration: files, consistent numbers, failed rows, resuming."""

from __future__ import annotations

import dataclasses
import json

import pytest

from agents.base import register_agent
from agents.harness.bench import run_bench
from agents.harness.build import agent_kwargs
from agents.harness.config import ExperimentConfig
from agents.harness.rows import agent_spec
from agents.algorithms.refuel import RefuelAgent
from agents.harness.trainer import latest_checkpoint, read_metrics


@register_agent("crash-test")
class CrashingAgent(RefuelAgent):
    name = "crash-test"

    def collect(self, env):
        raise RuntimeError("boom: this agent always fails")


@register_agent("interrupt-once")
class InterruptedOnce(RefuelAgent):
    """Stands in for Ctrl-C in the middle of the second iteration, the first time only."""

    name = "interrupt-once"
    fired = False

    def update(self, batch):
        if self.iteration == 1 and not InterruptedOnce.fired:
            InterruptedOnce.fired = True
            raise KeyboardInterrupt
        return super().update(batch)


@pytest.fixture
def tiny_cfg(tiny_reference_config, reference_cache):
    ref = {k: v for k, v in dataclasses.asdict(tiny_reference_config).items() if k not in ("n_items", "max_turns", "noise")}
    return ExperimentConfig(
        seeds=[0], iterations=1, pairs_per_iteration=4,
        policy={"reference": ref, "cache": str(reference_cache)},
        eval={"n_dialogues": 8, "seed": 5, "curve_every": 1, "curve_n_dialogues": 4, "examples": 1, "bootstrap": 200},
        agent_options={"max_new_tokens": 8, "epochs": 1, "minibatch_size": 4, "lr": 1e-3, "temperature": 1.0})


def strict_json(path):
    def bad(x):
        raise ValueError(f"non-standard JSON constant {x}")

    return json.loads(path.read_text(), parse_constant=bad)


@pytest.mark.slow
def test_bench_report_failed_row_and_resume(tiny_cfg, tmp_path):
    cfg = dataclasses.replace(tiny_cfg, agents=["pi_0", "refuel", "ppo", "crash-test"])
    logs = []
    res = run_bench(cfg, tmp_path, progress=False, log=logs.append)
    for f in ("report.md", "results.json", "learning_curves.png", "win_rates.png", "config.json",
              "units/pi_0-0.json", "units/REFUEL-0.json", "units/PPO-0.json", "units/crash-test-0.json"):
        assert (tmp_path / f).exists(), f
    for png in ("learning_curves.png", "win_rates.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = strict_json(tmp_path / "results.json")
    rows = {r["label"]: r for r in saved["rows"]}
    assert [r["label"] for r in saved["rows"]] == ["pi_0", "REFUEL", "PPO", "crash-test"]

    assert rows["pi_0"]["win_rate"] == [0.5] * 4 and rows["pi_0"]["budget"]["dialogues"] == 0
    for label in ("REFUEL", "PPO"):
        row, unit = rows[label], strict_json(tmp_path / "units" / f"{label}-0.json")
        assert row["status"] == "ok" and unit["status"] == "ok"
        assert row["budget"]["iterations"] == 1 and row["budget"]["tokens_generated"] > 0
        # the table's numbers are the unit's numbers (one seed) and agree with the trainer's log
        assert row["win_rate"] == unit["eval"]["win_rate"] == row["win_rate_per_seed"][0]
        assert row["score"] == unit["eval"]["score"]
        assert row["budget"]["dialogues"] == read_metrics(tmp_path / "units" / f"{label}-0")[-1]["dialogues"]
        for w, (lo, hi) in zip(row["win_rate"], row["win_ci"]):
            assert 0 <= lo <= w <= hi <= 1
        assert row["reference_score"] == rows["pi_0"]["score"]  # every row faces the same pi_0 dialogues
        # the learning curve starts at pi_0 itself: at iteration 0 every row plays pi_0's very dialogues
        assert unit["curve"][0]["iteration"] == 0 and unit["curve"][0]["eval/win_rate"] == 0.5
        assert unit["curve"][-1]["iteration"] == 1 and unit["curve"][-1]["dialogues"] == row["budget"]["dialogues"]
    # equal budgets: 4 pairs cost at most 8 dialogues; PPO samples exactly 8
    assert rows["PPO"]["budget"]["dialogues"] == 8 >= rows["REFUEL"]["budget"]["dialogues"]
    assert rows["crash-test"]["status"] == "failed" and "boom" in rows["crash-test"]["errors"][0]
    report = (tmp_path / "report.md").read_text()
    assert "FAILED" in report and "boom" in report and "| REFUEL |" in report and '"trl"' in report
    assert res["trained_units"] == ["REFUEL-0", "PPO-0"]

    # a second run with the same output reuses the finished units (no training), retries the failed one
    before = (tmp_path / "units" / "REFUEL-0.json").read_text()
    logs.clear()
    res2 = run_bench(cfg, tmp_path, progress=False, log=logs.append)
    assert res2["trained_units"] == []
    assert sum("reused" in m for m in logs) == 3
    assert (tmp_path / "units" / "REFUEL-0.json").read_text() == before
    assert [r["win_rate"] for r in res2["rows"][:3]] == [r["win_rate"] for r in saved["rows"][:3]]
    assert res2["rows"][3]["status"] == "failed"

    # a changed configuration is not mixed with old results: the unit runs again
    logs.clear()
    cfg3 = dataclasses.replace(cfg, agents=["pi_0"], eval=dataclasses.replace(cfg.eval, n_dialogues=6))
    res3 = run_bench(cfg3, tmp_path, progress=False, log=logs.append)
    assert not any("reused" in m for m in logs) and res3["rows"][0]["n_dialogues"] == 6


@pytest.mark.slow
def test_interrupted_bench_resumes_partial_training(tiny_cfg, tmp_path):
    cfg = dataclasses.replace(tiny_cfg, agents=["pi_0", "interrupt-once"], iterations=2, eval=dataclasses.replace(
        tiny_cfg.eval, curve_every=0))
    with pytest.raises(KeyboardInterrupt):
        run_bench(cfg, tmp_path, progress=False, log=lambda *a: None)
    assert "Interrupted" in (tmp_path / "report.md").read_text()  # the finished units are reported
    assert (tmp_path / "units" / "pi_0-0.json").exists() and not (tmp_path / "units" / "interrupt-once-0.json").exists()
    ckpt = latest_checkpoint(tmp_path / "units" / "interrupt-once-0")
    assert json.loads((ckpt / "trainer_state.json").read_text())["iteration"] == 1

    res = run_bench(cfg, tmp_path, progress=False, log=lambda *a: None)
    unit = res["units"]["interrupt-once-0"]
    assert unit["status"] == "ok" and unit["resumed_from"] == 1 and unit["iterations_run"] == 1
    assert unit["budget"]["iterations"] == 2 and res["trained_units"] == ["interrupt-once-0"]
    assert not res["interrupted"]


def test_matched_budgets_and_options(tiny_cfg):
    cfg = dataclasses.replace(tiny_cfg, pairs_per_iteration=6)
    assert agent_kwargs(cfg, agent_spec("refuel"), 3)["batch_size"] == 6
    assert agent_kwargs(cfg, agent_spec("ppo"), 3)["batch_size"] == 12  # two dialogues per pair
    dpo = agent_kwargs(cfg, agent_spec("DPO-ONLINE"), 3)
    assert dpo["rollin"] == dpo["responder"] == "current" and dpo["seed"] == 3 and dpo["lr"] == 1e-3
    rebel = agent_spec("REBEL-LT-MIXED")
    assert rebel.agent == "rebel" and rebel.options == {"target": "last_turn", "rollin": "reference", "responder": "current"}
    assert agent_spec("rebel").options == {}  # a registered agent's name is a row with its defaults
    assert agent_spec("my-agent").agent == "my-agent"
    fp = cfg.unit_fingerprint()
    assert dataclasses.replace(cfg, agents=["ppo"], seeds=[4, 5]).unit_fingerprint() == fp
    assert dataclasses.replace(cfg, iterations=9).unit_fingerprint() != fp
