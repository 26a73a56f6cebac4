"""Gymnasium spaces for chat messages.

Gymnasium's :class:`~gymnasium.spaces.Text` checks every character against a charset, and its
default charset rejects spaces and punctuation. A chat message is any Unicode string, so
:class:`MessageText` accepts any ``str`` within its length bounds and *samples* from printable
ASCII (letters, digits, punctuation and spaces): the space is honest about what ``step`` accepts.
"""

from __future__ import annotations

import copy
import string
from typing import Any, Callable

from gymnasium import spaces

PRINTABLE = string.ascii_letters + string.digits + string.punctuation + " "
ROLE_CHARS = "abcdefghijklmnopqrstuvwxyz"


class MessageText(spaces.Text):
    """Any Unicode string of ``min_length..max_length`` characters; samples are printable ASCII."""

    def __init__(self, max_length: int, *, min_length: int = 0, seed: Any = None):
        super().__init__(max_length, min_length=min_length, charset=PRINTABLE, seed=seed)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length

    def __repr__(self) -> str:
        return f"MessageText({self.min_length}, {self.max_length})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, MessageText) and (self.min_length, self.max_length) == (other.min_length, other.max_length)


def message_space(max_chars: int) -> spaces.Dict:
    return spaces.Dict({"role": spaces.Text(9, min_length=4, charset=ROLE_CHARS),
                        "content": MessageText(max_chars)})


def observation_space(max_chars: int, max_turns: int) -> spaces.Dict:
    """``{"messages": (message, ...), "turn": int}``: the conversation so far and the number of
    assistant turns already taken (0 after reset; the next response is turn ``turn + 1``)."""
    return spaces.Dict({"messages": spaces.Sequence(message_space(max_chars)),
                        "turn": spaces.Discrete(max_turns + 1)})


def batch_copies(single: spaces.Space, n: int, fresh: Callable[[], spaces.Space]) -> spaces.Tuple:
    """What ``gymnasium.vector.utils.batch_space`` makes of a ``Text`` or ``Sequence`` space (a ``Tuple`` of ``n``
    copies, each seeded from the single space's generator), with the copies built by ``fresh()`` instead of
    deep-copied: equal spaces that sample the same values, made in milliseconds rather than a second."""
    rng = copy.deepcopy(single.np_random)
    batched = spaces.Tuple(tuple(fresh() for _ in range(n)), seed=copy.deepcopy(rng))
    batched.seed([int(x) for x in rng.integers(0, int(1e8), n)])
    return batched


def batched_observation_space(single: spaces.Dict, n: int, max_chars: int, max_turns: int) -> spaces.Dict:
    """``batch_space(observation_space(max_chars, max_turns), n)``, built without its deep copies."""
    from gymnasium.vector.utils import batch_space

    messages = batch_copies(single["messages"], n, lambda: spaces.Sequence(message_space(max_chars)))
    return spaces.Dict({"messages": messages, "turn": batch_space(single["turn"], n)},
                       seed=copy.deepcopy(single.np_random), sort_keys=single.sort_keys)
