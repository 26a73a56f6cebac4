"""The single Gymnasium env: checker, registration, keyword arguments, branching, and bad input (issue item 9)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import refuel_env  # noqa: F401  (registers RefuelDialogue-v0)
from refuel_env import EnvError, JudgeError, JudgeScore, UserSimulatorError
from refuel_env.tasks.guess_item import FINAL, UNCLEAR, GuessItemTask
from refuel_env.tasks.guess_item_players import ScriptedQuestioner

QUESTIONS = ["Is it a mammal?", "Does it live in water?", "Is it bigger than a person?", "Can it fly?",
             "Is it kept as a pet?", "Does it hunt other animals?", "Does it have four legs?", "Can it climb trees?"]


def make(**kwargs):
    return gym.make("RefuelDialogue-v0", **kwargs)


def run(env, actions):
    """Step through ``actions`` (stopping when the episode ends); return what the env said."""
    out = []
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        out.append((obs, r, term, trunc, info))
        if term or trunc:
            break
    return out


# ---------------------------------------------------------------------------- checker and registration
@pytest.mark.parametrize("kwargs", [{}, {"reward_mode": "per_turn", "task_kwargs": {"noise": 0.2}},
                                    {"horizon": 1}, {"max_turns": 6, "horizon": "fixed"}])
def test_gymnasium_env_checker_passes_without_warnings(kwargs):
    env = make(**kwargs)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
        env.reset(seed=0)  # the wrapped env (PassiveEnvChecker, OrderEnforcing) on a whole episode too
        q = ScriptedQuestioner(env.unwrapped.task, "informative", seed=0)
        obs, _ = env.reset(seed=0)
        done = False
        while not done:
            obs, r, term, trunc, info = env.step(q.act([obs])[0])
            done = term or trunc
    assert [str(w.message) for w in rec] == []


def test_make_by_module_path_in_fresh_process():
    code = ("import sys, gymnasium as gym\n"
            "assert 'refuel_env' not in sys.modules\n"
            "env = gym.make('refuel_env:RefuelDialogue-v0', horizon='fixed')\n"
            "obs, info = env.reset(seed=0)\n"
            "obs, r, term, trunc, info = env.step('Is it a mammal?')\n"
            "assert info['turn'] == 1 and obs['messages'][-1]['role'] == 'user'\n"
            "vec = gym.make_vec('refuel_env:RefuelDialogue-v0', num_envs=3)\n"
            "print(type(env.unwrapped).__name__, type(vec).__name__)\n")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["RefuelDialogueEnv", "RefuelVectorEnv"]


# ---------------------------------------------------------------------------- keyword arguments
def test_task_as_name_with_kwargs_or_as_object():
    env = make(task="guess-item-v0", task_kwargs={"n_items": 4})
    obs, _ = env.reset(seed=0)
    assert env.unwrapped.task.items == ("whale", "horse", "otter", "cat")
    assert "whale, horse, otter, cat." in obs["messages"][0]["content"]
    task = GuessItemTask(n_items=5, max_turns=3)
    env = make(task=task)
    assert env.unwrapped.task is task and env.observation_space["turn"].n == 4
    with pytest.raises(ValueError, match="max_turns"):
        make(task=task, max_turns=5)


def test_user_and_judge_objects_are_used():
    task = GuessItemTask()

    class ParrotUser:
        def reply(self, states):
            return [refuel_env.UserTurn(f"you said: {s.last_assistant}") for s in states]

    class LengthJudge:
        def score(self, states):
            return [JudgeScore(float(len(s.last_assistant)), provenance={"judge": "length"}) for s in states]

    env = make(task=task, user=ParrotUser(), judge=LengthJudge(), horizon="fixed", reward_mode="per_turn")
    env.reset(seed=0)
    obs, r, *_, info = env.step("hello")
    assert obs["messages"][-1] == {"role": "user", "content": "you said: hello"}
    assert r == 5.0 and info["judge"]["provenance"] == {"judge": "length"}
    with pytest.raises(TypeError, match="reply"):
        make(user=object())


@pytest.mark.parametrize("horizon,max_turns,expected", [("fixed", 4, {4}), ("fixed", 6, {6}), (2, 4, {2}),
                                                        ("uniform", 4, {1, 2, 3, 4})])
def test_horizon_and_max_turns(horizon, max_turns, expected):
    env = make(horizon=horizon, max_turns=max_turns)
    lengths = set()
    for seed in range(40):
        env.reset(seed=seed)
        lengths.add(len(run(env, ["Is it a cat?"] * 10)))  # a wrong (or right) guess keeps the dialogue going
        assert env.unwrapped.get_state().done
    if expected == {1, 2, 3, 4}:
        assert lengths <= expected and len(lengths) >= 3  # uniform in 1..H_max (a right guess may end early)
    else:
        assert max(lengths) == max(expected)
    assert env.observation_space["turn"].n == max_turns + 1


def test_per_turn_rewards_sum_to_terminal_score():
    for seed in range(20):
        actions = ScriptedQuestioner(GuessItemTask(), "demonstrator", seed=seed)
        terminal, per_turn = make(reward_mode="terminal"), make(reward_mode="per_turn")
        obs_t, _ = terminal.reset(seed=seed)
        per_turn.reset(seed=seed)
        done, rt, rp = False, [], []
        while not done:
            a = actions.act([obs_t])[0]
            obs_t, r1, term, trunc, info = terminal.step(a)
            _, r2, *_ = per_turn.step(a)
            rt.append(r1)
            rp.append(r2)
            done = term or trunc
        assert rt[:-1] == [0.0] * (len(rt) - 1)
        assert math.isclose(sum(rp), rt[-1], abs_tol=1e-12) and rt[-1] == info["score"] == info["scores"][-1]


def test_max_message_chars():
    env = make(max_message_chars=40, horizon="fixed")
    assert env.action_space.max_length == 40
    env.reset(seed=0)
    env.step("Is it a mammal? " + "x" * 24)  # exactly 40 characters
    with pytest.raises(ValueError, match="max_message_chars=40"):
        env.step("Is it a mammal? " + "x" * 25)


# ---------------------------------------------------------------------------- branching
def test_branching_restores_exactly_and_leaves_the_saved_state_alone():
    env = make(horizon="fixed", max_turns=5, task_kwargs={"noise": 0.3})
    env.reset(seed=7)
    env.step("Is it a mammal?")
    saved = env.unwrapped.get_state()
    snapshot = saved.to_dict()
    branch_a = ["Does it live in water?", "Is it bigger than a person?", "Does it hunt other animals?", "Is it a whale?"]
    branch_b = ["Can it fly?", "Is it kept as a pet?", "Can it climb trees?", "Is it a cat?"]

    first = run(env, branch_a)
    env.reset(options={"state": saved})
    assert env.unwrapped.get_state().to_dict() == snapshot
    second = run(env, branch_a)
    assert [(o["messages"], r, te, tr, i) for o, r, te, tr, i in first] == \
           [(o["messages"], r, te, tr, i) for o, r, te, tr, i in second]

    env.reset(options={"state": saved.to_dict()})  # the dict form restores too
    third = run(env, branch_b)
    said = [m["content"] for m in third[-1][0]["messages"] if m["role"] == "assistant"]
    assert said == ["Is it a mammal?"] + branch_b[:len(third)]
    assert third[0][0]["messages"][:3] == first[0][0]["messages"][:3]  # shared prefix, then different branches
    assert saved.to_dict() == snapshot  # stepping restored copies never touched the saved state


def test_get_state_is_a_copy():
    env = make(horizon="fixed")
    env.reset(seed=0)
    s = env.unwrapped.get_state()
    env.step("Is it a mammal?")
    assert s.turn == 0 and len(s.messages) == 1 and s.memory["facts"] == []


def test_noisy_answers_are_reproducible_after_restore():
    answers_differ = 0
    for seed in range(10):
        env = make(horizon="fixed", max_turns=8, task_kwargs={"noise": 0.4, "phrasing": "fixed"})
        env.reset(seed=seed)
        saved = env.unwrapped.get_state()
        a = [o["messages"][-1]["content"] for o, *_ in run(env, ["Is it a mammal?"] * 7)]
        env.reset(options={"state": saved})
        b = [o["messages"][-1]["content"] for o, *_ in run(env, ["Is it a mammal?"] * 7)]
        assert a == b
        answers_differ += len(set(x.replace(f" {FINAL}", "") for x in a)) > 1
    assert answers_differ >= 5  # the noise is real: the same question gets different answers


def test_reset_from_prefix_rebuilds_memory():
    env = make(reward_mode="per_turn")
    task = env.unwrapped.task
    prefix = [{"role": "user", "content": task.opening(4)}, {"role": "assistant", "content": "Is it a mammal?"},
              {"role": "user", "content": "Yes."}]
    obs, info = env.reset(seed=0, options={"prefix": prefix, "goal": "whale", "horizon": 4})
    assert list(obs["messages"]) == prefix and obs["turn"] == 1 and info["horizon"] == 4
    assert env.unwrapped.get_state().memory["facts"] == [["attr", "mammal", True]]
    obs, r, term, trunc, info = env.step("Does it live in water?")
    assert info["turn"] == 2 and info["score"] == 0.5  # mammal & water: whale or otter
    with pytest.raises(ValueError, match="ends with a user message"):
        env.reset(options={"prefix": prefix[:2]})


# ---------------------------------------------------------------------------- bad input (issue item 9)
def _state(env):
    return env.unwrapped.get_state().to_dict()


def test_non_str_and_over_long_actions():
    env = make(horizon="fixed", max_message_chars=100)
    env.reset(seed=0)
    before = _state(env)
    with pytest.raises(TypeError, match="as a str.*decode token ids"):
        env.step([1, 2, 3])
    with pytest.raises(ValueError, match="longer than max_message_chars=100"):
        env.step("a" * 101)
    assert _state(env) == before


def test_empty_message_gets_the_defined_reply():
    env = make(horizon="fixed")
    env.reset(seed=0)
    obs, r, term, trunc, info = env.step("")
    assert obs["messages"][-1] == {"role": "user", "content": UNCLEAR} and not (term or trunc)
    assert info["score"] == 1 / 8  # nothing learnt


def test_step_after_episode_end():
    env = make(horizon=1)
    env.reset(seed=0)
    *_, term, trunc, _ = env.step("Is it a cat?")
    assert term
    before = _state(env)
    with pytest.raises(EnvError, match="reset"):
        env.unwrapped.step("Is it a dog?")
    assert _state(env) == before


@pytest.mark.parametrize("kw,known", [({"task": "twenty-questions"}, "guess-item-v0"),
                                      ({"user": "llama-user"}, "scripted"), ({"judge": "armo"}, "rule")])
def test_unknown_names_list_known_ones(kw, known):
    with pytest.raises(KeyError, match=f"unknown .*known: .*{known}"):
        make(**kw)


class FlakyUser:
    """The task's scripted user, except that the next ``fail`` calls raise or misbehave."""

    def __init__(self, mode, fail=0):
        self.inner, self.mode, self.fail, self.calls = GuessItemTask(noise=0.3).make_scripted_user(), mode, fail, 0

    def reply(self, states):
        self.calls += 1
        if self.fail > 0:
            self.fail -= 1
            out = self.inner.reply(states)  # mutates memory and random state first, as a real simulator might
            if self.mode == "raise":
                raise ConnectionError("simulated server down")
            return out + out  # wrong count
        return self.inner.reply(states)


class FlakyJudge:
    def __init__(self, mode):
        self.inner, self.mode, self.fail = GuessItemTask(noise=0.3).make_rule_judge(), mode, 0

    def score(self, states):
        if self.fail > 0:
            self.fail -= 1
            if self.mode == "raise":
                raise TimeoutError("judge timed out")
            return [JudgeScore(float("nan")) for _ in states]
        return self.inner.score(states)


@pytest.mark.parametrize("component,mode,error,match", [
    ("user", "raise", UserSimulatorError, "failed: ConnectionError.*unchanged"),
    ("user", "count", UserSimulatorError, "returned 2 replies for 1 dialogues"),
    ("judge", "raise", JudgeError, "failed: TimeoutError.*unchanged"),
    ("judge", "nan", JudgeError, "returned nan.*finite"),
])
def test_failing_components_raise_clearly_and_roll_back(component, mode, error, match):
    kwargs = {"task_kwargs": {"noise": 0.3}, "horizon": "fixed"}
    flaky = FlakyUser(mode) if component == "user" else FlakyJudge(mode)
    env = make(**kwargs, **{component: flaky})
    reference = make(**kwargs)
    env.reset(seed=3)
    reference.reset(seed=3)
    run(env, ["Is it a mammal?"])
    run(reference, ["Is it a mammal?"])
    before = _state(env)
    flaky.fail = 1
    with pytest.raises(error, match=match):
        env.step("Does it live in water?")
    assert _state(env) == before
    # a retry goes exactly as if nothing had failed
    got = run(env, ["Does it live in water?", "Can it fly?", "Is it an otter?"])
    want = run(reference, ["Does it live in water?", "Can it fly?", "Is it an otter?"])
    assert [(o["messages"], r, i) for o, r, _, _, i in got] == [(o["messages"], r, i) for o, r, _, _, i in want]
    assert _state(env) == _state(reference)


def test_user_simulator_returning_wrong_type():
    class StrUser:
        def reply(self, states):
            return ["Yes." for _ in states]

    env = make(user=StrUser(), horizon="fixed")
    env.reset(seed=0)
    before = _state(env)
    with pytest.raises(UserSimulatorError, match="UserTurn"):
        env.step("Is it a mammal?")
    assert _state(env) == before


def test_seeded_resets_are_reproducible():
    env = make()
    a = [env.reset(seed=s)[0]["messages"][0]["content"] for s in range(10)]
    b = [env.reset(seed=s)[0]["messages"][0]["content"] for s in range(10)]
    goals = set()
    for s in range(30):
        env.reset(seed=s)
        goals.add(env.unwrapped.get_state().goal)
    assert a == b and len(goals) >= 6 and np.all([isinstance(x, str) for x in a])


# ---------------------------------------------------------------------------- external user replies, checked
def test_external_user_replies_are_checked_and_errors_say_which_dialogue():
    from refuel_env.core import DialogueMachine
    from refuel_env.types import UserTurn

    m = DialogueMachine(max_turns=3, horizon="fixed", max_message_chars=40)
    one, two = [m.new_state(0)], m.new_states([1, 2])
    ok = m.validate_user_replies(two, ["Yes.", None])
    assert isinstance(ok[0], UserTurn) and ok[0].content == "Yes." and ok[1] is None
    assert m.validate_user_replies(one, ["x" * 40])[0].content == "x" * 40  # exactly the limit is allowed
    with pytest.raises(ValueError, match=r"41 characters .* max_message_chars=40$|max_message_chars=40"):
        m.validate_user_replies(one, ["x" * 41])
    with pytest.raises(TypeError, match=r"user_replies must be a list of\s+replies"):
        m.validate_user_replies(one, "Yes.")
    with pytest.raises(TypeError, match=r"got int \(dialogue 1\)"):
        m.validate_user_replies(two, ["Yes.", 3])
    with pytest.raises(TypeError) as single:
        m.validate_user_replies(one, [3])
    assert "(dialogue" not in str(single.value)
    with pytest.raises(ValueError, match=r"the user's reply \(dialogue 1\) contains"):
        m.validate_user_replies(two, ["Yes.", "bad \ud800"])
    with pytest.raises(TypeError, match=r"the user's reply has end="):
        m.validate_user_replies(one, [UserTurn("No.", end="yes")])
    with pytest.raises(ValueError, match="no user reply follows"):
        m.validate_user_replies([m.new_state(3, {"horizon": 1})], ["Yes."])


def test_assistant_messages_up_to_the_limit_pass_and_errors_say_which_dialogue():
    from refuel_env.core import DialogueMachine

    m = DialogueMachine(max_turns=3, horizon="fixed", max_message_chars=20)
    assert m.validate([m.new_state(0)], ["x" * 20]) == ["x" * 20]  # exactly the limit
    with pytest.raises(ValueError) as one:
        m.validate([m.new_state(0)], ["x" * 21])
    assert "(dialogue" not in str(one.value) and "max_message_chars=20;" in str(one.value)
    assert m.validate([m.new_state(0)], ["\u00e9" * 20]) == ["\u00e9" * 20]  # not ASCII: the slow path, same limit
    with pytest.raises(ValueError, match=r"max_message_chars=20 \(dialogue 1\)"):
        m.validate(m.new_states([0, 1]), ["Is it big?", "x" * 21])
    with pytest.raises(ValueError, match=r"the assistant's message \(dialogue 1\) contains"):
        m.validate(m.new_states([0, 1]), ["Is it big?", "bad \ud800"])
