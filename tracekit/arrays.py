"""Array helpers for large tables and graphs: sorting by packed integer words, gathering many
columns at once, and the page size of numpy's allocations.

The first two avoid the costs that dominate table building at millions of rows: a stable ``argsort`` (a
merge sort) is ~20x slower than ``np.sort`` of one int64 word that packs the key and the row, and
each column gathered through a random permutation costs one cache miss per row, so narrow columns
are packed into as few 64-bit words as their value ranges allow and gathered together.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
from numba import njit

try:
    from numpy._core.multiarray import _set_madvise_hugepage
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _set_madvise_hugepage  # type: ignore[no-redef]


@contextlib.contextmanager
def small_pages() -> Iterator[None]:
    """Ask numpy not to back new arrays with transparent huge pages while the block runs (restored
    after). A replay allocates and frees gigabytes of short-lived multi-MB arrays; faulting them in
    as huge pages cost 4.3-5.0 s of system time per EP64 replay on the 2-core benchmark machine,
    against 1.5-1.8 s with 4 KB pages, and the engine's random accesses lost under 0.1 s."""
    previous = _set_madvise_hugepage(False)
    try:
        yield
    finally:
        _set_madvise_hugepage(previous)


def _bits(span: int) -> int:
    return max(int(span).bit_length(), 1)


def lexsort2(major: np.ndarray, minor: np.ndarray) -> np.ndarray:
    """``np.lexsort((minor, major))`` (stable) for integer keys, by one packed sort when they fit."""
    major = np.asarray(major, np.int64)
    minor = np.asarray(minor, np.int64)
    if major.size == 0:
        return np.zeros(0, np.int64)
    lo = int(minor.min())
    span = int(minor.max()) - lo + 1
    mlo = int(major.min())
    if _bits(int(major.max()) - mlo) + _bits(span) > 62:
        return np.lexsort((minor, major))
    key = major - mlo
    key *= span
    key += minor
    key -= lo
    return sort_packed(key, values=False)[0]


def sort_packed(key: np.ndarray, values: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """``(order, sorted_key)`` with ``order`` equal to ``np.argsort(key, kind="stable")``
    (``sorted_key`` is None unless ``values``)."""
    key = np.asarray(key, np.int64)
    n = key.shape[0]
    if n == 0:
        return np.zeros(0, np.int64), key.copy()
    bits = _bits(n)
    lo = int(key.min())
    span = int(key.max()) - lo
    if _bits(span) + bits > 63:
        order = np.argsort(key, kind="stable")
        return order, key[order] if values else None
    packed = key - lo
    packed <<= bits
    packed |= np.arange(n, dtype=np.int64)
    packed.sort()
    order = packed & ((1 << bits) - 1)
    if not values:
        return order, None
    packed >>= bits
    packed += lo
    return order, packed


@njit(cache=True)
def _pack(packed, start, col, lo, shift):
    for i in range(col.shape[0]):
        packed[start + i] |= (np.int64(col[i]) - lo) << shift


@njit(cache=True)
def _unpack(got, shift, mask, lo):
    out = np.empty(got.shape[0], np.int64)
    for i in range(got.shape[0]):
        out[i] = ((got[i] >> shift) & mask) + lo
    return out


def gather(cols: dict[str, list[np.ndarray]], index: np.ndarray) -> dict[str, np.ndarray]:
    """``{name: concatenate(parts)[index]}`` as int64 for integer columns given as lists of parts (all
    columns with parts of the same lengths), gathering packed words: columns whose value ranges fit
    together share one 64-bit word, so each row costs one random access per word, not per column."""
    index = np.asarray(index, np.int64)
    first = next(iter(cols.values()))
    bounds = np.cumsum([0] + [p.shape[0] for p in first])
    plan: list[list[tuple[str, int, int, int]]] = []  # words of (name, shift, bits, offset)
    used = 64
    for name, parts in cols.items():
        full = [p for p in parts if p.size]
        lo = min(int(p.min()) for p in full) if full else 0
        bits = _bits(max(int(p.max()) for p in full) - lo) if full else 1
        if bits > 62:
            plan.append([(name, 0, 64, 0)])
            used = 64
            continue
        if used + bits > 63:
            plan.append([])
            used = 0
        plan[-1].append((name, used, bits, lo))
        used += bits
    out: dict[str, np.ndarray] = {}
    for word in plan:
        packed = np.zeros(int(bounds[-1]), np.int64)
        for name, shift, bits, lo in word:
            for k, part in enumerate(cols[name]):
                if bits == 64:
                    packed[bounds[k]:bounds[k + 1]] = part
                elif part.size:
                    _pack(packed, int(bounds[k]), np.ascontiguousarray(part), lo, shift)
        got = packed[index]
        del packed
        for name, shift, bits, lo in word:
            out[name] = got if bits == 64 else _unpack(got, shift, (1 << bits) - 1, lo)
    return out
