"""The paper's configuration as a preset, and ``--dry-run``: checks, the plan, the hardware estimate, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import refuel_env  # noqa: F401
from refuel_env import SamplingParams
from agents.harness.cli import main
from agents.harness.presets import PAPER_POLICY, PAPER_USER, preset
from agents.harness.hardware import KNOWN_MODELS
from agents.harness.plan import dialogue_profile, pair_profile
from agents.engine.rollout import RolloutEngine

ROOT = Path(__file__).resolve().parents[1]
TRUST = ["--set", "env.task_kwargs.trust_remote_code=true"]  # ArmoRM's code: the user's explicit choice

# runs the CLI with sockets disabled and checks afterwards that vllm was never imported
OFFLINE_MAIN = """
import socket, sys
def _refuse(*a, **k):
    raise OSError("network access in a dry run")
socket.socket.connect = _refuse
socket.create_connection = _refuse
from agents.harness.cli import main
rc = main(sys.argv[1:])
assert "vllm" not in sys.modules, "the dry run imported vllm"
sys.exit(rc)
"""


def test_paper_preset_holds_the_papers_setting():
    cfg = preset("paper-ultrainteract")
    tk = cfg.env.task_kwargs
    assert cfg.policy.model == PAPER_POLICY == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert tk["user_model"] == PAPER_USER and tk["backend"] == "openai" and tk["prompts"] == "ultrainteract"
    assert tk["judge"] == "reward-model" and tk["reward_model"] == "RLHFlow/ArmoRM-Llama3-8B-v0.1"
    assert "trust_remote_code" not in tk  # ArmoRM's custom code runs only on the user's own --set
    assert cfg.env.max_turns == 5 and cfg.env.horizon == "uniform" and cfg.env.user_kwargs == {"format": "paper"}
    assert tk["user_params"]["temperature"] == 0.8 and cfg.agent_options["temperature"] == 0.8
    o = cfg.agent_options
    assert (o["lr"], o["minibatch_size"], o["eta"], cfg.iterations) == (3e-7, 128, 1.0, 2)
    assert [a.agent for a in cfg.agents] == ["refuel"]
    # the HH variant is a parameter of the same preset, not a copy
    hh = preset("paper-hh").to_dict()
    ui = cfg.to_dict()
    assert hh["env"]["task_kwargs"].pop("prompts") == "hh" and ui["env"]["task_kwargs"].pop("prompts") == "ultrainteract"
    assert hh.pop("preset") == "paper-hh" and ui.pop("preset") == "paper-ultrainteract"
    assert hh == ui


def test_base_url_of_the_user_server_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("REFUEL_USER_BASE_URL", "http://10.1.2.3:9000/v1")
    assert preset("paper-ultrainteract").env.task_kwargs["backend_kwargs"]["base_url"] == "http://10.1.2.3:9000/v1"
    monkeypatch.delenv("REFUEL_USER_BASE_URL")
    assert preset("paper-hh").env.task_kwargs["backend_kwargs"]["base_url"] == "http://127.0.0.1:8000/v1"


@pytest.mark.slow
def test_train_dry_run_offline_prints_the_plan_and_downloads_nothing(tmp_path):
    hf_home = tmp_path / "hf"
    hf_home.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HOME": str(hf_home), "REFUEL_USER_BASE_URL": "http://10.9.9.9:8000/v1", "OMP_WAIT_POLICY": "PASSIVE"}
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-c", OFFLINE_MAIN, "train", "--preset", "paper-ultrainteract", "--dry-run",
                        "--out", str(out), *TRUST], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                       check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    shown = json.loads(r.stdout)  # the resolved configuration
    assert shown["preset"] == "paper-ultrainteract" and shown["policy"]["model"] == PAPER_POLICY
    assert shown["env"]["task_kwargs"]["backend_kwargs"]["base_url"] == "http://10.9.9.9:8000/v1"
    plan = r.stderr
    assert "configuration is valid" in plan and "Plan:" in plan and "Hardware" in plan
    assert "2 iteration(s)" in plan and "60,000 pairs = 120,000 dialogues" in plan
    assert "469 gradient step(s) of 128 pairs" in plan  # ceil(60000 / 128), one epoch
    assert "9 generate calls" in plan and "1024 max new tokens" in plan
    assert "8.03B parameters" in plan and "70.6B parameters" in plan and "7.5B parameters" in plan
    assert "--tensor-parallel-size 4" in plan and "How these are estimated" in plan
    assert "round away" in plan  # pure-bf16 AdamW at lr 3e-7 is flagged
    assert not out.exists()  # a dry run writes nothing
    assert not any(hf_home.rglob("*")), "something was written to the Hugging Face cache"


def test_bench_dry_run_validates_the_preset(capsys):
    assert main(["bench", "--preset", "paper-hh", "--dry-run", *TRUST]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)["env"]["task_kwargs"]["prompts"] == "hh"
    assert "row 'REFUEL'" in cap.err


@pytest.mark.parametrize("setting, message", [
    ("env.user=nosuch", "unknown user simulator 'nosuch'"),
    ("env.task_kwargs.backend=nosuch", "unknown back end 'nosuch'"),
    ("env.task_kwargs.prompt_set=hh", "unknown argument(s) ['prompt_set']"),
    ("env.task_kwargs.backend_kwargs={\"base_uri\": \"x\"}", "unknown argument(s) ['base_uri']"),
    ("env.judge_kwargs={\"batchsize\": 8}", "unknown argument(s) ['batchsize']"),
    ("agent_options.lr=-1", "lr must be > 0"),
    ("agent_options.etaa=1", "['etaa'] is an option of none of the agents"),
    ("agent_options.temperature=0", "temperature 0 (greedy)"),
    ("env.horizon=9", "env.horizon must be"),
    ("policy.dtype=bf17", "policy.dtype must be one of"),
    ("policy.lora={\"r\": 0}", "policy.lora.r must be >= 1"),
])
def test_bad_values_fail_with_a_clear_message(setting, message, tmp_path, capsys):
    rc = main(["train", "--preset", "paper-ultrainteract", "--dry-run", "--out", str(tmp_path / "x"), "--set", setting,
               *TRUST])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("refuel train: error: invalid configuration") and message in err, err


def test_lora_dry_run_counts_adapters_and_drops_the_reference_copy(tmp_path, capsys):
    assert main(["train", "--preset", "paper-ultrainteract", "--dry-run", "--out", str(tmp_path / "x"),
                 "--set", "policy.lora={\"r\": 16}", *TRUST]) == 0
    err = capsys.readouterr().err
    # r * (in + out) over q, k, v, o, gate, up, down of 32 layers of Llama-3-8B
    assert KNOWN_MODELS[PAPER_POLICY].lora_params(16, "all-linear") == 41_943_040
    assert "LoRA r=16 on all-linear: 41.9M trainable parameters" in err and "adapters off: +0" in err
    assert "round away" not in err  # adapters train in fp32


def _walk(d, path=""):
    for k, v in d.items():
        yield path + k, v
        if isinstance(v, dict):
            yield from _walk(v, path + k + ".")


def test_no_preset_turns_on_remote_code():
    from agents.harness.presets import PRESETS

    for name in PRESETS:
        on = [k for k, v in _walk(preset(name).to_dict()) if k.endswith("trust_remote_code") and v]
        assert on == [], f"preset {name!r} turns on {on}: only the user may"


@pytest.mark.parametrize("command", [["train", "--dry-run"], ["bench", "--dry-run"], ["train"]])
def test_armorm_without_the_users_flag_is_refused_before_any_work(command, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*command, "--preset", "paper-ultrainteract", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "RLHFlow/ArmoRM-Llama3-8B-v0.1' needs trust_remote_code" in err
    assert "--set env.task_kwargs.trust_remote_code=true" in err and "run in this process" in err, err
    assert not out.exists()


def test_the_dry_run_says_what_remote_code_it_would_enable(tmp_path, capsys):
    assert main(["train", "--preset", "paper-hh", "--dry-run", "--out", str(tmp_path / "x"), *TRUST]) == 0
    err = capsys.readouterr().err
    assert "env.task_kwargs.trust_remote_code=true (your choice)" in err
    assert "'RLHFlow/ArmoRM-Llama3-8B-v0.1' loads with trust_remote_code" in err and "runs in this process" in err
    # a local model whose config maps classes to its own code is recognised too
    model = tmp_path / "rm"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"auto_map": {"AutoModelForSequenceClassification": "m.RM"}}))
    assert main(["train", "--preset", "paper-hh", "--dry-run", "--out", str(tmp_path / "x"),
                 "--set", f"env.task_kwargs.reward_model={model}"]) == 2
    assert "AutoModelForSequenceClassification" in capsys.readouterr().err


class Asker:
    """A speaker that always asks a question (so no dialogue ends before its horizon); records batch sizes."""

    def __init__(self):
        self.calls = []

    def act(self, conversations):
        self.calls.append(len(conversations))
        return ["Is it a mammal?"] * len(conversations)


@pytest.mark.parametrize("last_turn", [False, True])
def test_plan_rows_match_the_rollout_engine(last_turn):
    """The plan's expected rows per batched call are what the shared rollout engine does."""
    n, hmax = 600, 4
    env = gym.make_vec("RefuelDialogue-v0", num_envs=1, max_turns=hmax)
    asker = Asker()
    _, dropped = RolloutEngine(env).pairs(n, np.random.default_rng(0), rollin=asker, responder=asker,
                                          target="last_turn" if last_turn else "relative_future", params=SamplingParams())
    assert dropped["ended_before_branch"] == 0
    want = pair_profile(n, hmax, "last_turn" if last_turn else "relative_future")
    assert len(asker.calls) == len(want)
    for got, (phase, rows, _) in zip(asker.calls, want):
        assert abs(got - rows) <= 0.06 * (2 * n if phase.startswith(("branch", "continuation")) else n), (phase, got, rows)
    assert asker.calls[len(want) - (1 if last_turn else hmax)] == 2 * n  # the branch call: both responses of all pairs


def test_plan_rows_of_whole_dialogues_match_the_engine():
    n, hmax = 400, 4
    env = gym.make_vec("RefuelDialogue-v0", num_envs=1, max_turns=hmax)
    asker = Asker()
    RolloutEngine(env).dialogues(n, asker, np.random.default_rng(1), SamplingParams())
    want = dialogue_profile(n, hmax, "uniform")
    assert len(asker.calls) == len(want) and asker.calls[0] == n
    assert all(abs(got - rows) <= 0.06 * n for got, (_, rows, _) in zip(asker.calls, want))
