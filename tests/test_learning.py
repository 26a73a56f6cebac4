"""Each agent's update moves the policy the way its objective says, on real rollouts of the built-in task.

For the pair agents, after ``update(batch)`` the change in the relative log-ratio of each pair agrees in
sign with the pair's return difference (REFUEL/REBEL regress onto eta * (Q(a) - Q(a')); DPO raises the
winner over the loser). A control with the target negated (eta < 0) moves it the other way: the test fails
when the update is broken. For PPO, the probability ratio of tokens with positive advantage rises.

Note: a rise of the mean judge score over pi_0 within a few iterations is NOT asserted here: on this
task and budget it was not reliably observed (see the benchmark report).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import gymnasium as gym
import refuel_env  # noqa: F401
from agents.base import make_agent
from agents.policy import Policy


@pytest.fixture(scope="module")
def env():
    return gym.make_vec("RefuelDialogue-v0", num_envs=1, max_turns=4)


def fresh(policy: Policy) -> Policy:
    return Policy(copy.deepcopy(policy.model), policy.tokenizer, name="pi")


def pair_alignment(name, env, pi0, **options) -> float:
    """Mean of sign(Q(a) - Q(a')) * (change of [ln pi(a) - ln pi(a')]) over pairs with different returns."""
    agent = make_agent(name, policy=fresh(pi0), ref_policy=fresh(pi0), seed=0, batch_size=64, lr=1e-3,
                       epochs=4, minibatch_size=16, **options)
    batch = agent.collect(env)
    d = batch.data
    n = len(batch)
    with torch.no_grad():
        lp = agent.policy.sequence_logprobs(d["enc"])
    before = lp[:n] - lp[n:]
    agent.update(batch)
    with torch.no_grad():
        lp = agent.policy.sequence_logprobs(d["enc"])
    after = lp[:n] - lp[n:]
    diff = d["returns"][:, 0] - d["returns"][:, 1]
    keep = diff != 0
    assert int(keep.sum()) >= 5, "too few informative pairs to test the update"
    return float((torch.sign(diff[keep]) * (after - before)[keep]).mean())


@pytest.mark.parametrize("name,options", [("refuel", {}), ("rebel", {}), ("dpo", {"online": True})])
def test_pair_update_moves_toward_the_better_response(env, tiny_reference, name, options):
    score = pair_alignment(name, env, tiny_reference, **options)
    print(f"\n{name}: mean signed change of the relative log-ratio {score:+.3f}")
    assert score > 0.05


def test_refuel_with_negated_target_moves_the_other_way(env, tiny_reference):
    assert pair_alignment("refuel", env, tiny_reference, eta=-1.0) < -0.05


def test_refuel_update_fits_its_regression(env, tiny_reference):
    agent = make_agent("refuel", policy=fresh(tiny_reference), ref_policy=fresh(tiny_reference), seed=0,
                       batch_size=64, lr=1e-3, epochs=1, minibatch_size=64)
    batch = agent.collect(env)
    first = agent.update(batch)["loss"]
    for _ in range(3):
        last = agent.update(batch)["loss"]
    assert last < first


def test_ppo_update_raises_the_ratio_of_advantaged_tokens(env, tiny_reference):
    agent = make_agent("ppo", policy=fresh(tiny_reference), ref_policy=fresh(tiny_reference), seed=0,
                       batch_size=32, lr=1e-3, epochs=2, minibatch_size=16)
    batch = agent.collect(env)
    d = batch.data
    agent.update(batch)
    with torch.no_grad():
        lp = agent.policy.token_logprobs(d["enc"])
    width = lp.shape[1]
    delta = (lp - d["old"][:, :width]) * d["mask"][:, :width]
    adv = d["adv"][:, :width]
    pos, neg = (adv > 0) & (d["mask"][:, :width] > 0), (adv < 0) & (d["mask"][:, :width] > 0)
    print(f"\nppo: mean log-ratio change, positive advantage {delta[pos].mean():+.4f}, negative {delta[neg].mean():+.4f}")
    assert delta[pos].mean() > delta[neg].mean()
