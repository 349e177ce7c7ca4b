"""The fast fabric simulator's event queue, and the numba plumbing its loop needs.

Events are ``(time, kind, a, b)``; they run by time, then in the order they were pushed (the reference
twin's heapq key ``(time, sequence)``). Events less than the wheel's length ahead sit in a timing wheel
of one-nanosecond slots: each slot a FIFO list of event rows (all of one exact time, pushed in sequence
order), with one occupancy bit per slot so that a sparse run skips empty nanoseconds 64 at a time. Later
events (timers, timeouts, far wake-ups) wait in a 4-ary heap keyed ``(time, sequence << 4 | kind)``
and move to their slot, in key order, as soon as their time comes within the wheel, before anything
else can be pushed there, so each slot stays in sequence order. Push and pop cost O(1) on the wheel;
on the EP64 dispatch traffic this took the loop from 0.91 to 0.25 CPU-s (a binary heap of ~1000 rows
cost ~70 ns per push and pop).

Arrays: ``H`` the heap (rows time, key, a, b), ``W`` the wheel (heads ``W[slot]``, tails
``W[n + slot]``, occupancy bits ``W[2n + slot // 64]`` for ``n = S[S_WHEEL]`` slots, a power of two
>= 64), ``EV`` the event rows (kind, a, b, next; column ``E_STACK`` is the stack of free rows) and the
scalars in ``S`` (indices below; the simulator's own scalars follow ``S_FIRST_FREE``).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.extending import intrinsic

GROW = 2  # the loop's status: enlarge the pool, heap, event rows or output rows, and call again
S_SEQ, S_HSIZE, S_CUR, S_WCOUNT, S_EFREE, S_WHEEL = range(6)
S_FIRST_FREE = 6
E_KIND, E_A, E_B, E_NEXT, E_STACK = range(5)
WHEEL_NS = 1 << 16  # the largest wheel, 65.5 us (the fast simulator sizes it from the fabric)


@intrinsic
def borrowed(typingctx, arr):
    """``arr`` without its reference count (a view whose meminfo is NULL): numba's atomic increments and
    decrements on it become no-ops that LLVM removes. Valid only while the caller holds ``arr`` (the
    arguments of the fast simulator's loop, held by its caller); never return it or store it."""

    def codegen(context, builder, sig, args):
        src = context.make_array(sig.args[0])(context, builder, value=args[0])
        out = context.make_array(sig.return_type)(context, builder)
        for name in ("nitems", "itemsize", "data", "shape", "strides"):
            setattr(out, name, getattr(src, name))
        out.meminfo = cgutils.get_null_value(out.meminfo.type)
        out.parent = cgutils.get_null_value(out.parent.type)
        return out._getvalue()

    return arr(arr), codegen


@intrinsic
def _ctz(typingctx, x):
    """Trailing zero bits of a nonzero int64 (LLVM cttz)."""

    def codegen(context, builder, sig, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 0))

    return types.int64(types.int64), codegen


@njit(cache=True, inline="always")
def _set(H, i, t, key, a, b):
    H[i, 0] = t
    H[i, 1] = key
    H[i, 2] = a
    H[i, 3] = b


@njit(cache=True, inline="always")
def _earlier(H, i, t, key):
    """Whether heap row ``i`` comes before the key ``(t, key)``."""
    return H[i, 0] < t or (H[i, 0] == t and H[i, 1] < key)


@njit(cache=True)
def _heap_push(H, S, t, key, a, b):
    """Insert into the 4-ary heap of far events, ordered by (time, key). Not inlined: rarely called."""
    i = S[S_HSIZE]
    S[S_HSIZE] = i + 1
    while i > 0:  # sift up
        j = (i - 1) >> 2
        if _earlier(H, j, t, key):
            break
        _set(H, i, H[j, 0], H[j, 1], H[j, 2], H[j, 3])
        i = j
    _set(H, i, t, key, a, b)


@njit(cache=True)
def _heap_to_wheel(H, W, EV, S):
    """Move every heap event now within the wheel (t < cursor + wheel) to its slot, in (time, key) order."""
    while S[S_HSIZE] > 0 and H[0, 0] < S[S_CUR] + S[S_WHEEL]:
        t, key, a, b = H[0, 0], H[0, 1], H[0, 2], H[0, 3]
        n = S[S_HSIZE] - 1
        S[S_HSIZE] = n
        if n > 0:
            lt, lk, la, lb = H[n, 0], H[n, 1], H[n, 2], H[n, 3]
            i = 0
            while True:  # sift down
                c = 4 * i + 1
                if c >= n:
                    break
                m = c
                for d in range(c + 1, min(c + 4, n)):
                    if _earlier(H, d, H[m, 0], H[m, 1]):
                        m = d
                if not _earlier(H, m, lt, lk):
                    break
                _set(H, i, H[m, 0], H[m, 1], H[m, 2], H[m, 3])
                i = m
            _set(H, i, lt, lk, la, lb)
        _wheel_add(W, EV, S, t, key & 15, a, b)


@njit(cache=True, inline="always")
def _wheel_add(W, EV, S, t, kind, a, b):
    S[S_EFREE] -= 1
    e = EV[S[S_EFREE], E_STACK]
    EV[e, E_KIND] = kind
    EV[e, E_A] = a
    EV[e, E_B] = b
    EV[e, E_NEXT] = -1
    n = S[S_WHEEL]
    slot = t & (n - 1)
    if W[slot] >= 0:
        EV[W[n + slot], E_NEXT] = e
    else:
        W[slot] = e
        W[2 * n + (slot >> 6)] |= np.int64(1) << (slot & 63)
    W[n + slot] = e
    S[S_WCOUNT] += 1


@njit(cache=True, inline="always")
def push(H, W, EV, S, t, kind, a, b):
    """Schedule an event. Order: by time, then by push sequence (the reference's heapq key). Events
    less than the wheel's length ahead go to the wheel slot of their exact time, a FIFO list (pushed in
    sequence order); later ones wait in a 4-ary heap keyed (time, sequence << 4 | kind) and move to
    their slot, in key order, as soon as their time comes within the wheel, before anything else can be
    pushed there (so a slot stays in sequence order)."""
    seq = S[S_SEQ]
    S[S_SEQ] = seq + 1
    if t - S[S_CUR] < S[S_WHEEL]:
        _wheel_add(W, EV, S, t, kind, a, b)
    else:
        _heap_push(H, S, t, seq * 16 + kind, a, b)


@njit(cache=True, inline="always")
def pop(H, W, EV, S):
    """The next event: (time, kind, a, b). Needs at least one event pending."""
    n = S[S_WHEEL]
    if S[S_WCOUNT] == 0:  # jump to the heap's first event
        S[S_CUR] = H[0, 0]
        _heap_to_wheel(H, W, EV, S)
    slot = S[S_CUR] & (n - 1)
    if W[slot] < 0:  # the next nonempty slot after the cursor (circular), from the occupancy bits
        w = slot >> 6
        bits = W[2 * n + w] & (np.int64(-1) << (slot & 63))
        while bits == 0:
            w = (w + 1) & ((n >> 6) - 1)
            bits = W[2 * n + w]
        nxt = (w << 6) | _ctz(bits)
        S[S_CUR] += (nxt - slot) & (n - 1)
        slot = nxt
        if S[S_HSIZE] > 0 and H[0, 0] < S[S_CUR] + n:  # the window moved: far events come in behind
            _heap_to_wheel(H, W, EV, S)
    e = W[slot]
    W[slot] = EV[e, E_NEXT]
    if W[slot] < 0:
        W[2 * n + (slot >> 6)] &= ~(np.int64(1) << (slot & 63))
    S[S_WCOUNT] -= 1
    EV[S[S_EFREE], E_STACK] = e
    S[S_EFREE] += 1
    return S[S_CUR], EV[e, E_KIND], EV[e, E_A], EV[e, E_B]


@njit(cache=True, inline="always")
def queue_short(H, EV, S):
    """Whether an event may find no room (32 pushes per event, and every heap event may move to the
    wheel at once): the loop then returns GROW and :func:`grow_queue` enlarges the arrays."""
    return S[S_HSIZE] + 32 > H.shape[0] or S[S_EFREE] < S[S_HSIZE] + 32


def queue_arrays(S: np.ndarray, wheel_ns: int, rows: int) -> dict[str, np.ndarray]:
    """An empty queue: ``H``, ``W`` and ``EV`` for ``wheel_ns`` slots and ``rows`` event rows (at least
    1024); sets the queue's scalars in ``S``."""
    if wheel_ns < 64 or wheel_ns & (wheel_ns - 1):
        raise ValueError(f"wheel_ns={wheel_ns} must be a power of two >= 64")
    rows = max(rows, 1024)
    W = np.full(2 * wheel_ns + wheel_ns // 64, -1, np.int64)
    W[2 * wheel_ns:] = 0
    EV = np.zeros((rows, 5), np.int64)
    EV[:, E_STACK] = np.arange(rows)
    S[S_SEQ] = S[S_HSIZE] = S[S_CUR] = S[S_WCOUNT] = 0
    S[S_EFREE], S[S_WHEEL] = rows, wheel_ns
    return {"H": np.zeros((1024, 4), np.int64), "W": W, "EV": EV}


def grow_queue(st: dict[str, np.ndarray]) -> None:
    """Double ``st["H"]`` and ``st["EV"]`` until :func:`queue_short` is false."""
    S = st["S"]
    while S[S_HSIZE] + 32 > st["H"].shape[0]:
        H = np.zeros((2 * st["H"].shape[0], 4), np.int64)
        H[:st["H"].shape[0]] = st["H"]
        st["H"] = H
    while S[S_EFREE] < S[S_HSIZE] + 32:
        old, nf = st["EV"].shape[0], int(S[S_EFREE])
        EV = np.zeros((2 * old, 5), np.int64)
        EV[:old] = st["EV"]
        EV[nf:nf + old, E_STACK] = np.arange(old, 2 * old)
        st["EV"] = EV
        S[S_EFREE] += old
