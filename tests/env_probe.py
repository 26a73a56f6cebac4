"""Probing an env: its whole state as comparable data, envs in a known state, and one bad call classified.

Used by the bad-input matrix (``tests/bad_input_matrix.py``) and the property test (``tests/test_env_properties.py``).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

import refuel_env  # noqa: F401  (registers RefuelDialogue-v0)
from refuel_env import DialogueMachine, EnvError, multiagent

Q = "Is it a mammal?"
CLEAR = (TypeError, ValueError, RuntimeError, EnvError)
ENV = {"horizon": "fixed", "task_kwargs": {"noise": 0.2}}


# ------------------------------------------------------------------------------------------------ snapshots
def canon(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): canon(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [canon(v) for v in x]
    if isinstance(x, np.ndarray):
        return ["ndarray", str(x.dtype), canon(x.tolist())]
    if isinstance(x, np.generic):
        return x.item()
    return x


def global_rng() -> Any:
    return canon(np.random.get_state())


def snapshot(kind: str, env: Any) -> Any:
    """Everything a refused call must leave alone."""
    u = getattr(env, "unwrapped", env)
    if kind == "single":
        rng = u._np_random
        return canon([None if u.state is None else u.state.to_dict(), None if rng is None else rng.bit_generator.state,
                      None if u.state is None else u.machine.observation(u.state), global_rng()])
    if kind == "vector":
        return canon([[s.to_dict() for s in u.states], u._rng.bit_generator.state, u._needs_reset, u._options,
                      global_rng()])
    if kind == "aec":
        rng = u._np_random
        return canon([u.dialogue.to_dict(), None if rng is None else rng.bit_generator.state, u.agent_selection,
                      u._pending, u.rewards, u.terminations, u.infos, u.observe("assistant"), global_rng()])
    if kind == "machine":
        return canon([[s.to_dict() for s in env["states"]], global_rng()])
    return None


# ------------------------------------------------------------------------------------------------ envs in a known state
def make(kind: str, kwargs: dict | None = None) -> Any:
    kwargs = {**ENV, **(kwargs or {})}
    if kind == "single":
        env = gym.make("RefuelDialogue-v0", **kwargs)
        env.reset(seed=3)
        env.step(Q)
        return env
    if kind == "vector":
        vec = gym.make_vec("RefuelDialogue-v0", num_envs=3, **kwargs)
        vec.reset(seed=3)
        vec.step([Q] * 3)
        return vec
    if kind == "aec":
        env = multiagent.env(**kwargs)
        env.reset(seed=3)
        env.step(Q)  # the user's turn now
        return env
    if kind == "machine":
        machine = DialogueMachine(**kwargs)
        states = machine.new_states([1, 2, 3])
        machine.step(states, [Q] * 3)
        return {"machine": machine, "states": states}
    raise ValueError(kind)


def follow_up(kind: str, env: Any) -> Any:
    """What the next valid calls give (compared with a twin env's): a step, then an unseeded reset."""
    if kind == "single":
        out = env.step("Does it live in water?")
        return canon([out, env.reset()])
    if kind == "vector":
        out = env.step(["Does it live in water?"] * 3)
        return canon([out, env.reset()])
    if kind == "aec":
        if env.unwrapped.agent_selection == "user":
            env.step("Yes.")
        env.step("Can it fly?")
        first = [env.observe("user"), env.rewards, env.infos]
        env.reset()
        return canon([first, env.observe("assistant")])
    if kind == "machine":
        results = env["machine"].step(env["states"], ["Can it fly?"] * 3)
        return canon([[(r.reward, r.terminated, r.truncated, r.info) for r in results],
                      [s.to_dict() for s in env["states"]]])
    return None


# ------------------------------------------------------------------------------------------------ running a case
def run(case: Any) -> dict:
    """Run one case; return its outcome: accepted, bare (the error), corrupted (what changed), and the error."""
    env = None if case.kind == "make" else make(case.kind, case.kwargs)
    twin = None if case.kind == "make" else make(case.kind, case.kwargs)
    if case.setup is not None:
        case.setup(env)
        case.setup(twin)
    before = snapshot(case.kind, env)
    out = {"case": case.name, "accepted": False, "bare": None, "corrupted": None, "error": None}
    try:
        case.op(env)
        out["accepted"] = True
    except Exception as e:  # noqa: BLE001 - classifying every error is the point
        out["error"] = f"{type(e).__name__}: {e}"
        clear = isinstance(e, CLEAR) or (isinstance(e, KeyError) and "known" in str(e))
        if not clear or len(str(e)) < 30:
            out["bare"] = out["error"]
    if case.kind == "make" or out["accepted"]:
        return out
    try:
        after = snapshot(case.kind, env)
    except Exception as e:  # noqa: BLE001
        out["corrupted"] = f"the env's state is broken: {type(e).__name__}: {e}"
        return out
    if after != before:
        out["corrupted"] = "the env's state, a random state or the observation changed"
        return out
    try:
        mine = follow_up(case.kind, env)
    except Exception as e:  # noqa: BLE001
        out["corrupted"] = f"the next valid call failed: {type(e).__name__}: {e}"
        return out
    if mine != follow_up(case.kind, twin):
        out["corrupted"] = "the next valid calls went differently from a twin env's"
    return out


