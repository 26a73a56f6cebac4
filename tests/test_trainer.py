"""The trainer: metrics, TensorBoard, checkpoints, exact resume, budget and skip accounting."""

from __future__ import annotations

import json

import gymnasium as gym
import pytest
import torch

import refuel_env  # noqa: F401
from agents.base import Batch, make_agent
from agents.engine.reference import reference_policy
from agents.harness.trainer import latest_checkpoint, read_metrics, train

SMALL = dict(batch_size=4, max_new_tokens=8, epochs=1, minibatch_size=4, lr=1e-3)


@pytest.fixture
def env():
    return gym.make_vec("RefuelDialogue-v0", num_envs=1, max_turns=4)


def fresh(name, cfg, **kw):
    """An agent on a fresh, trainable copy of the tiny pi_0."""
    opts = {**SMALL, **({"batch_size": 16} if name == "ppo" else {}), **kw}
    return make_agent(name, policy=reference_policy(cfg, log=lambda *a: None), seed=7, **opts)


def params(agent):
    sd = {k: v.detach().clone() for k, v in agent.policy.model.state_dict().items()}
    if hasattr(agent, "value_head"):
        sd.update({f"value_head.{k}": v.detach().clone() for k, v in agent.value_head.state_dict().items()})
    return sd


class Killed(BaseException):
    """Stands in for a kill (SIGINT/SIGTERM) in the middle of an iteration."""


@pytest.mark.slow
@pytest.mark.parametrize("name", ["refuel", "ppo"])
def test_killed_and_resumed_run_matches_uninterrupted_run(env, tiny_reference_config, tmp_path, name):
    straight = fresh(name, tiny_reference_config)
    r_straight = train(straight, env, 3, out=tmp_path / "a", progress=False, log=lambda *a: None)
    assert straight.iteration == 3 and r_straight.iterations_run == 3

    first = fresh(name, tiny_reference_config)
    update = first.update

    def dying_update(batch):  # the kill lands in iteration 2, after collection and part of the work
        if first.iteration == 1:
            raise Killed
        return update(batch)

    first.update = dying_update
    with pytest.raises(Killed):
        train(first, env, 3, out=tmp_path / "b", progress=False, log=lambda *a: None)
    assert json.loads((latest_checkpoint(tmp_path / "b") / "trainer_state.json").read_text())["iteration"] == 1

    resumed = fresh(name, tiny_reference_config)  # a new process: built from pi_0, then resumed
    r = train(resumed, env, 3, out=tmp_path / "b", progress=False, log=lambda *a: None)
    assert r.resumed_from == 1 and r.iterations_run == 2 and resumed.iteration == 3

    a, b, init = params(straight), params(resumed), params(fresh(name, tiny_reference_config))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    assert any(not torch.equal(a[k], init[k]) for k in a), "training did not move the parameters: the test proves nothing"
    # the budget and the log match the uninterrupted run (no duplicated iterations)
    for key in ("iterations", "dialogues", "tokens_generated", "examples"):
        assert r.budget[key] == r_straight.budget[key]
    rows_a, rows_b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [x["iteration"] for x in rows_b] == [1, 2, 3]
    assert [x["dialogues"] for x in rows_b] == [x["dialogues"] for x in rows_a]


def test_metrics_tensorboard_checkpoints(env, tiny_reference_config, tmp_path):
    agent = fresh("rebel", tiny_reference_config)
    evals = []

    def eval_fn(ag):
        evals.append(ag.iteration)
        return {"eval/score": 0.25 * ag.iteration}

    res = train(agent, env, 3, eval_every=2, out=tmp_path, eval_fn=eval_fn, progress=False)
    assert evals == [0, 2, 3]  # before training, every 2 iterations, and after the last
    rows = read_metrics(tmp_path)
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3]
    assert "eval/score" in rows[0] and "eval/score" not in rows[1] and rows[3]["eval/score"] == 0.75
    cum = 0
    for r in rows[1:]:  # cumulated budget = sum of the per-iteration batches; wall time grows
        cum += r["batch/dialogues"]
        assert r["dialogues"] == cum and r["tokens_generated"] >= r["batch/tokens_generated"] > 0
        assert r["wall_seconds"] > 0 and "loss" in r and "skipped/nonfinite_loss" in r
    assert res.budget["dialogues"] == cum and res.budget["iterations"] == 3
    assert [w for w in (r["wall_seconds"] for r in rows[1:])] == sorted(r["wall_seconds"] for r in rows[1:])
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("budget/dialogues")] == [(r["iteration"], r["dialogues"]) for r in rows]
    assert [e.value for e in acc.Scalars("eval/score")] == [0.0, 0.5, 0.75]
    for name in ("latest", "final"):
        ck = tmp_path / "checkpoints" / name
        assert (ck / "config.json").exists() and list(ck.glob("*.safetensors"))  # a model directory at the root
    other = fresh("rebel", tiny_reference_config)
    other.load(tmp_path / "checkpoints" / "final")
    assert other.iteration == 3
    for k, v in params(agent).items():
        assert torch.equal(v, params(other)[k])
    # asking for the same total again does nothing; asking for more goes on
    again = train(fresh("rebel", tiny_reference_config), env, 3, out=tmp_path, progress=False, log=lambda *a: None)
    assert again.iterations_run == 0 and again.resumed_from == 3


def test_nonfinite_losses_are_skipped_and_counted(env, tiny_reference_config, tmp_path):
    agent = fresh("refuel", tiny_reference_config)
    agent.config.eta = float("nan")  # every loss is NaN (the config itself refuses a NaN eta)
    before = params(agent)
    train(agent, env, 2, out=tmp_path, progress=False, log=lambda *a: None)
    rows = read_metrics(tmp_path)
    steps = [r for r in rows if r["batch/examples"] > 0]
    assert steps, "no pairs were collected"
    assert rows[-1]["skipped/nonfinite_loss"] == agent.skipped["nonfinite_loss"] >= len(steps)
    for k, v in params(agent).items():
        assert torch.equal(v, before[k])  # a NaN loss is never applied


def test_empty_batches_still_use_up_the_iteration(env, tiny_reference_config, tmp_path):
    agent = fresh("refuel", tiny_reference_config)
    agent.collect = lambda env: Batch({}, {"dialogues": 3, "tokens_generated": 0, "examples": 0})
    res = train(agent, env, 2, out=tmp_path, progress=False, log=lambda *a: None)
    assert agent.iteration == 2 and res.budget["dialogues"] == 6
    assert read_metrics(tmp_path)[-1]["skipped/empty_batches"] == 2


def test_no_resume_starts_over(env, tiny_reference_config, tmp_path):
    train(fresh("refuel", tiny_reference_config), env, 1, out=tmp_path, progress=False, log=lambda *a: None)
    r = train(fresh("refuel", tiny_reference_config), env, 1, out=tmp_path, resume=False, progress=False)
    assert r.resumed_from == 0 and r.iterations_run == 1
    assert [x["iteration"] for x in read_metrics(tmp_path)] == [1]
