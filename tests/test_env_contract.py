"""The state machine's constructor contract: its defaults, how it builds its user and judge, the limits it
accepts and the words of its refusals (mutation testing of ``refuel_env/core.py`` found these unpinned)."""

from __future__ import annotations

import gymnasium as gym
import pytest

import refuel_env  # noqa: F401
from refuel_env.core import DialogueMachine, build_component, machine_of
from refuel_env.registry import JUDGES, USERS
from refuel_env.tasks.guess_item_rules import GuessItemJudge, GuessItemUser
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
