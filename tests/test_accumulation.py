"""Gradient accumulation (``micro_batch_size``) and the optimiser options of AgentConfig.

An update with micro-batches must take the same optimiser steps as one with whole minibatches (up to
float rounding), for a row-averaged loss (REFUEL, DPO) and a token-averaged one (PPO); the cosine
schedule must follow its formula.
"""

from __future__ import annotations

import copy
import math

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
