"""``RefuelVectorEnv``: N dialogues stepped together, the ``vector_entry_point`` of ``RefuelDialogue-v0``.

``gym.make_vec("RefuelDialogue-v0", num_envs=64)`` builds it. Each ``step`` makes ONE batched call
to the user simulator and ONE to the judge for all sub-environments that are still running.

Autoreset follows Gymnasium's default, ``AutoresetMode.NEXT_STEP``: when sub-env i ends at step t,
step t returns its final observation, reward and info; at step t+1 its action is ignored and it is
reset (observation of the new episode, reward 0, ``terminated = truncated = False``).

Options of ``reset``: those of the single env, applied to every sub-env, plus ``states`` (a list of
N :class:`DialogueState`, restored one per sub-env: branching in a batch; a restored state that has ended is
reset at the next step, as after its last step), ``horizons`` (a list of N ints) and ``split``. With ``states``
(or ``state``), ``horizon``, ``goal`` and ``split`` apply to the episodes of later autoresets. Every option and seed
is checked before anything changes: a refused reset leaves every sub-env and the env's random state as they were.
``step`` takes a list (or 1-D array) of N messages; a single str is refused.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv

from . import rng as _rng
from .core import DialogueMachine
from .infos import batch_infos, vector_infos
from .spaces import MessageText, batch_copies, batched_observation_space, observation_space
from .types import DialogueState
from .validation import MAX_ENVS, NEW_STATE_OPTIONS, as_int, as_list, as_seed, check_options

VECTOR_OPTIONS = {**NEW_STATE_OPTIONS,
                  "states": "a list of num_envs DialogueStates (or to_dict() forms), one restored per sub-env",
                  "horizons": "a list of num_envs horizons, one per sub-env"}
AUTORESET_KEYS = ("horizon", "goal", "split")  # the options that also apply to the episodes of later autoresets


class RefuelVectorEnv(VectorEnv):
    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, num_envs: int = 1, **kwargs: Any):
        kwargs.pop("render_mode", None)
        self.num_envs = as_int(num_envs, "num_envs", 1, MAX_ENVS)
        self.machine = DialogueMachine(**kwargs)
        n, h, chars = self.num_envs, self.machine.max_turns, self.machine.max_total_chars
        self.single_observation_space = observation_space(chars, h)
        self.single_action_space = MessageText(self.machine.max_message_chars)
        # what gymnasium.vector.utils.batch_space makes, without its num_envs deep copies of the text spaces
        self.observation_space = batched_observation_space(self.single_observation_space, n, chars, h)
        self.action_space = batch_copies(self.single_action_space, n, lambda: MessageText(self.machine.max_message_chars))
        self.states: list[DialogueState | None] = [None] * n
        self._needs_reset = np.zeros(n, dtype=bool)
        self._rng = np.random.default_rng()
        self._options: dict = {}

    @property
    def task(self):
        return self.machine.task

    @property
    def stats(self) -> dict:
        return self.machine.stats

    def _obs(self) -> dict:
        return {"messages": tuple([tuple([{"role": m["role"], "content": m["content"]} for m in s.messages])
                                   for s in self.states]),
                "turn": np.array([s.turn for s in self.states], dtype=np.int64)}

    # ------------------------------------------------------------------ reset
    def _check_reset(self, seed: Any, options: Any) -> tuple[list, list[dict] | None, dict, dict]:
        """Seeds, per-env options, common options and autoreset options of a reset, all checked (changes nothing)."""
        n = self.num_envs
        opts = check_options(options, VECTOR_OPTIONS)
        for a, b in (("states", "state"), ("horizons", "horizon"), ("horizons", "states"), ("horizons", "state"),
                     ("prefix", "states"), ("prefix", "state")):
            if a in opts and b in opts:
                raise ValueError(f"reset options {a!r} and {b!r} contradict each other; pass one of them")
        if isinstance(seed, (list, tuple, np.ndarray)):
            seeds = [None if x is None else as_seed(x, f"seed[{i}]") for i, x in enumerate(as_list(seed, "seed", n, "seeds"))]
        else:
            seed = as_seed(seed, "seed (an int, or a list of num_envs ints)")
            seeds = [None if seed is None else seed + i for i in range(n)]
        later = self.machine.check_options({k: opts[k] for k in AUTORESET_KEYS if k in opts}, "options")
        common = {k: v for k, v in opts.items() if k not in ("states", "horizons")}
        if "state" in common:
            common = {"state": common["state"]}  # a restored state keeps its own horizon and goal
        per_env = None
        if "states" in opts:
            per_env = [{"state": s} for s in as_list(opts["states"], "options['states']", n, "entries")]
            common = {}
        elif "horizons" in opts:
            per_env = [{"horizon": h} for h in as_list(opts["horizons"], "options['horizons']", n, "entries")]
        return seeds, per_env, common, later

    def _episode_seeds(self, seeds: Sequence[int | None], index: Sequence[int]) -> list[int]:
        """One episode seed per sub-env in ``index``, drawn from the env's generator (reseeded where a seed is given)."""
        given = [i for i in index if seeds[i] is not None]
        fresh = dict(zip(given, _rng.seeded([seeds[i] for i in given])))
        out = []
        for i in index:
            if i in fresh:
                self._rng = fresh[i]
            out.append(int(self._rng.integers(2**62)))
        return out

    def reset(self, *, seed: int | Sequence[int] | None = None, options: dict | None = None):
        """Reset every sub-env (options: see the module docstring). Transactional: a bad seed, option or state
        raises, and every sub-env and the env's random state stay as they were."""
        seeds, per_env, common, later = self._check_reset(seed, options)
        rng, saved = self._rng, self._rng.bit_generator.state
        try:
            episode_seeds = self._episode_seeds(seeds, range(self.num_envs))
            states = self.machine.new_states(episode_seeds, common, per_env)
        except BaseException:
            self._rng = rng
            rng.bit_generator.state = saved
            raise
        self.states, self._options = states, later
        self._needs_reset[:] = [s.done for s in states]  # a restored state that has ended is reset at the next step
        return self._obs(), {"turn": np.array([s.turn for s in states]), "horizon": np.array([s.horizon for s in states])}

    # ------------------------------------------------------------------ step
    def step(self, actions: Sequence[str]):
        if isinstance(actions, (str, bytes)):
            raise TypeError(f"step() of a vector env takes a list of {self.num_envs} messages, one per sub-env, got a "
                            f"{type(actions).__name__} ({actions!r:.40}); pass [message] * num_envs to send one to all")
        actions = as_list(actions, "actions", self.num_envs, "actions")
        if any(s is None for s in self.states):
            raise RuntimeError("call reset() before step()")
        n, needs_reset = self.num_envs, self._needs_reset
        live = [i for i in range(n) if not needs_reset[i]]
        resets = [i for i in range(n) if needs_reset[i]]
        rng, saved = self._rng, (self._rng.bit_generator.state if resets else None)
        try:  # NEXT_STEP autoreset: new episodes (made first, so that a failing step can undo their draws)
            new = self.machine.new_states(self._episode_seeds([None] * n, resets), self._options) if resets else []
            c = self.machine.step_columns([self.states[i] for i in live], [actions[i] for i in live])
        except BaseException:
            if resets:
                self._rng = rng
                rng.bit_generator.state = saved
            raise
        for i, s in zip(resets, new):
            self.states[i] = s
        rewards = np.zeros(n)
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        rewards[live], terminated[live], truncated[live] = c.reward, c.terminated, c.truncated
        infos = vector_infos(c, live, n, self._add_info)
        self._needs_reset[:] = terminated | truncated
        return self._obs(), rewards, terminated, truncated, infos

    def _batch_infos(self, infos: list[dict], index: Sequence[int]) -> dict:
        """Infos of sub-envs ``index`` in Gymnasium's vector format (see :func:`refuel_env.infos.batch_infos`)."""
        return batch_infos(infos, index, self.num_envs, self._add_info)

    def get_states(self) -> list[DialogueState]:
        """Deep copies of every sub-env's state; restore with ``reset(options={"states": states})``."""
        if any(s is None for s in self.states):
            raise RuntimeError("call reset() before get_states()")
        return [s.copy() for s in self.states]

    def close_extras(self, **kwargs: Any) -> None:
        close = getattr(self.machine.user, "close", None)
        if close:
            close()
