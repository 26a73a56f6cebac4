"""Pair collection shared by REFUEL, REBEL and DPO: they differ only in configuration and loss.

The data of one iteration, as in the paper's Algorithm 1 (REFUEL; arXiv 2410.04612):

    for each of the batch_size pairs:
        H ~ U{1..H_max};  h ~ U{1..H}                 (target="last_turn": h = H; "multi_turn": h = 1)
        roll in turns 1..h-1 with `rollin` and the user simulator  -> s_h
        a, a' ~ `responder`(. | s_h)                 two branches of the same state (goal, user randomness)
        continue each branch to H with `responder`   (target="last_turn": nothing to continue;
                                                      `continuations` K > 1: K times, Q-hat their mean)
        Q(a), Q(a') = the judge's score of each branch at H
    drop pairs with a' == a (no signal) and, for preference losses, pairs with Q(a) == Q(a')
    store ln pi_anchor(a | s_h), ln pi_anchor(a' | s_h), summed over the turn-h tokens only
        (target="multi_turn": a is the whole dialogue, summed over all its assistant turns)

Where the context comes from (``rollin``), who answers at turn h (``responder``) and what the target is
(``target``: the relative future, i.e. each branch continued to the horizon, or the last-turn reward with
earlier turns fixed) are configuration, validated together, so "REBEL-LT-MIXED", "DPO-LT-OFFLINE" and
REFUEL are rows of one table, not copies. Two facts belong to each loss, not to the configuration, and are
declared on its class: ``anchor`` (whose log-probabilities the loss is relative to: pi_t, the policy that
collected the data, or the frozen pi_ref) and ``needs_preference`` (ties carry no preference).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ..base import Agent, AgentConfig, Batch
from ..engine.chat import EncodedTurns, TemplateError
from ..engine.distributed import cat_rows, sum_stats
from ..engine.rollout import TARGETS

ROLLINS = ("current", "reference", "offline", "none")
RESPONDERS = ("current", "reference")
logger = logging.getLogger(__name__)


@dataclass
class PairConfig(AgentConfig):
    rollin: str = "current"
    """Who plays the assistant up to s_h: "current" (pi_t), "reference" (pi_0, the paper's "mixed"), "offline"
    (the behaviour policy of the task's offline data: for guess-item, its scripted demonstrator), or "none"
    (multi-turn targets: pairs branch at the opening)."""
    responder: str = "current"
    """Who samples the two responses at turn h (and continues the branches): "current" or "reference"."""
    target: str = "relative_future"
    """"relative_future": h ~ U{1..H}, each branch continued to H (REFUEL); "last_turn": h = H (the paper's LT
    baselines); "multi_turn": h = 1 and each response is a whole dialogue (the paper's MT baselines)."""
    continuations: int = 1
    """Monte-Carlo continuations of each branch (relative future only); Q-hat is their mean (the paper: 1)."""

    def __post_init__(self):
        super().__post_init__()
        if self.rollin not in ROLLINS or self.responder not in RESPONDERS or self.target not in TARGETS:
            raise ValueError(f"rollin must be one of {ROLLINS}, responder one of {RESPONDERS}, target one of "
                             f"{TARGETS}; got rollin={self.rollin!r}, responder={self.responder!r}, target={self.target!r}")
        if (self.target == "multi_turn") != (self.rollin == "none"):
            raise ValueError(f"target={self.target!r} with rollin={self.rollin!r} contradict each other: a multi-turn "
                             "pair branches at the opening, so it has no roll-in (rollin='none'), and only a multi-turn "
                             "pair has none")
        if isinstance(self.continuations, bool) or not isinstance(self.continuations, int) or self.continuations < 1:
            raise ValueError(f"continuations must be an integer >= 1, got {self.continuations!r}")
        if self.continuations > 1 and self.target != "relative_future":
            raise ValueError(f"continuations={self.continuations} needs target='relative_future': a {self.target} "
                             "pair has no continuation to average")
        if self.temperature == 0:
            raise ValueError("temperature 0 (greedy) makes the two responses of every pair identical, and identical "
                             "pairs are dropped: use a temperature > 0")


class PairAgent(Agent):
    Config = PairConfig
    data_parallel = True
    anchor: ClassVar[str] = "pi_t"
    """Whose log-probabilities the loss is relative to: "pi_t" (the policy that collected the pairs) or "pi_ref"."""
    needs_preference: ClassVar[bool] = False
    """True for losses that need a winner: pairs with equal returns are dropped (and counted)."""

    def speaker(self, which: str, task):
        if which in ("current", "none"):  # "none": no roll-in turn is ever taken
            return self.policy
        if which == "reference":
            return self.ref_policy
        return task.offline_speaker(seed=self.dist.process_seed(int(self.rng.integers(2**31))))

    def responses(self, pairs) -> tuple[list, list]:
        """(context, (response a, response b)) of each pair: the turn-h texts, or for multi-turn targets every
        message after the opening (the whole dialogue is the response)."""
        if self.config.target != "multi_turn":
            return pairs.contexts, pairs.responses
        return pairs.contexts, [tuple([dict(m) for m in f.messages[len(ctx):]] for f in fin)
                                for ctx, fin in zip(pairs.contexts, pairs.finals)]

    def encode_pairs(self, contexts, responses) -> tuple[EncodedTurns | None, list[int], int]:
        """Encode both responses of each pair (rows i and n+i); drop and count pairs the template breaks."""
        rows_a, rows_b, keep, errors = [], [], [], 0
        chat = self.policy.chat
        row = chat.turn_row if self.config.target != "multi_turn" else chat.dialogue_row
        for i, (ctx, (a, b)) in enumerate(zip(contexts, responses)):
            try:
                ra, rb = row(ctx, a), row(ctx, b)
            except TemplateError:
                errors += 1
                continue
            rows_a.append(ra)
            rows_b.append(rb)
            keep.append(i)
        if not keep:
            return None, keep, errors
        return chat.pad_rows(rows_a + rows_b), keep, errors

    def collect(self, env) -> Batch:
        c = self.config
        eng = self.engine(env)
        before = dict(eng.stats)
        self.policy.model.eval()
        task = eng.machine.task
        pairs, dropped = eng.pairs(c.batch_size, self.rng, rollin=self.speaker(c.rollin, task),
                                   responder=self.speaker(c.responder, task), target=c.target, params=self.sampling,
                                   continuations=c.continuations)
        all_contexts, all_responses = self.responses(pairs)
        n0 = len(all_contexts)
        finite = np.isfinite(pairs.returns).all(1)
        distinct = np.array([a != b for a, b in all_responses], dtype=bool) if n0 else np.zeros(0, bool)
        usable = (pairs.returns[:, 0] != pairs.returns[:, 1]) if self.needs_preference else np.ones(n0, bool)
        keep_rows = [i for i in range(n0) if finite[i] and distinct[i] and usable[i]]
        contexts = [all_contexts[i] for i in keep_rows]
        responses = [all_responses[i] for i in keep_rows]
        enc, kept, template_errors = self.encode_pairs(contexts, responses)
        rows = [keep_rows[i] for i in kept]
        stats = {**self.budget(eng, before), "pairs": len(rows), "examples": len(rows), **dropped,
                 "identical_responses": int((~distinct).sum()), "nonfinite_returns": int((~finite).sum()),
                 "unusable_pairs": int((finite & distinct & ~usable).sum()),
                 "template_errors": template_errors,
                 "mean_return": float(np.nanmean(pairs.returns)) if n0 else float("nan"),
                 **signal_by_turn(pairs, rows)}
        data = None
        if enc is not None:
            anchor = self.policy if self.anchor == "pi_t" else self.ref_policy
            old = anchor.sequence_logprobs_nograd(enc, temperature=c.temperature)
            n = len(rows)
            data = {"enc": enc, "old_a": old[:n], "old_b": old[n:],
                    "returns": torch.tensor(pairs.returns[rows], dtype=torch.float32),
                    "contexts": [all_contexts[i] for i in rows], "responses": [all_responses[i] for i in rows],
                    "turns": pairs.turns[rows], "horizons": pairs.horizons[rows]}
        if self.dist.enabled:
            data, stats = self.gather_pairs(data, stats, pairs.returns)
        return Batch(data if data is not None else {"pairs": pairs}, stats)

    def gather_pairs(self, data: dict | None, stats: dict, returns: np.ndarray) -> tuple[dict | None, dict]:
        """Every process's pairs, in rank order (= the order of one process's batch), on every process."""
        parts = self.dist.gather((data, stats, returns))
        stats = sum_stats([p[1] for p in parts])
        every = np.concatenate([p[2] for p in parts])
        stats["mean_return"] = float(np.nanmean(every)) if len(every) else float("nan")
        ds = [p[0] for p in parts if p[0] is not None]
        if not ds:
            return None, stats
        halves = [[d["enc"].select(slice(0, len(d["old_a"]))) for d in ds],  # rows of a, then rows of b
                  [d["enc"].select(slice(len(d["old_a"]), None)) for d in ds]]
        enc = EncodedTurns.cat([e for half in halves for e in half], self.policy.tokenizer.pad_token_id)
        data = {k: cat_rows([d[k] for d in ds]) for k in ("old_a", "old_b", "returns")}
        data.update({k: [x for d in ds for x in d[k]] for k in ("contexts", "responses")})
        data.update({k: np.concatenate([d[k] for d in ds]) for k in ("turns", "horizons")})
        return {"enc": enc, **data}, stats

    def loss(self, logp_a, logp_b, old_a, old_b, returns) -> tuple[torch.Tensor, dict]:
        """The algorithm's loss on a minibatch of pairs: (mean loss, metrics)."""
        raise NotImplementedError

    def update(self, batch: Batch) -> dict[str, float]:
        n = len(batch)
        if n == 0:
            self.skipped["empty_batches"] += 1
            return {"loss": float("nan"), "pairs": 0, "skipped_empty_batches": self.skipped["empty_batches"]}
        d = batch.data
        self.policy.model.train()
        model = self.wrapped(self.policy.model)
        losses, extra = [], {}
        for idx in self.minibatches(n):
            mine = self.dist.share(idx)  # one process: the whole minibatch
            out = self.accumulate_step(self.minibatch_losses(d, n, idx, mine, model), len(mine) / len(idx))
            if out:
                losses.append(out.pop("loss"))
                for k, v in out.items():
                    extra.setdefault(k, []).append(v)
        self.policy.model.eval()
        return {"loss": float(np.mean(losses)) if losses else float("nan"), "pairs": n,
                **{k: float(np.mean(v)) for k, v in extra.items()},
                "skipped_nonfinite_loss": self.skipped["nonfinite_loss"]}

    def minibatch_losses(self, d: dict, n: int, idx, mine, model):
        """(loss, fraction, info) of each micro-batch of this process's share ``mine`` of minibatch ``idx``."""
        rows = mine if len(mine) else idx[:1]
        for chunk in self.micro_batches(rows):
            idx_t = torch.as_tensor(chunk)
            lp = self.policy.sequence_logprobs(d["enc"].select(torch.cat([idx_t, idx_t + n])), model,
                                               self.config.temperature)
            m = len(idx_t)
            loss, info = self.loss(lp[:m], lp[m:], d["old_a"][idx_t].to(lp.device), d["old_b"][idx_t].to(lp.device),
                                   d["returns"][idx_t].to(lp.device))
            if not len(mine):  # nothing of this minibatch here: a zero that still joins the gradient average
                loss = lp.sum() * 0.0
            yield loss, len(chunk) / len(rows), info

    def preference_dataset(self, batch: Batch):
        """The batch's pairs in TRL's conversational preference format (prompt / chosen / rejected, plus
        score_chosen / score_rejected), ranked by their returns, for ``trl.DPOTrainer`` and friends.

        Ties (equal returns) carry no preference and are left out; how many is logged and written in the
        dataset's ``info.description``. The columns are typed explicitly (:data:`PREFERENCE_FEATURES`), so an
        export without a single preference is an empty dataset of the same schema (it concatenates with
        other exports), not one of null columns; ``DPOTrainer`` itself needs at least one row."""
        from datasets import Dataset, DatasetInfo

        rows = {k: [] for k in PREFERENCE_FEATURES}
        ties = 0
        for ctx, (a, b), (qa, qb) in zip(batch.data.get("contexts", []), batch.data.get("responses", []),
                                         batch.data.get("returns", torch.zeros(0, 2)).tolist()):
            if qa == qb:
                ties += 1
                continue
            (w, qw), (l, ql) = ((a, qa), (b, qb)) if qa > qb else ((b, qb), (a, qa))
            rows["prompt"].append([{"role": m["role"], "content": m["content"]} for m in ctx])
            rows["chosen"].append(as_messages(w))
            rows["rejected"].append(as_messages(l))
            rows["score_chosen"].append(float(qw))
            rows["score_rejected"].append(float(ql))
        n = len(rows["prompt"])
        text = f"{n} preference pairs of {n + ties} collected by {self.name!r}; {ties} ties (equal returns) left out"
        if n == 0 and ties:
            logger.warning(f"preference_dataset: every one of the {ties} pairs is a tie (equal returns): the dataset "
                           "is empty; DPOTrainer needs at least one preference (collect more pairs)")
        elif ties:
            logger.info(f"preference_dataset: {text}")
        features = preference_features()
        return Dataset.from_dict(rows, features=features, info=DatasetInfo(description=text, features=features))


PREFERENCE_FEATURES = ("prompt", "chosen", "rejected", "score_chosen", "score_rejected")
"""The columns of :meth:`PairAgent.preference_dataset`."""


def preference_features():
    """The ``datasets.Features`` of a preference export: conversations as lists of {role, content} strings,
    scores as float64 (what ``Dataset.from_dict`` infers from a non-empty export)."""
    from datasets import Features, Value

    messages = [{"role": Value("string"), "content": Value("string")}]
    return Features({"prompt": messages, "chosen": messages, "rejected": messages,
                     "score_chosen": Value("float64"), "score_rejected": Value("float64")})


def as_messages(response) -> list[dict]:
    """A response as chat messages: a turn's text, or the messages of a multi-turn response as they are."""
    return [{"role": "assistant", "content": response}] if isinstance(response, str) else [dict(m) for m in response]


def signal_by_turn(pairs, kept: list[int]) -> dict:
    """Per branching turn h: pairs drawn, kept (trained on) and kept with a return difference (a learning signal),
    as flat ``turn{h}/drawn``, ``turn{h}/kept``, ``turn{h}/signal`` counts."""
    out = {}
    kept_turns = pairs.turns[kept] if len(kept) else np.zeros(0, int)
    signal = pairs.returns[kept, 0] != pairs.returns[kept, 1] if len(kept) else np.zeros(0, bool)
    for h in np.unique(pairs.drawn_turns):
        h = int(h)
        out[f"turn{h}/drawn"] = int((pairs.drawn_turns == h).sum())
        out[f"turn{h}/kept"] = int((kept_turns == h).sum())
        out[f"turn{h}/signal"] = int(((kept_turns == h) & signal).sum())
    return out
