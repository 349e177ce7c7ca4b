"""The compiled deflate writes zlib streams that zlib inflates back to the input."""

import zlib

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tracekit.io import perfetto_deflate as deflate


def roundtrip(data: bytes) -> bytes:
    out = deflate.compress(data)
    assert zlib.decompress(out) == data
    return out


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=5000))
def test_arbitrary_bytes_inflate_back(data):
    roundtrip(data)


@st.composite
def repetitive(draw):
    """Bytes built from a few short words and runs: long matches, every distance code, the
    258-byte length, blocks that fill up (BLOCK_SYMBOLS), skewed codes that must be limited."""
    words = draw(st.lists(st.binary(min_size=1, max_size=12), min_size=1, max_size=6))
    parts = []
    for _ in range(draw(st.integers(0, 400))):
        kind = draw(st.integers(0, 3))
        if kind == 0:
            parts.append(draw(st.sampled_from(words)))
        elif kind == 1:
            parts.append(bytes([draw(st.integers(0, 255))]) * draw(st.integers(1, 700)))
        elif kind == 2:
            parts.append(draw(st.binary(max_size=40)))
        else:
            parts.append(draw(st.sampled_from(words)) * draw(st.integers(1, 100)))
    return b"".join(parts)


@settings(max_examples=200, deadline=None)
@given(repetitive())
def test_repetitive_bytes_inflate_back(data):
    roundtrip(data)


def test_edge_sizes_and_block_boundaries():
    rng = np.random.default_rng(1)
    for n in (0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 255, 256, 257, 258, 259, 65535, 65536, 65537):
        roundtrip(bytes(n))
        roundtrip(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
    # more symbols than one block holds, literals only and matches only
    roundtrip(rng.integers(0, 256, 3 * deflate.BLOCK_SYMBOLS + 11, dtype=np.uint8).tobytes())
    roundtrip(b"ab" * (3 * deflate.BLOCK_SYMBOLS * 258))
    # a distance of exactly the window, and one just past it
    block = rng.integers(0, 256, 40, dtype=np.uint8).tobytes()
    for gap in (32768 - 40, 32768 - 39):
        roundtrip(block + rng.integers(0, 256, gap, dtype=np.uint8).tobytes() + block)


def test_incompressible_data_is_stored_and_barely_grows():
    data = np.random.default_rng(2).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    out = roundtrip(data)
    assert len(out) < len(data) * 1.001 + 64


def test_skewed_frequencies_need_length_limited_codes():
    # Fibonacci-like counts give a Huffman tree deeper than 15 bits unless limited
    fib = [1, 1]
    while len(fib) < 30:
        fib.append(fib[-1] + fib[-2])
    data = b"".join(bytes([i]) * f for i, f in enumerate(fib))
    rng = np.random.default_rng(3)
    roundtrip(bytes(rng.permutation(np.frombuffer(data, np.uint8))))


def test_same_bytes_every_time_and_compresses_like_zlib():
    rng = np.random.default_rng(4)
    rows = [b"\x0a\x1c\x40" + bytes([int(x) % 200]) + b"\x50\x83\x02\x5a\x12\x22\x04\x08\x01\x20" +
            bytes([int(y) % 120]) + b"\x48\x01\x50\x02" for x, y in rng.integers(0, 1000, (20000, 2))]
    data = b"".join(rows)
    a, b = roundtrip(data), roundtrip(data)
    assert a == b
    assert len(a) < 1.25 * len(zlib.compress(data, 1))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 1 << 40), min_size=2, max_size=286), st.sampled_from([7, 15]))
def test_code_lengths_are_complete_and_limited(freq, max_bits):
    freq = np.array(freq, np.int64)
    if np.count_nonzero(freq) > (1 << max_bits):
        return
    lengths = np.zeros(len(freq), np.int64)
    deflate._code_lengths(freq, max_bits, lengths)
    used = lengths > 0
    assert lengths.max() <= max_bits
    assert (used | (freq == 0)).all()  # every symbol that occurs gets a code
    assert used.sum() >= 2
    assert sum(2.0 ** -int(b) for b in lengths[used]) == 1.0  # complete: zlib rejects anything else


def test_code_lengths_of_fibonacci_counts_are_limited():
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    lengths = np.zeros(40, np.int64)
    deflate._code_lengths(np.array(fib, np.int64), 15, lengths)
    assert lengths.max() == 15 and sum(2.0 ** -int(b) for b in lengths) == 1.0
