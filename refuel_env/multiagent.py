"""A PettingZoo view of the dialogue state machine: agents ``"assistant"`` and ``"user"``.

The same :class:`~refuel_env.core.DialogueMachine` as the Gymnasium envs, seen as a turn-based AEC game,
so that a learned or human user can take the user seat. PettingZoo classic style::

    from refuel_env import multiagent
    env = multiagent.env(horizon="fixed")            # AEC, with PettingZoo's order-enforcing wrapper
    env.reset(seed=0)
    for agent in env.agent_iter():
        obs, reward, terminated, truncated, info = env.last()
        action = None if terminated or truncated else my_policy[agent](obs)
        env.step(action)

Turn order: the assistant speaks, then the user replies; one such exchange is one step of the
Gymnasium env. At the horizon the assistant speaks last and no user turn follows.

- Actions are message texts (:class:`~refuel_env.spaces.MessageText`). The assistant's message is
  validated when it is given (a bad one raises and changes nothing) and becomes visible in both
  observations; the exchange is run through ``DialogueMachine.step`` once the user has replied.
- The user ends the dialogue by ending its message with :data:`END_MARKER` (``"[END]"``); the marker
  is removed from the text. A user reply from an agent is used verbatim and the task memory is
  rebuilt from the text (``task.memory_from_prefix``).
- Rewards come from the judge after each exchange (``reward_mode`` as in the Gymnasium env). The
  assistant gets the judge's reward; the user gets the same reward (``user_reward="shared"``: a
  cooperative user, the default) or nothing (``user_reward="zero"``).
- Observations: the assistant sees ``{"messages", "turn"}`` exactly as in the Gymnasium env (plus
  its own pending message while the user is to reply); the user sees the same plus ``"goal"``, its
  hidden goal as text (it is the one who knows it).
- :class:`SimulatedUser` lets the env's own user simulator play the user seat; a dialogue played that
  way gives exactly the rewards, texts and info of the Gymnasium env with the same seed.

Parallel API: a dialogue is turn-based, so ``pettingzoo.utils.conversions.aec_to_parallel`` does not
fit (it needs every agent to act in every cycle, on observations from before the cycle, and refuses
envs whose ``metadata["is_parallelizable"]`` is not True; here the user must see the assistant's
message before replying). :func:`parallel_env` therefore uses PettingZoo's conversion for turn-based
games, ``turn_based_aec_to_parallel``: each parallel step applies the action of the agent whose turn
it is (``infos[agent]["active_agent"]``) and ignores the other's.
"""

from __future__ import annotations

import copy
import json
import warnings
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from pettingzoo import AECEnv
from pettingzoo.utils.conversions import turn_based_aec_to_parallel
from pettingzoo.utils.wrappers import OrderEnforcingWrapper

from .core import DialogueMachine, StepResult
from .spaces import MessageText, message_space
from .types import DialogueState, UserTurn
from .validation import NEW_STATE_OPTIONS, as_choice, as_dict, as_seed, as_text

ASSISTANT, USER = "assistant", "user"
END_MARKER = "[END]"


def split_end_marker(text: str) -> tuple[str, bool]:
    """``("Thanks, bye. [END]")`` -> ``("Thanks, bye.", True)``: a user message that ends the dialogue."""
    stripped = text.rstrip()
    if stripped.endswith(END_MARKER):
        return stripped[: -len(END_MARKER)].rstrip(), True
    return text, False


def _goal_text(goal: Any) -> str:
    return goal if isinstance(goal, str) else json.dumps(goal, sort_keys=True, default=str)


class raw_env(AECEnv):
    """The AEC dialogue env. Keyword arguments are those of :class:`~refuel_env.core.DialogueMachine`
    (task, user, judge, max_turns, horizon, reward_mode, ...; ``user`` is the simulator that
    :class:`SimulatedUser` puts in the user seat), plus ``user_reward`` ("shared" or "zero")."""

    metadata = {"name": "refuel_dialogue_v0", "render_modes": ["ansi"], "is_parallelizable": False}

    def __init__(self, render_mode: str | None = None, user_reward: str = "shared", **kwargs: Any):
        super().__init__()
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.render_mode, self.user_reward = render_mode, as_choice(user_reward, "user_reward", ("shared", "zero"))
        self.machine = DialogueMachine(**kwargs)
        self.possible_agents = [ASSISTANT, USER]
        n, h = self.machine.max_total_chars, self.machine.max_turns
        conversation = {"messages": spaces.Sequence(message_space(n)), "turn": spaces.Discrete(h + 1)}
        self.observation_spaces = {ASSISTANT: spaces.Dict(conversation),
                                   USER: spaces.Dict({**conversation, "goal": MessageText(n)})}
        self.action_spaces = {a: MessageText(self.machine.max_message_chars) for a in self.possible_agents}
        self.dialogue: DialogueState | None = None
        self._np_random: np.random.Generator | None = None
        self._pending: str | None = None
        self._preview: tuple[str, bool, DialogueState, StepResult] | None = None

    # --------------------------------------------------------------- PettingZoo API
    def observation_space(self, agent: str) -> spaces.Space:
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.Space:
        return self.action_spaces[agent]

    @property
    def task(self):
        return self.machine.task

    def reset(self, seed: int | None = None, options: dict | None = None) -> None:
        """Start a dialogue (options: see ``DialogueMachine.new_state``). Transactional: a bad seed or option
        raises, and the env keeps its dialogue, its turn and its random state as they were."""
        seed = as_seed(seed)
        options = as_dict(options, "reset(options=...)")
        unknown = [k for k in options if k not in NEW_STATE_OPTIONS]
        if unknown:  # PettingZoo's api_test resets with options={"options": 1}: say so, but go on
            warnings.warn(f"ignoring unknown reset option(s) {', '.join(map(repr, unknown))}; known: "
                          f"{', '.join(map(repr, NEW_STATE_OPTIONS))}", stacklevel=2)
            options = {k: v for k, v in options.items() if k in NEW_STATE_OPTIONS}
        options = self.machine.check_options(options)
        rng, saved = self._np_random, (None if self._np_random is None else self._np_random.bit_generator.state)
        try:  # the same seeding as RefuelDialogueEnv.reset, so that equal seeds give equal dialogues
            if seed is not None or self._np_random is None:
                self._np_random, _ = seeding.np_random(seed)
            dialogue = self.machine.new_state(int(self._np_random.integers(2**62)), options)
        except BaseException:
            self._np_random = rng
            if saved is not None:
                rng.bit_generator.state = saved
            raise
        self.dialogue = dialogue
        self._pending, self._preview = None, None
        self.agents = self.possible_agents[:]
        self.rewards = {a: 0.0 for a in self.agents}
        self._cumulative_rewards = {a: 0.0 for a in self.agents}
        self.terminations = {a: False for a in self.agents}
        self.truncations = {a: False for a in self.agents}
        info = {"turn": self.dialogue.turn, "horizon": self.dialogue.horizon}
        self.infos = {a: dict(info) for a in self.agents}
        self.agent_selection = ASSISTANT

    def observe(self, agent: str) -> dict:
        s = self.dialogue
        messages = [{"role": m["role"], "content": m["content"]} for m in s.messages]
        if self._pending is not None:
            messages.append({"role": "assistant", "content": self._pending})
        obs = {"messages": tuple(messages), "turn": s.turn + (self._pending is not None)}
        if agent == USER:
            obs["goal"] = _goal_text(s.goal)
        return obs

    def step(self, action: Any) -> None:
        agent = self.agent_selection
        if self.terminations[agent] or self.truncations[agent]:
            self._was_dead_step(action)
            return
        if self.dialogue is None:
            raise RuntimeError("call reset() before step()")
        if agent == ASSISTANT:
            (action,) = self.machine.validate([self.dialogue], [action])  # a bad message raises and changes nothing
            if self.dialogue.turn + 1 >= self.dialogue.horizon:  # the last turn: no user reply follows
                self._apply(self.machine.step([self.dialogue], [action])[0])
            else:
                self._pending = action
                self._cumulative_rewards[ASSISTANT] = 0.0
                self._clear_rewards()
                self.agent_selection = USER
            return
        if not isinstance(action, str):
            raise TypeError(f"the user's action must be its message as a str, got {type(action).__name__}; "
                            f"end the message with {END_MARKER!r} to close the dialogue")
        action = as_text(action, "the user's message")
        content, end = split_end_marker(action)
        if self._preview is not None and self._preview[:2] == (content, end):
            # the user seat said what the simulator said (SimulatedUser): adopt that very step
            self.dialogue, result = self._preview[2], self._preview[3]
        else:
            result = self.machine.step([self.dialogue], [self._pending], user_replies=[UserTurn(content, end=end)])[0]
        self._apply(result)

    def _apply(self, r: StepResult) -> None:
        """Publish the outcome of one exchange (the assistant's message and, unless it ended, the reply)."""
        self._pending, self._preview = None, None
        self._cumulative_rewards[self.agent_selection] = 0.0
        self.rewards = {ASSISTANT: float(r.reward), USER: float(r.reward) if self.user_reward == "shared" else 0.0}
        self.infos = {a: copy.deepcopy(r.info) for a in self.agents}
        self.terminations = {a: bool(r.terminated) for a in self.agents}
        self.truncations = {a: bool(r.truncated) for a in self.agents}
        self._accumulate_rewards()
        self.agent_selection = ASSISTANT
        if r.terminated or r.truncated:
            self._deads_step_first()

    # --------------------------------------------------------------- the simulator in the user seat
    def simulate_user_reply(self) -> str:
        """What the env's user simulator would say now, as a user action (``END_MARKER`` appended when
        it ends the dialogue). Playing exactly this action makes the exchange the one the Gymnasium env
        would have run: same user random state, memory, reward and info (the step is computed here, on
        a copy, and adopted when the user seat plays it)."""
        if self.agent_selection != USER or self._pending is None:
            raise RuntimeError("simulate_user_reply() is for the user's turn, after the assistant has spoken")
        if self.terminations.get(USER) or self.truncations.get(USER):
            raise RuntimeError("the dialogue is over; call reset()")
        preview = self.dialogue.copy()
        result = self.machine.step([preview], [self._pending])[0]
        content = preview.messages[-1]["content"]
        self._preview = (content, preview.ended_by_user, preview, result)
        return f"{content} {END_MARKER}" if preview.ended_by_user else content

    # --------------------------------------------------------------- state, rendering
    def get_state(self) -> DialogueState:
        """A deep copy of the dialogue state (without a pending, not yet answered assistant message)."""
        return self.dialogue.copy()

    def state(self) -> np.ndarray:
        raise NotImplementedError("the global state of a dialogue is text; use get_state()")

    def render(self) -> str | None:
        if self.render_mode != "ansi" or self.dialogue is None:
            return None
        obs = self.observe(ASSISTANT)
        return "\n".join(f"[{m['role']}] {m['content']}" for m in obs["messages"])

    def close(self) -> None:
        close = getattr(self.machine.user, "close", None)
        if close:
            close()


class SimulatedUser:
    """A user-seat policy that is the env's own user simulator::

        user = SimulatedUser(env)
        action = user(obs)   # on the user's turn

    The dialogue then goes exactly as in the Gymnasium env with the same seed and options.
    """

    def __init__(self, env: AECEnv):
        self.env = env.unwrapped
        if not isinstance(self.env, raw_env):
            raise TypeError(f"SimulatedUser needs a refuel_env.multiagent env, got {type(self.env).__name__}")

    def __call__(self, observation: Any = None) -> str:
        return self.env.simulate_user_reply()


def env(**kwargs: Any) -> AECEnv:
    """The AEC env wrapped in PettingZoo's ``OrderEnforcingWrapper`` (classic-env style)."""
    return OrderEnforcingWrapper(raw_env(**kwargs))


def parallel_env(**kwargs: Any):
    """The parallel view, through ``turn_based_aec_to_parallel`` (see the module docstring)."""
    return turn_based_aec_to_parallel(env(**kwargs))


__all__ = ["env", "raw_env", "parallel_env", "SimulatedUser", "END_MARKER", "split_end_marker", "ASSISTANT", "USER"]
