"""The bad-input matrix of the env (issue #12): single, vector and PettingZoo envs, the batched machine, reset options,
saved states, actions, constructor arguments and what user simulators and judges return.

Every case makes an env in a known state, makes ONE bad call, and classifies what happened:

- ``accepted``: no error (the input was taken silently; ``lossy`` cases lose or change data when that happens);
- ``bare``: an error that does not say what to do (a KeyError/AttributeError/IndexError/..., or a very short message);
- ``corrupted``: the call raised, but the env changed (its dialogue, a random state, numpy's global random state,
  the observation), or the next valid calls go differently from a twin env that never saw the bad call.

``PYTHONPATH=. python tests/bad_input_matrix.py`` prints the counts (``PYTHONPATH=<another tree>`` measures that tree); ``tests/test_bad_inputs.py`` runs every case and requires a clear refusal and no change.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import gymnasium as gym
import numpy as np

import refuel_env  # noqa: F401  (registers RefuelDialogue-v0)
from refuel_env import JudgeScore, UserTurn, multiagent

from env_probe import ENV, Q, run  # noqa: F401  (run: used by tests/test_bad_inputs.py)


@dataclass
class Case:
    name: str
    kind: str  # "single" | "vector" | "aec" | "machine" | "make"
    op: Callable[[Any], Any]
    lossy: bool = False  # accepting it silently changes or drops data
    kwargs: dict = field(default_factory=dict)  # env keyword arguments
    setup: Callable[[Any], Any] | None = None  # valid calls that bring the env (and its twin) to the bad call


# ------------------------------------------------------------------------------------------------ bad values
def state_dict(**change: Any) -> dict:
    env = gym.make("RefuelDialogue-v0", **ENV)
    env.reset(seed=5)
    env.step(Q)
    d = json.loads(json.dumps(env.unwrapped.get_state().to_dict()))
    for k, v in change.items():
        if v is DROP:
            d.pop(k)
        else:
            d[k] = v
    return d


DROP = object()


def rng_state(**change: Any) -> dict:
    s = dict(np.random.default_rng(0).bit_generator.state)
    s.update(change)
    return s


def msg(**m: Any) -> dict:
    return m


PREFIX = [{"role": "user", "content": "I am thinking of an animal."}]


def reset_cases() -> list[Case]:
    """Reset options and saved states: the same list for the single env, the vector env and the PettingZoo env."""
    bad_options = {
        "options a str": "horizon", "horizon 0": {"horizon": 0}, "horizon 2.7": {"horizon": 2.7},
        "horizon True": {"horizon": True}, "horizon -1": {"horizon": -1}, "horizon 99": {"horizon": 99},
        "horizon '3'": {"horizon": "3"}, "split 'test'": {"split": "test"}, "split 1": {"split": 1},
        "goal 'lion'": {"goal": "lion"}, "goal 5": {"goal": 5}, "goal None": {"goal": None},
        "prefix a str": {"prefix": "hello"}, "prefix empty": {"prefix": []},
        "prefix ends with assistant": {"prefix": PREFIX + [msg(role="assistant", content="Hi")]},
        "prefix message without content": {"prefix": [msg(role="user")]},
        "prefix message with role 'bot'": {"prefix": [msg(role="bot", content="x")]},
        "prefix content an int": {"prefix": [msg(role="user", content=5)]},
        "prefix message a str": {"prefix": ["hi"]},
        "prefix content with a lone surrogate": {"prefix": [msg(role="user", content="caf\udce9")]},
        "prefix message with an extra key": {"prefix": [msg(role="user", content="x", name="bob")]},
        "prefix with 4 assistant turns (H_max 4)": {"prefix": (PREFIX + [msg(role="assistant", content="a"),
                                                                         msg(role="user", content="b")]) * 4},
        "prefix of 2 turns with horizon 2": {"prefix": PREFIX + [msg(role="assistant", content="a"),
                                                                 msg(role="user", content="b")] * 2, "horizon": 2},
        "state a str": {"state": "x"}, "state without 'turn'": {"state": state_dict(turn=DROP)},
        "state with an unknown key": {"state": {**state_dict(), "extra": 1}},
        "state messages a str": {"state": state_dict(messages="abc")},
        "state message without content": {"state": state_dict(messages=[msg(role="user")])},
        "state message content None": {"state": state_dict(messages=[msg(role="user", content=None)])},
        "state horizon -1": {"state": state_dict(horizon=-1)}, "state horizon 0": {"state": state_dict(horizon=0)},
        "state horizon 2.5": {"state": state_dict(horizon=2.5)}, "state horizon True": {"state": state_dict(horizon=True)},
        "state horizon 9 (H_max 4)": {"state": state_dict(horizon=9)},
        "state turn beyond its horizon": {"state": state_dict(turn=7)}, "state turn -1": {"state": state_dict(turn=-1)},
        "state goal not in the catalogue": {"state": state_dict(goal="lion")},
        "state goal an int": {"state": state_dict(goal=3)},
        "state bit_generator 'seed'": {"state": state_dict(user_rng=rng_state(bit_generator="seed"))},
        "state bit_generator 'RandomState'": {"state": state_dict(judge_rng=rng_state(bit_generator="RandomState"))},
        "state rng without its state": {"state": state_dict(user_rng={"bit_generator": "PCG64"})},
        "state rng state of the wrong shape": {"state": state_dict(user_rng=rng_state(state={"state": "x"}))},
        "state rng an int": {"state": state_dict(user_rng=5)},
        "state memory a list": {"state": state_dict(memory=[])},
        "state memory without facts": {"state": state_dict(memory={"solved": False})},
        "state memory with a malformed fact": {"state": state_dict(memory={"facts": [["attr", "wings", True]],
                                                                           "solved": False})},
        "state scores with nan": {"state": state_dict(scores=[float("nan")])},
        "state scores a str": {"state": state_dict(scores="0.5")},
        "state done 'False'": {"state": state_dict(done="False")},
        "state from another task": {"state": state_dict(task_id="open-chat-v0")},
        "state at its horizon but not done": {"state": state_dict(turn=4)},
        "state ended by the user but not done": {"state": state_dict(ended_by_user=True)},
        "state with a horizon too": {"state": state_dict(), "horizon": 2},
        "unknown option": {"horizn": 3},
    }
    lossy = {"horizon 2.7", "prefix message with an extra key", "state with a horizon too", "unknown option",
             "state horizon 2.5", "state done 'False'"}
    cases = []
    for kind in ("single", "vector", "aec"):
        for name, options in bad_options.items():
            if kind == "aec" and name == "unknown option":
                continue  # PettingZoo's api_test resets with options={"options": 1}: the AEC env warns instead
            if kind == "vector" and name == "state with a horizon too":
                continue  # valid there: the states are restored now, the horizon is for the autoresets after them

            def op(env, options=options, kind=kind):
                return env.reset(options=options) if kind != "vector" else env.reset(options=options)

            cases.append(Case(f"{kind} reset: {name}", kind, op, lossy=name in lossy))
        for name, seed in {"seed -1": -1, "seed 2.5": 2.5, "seed '3'": "3", "seed True": True}.items():
            cases.append(Case(f"{kind} reset: {name}", kind, lambda env, seed=seed: env.reset(seed=seed),
                              lossy=name in ("seed 2.5", "seed '3'", "seed True")))
    return cases


def action_cases() -> list[Case]:
    bad = {"None": None, "an int": 5, "bytes": b"Is it a cat?", "token ids": [1, 2, 3], "2000 characters": "x" * 2000,
           "a lone surrogate": "Is it a cat\ud800?"}
    cases = []
    for name, a in bad.items():
        cases.append(Case(f"single step: {name}", "single", lambda env, a=a: env.step(a)))
        cases.append(Case(f"vector step: {name} in one sub-env", "vector", lambda env, a=a: env.step([Q, a, Q])))
        cases.append(Case(f"aec step: user says {name}", "aec", lambda env, a=a: env.step(a)))

        cases.append(Case(f"aec step: assistant says {name}", "aec", lambda env, a=a: env.step(a),
                          setup=lambda env: env.step("Yes.")))  # the user's valid reply: the assistant's turn again
        cases.append(Case(f"machine step: {name}", "machine", lambda m, a=a: m["machine"].step(m["states"], [Q, a, Q])))
    cases += [
        Case("vector step: the str 'abc' (3 envs)", "vector", lambda env: env.step("abc"), lossy=True),
        Case("vector step: 2 actions for 3 envs", "vector", lambda env: env.step([Q, Q])),
        Case("vector step: None", "vector", lambda env: env.step(None)),
        Case("vector step: an int", "vector", lambda env: env.step(5)),
        Case("vector step: a dict", "vector", lambda env: env.step({0: Q, 1: Q, 2: Q})),
        Case("machine step: actions a str", "machine", lambda m: m["machine"].step(m["states"], "abc"), lossy=True),
        Case("machine step: a dict for a state", "machine", lambda m: m["machine"].step([{}], [Q])),
        Case("machine step: user reply an int", "machine", lambda m: m["machine"].step(m["states"], [Q] * 3, [5, None, None])),
        Case("machine step: user reply with a surrogate", "machine",
             lambda m: m["machine"].step(m["states"], [Q] * 3, ["Yes\udc80", None, None])),
        Case("machine step: user replies a str", "machine", lambda m: m["machine"].step(m["states"], [Q] * 3, "abc")),
        Case("machine new_states: seeds a str", "machine", lambda m: m["machine"].new_states("abc")),
        Case("machine new_states: seed 1.5", "machine", lambda m: m["machine"].new_states([1.5]), lossy=True),
        Case("machine new_states: seed -1", "machine", lambda m: m["machine"].new_states([-1])),
        Case("machine new_states: seed True", "machine", lambda m: m["machine"].new_states([True])),
        Case("machine branch: k 2.5", "machine", lambda m: m["machine"].branch(m["states"][0], 2.5), lossy=True),
        Case("machine branch: a str", "machine", lambda m: m["machine"].branch("state")),
        Case("from_dict: bit_generator 'seed'", "machine",
             lambda m: refuel_env.DialogueState.from_dict(state_dict(user_rng=rng_state(bit_generator="seed")))),
        Case("from_dict: messages a str", "machine",
             lambda m: refuel_env.DialogueState.from_dict(state_dict(messages="abc"))),
    ]
    return cases


def vector_reset_cases() -> list[Case]:
    good = state_dict()
    return [
        Case("vector reset: seed list of 2 for 3 envs", "vector", lambda env: env.reset(seed=[1, 2])),
        Case("vector reset: seed list with a str", "vector", lambda env: env.reset(seed=[1, "2", 3])),
        Case("vector reset: seed list with -1", "vector", lambda env: env.reset(seed=[1, -1, 3])),
        Case("vector reset: states of 2 for 3 envs", "vector", lambda env: env.reset(options={"states": [good] * 2})),
        Case("vector reset: states a str", "vector", lambda env: env.reset(options={"states": "abc"})),
        Case("vector reset: the third state bad", "vector",
             lambda env: env.reset(options={"states": [good, good, state_dict(horizon=0)]})),
        Case("vector reset: horizons of 2", "vector", lambda env: env.reset(options={"horizons": [1, 2]})),
        Case("vector reset: horizons with 0", "vector", lambda env: env.reset(options={"horizons": [1, 2, 0]})),
        Case("vector reset: horizons with 2.5", "vector", lambda env: env.reset(options={"horizons": [1, 2, 2.5]}),
             lossy=True),
        Case("vector reset: horizons a str", "vector", lambda env: env.reset(options={"horizons": "123"}), lossy=True),
        Case("vector reset: states and horizons", "vector",
             lambda env: env.reset(options={"states": [good] * 3, "horizons": [1, 1, 1]}), lossy=True),
    ]


class BadUser:
    """The scripted user, except that its replies are broken by ``how`` (it advances its random state first)."""

    def __init__(self, how: str):
        from refuel_env.tasks.guess_item import GuessItemTask

        self.inner, self.how = GuessItemTask(noise=0.2).make_scripted_user(), how

    def reply(self, states):
        out = self.inner.reply(states)
        if self.how == "content an int":
            out[0] = UserTurn(5)
        elif self.how == "content with a surrogate":
            out[0] = UserTurn("Yes\ud800")
        elif self.how == "end 'yes'":
            out[0] = UserTurn("Yes.", end="yes")
        elif self.how == "cost a str":
            out[0] = UserTurn("Yes.", cost="free")
        return out


class BadJudge:
    def __init__(self, how: str):
        from refuel_env.tasks.guess_item import GuessItemTask

        self.inner, self.how = GuessItemTask(noise=0.2).make_rule_judge(), how

    def score(self, states):
        out = self.inner.score(states)
        bad = {"value '0.5'": JudgeScore("0.5"), "value True": JudgeScore(True), "value inf": JudgeScore(float("inf")),
               "components a list": JudgeScore(0.5, components=[("a", 1)]), "a float": 0.5}
        out[-1] = bad[self.how]
        return out


def component_cases() -> list[Case]:
    """What a user simulator or judge returns; the env is made with a good one, then the bad one is swapped in."""
    cases = []
    for how in ("content an int", "content with a surrogate", "end 'yes'", "cost a str"):
        for kind in ("single", "vector", "machine"):
            def op(env, how=how, kind=kind):
                machine = refuel_env.machine_of(env) if kind != "machine" else env["machine"]
                good, machine.user = machine.user, BadUser(how)
                try:
                    return env.step(Q) if kind == "single" else env.step([Q] * 3) if kind == "vector" else \
                        machine.step(env["states"], [Q] * 3)
                finally:
                    machine.user = good
            cases.append(Case(f"{kind} step: the user's reply has {how}", kind, op, lossy=how != "cost a str"))
    for how in ("value '0.5'", "value True", "value inf", "components a list", "a float"):
        for kind in ("single", "vector", "machine"):
            def op(env, how=how, kind=kind):
                machine = refuel_env.machine_of(env) if kind != "machine" else env["machine"]
                good, machine.judge = machine.judge, BadJudge(how)
                try:
                    return env.step(Q) if kind == "single" else env.step([Q] * 3) if kind == "vector" else \
                        machine.step(env["states"], [Q] * 3)
                finally:
                    machine.judge = good
            cases.append(Case(f"{kind} step: the judge returns {how}", kind, op, lossy=how == "value True"))
    return cases


def make_cases() -> list[Case]:
    bad = {"max_turns 2.5": {"max_turns": 2.5}, "max_turns 10**9": {"max_turns": 10**9}, "max_turns 0": {"max_turns": 0},
           "max_turns True": {"max_turns": True}, "horizon True": {"horizon": True}, "horizon 0": {"horizon": 0},
           "horizon 2.5": {"horizon": 2.5}, "horizon 'random'": {"horizon": "random"},
           "reward_mode 'sparse'": {"reward_mode": "sparse"}, "max_message_chars 0": {"max_message_chars": 0},
           "max_message_chars 2.5": {"max_message_chars": 2.5}, "max_message_chars '100'": {"max_message_chars": "100"},
           "max_total_chars below max_message_chars": {"max_message_chars": 100, "max_total_chars": 50},
           "task_kwargs a str": {"task_kwargs": "n_items=4"}, "n_items 2.5": {"task_kwargs": {"n_items": 2.5}},
           "n_items 99": {"task_kwargs": {"n_items": 99}}, "noise True": {"task_kwargs": {"noise": True}},
           "noise 0.7": {"task_kwargs": {"noise": 0.7}}, "noise nan": {"task_kwargs": {"noise": float("nan")}},
           "reveal_candidates 'no'": {"task_kwargs": {"reveal_candidates": "no"}},
           "phrasing 'odd'": {"task_kwargs": {"phrasing": "odd"}}, "task 5": {"task": 5},
           "user_kwargs a str": {"user_kwargs": "x"}, "render_mode 'human'": {"render_mode": "human"},
           "user 'nobody'": {"user": "nobody"}, "judge 'nobody'": {"judge": "nobody"}}
    lossy = {"max_turns 2.5", "max_turns True", "horizon True", "horizon 2.5", "max_message_chars 2.5",
             "n_items 2.5", "noise True", "reveal_candidates 'no'"}
    cases = [Case(f"gym.make: {name}", "make", lambda _, kw=kw: gym.make("RefuelDialogue-v0", **kw), lossy=name in lossy)
             for name, kw in bad.items()]
    cases += [Case(f"make_vec: num_envs {n!r}", "make", lambda _, n=n: gym.make_vec("RefuelDialogue-v0", num_envs=n),
                   lossy=n in (2.5, True)) for n in (0, 2.5, "3", True)]
    cases += [Case("PettingZoo env: user_reward 'all'", "make", lambda _: multiagent.env(user_reward="all")),
              Case("PettingZoo env: max_turns 2.5", "make", lambda _: multiagent.env(max_turns=2.5), lossy=True)]
    return cases


def all_cases() -> list[Case]:
    return reset_cases() + vector_reset_cases() + action_cases() + component_cases() + make_cases()


def summary(results: list[dict], cases: list[Case]) -> dict:
    lossy = {c.name for c in cases if c.lossy}
    return {"cases": len(results), "accepted": sum(r["accepted"] for r in results),
            "accepted, data lost or changed": sum(r["accepted"] and r["case"] in lossy for r in results),
            "bare errors": sum(r["bare"] is not None for r in results),
            "corrupted": sum(r["corrupted"] is not None for r in results)}


def main() -> int:
    cases = all_cases()
    results = [run(c) for c in cases]
    for r in results:
        if r["accepted"] or r["bare"] or r["corrupted"]:
            what = "accepted" if r["accepted"] else f"bare: {r['bare'][:90]}" if r["bare"] else f"corrupted: {r['corrupted'][:90]}"
            print(f"  {r['case']:<60} {what}")
    print(json.dumps(summary(results, cases)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
