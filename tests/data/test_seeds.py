"""One derived-seed function serves the toy data's test split, the data shards and the network initialisation."""

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from diffusion_objectives.data import sharding, toy
from diffusion_objectives.training import build


def test_derive_seed_is_one_function():
    assert build.derive_seed is toy.derive_seed is sharding.derive_seed


@given(st.text(max_size=20), st.integers(-(2**40), 2**40))
def test_derive_seed_is_the_first_63_bits_of_blake2b_of_the_parts(tag, seed):
    digest = hashlib.blake2b(repr((tag, seed)).encode(), digest_size=8).digest()
    expected = sum(byte << (8 * i) for i, byte in enumerate(digest)) // 2  # little-endian, one bit dropped
    assert toy.derive_seed(tag, seed) == expected and 0 <= expected < 2**63
