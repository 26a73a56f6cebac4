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
    finals: list = field(default_factory=list)  # the two final states of each pair (multi-turn targets train on them)
    drawn_turns: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # h of every pair drawn, kept or not


TARGETS = ("relative_future", "last_turn", "multi_turn")
"""What a pair's two responses are and what they are scored by: "relative_future" (REFUEL: h ~ U{1..H}, each
branch continued to H, the judge's score at H), "last_turn" (h = H: the last turn's score, nothing to continue),
"multi_turn" (h = 1: the whole dialogue is the response, scored at its end)."""


def draw_pair_turns(rng: np.random.Generator, n: int, hmax: int, target: str) -> tuple[np.ndarray, np.ndarray]:
    """The horizons H ~ U{1..H_max} and branching turns h of n pairs: h ~ U{1..H} for the relative future (the
    reference code's order: H first, then h <= H), h = H for last-turn targets, h = 1 for multi-turn ones.
    :func:`pair_turn_probabilities` is their law."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    horizons = rng.integers(1, hmax + 1, size=n)
    if target == "last_turn":
        return horizons, horizons.copy()
    if target == "multi_turn":
        return horizons, np.ones_like(horizons)
    return horizons, np.array([rng.integers(1, H + 1) for H in horizons], dtype=horizons.dtype)


def pair_turn_probabilities(hmax: int, target: str) -> list[tuple[int, int, float]]:
    """(H, h, P(H, h)) of :func:`draw_pair_turns` (for plans and expected budgets)."""
    def turns(H):
        return [H] if target == "last_turn" else [1] if target == "multi_turn" else range(1, H + 1)

    return [(H, h, 1.0 / hmax / len(turns(H))) for H in range(1, hmax + 1) for h in turns(H)]


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
    def pairs(self, n: int, rng: np.random.Generator, rollin: Any, responder: Any, target: str,
              params: SamplingParams, continuations: int = 1, split: str = "train") -> tuple[PairData, dict]:
        """Draw H and h (:func:`draw_pair_turns`), roll in to s_h with ``rollin``, draw two responses from
        ``responder``, and (unless ``target="last_turn"``) continue each branch to H with ``responder``, ``continuations``
        times: Q-hat is the mean of the judge's scores at H. The two branches of a pair share the user's and the
        judge's random state (common random numbers); continuation k > 0 of both branches reseeds them alike.

        Returns the pairs and counts of what was dropped (dialogues that ended before turn h).
        """
        if continuations < 1 or (continuations > 1 and target != "relative_future"):
            raise ValueError(f"continuations must be 1, or > 1 with the relative-future target; got {continuations} "
                             f"with target {target!r}")
        horizons, turns = draw_pair_turns(rng, n, self.machine.max_turns, target)
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
            return PairData([], [], np.zeros((0, 2)), np.zeros(0, int), np.zeros(0, int), drawn_turns=turns), dropped
        seed = int(rng.integers(2**31))
        first = self.speak(responder, branches, seed + before, params) if branches else []
        if branches:
            self.step_with(branches, first)
        self.stats["dialogues"] += len(roots)  # each pair adds one more dialogue (the second branch)
        futures = branches
        if target != "last_turn" and continuations > 1:
            futures = self.continuation_copies(branches, continuations, int(rng.integers(2**31)))
            self.stats["dialogues"] += len(branches) * (continuations - 1)
        if target != "last_turn":
            self.advance(futures, responder, rng, params)
        q = np.array([s.scores[-1] for s in futures], dtype=float).reshape(len(roots), 2, -1).mean(-1) if roots \
            else np.zeros((0, 2))  # this process has no pair, another has (a multi-process launch)
        return PairData(contexts=[r.messages for r in roots], responses=list(zip(first[0::2], first[1::2])),
                        returns=q, turns=turns[ok], horizons=horizons[ok],
                        finals=list(zip(branches[0::2], branches[1::2])), drawn_turns=turns), dropped

    def continuation_copies(self, branches: Sequence[DialogueState], k: int, seed: int) -> list[DialogueState]:
        """k copies of every branch, in the order pair, branch, copy (copy 0 is the branch itself); copy c > 0 of
        both branches of pair i gets the same fresh user and judge random states, drawn from (seed, i, c)."""
        out = []
        for j, b in enumerate(branches):
            out.append(b)
            for c, copy in enumerate(self.machine.branch(b, k - 1), start=1):
                copy.user_rng = np.random.default_rng([seed, j // 2, c, 1])
                copy.judge_rng = np.random.default_rng([seed, j // 2, c, 2])
                out.append(copy)
        return out

    # ------------------------------------------------------------------ whole dialogues
    def dialogues(self, n: int, speaker: Any, rng: np.random.Generator, params: SamplingParams, split: str = "train",
                  horizons: Sequence[int] | None = None, snapshots: bool = False,
                  sampling_rng: np.random.Generator | None = None, on_turn: Callable | None = None):
        """Roll out n whole dialogues. With ``snapshots``, also the state after every turn: snaps[i][h-1].
        ``on_turn(live_states)`` is called after every batched turn (e.g. to show progress).

        Episode seeds come from ``rng``; the per-turn sampling seeds from ``sampling_rng`` (default: ``rng`` too).
        With two generators the first k of n dialogues are exactly the k dialogues of the same call with n = k."""
        states = self.new_states(n, rng, split, horizons)
        snaps: list[list] = [[] for _ in states]
        index = {id(s): i for i, s in enumerate(states)}

        def record(live):
            if snapshots:
                for s in live:
                    snaps[index[id(s)]].append(s.copy())
            if on_turn is not None:
                on_turn(live)

        self.advance(states, speaker, sampling_rng or rng, params, on_turn=record if snapshots or on_turn else None)
        return (states, snaps) if snapshots else states

