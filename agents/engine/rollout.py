"""The shared rollout engine: every agent collects its data through it.

It drives the environment's batched state machine (``env.machine``, the same one the vector env steps)
with ONE batched generation call and ONE batched ``core.step`` (one user call, one judge call) per
turn for all dialogues in flight. It can

- start N dialogues (train or held-out split; horizons given or drawn by the env),
- roll in to turn h with a chosen speaker (current policy, reference policy, or the offline data's
  behaviour policy),
- branch K responses at turn h (deep copies of the state: same hidden goal, same user random state),
- continue each branch to the horizon with a chosen speaker, the judge scoring at the end.

A *speaker* is a :class:`~agents.engine.policy.Policy` (sampled with the :class:`~refuel_env.SamplingParams`
passed to each call) or any object with ``act(conversations) -> list[str]``.

Under a multi-process launch (``dist``, see :mod:`agents.distributed`) an engine rolls out its process's
contiguous block of the n dialogues asked for: every process draws the same numbers from ``rng``, and row j
of a generation call (counted over the rows of all processes) is sampled with ``seed + j``, so the union of
the processes' dialogues is what one process rolls out with the same ``rng``. (Exactly so for Policy
speakers and for users and judges that seed from the dialogue state; a speaker with ``act`` and a random
state of its own, such as the offline demonstrator, draws its own stream in each process.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from refuel_env.core import machine_of
from refuel_env.types import DialogueState, SamplingParams

from .distributed import SINGLE, Distributed
from .policy import Policy


@dataclass
class PairData:
    """Two responses at the same state s_h, each with its Monte-Carlo return."""

    contexts: list  # s_h as messages (ends with the user message of turn h)
    responses: list  # [(a, a')] texts
    returns: np.ndarray  # [n, 2] Q-hat of each response
    turns: np.ndarray  # h of each pair
    horizons: np.ndarray  # H of each pair
    finals: list = field(default_factory=list)  # the two final states of each pair (for inspection/export)


def draw_pair_turns(rng: np.random.Generator, n: int, hmax: int, last_turn: bool) -> tuple[np.ndarray, np.ndarray]:
    """The horizons H ~ U{1..H_max} and branching turns h ~ U{1..H} (h = H for last-turn targets) of n pairs:
    the reference code's order (H first, then h <= H). :func:`pair_turn_probabilities` is their law."""
    horizons = rng.integers(1, hmax + 1, size=n)
    turns = horizons.copy() if last_turn else np.array([rng.integers(1, H + 1) for H in horizons])
    return horizons, turns


def pair_turn_probabilities(hmax: int, last_turn: bool) -> list[tuple[int, int, float]]:
    """(H, h, P(H, h)) of :func:`draw_pair_turns` (for plans and expected budgets)."""
    return [(H, h, 1.0 / hmax / (1 if last_turn else H)) for H in range(1, hmax + 1)
            for h in ([H] if last_turn else range(1, H + 1))]


class RolloutEngine:
    def __init__(self, env: Any, dist: Distributed | None = None):
        self.machine = machine_of(env)
        self.dist = dist or SINGLE
        self.stats = {"dialogues": 0, "tokens_generated": 0, "generate_calls": 0, "generate_seconds": 0.0,
                      "env_seconds": 0.0, "env_steps": 0}

    # ------------------------------------------------------------------ speakers
    def speak(self, speaker: Any, states: Sequence[DialogueState], seed: int, params: SamplingParams) -> list[str]:
        convs = [s.messages for s in states]
        t0 = time.perf_counter()
        if isinstance(speaker, Policy):
            gen = speaker.generate(convs, params, seed=seed)
            out = gen.texts
            self.stats["tokens_generated"] += gen.tokens
        elif hasattr(speaker, "act"):
            out = speaker.act(convs)
        else:
            raise TypeError(f"a speaker must be a Policy or have act(conversations); got {type(speaker).__name__}")
        self.stats["generate_seconds"] += time.perf_counter() - t0
        self.stats["generate_calls"] += 1
        limit = self.machine.max_message_chars
        return [t[:limit] for t in out]

    # ------------------------------------------------------------------ dialogues
    def new_states(self, n: int, rng: np.random.Generator, split: str = "train",
                   horizons: Sequence[int] | None = None) -> list[DialogueState]:
        """This process's block of n new dialogues (all of them in one process); all n seeds are drawn."""
        seeds = [int(rng.integers(2**62)) for _ in range(n)]
        lo, hi = self.dist.block(n)
        self.stats["dialogues"] += hi - lo
        per = None if horizons is None else [{"horizon": int(horizons[i])} for i in range(lo, hi)]
        return self.machine.new_states(seeds[lo:hi], {"split": split}, per_dialogue=per)

    def advance(self, states: Sequence[DialogueState], speaker: Any, rng: np.random.Generator, params: SamplingParams,
                until: Sequence[int] | None = None, on_turn: Callable | None = None) -> None:
        """Step every dialogue until it is done or has taken ``until[i]`` assistant turns."""
        stop = [s.horizon if until is None else min(int(until[i]), s.horizon) for i, s in enumerate(states)]
        while True:
            live = [i for i, s in enumerate(states) if not s.done and s.turn < stop[i]]
            before, total = self.dist.offset(len(live))  # rows of other processes sampled in the same call
            if not total:
                return
            seed = int(rng.integers(2**31))
            if not live:
                continue
            acts = self.speak(speaker, [states[i] for i in live], seed + before, params)
            t0 = time.perf_counter()
            self.machine.step([states[i] for i in live], acts)
            self.stats["env_seconds"] += time.perf_counter() - t0
            self.stats["env_steps"] += 1
            if on_turn is not None:
                on_turn([states[i] for i in live])

    def step_with(self, states: Sequence[DialogueState], actions: Sequence[str]) -> None:
        t0 = time.perf_counter()
        self.machine.step(list(states), list(actions))
        self.stats["env_seconds"] += time.perf_counter() - t0
        self.stats["env_steps"] += 1

    # ------------------------------------------------------------------ pairs
    def pairs(self, n: int, rng: np.random.Generator, rollin: Any, responder: Any, last_turn: bool,
              params: SamplingParams, split: str = "train") -> tuple[PairData, dict]:
        """Sample H ~ U{1..H_max}, h ~ U{1..H} (h = H when ``last_turn``), roll in to s_h with ``rollin``,
        draw two responses from ``responder``, and continue each branch to H with ``responder``.

        Returns the pairs and counts of what was dropped (dialogues that ended before turn h).
        """
        horizons, turns = draw_pair_turns(rng, n, self.machine.max_turns, last_turn)
        states = self.new_states(n, rng, split, horizons)
        lo, hi = self.dist.block(n)
        horizons, turns = horizons[lo:hi], turns[lo:hi]
        self.advance(states, rollin, rng, params, until=turns - 1)
        ok = [i for i, s in enumerate(states) if not s.done and s.turn == turns[i] - 1]
        dropped = {"ended_before_branch": len(states) - len(ok)}
        roots = [states[i] for i in ok]
        branches = [b for s in roots for b in self.machine.branch(s, 2)]
        before, total = self.dist.offset(len(branches))
        if not total:
            return PairData([], [], np.zeros((0, 2)), np.zeros(0, int), np.zeros(0, int)), dropped
        seed = int(rng.integers(2**31))
        first = self.speak(responder, branches, seed + before, params) if branches else []
        if branches:
            self.step_with(branches, first)
        self.stats["dialogues"] += len(roots)  # each pair adds one more dialogue (the second branch)
        if not last_turn:
            self.advance(branches, responder, rng, params)
        q = np.array([s.scores[-1] for s in branches], dtype=float).reshape(-1, 2)
        return PairData(contexts=[r.messages for r in roots], responses=list(zip(first[0::2], first[1::2])),
                        returns=q, turns=turns[ok], horizons=horizons[ok],
                        finals=list(zip(branches[0::2], branches[1::2]))), dropped

    # ------------------------------------------------------------------ whole dialogues
    def dialogues(self, n: int, speaker: Any, rng: np.random.Generator, params: SamplingParams, split: str = "train",
                  horizons: Sequence[int] | None = None, snapshots: bool = False, on_turn: Callable | None = None):
        """Roll out n whole dialogues. With ``snapshots``, also the state after every turn: snaps[i][h-1].
        ``on_turn(live_states)`` is called after every batched turn (e.g. to show progress)."""
        states = self.new_states(n, rng, split, horizons)
        snaps: list[list] = [[] for _ in states]
        index = {id(s): i for i, s in enumerate(states)}

        def record(live):
            if snapshots:
                for s in live:
                    snaps[index[id(s)]].append(s.copy())
            if on_turn is not None:
                on_turn(live)

        self.advance(states, speaker, rng, params, on_turn=record if snapshots or on_turn else None)
        return (states, snaps) if snapshots else states

