"""A Gymnasium wrapper that makes the dialogue env trainable with stable-baselines3.

SB3 algorithms need a ``Discrete`` or ``Box`` action and a numeric observation. :class:`CandidateChoiceWrapper`
turns a :class:`~refuel_env.env.RefuelDialogueEnv` into that:

- action: ``Discrete(K)``, the index of one of K candidate responses supplied by a *candidate source*:
  a fixed list of texts (:class:`FixedCandidates`; for guess-item, :func:`guess_item_candidates` gives
  every attribute question and every item guess in fixed phrasing), or a text-generation back end
  (:class:`GeneratedCandidates`: K sampled responses per turn, one batched ``generate`` call).
- observation: a ``Box(0, 1, (D,), float32)`` vector from a *featuriser*: for guess-item,
  :class:`GuessItemFeatures` (the facts the conversation has revealed so far, read from its text,
  plus one-hot turn and horizon); otherwise :class:`HashingFeatures` (a hashed bag of words of the
  conversation, of its last user message and of each candidate, plus one-hot turn and horizon).

Reward, termination, truncation and info are the wrapped env's (``info["action_text"]`` is the text played)::

    from stable_baselines3 import PPO
    from refuel_env.sb3 import make_sb3_env
    env = make_sb3_env(horizon="fixed", reward_mode="per_turn")
    PPO("MlpPolicy", env).learn(20_000)
"""

from __future__ import annotations

import re
import zlib
from typing import Any, Protocol, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .env import RefuelDialogueEnv
from .tasks.guess_item import ATTRIBUTE_NAMES, ATTRIBUTES, GuessItemTask
from .types import Conversation, DialogueState, SamplingParams


# ------------------------------------------------------------------------------------------ candidates
class CandidateSource(Protocol):
    """K candidate responses for each dialogue, batched."""

    k: int

    def candidates(self, states: Sequence[DialogueState]) -> list[list[str]]:
        ...


class FixedCandidates:
    """The same K texts at every turn."""

    def __init__(self, texts: Sequence[str]):
        texts = list(texts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("FixedCandidates needs a non-empty list of str")
        self.texts, self.k = texts, len(texts)

    def candidates(self, states: Sequence[DialogueState]) -> list[list[str]]:
        return [list(self.texts) for _ in states]


class GeneratedCandidates:
    """K responses sampled from a text-generation back end (``backend.generate(conversations, params, seeds)``)
    for each dialogue: one batched call for all dialogues and candidates. ``seeds`` come from
    :meth:`seed`, so a seeded ``reset`` gives the same candidates."""

    def __init__(self, backend: Any, k: int, params: SamplingParams | None = None):
        if not hasattr(backend, "generate"):
            raise TypeError(f"backend {backend!r} has no generate(conversations, params, seeds) method")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.backend, self.k = backend, int(k)
        self.params = params or SamplingParams(max_new_tokens=48, temperature=1.0)
        self.rng = np.random.default_rng()

    def seed(self, seed: int | None) -> None:
        self.rng = np.random.default_rng(seed)

    def candidates(self, states: Sequence[DialogueState]) -> list[list[str]]:
        conversations: list[Conversation] = [[dict(m) for m in s.messages] for s in states for _ in range(self.k)]
        seeds = [int(x) for x in self.rng.integers(2**31 - 1, size=len(conversations))]
        out = self.backend.generate(conversations, self.params, seeds)
        if len(out) != len(conversations) or not all(isinstance(t, str) for t in out):
            raise RuntimeError(f"backend returned {len(out)} texts for {len(conversations)} conversations; "
                               "generate() must return one str per conversation")
        return [list(out[i * self.k:(i + 1) * self.k]) for i in range(len(states))]


def guess_item_candidates(task: GuessItemTask) -> list[str]:
    """Every attribute question, then a guess of every item, in fixed phrasing (K = 8 + n_items)."""
    return [ATTRIBUTES[a][0][0] for a in ATTRIBUTE_NAMES] + [f"Is it a {item}?" for item in task.items]


# ------------------------------------------------------------------------------------------ features
def _one_hot(i: int, n: int) -> np.ndarray:
    v = np.zeros(n, dtype=np.float32)
    v[min(max(i, 0), n - 1)] = 1.0
    return v


class GuessItemFeatures:
    """What the assistant has learnt in a guess-item dialogue, from its text: for each attribute
    (answered yes, answered no), for each item (guessed and wrong), the posterior probability of each
    item given these answers (``task.posterior``: a function of the same facts, which spares the policy
    from learning Bayes' rule), one-hot turn (0..H_max) and one-hot horizon (1..H_max). Candidates are
    fixed, so they are not encoded."""

    def __init__(self, task: GuessItemTask):
        self.task = task
        self.n_attr, self.n_items, self.h = len(ATTRIBUTE_NAMES), task.n_items, task.max_turns
        self.dim = 2 * self.n_attr + 2 * self.n_items + (self.h + 1) + self.h

    def encode(self, state: DialogueState, candidates: Sequence[str]) -> np.ndarray:
        v = np.zeros(2 * self.n_attr + self.n_items, dtype=np.float32)
        facts = self.task.facts_from_messages(state.messages)
        for kind, key, value in facts:
            if kind == "attr":
                v[2 * ATTRIBUTE_NAMES.index(key) + (0 if value else 1)] = 1.0
            elif not value and key in self.task.items:
                v[2 * self.n_attr + self.task.items.index(key)] = 1.0
        posterior = self.task.posterior(facts).astype(np.float32)
        return np.concatenate([v, posterior, _one_hot(state.turn, self.h + 1), _one_hot(state.horizon - 1, self.h)])


_WORD = re.compile(r"\w+")


class HashingFeatures:
    """A generic featuriser: hashed word-presence vectors (crc32, stable across processes) of the whole
    conversation, of its last user message and of each of the K candidates, plus one-hot turn and horizon."""

    def __init__(self, k: int, max_turns: int, dim: int = 128, candidate_dim: int = 32):
        self.k, self.h, self.dim_conv, self.dim_cand = int(k), int(max_turns), int(dim), int(candidate_dim)
        self.dim = 2 * self.dim_conv + self.k * self.dim_cand + (self.h + 1) + self.h

    @staticmethod
    def _bag(text: str, dim: int, out: np.ndarray) -> None:
        for w in _WORD.findall(text.lower()):
            out[zlib.crc32(w.encode()) % dim] = 1.0

    def encode(self, state: DialogueState, candidates: Sequence[str]) -> np.ndarray:
        conv, last = np.zeros(self.dim_conv, np.float32), np.zeros(self.dim_conv, np.float32)
        for m in state.messages:
            self._bag(f"{m['role']} {m['content']}", self.dim_conv, conv)
        users = [m["content"] for m in state.messages if m["role"] == "user"]
        self._bag(users[-1] if users else "", self.dim_conv, last)
        cands = np.zeros((self.k, self.dim_cand), np.float32)
        for j, c in enumerate(list(candidates)[: self.k]):
            self._bag(c, self.dim_cand, cands[j])
        return np.concatenate([conv, last, cands.ravel(), _one_hot(state.turn, self.h + 1), _one_hot(state.horizon - 1, self.h)])


# ------------------------------------------------------------------------------------------ the wrapper
class CandidateChoiceWrapper(gym.Wrapper):
    """``Discrete(K)`` actions and ``Box`` observations over a dialogue env (see the module docstring).

    Args:
        env: a ``RefuelDialogueEnv`` (or a wrapper of one, e.g. from ``gym.make("RefuelDialogue-v0")``).
        candidates: a list of texts, a :class:`CandidateSource`, or a back end with ``generate`` (then
            ``num_candidates`` responses are sampled per turn). Default for guess-item: :func:`guess_item_candidates`.
        features: an object with ``dim`` and ``encode(state, candidates)``; default :class:`GuessItemFeatures`
            for guess-item with fixed candidates, :class:`HashingFeatures` otherwise.
        num_candidates: K when ``candidates`` is a back end.
    """

    def __init__(self, env: gym.Env, candidates: Any = None, features: Any = None, num_candidates: int = 4):
        super().__init__(env)
        base = env.unwrapped
        if not isinstance(base, RefuelDialogueEnv):
            raise TypeError(f"CandidateChoiceWrapper wraps a RefuelDialogueEnv, got {type(base).__name__}")
        task = base.task
        if candidates is None:
            if not isinstance(task, GuessItemTask):
                raise ValueError(f"task {task.task_id!r} has no built-in candidate list; pass candidates= (a list of "
                                 "texts, a CandidateSource, or a back end with generate())")
            candidates = guess_item_candidates(task)
        if isinstance(candidates, (list, tuple)):
            candidates = FixedCandidates(candidates)
        elif hasattr(candidates, "generate") and not hasattr(candidates, "candidates"):
            candidates = GeneratedCandidates(candidates, num_candidates)
        if not hasattr(candidates, "candidates") or not hasattr(candidates, "k"):
            raise TypeError("candidates must be a list of str, a CandidateSource (k, candidates(states)) or a back end")
        if features is None:
            fixed_guess_item = isinstance(task, GuessItemTask) and isinstance(candidates, FixedCandidates)
            features = GuessItemFeatures(task) if fixed_guess_item else HashingFeatures(candidates.k, base.machine.max_turns)
        self.source, self.features = candidates, features
        self.action_space = spaces.Discrete(candidates.k)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(features.dim,), dtype=np.float32)
        self._candidates: list[str] = []

    def _observe(self, done: bool = False) -> np.ndarray:
        state = self.env.unwrapped.state
        # one batched candidate call per turn; none after the last turn
        self._candidates = [""] * self.source.k if done else self.source.candidates([state])[0]
        obs = self.features.encode(state, self._candidates)
        return np.asarray(obs, dtype=np.float32)

    @property
    def candidates(self) -> list[str]:
        """The K texts the actions stand for right now."""
        return list(self._candidates)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        _, info = self.env.reset(seed=seed, options=options)
        if seed is not None and hasattr(self.source, "seed"):
            self.source.seed(seed)
        return self._observe(), info

    def step(self, action: Any):
        try:
            index = int(np.asarray(action).item())
        except (TypeError, ValueError):
            raise TypeError(f"the action must be a candidate index (an int in 0..{self.source.k - 1}), got {action!r}") from None
        if not 0 <= index < self.source.k:
            raise ValueError(f"action {index} is not a candidate index in 0..{self.source.k - 1}")
        text = self._candidates[index]
        _, reward, terminated, truncated, info = self.env.step(text)
        info = {**info, "action_text": text}
        return self._observe(terminated or truncated), float(reward), terminated, truncated, info


def make_sb3_env(candidates: Any = None, features: Any = None, num_candidates: int = 4, **env_kwargs: Any) -> CandidateChoiceWrapper:
    """``CandidateChoiceWrapper(RefuelDialogueEnv(**env_kwargs), ...)``: an env for stable-baselines3."""
    return CandidateChoiceWrapper(RefuelDialogueEnv(**env_kwargs), candidates, features, num_candidates)


__all__ = ["CandidateChoiceWrapper", "make_sb3_env", "FixedCandidates", "GeneratedCandidates", "CandidateSource",
           "guess_item_candidates", "GuessItemFeatures", "HashingFeatures"]
