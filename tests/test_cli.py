"""The ``refuel`` command: bench/train/eval/list, config files (JSON, TOML, YAML), flags, errors, plugins."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from agents.harness.cli import main
from agents.harness.config import ExperimentConfig, from_dict, load_config
from agents.harness.presets import preset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_dict(tiny_reference_config, reference_cache):
    ref = {k: v for k, v in dataclasses.asdict(tiny_reference_config).items() if k not in ("n_items", "max_turns", "noise")}
    return {"seeds": [0], "iterations": 1, "pairs_per_iteration": 4,
            "policy": {"reference": ref, "cache": str(reference_cache)},
            "eval": {"n_dialogues": 8, "seed": 5, "curve_every": 1, "curve_n_dialogues": 4, "examples": 1, "bootstrap": 200},
            "agent_options": {"max_new_tokens": 8, "epochs": 1, "minibatch_size": 4, "lr": 1e-3, "temperature": 1.0}}


def to_toml(d: dict, prefix: str = "") -> str:
    """A tiny TOML writer for the test's flat-ish config (scalars, lists of scalars, nested tables)."""
    def val(v):
        return json.dumps(v) if not isinstance(v, bool) else str(v).lower()

    lines, tables = [], []
    for k, v in d.items():
        (tables if isinstance(v, dict) else lines).append((k, v))
    out = [f"{k} = {val(v)}" for k, v in lines]
    for k, v in tables:
        name = f"{prefix}{k}"
        out += ["", f"[{name}]", to_toml(v, name + ".")]
    return "\n".join(out)


@pytest.mark.slow
def test_bench_from_toml_with_a_custom_agent_plugin(tiny_dict, tmp_path, capsys):
    cfg_path = tmp_path / "bench.toml"
    cfg_path.write_text(to_toml(tiny_dict))
    assert load_config(cfg_path).policy.reference == tiny_dict["policy"]["reference"]
    out = tmp_path / "out"
    rc = main(["bench", "--config", str(cfg_path), "--out", str(out), "--agents", "pi_0,rft",
               "--import", str(ROOT / "examples" / "custom_agent.py"), "--set", "eval.n_dialogues=6", "--no-progress"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    rows = {r["label"]: r for r in results["rows"]}
    assert list(rows) == ["pi_0", "rft"] and rows["rft"]["status"] == "ok"
    assert rows["rft"]["n_dialogues"] == 6 and results["config"]["eval"]["n_dialogues"] == 6
    assert rows["rft"]["budget"]["dialogues"] == 8  # a whole-dialogue agent gets 2 x pairs_per_iteration
    printed = capsys.readouterr().out
    assert "| rft |" in printed and "Win rate against pi_0" in printed


@pytest.mark.slow
def test_train_then_eval_the_checkpoint(tiny_dict, tmp_path, capsys):
    cfg_path = tmp_path / "c.json"
    cfg_path.write_text(json.dumps(tiny_dict))
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg_path), "--agent", "rebel", "--iterations", "2", "--out", str(run),
                 "--no-progress"]) == 0
    assert (run / "checkpoints" / "final" / "config.json").exists()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    trained = json.loads((run / "eval.json").read_text())["eval"]
    assert main(["eval", "--config", str(cfg_path), "--checkpoint", str(run / "checkpoints" / "final"),
                 "--out", str(tmp_path / "ev")]) == 0
    evaluated = json.loads((tmp_path / "ev" / "eval.json").read_text())["eval"]
    assert evaluated["win_rate"] == trained["win_rate"] and evaluated["score"] == trained["score"]  # reproducible
    assert "win rate vs pi_0" in capsys.readouterr().out
    # a run directory stands for its final checkpoint
    assert main(["eval", "--config", str(cfg_path), "--checkpoint", str(run), "--out", str(tmp_path / "ev2")]) == 0
    assert json.loads((tmp_path / "ev2" / "eval.json").read_text())["eval"]["win_rate"] == trained["win_rate"]
    # running train again resumes: nothing left to do
    assert main(["train", "--config", str(cfg_path), "--agent", "rebel", "--iterations", "2", "--out", str(run),
                 "--no-progress"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    # no usable checkpoint: a clear error that names the damaged files and the way out, nothing changed
    for name in ("latest", "previous"):
        f = run / "checkpoints" / name / "model.safetensors"
        f.write_bytes(f.read_bytes()[:100])
    capsys.readouterr()
    assert main(["train", "--config", str(cfg_path), "--agent", "rebel", "--iterations", "3", "--out", str(run),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "latest: model.safetensors is damaged" in err and "previous: model.safetensors is damaged" in err
    assert "--no-resume" in err and "Traceback" not in err
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3


def test_configuration_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["bench", "--preset", "quick", "--set", "eval.n_dialoguez=3", "--dry-run"]) == 2
    assert "eval.n_dialoguez" in capsys.readouterr().err
    assert main(["bench", "--preset", "quick", "--agents", "refuel,no-such-agent", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "no-such-agent" in err and "--import" in err
    assert main(["train", "--agent", "pi_0", "--out", str(tmp_path)]) == 2
    assert main(["bench", "--config", str(tmp_path / "missing.toml")]) == 2
    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    assert "refuel" in listed and "ppo" in listed and "quick" in listed


def test_presets_files_and_overrides(tmp_path, capsys):
    quick, default, full = preset("quick"), preset("default"), preset("full")
    assert len(quick.seeds) == 1 and len(default.seeds) >= 3 and full.iterations > default.iterations
    from agents.harness.rows import PAPER_ROWS

    assert [a.label for a in default.agents] == PAPER_ROWS
    assert from_dict(quick.to_dict()) == quick
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text("preset: quick\niterations: 7\nagents: [refuel, {label: dpo-b1, agent: dpo, options: {beta: 1.0}}]\n")
    cfg = load_config(yaml_path)
    assert cfg.iterations == 7 and cfg.seeds == quick.seeds
    assert [(a.label, a.agent) for a in cfg.agents] == [("REFUEL", "refuel"), ("dpo-b1", "dpo")]  # a name or a row
    assert cfg.agents[1].options == {"beta": 1.0}
    assert main(["bench", "--config", str(yaml_path), "--seeds", "3,4", "--iterations", "2",
                 "--set", "agent_options.lr=0.001", "--dry-run"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["seeds"] == [3, 4] and shown["iterations"] == 2 and shown["agent_options"]["lr"] == 0.001
    assert shown["agent_options"]["epochs"] == quick.agent_options["epochs"]  # untouched fields stay
    with pytest.raises(ValueError):
        ExperimentConfig(agents=["refuel", "refuel"])
