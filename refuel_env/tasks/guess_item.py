"""Guess the hidden item: the built-in offline task in which multi-turn planning matters.

The user hides an animal from a catalogue; the assistant has H turns. On turns 1..H-1 it may ask
yes/no questions about one attribute (the user answers, wrong with probability ``noise``) or guess
an item (a correct guess ends the dialogue with score 1). On turn H the user asks for a final guess,
and the judge gives 1 for a correct one, 0 otherwise. As in the REFUEL paper, the assistant is not told
H: the user signals the last turn only by asking for the final guess in it (``tell_horizon=True`` states
H in the opening instead).

The judge's score after an earlier turn h < H is the probability that the best guess *now* would be
right (the largest posterior probability of an item given the answers so far), so that per-turn
scores and win rates mean something at every turn. An informative questioner that halves the
candidate set each turn identifies 1 of 2**(H-1) items with certainty; a myopic one does not.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..registry import TASKS
from ..types import Conversation
from ..validation import MAX_TURNS, as_bool, as_choice, as_int, as_real

# attribute name -> (question phrasings, keywords that identify it in a question)
ATTRIBUTES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "mammal": (("Is it a mammal?", "Is the animal a mammal?", "Would you call it a mammal?"), ("mammal",)),
    "big": (("Is it bigger than a person?", "Is it a big animal?", "Is it larger than a human?"),
            ("bigger", "big", "large", "larger")),
    "water": (("Does it live in water?", "Is it a water animal?", "Does it spend its life in the water?"),
              ("water", "swim", "aquatic")),
    "flies": (("Can it fly?", "Does it fly?", "Is it able to fly?"), ("fly", "flies", "flying")),
    "pet": (("Is it kept as a pet?", "Do people keep it as a pet?", "Is it a pet?"), ("pet",)),
    "hunts": (("Does it hunt other animals?", "Is it a hunter?", "Does it eat other animals?"),
              ("hunt", "hunter", "predator", "eat other")),
    "legs": (("Does it have four legs?", "Does it walk on four legs?", "Has it got four legs?"),
             ("four legs", "4 legs", "legs")),
    "climbs": (("Can it climb trees?", "Does it climb trees?", "Is it a climber?"), ("climb",)),
}
ATTRIBUTE_NAMES = tuple(ATTRIBUTES)
_COLUMN = {a: i for i, a in enumerate(ATTRIBUTE_NAMES)}

# name: mammal big water flies pet hunts legs climbs. The first 8 are separated by the first
# three attributes alone (a perfect binary code), so that 3 questions always suffice for 8 items.
CATALOGUE: dict[str, tuple[int, ...]] = {
    "whale": (1, 1, 1, 0, 0, 1, 0, 0),
    "horse": (1, 1, 0, 0, 0, 0, 1, 0),
    "otter": (1, 0, 1, 0, 0, 1, 1, 0),
    "cat": (1, 0, 0, 0, 1, 1, 1, 1),
    "shark": (0, 1, 1, 0, 0, 1, 0, 0),
    "ostrich": (0, 1, 0, 0, 0, 0, 0, 0),
    "frog": (0, 0, 1, 0, 0, 1, 1, 0),
    "parrot": (0, 0, 0, 1, 1, 0, 0, 1),
    "dog": (1, 0, 0, 0, 1, 1, 1, 0),
    "bear": (1, 1, 0, 0, 0, 1, 1, 1),
    "monkey": (1, 0, 0, 0, 0, 0, 0, 1),
    "bat": (1, 0, 0, 1, 0, 1, 0, 0),
    "eagle": (0, 0, 0, 1, 0, 1, 0, 0),
    "penguin": (0, 0, 1, 0, 0, 1, 0, 0),
    "goldfish": (0, 0, 1, 0, 1, 0, 0, 0),
    "crocodile": (0, 1, 1, 0, 0, 1, 1, 0),
}

YES = ("Yes.", "Yes, it is.", "Yes, that's right.", "Correct, yes.")
NO = ("No.", "No, it isn't.", "Nope.", "No, not at all.")
UNCLEAR = "I don't understand. Please ask a yes/no question about one attribute, or guess an animal."
TOO_MANY = "Please ask about one attribute at a time."
FINAL = "Now please make your final guess."
OPENING = "I am thinking of one of these animals: {items}."
ASK = "Ask yes/no questions about one attribute at a time; I will tell you when to make your final guess."
WRONG = "No, it is not a {item}."
RIGHT = "Yes! It is a {item}. You got it."
POSSIBLE = "Still possible: {items}."


@dataclass(frozen=True)
class Parsed:
    kind: str  # "guess" | "question" | "unclear" | "too_many"
    key: str | None = None


class GuessItemTask:
    """Task family ``guess-item-v0``.

    Args:
        n_items: catalogue size (2..16); the first ``n_items`` animals of :data:`CATALOGUE`.
        max_turns: H_max, the longest horizon.
        noise: probability that the user answers an attribute question wrongly.
        phrasing: ``"varied"`` (answers drawn from several phrasings) or ``"fixed"``.
        reveal_candidates: the user ends each answer with the animals still consistent with its answers
            ("Still possible: shark, whale."), as a game host would. Planning still decides the score
            (which question halves the list, and not guessing before the last turn), but the final guess
            needs no inference from the answers, which a small model learns only slowly.
        tell_horizon: state H in the opening message (the paper's policy is never told H; default False).
        demo_epsilon: the offline data's behaviour policy (the scripted *demonstrator*, whose dialogues are
            this task's offline dataset and pi_0's supervised data) guesses prematurely with this probability
            on each turn before the last: a planning flaw.
        demo_final_error: the demonstrator's final guess is a uniformly drawn other animal with this
            probability: an execution flaw (the control configuration of the benchmark).
        graded: the judge's final score is the probability that the final guess is right given the answers
            (the posterior of the guessed animal) instead of 1 or 0: the same expectation, less variance.

    Train and eval episodes (``split``) come from disjoint seed streams of the same distribution (the env
    seeds them apart): the hidden item and the user's random state differ, but the opening text depends
    on the horizon alone, so this task has no held-out opening *text*. The open-chat task holds out prompts.
    """

    task_id = "guess-item-v0"

    def __init__(self, n_items: int = 8, max_turns: int = 4, noise: float = 0.0, phrasing: str = "varied",
                 reveal_candidates: bool = True, tell_horizon: bool = False, demo_epsilon: float = 0.5,
                 demo_final_error: float = 0.0, graded: bool = False):
        self.n_items = as_int(n_items, "n_items", 2, len(CATALOGUE))
        self.max_turns = as_int(max_turns, "max_turns", 1, MAX_TURNS)
        self.noise = as_real(noise, "noise", 0.0, 0.5, hi_open=True)
        self.phrasing = as_choice(phrasing, "phrasing", ("varied", "fixed"))
        self.reveal_candidates = as_bool(reveal_candidates, "reveal_candidates")
        self.tell_horizon, self.graded = as_bool(tell_horizon, "tell_horizon"), as_bool(graded, "graded")
        self.demo_epsilon = as_real(demo_epsilon, "demo_epsilon", 0.0, 1.0)
        self.demo_final_error = as_real(demo_final_error, "demo_final_error", 0.0, 1.0)
        self.items: tuple[str, ...] = tuple(list(CATALOGUE)[:n_items])
        self.table = np.array([CATALOGUE[i] for i in self.items], dtype=bool)  # [items, attributes]
        self._item_re = re.compile(r"\b(" + "|".join(sorted(CATALOGUE, key=len, reverse=True)) + r")s?\b")
        self._attr_res = [(a, re.compile(r"\b(" + "|".join(map(re.escape, kw)) + r")")) for a, (_, kw) in ATTRIBUTES.items()]
        # memo tables (speed: the same texts and fact sets recur across a batch); all hold immutable values
        self._parse_memo: dict[str, Parsed] = {}
        self._posterior_memo: dict[tuple, np.ndarray] = {}
        self._best_memo: dict[tuple, float] = {}
        self._candidates_memo: dict[tuple, str] = {}
        self._answer_memo: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self._openings: dict[int, str] = {}

    # ----------------------------------------------------------------- episodes
    def opening(self, horizon: int) -> str:
        """The user's first message: the catalogue, and how the game goes (H itself only with ``tell_horizon``);
        with H = 1 it already asks for the final guess."""
        text = self._openings.get(horizon)
        if text is None:
            items = OPENING.format(items=", ".join(self.items))
            if self.tell_horizon:
                turns = "1 turn: make your guess now" if horizon == 1 else (
                    f"{horizon} turns: ask yes/no questions about one attribute at a time, and guess on turn {horizon}")
                text = f"{items} You have {turns}."
            else:
                text = f"{items} {FINAL}" if horizon == 1 else f"{items} {ASK}"
            self._openings[horizon] = text
        return text

    @staticmethod
    def is_final_turn(messages: Conversation) -> bool:
        """Whether the user asked for the final guess in its last message (the assistant's next turn is turn H)."""
        last = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        return FINAL in last or bool(re.search(r"You have 1 turn\b", last))

    def new_episode(self, rng: np.random.Generator, horizon: int, split: str = "train") -> tuple[Conversation, Any, dict]:
        goal = self.items[int(rng.integers(self.n_items))]
        return [{"role": "user", "content": self.opening(horizon)}], goal, {"facts": [], "solved": False}

    def check_goal(self, goal: Any) -> str:
        """The goal as a plain str if it is one of this task's items; a ValueError that lists them otherwise."""
        if not isinstance(goal, str) or goal not in self.items:
            raise ValueError(f"the hidden goal must be one of this task's items ({', '.join(self.items)}), got {goal!r}")
        return str.__str__(goal)

    def check_memory(self, memory: dict) -> None:
        """Raise a ValueError if ``memory`` is not this task's: ``{"facts": [[kind, key, answer], ...], "solved": bool}``
        with kind "attr" (key an attribute) or "guess" (key an animal) and a bool answer."""
        facts, solved = memory.get("facts"), memory.get("solved")
        fix = "; rebuild it with task.memory_from_prefix(messages, goal)"
        if not isinstance(facts, list) or not isinstance(solved, bool):
            raise ValueError(f"the memory must hold 'facts' (a list) and 'solved' (a bool), got {memory!r:.200}{fix}")
        for f in facts:
            ok = isinstance(f, (list, tuple)) and len(f) == 3 and isinstance(f[2], bool) and (
                (f[0] == "attr" and f[1] in ATTRIBUTE_NAMES) or (f[0] == "guess" and f[1] in CATALOGUE))
            if not ok:
                raise ValueError(f"the memory has a malformed fact {f!r}; a fact is ['attr', attribute, bool] or "
                                 f"['guess', animal, bool]{fix}")

    def memory_from_prefix(self, messages: Conversation, goal: Any = None) -> dict:
        """Rebuild the facts of a dialogue from its text alone (as the assistant sees them)."""
        facts = self.facts_from_messages(messages)
        return {"facts": facts, "solved": any(k == "guess" and v for k, _, v in facts)}

    def facts_from_messages(self, messages: Conversation) -> list:
        """Each assistant question or guess with the user's yes/no answer that followed it."""
        facts = []
        for a, u in zip(messages, messages[1:]):
            if a["role"] != "assistant" or u["role"] != "user":
                continue
            p = self.parse(a["content"])
            if p.kind in ("question", "guess"):
                facts.append(["attr" if p.kind == "question" else "guess", p.key,
                              u["content"].lower().startswith(("yes", "correct"))])
        return facts

    # ----------------------------------------------------------------- language
    def parse(self, text: str) -> Parsed:
        p = self._parse_memo.get(text)
        if p is None:
            p = self._parse(text)
            if len(self._parse_memo) >= 65536:
                self._parse_memo.clear()
            self._parse_memo[text] = p
        return p

    def _parse(self, text: str) -> Parsed:
        t = text.lower()
        m = self._item_re.search(t)
        if m:
            return Parsed("guess", m.group(1))
        hits = [a for a, r in self._attr_res if r.search(t)]
        if len(hits) == 1:
            return Parsed("question", hits[0])
        return Parsed("too_many" if hits else "unclear")

    def answer(self, goal: str, attribute: str) -> bool:
        return bool(CATALOGUE[goal][_COLUMN[attribute]])

    def posterior(self, facts: Sequence) -> np.ndarray:
        """P(item | answers so far), exact under the noise model (a read-only array)."""
        key = tuple(sorted((kind, k, bool(v)) for kind, k, v in facts))  # the posterior ignores the order
        p = self._posterior_memo.get(key)
        if p is None:
            p = self._posterior(facts)
            p.flags.writeable = False
            if len(self._posterior_memo) >= 65536:
                self._posterior_memo.clear()
            self._posterior_memo[key] = p
        return p

    def _answer_rows(self, attribute: str, value: bool) -> tuple[np.ndarray, np.ndarray]:
        """For the answer ``value`` to ``attribute``: which items agree with it, and each item's log-likelihood of
        it under the noise model (memoised: both depend on the answer alone)."""
        key = (attribute, value, self.noise)
        rows = self._answer_memo.get(key)
        if rows is None:
            agree = self.table[:, _COLUMN[attribute]] == value
            loglik = np.where(agree, math.log1p(-self.noise), math.log(self.noise) if self.noise > 0 else -np.inf)
            agree.flags.writeable = loglik.flags.writeable = False
            rows = self._answer_memo[key] = (agree, loglik)
        return rows

    def _posterior(self, facts: Sequence) -> np.ndarray:
        logp = np.zeros(self.n_items)
        for kind, key, value in facts:
            if kind == "attr":
                logp += self._answer_rows(key, bool(value))[1]
            elif kind == "guess" and not value and key in self.items:
                logp[self.items.index(key)] = -np.inf
        if np.isneginf(logp).all():  # contradictory answers (possible only with noise == 0 and a bad prefix)
            return np.full(self.n_items, 1.0 / self.n_items)
        p = np.exp(logp - logp.max())
        return p / p.sum()

    @staticmethod
    def _memo(memo: dict, facts: Sequence, compute: Any) -> Any:
        """``compute(facts)``, memoised on the facts as they are (every function memoised here ignores their
        order, and equal facts give equal keys; facts that cannot be hashed are computed every time)."""
        try:
            key = tuple(map(tuple, facts))
            out = memo.get(key)
        except TypeError:
            return compute(facts)
        if out is None:
            out = compute(facts)
            if len(memo) >= 65536:
                memo.clear()
            memo[key] = out
        return out

    def _best(self, facts: Sequence) -> float:
        return float(self.posterior(facts).max())

    def _candidates_text(self, facts: Sequence) -> str:
        return ", ".join(self.candidates(facts))

    def best_posterior(self, facts: Sequence) -> float:
        """The largest posterior probability of an item (memoised)."""
        try:  # the memo hit, inlined: the judge asks this for every dialogue at every step
            out = self._best_memo.get(tuple(map(tuple, facts)))
        except TypeError:
            out = None
        return out if out is not None else self._memo(self._best_memo, facts, self._best)

    def candidates_text(self, facts: Sequence) -> str:
        """``", ".join(self.candidates(facts))`` (memoised)."""
        try:
            out = self._candidates_memo.get(tuple(map(tuple, facts)))
        except TypeError:
            out = None
        return out if out is not None else self._memo(self._candidates_memo, facts, self._candidates_text)

    def candidates(self, facts: Sequence) -> list[str]:
        """Items consistent with every answer given (all not-yet-excluded items if the answers contradict)."""
        ok = np.ones(self.n_items, dtype=bool)
        for kind, key, value in facts:
            if kind == "attr":
                ok &= self._answer_rows(key, bool(value))[0]
            elif kind == "guess" and not value and key in self.items:
                ok[self.items.index(key)] = False
        if not ok.any():
            ok = np.array([not any(k == "guess" and key == it for k, key, _ in facts) for it in self.items])
        return [it for it, o in zip(self.items, ok) if o]

    # ----------------------------------------------------------------- components
    def make_scripted_user(self, **kwargs) -> "GuessItemUser":
        return GuessItemUser(self, **kwargs)

    def make_rule_judge(self, **kwargs) -> "GuessItemJudge":
        return GuessItemJudge(self, **kwargs)

    def expert_speaker(self, seed: int | None = None):
        """A policy known to be good: the scripted *informative* questioner (it identifies the animal with the
        fewest questions and guesses only when asked), in the demonstrator's wording."""
        from .guess_item_players import ScriptedQuestioner

        return ScriptedQuestioner(self, "informative", seed=seed, phrasing="fixed")

    def make_backend(self, role: str) -> None:
        """The scripted user and the rule judge need no text-generation back end."""
        return None

    def offline_speaker(self, seed: int | None = None):
        """The behaviour policy of this task's offline data: the scripted *demonstrator* whose dialogues pi_0
        imitates (:mod:`refuel_env.tasks.guess_item_players`), in the wording of pi_0's demonstrations ("fixed")."""
        from .guess_item_players import ScriptedQuestioner

        return ScriptedQuestioner(self, "demonstrator", epsilon=self.demo_epsilon, final_error=self.demo_final_error,
                                  seed=seed, phrasing="fixed")


@TASKS.register("guess-item-v0")
def _make_guess_item(**kwargs) -> GuessItemTask:
    return GuessItemTask(**kwargs)


from .guess_item_rules import GuessItemJudge, GuessItemUser  # noqa: E402  (the task's own user and judge)
