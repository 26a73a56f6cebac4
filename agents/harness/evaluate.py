"""Evaluation as in the REFUEL paper: win rate against the reference policy pi_0 at every turn.

Protocol. The trained policy and pi_0 each hold ``n`` dialogues on held-out opening states
(``split="eval"``), every one with horizon H_max, against the same user simulator with the same seeds:
both sides draw their episode seeds (hidden goal, user and judge random states) from a ``numpy`` generator
seeded with ``(seed, 0)`` and their per-turn sampling seeds from one seeded with ``(seed, 1)``, so dialogue i
starts from the same state on both sides, turn t of both sides is sampled with the same seed, and the first k
of n held-out dialogues are exactly the k dialogues of an evaluation with n = k (learning-curve points use such
a prefix of the final evaluation's dialogues: the same protocol). For each turn h = 1..H_max
the judge compares the two dialogues as they stood after turn h (``judge.compare`` on the state
snapshots; a dialogue that ended earlier, e.g. by a correct guess, counts with its last state); ties
count one half. The mean judge score per turn is reported for both sides.

Decoding: *sampled*, at the trained policy's temperature (or ``temperature=`` if given), identical for
both sides; greedy decoding only with ``temperature=0``. Sampling is what the policy is trained to do,
and with fixed seeds it is exactly reproducible.

Confidence intervals: percentile bootstrap (95%), seeded, over dialogues; across training seeds,
hierarchical (resample seeds, then dialogues within each seed) by :func:`hierarchical_bootstrap_ci`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from refuel_env.core import machine_of
from refuel_env.types import SamplingParams

from ..engine import progress as progress_bars
from ..engine.policy import Policy
from ..engine.rollout import RolloutEngine


# ------------------------------------------------------------------------------------------ bootstrap
def bootstrap_ci(values: Sequence[float], n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (seeded, so the same data give the same CI)."""
    x = np.asarray(values, dtype=float).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size == 1 or np.all(x == x[0]):
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def hierarchical_bootstrap_ci(groups: Sequence[Sequence[float]], n_boot: int = 2000, seed: int = 0,
                              level: float = 0.95) -> tuple[float, float]:
    """Bootstrap CI of the mean of group means: resample groups (training seeds) with replacement, then the
    values (dialogues) within each drawn group. With one group it is :func:`bootstrap_ci`."""
    gs = [np.asarray(g, dtype=float).ravel() for g in groups]
    gs = [g[np.isfinite(g)] for g in gs]
    gs = [g for g in gs if g.size]
    if not gs:
        return float("nan"), float("nan")
    if len(gs) == 1:
        return bootstrap_ci(gs[0], n_boot, seed, level)
    rng = np.random.default_rng(seed)
    k = len(gs)
    # per group, n_boot within-group resample means (independent draws for every slot of every replicate)
    picks = rng.integers(0, k, size=(n_boot, k))
    inner = np.stack([g[rng.integers(0, g.size, size=(n_boot, k, g.size))].mean(-1) for g in gs])  # [groups, n_boot, k]
    stats = inner[picks, np.arange(n_boot)[:, None], np.arange(k)[None, :]].mean(1)
    a = (1 - level) / 2
    return float(np.quantile(stats, a)), float(np.quantile(stats, 1 - a))


# ------------------------------------------------------------------------------------------ rollouts
@dataclass
class Rollouts:
    """n evaluation dialogues: final states and the state after every turn (``snaps[i][h-1]``)."""

    finals: list
    snaps: list
    tokens_generated: int
    seconds: float
    seed: int
    temperature: float


DEFAULT_SAMPLING = SamplingParams(max_new_tokens=24, temperature=1.0)
"""The agents' default sampling (``AgentConfig``): what evaluation uses when it is told nothing else."""


def rollout(speaker: Any, env: Any, n: int, seed: int, params: SamplingParams = DEFAULT_SAMPLING,
            horizon: int | None = None, on_turn=None) -> Rollouts:
    """n held-out dialogues of ``speaker`` (a Policy, sampled with ``params``, or anything with ``act``), all with
    horizon H_max; ``on_turn(live_states)`` after every batched turn."""
    eng = RolloutEngine(env)
    H = int(horizon or eng.machine.max_turns)
    t0 = time.perf_counter()
    temp = float(params.temperature) if isinstance(speaker, Policy) else float("nan")
    finals, snaps = eng.dialogues(n, speaker, np.random.default_rng([seed, 0]), params, split="eval",
                                  horizons=[H] * n, snapshots=True, sampling_rng=np.random.default_rng([seed, 1]),
                                  on_turn=on_turn)
    return Rollouts(finals, snaps, int(eng.stats["tokens_generated"]), time.perf_counter() - t0, seed, temp)


def state_at_turn(snaps: Sequence, h: int):
    """The dialogue after turn h; a dialogue that ended earlier counts with its last state."""
    if not snaps:
        raise ValueError("a dialogue without any turn cannot be judged")
    return snaps[min(h, len(snaps)) - 1]


def score_at_turn(state, h: int) -> float:
    return float(state.scores[min(h, len(state.scores)) - 1]) if state.scores else float("nan")


def compare_at_turns(judge: Any, a: Rollouts, b: Rollouts, horizon: int, on_turn=None) -> np.ndarray:
    """[n, H]: probability that dialogue i of ``a`` beats that of ``b`` at turn h (0.5 a tie).
    ONE batched ``judge.compare`` call per turn; judges without ``compare`` are compared by ``score``."""
    if len(a.finals) != len(b.finals):
        raise ValueError(f"cannot pair {len(a.finals)} dialogues with {len(b.finals)}")
    for i, (sa, sb) in enumerate(zip(a.finals, b.finals)):
        if sa.goal != sb.goal or sa.messages[0] != sb.messages[0]:
            raise ValueError(f"evaluation dialogue {i} starts from different states on the two sides; both "
                             "rollouts must use the same env configuration and seed")
    out = np.zeros((len(a.finals), horizon))
    for h in range(1, horizon + 1):
        sa = [state_at_turn(s, h) for s in a.snaps]
        sb = [state_at_turn(s, h) for s in b.snaps]
        if hasattr(judge, "compare"):
            p = np.asarray(judge.compare(sa, sb), dtype=float)
        else:
            va = np.array([x.value for x in judge.score(sa)])
            vb = np.array([x.value for x in judge.score(sb)])
            p = np.where(va == vb, 0.5, (va > vb).astype(float))
        out[:, h - 1] = p
        if on_turn is not None:
            on_turn(h)
    return out


# ------------------------------------------------------------------------------------------ results
@dataclass
class EvalResult:
    """Per-turn win rates against pi_0 (h = 1..H_max) and mean judge scores, with 95% bootstrap CIs."""

    turns: list
    win_rate: list
    win_ci: list
    score: list
    score_ci: list
    reference_score: list
    n_dialogues: int
    seed: int
    temperature: float
    tokens_generated: int
    seconds: float
    wins: list = field(default_factory=list)  # [n][H] per-dialogue outcomes
    scores: list = field(default_factory=list)  # [n][H] the policy's judge scores
    examples: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EvalResult":
        return cls(**d)

    def summary(self) -> dict[str, float]:
        """Flat scalars for logs: eval/win_rate_t{h}, eval/score_t{h}, and the final turn's."""
        out = {}
        for h, w, s in zip(self.turns, self.win_rate, self.score):
            out[f"eval/win_rate_t{h}"] = w
            out[f"eval/score_t{h}"] = s
        out["eval/win_rate"] = self.win_rate[-1]
        out["eval/score"] = self.score[-1]
        return out


def dialogue_record(finals: Sequence, i: int) -> dict:
    s = finals[i]
    return {"goal": s.goal, "messages": [dict(m) for m in s.messages], "scores": list(s.scores)}


class Evaluator:
    """Evaluates policies against a fixed reference on a fixed held-out set; pi_0's side is rolled out once
    (per temperature) and reused for every policy, seed and iteration.

    Args:
        env: the environment (single, vector or wrapped ``RefuelDialogue-v0``).
        reference: pi_0.
        n_dialogues: held-out dialogues.
        seed: seeds the opening states and sampling of both sides.
        params: how pi_0 samples (and an evaluated policy, unless its own are given).
        temperature: sampling temperature of both sides; None: the evaluated policy's.
        examples: example dialogue pairs kept in the result.
        n_boot: bootstrap resamples.
        progress: a progress bar per evaluation (None: unless progress bars are off process-wide).
        desc: the bar's label.
    """

    def __init__(self, env: Any, reference: Any, n_dialogues: int = 64, seed: int = 1234,
                 params: SamplingParams | None = None, temperature: float | None = None, examples: int = 3,
                 n_boot: int = 2000, progress: bool | None = None, desc: str = "evaluating"):
        if n_dialogues < 1:
            raise ValueError(f"n_dialogues must be >= 1, got {n_dialogues}")
        self.env, self.reference = env, reference
        self.machine = machine_of(env)
        self.params = params or DEFAULT_SAMPLING
        self.n, self.seed, self.temperature = int(n_dialogues), int(seed), temperature
        self.examples, self.n_boot = int(examples), int(n_boot)
        self.horizon = int(self.machine.max_turns)
        self.progress, self.desc = progress, desc
        self._ref_cache: dict = {}
        self._bar = None

    def _tick(self, *_) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def reference_rollouts(self, temperature: float) -> Rollouts:
        if temperature not in self._ref_cache:
            params = dataclasses.replace(self.params, temperature=temperature)
            self._ref_cache[temperature] = rollout(self.reference, self.env, self.n, self.seed, params, self.horizon,
                                                   on_turn=self._tick)
        return self._ref_cache[temperature]

    def __call__(self, policy: Any, params: SamplingParams | None = None) -> EvalResult:
        """Evaluate a Policy sampled with ``params`` (default: pi_0's), an agent's policy (an object with
        ``policy`` and ``sampling``), or any speaker with ``act``."""
        if not isinstance(policy, Policy) and isinstance(getattr(policy, "policy", None), Policy):
            params = params or getattr(policy, "sampling", None)
            policy = policy.policy  # an agent: its own act() would draw on (and advance) the agent's random state
        params = params or self.params
        if self.temperature is not None:
            temp = float(self.temperature)
        else:
            temp = float(params.temperature if isinstance(policy, Policy) else self.params.temperature)
        H = self.horizon  # bar: turns of pi_0's side (once per temperature), of the policy's side, judged turns
        total = H * ((temp not in self._ref_cache) + (policy is not self.reference) + 1)
        self._bar = progress_bars.bar(self.progress, total=total, desc=self.desc, unit="turn", leave=False)
        try:
            ref = self.reference_rollouts(temp)
            mine = ref if policy is self.reference else rollout(policy, self.env, self.n, self.seed,
                                                                dataclasses.replace(params, temperature=temp), H,
                                                                on_turn=self._tick)
            return self.result(mine, ref)
        finally:
            self._bar.close()
            self._bar = None

    def result(self, mine: Rollouts, ref: Rollouts) -> EvalResult:
        H = self.horizon
        wins = compare_at_turns(self.machine.judge, mine, ref, H, on_turn=self._tick)
        scores = np.array([[score_at_turn(s, h) for h in range(1, H + 1)] for s in mine.finals])
        ref_scores = np.array([[score_at_turn(s, h) for h in range(1, H + 1)] for s in ref.finals])
        examples = []
        for i in range(min(self.examples, len(mine.finals))):
            examples.append({"policy": dialogue_record(mine.finals, i), "reference": dialogue_record(ref.finals, i),
                             "win_final_turn": float(wins[i, -1])})
        return EvalResult(
            turns=list(range(1, H + 1)),
            win_rate=[float(x) for x in wins.mean(0)],
            win_ci=[list(bootstrap_ci(wins[:, h], self.n_boot, self.seed + h)) for h in range(H)],
            score=[float(x) for x in np.nanmean(scores, 0)],
            score_ci=[list(bootstrap_ci(scores[:, h], self.n_boot, self.seed + h)) for h in range(H)],
            reference_score=[float(x) for x in np.nanmean(ref_scores, 0)],
            n_dialogues=len(mine.finals), seed=self.seed, temperature=mine.temperature,
            tokens_generated=mine.tokens_generated, seconds=mine.seconds,
            wins=wins.tolist(), scores=scores.tolist(), examples=examples)


def evaluate(policy: Any, env: Any, reference: Any, n_dialogues: int = 64, seed: int = 1234,
             params: SamplingParams | None = None, temperature: float | None = None, examples: int = 3,
             n_boot: int = 2000) -> EvalResult:
    """Per-turn win rate of ``policy`` (a Policy, or an agent) against ``reference`` and mean judge score per turn
    (see the module doc); both sides sample with ``params`` (an agent's own by default)."""
    params = params or getattr(policy, "sampling", None)
    return Evaluator(env, reference, n_dialogues, seed, params, temperature, examples, n_boot)(policy)
