"""The one seed derivation: a child seed (or generator) from a run seed and the names of what it seeds.

``derive_seed(seed, "BraTS-GLI-00000-000", 2)`` is ``SeedSequence([seed, crc32(case id), 2])``'s first
32-bit word: independent of the order in which cases are made and of the other cases. Integers are
entropy words as they are (non-negative, any size: a 64-bit value counts as two 32-bit words);
strings are mapped with zlib's CRC-32 of their UTF-8 bytes.
"""

from __future__ import annotations

import zlib

import numpy as np


def seed_word(key: int | str) -> int:
    """One entropy word of a seed sequence: an integer as it is, a string as its CRC-32."""
    if isinstance(key, str):
        return zlib.crc32(key.encode())
    value = int(key)
    if value < 0:
        raise ValueError(f"seed keys must be non-negative integers or strings, got {key!r}")
    return value


def seed_sequence(*keys: int | str) -> np.random.SeedSequence:
    """``np.random.SeedSequence`` of the keys' words, in order."""
    return np.random.SeedSequence([seed_word(k) for k in keys])


def derive_seed(*keys: int | str) -> int:
    """A 32-bit seed derived from ``keys`` (e.g. the run seed, a case id, a sample index)."""
    return int(seed_sequence(*keys).generate_state(1)[0])


def derive_rng(*keys: int | str) -> np.random.Generator:
    """A numpy generator seeded from ``keys`` (the whole sequence, not a 32-bit seed of it)."""
    return np.random.default_rng(seed_sequence(*keys))
