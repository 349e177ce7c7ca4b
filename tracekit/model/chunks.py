"""Vectorised bookkeeping for building task graphs: chunking, grouping and edge lists."""

from __future__ import annotations

import numpy as np
from numba import njit

from tracekit.arrays import lexsort2, sort_packed


def combine_keys(*cols: np.ndarray) -> np.ndarray:
    """One int64 key per row from several non-negative integer columns (mixed radix, order kept)."""
    key = np.zeros(len(cols[0]), dtype=np.int64)
    for c in cols:
        c = np.asarray(c, dtype=np.int64)
        radix = int(c.max()) + 1 if c.size else 1
        key = key * radix + c
    return key


def chunk_items(group: np.ndarray, order: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split items into chunks of at most ``size`` consecutive items (by ``order``) per group.

    Returns ``(item_chunk, chunk_group, chunk_items, chunk_index)``: the chunk id of every item
    (chunk ids run in (group, order) order), each chunk's group, item count and index within its group.
    """
    n = group.shape[0]
    if n == 0:
        z = np.zeros(0, np.int64)
        return z, z, z, z
    idx = lexsort2(group, order)
    item_chunk, chunk_group, chunk_items_, chunk_index = _chunk_runs(np.asarray(group, np.int64), idx, size)
    return item_chunk, chunk_group, chunk_items_, chunk_index


@njit(cache=True)
def _chunk_runs(group, idx, size):
    """Chunks of ``size`` consecutive items of each group, items visited in ``idx`` order."""
    n = idx.shape[0]
    item_chunk = np.empty(n, np.int64)
    chunk_group = np.empty(n, np.int64)
    chunk_items_ = np.zeros(n, np.int64)
    chunk_index = np.empty(n, np.int64)
    c = -1
    start = 0
    for i in range(n):
        g = group[idx[i]]
        if i == 0 or g != chunk_group[c]:
            start = i
        k = (i - start) // size
        if i == start or k != chunk_index[c]:
            c += 1
            chunk_group[c] = g
            chunk_index[c] = k
        chunk_items_[c] += 1
        item_chunk[idx[i]] = c
    m = c + 1
    return item_chunk, chunk_group[:m].copy(), chunk_items_[:m].copy(), chunk_index[:m].copy()


def time_major(item_chunk: np.ndarray, key: np.ndarray, *chunk_cols: np.ndarray) -> tuple[np.ndarray, ...]:
    """Renumber chunks in (``key``, old id) order, e.g. by chunk index within the group: chunks sent at
    about the same time get neighbouring ids, and so do the tasks the model creates for them, which
    keeps the engine's memory accesses local. Returns the new ``item_chunk``, ``chunk_cols``
    reordered, and each new chunk's old id (use :func:`chain_pairs`, not :func:`chain_edges`, on the
    result)."""
    order, _ = sort_packed(key, values=False)
    rank = np.empty(order.size, np.int64)
    rank[order] = np.arange(order.size)
    return (rank[item_chunk], *(c[order] for c in chunk_cols), order)


def chain_pairs(group: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges from each chunk to the next chunk (``index + 1``) of the same group, in any chunk order."""
    o = lexsort2(group, index)
    same = np.flatnonzero(group[o][1:] == group[o][:-1])
    return o[same], o[same + 1]


def chain_edges(group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges i -> i+1 between consecutive entries with the same group (entries already in order)."""
    same = np.flatnonzero(group[1:] == group[:-1])
    return same, same + 1


def unique_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (a, b) pairs of non-negative integers, sorted by (a, b)."""
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    if a.size == 0:
        return a, b
    radix = int(b.max()) + 1
    key = sorted_unique(a * radix + b)
    return key // radix, key % radix


def sorted_unique(key: np.ndarray) -> np.ndarray:
    """``np.unique`` for int64 keys by sorting (numpy's hash-based unique is slower on large arrays)."""
    key = np.sort(key)
    return key[np.r_[True, key[1:] != key[:-1]]] if key.size else key


def ceil_div(a: np.ndarray | int, b: float) -> np.ndarray:
    """Integer ceil(a / b) for non-negative a and positive b (b may be a float rate)."""
    return np.ceil(np.asarray(a, dtype=np.float64) / b).astype(np.int64)


def first_items(item_chunk: np.ndarray, nchunks: int) -> np.ndarray:
    """Index of the first item (in item order) of each of ``nchunks`` chunks."""
    first = np.zeros(nchunks, np.int64)
    first[item_chunk[::-1]] = np.arange(item_chunk.size)[::-1]
    return first
