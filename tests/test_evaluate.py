"""Evaluation: per-turn win rate against a reference with the same user and seeds, judge scores, bootstrap CIs."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import refuel_env  # noqa: F401
from refuel_env import SamplingParams
from agents.harness.evaluate import (Evaluator, bootstrap_ci, evaluate, hierarchical_bootstrap_ci, rollout, score_at_turn,
                             state_at_turn)
from refuel_env.tasks.guess_item_players import ScriptedQuestioner
from refuel_env.core import DialogueMachine


@pytest.fixture
def env():
    return gym.make_vec("RefuelDialogue-v0", num_envs=1, max_turns=4, task_kwargs={"n_items": 8})


def questioner(env, strategy):
    return ScriptedQuestioner(env.unwrapped.machine.task if hasattr(env, "unwrapped") else env.machine.task, strategy)


def test_policy_against_itself_is_exactly_one_half(env, tiny_reference):
    res = evaluate(tiny_reference, env, tiny_reference, n_dialogues=12, seed=3, examples=2)
    assert res.turns == [1, 2, 3, 4]
    assert res.win_rate == [0.5] * 4
    assert res.score == res.reference_score  # the very same dialogues on both sides
    assert len(res.examples) == 2 and res.examples[0]["policy"] == res.examples[0]["reference"]


def test_same_seeds_give_same_states_and_identical_results(env, tiny_reference):
    clone = tiny_reference.clone("copy")  # equal weights, a different object: rolled out separately
    a = rollout(tiny_reference, env, 8, seed=5)
    b = rollout(clone, env, 8, seed=5)
    assert [s.goal for s in a.finals] == [s.goal for s in b.finals]
    assert [s.messages for s in a.finals] == [s.messages for s in b.finals]  # same sampling seeds on both sides
    assert all(s.horizon == 4 for s in a.finals)  # every evaluation dialogue runs to H_max
    r1 = evaluate(clone, env, tiny_reference, n_dialogues=8, seed=5)
    assert r1.win_rate == [0.5] * 4
    c = rollout(tiny_reference, env, 8, seed=6)
    assert [s.messages for s in c.finals] != [s.messages for s in a.finals]


def test_planner_beats_myopic_and_win_rates_follow_the_judge(env):
    core = env.unwrapped.machine if hasattr(env, "unwrapped") else env.machine
    informative = ScriptedQuestioner(core.task, "informative")
    myopic = ScriptedQuestioner(core.task, "uninformative")
    ev = Evaluator(env, myopic, n_dialogues=40, seed=0, n_boot=500)
    res = ev(informative)
    assert res.win_rate[-1] > 0.65  # the planner identifies the item by turn H_max = 4 (3 questions for 8 items)
    assert res.score[-1] > res.reference_score[-1]
    # recompute the per-turn outcomes from the judge's per-turn scores (the rule judge compares scores; ties 1/2)
    mine = rollout(informative, env, 40, seed=0)
    ref = ev.reference_rollouts(ev.params.temperature)  # the cached pi_0 side
    for h in range(1, 5):
        sa = np.array([score_at_turn(s, h) for s in mine.finals])
        sb = np.array([score_at_turn(s, h) for s in ref.finals])
        expected = np.where(sa == sb, 0.5, (sa > sb).astype(float)).mean()
        assert res.win_rate[h - 1] == pytest.approx(expected)
        assert res.win_ci[h - 1][0] <= res.win_rate[h - 1] <= res.win_ci[h - 1][1]
    # a dialogue that ended before turn h (a correct early guess) counts with its last state
    short = [s for s in mine.snaps if len(s) < 4]
    if short:
        assert state_at_turn(short[0], 4) is short[0][-1]


def test_evaluation_temperature_overrides_both_sides_and_leaves_random_state_untouched(env, tiny_reference):
    policy = tiny_reference.clone("p")
    params = SamplingParams(max_new_tokens=24, temperature=0.7)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    res = evaluate(policy, env, tiny_reference, n_dialogues=4, seed=1, params=params, temperature=1.3)
    assert res.temperature == pytest.approx(1.3)
    assert torch.equal(torch.get_rng_state(), before)
    again = evaluate(policy, env, tiny_reference, n_dialogues=4, seed=1, params=params, temperature=1.3)
    assert again.wins == res.wins and again.scores == res.scores


def test_an_agent_is_evaluated_through_its_policy_without_touching_its_randomness(env, tiny_reference):
    from agents.base import make_agent

    policy = tiny_reference.clone("p")
    policy.model.requires_grad_(True)
    agent = make_agent("refuel", policy=policy, ref_policy=tiny_reference, seed=3)
    state = agent.rng.bit_generator.state
    ev = Evaluator(env, tiny_reference, n_dialogues=6, seed=2)
    assert ev(agent).wins == ev(agent.policy).wins
    assert ev(agent).win_rate == [0.5] * 4  # untrained: the very dialogues of pi_0
    assert agent.rng.bit_generator.state == state


def test_reference_rollouts_are_computed_once(env, tiny_reference):
    ev = Evaluator(env, tiny_reference, n_dialogues=4, seed=0)
    ev(tiny_reference.clone("a"))
    first = ev.reference_rollouts(1.0)
    ev(tiny_reference.clone("b"))
    assert ev.reference_rollouts(1.0) is first


def test_bootstrap_ci():
    rng = np.random.default_rng(0)
    x = rng.random(200)
    lo, hi = bootstrap_ci(x, seed=1)
    assert lo < x.mean() < hi
    assert (lo, hi) == bootstrap_ci(x, seed=1)  # seeded
    lo_small, hi_small = bootstrap_ci(x[:20], seed=1)
    assert hi_small - lo_small > hi - lo  # fewer dialogues, wider interval
    assert bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)
    assert hierarchical_bootstrap_ci([x], seed=1) == bootstrap_ci(x, seed=1)
    # seeds that disagree widen the interval beyond the within-seed one
    groups = [x[:100] * 0.2, x[100:] * 0.2 + 0.8]
    glo, ghi = hierarchical_bootstrap_ci(groups, seed=2)
    assert glo < np.mean([g.mean() for g in groups]) < ghi
    assert ghi - glo > 0.3


# ------------------------------------------------------------------------------------------ ties
def _fake_rollouts(values_per_turn):
    """Rollouts of dialogues whose judge value after turn h is values_per_turn[i][h-1] (held in the state)."""
    from types import SimpleNamespace

    from agents.harness.evaluate import Rollouts

    finals, snaps = [], []
    for i, vals in enumerate(values_per_turn):
        states = [SimpleNamespace(goal=f"g{i}", messages=[{"role": "user", "content": f"open {i}"}], value=v)
                  for v in vals]
        finals.append(states[-1])
        snaps.append(states)
    return Rollouts(finals, snaps, 0, 0.0, 0, 1.0)


class _ScoreOnly:
    """A judge with score() and no compare(): the evaluation compares its scores."""

    def score(self, states):
        from types import SimpleNamespace

        return [SimpleNamespace(value=s.value) for s in states]


class _Compares(_ScoreOnly):
    def compare(self, a, b):
        return [0.5 if x.value == y.value else 0.25 for x, y in zip(a, b)]


def test_ties_count_one_half_on_every_comparison_path():
    from agents.harness.evaluate import compare_at_turns

    a = _fake_rollouts([[1.0, 0.2], [0.5, 0.5], [0.0, 0.9], [0.3, 0.3]])
    b = _fake_rollouts([[1.0, 0.1], [0.7, 0.5], [0.0, 1.0], [0.1, 0.4]])
    # judges with score() only: win 1, tie 1/2, loss 0, per dialogue and turn
    out = compare_at_turns(_ScoreOnly(), a, b, 2)
    assert out.tolist() == [[0.5, 1.0], [0.0, 0.5], [0.5, 0.0], [1.0, 0.0]]
    # judges with compare(): their probabilities as they are (no re-scoring)
    assert compare_at_turns(_Compares(), a, b, 2).tolist() == [[0.5, 0.25], [0.25, 0.5], [0.5, 0.25], [0.25, 0.25]]
    # the task's rule judge: identical dialogues tie at every turn
    m = DialogueMachine(max_turns=2, horizon="fixed")
    s, t = m.new_state(0), m.new_state(0)
    assert m.judge.compare([s], [t]) == [0.5]
    m.step([s, t], ["Is it a mammal?", "Is it a mammal?"])
    assert m.judge.compare([s], [t]) == [0.5]
    # the reward model judge (hard mode): equal rewards tie
    from refuel_env.judges.reward_model import RewardModelJudge

    rm = RewardModelJudge.__new__(RewardModelJudge)
    rm.compare_mode = "hard"
    rm.rewards = lambda states: (np.array([x.value for x in states]), [0] * len(states))
    sa, sb = a.finals, b.finals  # values 0.2, 0.5, 0.9, 0.3 against 0.1, 0.5, 1.0, 0.4
    assert rm.compare(sa, sb) == [1.0, 0.5, 0.0, 0.0]
