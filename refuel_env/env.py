"""``RefuelDialogueEnv``: one dialogue as a Gymnasium environment. The agent is the assistant.

Observation: ``{"messages": (message, ...), "turn": int}`` (see :mod:`refuel_env.spaces`).
Action: the assistant's message, a ``str``.
Reward: the judge's score at the horizon (``reward_mode="terminal"``) or its change each turn.
``terminated`` when the horizon is reached or the user ends the dialogue; ``truncated`` when the
conversation outgrows ``max_total_chars``. ``info`` holds the judge's score, its components and
provenance, the per-turn scores, and the (deterministic) cost of the user and judge calls; wall
times are in ``env.unwrapped.stats``.

Branching: ``state = env.get_state()`` and ``env.reset(options={"state": state})``; starting from a
given dialogue: ``env.reset(options={"prefix": messages})``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from .core import DialogueMachine
from .spaces import MessageText, observation_space
from .types import DialogueState
from .validation import as_seed


class RefuelDialogueEnv(gym.Env):
    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(self, render_mode: str | None = None, **kwargs: Any):
        """Keyword arguments are those of :class:`refuel_env.core.DialogueMachine` (task, user, judge,
        max_turns, horizon, reward_mode, max_message_chars, ...)."""
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.render_mode = render_mode
        self.machine = DialogueMachine(**kwargs)
        self.observation_space = observation_space(self.machine.max_total_chars, self.machine.max_turns)
        self.action_space = MessageText(self.machine.max_message_chars)
        self.state: DialogueState | None = None

    @property
    def task(self):
        return self.machine.task

    @property
    def stats(self) -> dict:
        return self.machine.stats

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start a new episode (options: see :meth:`DialogueMachine.new_state`). Transactional: a bad seed or
        option raises, and the env keeps its dialogue and its random state as they were."""
        seed = as_seed(seed)
        options = self.machine.check_options(options)
        rng, rng_seed = self._np_random, self._np_random_seed
        saved = None if rng is None else rng.bit_generator.state
        try:
            super().reset(seed=seed)
            state = self.machine.new_state(int(self.np_random.integers(2**62)), options)
        except BaseException:
            self._np_random, self._np_random_seed = rng, rng_seed
            if saved is not None:
                rng.bit_generator.state = saved
            raise
        self.state = state
        return self.machine.observation(state), {"turn": state.turn, "horizon": state.horizon}

    def step(self, action: str):
        if self.state is None:
            raise RuntimeError("call reset() before step()")
        (r,) = self.machine.step([self.state], [action])
        return self.machine.observation(self.state), r.reward, r.terminated, r.truncated, r.info

    def get_state(self) -> DialogueState:
        """A deep copy of the whole dialogue state; restore it with ``reset(options={"state": state})``."""
        if self.state is None:
            raise RuntimeError("call reset() before get_state()")
        return self.state.copy()

    def render(self) -> str | None:
        if self.render_mode != "ansi" or self.state is None:
            return None
        return "\n".join(f"[{m['role']}] {m['content']}" for m in self.state.messages)
