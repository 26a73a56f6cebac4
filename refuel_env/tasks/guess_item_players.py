"""Scripted assistants for the guess-item task: reference points, demonstrations, and tests.

They see only what a policy sees (the conversation text) and are batched like a policy
(``act(observations) -> list[str]``). Strategies:

- ``informative``: asks the attribute whose answer is most uncertain (largest expected information
  gain; ties go to the first in attribute order, so its dialogues are canonical) and guesses the
  most probable item on the last turn: the planned behaviour.
- ``myopic``: guesses a not-yet-guessed item on every turn.
- ``uninformative``: asks random attribute questions (often repeated or useless), then guesses the
  most probable item.
- ``demonstrator``: informative, but on each question turn it guesses prematurely (its best guess so
  far) with probability ``epsilon``: competent but impatient, a planning flaw that only multi-turn
  credit assignment can fix; and on the last turn it names another animal than its best guess with
  probability ``final_error`` (an execution flaw, which a last-turn method can fix). Its dialogues are
  the task's offline data and the supervised data of the reference policy pi_0.

Like a policy, they are not told H: the last turn is the one on which the user asks for the final guess
(:meth:`GuessItemTask.is_final_turn`). Ties between equally good guesses or questions go to the first in
catalogue or attribute order, so that their dialogues are canonical.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .guess_item import ATTRIBUTE_NAMES, ATTRIBUTES, GuessItemTask

STRATEGIES = ("informative", "myopic", "uninformative", "demonstrator")


def _messages(obs) -> list[dict]:
    return list(obs["messages"]) if isinstance(obs, dict) else list(obs)


class ScriptedQuestioner:
    def __init__(self, task: GuessItemTask, strategy: str = "informative", epsilon: float = 0.5,
                 seed: int | None = None, phrasing: str = "varied", final_error: float = 0.0):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
        self.task, self.strategy, self.epsilon, self.phrasing = task, strategy, epsilon, phrasing
        self.final_error = float(final_error)
        self.rng = np.random.default_rng(seed)

    def _question(self, attr: str) -> str:
        options = ATTRIBUTES[attr][0]
        return options[0] if self.phrasing == "fixed" else options[int(self.rng.integers(len(options)))]

    def _guess(self, item: str) -> str:
        options = (f"Is it a {item}?", f"My guess is {item}.", f"I think it is a {item}.")
        return options[0] if self.phrasing == "fixed" else options[int(self.rng.integers(len(options)))]

    def _best_guess(self, post: np.ndarray) -> str:
        return self.task.items[int(np.flatnonzero(post >= post.max() - 1e-12)[0])]  # ties: the first in the catalogue

    def _most_informative(self, post: np.ndarray, asked: set) -> str | None:
        gains = {}
        for j, a in enumerate(ATTRIBUTE_NAMES):
            if a in asked:
                continue
            q = float(post[self.task.table[:, j]].sum())  # P(answer yes)
            gains[a] = min(q, 1 - q)  # monotone in the answer's entropy
        if not gains or max(gains.values()) <= 1e-9:
            return None
        top = max(gains.values())
        return next(a for a, g in gains.items() if g >= top - 1e-9)  # ties: the first in attribute order

    def act_one(self, messages) -> str:
        facts = self.task.facts_from_messages(messages)
        final = self.task.is_final_turn(messages)
        post = self.task.posterior(facts)
        guessed = {k for kind, k, _ in facts if kind == "guess"}
        asked = {k for kind, k, _ in facts if kind == "attr"}
        if self.strategy == "myopic":
            left = [i for i in self.task.items if i not in guessed]
            return self._guess(str(self.rng.choice(left or list(self.task.items))))
        if final:
            best = self._best_guess(post)
            if self.strategy == "demonstrator" and self.final_error and self.rng.random() < self.final_error:
                best = str(self.rng.choice([i for i in self.task.items if i != best]))
            return self._guess(best)
        if post.max() > 0.999:
            return self._guess(self._best_guess(post))
        if self.strategy == "uninformative":
            return self._question(str(self.rng.choice(ATTRIBUTE_NAMES)))
        if self.strategy == "demonstrator" and self.rng.random() < self.epsilon:
            return self._guess(self._best_guess(post))
        attr = self._most_informative(post, asked)
        return self._guess(self._best_guess(post)) if attr is None else self._question(attr)

    def act(self, observations: Sequence) -> list[str]:
        return [self.act_one(_messages(o)) for o in observations]
