"""The guess-item task's own user simulator and rule judge (``user="scripted"``, ``judge="rule"``).

The user answers yes/no questions about one attribute (wrong with the task's ``noise``), says which animals are
still possible, and asks for the final guess on the last turn; the judge gives 1 for a correct guess and, before the
horizon, the probability that the best guess now would be right (with ``graded``, the final guess's posterior).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from ..types import DialogueState, JudgeScore, UserTurn
from .guess_item import _COLUMN, CATALOGUE, FINAL, NO, POSSIBLE, RIGHT, TOO_MANY, UNCLEAR, WRONG, YES

if TYPE_CHECKING:
    from .guess_item import GuessItemTask


class GuessItemUser:
    """Scripted user of the guess-item task. Batched: one call answers every dialogue.

    It never mutates a state's memory in place: it assigns a new dict (``replaces_memory``), so the machine's
    rollback keeps the old one by reference instead of copying it."""

    replaces_memory = True

    def __init__(self, task: GuessItemTask):
        self.task = task

    def reply(self, states: Sequence[DialogueState]) -> list[UserTurn]:
        task, out = self.task, []
        parsed, parse, candidates = task._parse_memo, task.parse, task.candidates_text
        fixed, noise, reveal = task.phrasing == "fixed", task.noise, task.reveal_candidates
        for s in states:
            last = s.messages[-1] if s.messages else None
            said_text = last["content"] if last is not None and last["role"] == "assistant" else s.last_assistant
            p = parsed.get(said_text) or parse(said_text)
            kind, end = p.kind, False
            if kind == "guess":
                correct = p.key == s.goal
                s.memory = memory = {**s.memory, "facts": [*s.memory["facts"], ["guess", p.key, correct]]}
                if correct:
                    memory["solved"] = True
                    text, end = RIGHT.format(item=p.key), True
                else:
                    text = WRONG.format(item=p.key)
            elif kind == "question":
                truth = bool(CATALOGUE[s.goal][_COLUMN[p.key]])
                said = truth != (noise > 0 and s.user_rng.random() < noise)
                s.memory = {**s.memory, "facts": [*s.memory["facts"], ["attr", p.key, said]]}
                options = YES if said else NO
                text = options[0] if fixed else options[int(s.user_rng.integers(len(options)))]
            else:
                text = TOO_MANY if kind == "too_many" else UNCLEAR
            if not end and reveal and (kind == "guess" or kind == "question"):
                text = f"{text} {POSSIBLE.format(items=candidates(s.memory['facts']))}"
            if not end and s.turn == s.horizon - 1:
                text = f"{text} {FINAL}"
            out.append(UserTurn(text, end, {"user_calls": 1}))
        return out


class GuessItemJudge:
    """Rule judge: 1 for a correct guess; before the horizon, the best guess's posterior probability."""

    name = "guess-item-rule"
    replaces_memory = True  # it only reads the memory

    def __init__(self, task: GuessItemTask):
        self.task = task

    def _one(self, s: DialogueState) -> JudgeScore:
        p = self.task.parse(s.last_assistant)
        guessed = p.kind == "guess" and p.key == s.goal
        if s.memory.get("solved"):  # an earlier turn's correct guess ended the dialogue
            value, how = 1.0, "correct guess"
        elif s.turn >= s.horizon and self.task.graded:  # the final guess is not told apart: its expected score
            post = self.task.posterior(s.memory["facts"])
            value = float(post[self.task.items.index(p.key)]) if p.kind == "guess" and p.key in self.task.items else 0.0
            how = "final guess: its posterior probability (graded)"
        elif guessed:
            value, how = 1.0, "correct guess"
        elif s.turn >= s.horizon:
            value, how = 0.0, "final turn without a correct guess"
        else:
            value, how = self.task.best_posterior(s.memory["facts"]), "best-guess posterior"
        return JudgeScore(value, components={"correct_guess": float(guessed or bool(s.memory.get("solved")))},
                          provenance={"judge": self.name, "rule": how}, cost={"judge_calls": 1})

    def score(self, states: Sequence[DialogueState]) -> list[JudgeScore]:
        task, name, out = self.task, self.name, []
        parsed, parse, best = task._parse_memo, task.parse, task.best_posterior
        for s in states:  # _one, inlined: this runs for every dialogue at every step
            last = s.messages[-1] if s.messages else None
            said_text = last["content"] if last is not None and last["role"] == "assistant" else s.last_assistant
            p = parsed.get(said_text) or parse(said_text)
            memory = s.memory
            guessed = p.kind == "guess" and p.key == s.goal
            if memory.get("solved") or (guessed and not (task.graded and s.turn >= s.horizon)):
                value, how, correct = 1.0, "correct guess", 1.0
            elif s.turn >= s.horizon and task.graded:  # the final guess is not told apart: its expected score
                post = task.posterior(memory["facts"])
                value = float(post[task.items.index(p.key)]) if p.kind == "guess" and p.key in task.items else 0.0
                how, correct = "final guess: its posterior probability (graded)", float(guessed)
            elif s.turn >= s.horizon:
                value, how, correct = 0.0, "final turn without a correct guess", 0.0
            else:
                value, how, correct = best(memory["facts"]), "best-guess posterior", 0.0
            out.append(JudgeScore(value, {"correct_guess": correct}, {"judge": name, "rule": how}, {"judge_calls": 1}))
        return out

    def compare(self, states_a: Sequence[DialogueState], states_b: Sequence[DialogueState]) -> list[float]:
        out = []
        for sa, sb in zip(states_a, states_b, strict=True):
            a, b = self._one(sa).value, self._one(sb).value
            out.append(0.5 if a == b else float(a > b))
        return out
