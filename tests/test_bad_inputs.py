"""Bad input everywhere is refused with an error that says what to do, and changes nothing (issue #12, items 1-2).

The matrix itself is ``tests/bad_input_matrix.py`` (single, vector and PettingZoo envs, the machine, reset options,
saved states, actions, constructor arguments, what users and judges return): each case must raise a clear error,
leave the env, its random states and numpy's global random state as they were, and let the next valid calls go
exactly as in a twin env that never saw the bad call.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import refuel_env
from refuel_env import DialogueMachine, DialogueState
from refuel_env.protocols import Task
from refuel_env.tasks.guess_item import GuessItemTask
from refuel_env.tasks.open_chat import OpenChatTask

from bad_input_matrix import all_cases, run

CASES = all_cases()


@pytest.mark.filterwarnings("ignore:.*render_mode")  # gymnasium warns before the env refuses render_mode="human"
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_clearly_and_changes_nothing(case):
    out = run(case)
    assert not out["accepted"], f"{case.name}: accepted silently"
    assert out["bare"] is None, f"{case.name}: {out['bare']}"
    assert out["corrupted"] is None, f"{case.name}: {out['corrupted']} (error: {out['error']})"


def test_the_matrix_is_broad():
    kinds = {c.kind for c in CASES}
    assert kinds == {"single", "vector", "aec", "machine", "make"} and len(CASES) >= 250


# ---------------------------------------------------------------------------------------------- what is accepted
class Sub(str):
    pass


@pytest.mark.parametrize("text", [np.str_("Is it a mammal?"), Sub("Is it a mammal?")])
def test_str_subclasses_are_stored_as_plain_str(text):
    env = gym.make("RefuelDialogue-v0", horizon="fixed")
    env.reset(seed=0)
    env.step(text)
    assert type(env.unwrapped.state.messages[1]["content"]) is str
    vec = gym.make_vec("RefuelDialogue-v0", num_envs=2, horizon="fixed")
    vec.reset(seed=0)
    vec.step(np.array([text, text]))  # an array of str is a sequence of actions
    assert all(type(s.messages[1]["content"]) is str for s in vec.unwrapped.states)
    env.reset(options={"prefix": [{"role": np.str_("user"), "content": text}], "goal": np.str_("cat")})
    s = env.unwrapped.state
    assert type(s.messages[0]["content"]) is str and type(s.messages[0]["role"]) is str and type(s.goal) is str


def test_valid_options_keep_their_meaning():
    env = gym.make("RefuelDialogue-v0", max_turns=4)
    _, info = env.reset(seed=0, options={"horizon": None})  # None: not given, sampled
    assert 1 <= info["horizon"] <= 4
    _, info = env.reset(seed=0, options={"horizon": np.int64(3), "split": "eval"})
    assert info["horizon"] == 3
    # the vector env: restored states now, the other options for the episodes of later autoresets
    state = env.unwrapped.get_state()
    vec = gym.make_vec("RefuelDialogue-v0", num_envs=2, max_turns=4)
    _, info = vec.reset(options={"states": [state] * 2, "horizon": 1})
    assert info["horizon"].tolist() == [3, 3] and vec.unwrapped._options["horizon"] == 1


def test_a_refused_state_does_not_touch_numpys_global_random_state():
    before = np.random.get_state()[1].copy()
    d = gym.make("RefuelDialogue-v0").unwrapped
    d.reset(seed=0)
    bad = d.get_state().to_dict()
    bad["user_rng"] = {**bad["user_rng"], "bit_generator": "seed"}
    with pytest.raises(ValueError, match="PCG64"):
        DialogueState.from_dict(bad)
    assert np.array_equal(np.random.get_state()[1], before)


def test_goals_are_checked_by_the_task():
    assert isinstance(GuessItemTask(), Task) and "check_goal" in dir(Task) and "check_memory" in dir(Task)
    task = GuessItemTask(n_items=4)
    assert task.check_goal(np.str_("cat")) == "cat" and type(task.check_goal(np.str_("cat"))) is str
    with pytest.raises(ValueError, match="whale, horse, otter, cat"):
        task.check_goal("dog")  # in the catalogue, but not among this task's 4 items
    chat = OpenChatTask.__new__(OpenChatTask)  # no prompts or models needed to check a goal
    assert chat.check_goal("anything at all") == "anything at all"
    with pytest.raises(TypeError, match="str"):
        chat.check_goal(3)


def test_a_task_object_without_checks_accepts_any_goal():
    class Minimal:
        task_id, max_turns = "minimal-v0", 2

        def new_episode(self, rng, horizon, split="train"):
            return [{"role": "user", "content": "Hi"}], {"any": "goal"}, {}

        def memory_from_prefix(self, messages, goal):
            return {}

    class Echo:
        def reply(self, states):
            return [refuel_env.UserTurn("ok") for _ in states]

    class Zero:
        def score(self, states):
            return [refuel_env.JudgeScore(0.0) for _ in states]

    machine = DialogueMachine(task=Minimal(), user=Echo(), judge=Zero())
    s = machine.new_state(0, {"goal": [1, 2]})
    assert s.goal == [1, 2] and machine.new_state(0, {"state": s}).goal == [1, 2]
