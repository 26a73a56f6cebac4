"""The state machine's constructor contract: its defaults, how it builds its user and judge, the limits it
accepts and the words of its refusals (mutation testing of ``refuel_env/core.py`` found these unpinned)."""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest

import refuel_env  # noqa: F401
from refuel_env.core import (
    DialogueMachine,
    JudgeError,
    UserSimulatorError,
    build_component,
    machine_of,
)
from refuel_env.registry import JUDGES, USERS
from refuel_env.tasks.guess_item import GuessItemTask
from refuel_env.tasks.guess_item_rules import GuessItemJudge, GuessItemUser
from refuel_env.tasks.open_chat import OpenChatTask
from refuel_env.types import JudgeScore, UserTurn
from refuel_env.validation import MAX_CHARS, MAX_TURNS


def test_defaults_are_the_documented_ones():
    m = DialogueMachine()
    assert (m.max_message_chars, m.max_total_chars) == (1024, 16384)
    assert (m.reward_mode, m.horizon, m.max_turns) == ("terminal", "uniform", 4)
    assert isinstance(m.user, GuessItemUser) and isinstance(m.judge, GuessItemJudge)
    assert m.user.task is m.task and m.judge.task is m.task


@pytest.mark.parametrize("key", ["task_kwargs", "user_kwargs", "judge_kwargs"])
def test_keyword_dicts_are_refused_by_name(key):
    with pytest.raises(TypeError, match=rf"^{key} must be a dict or None, got"):
        DialogueMachine(**{key: "n_items=8"})


def test_task_kwargs_refusal_says_what_to_pass():
    with pytest.raises(TypeError, match="pass the task family's keyword arguments as a dict"):
        DialogueMachine(task_kwargs=[("n_items", 8)])


def test_limits_at_their_bounds():
    assert DialogueMachine(max_turns=MAX_TURNS).max_turns == MAX_TURNS
    assert DialogueMachine(max_turns=1).max_turns == 1
    for bad in (0, MAX_TURNS + 1):
        with pytest.raises(ValueError, match=rf"^max_turns must be an int in 1\.\.{MAX_TURNS}, got {bad}$"):
            DialogueMachine(max_turns=bad)
    m = DialogueMachine(max_message_chars=MAX_CHARS, max_total_chars=MAX_CHARS)
    assert (m.max_message_chars, m.max_total_chars) == (MAX_CHARS, MAX_CHARS)
    assert DialogueMachine(max_message_chars=1, max_total_chars=1).max_total_chars == 1
    with pytest.raises(ValueError, match=r"^max_message_chars must be an int in 1\.\."):
        DialogueMachine(max_message_chars=0)
    with pytest.raises(ValueError, match=r"need 1 <= max_message_chars <= max_total_chars$"):
        DialogueMachine(max_message_chars=10, max_total_chars=9)
    with pytest.raises(ValueError, match=r"^max_total_chars must be an int in 10\.\."):
        DialogueMachine(max_message_chars=10, max_total_chars=MAX_CHARS + 1)


def test_horizon_ints_within_the_task_horizon():
    assert DialogueMachine(max_turns=3, horizon=3).horizon == 3
    assert DialogueMachine(max_turns=3, horizon=1).horizon == 1
    for bad in (0, 4, True, 2.0, "uniformly"):
        with pytest.raises(ValueError, match=r"^horizon must be 'uniform', 'fixed' or an int in 1\.\.3, got"):
            DialogueMachine(max_turns=3, horizon=bad)


def test_a_task_object_and_a_different_max_turns_are_refused():
    task = DialogueMachine(max_turns=3).task
    assert DialogueMachine(task=task, max_turns=3).task is task
    with pytest.raises(ValueError, match="^max_turns=4 disagrees with the task object's max_turns=3$"):
        DialogueMachine(task=task, max_turns=4)


def test_a_registered_component_gets_the_task_and_its_kwargs():
    seen = {}

    class Echo:
        def __init__(self, task, **kwargs):
            seen.update(task=task, kwargs=kwargs)

        def reply(self, states):
            return []

    USERS.register("test-contract-echo")(Echo)
    try:
        m = DialogueMachine(user="test-contract-echo", user_kwargs={"tone": "dry"})
    finally:
        USERS._entries.pop("test-contract-echo")
    assert isinstance(m.user, Echo) and seen == {"task": m.task, "kwargs": {"tone": "dry"}}


@pytest.mark.parametrize("kind,registry,own", [("user", USERS, "scripted"), ("judge", JUDGES, "rule")])
def test_an_unknown_component_name_lists_the_tasks_own(kind, registry, own):
    task = DialogueMachine().task
    with pytest.raises(KeyError, match=rf"unknown {kind} 'nope'; known: {own}\b.*\('{own}' is the task's own\)"):
        build_component(registry, "nope", task, kind)
    method = "reply(states)" if kind == "user" else "score(states)"
    with pytest.raises(TypeError, match=rf"^{kind}=3 is neither a registered name nor an object with a {method.replace('(', '[(]').replace(')', '[)]')} method$"):
        build_component(registry, 3, task, kind)


def test_machine_of_finds_the_machine_behind_every_view_and_refuses_the_rest():
    env = gym.make("RefuelDialogue-v0")
    vec = gym.make_vec("RefuelDialogue-v0", num_envs=2)
    assert isinstance(machine_of(env), DialogueMachine) and machine_of(env) is machine_of(env.unwrapped)
    assert isinstance(machine_of(vec), DialogueMachine)
    for other in (object(), None, 3):
        with pytest.raises(TypeError, match="is not a refuel_env environment"):
            machine_of(other)


def test_a_registered_judge_gets_its_kwargs_too():
    seen = {}

    class Strict:
        def __init__(self, task, **kwargs):
            seen.update(kwargs)

        def score(self, states):
            return []

    JUDGES.register("test-contract-strict")(Strict)
    try:
        DialogueMachine(judge="test-contract-strict", judge_kwargs={"level": 2})
    finally:
        JUDGES._entries.pop("test-contract-strict")
    assert seen == {"level": 2}


def test_a_task_object_with_a_bad_horizon_is_refused_by_name():
    class Task:
        task_id = "t"

        def __init__(self, max_turns):
            self.max_turns = max_turns

    assert DialogueMachine(task=Task(MAX_TURNS), user=GuessItemUser, judge=GuessItemJudge).max_turns == MAX_TURNS
    for bad in (0, MAX_TURNS + 1):
        with pytest.raises(ValueError, match=rf"^the task's max_turns must be an int in 1\.\.{MAX_TURNS}, got {bad}$"):
            DialogueMachine(task=Task(bad))


def test_reward_mode_and_message_limit_refusals_name_the_key():
    with pytest.raises(ValueError, match="^reward_mode must be one of 'terminal', 'per_turn', got 'dense'$"):
        DialogueMachine(reward_mode="dense")
    with pytest.raises(ValueError, match=rf"^max_message_chars must be an int in 1\.\.{MAX_CHARS}, got"):
        DialogueMachine(max_message_chars=MAX_CHARS + 1, max_total_chars=MAX_CHARS)


def test_stats_start_at_zero_and_add_up_every_call():
    import time

    m = DialogueMachine(max_turns=3, horizon=3)
    assert m.stats == {"user_calls": 0, "judge_calls": 0, "user_seconds": 0.0, "judge_seconds": 0.0, "steps": 0}
    slow, user = [0.05], m.user

    class Slow:
        def reply(self, states):
            time.sleep(slow.pop() if slow else 0.0)
            return user.reply(states)

    m.user = Slow()
    states = m.new_states([0])
    m.step(states, ["Is it a mammal?"])
    m.step(states, ["Is it a bird?"])
    assert m.stats["user_calls"] == 2 and m.stats["user_seconds"] >= 0.05  # summed, not the last call's


def test_a_failing_component_is_named_in_the_error():
    m = DialogueMachine(max_turns=3, horizon=3)

    class Broken:
        def reply(self, states):
            raise RuntimeError("socket closed")

    m.user = Broken()
    with pytest.raises(Exception, match=r"^user Broken failed: RuntimeError\('socket closed'\)"):
        m.step(m.new_states([0]), ["Is it a mammal?"])


def test_branch_copies_k_states_two_by_default():
    m = DialogueMachine()
    state = m.new_states([0])[0]
    assert len(m.branch(state)) == 2 and len(m.branch(state, 3)) == 3 and m.branch(state, 0) == []
    with pytest.raises(ValueError, match=r"^k must be an int >= 0, got -1$"):
        m.branch(state, -1)


# ------------------------------------------------------------------ the words and the limits of DialogueMachine's steps
# (mutation testing of refuel_env/core.py found these unpinned: each test says what it pins)

def _exact(text):
    return f"^{re.escape(text)}$"


def test_task_kwargs_refusal_is_the_whole_advice():
    with pytest.raises(TypeError, match=_exact("task_kwargs must be a dict or None, got list; pass the task family's "
                                               "keyword arguments as a dict")):
        DialogueMachine(task_kwargs=[("n_items", 8)])


def test_stats_count_steps_by_one_and_time_each_call_by_its_duration():
    m = DialogueMachine(max_turns=3, horizon=3)
    states = m.new_states([0, 1])
    m.step(states, ["Is it a mammal?"] * 2)
    m.step(states, ["Is it a bird?"] * 2)
    assert m.stats["steps"] == 2 and m.stats["user_calls"] == 2 and m.stats["judge_calls"] == 2
    for kind in ("user", "judge"):
        assert 0.0 < m.stats[f"{kind}_seconds"] < 5.0  # elapsed time, not perf_counter() + t0


def test_a_failing_user_gets_the_advice_to_retry():
    class Broken:
        def reply(self, states):
            raise RuntimeError("socket closed")

    m = DialogueMachine(max_turns=3, horizon=3, user=Broken())
    with pytest.raises(UserSimulatorError, match=_exact("user Broken failed: RuntimeError('socket closed'). The env "
                                                        "state is unchanged; retry step() with the same action, or fix "
                                                        "the simulator")):
        m.step(m.new_states([0]), ["Is it a mammal?"])


def test_a_user_returning_a_non_list_is_named_by_its_repr():
    class Seven:
        def reply(self, states):
            return 7

    m = DialogueMachine(max_turns=3, horizon=3, user=Seven())
    with pytest.raises(UserSimulatorError, match=_exact("user Seven returned 7 replies for 1 dialogues; reply() must "
                                                        "return one UserTurn each (the step was rolled back)")):
        m.step(m.new_states([0]), ["Is it a mammal?"])


def test_a_failing_judge_gets_the_advice_to_retry():
    class Flaky:
        def score(self, states):
            raise RuntimeError("timeout")

    m = DialogueMachine(max_turns=3, horizon=3, judge=Flaky())
    with pytest.raises(JudgeError, match=_exact("judge Flaky failed: RuntimeError('timeout'). The env state is "
                                                "unchanged; retry step() or fix the judge")):
        m.step(m.new_states([0]), ["Is it a mammal?"])


def test_a_judge_returning_too_few_scores_is_told_what_to_return():
    class Short:
        def score(self, states):
            return []

    m = DialogueMachine(max_turns=3, horizon=3, judge=Short())
    with pytest.raises(JudgeError, match=_exact("judge Short returned 0 scores for 2 dialogues; score() must return "
                                                "one JudgeScore each (the step was rolled back)")):
        m.step(m.new_states([0, 1]), ["Is it a mammal?"] * 2)


@pytest.mark.parametrize("part", ["provenance", "cost"])
def test_a_judge_score_whose_part_is_not_a_dict_is_refused(part):
    class Odd:
        def score(self, states):
            return [JudgeScore(0.5, **{part: []}) for _ in states]

    m = DialogueMachine(max_turns=3, horizon=3, judge=Odd())
    states = m.new_states([0])
    with pytest.raises(JudgeError, match=_exact(f"judge Odd returned a JudgeScore whose {part} is a list for dialogue "
                                                "0; it must be a dict (the step was rolled back)")):
        m.step(states, ["Is it a mammal?"])
    assert states[0].turn == 0 and len(states[0].messages) == 1


def test_a_non_finite_score_names_the_judge_and_the_dialogue():
    class NanJudge:
        def score(self, states):
            return [JudgeScore(0.5), JudgeScore(float("nan"))]

    m = DialogueMachine(max_turns=3, horizon=3, judge=NanJudge())
    with pytest.raises(JudgeError, match=_exact("judge NanJudge returned nan for dialogue 1; a judge must return a "
                                                "finite JudgeScore (the step was rolled back)")):
        m.step(m.new_states([0, 1]), ["Is it a mammal?"] * 2)


@pytest.mark.parametrize("content,words", [
    (3, "has content of type int; a UserTurn's content must be a str"),
    ("\ud800", ("contains a lone surrogate '\\ud800' (U+D800) at position 0, which cannot be encoded as UTF-8; "
                "clean the text first")),
])
def test_a_bad_simulator_reply_is_a_user_simulator_error_naming_it_and_the_dialogue(content, words):
    m = DialogueMachine(max_turns=3, horizon=3)
    scripted = m.user

    class Garbler:
        def reply(self, states):
            return [scripted.reply(states)[0], UserTurn(content)]

    m.user = Garbler()
    states = m.new_states([0, 1])
    with pytest.raises(UserSimulatorError, match=_exact(f"user simulator Garbler's reply to dialogue 1 (the step was "
                                                        f"rolled back) {words}")):
        m.step(states, ["Is it a mammal?"] * 2)
    assert [s.turn for s in states] == [0, 0]


def test_an_in_place_memory_change_of_a_user_without_replaces_memory_is_rolled_back():
    class InPlaceUser:  # does not declare replaces_memory; the task's rule judge does
        def reply(self, states):
            for s in states:
                s.memory["facts"].append(["attr", "mammal", True])
                s.memory["solved"] = True
            raise RuntimeError("backend down")

    m = DialogueMachine(max_turns=3, horizon=3, user=InPlaceUser())
    states = m.new_states([0, 1])
    before = [s.to_dict() for s in states]
    with pytest.raises(UserSimulatorError):
        m.step(states, ["Is it a mammal?"] * 2)
    assert [s.to_dict() for s in states] == before
    assert states[0].memory == {"facts": [], "solved": False}


def test_an_in_place_memory_change_of_a_judge_without_replaces_memory_is_rolled_back():
    class InPlaceJudge:  # does not declare replaces_memory; the scripted user does
        def score(self, states):
            for s in states:
                s.memory["facts"].append(["guess", "cat", True])
            return []  # the wrong count: the step fails after the change

    m = DialogueMachine(max_turns=3, horizon=1, judge=InPlaceJudge())  # H = 1: no user reply
    states = m.new_states([0])
    before = states[0].to_dict()
    with pytest.raises(JudgeError):
        m.step(states, ["Is it a cat?"])
    assert states[0].to_dict() == before and states[0].memory == {"facts": [], "solved": False}


def test_a_prefix_longer_than_the_sampled_horizon_gets_one_more_turn():
    prefix = [{"role": "user", "content": "Guess the animal."}, {"role": "assistant", "content": "Is it a mammal?"},
              {"role": "user", "content": "Yes."}, {"role": "assistant", "content": "Is it a bird?"},
              {"role": "user", "content": "No."}]
    m = DialogueMachine(max_turns=4, horizon=1)  # every sampled H is 1, less than the prefix's 2 turns
    s = m.new_states([0], {"prefix": prefix})[0]
    assert (s.turn, s.horizon) == (2, 3)
    s = m.new_states([0], {"prefix": prefix, "horizon": 4})[0]
    assert (s.turn, s.horizon) == (2, 4)
    s = DialogueMachine(max_turns=4, horizon="fixed").new_states([0], {"prefix": prefix})[0]
    assert (s.turn, s.horizon) == (2, 4)  # a sampled H already beyond the prefix is kept


class GoalMemoryTask(GuessItemTask):
    """The guess-item task, with a memory_from_prefix that keeps the goal it is given (the protocol passes it)."""

    def memory_from_prefix(self, messages, goal=None):
        return {**super().memory_from_prefix(messages, goal), "goal": goal}


def test_memory_from_a_prefix_is_built_with_the_goal():
    m = DialogueMachine(task=GoalMemoryTask(max_turns=3), horizon=3)
    prefix = [{"role": "user", "content": "Guess."}, {"role": "assistant", "content": "Is it a mammal?"},
              {"role": "user", "content": "Yes."}]
    s = m.new_states([0], {"prefix": prefix, "goal": "cat"})[0]
    assert s.memory == {"facts": [["attr", "mammal", True]], "solved": False, "goal": "cat"}
    s = m.new_states([5], {"prefix": prefix})[0]
    assert s.memory["goal"] == s.goal and s.goal in m.task.items


def test_an_external_user_reply_rebuilds_the_memory_with_the_goal():
    m = DialogueMachine(task=GoalMemoryTask(max_turns=3), horizon=3)
    states = m.new_states([0, 1], per_dialogue=[{"goal": "cat"}, {"goal": "frog"}])
    m.step(states, ["Is it a mammal?", "Is it a mammal?"], user_replies=["Yes.", None])
    assert states[0].memory == {"facts": [["attr", "mammal", True]], "solved": False, "goal": "cat"}
    assert "goal" not in states[1].memory  # the scripted user answered this one


def test_the_eval_split_reaches_the_task():
    class Quiet:
        replaces_memory = True

        def reply(self, states):
            return [UserTurn("ok") for _ in states]

        def score(self, states):
            return [JudgeScore(0.0) for _ in states]

    task = OpenChatTask(prompts=[f"prompt {i}" for i in range(10)], max_turns=3)
    m = DialogueMachine(task=task, user=Quiet(), judge=Quiet())
    held_out = m.new_states([0, 1, 2], {"split": "eval"})
    assert all(s.goal.startswith("list/eval/") and s.messages[-1]["content"] in task.prompts["eval"] for s in held_out)
    train = m.new_states([0, 1, 2])
    assert all(s.goal.startswith("list/train/") and s.messages[-1]["content"] in task.prompts["train"] for s in train)


def test_a_reply_of_exactly_max_message_chars_is_not_clipped_and_exactly_max_total_chars_not_truncated():
    opening = len(DialogueMachine(max_turns=3, horizon=3).new_states([0])[0].messages[0]["content"])
    action, reply = "Is it a mammal?", "y" * 40
    total = opening + len(action) + len(reply)
    m = DialogueMachine(max_turns=3, horizon=3, max_message_chars=40, max_total_chars=total)
    states = m.new_states([0])
    c = m.step_columns(states, [action], user_replies=[reply])
    assert c.clipped == [False] and c.truncated == [False] and not states[0].done
    assert states[0].messages[-1]["content"] == reply
    m = DialogueMachine(max_turns=3, horizon=3, max_message_chars=40, max_total_chars=total - 1)
    states = m.new_states([0])
    c = m.step_columns(states, [action], user_replies=[reply])
    assert c.truncated == [True] and states[0].done


def test_bad_seeds_are_refused_by_index_with_the_advice():
    m = DialogueMachine()
    with pytest.raises(ValueError, match=_exact("seeds[1] must be an int >= 0, got -1; episode seeds are non-negative "
                                                "ints")):
        m.new_states([0, -1])
    with pytest.raises(TypeError, match=_exact("seeds[1] must be an int, got 1.5 (float); episode seeds are "
                                               "non-negative ints")):
        m.new_states([0, 1.5])
    with pytest.raises(TypeError, match=r"^seeds must be a list of\s+seeds, got int$"):
        m.new_states(3)
    a, b = m.new_states([np.int64(3), np.uint8(0)]), m.new_states([3, 0])
    assert [s.to_dict() for s in a] == [s.to_dict() for s in b]


def test_bad_per_dialogue_options_are_refused_by_index():
    m = DialogueMachine(max_turns=4)
    with pytest.raises(TypeError, match=r"^per_dialogue must be a list of\s+option dicts, got int$"):
        m.new_states([0], per_dialogue=3)
    with pytest.raises(TypeError, match=_exact("per_dialogue[1] must be a dict or None, got str")):
        m.new_states([0, 1], per_dialogue=[{}, "horizon=2"])
    with pytest.raises(ValueError, match=_exact("per_dialogue[1]['horizon'] must be an int in 1..4, got 99; this env's "
                                                "max_turns is 4")):
        m.new_states([0, 1], per_dialogue=[{"horizon": 1}, {"horizon": 99}])
    with pytest.raises(TypeError, match=_exact("options must be a dict or None, got str")):
        m.new_states([0], options="horizon=2", per_dialogue=[{}])


def test_common_options_apply_under_per_dialogue_ones():
    m = DialogueMachine(max_turns=4, horizon="fixed")
    states = m.new_states([0, 1], {"horizon": 2}, per_dialogue=[{}, {"horizon": 3}])
    assert [s.horizon for s in states] == [2, 3]


def test_bad_options_are_refused_as_options():
    m = DialogueMachine(max_turns=4)
    words = _exact("options['horizon'] must be an int in 1..4, got 99; this env's max_turns is 4")
    with pytest.raises(ValueError, match=words):
        m.new_states([0], {"horizon": 99})
    with pytest.raises(ValueError, match=words):
        m.check_options({"horizon": 99})


def test_actions_not_in_a_list_are_refused_by_name_and_an_array_is_taken():
    m = DialogueMachine(max_turns=3, horizon=3)
    states = m.new_states([0])
    with pytest.raises(TypeError, match=r"^actions must be a list of\s+actions, got str 'Is it a mammal\?'$"):
        m.step(states, "Is it a mammal?")
    assert states[0].turn == 0
    m.step(states, np.array(["Is it a mammal?"]))
    assert states[0].messages[1] == {"role": "assistant", "content": "Is it a mammal?"}
    assert type(states[0].messages[1]["content"]) is str
