"""Gradient accumulation (``micro_batch_size``) and the optimiser options of AgentConfig.

An update with micro-batches must take the same optimiser steps as one with whole minibatches (up to
float rounding), for a row-averaged loss (REFUEL, DPO) and a token-averaged one (PPO); the cosine
schedule must follow its formula.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

import gymnasium as gym
import refuel_env  # noqa: F401
from agents.base import make_agent
from agents.engine.policy import Policy


@pytest.fixture(scope="module")
def env():
    return gym.make_vec("RefuelDialogue-v0", num_envs=1, max_turns=3)


def fresh(policy: Policy) -> Policy:
    return Policy(copy.deepcopy(policy.model), policy.tokenizer, name="pi")


def params_after_update(name, pi0, env, batch=None, **options):
    agent = make_agent(name, policy=fresh(pi0), ref_policy=fresh(pi0), seed=0, epochs=1, minibatch_size=8,
                       lr=1e-3, **options)
    if batch is None:  # collected by another agent, so that every updating agent starts from the same random state
        batch = make_agent(name, policy=fresh(pi0), ref_policy=fresh(pi0), seed=1, **options).collect(env)
    # plain SGD: the step is proportional to the gradient (AdamW's step on entries whose gradient is at the level
    # of float rounding is +-lr either way, which would hide or fake a difference)
    agent.optimizer = torch.optim.SGD(agent.parameters(), lr=1e-1)
    assert len(batch) > 3, "too few usable pairs for micro-batches of 3"
    metrics = agent.update(batch)
    return batch, metrics, torch.cat([p.detach().flatten() for p in agent.policy.model.parameters()])


@pytest.mark.parametrize("name,options", [("refuel", {"batch_size": 48}), ("dpo", {"batch_size": 128, "rollin": "current", "responder": "current"}),
                                          ("ppo", {"batch_size": 16})])
def test_micro_batches_take_the_same_step_as_whole_minibatches(env, tiny_reference, name, options):
    batch, whole, p_whole = params_after_update(name, tiny_reference, env, **options)
    _, micro, p_micro = params_after_update(name, tiny_reference, env, batch=batch, micro_batch_size=3, **options)
    p_start = torch.cat([p.detach().flatten() for p in tiny_reference.model.parameters()])
    moved = float((p_whole - p_start).abs().max())
    diff = float((p_whole - p_micro).abs().max())
    print(f"\n{name}: max |whole - micro| {diff:.2e}, max step {moved:.2e}")
    assert moved > 1e-4
    assert diff < 1e-4 * moved
    assert micro["loss"] == pytest.approx(whole["loss"], rel=1e-4, abs=1e-6)


def test_cosine_schedule_with_warmup(tiny_reference):
    agent = make_agent("refuel", policy=fresh(tiny_reference), ref_policy=fresh(tiny_reference), lr=1e-3,
                       lr_schedule="cosine", warmup_ratio=0.25, weight_decay=1e-6, epochs=2, minibatch_size=4)
    assert agent.optimizer.param_groups[0]["weight_decay"] == 1e-6
    list(agent.minibatches(16))  # 2 epochs x 4 minibatches: 8 steps, the first 2 warming up
    seen = []
    for _ in range(8):
        seen.append(agent.lr_now())
        agent._steps = (agent._steps[0] + 1, agent._steps[1])
    expected = [1e-3 / 3, 2e-3 / 3] + [1e-3 * 0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)]
    assert seen == pytest.approx(expected)
    with pytest.raises(ValueError, match="lr_schedule"):
        make_agent("refuel", policy=fresh(tiny_reference), ref_policy=fresh(tiny_reference), lr_schedule="linear")
    with pytest.raises(ValueError, match="micro_batch_size"):
        make_agent("refuel", policy=fresh(tiny_reference), ref_policy=fresh(tiny_reference), micro_batch_size=0)


class OneProcessLaunch:
    """A multi-process launch of ONE process: ``enabled``, so collect and update take their multi-process code path
    (gathering every process's data, weighting each process's share, agreeing on the step), with one rank."""

    def __new__(cls):
        from agents.engine.distributed import Distributed

        class _One(Distributed):
            enabled = True
            device = torch.device("cpu")

        return _One()


@pytest.mark.parametrize("name,options", [("refuel", {"batch_size": 12}), ("rebel", {"batch_size": 12, "rollin": "current"}),
                                          ("ppo", {"batch_size": 6, "kl_coef": 0.2})])
def test_the_multi_process_path_of_one_process_is_the_single_process_path(env, tiny_reference, name, options,
                                                                         monkeypatch):
    """Gathering, per-process weights and the agreed step, run with one process, change nothing: the same batch,
    the same metrics and the same parameters as a plain run."""
    from agents.engine import distributed

    def run(dist):
        if dist is not None:
            monkeypatch.setattr(distributed, "current", lambda: dist)
        agent = make_agent(name, policy=fresh(tiny_reference), seed=4, epochs=1, minibatch_size=4, lr=1e-2,
                           **options)
        monkeypatch.undo()
        with torch.no_grad():  # a reference that differs from the policy (PPO's KL reward, DPO's anchor)
            for p in agent.ref_policy.model.parameters():
                p.mul_(0.97)
        batch = agent.collect(env)
        return batch, agent.update(batch), torch.cat([p.detach().flatten() for p in agent.policy.model.parameters()])

    (b1, m1, p1), (b2, m2, p2) = run(None), run(OneProcessLaunch())
    assert len(b1) == len(b2) > 0
    assert b1.stats == b2.stats
    for k, v in b1.data.items():
        w = b2.data[k]
        if torch.is_tensor(v):
            assert torch.allclose(v, w, atol=1e-6), k
        elif hasattr(v, "input_ids"):
            assert torch.equal(v.input_ids, w.input_ids) and torch.equal(v.turn_mask, w.turn_mask), k
        elif isinstance(v, np.ndarray):
            assert np.array_equal(v, w), k
        elif isinstance(v, float):
            assert v == pytest.approx(w, rel=1e-6), k
        else:
            assert v == w, k
    assert m1.keys() == m2.keys() and all(m1[k] == pytest.approx(m2[k], rel=1e-5, abs=1e-7) for k in m1)
    assert float((p1 - p2).abs().max()) < 1e-6
