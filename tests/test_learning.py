"""Learning: on the built-in task, a few iterations of each agent raise the mean judge score above pi_0's.

Seeded; evaluated on the same held-out dialogues (same goals, horizons and user random state) for pi_0
and the trained policy. The margin is stated per agent. A control with REFUEL's target negated
(eta < 0: regress onto the *negative* relative future) must not improve: the test can fail.
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
from agents.rollout import RolloutEngine

N_EVAL = 256
EVAL_SEED = 1234


@pytest.fixture(scope="module")
def env():
    return gym.make_vec("RefuelDialogue-v0", num_envs=1, max_turns=4, horizon="uniform")


@pytest.fixture(scope="module")
def pi0(learning_reference):
    return learning_reference


def fresh(policy: Policy) -> Policy:
    return Policy(copy.deepcopy(policy.model), policy.tokenizer, name="pi")


def mean_score(env, policy: Policy) -> float:
    eng = RolloutEngine(env)
    states = eng.dialogues(N_EVAL, policy, np.random.default_rng(EVAL_SEED), split="eval")
    return float(np.mean([s.scores[-1] for s in states]))


def train(env, pi0, name, iterations, **options):
    agent = make_agent(name, policy=fresh(pi0), ref_policy=fresh(pi0), seed=0, **options)
    for _ in range(iterations):
        agent.update(agent.collect(env))
    return agent


CASES = {  # name: (options, iterations, margin over pi_0)
    "refuel": (dict(batch_size=64, lr=3e-4, epochs=2, minibatch_size=32), 6, 0.05),
    "rebel": (dict(batch_size=64, lr=3e-4, epochs=2, minibatch_size=32), 6, 0.05),
    "dpo": (dict(batch_size=64, lr=3e-4, epochs=2, minibatch_size=32, online=True, beta=0.1), 6, 0.05),
    "ppo": (dict(batch_size=128, lr=3e-4, epochs=2, minibatch_size=32), 6, 0.05),
}


@pytest.fixture(scope="module")
def base_score(env, pi0):
    return mean_score(env, pi0)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_agent_improves_on_pi0(env, pi0, base_score, name):
    options, iterations, margin = CASES[name]
    agent = train(env, pi0, name, iterations, **options)
    after = mean_score(env, agent.policy)
    print(f"\n{name}: pi_0 {base_score:.3f} -> {after:.3f} after {iterations} iterations ({N_EVAL} held-out dialogues)")
    assert after >= base_score + margin


@pytest.mark.slow
def test_refuel_with_negated_target_does_not_improve(env, pi0, base_score):
    options, iterations, margin = CASES["refuel"]
    agent = train(env, pi0, "refuel", iterations, **{**options, "eta": -1.0})
    after = mean_score(env, agent.policy)
    print(f"\nrefuel, eta = -1: pi_0 {base_score:.3f} -> {after:.3f}")
    assert after < base_score + margin
