"""The fast engine: the task-graph semantics of :mod:`tracekit.engine.graph`, compiled with numba.

Events are (time, key) pairs, the key packing (kind, position, task id): a 4-ary heap holds future
events and a small *now-queue* (keys only) the events pushed for the current time, about half of all
pushes; the next event is the least of the two tops and the next source. FIFO queues per resource and
per pool are linked lists through the tasks; an explicit work stack replaces recursion. Each task's
static and dynamic state is one 64-byte, cache-line-aligned record, and the next event's record (and
a finishing task's successors') is prefetched: the loop visits tasks in time order, not id order, so
it is bound by memory latency on large graphs. :mod:`tracekit.engine.reference` is the plain-Python
twin that Hypothesis holds equal to this one.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from tracekit.engine.graph import Schedule, TaskGraph
from tracekit.errors import TracekitError

FINISH = 0
RELEASE = 1
READY = 2
_KIND = 61  # key = kind << 61 | position << 31 | task (or release entry)
_POS = 31
_ID = (1 << 31) - 1

# work-stack actions
_ENQ, _TRY, _AFTER_SEIZE, _REQ, _GRANTED, _GRANT, _START = range(7)

#: One task: times (int64), then its static columns and its links (int32). ``flags`` holds the
#: alignment (bits 0-26), ``hold`` (bit 27), "became ready" (bit 28) and the bind kind (bits 29-30);
#: ``link`` counts unfinished predecessors until the task is ready, then links it into a queue;
#: ``binder`` is the latest predecessor until then, then whoever held the task back last.
TASK = np.dtype([("ready", np.int64), ("seize", np.int64), ("grant", np.int64), ("start", np.int64),
                 ("dur", np.int32), ("res", np.int32), ("pool", np.int32), ("amount", np.int32),
                 ("flags", np.int32), ("link", np.int32), ("binder", np.int32), ("prio", np.int32)])
_ALIGN = (1 << 27) - 1
_HOLD = 1 << 27
_READIED = 1 << 28
_BK = 29


@intrinsic
def _prefetch(typingctx, arr, idx):
    """Hint the CPU to fetch ``arr[idx]`` into cache (``llvm.prefetch``; no effect on results)."""
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, signature.args[0], ary, [args[1]], wraparound=False)
        i8p = builder.bitcast(ptr, ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p.type, i32, i32, i32]),
                                            "llvm.prefetch.p0")
        builder.call(fn, [i8p, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


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


@njit(cache=True)
def _qpush(q, size, k):
    """4-ary heap of keys (the now-queue: every entry has the current time)."""
    i = size
    while i > 0:
        parent = (i - 1) >> 2
        if k < q[parent]:
            q[i] = q[parent]
            i = parent
        else:
            break
    q[i] = k
    return size + 1


@njit(cache=True)
def _qpop(q, size):
    k0 = q[0]
    size -= 1
    k = q[size]
    i = 0
    while True:
        c = 4 * i + 1
        if c >= size:
            break
        best = c
        bk = q[c]
        for j in range(c + 1, min(c + 4, size)):
            if q[j] < bk:
                best = j
                bk = q[j]
        if bk < k:
            q[i] = bk
            i = best
        else:
            break
    q[i] = k
    return k0, size


@njit(cache=True)
def _fill(T, res, dur, pool, amount, hold, align, release, npred, prio):
    for i in range(T.shape[0]):
        r = T[i]
        r.ready = release[i]
        r.seize = -1
        r.grant = -1
        r.start = -1
        r.dur = dur[i]
        r.res = res[i]
        r.pool = pool[i]
        r.amount = amount[i]
        r.flags = align[i] | (_HOLD if hold[i] else 0)
        r.link = npred[i]
        r.binder = -1
        r.prio = prio[i]


@njit(cache=True)
def _kernel(T, release, succ_ptr, succ, res_servers, pool_capacity, rel_ptr, rel_task, rel_pool, rel_amount,
            rel_lag, src):
    n = T.shape[0]
    nrel = rel_task.shape[0]
    nres = res_servers.shape[0]
    busy = np.zeros(nres, np.int64)
    qhead = np.full(nres, -1, np.int64)
    qtail = np.full(nres, -1, np.int64)
    npool = pool_capacity.shape[0]
    P = np.empty((npool, 4), np.int64)  # available, queue head, queue tail: one cache line per pool
    for p in range(npool):
        P[p, 0] = pool_capacity[p]
        P[p, 1] = -1
        P[p, 2] = -1
    # Sources enter lazily, in (release, position) order, merged with the heap: the heap stays small.
    nsrc = src.shape[0]
    si = 0
    h = np.empty(2 * (2 * n + nrel + 2), np.int64)
    size = 0
    q = np.empty(2 * n + 2, np.int64)  # now-queue: keys of events pushed for the current time
    qsize = 0
    ws_code = np.empty(2 * n + nrel + 64, np.int64)
    ws_arg = np.empty(2 * n + nrel + 64, np.int64)
    ws_aux = np.empty(2 * n + nrel + 64, np.int64)
    batch = np.empty(n + 1, np.int64)
    events = 0
    skey = 0
    now = 0
    while size > 0 or si < nsrc or qsize > 0:
        # the next event: the least (time, key) of the next source, the heap's top and the now-queue's
        # top (events pushed for the current time, which all precede any later heap entry)
        which = 0
        if qsize > 0:
            key = q[0]
            if size > 0 and h[0] == now and h[1] < key:
                which = 1
        elif size > 0:
            which = 1
        if si < nsrc:
            s = src[si]
            skey = (READY << _KIND) | (np.int64(T[s].prio) << _POS) | s
            if which == 0 and qsize == 0:
                which = 2
            elif which == 0:
                if release[s] == now and skey < key:
                    which = 2
            elif _less(release[s], skey, h[0], h[1]):
                which = 2
        if which == 0:
            key, qsize = _qpop(q, qsize)
        elif which == 1:
            now, key, size = _pop(h, size)
        else:
            now = release[src[si]]
            key = skey
            si += 1
        events += 1
        kind = key >> _KIND
        task = key & _ID
        nxt = -1  # the next event's task (a guess): fetch it while this one runs
        if qsize > 0:
            nxt = q[0]
        elif size > 0:
            nxt = h[1]
        if nxt >= 0 and (nxt >> _KIND) != RELEASE:
            _prefetch(T, nxt & _ID)
            if (nxt >> _KIND) == FINISH:
                _prefetch(succ_ptr, nxt & _ID)
                _prefetch(rel_ptr, nxt & _ID)
        top = 0
        if kind == READY:
            rec = T[task]
            rec.ready = now
            rec.link = -1
            f = rec.flags | _READIED
            if rec.binder >= 0:
                f |= 1 << _BK
            rec.flags = f
            if rec.pool >= 0 and (f & _HOLD) == 0:
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
            for e in range(succ_ptr[task], succ_ptr[task + 1]):  # successors' records, needed below
                _prefetch(T, succ[e] & 0xFFFFFFFF)
            r = T[task].res
            if r >= 0:
                busy[r] -= 1
                ws_code[top] = _TRY
                ws_arg[top] = r
                ws_aux[top] = task
                top += 1
            pos = (key >> _POS) & ((1 << (_KIND - _POS)) - 1)
            for e in range(rel_ptr[task + 1] - 1, rel_ptr[task] - 1, -1):
                if rel_lag[e] > 0:
                    size = _push(h, size, now + rel_lag[e], (RELEASE << _KIND) | (pos << _POS) | e)
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
                r = T[t].res
                if r < 0:
                    T[t].seize = now
                    ws_code[top] = _AFTER_SEIZE
                    ws_arg[top] = t
                    top += 1
                else:
                    if qtail[r] < 0:
                        qhead[r] = t
                    else:
                        T[qtail[r]].link = t
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
                    rec = T[u]
                    qhead[r] = rec.link
                    rec.link = -1
                    if qhead[r] < 0:
                        qtail[r] = -1
                    busy[r] += 1
                    rec.seize = now
                    # it entered the queue when ready, or when granted if it took its pool first
                    entered = rec.grant if (rec.pool >= 0 and (rec.flags & _HOLD) == 0) else rec.ready
                    if aux >= 0 and now > entered:
                        rec.binder = aux
                        rec.flags = (rec.flags & ~(3 << _BK)) | (2 << _BK)
                    batch[nb] = u
                    nb += 1
                for j in range(nb - 1, -1, -1):
                    ws_code[top] = _AFTER_SEIZE
                    ws_arg[top] = batch[j]
                    top += 1
            elif code == _AFTER_SEIZE:
                ws_code[top] = _REQ if (T[t].pool >= 0 and (T[t].flags & _HOLD) != 0) else _START
                ws_arg[top] = t
                top += 1
            elif code == _REQ:
                rec = T[t]
                p = rec.pool
                if P[p, 1] < 0 and P[p, 0] >= rec.amount:
                    P[p, 0] -= rec.amount
                    rec.grant = now
                    ws_code[top] = _GRANTED
                    ws_arg[top] = t
                    top += 1
                else:
                    if P[p, 2] < 0:
                        P[p, 1] = t
                    else:
                        T[P[p, 2]].link = t
                    P[p, 2] = t
            elif code == _GRANTED:
                ws_code[top] = _START if (T[t].flags & _HOLD) != 0 else _ENQ
                ws_arg[top] = t
                top += 1
            elif code == _GRANT:
                p = rel_pool[t]
                P[p, 0] += rel_amount[t]
                aux = rel_task[t]
                nb = 0
                while P[p, 1] >= 0 and P[p, 0] >= T[P[p, 1]].amount:
                    u = P[p, 1]
                    rec = T[u]
                    P[p, 1] = rec.link
                    rec.link = -1
                    if P[p, 1] < 0:
                        P[p, 2] = -1
                    P[p, 0] -= rec.amount
                    rec.grant = now
                    requested = rec.seize if (rec.flags & _HOLD) != 0 else rec.ready
                    if now > requested:
                        rec.binder = aux
                        rec.flags = (rec.flags & ~(3 << _BK)) | (3 << _BK)
                    batch[nb] = u
                    nb += 1
                for j in range(nb - 1, -1, -1):
                    ws_code[top] = _GRANTED
                    ws_arg[top] = batch[j]
                    top += 1
            else:  # _START
                rec = T[t]
                st = now
                a = rec.flags & _ALIGN
                if a > 0:
                    st = ((now + a - 1) // a) * a
                if rec.grant < 0:
                    rec.grant = rec.seize if (rec.flags & _HOLD) != 0 else rec.ready
                rec.start = st
                fkey = (FINISH << _KIND) | (np.int64(rec.prio) << _POS) | t
                if rec.dur == 0 and st == now:
                    qsize = _qpush(q, qsize, fkey)
                else:
                    size = _push(h, size, st + rec.dur, fkey)
        if kind == FINISH:
            for e in range(succ_ptr[task], succ_ptr[task + 1]):
                x = succ[e]
                v = x & 0xFFFFFFFF
                arrive = now + (x >> 32)
                rec = T[v]
                if rec.binder < 0 or arrive > rec.ready:
                    rec.binder = task
                    if arrive > rec.ready:
                        rec.ready = arrive
                rec.link -= 1
                if rec.link == 0:
                    rkey = (READY << _KIND) | (np.int64(rec.prio) << _POS) | v
                    if rec.ready == now:
                        qsize = _qpush(q, qsize, rkey)
                    else:
                        size = _push(h, size, rec.ready, rkey)
    return events


def _records(n: int) -> np.ndarray:
    """``n`` task records starting on a cache-line boundary."""
    buf = np.empty(n * TASK.itemsize + 64, np.uint8)
    off = (-buf.ctypes.data) % 64
    return buf[off:off + n * TASK.itemsize].view(TASK)


def run(graph: TaskGraph, *, check: bool = True) -> Schedule:
    """Execute ``graph``. With ``check`` (default), raise :class:`TracekitError` naming what blocked
    if some task never ran; without it, such tasks keep ``-1`` times."""
    g = graph.freeze()
    n = graph.num_tasks
    T = _records(n)
    _fill(T, g["res"], g["dur"], g["pool"], g["amount"], g["hold"], g["align"], g["release"], g["npred"], g["prio"])
    src = np.flatnonzero(g["npred"] == 0)
    src = src[np.lexsort((g["prio"][src], g["release"][src]))]
    events = _kernel(T, g["release"], g["succ_ptr"], g["succ"], g["res_servers"], g["pool_capacity"], g["rel_ptr"],
                     g["rel_task"], g["rel_pool_e"], g["rel_amount_e"], g["rel_lag_e"], src)
    sched = _schedule(T, g, int(events))
    if check and not sched.completed:
        raise deadlock_error(graph, sched)
    return sched


def _schedule(T: np.ndarray, g: dict[str, np.ndarray], events: int) -> Schedule:
    """The engine's records as a :class:`Schedule` (columns by task id)."""
    out = np.empty((len(Schedule.FIELDS), T.shape[0]), np.int64)
    _unpack_records(T, out)
    return Schedule(*out, events=events)


@njit(cache=True)
def _unpack_records(T, out):
    for t in range(T.shape[0]):
        r = T[t]
        readied = (r.flags & _READIED) != 0
        ready = r.ready if readied else -1
        out[0, t] = ready
        out[1, t] = r.seize
        out[2, t] = r.grant
        requested = r.seize if (r.flags & _HOLD) != 0 else ready
        out[3, t] = r.grant - requested if (r.pool >= 0 and r.grant >= 0) else 0
        out[4, t] = r.start
        out[5, t] = r.start + r.dur if r.start >= 0 else -1
        out[6, t] = r.binder if readied else -1
        out[7, t] = (r.flags >> _BK) & 3 if readied else 0


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
