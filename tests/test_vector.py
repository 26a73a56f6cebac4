"""The batched vector env: registration, one user and one judge call per step, autoreset, branching in a batch."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import refuel_env  # noqa: F401  (registers RefuelDialogue-v0)
from refuel_env import RefuelVectorEnv
from refuel_env.tasks.guess_item import GuessItemTask
from refuel_env.tasks.guess_item_players import ScriptedQuestioner


class Counting:
    """Wraps a user simulator or judge and records the batch size of every call."""

    def __init__(self, inner, method):
        self.inner, self.method, self.batches = inner, method, []
        setattr(self, method, self._call)

    def _call(self, states):
        self.batches.append(len(states))
        return getattr(self.inner, self.method)(states)


def _counted_vec(n, **kwargs):
    task = GuessItemTask(**kwargs.pop("task_kwargs", {}))
    user = Counting(task.make_scripted_user(), "reply")
    judge = Counting(task.make_rule_judge(), "score")
    vec = gym.make_vec("RefuelDialogue-v0", num_envs=n, task=task, user=user, judge=judge, **kwargs)
    return vec, user, judge


def test_make_vec_gives_the_batched_vector_env():
    vec = gym.make_vec("RefuelDialogue-v0", num_envs=5, horizon="fixed")
    assert isinstance(vec, RefuelVectorEnv) and vec.num_envs == 5
    obs, info = vec.reset(seed=0)
    assert len(obs["messages"]) == 5 and obs["turn"].tolist() == [0] * 5 and info["horizon"].tolist() == [4] * 5
    assert vec.observation_space.contains(obs)


def test_one_user_call_and_one_judge_call_per_step():
    n = 16
    vec, user, judge = _counted_vec(n, horizon="fixed")
    vec.reset(seed=0)
    q = ScriptedQuestioner(vec.unwrapped.task, "informative", seed=0)
    obs, _ = vec.reset(seed=0)
    for t in range(4):
        msgs = [{"messages": m} for m in obs["messages"]]
        obs, rew, term, trunc, info = vec.step(q.act(msgs))
        assert len(judge.batches) == t + 1 and judge.batches[-1] == n  # one judge call for the whole batch
    # one user call per step for every dialogue that goes on (none after the last turn, H = 4)
    assert user.batches == [n, n, n] and judge.batches == [n] * 4
    assert term.all() and vec.unwrapped.stats["user_calls"] == 3 and vec.unwrapped.stats["judge_calls"] == 4


def test_uniform_horizons_still_one_call_per_step():
    vec, user, judge = _counted_vec(32, horizon="uniform")
    vec.reset(seed=1)
    just_ended = np.zeros(32, dtype=bool)
    for t in range(6):
        _, _, term, trunc, _ = vec.step(["Does it hunt other animals?"] * 32)
        assert len(user.batches) <= t + 1 and len(judge.batches) == t + 1
        # the judge scores every dialogue stepped (those being autoreset are not stepped)
        assert judge.batches[-1] == (~just_ended).sum()
        just_ended = term | trunc
    assert sum(user.batches) < sum(judge.batches)  # dialogues that reached their horizon were not sent to the user


def test_next_step_autoreset():
    vec = gym.make_vec("RefuelDialogue-v0", num_envs=6, horizon="uniform")
    obs, info = vec.reset(seed=3)
    horizons = info["horizon"].copy()
    assert len(set(horizons.tolist())) > 1
    turns = np.zeros(6, dtype=int)
    ended = np.zeros(6, dtype=bool)
    n_resets = 0
    for t in range(1, 9):
        # an env that ended at the previous step is reset now and its action is ignored (even a bad one)
        actions = [12345 if ended[i] else "Is it a whale?" for i in range(6)]
        obs, rew, term, trunc, info = vec.step(actions)
        for i in range(6):
            if ended[i]:
                assert rew[i] == 0.0 and not term[i] and not trunc[i]
                assert obs["turn"][i] == 0 and len(obs["messages"][i]) == 1  # the first observation of a new episode
                turns[i] = 0
                n_resets += 1
            else:
                turns[i] += 1
                assert obs["turn"][i] == turns[i] and obs["messages"][i][-2 if not term[i] else -1]["content"] == "Is it a whale?"
                if term[i]:
                    assert turns[i] == horizons[i] or info["ended_by_user"][i]
        for i in np.flatnonzero(ended):
            horizons[i] = vec.unwrapped.get_states()[i].horizon
        ended = term | trunc
    assert n_resets >= 6


def test_matches_single_envs_with_the_same_seeds():
    n, seeds = 8, [11, 22, 33, 44, 55, 66, 77, 88]
    kwargs = {"horizon": "uniform", "reward_mode": "per_turn", "task_kwargs": {"noise": 0.2}}
    vec = gym.make_vec("RefuelDialogue-v0", num_envs=n, **kwargs)
    singles = [gym.make("RefuelDialogue-v0", **kwargs) for _ in range(n)]
    vobs, _ = vec.reset(seed=seeds)
    sobs = [e.reset(seed=s)[0] for e, s in zip(singles, seeds)]
    assert list(vobs["messages"]) == [o["messages"] for o in sobs]
    players = [ScriptedQuestioner(vec.unwrapped.task, "demonstrator", seed=i) for i in range(n)]
    done = np.zeros(n, dtype=bool)
    while not done.all():
        actions = [players[i].act([sobs[i]])[0] if not done[i] else "" for i in range(n)]
        vobs, vrew, vterm, vtrunc, vinfo = vec.step(actions)
        for i in np.flatnonzero(~done):
            sobs[i], r, te, tr, info = singles[i].step(actions[i])
            assert vobs["messages"][i] == sobs[i]["messages"]
            assert (vrew[i], vterm[i], vtrunc[i]) == (r, te, tr)
            assert vinfo["score"][i] == info["score"] and vinfo["turn"][i] == info["turn"]
        done |= vterm | vtrunc


def test_branching_in_a_batch():
    single = gym.make("RefuelDialogue-v0", horizon="fixed", task_kwargs={"noise": 0.3})
    single.reset(seed=5)
    single.step("Is it a mammal?")
    root = single.unwrapped.get_state()
    snapshot = root.to_dict()
    branches = ["Does it live in water?", "Can it fly?", "Is it a pet?", "Does it live in water?"]
    vec = gym.make_vec("RefuelDialogue-v0", num_envs=4, horizon="fixed", task_kwargs={"noise": 0.3})
    obs, _ = vec.reset(options={"states": [root] * 4})
    assert all(m == obs["messages"][0] for m in obs["messages"]) and obs["turn"].tolist() == [1] * 4
    obs, rew, *_ = vec.step(branches)
    for i, a in enumerate(branches):
        assert obs["messages"][i][:3] == tuple(snapshot["messages"]) and obs["messages"][i][3]["content"] == a
    # identical actions from identical states give identical replies (random state included)
    assert obs["messages"][0] == obs["messages"][3]
    # ... and the same as the single env restored from the same state
    single.reset(options={"state": root})
    sobs, *_ = single.step("Can it fly?")
    assert sobs["messages"] == obs["messages"][1]
    assert root.to_dict() == snapshot  # the batch worked on copies
    with pytest.raises(ValueError, match="3 entries for 4 envs"):
        vec.reset(options={"states": [root] * 3})


def test_bad_action_in_one_sub_env_rolls_back_the_whole_batch():
    vec = gym.make_vec("RefuelDialogue-v0", num_envs=3, horizon="fixed", max_message_chars=30)
    vec.reset(seed=0)
    vec.step(["Is it a mammal?"] * 3)
    before = [s.to_dict() for s in vec.unwrapped.get_states()]
    with pytest.raises(ValueError, match=r"max_message_chars=30 \(dialogue 1\)"):
        vec.step(["Can it fly?", "x" * 31, "Can it fly?"])
    with pytest.raises(TypeError, match=r"as a str.*\(dialogue 2\)"):
        vec.step(["Can it fly?", "Can it fly?", None])
    with pytest.raises(ValueError, match="2 actions for 3 envs"):
        vec.step(["Can it fly?"] * 2)
    assert [s.to_dict() for s in vec.unwrapped.get_states()] == before


def test_batched_infos_match_gymnasiums_format():
    """The vector env builds its infos a key at a time; they must equal Gymnasium's ``_add_info`` result."""

    def same(a, b):
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], dict):
                same(a[k], b[k])
            else:
                assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
                assert all(np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y for x, y in zip(a[k], b[k])), k

    for n in (3, 20):
        vec = gym.make_vec("RefuelDialogue-v0", num_envs=n, horizon="uniform", reward_mode="per_turn")
        vec.reset(seed=0)
        core = vec.unwrapped.machine
        for t in range(6):
            live = [i for i in range(n) if not vec.unwrapped._needs_reset[i]]
            states = vec.unwrapped.get_states()
            infos = [r.info for r in core.step([states[i] for i in live], ["Is it a cat?" if t % 2 else ""] * len(live))]
            reference: dict = {}
            for i, info in zip(live, infos):
                reference = vec.unwrapped._add_info(reference, info, i)
            same(vec.unwrapped._batch_infos(infos, live), reference)
            vec.step(["Can it fly?"] * n)
    # keys that only some sub-envs report, arrays, nested dicts
    infos = [{"a": 1, "b": {"c": "x"}}, {"a": 2.5, "d": np.ones(2)}, {"b": {"c": "y", "e": True}}] * 4
    index = [i for i in range(20) if i % 5 != 2][:12]
    reference = {}
    for i, info in zip(index, infos):
        reference = vec.unwrapped._add_info(reference, info, i)
    same(vec.unwrapped._batch_infos(infos, index), reference)
