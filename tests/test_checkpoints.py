"""Checkpoints: atomic, the previous one kept, damage reported by file name with a fallback that stays exact,
and every model directory a run writes loads with plain ``from_pretrained``."""

from __future__ import annotations

import json
import shutil

import gymnasium as gym
import pytest
import torch

import refuel_env  # noqa: F401
from agents.base import make_agent
from agents.engine.reference import reference_policy
from agents.harness.checkpoints import CheckpointError, latest_checkpoint, verify
from agents.harness.trainer import read_metrics, train

SMALL = dict(batch_size=4, max_new_tokens=8, epochs=1, minibatch_size=4, lr=1e-3)
FILES = ["model.safetensors", "agent_state.pt", "agent_config.json", "trainer_state.json"]


def fresh(cfg):
    return make_agent("refuel", policy=reference_policy(cfg, log=lambda *a: None), seed=7, **SMALL)


def params(agent):
    return {k: v.detach().clone() for k, v in agent.policy.model.state_dict().items()}


def quiet(*a, **k):
    pass


@pytest.fixture(scope="module")
def straight(tiny_reference_config, tmp_path_factory):
    """A run of 3 iterations (checkpoints/latest at 3, previous at 2, final) and its agent's parameters."""
    out = tmp_path_factory.mktemp("straight")
    env = gym.make_vec("RefuelDialogue-v0", num_envs=1, max_turns=4)
    agent = fresh(tiny_reference_config)
    train(agent, env, 3, out=out, progress=False, log=quiet)
    return out, params(agent)


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_layout_and_manifest(straight):
    out, _ = straight
    ck = out / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["final", "latest", "previous"]
    for name, it in (("latest", 3), ("previous", 2), ("final", 3)):
        problem, state = verify(ck / name)
        assert problem is None and state["iteration"] == it
        assert set(state["files"]) >= {"model.safetensors", "config.json", "agent_state.pt", "agent_config.json"}
    assert latest_checkpoint(out) == ck / "latest"


def test_every_policy_directory_loads_with_plain_from_pretrained(straight, tiny_reference_config):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, want = straight
    for name in ("final", "latest", "previous"):
        model = AutoModelForCausalLM.from_pretrained(out / "checkpoints" / name)
        tok = AutoTokenizer.from_pretrained(out / "checkpoints" / name)
        assert tok.chat_template and len(tok) == model.config.vocab_size
        if name != "previous":
            got = model.state_dict()
            assert all(torch.equal(got[k], v) for k, v in want.items() if k in got)


def resume_after(out, tiny_reference_config, iterations=3):
    env = gym.make_vec("RefuelDialogue-v0", num_envs=1, max_turns=4)
    messages = []
    agent = fresh(tiny_reference_config)
    res = train(agent, env, iterations, out=out, progress=False, log=messages.append)
    return agent, res, messages


def check_fallback(straight, tiny_reference_config, tmp_path, file):
    out, want = straight
    run = tmp_path / "run"
    shutil.copytree(out, run)
    truncate(run / "checkpoints" / "latest" / file)
    agent, res, messages = resume_after(run, tiny_reference_config)
    assert res.resumed_from == 2 and res.iterations_run == 1
    assert len(res.damaged_checkpoints) == 1 and file in res.damaged_checkpoints[0], res.damaged_checkpoints
    assert "passed over 1 damaged checkpoint" in messages[0]
    assert list((run / "checkpoints").glob("damaged-latest-*")), "the damaged checkpoint is kept for inspection"
    rows = read_metrics(run)
    assert [r["iteration"] for r in rows] == [1, 2, 3] and rows[-1]["resume/damaged_checkpoints"] == 1
    got = params(agent)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), \
        "falling back to the previous checkpoint must reach the uninterrupted run's parameters exactly"


def test_a_truncated_weights_file_falls_back_to_the_previous_checkpoint(straight, tiny_reference_config, tmp_path):
    check_fallback(straight, tiny_reference_config, tmp_path, "model.safetensors")


@pytest.mark.parametrize("file", FILES[1:])
def test_each_truncated_checkpoint_file_falls_back_exactly(straight, tiny_reference_config, tmp_path, file):
    check_fallback(straight, tiny_reference_config, tmp_path, file)


def test_a_kill_between_the_two_renames_resumes_from_previous(straight, tiny_reference_config, tmp_path):
    out, want = straight
    run = tmp_path / "run"
    shutil.copytree(out, run)
    shutil.rmtree(run / "checkpoints" / "latest")  # killed after latest -> previous, before tmp -> latest
    agent, res, _ = resume_after(run, tiny_reference_config)
    assert res.resumed_from == 2 and res.damaged_checkpoints == []
    assert all(torch.equal(params(agent)[k], want[k]) for k in want)


def test_no_usable_checkpoint_is_a_clear_error(straight, tiny_reference_config, tmp_path):
    out, _ = straight
    run = tmp_path / "run"
    shutil.copytree(out, run)
    truncate(run / "checkpoints" / "latest" / "agent_state.pt")
    (run / "checkpoints" / "previous" / "trainer_state.json").write_text('{"budget": ')
    with pytest.raises(CheckpointError) as e:
        resume_after(run, tiny_reference_config)
    msg = str(e.value)
    assert "latest: agent_state.pt is damaged" in msg and "previous: trainer_state.json is damaged" in msg
    assert "--no-resume" in msg
    # nothing was moved or deleted: the run directory is as it was
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["final", "latest", "previous"]
    assert json.loads((run / "checkpoints" / "final" / "trainer_state.json").read_text())["iteration"] == 3
