"""Each agent's update moves the policy the way its objective says, on real rollouts of the built-in task.

For the pair agents, after ``update(batch)`` the change in the relative log-ratio of each pair agrees in
sign with the pair's return difference (REFUEL/REBEL regress onto eta * (Q(a) - Q(a')); DPO raises the
winner over the loser). A control with the target negated (eta < 0) moves it the other way: the test fails
when the update is broken. For PPO, the probability ratio of tokens with positive advantage rises.

Learning tests (``test_*_raises_the_judge_score``): on the built-in task with 4 animals and H_max = 3,
10 iterations of each agent raise the mean final-turn judge score of a small pi_0 (built in seconds, see
``small_reference``) by at least ``MARGIN`` on 512 held-out dialogues. Measured over training seeds 0-3
(``/tmp/learn/exp.py`` in the closing note of issue #3), the smallest gains were: REFUEL +0.080, REBEL
+0.141, DPO offline +0.064, DPO online +0.127, PPO +0.139 (pi_0: 0.375); REFUEL with its target negated
(eta = -1) LOST 0.22-0.27, and so fails the same assertion (tested). On the library's default pi_0
(8 animals, H_max = 4, which scores 0.605) these budgets did not give a reliable gain: see the benchmark
report. The hyper-parameters below are per agent and stated; DPO offline needs a smaller step
(lr 3e-4, beta 0.5): at lr 1e-3 and beta 0.1 it fell below pi_0 on 2 of 4 seeds.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import gymnasium as gym
import refuel_env  # noqa: F401
from agents.base import make_agent
from agents.engine.policy import Policy

pytestmark = pytest.mark.slow  # learning and multi-process runs: minutes; `make test-fast` skips them


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
    # on the small task (4 animals, H_max = 3) the shipped small pi_0 gives 16-19 of 64 pairs with a return
    # difference at seed 0; on 8 animals with the task's default demonstrator only 3-4 (too few to test)
    assert int(keep.sum()) >= 5, "too few informative pairs to test the update"
    return float((torch.sign(diff[keep]) * (after - before)[keep]).mean())


@pytest.mark.parametrize("name,options", [("refuel", {}), ("rebel", {}), ("dpo", {"rollin": "current", "responder": "current"})])
def test_pair_update_moves_toward_the_better_response(small_env, small_reference, name, options):
    score = pair_alignment(name, small_env, small_reference, **options)
    print(f"\n{name}: mean signed change of the relative log-ratio {score:+.3f}")
    assert score > 0.05


def test_refuel_with_negated_target_moves_the_other_way(small_env, small_reference):
    assert pair_alignment("refuel", small_env, small_reference, eta=-1.0) < -0.05


def test_refuel_update_fits_its_regression(small_env, small_reference):
    agent = make_agent("refuel", policy=fresh(small_reference), ref_policy=fresh(small_reference), seed=0,
                       batch_size=64, lr=1e-4, epochs=1, minibatch_size=64)
    batch = agent.collect(small_env)
    # full-batch steps on the same pairs: the regression loss falls at every step (measured 0.346, 0.293, 0.282,
    # 0.265). At lr 1e-3 the first Adam step overshoots (0.346 -> 1.49) before it falls.
    losses = [agent.update(batch)["loss"] for _ in range(4)]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


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


# ------------------------------------------------------------------------------------------ learning
MARGIN = 0.04
"""Required rise of the mean final-turn judge score over pi_0's (same 512 held-out dialogues, same seeds)."""
SMALL_TASK = {"n_items": 4, "max_turns": 3}
LEARNING = {  # agent options for 10 iterations of 64 pairs (PPO, SFT: 128 dialogues, the same dialogue budget)
    "refuel": ("refuel", {"lr": 1e-3}),
    "rebel": ("rebel", {"lr": 1e-3}),
    "dpo-offline": ("dpo", {"lr": 3e-4, "beta": 0.5}),
    "dpo-online": ("dpo", {"lr": 1e-3, "rollin": "current", "responder": "current"}),
    "ppo": ("ppo", {"lr": 1e-3}),
    "positive-control": ("sft", {"lr": 3e-3}),  # at lr 1e-3: +0.03 (SFT loss 0.05, the guesses not yet fixed); pi_0 fine-tuned on the expert's dialogues: the benchmark's control
}


@pytest.fixture(scope="module")
def small_env():
    return gym.make_vec("RefuelDialogue-v0", num_envs=1, max_turns=SMALL_TASK["max_turns"],
                        task_kwargs={"n_items": SMALL_TASK["n_items"]})


@pytest.fixture(scope="module")
def small_reference(reference_cache):
    """The tiny pi_0 recipe on 4 animals, H_max = 3 (about 5 s to build): it scores about 0.38 where the
    informative questioner scores 1.0, so there is room to learn in a few iterations."""
    from agents.engine.reference import SMALL, reference_policy

    assert (SMALL.n_items, SMALL.max_turns) == (SMALL_TASK["n_items"], SMALL_TASK["max_turns"])
    return reference_policy(SMALL, cache=reference_cache, log=lambda *a: None)


def final_score(policy, env, n: int = 512) -> float:
    from agents.harness.evaluate import rollout

    r = rollout(policy, env, n, seed=999, horizon=SMALL_TASK["max_turns"])
    return float(np.mean([s.scores[-1] for s in r.finals]))


@pytest.fixture(scope="module")
def small_reference_score(small_reference, small_env):
    return final_score(small_reference, small_env)


def score_gain(name, env, pi0, pi0_score, iterations: int = 10, **options) -> float:
    agent = make_agent(name, policy=fresh(pi0), ref_policy=fresh(pi0), seed=0,
                       batch_size=128 if name in ("ppo", "sft") else 64, epochs=2, minibatch_size=16, **options)
    for _ in range(iterations):
        metrics = agent.update(agent.collect(env))
        assert np.isfinite(metrics["loss"])
    return final_score(agent.policy, env) - pi0_score


@pytest.mark.parametrize("row", list(LEARNING))
def test_agent_raises_the_judge_score(small_env, small_reference, small_reference_score, row):
    name, options = LEARNING[row]
    gain = score_gain(name, small_env, small_reference, small_reference_score, **options)
    print(f"\n{row}: pi_0 {small_reference_score:.3f}, after 10 iterations {small_reference_score + gain:.3f} "
          f"({gain:+.3f})")
    assert gain > MARGIN


def test_refuel_with_negated_target_fails_the_learning_test(small_env, small_reference, small_reference_score):
    gain = score_gain("refuel", small_env, small_reference, small_reference_score, lr=1e-3, eta=-1.0)
    print(f"\nrefuel, eta = -1: {gain:+.3f}")
    assert gain < -MARGIN  # not merely "no gain": the broken update makes the policy worse
