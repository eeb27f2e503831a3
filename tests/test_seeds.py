"""components.seeds: the one seed derivation gives, bit for bit, the seeds every stage has recorded."""

from __future__ import annotations

import hashlib
import zlib

import numpy as np
import pytest

from components.masks.dataset import mask_seed
from components.metrics.slices import case_rng
from components.seeds import derive_rng, derive_seed, seed_word
from components.synthesis.training import derive_seeds
from components.synthesis.writer import case_seed

RUN_SEEDS = (0, 3, 2**31 - 1, 2**32 - 1)
CASES = ("BraTS-GLI-00001-000", "BraTS-PHA-00000-000-aug003", "x")


def _first_word(entropy: list[int]) -> int:
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


@pytest.mark.parametrize("seed", RUN_SEEDS)
def test_synthetic_case_seeds_are_the_crc32_recipe(seed):
    for cid in CASES:
        for k in (0, 1, 7):
            old = _first_word([seed, zlib.crc32(cid.encode()), k])
            assert derive_seed(seed, cid, k) == case_seed(seed, cid, k) == old


@pytest.mark.parametrize("seed", RUN_SEEDS)
def test_mask_seeds_keep_their_sha256_word(seed):
    for cid in CASES:
        word = int(hashlib.sha256(cid.encode()).hexdigest()[:8], 16)
        for k in (0, 1, 7):
            assert mask_seed(seed, cid, k) == derive_seed(seed, word, k) == _first_word([seed, word, k])


@pytest.mark.parametrize("seed", RUN_SEEDS)
def test_phantom_case_seeds_are_the_two_word_recipe(seed):
    for index in (0, 1, 41):
        assert derive_seed(seed, index) == _first_word([seed, index])


def test_generators_are_those_of_the_whole_sequence():
    for seed in RUN_SEEDS:
        for k in (1, 2, 3, 4, 5):  # the metrics' streams: slices, KID subsets, pairs, reference cases, floors
            old = np.random.default_rng(np.random.SeedSequence([seed, k]))
            assert derive_rng(seed, k).integers(1 << 62, size=4).tolist() == old.integers(1 << 62, size=4).tolist()
        h = hashlib.sha256("\0".join(("C1", "t1c", "slices")).encode()).digest()
        word = int.from_bytes(h[:8], "little")  # 64 bits: two words of the sequence, as before
        old = np.random.default_rng(np.random.SeedSequence([seed, word]))
        assert case_rng(seed, "C1", "t1c", "slices").random(3).tolist() == old.random(3).tolist()


def test_values_recorded_by_earlier_runs_are_pinned():
    assert case_seed(3, "BraTS-GLI-00001-000", 2) == 1835592820
    assert mask_seed(3, "BraTS-GLI-00001-000", 2) == 304412375
    assert derive_seed(7, 5) == 1002604896
    assert case_rng(3, "C1", "t1c").integers(1 << 30) == 748446425


def test_training_streams_are_spawned_children_not_derived_seeds():
    # derive_seeds spawns two children of SeedSequence(seed); that is another recipe, kept for its numbers
    a, b = np.random.SeedSequence(5).spawn(2)
    assert derive_seeds(5) == (int(a.generate_state(1)[0]), int(b.generate_state(1)[0]))
    assert derive_seeds(5)[0] != derive_seed(5, 0)


def test_keys_are_words_strings_their_crc32_and_negatives_refused():
    assert seed_word("abc") == zlib.crc32(b"abc") and seed_word(np.int64(9)) == 9
    with pytest.raises(ValueError, match="non-negative"):
        derive_seed(-1, 2)
