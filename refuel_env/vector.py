"""``RefuelVectorEnv``: N dialogues stepped together, the ``vector_entry_point`` of ``RefuelDialogue-v0``.

``gym.make_vec("RefuelDialogue-v0", num_envs=64)`` builds it. Each ``step`` makes ONE batched call
to the user simulator and ONE to the judge for all sub-environments that are still running.

Autoreset follows Gymnasium's default, ``AutoresetMode.NEXT_STEP``: when sub-env i ends at step t,
step t returns its final observation, reward and info; at step t+1 its action is ignored and it is
reset (observation of the new episode, reward 0, ``terminated = truncated = False``).

Options of ``reset``: those of the single env, applied to every sub-env, plus ``states`` (a list of
N :class:`DialogueState`, restored one per sub-env: branching in a batch), ``horizons`` (a list of N
ints) and ``split``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from .core import DialogueMachine
from .spaces import MessageText, observation_space
from .types import DialogueState


class RefuelVectorEnv(VectorEnv):
    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, num_envs: int = 1, **kwargs: Any):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        kwargs.pop("render_mode", None)
        self.num_envs = int(num_envs)
        self.machine = DialogueMachine(**kwargs)
        self.single_observation_space = observation_space(self.machine.max_total_chars, self.machine.max_turns)
        self.single_action_space = MessageText(self.machine.max_message_chars)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.states: list[DialogueState | None] = [None] * self.num_envs
        self._needs_reset = np.zeros(self.num_envs, dtype=bool)
        self._rng = np.random.default_rng()
        self._options: dict = {}

    @property
    def task(self):
        return self.machine.task

    @property
    def stats(self) -> dict:
        return self.machine.stats

    def _obs(self) -> dict:
        return {"messages": tuple(self.machine.observation(s)["messages"] for s in self.states),
                "turn": np.array([s.turn for s in self.states], dtype=np.int64)}

    def _new(self, i: int, options: dict) -> DialogueState:
        opts = {k: v for k, v in options.items() if k not in ("states", "horizons")}
        if "states" in options:
            opts["state"] = options["states"][i]
        if "horizons" in options:
            opts["horizon"] = int(options["horizons"][i])
        return self.machine.new_state(int(self._rng.integers(2**62)), opts)

    def reset(self, *, seed: int | Sequence[int] | None = None, options: dict | None = None):
        options = dict(options or {})
        for key in ("states", "horizons"):
            if key in options and len(options[key]) != self.num_envs:
                raise ValueError(f"options[{key!r}] has {len(options[key])} entries for {self.num_envs} envs")
        if isinstance(seed, (list, tuple, np.ndarray)):
            if len(seed) != self.num_envs:
                raise ValueError(f"got {len(seed)} seeds for {self.num_envs} envs")
            seeds = [None if x is None else int(x) for x in seed]
        else:
            seeds = [None if seed is None else int(seed) + i for i in range(self.num_envs)]
        new = []
        for i in range(self.num_envs):
            if seeds[i] is not None:
                self._rng = np.random.default_rng(seeds[i])
            new.append(self._new(i, options))
        self.states = new
        self._options = {k: v for k, v in options.items() if k not in ("states", "horizons", "state", "prefix")}
        self._needs_reset[:] = False
        return self._obs(), {"turn": np.array([s.turn for s in self.states]), "horizon": np.array([s.horizon for s in self.states])}

    def step(self, actions: Sequence[str]):
        actions = list(actions)
        if len(actions) != self.num_envs:
            raise ValueError(f"got {len(actions)} actions for {self.num_envs} envs")
        if any(s is None for s in self.states):
            raise RuntimeError("call reset() before step()")
        rewards = np.zeros(self.num_envs)
        terminated = np.zeros(self.num_envs, dtype=bool)
        truncated = np.zeros(self.num_envs, dtype=bool)
        infos: dict = {}
        live = [i for i in range(self.num_envs) if not self._needs_reset[i]]
        results = self.machine.step([self.states[i] for i in live], [actions[i] for i in live])
        for i in np.flatnonzero(self._needs_reset):  # NEXT_STEP autoreset
            self.states[i] = self._new(int(i), self._options)
        for i, r in zip(live, results):
            rewards[i], terminated[i], truncated[i] = r.reward, r.terminated, r.truncated
        infos = self._batch_infos([r.info for r in results], live)
        self._needs_reset[:] = terminated | truncated
        return self._obs(), rewards, terminated, truncated, infos

    def _batch_infos(self, infos: list[dict], index: Sequence[int]) -> dict:
        """The infos of sub-envs ``index`` in Gymnasium's vector format (as ``VectorEnv._add_info`` builds them:
        an array per key, a ``_key`` mask, nested dicts recursively), built a key at a time rather than an
        env at a time: this is a large share of a step's cost otherwise."""
        n, out = self.num_envs, {}
        if len(infos) < 8:  # few sub-envs: Gymnasium's env-at-a-time way has less overhead
            for i, info in zip(index, infos):
                out = self._add_info(out, info, int(i))
            return out
        idx = np.asarray(index, dtype=np.intp)
        every = np.zeros(n, dtype=np.bool_)
        every[idx] = True
        for key in dict.fromkeys(k for info in infos for k in info):
            if all(key in info for info in infos):  # the usual case: every sub-env reports the key
                where, values, mask = idx, [info[key] for info in infos], every.copy()
            else:
                pairs = [(i, info[key]) for i, info in zip(index, infos) if key in info]
                where, values = np.asarray([i for i, _ in pairs], dtype=np.intp), [v for _, v in pairs]
                mask = np.zeros(n, dtype=np.bool_)
                mask[where] = True
            first = values[0]
            if key == "final_obs" or not (isinstance(first, (dict, np.ndarray, np.number)) or type(first) in (int, float, bool)):
                array = np.full(n, fill_value=None, dtype=object)
                for i, v in zip(where, values):
                    array[i] = v
            elif isinstance(first, dict):
                if not all(isinstance(v, dict) for v in values):  # mixed types: Gymnasium's own way
                    for i, v in zip(where, values):
                        out = self._add_info(out, {key: v}, int(i))
                    continue
                array = self._batch_infos(values, where)
            elif isinstance(first, np.ndarray):
                array = np.zeros((n, *first.shape), dtype=first.dtype)
                for i, v in zip(where, values):
                    array[i] = v
            else:
                array = np.zeros(n, dtype=type(first))
                array[where] = values
            out[key], out[f"_{key}"] = array, mask
        return out

    def get_states(self) -> list[DialogueState]:
        """Deep copies of every sub-env's state; restore with ``reset(options={"states": states})``."""
        return [s.copy() for s in self.states]

    def close_extras(self, **kwargs: Any) -> None:
        close = getattr(self.machine.user, "close", None)
        if close:
            close()
