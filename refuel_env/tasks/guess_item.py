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
from ..types import Conversation, DialogueState, JudgeScore, UserTurn

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
        if not 2 <= n_items <= len(CATALOGUE):
            raise ValueError(f"n_items must be in 2..{len(CATALOGUE)}, got {n_items}")
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        if not 0.0 <= noise < 0.5:
            raise ValueError(f"noise must be in [0, 0.5), got {noise}")
        if phrasing not in ("varied", "fixed"):
            raise ValueError(f"phrasing must be 'varied' or 'fixed', got {phrasing!r}")
        for name, v in (("demo_epsilon", demo_epsilon), ("demo_final_error", demo_final_error)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {v}")
        self.n_items, self.max_turns, self.noise, self.phrasing = n_items, max_turns, noise, phrasing
        self.reveal_candidates, self.tell_horizon, self.graded = bool(reveal_candidates), bool(tell_horizon), bool(graded)
        self.demo_epsilon, self.demo_final_error = float(demo_epsilon), float(demo_final_error)
        self.items: tuple[str, ...] = tuple(list(CATALOGUE)[:n_items])
        self.table = np.array([CATALOGUE[i] for i in self.items], dtype=bool)  # [items, attributes]
        self._item_re = re.compile(r"\b(" + "|".join(sorted(CATALOGUE, key=len, reverse=True)) + r")s?\b")
        self._attr_res = [(a, re.compile(r"\b(" + "|".join(map(re.escape, kw)) + r")")) for a, (_, kw) in ATTRIBUTES.items()]
        # memo tables (speed: the same texts and fact sets recur across a batch); both hold immutable values
        self._parse_memo: dict[str, Parsed] = {}
        self._posterior_memo: dict[tuple, np.ndarray] = {}

    # ----------------------------------------------------------------- episodes
    def opening(self, horizon: int) -> str:
        """The user's first message: the catalogue, and how the game goes (H itself only with ``tell_horizon``);
        with H = 1 it already asks for the final guess."""
        items = OPENING.format(items=", ".join(self.items))
        if self.tell_horizon:
            turns = "1 turn: make your guess now" if horizon == 1 else (
                f"{horizon} turns: ask yes/no questions about one attribute at a time, and guess on turn {horizon}")
            return f"{items} You have {turns}."
        return f"{items} {FINAL}" if horizon == 1 else f"{items} {ASK}"

    @staticmethod
    def is_final_turn(messages: Conversation) -> bool:
        """Whether the user asked for the final guess in its last message (the assistant's next turn is turn H)."""
        last = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        return FINAL in last or bool(re.search(r"You have 1 turn\b", last))

    def new_episode(self, rng: np.random.Generator, horizon: int, split: str = "train") -> tuple[Conversation, Any, dict]:
        goal = self.items[int(rng.integers(self.n_items))]
        return [{"role": "user", "content": self.opening(horizon)}], goal, {"facts": [], "solved": False}

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
        return bool(CATALOGUE[goal][ATTRIBUTE_NAMES.index(attribute)])

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

    def _posterior(self, facts: Sequence) -> np.ndarray:
        logp = np.zeros(self.n_items)
        col = {a: i for i, a in enumerate(ATTRIBUTE_NAMES)}
        for kind, key, value in facts:
            if kind == "attr":
                agree = self.table[:, col[key]] == bool(value)
                with np.errstate(divide="ignore"):
                    logp += np.where(agree, math.log1p(-self.noise), math.log(self.noise) if self.noise > 0 else -np.inf)
            elif kind == "guess" and not value and key in self.items:
                logp[self.items.index(key)] = -np.inf
        if np.all(np.isneginf(logp)):  # contradictory answers (possible only with noise == 0 and a bad prefix)
            return np.full(self.n_items, 1.0 / self.n_items)
        p = np.exp(logp - logp.max())
        return p / p.sum()

    def candidates(self, facts: Sequence) -> list[str]:
        """Items consistent with every answer given (all not-yet-excluded items if the answers contradict)."""
        col = {a: i for i, a in enumerate(ATTRIBUTE_NAMES)}
        ok = np.ones(self.n_items, dtype=bool)
        for kind, key, value in facts:
            if kind == "attr":
                ok &= self.table[:, col[key]] == bool(value)
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


class GuessItemUser:
    """Scripted user of the guess-item task. Batched: one call answers every dialogue."""

    def __init__(self, task: GuessItemTask):
        self.task = task

    def _pick(self, rng: np.random.Generator, options: tuple[str, ...]) -> str:
        return options[0] if self.task.phrasing == "fixed" else options[int(rng.integers(len(options)))]

    def reply(self, states: Sequence[DialogueState]) -> list[UserTurn]:
        out = []
        for s in states:
            p = self.task.parse(s.last_assistant)
            end = False
            if p.kind == "guess":
                correct = p.key == s.goal
                s.memory["facts"].append(["guess", p.key, correct])
                if correct:
                    s.memory["solved"] = True
                    text, end = RIGHT.format(item=p.key), True
                else:
                    text = WRONG.format(item=p.key)
            elif p.kind == "question":
                truth = self.task.answer(s.goal, p.key)
                flip = self.task.noise > 0 and s.user_rng.random() < self.task.noise
                said = truth != flip
                s.memory["facts"].append(["attr", p.key, said])
                text = self._pick(s.user_rng, YES if said else NO)
            else:
                text = TOO_MANY if p.kind == "too_many" else UNCLEAR
            if not end and self.task.reveal_candidates and p.kind in ("guess", "question"):
                text = f"{text} {POSSIBLE.format(items=', '.join(self.task.candidates(s.memory['facts'])))}"
            if not end and s.turn == s.horizon - 1:
                text = f"{text} {FINAL}"
            out.append(UserTurn(text, end=end, cost={"user_calls": 1}))
        return out


class GuessItemJudge:
    """Rule judge: 1 for a correct guess; before the horizon, the best guess's posterior probability."""

    name = "guess-item-rule"

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
            value, how = float(self.task.posterior(s.memory["facts"]).max()), "best-guess posterior"
        return JudgeScore(value, components={"correct_guess": float(guessed or bool(s.memory.get("solved")))},
                          provenance={"judge": self.name, "rule": how}, cost={"judge_calls": 1})

    def score(self, states: Sequence[DialogueState]) -> list[JudgeScore]:
        return [self._one(s) for s in states]

    def compare(self, states_a: Sequence[DialogueState], states_b: Sequence[DialogueState]) -> list[float]:
        out = []
        for sa, sb in zip(states_a, states_b, strict=True):
            a, b = self._one(sa).value, self._one(sb).value
            out.append(0.5 if a == b else float(a > b))
        return out


@TASKS.register("guess-item-v0")
def _make_guess_item(**kwargs) -> GuessItemTask:
    return GuessItemTask(**kwargs)
