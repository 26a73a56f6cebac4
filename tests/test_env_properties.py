"""Property-based test of the env (issue #12, item 3): random sequences of resets, steps, saves/restores and bad
inputs across the single and the vector env. Invariants:

- a refused call changes nothing: the dialogue(s), every random state, numpy's global one, the observation;
- a restored state replays identically: the same actions after ``reset(options={"state"/"states": ...})`` give
  the same observations, rewards, flags and infos as the first time;
- every observation is in the observation space, and a dialogue's turn never passes its horizon.

Deterministic (``derandomize=True``) and bounded, for the fast test lane: a few seconds.
"""

from __future__ import annotations

import gymnasium as gym
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import refuel_env  # noqa: F401
from refuel_env import EnvError, JudgeError, UserSimulatorError
from refuel_env.tasks.guess_item import GuessItemTask

from env_probe import canon, snapshot

N = 3
TEXTS = ["Is it a mammal?", "Does it live in water?", "Can it fly?", "Is it a cat?", "My guess is whale.", "",
         "Hmm.", "Is it big and can it fly?", "Ist es ein Säugetier? 🐋"]
BAD_OPTIONS = [{"horizon": 0}, {"horizon": 2.7}, {"horizon": True}, {"goal": "lion"}, {"split": "test"},
               {"prefix": [{"role": "user"}]}, {"prefix": "hi"}, {"state": {"turn": 1}}, {"horizn": 2}, "horizon"]
BAD_ACTIONS = [None, 5, b"Is it a cat?", "x" * 300, "Is it a cat\ud800?", ["Is", "it"]]
BAD_SEEDS = [-1, 2.5, "3", True]
KWARGS = {"max_turns": 4, "max_message_chars": 200}


class Flaky:
    """The task's scripted user and rule judge; when ``fail`` is set, the user fails after doing its work (memory
    and random state changed, as a real simulator might leave them) or the judge fails."""

    def __init__(self):
        task = GuessItemTask(noise=0.2)
        self.user, self.judge, self.fail = task.make_scripted_user(), task.make_rule_judge(), None

    def reply(self, states):
        out = self.user.reply(states)
        for s in states:
            s.memory["facts"].append(["attr", "mammal", True])  # in place: the step must copy the memory
        if self.fail == "user":
            raise ConnectionError("user down")
        return out

    def score(self, states):
        if self.fail == "judge":
            raise TimeoutError("judge down")
        return self.judge.score(states)

    def twin(self):
        return {"task": self.user.task, "user": self, "judge": JudgeView(self)}


class JudgeView:
    def __init__(self, flaky):
        self.flaky = flaky

    def score(self, states):
        return self.flaky.score(states)


def play(env, actions, vector=False):
    """Step until the actions run out or (single env) the episode ends; what the env said, comparable with ==."""
    out = []
    for a in actions:
        if vector:
            out.append(canon(env.step([a] * N)))
        else:
            if env.state.done:
                break
            out.append(canon(env.step(a)))
    return out


class EnvMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.flaky_single, self.flaky_vec = Flaky(), Flaky()
        self.single = gym.make("RefuelDialogue-v0", **KWARGS, **self.flaky_single.twin()).unwrapped
        self.vec = gym.make_vec("RefuelDialogue-v0", num_envs=N, **KWARGS, **self.flaky_vec.twin())
        # seeded once, so that every later unseeded reset is deterministic too (hypothesis replays examples)
        self.single_obs, _ = self.single.reset(seed=0)
        self.vec_obs, _ = self.vec.reset(seed=0)

    # ------------------------------------------------------------------ valid calls
    @rule(seed=st.none() | st.integers(0, 2**40), horizon=st.none() | st.integers(1, 4),
          split=st.sampled_from(["train", "eval"]))
    def reset_single(self, seed, horizon, split):
        self.single_obs, _ = self.single.reset(seed=seed, options={"horizon": horizon, "split": split})

    @precondition(lambda self: self.single.state is not None)
    @rule(action=st.sampled_from(TEXTS))
    def step_single(self, action):
        if self.single.state.done:
            before = snapshot("single", self.single)
            try:
                self.single.step(action)
                raise AssertionError("a step after the end was accepted")
            except EnvError:
                pass
            assert snapshot("single", self.single) == before
        else:
            self.single_obs, *_ = self.single.step(action)

    @precondition(lambda self: self.single.state is not None)
    @rule(actions=st.lists(st.sampled_from(TEXTS), min_size=1, max_size=4), as_dict=st.booleans())
    def restore_single_replays(self, actions, as_dict):
        saved = self.single.get_state()
        first = play(self.single, actions)
        self.single.reset(options={"state": saved.to_dict() if as_dict else saved})
        assert play(self.single, actions) == first

    @rule(seed=st.none() | st.integers(0, 2**40) | st.lists(st.integers(0, 2**40), min_size=N, max_size=N))
    def reset_vector(self, seed):
        self.vec_obs, _ = self.vec.reset(seed=seed)

    @precondition(lambda self: self.vec_obs is not None)
    @rule(actions=st.lists(st.sampled_from(TEXTS), min_size=N, max_size=N))
    def step_vector(self, actions):
        self.vec_obs, *_ = self.vec.step(actions)

    @precondition(lambda self: self.vec_obs is not None)
    @rule(actions=st.lists(st.sampled_from(TEXTS), min_size=1, max_size=3))
    def restore_vector_replays(self, actions):
        saved = self.vec.unwrapped.get_states()
        rng = self.vec.unwrapped._rng.bit_generator.state
        first = play(self.vec, actions, vector=True)
        self.vec.unwrapped._rng.bit_generator.state = rng  # autoresets draw from it: replay them too
        self.vec.reset(options={"states": saved})
        self.vec.unwrapped._rng.bit_generator.state = rng
        assert play(self.vec, actions, vector=True) == first

    # ------------------------------------------------------------------ bad calls
    def _refused(self, kind, env, call):
        before = snapshot(kind, env)
        try:
            call()
        except (TypeError, ValueError, RuntimeError) as e:
            assert len(str(e)) >= 30, str(e)
        else:
            raise AssertionError("bad input accepted")
        assert snapshot(kind, env) == before

    @precondition(lambda self: self.single.state is not None)
    @rule(options=st.sampled_from(BAD_OPTIONS), seed=st.none() | st.sampled_from(BAD_SEEDS))
    def bad_reset_single(self, options, seed):
        self._refused("single", self.single, lambda: self.single.reset(seed=seed, options=options))

    @precondition(lambda self: self.single.state is not None and not self.single.state.done)
    @rule(action=st.sampled_from(BAD_ACTIONS))
    def bad_step_single(self, action):
        self._refused("single", self.single, lambda: self.single.step(action))

    @precondition(lambda self: self.vec_obs is not None)
    @rule(options=st.sampled_from(BAD_OPTIONS + [{"states": [None] * N}, {"horizons": [1, 2]}]),
          seed=st.none() | st.sampled_from(BAD_SEEDS + [[1, 2]]))
    def bad_reset_vector(self, options, seed):
        self._refused("vector", self.vec.unwrapped, lambda: self.vec.reset(seed=seed, options=options))

    @precondition(lambda self: self.vec_obs is not None)
    @rule(action=st.sampled_from(BAD_ACTIONS), where=st.integers(0, N - 1), whole=st.booleans())
    def bad_step_vector(self, action, where, whole):
        actions = action if whole else [TEXTS[0]] * where + [action] + [TEXTS[0]] * (N - 1 - where)
        if not whole and self.vec.unwrapped._needs_reset[where]:
            return  # that sub-env is being reset: its action is ignored, as Gymnasium's autoreset does
        self._refused("vector", self.vec.unwrapped, lambda: self.vec.step(actions))

    @precondition(lambda self: self.single.state is not None and not self.single.state.done)
    @rule(which=st.sampled_from(["user", "judge"]), action=st.sampled_from(TEXTS))
    def failing_component_single(self, which, action):
        if which == "user" and self.single.state.turn + 1 >= self.single.state.horizon:
            return  # no user reply at the last turn
        before = snapshot("single", self.single)
        self.flaky_single.fail = which
        try:
            self.single.step(action)
            raise AssertionError("a failing component went unnoticed")
        except (UserSimulatorError, JudgeError):
            pass
        finally:
            self.flaky_single.fail = None
        assert snapshot("single", self.single) == before

    @precondition(lambda self: self.vec_obs is not None)
    @rule(action=st.sampled_from(TEXTS))
    def failing_judge_vector(self, action):
        before = snapshot("vector", self.vec.unwrapped)
        self.flaky_vec.fail = "judge"
        try:
            self.vec.step([action] * N)
            raise AssertionError("a failing judge went unnoticed")
        except JudgeError:
            pass
        finally:
            self.flaky_vec.fail = None
        assert snapshot("vector", self.vec.unwrapped) == before

    # ------------------------------------------------------------------ invariants
    @invariant()
    def observations_are_in_the_spaces(self):
        if self.single_obs is not None:
            assert self.single.observation_space.contains(self.single_obs)
            s = self.single.state
            assert 0 <= s.turn <= s.horizon <= 4 and (s.turn < s.horizon or s.done)
        if self.vec_obs is not None:
            assert self.vec.observation_space.contains(self.vec_obs)
            assert all(0 <= s.turn <= s.horizon <= 4 for s in self.vec.unwrapped.states)


EnvMachine.TestCase.settings = settings(max_examples=20, stateful_step_count=10, derandomize=True, deadline=None,
                                        suppress_health_check=[HealthCheck.too_slow])
TestEnvProperties = EnvMachine.TestCase
