"""The outcome of one batched step, column by column, and the two forms of ``info`` built from it.

:class:`StepColumns` is what :meth:`DialogueMachine.step_columns` returns: one list per quantity (turn, score,
reward, ...) over the dialogues of a step. From it come

- :func:`step_results`: one :class:`StepResult` per dialogue, with the ``info`` dict of the single env;
- :func:`vector_infos`: the infos of a vector env in Gymnasium's format (an array per key with a ``_key`` mask,
  nested dicts recursively), equal to what ``VectorEnv._add_info`` makes of the per-dialogue infos, but built
  once per batch instead of one dialogue at a time.

:func:`batch_infos` batches any list of info dicts the same way (a key at a time).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .types import DialogueState, JudgeScore, UserTurn


@dataclass
class StepResult:
    reward: float
    terminated: bool
    truncated: bool
    info: dict = field(default_factory=dict)


@dataclass
class StepColumns:
    """One step of N dialogues: entry ``i`` of each list belongs to ``states[i]``.

    ``scores`` holds each dialogue's score history after the step (a copy), ``judged`` the judge's JudgeScores (their
    dicts are not copied: read them, do not keep them), ``replies`` the user's reply that was appended (None where
    none was) and ``clipped`` whether it was cut to ``max_message_chars``."""

    states: list[DialogueState]
    score: list[float] = field(default_factory=list)
    scores: list[list[float]] = field(default_factory=list)
    judged: list[JudgeScore] = field(default_factory=list)
    replies: list[UserTurn | None] = field(default_factory=list)
    clipped: list[bool] = field(default_factory=list)
    reward: list[float] = field(default_factory=list)
    terminated: list[bool] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)
    turn: list[int] = field(default_factory=list)
    horizon: list[int] = field(default_factory=list)
    ended_by_user: list[bool] = field(default_factory=list)

    def cost(self, i: int) -> dict:
        """What dialogue ``i``'s step cost: the judge's cost plus the reply's."""
        return _add_costs(self.judged[i].cost, self.replies[i])

    def info(self, i: int) -> dict:
        """Dialogue ``i``'s ``info``, as the single env returns it."""
        js = self.judged[i]
        info = {"turn": self.turn[i], "horizon": self.horizon[i], "score": self.score[i], "scores": self.scores[i],
                "judge": {"components": dict(js.components), "provenance": dict(js.provenance)},
                "cost": self.cost(i)}
        if self.clipped[i]:
            info["user_clipped"] = True
        info["ended_by_user"] = self.ended_by_user[i]
        return info


def _add_costs(judge_cost: dict, reply: UserTurn | None) -> dict:
    if reply is None:
        return dict(judge_cost)
    extra = reply.cost
    if judge_cost.keys().isdisjoint(extra):
        return {**judge_cost, **extra}
    cost = dict(judge_cost)
    for k, v in extra.items():
        cost[k] = cost.get(k, 0) + v
    return cost


def step_results(c: StepColumns) -> list[StepResult]:
    return [StepResult(c.reward[i], c.terminated[i], c.truncated[i], c.info(i)) for i in range(len(c.states))]


def vector_infos(c: StepColumns, index: Sequence[int], n: int, add_info: Callable) -> dict:
    """Gymnasium's vector infos of the dialogues of ``c``, which are sub-envs ``index`` of ``n`` (in increasing order)."""
    if not c.states:
        return {}
    idx = np.asarray(index, dtype=np.intp)
    full = len(idx) == n  # every sub-env: the arrays need no scatter
    mask = np.ones(n, dtype=np.bool_) if full else _flags(idx, n)
    judge = {"components": batch_infos([js.components for js in c.judged], idx, n, add_info, full),
             "_components": mask.copy(),
             "provenance": batch_infos([js.provenance for js in c.judged], idx, n, add_info, full),
             "_provenance": mask.copy()}
    out = {"turn": _numbers(idx, c.turn, int, n, full), "_turn": mask.copy(),
           "horizon": _numbers(idx, c.horizon, int, n, full), "_horizon": mask.copy(),
           "score": _numbers(idx, c.score, float, n, full), "_score": mask.copy(),
           "scores": _objects(idx, c.scores, n, full), "_scores": mask.copy(), "judge": judge, "_judge": mask.copy(),
           "cost": batch_infos([_add_costs(js.cost, r) for js, r in zip(c.judged, c.replies)], idx, n, add_info, full),
           "_cost": mask.copy()}
    clipped = [int(i) for i, flag in zip(idx, c.clipped) if flag] if any(c.clipped) else []
    if c.clipped[0]:  # keys in order of first appearance, as Gymnasium's env-at-a-time batching leaves them
        out["user_clipped"], out["_user_clipped"] = _flags(clipped, n), _flags(clipped, n)
    out["ended_by_user"], out["_ended_by_user"] = _numbers(idx, c.ended_by_user, bool, n, full), mask
    if clipped and not c.clipped[0]:
        out["user_clipped"], out["_user_clipped"] = _flags(clipped, n), _flags(clipped, n)
    return out


def _flags(where: Any, n: int) -> np.ndarray:
    array = np.zeros(n, dtype=bool)
    array[where] = True
    return array


def _objects(where: np.ndarray, values: list, n: int, full: bool = False) -> np.ndarray:
    """An object array of ``n`` holding ``values`` (as they are) at ``where``, None elsewhere."""
    array = np.fromiter(values, dtype=object, count=len(values))
    if full:
        return array
    out = np.full(n, fill_value=None, dtype=object)
    out[where] = array
    return out


def _numbers(where: np.ndarray, values: list, kind: type, n: int, full: bool = False) -> np.ndarray:
    """``np.zeros(n, dtype=kind)`` with ``values`` at ``where`` (cast as an element assignment casts them)."""
    if len(set(map(type, values))) == 1 and type(values[0]) is kind:
        array = np.fromiter(values, dtype=kind, count=len(values))
        if full:
            return array
    else:
        array = values
    out = np.zeros(n, dtype=kind)
    out[where] = array
    return out


def batch_infos(infos: list[dict], index: Sequence[int], n: int, add_info: Callable, full: bool = False) -> dict:
    """The infos of sub-envs ``index`` of ``n`` in Gymnasium's vector format (as ``VectorEnv._add_info`` builds them:
    an array per key, a ``_key`` mask, nested dicts recursively), built a key at a time rather than an env at a time.
    ``add_info`` is the vector env's ``_add_info``, used where the types of a key's values differ; ``full``: ``index``
    is ``range(n)``."""
    out: dict = {}
    if not infos:
        return out
    idx = np.asarray(index, dtype=np.intp)
    every = np.ones(n, dtype=np.bool_) if full else _flags(idx, n)
    keys = tuple(infos[0])
    uniform = all(map(keys.__eq__, map(tuple, infos)))  # the usual case: every sub-env reports the same keys
    for key in keys if uniform else dict.fromkeys(k for info in infos for k in info):
        if uniform or all(key in info for info in infos):
            where, values, mask, whole = idx, [info[key] for info in infos], every.copy(), full
        else:
            pairs = [(i, info[key]) for i, info in zip(idx, infos) if key in info]
            where, values, whole = np.asarray([i for i, _ in pairs], dtype=np.intp), [v for _, v in pairs], False
            mask = _flags(where, n)
        first = values[0]
        if key == "final_obs" or not (isinstance(first, (dict, np.ndarray, np.number)) or type(first) in (int, float, bool)):
            array: Any = _objects(where, values, n, whole)
        elif isinstance(first, dict):
            if not all(isinstance(v, dict) for v in values):  # mixed types: Gymnasium's own way
                for i, v in zip(where, values):
                    out = add_info(out, {key: v}, int(i))
                continue
            array = batch_infos(values, where, n, add_info, whole)
        elif isinstance(first, np.ndarray):
            array = np.zeros((n, *first.shape), dtype=first.dtype)
            for i, v in zip(where, values):
                array[i] = v
        else:
            array = _numbers(where, values, type(first), n, whole)
        out[key], out[f"_{key}"] = array, mask
    return out
