"""LLM judge: a text-generation back end scores dialogues (pointwise) and compares them (pairwise).

Both score the dialogue up to its last assistant message (:func:`judged_messages`).

Pointwise (:meth:`LLMJudge.score`): the dialogue is shown as a transcript with a rubric question
answerable by Yes or No; the score is ``P(Yes) / (P(Yes) + P(No))`` from the back end's
next-token log-probabilities (``method="logprob"``, one forward pass). A back end without
``next_token_logprobs`` (an HTTP server) is asked instead for a 1-10 rating that is parsed and
mapped to ``(rating - 1) / 9`` (``method="generate"``).

Pairwise (:meth:`LLMJudge.compare`, ``mode="pairwise"``): both dialogues are shown as A and B and
the judge says which assistant is better, once in each order (position swapping); the two
probabilities that ``a`` is better are averaged, which cancels the judge's preference for a
position. With ``mode="pointwise"``, ``compare`` compares the two pointwise scores (1, 0.5 or 0).
"""

from __future__ import annotations

import copy
import math
import re
from typing import Any, Sequence

import numpy as np

from ..backends.base import sha256
from ..registry import JUDGES
from ..types import Conversation, DialogueState, JudgeScore, SamplingParams

DEFAULT_RUBRIC = ("Is every response of the assistant in this conversation helpful, correct, honest and harmless, "
                  "and does it answer what the user asked?")
POINTWISE_LOGPROB = ("Please act as an impartial judge. Read the conversation between a user and an AI assistant "
                     "below, then answer the question that follows it.\n\n[Conversation]\n{transcript}[End of "
                     "conversation]\n\nQuestion: {rubric}\nAnswer with Yes or No only.")
POINTWISE_RATING = ("Please act as an impartial judge. Read the conversation between a user and an AI assistant "
                    "below, then rate the assistant.\n\n[Conversation]\n{transcript}[End of conversation]\n\n"
                    "{rubric}\nRate the assistant from 1 (very poor) to 10 (excellent). Reply with the number only.")
PAIRWISE = ("Please act as an impartial judge. Below are two conversations, A and B, of a user with an AI "
            "assistant. {rubric}\nDecide in which conversation the assistant is better.\n\n"
            "[Conversation A]\n{a}[End of conversation A]\n\n[Conversation B]\n{b}[End of conversation B]\n\n"
            "Which assistant is better? Answer with A or B only.")


def judged_messages(messages: Conversation) -> Conversation:
    """The dialogue up to and including its last assistant message: what a judge scores.

    The env asks the judge right after the assistant's turn, before the user's next message; a state
    taken after the step (an evaluation snapshot at turn h < H) also holds that user message, which
    the assistant has not answered yet. Cutting it gives both the same score."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages) - 1)
    return list(messages[: last + 1])


def transcript(messages: Conversation) -> str:
    """The dialogue (up to its last assistant message) as ``### role: content`` blocks, system messages left out."""
    return "".join(f"### {m['role']}: {m['content']}\n\n" for m in judged_messages(messages) if m["role"] != "system")


def _two_way(lp: np.ndarray) -> np.ndarray:
    """P(first) from the log-probabilities of two answers: exp(a) / (exp(a) + exp(b))."""
    return 1.0 / (1.0 + np.exp(lp[:, 1] - lp[:, 0]))


class LLMJudge:
    """Judge driven by a text-generation back end.

    Args:
        backend: a back end or a model name (``"smollm2"``); ``None``: ask the task (``task.make_backend("judge")``).
        mode: ``"pointwise"`` or ``"pairwise"``: how :meth:`compare` decides (``score`` is always pointwise).
        rubric: the question the judge answers (pointwise) or the criterion it applies (pairwise).
        method: ``"logprob"`` (needs ``backend.next_token_logprobs``), ``"generate"`` (parse a rating
            or A/B), or ``"auto"`` (logprob where the back end supports it).
        params: sampling parameters of ``method="generate"`` (default greedy, 8 new tokens).
        on_parse_error: ``"raise"`` (default), or a value to use when a generated answer cannot be parsed
            (recorded as ``components["parse_failed"] = 1``).
    """

    replaces_memory = True  # it never touches a state's memory (see protocols.UserSimulator)

    name = "llm"

    def __init__(self, backend: Any = None, mode: str = "pointwise", rubric: str = DEFAULT_RUBRIC, task: Any = None,
                 method: str = "auto", params: SamplingParams | None = None, on_parse_error: Any = "raise",
                 backend_name: str = "transformers", backend_kwargs: dict | None = None):
        if mode not in ("pointwise", "pairwise"):
            raise ValueError(f"mode must be 'pointwise' or 'pairwise', got {mode!r}")
        if method not in ("auto", "logprob", "generate"):
            raise ValueError(f"method must be 'auto', 'logprob' or 'generate', got {method!r}")
        if on_parse_error != "raise" and not isinstance(on_parse_error, (int, float)):
            raise ValueError("on_parse_error must be 'raise' or a number")
        from ..backends import backend_for

        backend = backend_for(backend, task, "judge", backend_name, backend_kwargs)
        if backend is None:
            raise ValueError("LLMJudge needs a text-generation back end: pass judge_kwargs={'backend': <back end "
                             "or model name, e.g. 'smollm2'>} to the env, or use a task that provides one")
        has_lp = hasattr(backend, "next_token_logprobs")
        if method == "logprob" and not has_lp:
            raise ValueError(f"method='logprob' needs a back end with next_token_logprobs; {type(backend).__name__} "
                             "has none. Use method='generate' (or 'auto')")
        self.backend, self.mode, self.rubric, self.task = backend, mode, rubric, task
        self.method = "logprob" if method == "logprob" or (method == "auto" and has_lp) else "generate"
        self.params = params or SamplingParams(max_new_tokens=8, temperature=0.0)
        self.on_parse_error = on_parse_error
        template = POINTWISE_LOGPROB if self.method == "logprob" else POINTWISE_RATING
        self.prompt_hash = sha256("\n".join([template, PAIRWISE, rubric]))[:16]

    # ------------------------------------------------------------------ prompts
    def pointwise_prompt(self, state: DialogueState) -> Conversation:
        template = POINTWISE_LOGPROB if self.method == "logprob" else POINTWISE_RATING
        return [{"role": "user", "content": template.format(transcript=transcript(state.messages), rubric=self.rubric)}]

    def pairwise_prompt(self, a: DialogueState, b: DialogueState) -> Conversation:
        return [{"role": "user", "content": PAIRWISE.format(rubric=self.rubric, a=transcript(a.messages),
                                                             b=transcript(b.messages))}]

    def provenance(self, kind: str) -> dict:
        return {"judge": "llm", "model": getattr(self.backend, "model_id", type(self.backend).__name__),
                "mode": kind, "method": self.method, "prompt_sha256": self.prompt_hash}

    # ------------------------------------------------------------------ helpers
    def _finite(self, values: np.ndarray, what: str) -> np.ndarray:
        if not np.all(np.isfinite(values)):
            raise ValueError(f"the LLM judge ({getattr(self.backend, 'model_id', '?')}) produced non-finite {what} "
                             f"({values.tolist()}); check the judge model's weights and dtype, or use method='generate'")
        return values

    def _seeds(self, states: Sequence[DialogueState], advance: bool) -> list[int] | None:
        if self.params.temperature == 0:
            return [0] * len(states)
        rngs = [s.judge_rng if advance else copy.deepcopy(s.judge_rng) for s in states]
        return [int(r.integers(2**63 - 1)) for r in rngs]

    def _generate(self, prompts: list[Conversation], seeds: list[int] | None) -> list[str]:
        texts = self.backend.generate(prompts, self.params, seeds)
        if len(texts) != len(prompts):
            raise RuntimeError(f"back end returned {len(texts)} completions for {len(prompts)} judge prompts")
        return texts

    def _parsed(self, value: float | None, text: str, what: str) -> tuple[float, int]:
        if value is not None:
            return value, 0
        if self.on_parse_error == "raise":
            raise ValueError(f"the LLM judge's answer {text!r:.200} has no {what}. Use a back end with "
                             "next_token_logprobs (method='logprob'), a stronger judge model, or on_parse_error=<value>")
        return float(self.on_parse_error), 1

    # ------------------------------------------------------------------ protocol
    def score(self, states: Sequence[DialogueState]) -> list[JudgeScore]:
        if not states:
            return []
        prompts = [self.pointwise_prompt(s) for s in states]
        prov = self.provenance("pointwise")
        out = []
        if self.method == "logprob":
            lp = np.asarray(self.backend.next_token_logprobs(prompts, ["Yes", "No"]), dtype=float)
            if lp.shape != (len(states), 2):
                raise RuntimeError(f"next_token_logprobs returned shape {lp.shape} for {len(states)} prompts and 2 answers")
            p = self._finite(_two_way(self._finite(lp, "log-probabilities")), "scores")
            for i in range(len(states)):
                out.append(JudgeScore(float(p[i]), components={"p_yes": float(p[i]), "logprob_yes": float(lp[i, 0]),
                                                               "logprob_no": float(lp[i, 1])},
                                      provenance=dict(prov), cost={"judge_calls": 1}))
            return out
        texts = self._generate(prompts, self._seeds(states, advance=True))
        for t in texts:
            m = re.search(r"\b(10|[1-9])\b", t)
            value, failed = self._parsed((int(m.group(1)) - 1) / 9.0 if m else None, t, "rating from 1 to 10")
            if not math.isfinite(value):
                raise ValueError(f"the LLM judge produced a non-finite score from {t!r}")
            out.append(JudgeScore(value, components={"rating": value * 9 + 1, "parse_failed": failed},
                                  provenance=dict(prov), cost={"judge_calls": 1}))
        return out

    def compare(self, states_a: Sequence[DialogueState], states_b: Sequence[DialogueState]) -> list[float]:
        """P(dialogue a is better than dialogue b), position-swapped and averaged (pairwise mode)."""
        if len(states_a) != len(states_b):
            raise ValueError(f"compare needs as many dialogues in a ({len(states_a)}) as in b ({len(states_b)})")
        if not states_a:
            return []
        if self.mode == "pointwise":
            sa, sb = self.score([s.copy() for s in states_a]), self.score([s.copy() for s in states_b])
            return [0.5 if x.value == y.value else float(x.value > y.value) for x, y in zip(sa, sb)]
        n = len(states_a)
        prompts = [self.pairwise_prompt(a, b) for a, b in zip(states_a, states_b)] + \
                  [self.pairwise_prompt(b, a) for a, b in zip(states_a, states_b)]
        if self.method == "logprob":
            lp = self._finite(np.asarray(self.backend.next_token_logprobs(prompts, ["A", "B"]), dtype=float),
                              "log-probabilities")
            p_first = _two_way(lp)
        else:
            seeds = self._seeds(list(states_a) + list(states_b), advance=False)
            p_first = []
            for t in self._generate(prompts, seeds):
                m = re.match(r"\W*(?:conversation\s+|assistant\s+)?([AB])\b", t.strip(), re.IGNORECASE)
                v, _ = self._parsed(None if not m else float(m.group(1).upper() == "A"), t, "A or B")
                p_first.append(v)
            p_first = np.asarray(p_first, dtype=float)
        p = 0.5 * (p_first[:n] + (1.0 - p_first[n:]))
        return [float(x) for x in self._finite(p, "preferences")]


@JUDGES.register("llm")
def _make_llm_judge(task: Any = None, **kwargs: Any) -> LLMJudge:
    return LLMJudge(task=task, **kwargs)
