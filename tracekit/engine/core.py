"""The fast engine: the task-graph semantics of :mod:`tracekit.engine.graph`, compiled with numba.

One binary heap of (time, kind, task) events; FIFO queues per resource and per pool as linked lists
in arrays; an explicit work stack instead of recursion. :mod:`tracekit.engine.reference` is the
plain-Python twin that Hypothesis holds equal to this one.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tracekit.engine.graph import Schedule, TaskGraph
from tracekit.errors import TracekitError

FINISH = 0
RELEASE = 1
READY = 2
_SHIFT = 40
_MASK = (1 << _SHIFT) - 1

# work-stack actions
_ENQ, _TRY, _AFTER_SEIZE, _REQ, _GRANTED, _GRANT, _START = range(7)  # _GRANT: make release entry arg


@njit(cache=True, inline="always")
def _less(ta, ka, tb, kb):
    return ta < tb or (ta == tb and ka < kb)


@njit(cache=True)
def _push(h, size, t, k):
    """4-ary heap of (time, key) pairs stored interleaved in ``h`` (children of i: 4i+1 .. 4i+4)."""
    i = size
    while i > 0:
        parent = (i - 1) >> 2
        pt = h[2 * parent]
        pk = h[2 * parent + 1]
        if _less(t, k, pt, pk):
            h[2 * i] = pt
            h[2 * i + 1] = pk
            i = parent
        else:
            break
    h[2 * i] = t
    h[2 * i + 1] = k
    return size + 1


@njit(cache=True)
def _pop(h, size):
    t0 = h[0]
    k0 = h[1]
    size -= 1
    t = h[2 * size]
    k = h[2 * size + 1]
    i = 0
    while True:
        c = 4 * i + 1
        if c >= size:
            break
        best = c
        bt = h[2 * c]
        bk = h[2 * c + 1]
        last = min(c + 4, size)
        for j in range(c + 1, last):
            jt = h[2 * j]
            jk = h[2 * j + 1]
            if jt < bt or (jt == bt and jk < bk):
                best = j
                bt = jt
                bk = jk
        if bt < t or (bt == t and bk < k):
            h[2 * i] = bt
            h[2 * i + 1] = bk
            i = best
        else:
            break
    h[2 * i] = t
    h[2 * i + 1] = k
    return t0, k0, size


# columns of the static task table S and the dynamic state table D (array-of-structs: one or two
# cache lines per task, because the event loop touches tasks in time order, not id order)
_RES, _DUR, _POOL, _AMOUNT, _HOLD, _ALIGN = range(6)
_S_COLS = 6
(_READYT, _SEIZE, _GRANTT, _STALL, _STARTT, _FINISHT, _BINDER, _BKIND, _CRIT, _READY_AT, _NPRED, _QENTER, _PREQ,
 _QNEXT, _PNEXT) = range(15)
_D_COLS = 16


@njit(cache=True)
def _kernel(res, dur, pool, amount, hold, align, release, npred, perm, succ_ptr, succ, succ_lag, res_servers,
            pool_capacity, rel_ptr, rel_task, rel_pool, rel_amount, rel_lag):
    n = res.shape[0]
    S = np.empty((n, _S_COLS), np.int64)
    D = np.empty((n, _D_COLS), np.int64)
    for i in range(n):
        S[i, _RES] = res[i]
        S[i, _DUR] = dur[i]
        S[i, _POOL] = pool[i]
        S[i, _AMOUNT] = amount[i]
        S[i, _HOLD] = hold[i]
        S[i, _ALIGN] = align[i]
        for c in range(_D_COLS):
            D[i, c] = -1
        D[i, _STALL] = 0
        D[i, _BKIND] = 0
        D[i, _READY_AT] = release[i]
        D[i, _NPRED] = npred[i]
        D[i, _QENTER] = 0
        D[i, _PREQ] = 0
    nrel = rel_task.shape[0]
    nres = res_servers.shape[0]
    busy = np.zeros(nres, np.int64)
    qhead = np.full(nres, -1, np.int64)
    qtail = np.full(nres, -1, np.int64)
    npool = pool_capacity.shape[0]
    avail = pool_capacity.copy()
    phead = np.full(npool, -1, np.int64)
    ptail = np.full(npool, -1, np.int64)

    # Sources enter lazily, in (release, id) order, merged with the heap: the heap stays small.
    src = np.flatnonzero(D[:, _NPRED] == 0)
    src = src[np.argsort(release[src], kind="mergesort")]
    nsrc = src.shape[0]
    si = 0
    h = np.empty(2 * (2 * n + nrel + 2), np.int64)
    size = 0
    ws_code = np.empty(2 * n + nrel + 64, np.int64)
    ws_arg = np.empty(2 * n + nrel + 64, np.int64)
    ws_aux = np.empty(2 * n + nrel + 64, np.int64)
    batch = np.empty(n + 1, np.int64)
    events = 0
    while size > 0 or si < nsrc:
        if si < nsrc and (size == 0 or _less(release[src[si]], (READY << _SHIFT) | src[si], h[0], h[1])):
            now = release[src[si]]
            key = (READY << _SHIFT) | src[si]
            si += 1
        else:
            now, key, size = _pop(h, size)
        events += 1
        kind = key >> _SHIFT
        task = key & _MASK
        top = 0
        if kind == READY:
            D[task, _READYT] = now
            if D[task, _CRIT] >= 0:
                D[task, _BINDER] = D[task, _CRIT]
                D[task, _BKIND] = 1
            if S[task, _POOL] >= 0 and S[task, _HOLD] == 0:
                ws_code[top] = _REQ
            else:
                ws_code[top] = _ENQ
            ws_arg[top] = task
            top += 1
        elif kind == RELEASE:  # ``task`` is a release entry here
            ws_code[top] = _GRANT
            ws_arg[top] = task
            top += 1
        else:
            r = S[task, _RES]
            if r >= 0:
                busy[r] -= 1
                ws_code[top] = _TRY
                ws_arg[top] = r
                ws_aux[top] = task
                top += 1
            for e in range(rel_ptr[task + 1] - 1, rel_ptr[task] - 1, -1):
                if rel_lag[e] > 0:
                    size = _push(h, size, now + rel_lag[e], (RELEASE << _SHIFT) | e)
                else:
                    ws_code[top] = _GRANT
                    ws_arg[top] = e
                    top += 1
        while top > 0:
            top -= 1
            code = ws_code[top]
            t = ws_arg[top]
            aux = ws_aux[top]
            if code == _ENQ:
                D[t, _QENTER] = now
                r = S[t, _RES]
                if r < 0:
                    D[t, _SEIZE] = now
                    ws_code[top] = _AFTER_SEIZE
                    ws_arg[top] = t
                    top += 1
                else:
                    if qtail[r] < 0:
                        qhead[r] = t
                    else:
                        D[qtail[r], _QNEXT] = t
                    qtail[r] = t
                    ws_code[top] = _TRY
                    ws_arg[top] = r
                    ws_aux[top] = -1
                    top += 1
            elif code == _TRY:
                r = t
                nb = 0
                while busy[r] < res_servers[r] and qhead[r] >= 0:
                    u = qhead[r]
                    qhead[r] = D[u, _QNEXT]
                    if qhead[r] < 0:
                        qtail[r] = -1
                    busy[r] += 1
                    D[u, _SEIZE] = now
                    if aux >= 0 and now > D[u, _QENTER]:
                        D[u, _BINDER] = aux
                        D[u, _BKIND] = 2
                    batch[nb] = u
                    nb += 1
                for j in range(nb - 1, -1, -1):
                    ws_code[top] = _AFTER_SEIZE
                    ws_arg[top] = batch[j]
                    top += 1
            elif code == _AFTER_SEIZE:
                ws_code[top] = _REQ if (S[t, _POOL] >= 0 and S[t, _HOLD] != 0) else _START
                ws_arg[top] = t
                top += 1
            elif code == _REQ:
                D[t, _PREQ] = now
                p = S[t, _POOL]
                if phead[p] < 0 and avail[p] >= S[t, _AMOUNT]:
                    avail[p] -= S[t, _AMOUNT]
                    D[t, _GRANTT] = now
                    ws_code[top] = _GRANTED
                    ws_arg[top] = t
                    top += 1
                else:
                    if ptail[p] < 0:
                        phead[p] = t
                    else:
                        D[ptail[p], _PNEXT] = t
                    ptail[p] = t
            elif code == _GRANTED:
                ws_code[top] = _START if S[t, _HOLD] != 0 else _ENQ
                ws_arg[top] = t
                top += 1
            elif code == _GRANT:
                p = rel_pool[t]
                avail[p] += rel_amount[t]
                aux = rel_task[t]
                nb = 0
                while phead[p] >= 0 and avail[p] >= S[phead[p], _AMOUNT]:
                    u = phead[p]
                    phead[p] = D[u, _PNEXT]
                    if phead[p] < 0:
                        ptail[p] = -1
                    avail[p] -= S[u, _AMOUNT]
                    D[u, _GRANTT] = now
                    D[u, _STALL] = now - D[u, _PREQ]
                    if now > D[u, _PREQ]:
                        D[u, _BINDER] = aux
                        D[u, _BKIND] = 3
                    batch[nb] = u
                    nb += 1
                for j in range(nb - 1, -1, -1):
                    ws_code[top] = _GRANTED
                    ws_arg[top] = batch[j]
                    top += 1
            else:  # _START
                st = now
                a = S[t, _ALIGN]
                if a > 0:
                    st = ((now + a - 1) // a) * a
                if D[t, _GRANTT] < 0:
                    D[t, _GRANTT] = D[t, _SEIZE] if S[t, _HOLD] != 0 else D[t, _READYT]
                D[t, _STARTT] = st
                D[t, _FINISHT] = st + S[t, _DUR]
                size = _push(h, size, st + S[t, _DUR], (FINISH << _SHIFT) | t)
        if kind == FINISH:
            for e in range(succ_ptr[task], succ_ptr[task + 1]):
                v = succ[e]
                arrive = now + succ_lag[e]
                if D[v, _CRIT] < 0 or arrive > D[v, _READY_AT]:
                    D[v, _CRIT] = task
                    if arrive > D[v, _READY_AT]:
                        D[v, _READY_AT] = arrive
                D[v, _NPRED] -= 1
                if D[v, _NPRED] == 0:
                    size = _push(h, size, D[v, _READY_AT], (READY << _SHIFT) | v)
    # results by task id (position p holds task perm[p]; binders are positions too)
    out = np.empty((8, n), np.int64)
    for p in range(n):
        t = perm[p]
        out[0, t] = D[p, _READYT]
        out[1, t] = D[p, _SEIZE]
        out[2, t] = D[p, _GRANTT]
        out[3, t] = D[p, _STALL]
        out[4, t] = D[p, _STARTT]
        out[5, t] = D[p, _FINISHT]
        b = D[p, _BINDER]
        out[6, t] = perm[b] if b >= 0 else -1
        out[7, t] = D[p, _BKIND]
    return events, out


def run(graph: TaskGraph, *, check: bool = True) -> Schedule:
    """Execute ``graph``. With ``check`` (default), raise :class:`TracekitError` naming what blocked
    if some task never ran; without it, such tasks keep ``-1`` times."""
    g = graph.freeze()
    if graph.num_tasks >= 1 << _SHIFT:
        raise TracekitError(f"{graph.num_tasks} tasks exceed the engine's limit of 2^40",
                            fix="replay fewer steps or layers at once")
    events, out = _kernel(g["res"], g["dur"], g["pool"], g["amount"], g["hold"], g["align"], g["release"], g["npred"],
                          g["perm"], g["succ_ptr"], g["succ"], g["succ_lag"], g["res_servers"], g["pool_capacity"],
                          g["rel_ptr"], g["rel_task"], g["rel_pool_e"], g["rel_amount_e"], g["rel_lag_e"])
    sched = Schedule(*out, events=int(events))
    if check and not sched.completed:
        raise deadlock_error(graph, sched)
    return sched


def deadlock_error(graph: TaskGraph, sched: Schedule) -> TracekitError:
    """Explain the first task that never ran: which pool or predecessor it waited for."""
    pool = graph.column("pool")
    amount = graph.column("amount")
    stuck = np.flatnonzero(sched.finish < 0)
    waiting_pool = stuck[(sched.ready[stuck] >= 0) & (pool[stuck] >= 0)]
    if waiting_pool.size:
        t = int(waiting_pool[0])
        p = int(pool[t])
        return TracekitError(
            f"deadlock: {stuck.size} operations never ran; the first waits for {int(amount[t])} units of "
            f"{graph.pool_names[p]} (capacity {graph.pool_capacity[p]}) that are never returned",
            fix="enlarge that buffer (ring/queue depth) or reduce the chunk size",
        )
    return TracekitError(
        f"deadlock: {stuck.size} operations never ran (first: task {int(stuck[0])}); the task graph has a cycle",
        fix="this is a model bug; please report it with the command that produced it",
    )
