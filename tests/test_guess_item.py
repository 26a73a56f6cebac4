"""The built-in guess-item task: planning must pay. Scripted questioners over 500 seeded dialogues each.

With 8 items and H = 4, three well-chosen yes/no questions identify the item, so the informative
questioner scores 1; guessing at once (myopic) finds the item with probability H/N = 1/2; random
questions (uninformative) fall in between. Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import numpy as np
import pytest

from refuel_env.core import DialogueMachine
from refuel_env.tasks.guess_item import ATTRIBUTE_NAMES, CATALOGUE, GuessItemTask
from refuel_env.tasks.guess_item_players import ScriptedQuestioner

N_DIALOGUES = 500


def evaluate(strategy: str, horizon: str = "fixed", seed: int = 0, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Final judge scores and horizons of ``N_DIALOGUES`` seeded dialogues, stepped as one batch."""
    core = DialogueMachine(horizon=horizon, **kwargs)
    player = ScriptedQuestioner(core.task, strategy, seed=seed)
    states = [core.new_state(10_000 * seed + i) for i in range(N_DIALOGUES)]
    live = list(states)
    while live:
        core.step(live, player.act([core.observation(s) for s in live]))
        live = [s for s in live if not s.done]
    return np.array([s.scores[-1] for s in states]), np.array([s.horizon for s in states])


@pytest.fixture(scope="module")
def fixed_h4():
    return {s: evaluate(s, "fixed")[0].mean() for s in ("informative", "myopic", "uninformative", "demonstrator")}


def test_informative_beats_myopic_and_uninformative_at_fixed_horizon(fixed_h4):
    print("\nguess-item, 8 items, H = 4 (fixed), mean final score over 500 dialogues:",
          {k: round(float(v), 3) for k, v in fixed_h4.items()})
    assert fixed_h4["informative"] >= 0.95
    assert abs(fixed_h4["myopic"] - 4 / 8) < 0.07  # H / N
    assert fixed_h4["uninformative"] <= fixed_h4["informative"] - 0.3
    assert fixed_h4["myopic"] < fixed_h4["demonstrator"] < fixed_h4["informative"]  # pi_0's data: competent, not optimal


def test_planning_pays_at_uniform_horizon():
    informative, h_inf = evaluate("informative", "uniform", seed=1)
    myopic, h_myo = evaluate("myopic", "uniform", seed=1)
    uninformative, _ = evaluate("uninformative", "uniform", seed=1)
    per_h = {int(h): (round(float(informative[h_inf == h].mean()), 3), round(float(myopic[h_myo == h].mean()), 3))
             for h in range(1, 5)}
    print(f"\nguess-item, 8 items, H uniform in 1..4: informative {informative.mean():.3f}, myopic {myopic.mean():.3f}, "
          f"uninformative {uninformative.mean():.3f}; per H (informative, myopic): {per_h}")
    assert set(np.unique(h_inf)) == {1, 2, 3, 4} and np.array_equal(h_inf, h_myo)  # same episodes for both
    assert informative.mean() >= myopic.mean() + 0.1
    assert informative.mean() >= uninformative.mean() + 0.08
    for h in range(1, 5):
        inf_h, myo_h = per_h[h]
        assert abs(myo_h - h / 8) < 0.1  # myopic finds the item with probability H / N
        assert inf_h >= (1.0 if h == 4 else 2 ** (h - 1) / 8) - 0.1  # 2^(H-1) items told apart by H-1 questions
    assert per_h[4][0] >= 0.95 and per_h[3][0] > per_h[3][1] + 0.05


def test_planning_pays_with_answer_noise_and_a_larger_catalogue():
    noisy = {s: round(float(evaluate(s, "fixed", seed=2, task_kwargs={"noise": 0.1})[0].mean()), 3) for s in ("informative", "myopic")}
    big = {s: round(float(evaluate(s, "fixed", seed=3, task_kwargs={"n_items": 16}, max_turns=5)[0].mean()), 3)
           for s in ("informative", "myopic")}
    print(f"\nnoise 0.1 (8 items, H=4): {noisy}; 16 items, H=5: {big}")
    assert noisy["informative"] >= noisy["myopic"] + 0.1
    assert big["informative"] >= 0.8 and abs(big["myopic"] - 5 / 16) < 0.07


@pytest.mark.parametrize("noise", [0.0, 0.2])
def test_posterior_and_candidates_are_bayes_by_hand(noise):
    """The posterior is P(item | answers) under the noise model, computed here item by item: each answer
    multiplies by 1 - noise where the item agrees and by noise where it does not; a rejected guess rules its item
    out; a repeated answer counts twice; the order of the answers does not matter. The candidates are the items
    that agree with every answer. Asked twice, and after another noise level, the memoised values stay right."""
    task = GuessItemTask(n_items=8, noise=noise)
    facts = [["attr", "mammal", True], ["guess", "whale", False], ["attr", "water", True], ["attr", "mammal", True]]
    column = {a: i for i, a in enumerate(ATTRIBUTE_NAMES)}

    def by_hand(item):
        if item == "whale":
            return 0.0
        p = 1.0
        for kind, key, value in facts:
            if kind == "attr":
                p *= (1 - noise) if bool(CATALOGUE[item][column[key]]) == value else noise
        return p

    want = np.array([by_hand(item) for item in task.items])
    want /= want.sum()
    for order in (facts, facts[::-1], facts):
        np.testing.assert_allclose(task.posterior(order), want, rtol=1e-12, atol=0)
        assert task.best_posterior(order) == pytest.approx(want.max(), rel=1e-12)
    agree = [item for item in task.items if item != "whale"
             and all(bool(CATALOGUE[item][column[k]]) == v for kind, k, v in facts if kind == "attr")]
    assert agree == ["otter"] and task.candidates(facts) == agree and task.candidates_text(facts[::-1]) == "otter"
    if noise == 0.0:  # a mammal in the water that is not a whale or an otter: only otter; without it, the memo is cold
        assert list(want) == [float(item == "otter") for item in task.items]
    task.posterior([["attr", "big", False]])
    task.noise = 0.4  # the memoised answer rows follow the noise level (a new fact set: its posterior is computed)
    odds = np.array([0.4 if CATALOGUE[item][column["big"]] else 0.6 for item in task.items]) ** 2
    np.testing.assert_allclose(task.posterior([["attr", "big", False]] * 2), odds / odds.sum(), rtol=1e-12)
