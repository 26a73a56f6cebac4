"""The PettingZoo view (refuel_env.multiagent): API tests, the simulator in the user seat, a scripted "human" user."""

from __future__ import annotations

import warnings

import gymnasium as gym
import pytest
from pettingzoo.test import api_test, parallel_api_test
from pettingzoo.utils.conversions import aec_to_parallel

import refuel_env  # noqa: F401  (registers RefuelDialogue-v0)
from refuel_env import multiagent
from refuel_env.multiagent import END_MARKER, SimulatedUser
from refuel_env.tasks.guess_item_players import ScriptedQuestioner

# what PettingZoo's checks say about any env with text spaces and named (not numbered) agents
EXPECTED_WARNINGS = (
    "Observation is not a NumPy array",
    "Observation space for each agent probably should be",
    "Action space for each agent probably should be",
    "We recommend agents to be named in the format",
    "Agents have different observation space sizes",  # the user also sees its hidden goal
    "ignoring unknown reset option(s) 'options'",  # api_test resets with options={"options": 1}
)


def _unexpected(records) -> list[str]:
    return [str(w.message) for w in records if not str(w.message).startswith(EXPECTED_WARNINGS)]


def test_api_test_passes():
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        api_test(multiagent.env(task_kwargs={"noise": 0.1}), num_cycles=100)
    assert _unexpected(rec) == []


def test_parallel_api_test_passes_and_plain_conversion_is_refused():
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        parallel_api_test(multiagent.parallel_env(), num_cycles=100)
    assert _unexpected(rec) == []
    # the standard AEC->parallel conversion needs simultaneous moves, which a dialogue does not have
    with pytest.raises(AssertionError, match="is_parallelizable"):
        aec_to_parallel(multiagent.env())


def _play_gym(seed, kwargs, questioner_seed):
    env = gym.make("RefuelDialogue-v0", **kwargs)
    q = ScriptedQuestioner(env.unwrapped.task, "demonstrator", seed=questioner_seed)
    obs, _ = env.reset(seed=seed)
    rewards, texts, infos, done = [], [], [], False
    while not done:
        obs, r, term, trunc, info = env.step(q.act([obs])[0])
        rewards.append(r)
        infos.append(info)
        done = term or trunc
    texts = [m["content"] for m in obs["messages"]]
    return rewards, texts, infos, env.unwrapped.get_state().to_dict()


def _play_aec(seed, kwargs, questioner_seed):
    env = multiagent.env(**kwargs)
    env.reset(seed=seed)
    q = ScriptedQuestioner(env.unwrapped.task, "demonstrator", seed=questioner_seed)
    user = SimulatedUser(env)
    rewards, infos = [], []
    for agent in env.agent_iter():
        obs, reward, term, trunc, info = env.last()
        if term or trunc:
            if agent == "assistant":
                final_state = env.unwrapped.get_state().to_dict()
                texts = [m["content"] for m in obs["messages"]]
            env.step(None)
            continue
        turn = env.unwrapped.dialogue.turn
        env.step(q.act([obs])[0] if agent == "assistant" else user(obs))
        if env.unwrapped.dialogue.turn > turn:  # an exchange went through the judge
            rewards.append(env.rewards["assistant"])
            infos.append(env.infos["assistant"])
    return rewards, texts, infos, final_state


@pytest.mark.parametrize("kwargs", [
    {"horizon": "fixed", "task_kwargs": {"noise": 0.2}},
    {"horizon": "uniform", "reward_mode": "per_turn", "task_kwargs": {"noise": 0.1, "n_items": 12}, "max_turns": 5},
])
def test_simulator_in_user_seat_reproduces_gym_env(kwargs):
    n_diff_lengths = set()
    for seed in range(30):
        g = _play_gym(seed, kwargs, questioner_seed=seed)
        a = _play_aec(seed, kwargs, questioner_seed=seed)
        assert a[0] == g[0], f"rewards differ at seed {seed}"
        assert a[1] == g[1], f"texts differ at seed {seed}"
        assert a[2] == g[2], f"infos differ at seed {seed}"
        assert a[3] == g[3], f"final states differ at seed {seed}"
        n_diff_lengths.add(len(g[0]))
    assert len(n_diff_lengths) > 1 or kwargs["horizon"] == "fixed"  # the comparison covers several horizons


def test_scripted_human_user_updates_memory_and_rewards():
    """A "human" plays the user seat from a list of strings; the judge scores from what the human said."""
    env = multiagent.env(horizon="fixed", reward_mode="per_turn", user_reward="zero")
    env.reset(seed=0, options={"goal": "otter"})
    assistant_says = iter(["Is it a mammal?", "Does it live in water?", "Is it bigger than a person?", "Is it an otter?"])
    human_says = iter(["Yes.", "yes, it does", "No, it is small."])
    assistant_rewards, user_rewards = [], []
    for agent in env.agent_iter():
        obs, reward, term, trunc, info = env.last()
        if term or trunc:
            env.step(None)
            continue
        if agent == "assistant":
            env.step(next(assistant_says))
        else:
            assert obs["goal"] == "otter" and obs["messages"][-1]["role"] == "assistant"
            env.step(next(human_says))
            assistant_rewards.append(env.rewards["assistant"])
            user_rewards.append(env.rewards["user"])
    # mammal=yes keeps 4 of 8 items, water=yes keeps whale/otter, big=no leaves otter: 1/4, 1/2, 1
    assert assistant_rewards == pytest.approx([0.25, 0.25, 0.5])
    assert user_rewards == [0.0, 0.0, 0.0]
    state = env.unwrapped.get_state()
    assert [m["content"] for m in state.messages if m["role"] == "user"][1:] == ["Yes.", "yes, it does", "No, it is small."]
    assert state.memory["facts"] == [["attr", "mammal", True], ["attr", "water", True], ["attr", "big", False]]
    assert state.scores == [0.25, 0.5, 1.0, 1.0] and state.done


def test_user_can_end_dialogue_and_shares_reward():
    env = multiagent.env(horizon="fixed")
    env.reset(seed=1)
    env.step("Is it a mammal?")
    assert env.agent_selection == "user"
    env.step(f"I have to go now. {END_MARKER}")
    assert env.terminations == {"assistant": True, "user": True}
    assert env.infos["assistant"]["ended_by_user"] is True
    assert env.rewards["assistant"] == env.rewards["user"] == 0.25  # terminal reward: best-guess posterior, shared
    state = env.unwrapped.get_state()
    assert state.messages[-1] == {"role": "user", "content": "I have to go now."} and state.ended_by_user
    for _ in env.agent_iter():
        env.step(None)
    assert env.agents == []


def test_bad_actions_raise_and_change_nothing():
    env = multiagent.env(horizon="fixed", max_message_chars=50)
    env.reset(seed=2)
    before = env.unwrapped.get_state().to_dict()
    with pytest.raises(TypeError, match="str"):
        env.step(123)
    with pytest.raises(ValueError, match="max_message_chars"):
        env.step("x" * 51)
    assert env.agent_selection == "assistant" and env.unwrapped.get_state().to_dict() == before
    env.step("Can it fly?")
    with pytest.raises(TypeError, match="str"):
        env.step(["Yes"])
    with pytest.raises(ValueError, match="max_message_chars"):
        env.step("y" * 51)
    assert env.agent_selection == "user" and env.unwrapped.get_state().to_dict() == before
    env.step("No.")
    assert env.unwrapped.get_state().turn == 1


def test_observations_show_pending_message_and_goal_only_to_user():
    env = multiagent.env(horizon="fixed")
    env.reset(seed=3)
    env.step("Is it a pet?")
    u, a = env.observe("user"), env.observe("assistant")
    assert u["messages"][-1] == {"role": "assistant", "content": "Is it a pet?"} and u["turn"] == 1
    assert "goal" in u and "goal" not in a and u["goal"] in env.unwrapped.task.items
    assert env.observation_space("user").contains(u) and env.observation_space("assistant").contains(a)


def test_core_step_mixes_external_replies_and_one_simulator_call():
    """DialogueMachine.step(..., user_replies=[...]): the simulator answers only the dialogues without a reply."""
    from refuel_env import DialogueMachine, UserTurn

    core = DialogueMachine(horizon="fixed")
    inner = core.user
    batches = []

    class Counting:
        def reply(self, states):
            batches.append(len(states))
            return inner.reply(states)

    core.user = Counting()
    states = [core.new_state(i, {"goal": "horse"}) for i in range(3)]
    results = core.step(states, ["Is it a mammal?"] * 3, user_replies=[None, "No.", UserTurn("Bye! [END]", end=True)])
    assert batches == [1]
    assert states[0].messages[-1]["content"].startswith("Yes") and states[0].memory["facts"] == [["attr", "mammal", True]]
    assert states[1].messages[-1]["content"] == "No." and states[1].memory["facts"] == [["attr", "mammal", False]]
    assert results[1].info["score"] == 0.25 and results[0].info["score"] == 0.25
    assert results[2].terminated and states[2].ended_by_user and not results[0].terminated
    before = [s.to_dict() for s in states[:2]]
    with pytest.raises(ValueError, match="1 user replies for 2 dialogues"):
        core.step(states[:2], ["Can it fly?"] * 2, user_replies=[None])
    with pytest.raises(TypeError, match="str, a UserTurn or None"):
        core.step(states[:2], ["Can it fly?"] * 2, user_replies=[None, 3])
    last = core.new_state(9, {"horizon": 1})
    with pytest.raises(ValueError, match="reaches its horizon"):
        core.step([last], ["Is it a cat?"], user_replies=["No."])
    assert [s.to_dict() for s in states[:2]] == before and batches == [1]
