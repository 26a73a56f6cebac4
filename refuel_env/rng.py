"""Random generators of dialogues: built fast, built only when used, and checked against numpy.

Every dialogue owns three random generators, ``np.random.default_rng([seed, 0, split])`` for the episode
(horizon and goal), ``default_rng([seed, 1])`` for the user and ``default_rng([seed, 2])`` for the judge.
Building one the ordinary way costs tens of microseconds, most of it in :class:`numpy.random.SeedSequence`,
which is more than a whole step of the built-in task. This module builds the *same* generators (bit for
bit, checked at import against numpy's own ``SeedSequence``, with numpy's path as the fallback) from a
seed sequence hash computed in plain Python or, for a batch of dialogues, with one vectorised pass, and
lets a dialogue hold a :class:`LazyRng` until the user or the judge first asks for its generator.

SeedSequence's algorithm is part of numpy's stream-compatibility promise (NEP 19); if a numpy release
changed it anyway, the import-time check would notice and every generator would come from numpy itself.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from numpy.random.bit_generator import ISpawnableSeedSequence

BIT_GENERATORS: dict[str, type] = {cls.__name__: cls for cls in
                                   (np.random.PCG64, np.random.PCG64DXSM, np.random.MT19937, np.random.Philox,
                                    np.random.SFC64)}
"""The bit generators a saved random state may name (numpy's own); any other name is refused."""

_MASK = 0xFFFFFFFF
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R, _POOL = 0xCA01F9DD, 0x4973F715, 4


def _constants(init: int, mult: int, n: int) -> list[int]:
    """The hash multipliers SeedSequence uses, in order: they do not depend on the entropy."""
    out, h = [], init
    for _ in range(n):
        out.append(h)
        h = (h * mult) & _MASK
    return out


_HASH_A = _constants(_INIT_A, _MULT_A, 64)  # (xor constant, multiplier) pairs: _HASH_A[k], _HASH_A[k + 1]
_HASH_B = _constants(_INIT_B, _MULT_B, 9)


def entropy_words(entropy: Sequence[int]) -> list[int]:
    """``SeedSequence``'s coercion of a list of non-negative ints to 32-bit words (each int, low word first)."""
    words = []
    for n in entropy:
        n = int(n)
        if n < 0:
            raise ValueError(f"seed entropy must be non-negative, got {n}")
        if n == 0:
            words.append(0)
        while n > 0:
            words.append(n & _MASK)
            n >>= 32
    return words


def seed_state(entropy: Sequence[int]) -> np.ndarray:
    """``SeedSequence(entropy).generate_state(4, np.uint64)``: the seed of a PCG64 (numpy's own mixing of the
    entropy into its pool, which is fast when the entropy is given as 32-bit words, then the output hash)."""
    pool = np.random.SeedSequence(np.array(entropy_words(entropy), dtype=np.uint32)).pool.tolist()
    out = []
    for i in range(8):
        v = ((pool[i & 3] ^ _HASH_B[i]) * _HASH_B[i + 1]) & _MASK
        out.append(v ^ (v >> 16))
    return np.array([out[0] | out[1] << 32, out[2] | out[3] << 32, out[4] | out[5] << 32, out[6] | out[7] << 32],
                    dtype=np.uint64)


_U = np.uint32  # the vectorised hash works on 32-bit words: numpy's uint32 arithmetic wraps as SeedSequence's does
_XOR_A, _MUL_A = np.array(_HASH_A[:4], dtype=_U), np.array(_HASH_A[1:5], dtype=_U)
_DST = [[d for d in range(4) if d != src] for src in range(4)]
_XOR_MIX = [np.array(_HASH_A[4 + 3 * src:7 + 3 * src], dtype=_U) for src in range(4)]
_MUL_MIX = [np.array(_HASH_A[5 + 3 * src:8 + 3 * src], dtype=_U) for src in range(4)]
_XOR_B, _MUL_B = np.array(_HASH_B[:8], dtype=_U), np.array(_HASH_B[1:9], dtype=_U)
_LANES = [0, 1, 2, 3, 0, 1, 2, 3]
_SIXTEEN, _L32, _R32 = _U(16), _U(_MIX_L), _U(_MIX_R)


def _words(first: np.ndarray, tail: np.ndarray) -> np.ndarray:
    """Entropies ``[first[i], *tail[i]]`` (``first`` below 2**64, ``tail`` [N, 2] of ints below 2**32, trailing zeros
    allowed) as an [N, 4] table of 32-bit words. Zero words past the end of an entropy change nothing when it fits in
    4 words (SeedSequence hashes a missing pool word as a zero), so entropies of lengths 1 to 3 share one table."""
    lo, hi = (first & np.uint64(_MASK)).astype(_U), (first >> np.uint64(32)).astype(_U)
    out = np.zeros((len(first), 4), dtype=_U)
    out[:, 0] = lo
    two = hi > 0  # a first int of two words shifts the others by one word
    out[:, 1:3] = tail
    if two.any():
        out[two, 1] = hi[two]
        out[two, 2:4] = tail[two]
    return out


def _hash(m: np.ndarray) -> np.ndarray:
    """SeedSequence's hash of [N, 4] entropy words (modified in place) into PCG64 seeds, [N, 4] uint64."""
    m ^= _XOR_A  # the first hash of each pool word
    m *= _MUL_A
    m ^= m >> _SIXTEEN
    for src in range(4):  # mix word src into every other word, as SeedSequence.mix_entropy does one at a time
        h = m[:, src:src + 1] ^ _XOR_MIX[src]
        h *= _MUL_MIX[src]
        h ^= h >> _SIXTEEN
        r = m[:, _DST[src]] * _L32
        r -= h * _R32
        r ^= r >> _SIXTEEN
        m[:, _DST[src]] = r
    v = m[:, _LANES] ^ _XOR_B  # generate_state(4, uint64): 8 words, paired low-high
    v *= _MUL_B
    v ^= v >> _SIXTEEN
    return np.ascontiguousarray(v, dtype="<u4").view("<u8").astype(np.uint64)


def seed_table(first: Sequence[int], tail: Sequence[Sequence[int]] | Sequence[int]) -> np.ndarray:
    """``SeedSequence([first[i], *tail[i]]).generate_state(4, np.uint64)`` for every i, as an [N, 4] array, in one
    vectorised pass (``first`` non-negative below 2**64; ``tail`` one row of at most 2 ints below 2**32 for all, or
    one per entropy; trailing zeros of a tail do not change the result)."""
    first = np.asarray(first, dtype=np.uint64)
    tail = np.broadcast_to(np.asarray(tail, dtype=_U).reshape(-1, 2) if np.size(tail) else np.zeros((1, 2), _U),
                           (len(first), 2))
    return _hash(_words(first, tail))


def _table_of(entropies: Sequence[Sequence[int]]) -> tuple[list[int], list[tuple[int, int]]] | None:
    """``entropies`` as (first ints, tails of 2), or None when one does not fit the vectorised path."""
    first, tail = [], []
    for e in entropies:
        if not 1 <= len(e) <= 3 or not 0 <= e[0] < 2**64 or not all(0 <= x <= _MASK for x in e[1:]):
            return None
        first.append(e[0])
        tail.append((*e[1:], 0, 0)[:2])
    return first, tail


def seed_states(entropies: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """:func:`seed_state` of many entropies, in one vectorised pass where they fit it (see :func:`seed_table`)."""
    cols = None if len(entropies) < VECTOR_MIN else _table_of(entropies)
    if cols is None:
        return [seed_state(e) for e in entropies]
    return list(seed_table(*cols))


VECTOR_MIN = 16
"""Below this many entropies the vectorised hash costs more than numpy's own, one at a time."""


class PrecomputedSeedSequence(ISpawnableSeedSequence):
    """A seed sequence whose PCG64 seed is already computed; anything else it is asked (other word counts,
    ``spawn``, ``entropy``, ``pool``...) is answered by numpy's own ``SeedSequence(entropy)``, built on demand."""

    __slots__ = ("entropy_given", "state", "_real")

    def __init__(self, entropy: Any, state: np.ndarray | None = None):
        self.entropy_given, self.state, self._real = entropy, state, None

    def real(self) -> np.random.SeedSequence:
        if self._real is None:
            e = self.entropy_given
            self._real = np.random.SeedSequence(list(e) if isinstance(e, tuple) else e)
        return self._real

    def generate_state(self, n_words: int, dtype: Any = np.uint32) -> np.ndarray:
        if n_words == 4 and dtype is np.uint64 and self.state is not None:  # what PCG64 asks for
            return self.state.copy()
        return self.real().generate_state(n_words, dtype)

    def spawn(self, n_children: int) -> list:
        return self.real().spawn(n_children)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in self.__slots__:
            raise AttributeError(name)
        return getattr(self.real(), name)

    def __reduce__(self):
        return (PrecomputedSeedSequence, (self.entropy_given, self.state))


def _self_check() -> bool:
    """True when the hashes above reproduce numpy's SeedSequence (checked once, at import)."""
    cases = [[0], [1, 2], [2**62 - 1, 0, 1], [2**40 + 7, 2], [123456789, 1], [2**64 + 5, 0, 0], [0, 0, 0, 0, 0, 9]]
    try:
        want = [np.random.SeedSequence(c).generate_state(4, np.uint64) for c in cases]
        ok = all(np.array_equal(seed_state(c), w) for c, w in zip(cases, want))
        short = [c for c in cases if len(c) <= 3 and c[0] < 2**64]  # the vectorised path (others take the scalar one)
        return ok and _table_of(short) is not None and all(
            np.array_equal(a, np.random.SeedSequence(c).generate_state(4, np.uint64))
            for a, c in zip(seed_table(*_table_of(short)), short))
    except Exception:  # pragma: no cover - a numpy without these internals: use numpy's own path
        return False


FAST = _self_check()


def generator(entropy: Sequence[int], state: np.ndarray | None = None) -> np.random.Generator:
    """``np.random.default_rng(list(entropy))``, bit for bit, built without numpy's slow seed hashing."""
    if not FAST:
        return np.random.default_rng(list(entropy))
    if state is None:
        state = seed_state(entropy)
    return np.random.Generator(np.random.PCG64(PrecomputedSeedSequence(entropy, state)))


def seeded(seeds: Sequence[int]) -> list[np.random.Generator]:
    """``[np.random.default_rng(s) for s in seeds]`` (non-negative int seeds), hashed in one pass for a large batch."""
    if FAST and len(seeds) >= VECTOR_MIN and max(seeds) < 2**64:
        table = seed_table(seeds, (0, 0))
        return [np.random.Generator(np.random.PCG64(PrecomputedSeedSequence(s, t))) for s, t in zip(seeds, table)]
    return [generator((s,)) for s in seeds]


def generators(entropies: Sequence[Sequence[int]], states: Sequence[np.ndarray] | None = None) -> list[np.random.Generator]:
    """:func:`generator` for many entropies (their seeds hashed in one vectorised pass, unless given as ``states``)."""
    if not FAST:
        return [np.random.default_rng(list(e)) for e in entropies]
    if states is None:
        states = seed_states(entropies)
    return [np.random.Generator(np.random.PCG64(PrecomputedSeedSequence(e, s))) for e, s in zip(entropies, states)]


def from_state(state: dict) -> np.random.Generator:
    """A generator with the given ``bit_generator.state`` (the caller has checked the bit generator's name)."""
    bg = BIT_GENERATORS[state["bit_generator"]]
    g = np.random.Generator(bg(PrecomputedSeedSequence((0,)) if bg is not np.random.PCG64 or not FAST
                               else PrecomputedSeedSequence((0,), _ZERO_STATE)))
    g.bit_generator.state = state
    return g


_ZERO_STATE = seed_state((0,))


class LazyRng:
    """A random generator not built yet: from a seed (``entropy``, as ``default_rng(entropy)``) or from a saved
    ``bit_generator.state``. A :class:`~refuel_env.types.DialogueState` holds one until its generator is first
    used; it is immutable, so copies of a state may share it."""

    __slots__ = ("entropy", "seed", "saved")

    def __init__(self, entropy: Sequence[int] | None = None, seed: np.ndarray | None = None, saved: dict | None = None):
        self.entropy, self.seed, self.saved = (None if entropy is None else tuple(entropy)), seed, saved

    def make(self) -> np.random.Generator:
        if self.saved is not None:
            return from_state(self.saved)
        return generator(self.entropy, self.seed)

    def __deepcopy__(self, memo: dict) -> "LazyRng":
        return self

    def __copy__(self) -> "LazyRng":
        return self

    def __reduce__(self):
        return (LazyRng, (self.entropy, self.seed, self.saved))

    def __repr__(self) -> str:
        return f"LazyRng({'entropy=' + repr(self.entropy) if self.saved is None else 'saved state'})"


def lazy_many(entropies: Sequence[Sequence[int]], states: Sequence[np.ndarray] | None = None) -> list[LazyRng]:
    """Lazy generators for many entropies (with their seeds, when given as ``states``)."""
    if states is None or not FAST:
        return [LazyRng(e) for e in entropies]
    return [LazyRng(e, s) for e, s in zip(entropies, states)]


def freeze(g: Any) -> Any:
    """A :class:`LazyRng` that rebuilds generator ``g`` exactly as it is now (for cheap deep copies), or a deep
    copy of ``g`` when its bit generator is not one of numpy's own."""
    if type(g) is LazyRng:
        return g
    if isinstance(g, np.random.Generator) and type(g.bit_generator).__name__ in BIT_GENERATORS \
            and type(g.bit_generator) is BIT_GENERATORS[type(g.bit_generator).__name__]:
        return LazyRng(saved=g.bit_generator.state)
    import copy

    return copy.deepcopy(g)


def dialogue_rngs(seeds: Sequence[int], splits: Sequence[int]) -> tuple[list, list, list]:
    """The generators of dialogues with these episode seeds: ``default_rng([seed, 0, split])`` for the episode
    (built), and lazy ``default_rng([seed, 1])`` for the user and ``default_rng([seed, 2])`` for the judge. The
    seeds of the first two are hashed in one vectorised pass for a large batch; the judge's (which a rule judge
    never uses) only if it is ever built."""
    episode = [(s, 0, sp) for s, sp in zip(seeds, splits)]
    user = [(s, 1) for s in seeds]
    judge = [LazyRng((s, 2)) for s in seeds]
    if FAST and 2 * len(seeds) >= VECTOR_MIN and max(seeds) < 2**64:
        table = seed_table(list(seeds) * 2, [(0, sp) for sp in splits] + [(1, 0)] * len(seeds))
        return generators(episode, table[:len(seeds)]), lazy_many(user, table[len(seeds):]), judge
    return generators(episode), lazy_many(user), judge
