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
READY = 1
_SHIFT = 40
_MASK = (1 << _SHIFT) - 1

# work-stack actions
_ENQ, _TRY, _AFTER_SEIZE, _REQ, _GRANTED, _GRANT, _START = range(7)


@njit(cache=True, inline="always")
def _less(ta, ka, tb, kb):
    return ta < tb or (ta == tb and ka < kb)


@njit(cache=True)
def _push(h, size, t, k):
    """Binary heap of (time, key) pairs stored interleaved in ``h`` for locality."""
    i = size
    while i > 0:
        parent = (i - 1) >> 1
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
        left = 2 * i + 1
        if left >= size:
            break
        small = left
        right = left + 1
        if right < size and _less(h[2 * right], h[2 * right + 1], h[2 * left], h[2 * left + 1]):
            small = right
        if _less(h[2 * small], h[2 * small + 1], t, k):
            h[2 * i] = h[2 * small]
            h[2 * i + 1] = h[2 * small + 1]
            i = small
        else:
            break
    h[2 * i] = t
    h[2 * i + 1] = k
    return t0, k0, size


@njit(cache=True)
def _kernel(res, dur, pool, amount, hold, rel_pool, rel_amount, align, release,
            succ_ptr, succ, succ_lag, npred_in, res_servers, pool_capacity):
    n = res.shape[0]
    ready = np.full(n, -1, np.int64)
    seize = np.full(n, -1, np.int64)
    grant = np.full(n, -1, np.int64)
    stall = np.zeros(n, np.int64)
    start = np.full(n, -1, np.int64)
    finish = np.full(n, -1, np.int64)
    binder = np.full(n, -1, np.int64)
    bind_kind = np.zeros(n, np.int64)
    crit = np.full(n, -1, np.int64)
    ready_at = release.copy()
    npred = npred_in.copy()
    q_enter = np.zeros(n, np.int64)
    p_req = np.zeros(n, np.int64)

    nres = res_servers.shape[0]
    busy = np.zeros(nres, np.int64)
    qhead = np.full(nres, -1, np.int64)
    qtail = np.full(nres, -1, np.int64)
    qnext = np.full(n, -1, np.int64)
    npool = pool_capacity.shape[0]
    avail = pool_capacity.copy()
    phead = np.full(npool, -1, np.int64)
    ptail = np.full(npool, -1, np.int64)
    pnext = np.full(n, -1, np.int64)

    # Sources enter lazily, in (release, id) order, merged with the heap: the heap stays small.
    src = np.flatnonzero(npred == 0)
    src = src[np.argsort(release[src], kind="stable")]
    nsrc = src.shape[0]
    si = 0
    h = np.empty(2 * (2 * n + 2), np.int64)
    size = 0

    ws_code = np.empty(2 * n + 64, np.int64)
    ws_arg = np.empty(2 * n + 64, np.int64)
    ws_aux = np.empty(2 * n + 64, np.int64)
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
            ready[task] = now
            if crit[task] >= 0:
                binder[task] = crit[task]
                bind_kind[task] = 1
            if pool[task] >= 0 and not hold[task]:
                ws_code[top] = _REQ
            else:
                ws_code[top] = _ENQ
            ws_arg[top] = task
            top += 1
        else:
            r = res[task]
            if r >= 0:
                busy[r] -= 1
                ws_code[top] = _TRY
                ws_arg[top] = r
                ws_aux[top] = task
                top += 1
            p = rel_pool[task]
            if p >= 0:
                avail[p] += rel_amount[task]
                ws_code[top] = _GRANT
                ws_arg[top] = p
                ws_aux[top] = task
                top += 1
        while top > 0:
            top -= 1
            code = ws_code[top]
            t = ws_arg[top]
            aux = ws_aux[top]
            if code == _ENQ:
                q_enter[t] = now
                r = res[t]
                if r < 0:
                    seize[t] = now
                    ws_code[top] = _AFTER_SEIZE
                    ws_arg[top] = t
                    top += 1
                else:
                    if qtail[r] < 0:
                        qhead[r] = t
                    else:
                        qnext[qtail[r]] = t
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
                    qhead[r] = qnext[u]
                    if qhead[r] < 0:
                        qtail[r] = -1
                    busy[r] += 1
                    seize[u] = now
                    if aux >= 0 and now > q_enter[u]:
                        binder[u] = aux
                        bind_kind[u] = 2
                    batch[nb] = u
                    nb += 1
                for j in range(nb - 1, -1, -1):
                    ws_code[top] = _AFTER_SEIZE
                    ws_arg[top] = batch[j]
                    top += 1
            elif code == _AFTER_SEIZE:
                ws_code[top] = _REQ if (pool[t] >= 0 and hold[t]) else _START
                ws_arg[top] = t
                top += 1
            elif code == _REQ:
                p_req[t] = now
                p = pool[t]
                if phead[p] < 0 and avail[p] >= amount[t]:
                    avail[p] -= amount[t]
                    grant[t] = now
                    ws_code[top] = _GRANTED
                    ws_arg[top] = t
                    top += 1
                else:
                    if ptail[p] < 0:
                        phead[p] = t
                    else:
                        pnext[ptail[p]] = t
                    ptail[p] = t
            elif code == _GRANTED:
                ws_code[top] = _START if hold[t] else _ENQ
                ws_arg[top] = t
                top += 1
            elif code == _GRANT:
                p = t
                nb = 0
                while phead[p] >= 0 and avail[p] >= amount[phead[p]]:
                    u = phead[p]
                    phead[p] = pnext[u]
                    if phead[p] < 0:
                        ptail[p] = -1
                    avail[p] -= amount[u]
                    grant[u] = now
                    stall[u] = now - p_req[u]
                    if now > p_req[u]:
                        binder[u] = aux
                        bind_kind[u] = 3
                    batch[nb] = u
                    nb += 1
                for j in range(nb - 1, -1, -1):
                    ws_code[top] = _GRANTED
                    ws_arg[top] = batch[j]
                    top += 1
            else:  # _START
                s = now
                a = align[t]
                if a > 0:
                    s = ((now + a - 1) // a) * a
                if grant[t] < 0:
                    grant[t] = seize[t] if hold[t] else ready[t]
                start[t] = s
                finish[t] = s + dur[t]
                size = _push(h, size, s + dur[t], (FINISH << _SHIFT) | t)
        if kind == FINISH:
            for e in range(succ_ptr[task], succ_ptr[task + 1]):
                v = succ[e]
                arrive = now + succ_lag[e]
                if crit[v] < 0 or arrive > ready_at[v]:
                    crit[v] = task
                    if arrive > ready_at[v]:
                        ready_at[v] = arrive
                npred[v] -= 1
                if npred[v] == 0:
                    size = _push(h, size, ready_at[v], (READY << _SHIFT) | v)
    return ready, seize, grant, stall, start, finish, binder, bind_kind, events


def run(graph: TaskGraph, *, check: bool = True) -> Schedule:
    """Execute ``graph``. With ``check`` (default), raise :class:`TracekitError` naming what blocked
    if some task never ran; without it, such tasks keep ``-1`` times."""
    g = graph.freeze()
    if graph.num_tasks >= 1 << _SHIFT:
        raise TracekitError(f"{graph.num_tasks} tasks exceed the engine's limit of 2^40",
                            fix="replay fewer steps or layers at once")
    out = _kernel(g["res"], g["dur"], g["pool"], g["amount"], g["hold"], g["rel_pool"], g["rel_amount"],
                  g["align"], g["release"], g["succ_ptr"], g["succ"], g["succ_lag"], g["npred"],
                  g["res_servers"], g["pool_capacity"])
    sched = Schedule(*out[:8], events=int(out[8]))
    if check and not sched.completed:
        raise deadlock_error(graph, sched)
    return sched


def deadlock_error(graph: TaskGraph, sched: Schedule) -> TracekitError:
    """Explain the first task that never ran: which pool or predecessor it waited for."""
    g = graph.freeze()
    stuck = np.flatnonzero(sched.finish < 0)
    waiting_pool = stuck[(sched.ready[stuck] >= 0) & (g["pool"][stuck] >= 0)]
    if waiting_pool.size:
        t = int(waiting_pool[0])
        p = int(g["pool"][t])
        return TracekitError(
            f"deadlock: {stuck.size} operations never ran; the first waits for {int(g['amount'][t])} units of "
            f"{graph.pool_names[p]} (capacity {graph.pool_capacity[p]}) that are never returned",
            fix="enlarge that buffer (ring/queue depth) or reduce the chunk size",
        )
    return TracekitError(
        f"deadlock: {stuck.size} operations never ran (first: task {int(stuck[0])}); the task graph has a cycle",
        fix="this is a model bug; please report it with the command that produced it",
    )
