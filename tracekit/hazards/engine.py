"""One execution of a :class:`~tracekit.hazards.ops.Program` under an explicit schedule.

At every step the engine lists what may happen next: each actor whose pending operation is
enabled, then each in-flight message that may land (its ordering predecessors have landed and its
doorbell was rung). A *chooser* ``choose(n) -> int in [0, n)`` picks one; loads and waits that may
return more than one value ask the chooser again (choice 0 is always the newest value). Steps with a
single possibility consume no choice, so a schedule is just the list of choices made.

Designed for speed: an execution is built fresh per schedule (stateless exploration: re-running is
cheaper than copying generator state), memory is a list of write histories, views are flat lists
indexed by location, and the hazard checks are a few comparisons per write. The engine stops at the
first hazard, which it records in :attr:`Execution.hazard`; with ``record=True`` it also keeps every
event as a memops row (:mod:`tracekit.hazards.trace` turns them into tables).
"""

from __future__ import annotations

from collections.abc import Callable

from tracekit.errors import TracekitError
from tracekit.hazards.ops import (
    ATOMIC, AWAIT, BLOCKING, CMP_FN, CMPS, CQ_POLL, IS_ACQUIRE, IS_RELEASE, MAP, OP_NAMES, PUT, QUIET,
    SC, UNMAP, WAIT, Hazard, Program,
)

Chooser = Callable[[int], int]

# A recorded row is (seq, actor, op, loc, value, order, qp, path, ref, rf, cmp, expect, region, src):
# tracekit.hazards.trace.to_memops turns rows into a memops table.
# Positions in a write record: value, seq of the event that wrote it, carried view, consumed.
W_VALUE, W_SEQ, W_VIEW, W_CONSUMED = range(4)


_READY = tuple(code not in BLOCKING for code in range(AWAIT + 1))
_STOP = object()  # a handler's result meaning: do not advance the actor


def _join(into: list[int], other: list[int]) -> None:
    """``into = max(into, other)`` elementwise, in place."""
    for i, x in enumerate(other):
        if x > into[i]:
            into[i] = x


class _ActorState:
    __slots__ = ("id", "rank", "name", "gen", "op", "ready", "done", "view", "last_read", "inflight",
                 "fenced", "fence_view", "sent", "qps", "unjoined", "checked", "watch")


class _Msg:
    __slots__ = ("seq", "actor", "kind", "loc", "value", "src", "qp", "path", "view", "deps",
                 "children", "ndeps", "rung", "landed", "old", "fetch")


def _who(m: _Msg) -> str:
    return f"{m.actor.name}'s {OP_NAMES[m.kind]} (event {m.seq})"


class _QPState:
    __slots__ = ("spec", "last", "unordered", "last_atomic", "sq_used", "cqes", "unrung")


class Execution:
    """The state of one run. Drive it with :meth:`run` (a chooser) or step by step with
    :meth:`runnable`, :attr:`landable`, :meth:`step_actor` and :meth:`land`."""

    def __init__(self, program: Program, *, record: bool = False, max_steps: int = 200_000) -> None:
        p = program
        self.program = p
        self.max_steps = max_steps
        nloc = len(p.locs)
        self.hist: list[list[list]] = [[[loc.init, -1, None, True]] for loc in p.locs]
        self.gview = [0] * nloc
        self._consumable = [loc.consumable for loc in p.locs]
        self._capacity = [loc.capacity for loc in p.locs]
        self.inflight_to = [0] * nloc
        self.mapped = [True] * len(p.regions)
        self.crashed = [False] * max(p.ranks, 1)
        self.faulty = False  # set once anything was unmapped or crashed: enables access checks
        self.seq = 0
        self.version = 0  # bumped by every write, landing, unmap and crash: what can unblock a wait
        self.steps = 0
        self.landings = 0
        self.blocked_rows = 0
        self.hazard: Hazard | None = None
        self.rows: list[tuple] | None = [] if record else None
        self.landable: list[_Msg] = []
        self.finished = False
        self.qstate: list[_QPState] = []
        for q in p.qps:
            s = _QPState()
            s.spec, s.last, s.unordered, s.last_atomic = q, None, [], None
            s.sq_used, s.cqes, s.unrung = 0, [], []
            self.qstate.append(s)
        self._handlers = (self._read, self._store, self._rmw, self._read, self._fence, self._nic, self._nic,
                          self._doorbell, self._cq_poll, self._quiet, self._consume, self._map, self._map,
                          self._crash)
        self.actors: list[_ActorState] = []
        self.live: list[_ActorState] = []
        for spec in p.actors:
            st = _ActorState()
            h = spec.handle
            st.id, st.rank, st.name = h.id, h.rank, h.name
            st.view = [0] * nloc
            st.last_read, st.inflight, st.qps, st.unjoined = {}, [], [], []
            st.fenced, st.fence_view, st.sent = {}, {}, {}
            st.done = False
            st.checked = -1
            st.watch = st.inflight
            st.gen = spec.fn(h, *spec.args)
            self.actors.append(st)
            self._advance(st, None)
            if not st.done:
                self.live.append(st)

    @property
    def nops(self) -> int:
        """Operations executed by actors so far (landings and end-of-run rows not counted)."""
        return self.seq - self.landings - self.blocked_rows

    # -- driving ------------------------------------------------------------------------------
    def runnable(self) -> list[_ActorState]:
        """Actors whose pending operation can execute now, in actor order."""
        return [st for st in self.live if st.ready or (len(st.watch) != st.checked and self._enabled(st))]

    def step(self, choose: Chooser) -> bool:
        """Take one step picked by ``choose``; False when nothing can happen (then finished)."""
        run = self.runnable()
        nr = len(run)
        n = nr + len(self.landable)
        if n == 0:
            self.finish()
            return False
        c = choose(n) if n > 1 else 0
        self.steps += 1
        if c < nr:
            self.step_actor(run[c], choose)
        else:
            self.land(self.landable[c - nr])
        return True

    def run(self, choose: Chooser | None = None, *, uniform: Callable[[], float] | None = None) -> Hazard | None:
        """Run to the end or to the first hazard; return the hazard (or None).

        Choices come from ``choose``, or, with ``uniform`` (a function returning floats in
        [0, 1), e.g. ``random.Random(s).random``), are ``int(uniform() * n)``: the same schedule
        as ``choose=lambda n: int(uniform() * n)``, without a Python call per choice."""
        if uniform is not None:
            def choose(n: int) -> int:
                return int(uniform() * n)
        elif choose is None:
            raise TypeError("run() needs choose or uniform")
        # The body of step() and step_actor(), inlined: this loop is the explorer's hot path.
        limit = self.max_steps
        enabled = self._enabled
        handlers = self._handlers
        land = self.land
        landable = self.landable
        steps = self.steps
        run: list[_ActorState] = []
        ver = -1  # the runnable list is rebuilt only when something may have changed it
        while self.hazard is None:
            if ver != self.version:
                ver = self.version
                # a waiting actor is looked at again only if what it watches has changed
                run = [st for st in self.live if st.ready or (len(st.watch) != st.checked and enabled(st))]
            nr = len(run)
            n = nr + len(landable)
            if n > 1:
                c = int(uniform() * n) if uniform is not None else choose(n)
            elif n:
                c = 0
            else:
                self.finish()
                break
            steps += 1
            if steps > limit:
                raise TracekitError(f"{self.program.name}: no end after {limit} steps",
                                    fix="make every actor finish (a loop without end never finishes)")
            if c >= nr:
                land(landable[c - nr])
                continue
            st = run[c]
            op = st.op
            code = op[0]
            if code == AWAIT:  # the reply of a fetching atomic came back
                result = op[1].old
            else:
                seq = self.seq
                self.seq = seq + 1
                result = handlers[code](st, op, seq, choose)
                if result is _STOP or self.hazard is not None:
                    ver = -1
                    continue
            try:
                nxt = st.gen.send(result)
            except StopIteration:
                st.done = True
                st.ready = False
                st.op = None
                self.live.remove(st)
                ver = -1
                continue
            if nxt.__class__ is not tuple or nxt[0].__class__ is not int:
                self._bad_op(st, nxt)
            st.op = nxt
            st.checked = -1
            if not _READY[nxt[0]]:  # it now waits
                st.ready = False
                ver = -1
        self.steps = steps
        return self.hazard

    def step_actor(self, st: _ActorState, choose: Chooser) -> None:
        """Execute ``st``'s pending operation (it must be enabled) and advance its generator."""
        op = st.op
        code = op[0]
        if code == AWAIT:  # the reply of a fetching atomic came back
            result = op[1].old
        else:
            seq = self.seq
            self.seq = seq + 1
            result = self._handlers[code](st, op, seq, choose)
            if result is _STOP or self.hazard is not None:
                return
        self._advance(st, result)
        if st.done:
            self.live.remove(st)

    # -- helpers ------------------------------------------------------------------------------
    def _rec(self, *row: object) -> None:
        self.rows.append(row)  # type: ignore[union-attr]

    def _flag(self, name: str, message: str, *events: int) -> None:
        if self.hazard is None:
            self.hazard = Hazard(name, message, tuple(e for e in events if e >= 0))

    def _loc(self, i: int) -> str:
        return repr(self.program.locs[i])

    def _advance(self, st: _ActorState, result: object) -> None:
        try:
            op = st.gen.send(result)
        except StopIteration:
            st.done = True
            st.ready = False
            st.op = None
            return
        if op.__class__ is not tuple or op[0].__class__ is not int:
            self._bad_op(st, op)
        st.op = op
        st.ready = _READY[op[0]]
        st.checked = -1

    def _enabled(self, st: _ActorState) -> bool:
        """Whether ``st``'s pending operation can run. Once it can, it stays runnable until it runs
        (a wait's window only grows, quiet and replies only come closer), so ``ready`` is set. When
        it cannot, remember the list whose length must change first (``watch``), so that it is not
        looked at again until then."""
        op = st.op
        code = op[0]
        if code == WAIT:
            loc = op[1]
            if self.faulty and self._unreachable(loc):
                st.ready = True  # the access itself is the hazard
                return True
            h = self.hist[loc]
            f = CMP_FN[op[2]]
            e = op[3]
            for i in range(st.view[loc], len(h)):
                if f(h[i][0], e):
                    st.ready = True
                    return True
            st.watch = h
        elif code == QUIET or code == AWAIT:  # enabled once its messages have landed
            if not st.inflight if code == QUIET else op[1].landed:
                st.ready = True
                return True
            st.watch = st.inflight
        elif code == CQ_POLL:
            q = self.qstate[op[1]]
            if q.cqes:
                st.ready = True  # until another actor polls this CQ empty (see _cq_poll)
                return True
            st.watch = q.cqes
        else:
            return True
        st.checked = len(st.watch)
        return False

    def _unreachable(self, loc: int) -> bool:
        spec = self.program.locs[loc]
        return self.crashed[spec.rank] or (spec.region >= 0 and not self.mapped[spec.region])

    def _access(self, loc: int, seq: int, who: str, cause: int = -1) -> bool:
        """Check an access to ``loc``; flag a hazard and return False if it is unreachable."""
        spec = self.program.locs[loc]
        if self.crashed[spec.rank]:
            self._flag("access_to_crashed_rank", f"{who} accessed {spec!r} after rank {spec.rank} crashed", cause, seq)
            return False
        if spec.region >= 0 and not self.mapped[spec.region]:
            self._flag("access_after_unmap", f"{who} accessed {spec!r} after region {spec.region_name} "
                       f"of rank {spec.rank} was unmapped", cause, seq)
            return False
        return True

    def _write(self, loc: int, value: int, seq: int, view: list[int] | None, who: str | _Msg,
               cause: int = -1) -> int:
        """Append a write to ``loc``'s history, checking slot and credit rules; return its index.
        ``who`` names the writer: an actor name, or the landing message (named only if needed)."""
        h = self.hist[loc]
        consumable = self._consumable[loc]
        if who.__class__ is _Msg and (consumable or self._capacity[loc] >= 0):
            who = _who(who)  # type: ignore[arg-type]
        if consumable and not h[-1][W_CONSUMED]:
            prev = h[-1]
            self._flag("slot_overwrite", f"{who} wrote {value} to {self._loc(loc)} while it still held {prev[0]} "
                       f"(written at event {prev[W_SEQ]}) that nobody had consumed", prev[W_SEQ], cause, seq)
        cap = self._capacity[loc]
        if cap >= 0 and (value < 0 or value > cap):
            if value < 0:
                self._flag("credit_underflow", f"{who} took {self._loc(loc)} to {value}, below zero", cause, seq)
            else:
                self._flag("credit_overflow", f"{who} took {self._loc(loc)} to {value}, above its capacity "
                           f"{cap}", cause, seq)
        n = len(h)
        if view is not None:
            view[loc] = n
        h.append([value, seq, view, not consumable])
        self.version += 1
        return n

    def _fence_view(self, st: _ActorState) -> None:
        v = st.view
        _join(v, self.gview)
        self.gview = v[:]

    # -- actor operations ---------------------------------------------------------------------
    def _bad_op(self, st: _ActorState, op: object) -> None:
        raise TracekitError(f"{st.name} yielded {op!r}",
                            fix="yield operations built by the actor handle: a.load(...), a.store(...), ...")

    def _read(self, st: _ActorState, op: tuple, seq: int, choose: Chooser) -> object:
        code, loc = op[0], op[1]
        wait = code == WAIT
        order = op[4] if wait else op[2]
        if self.faulty and not self._access(loc, seq, st.name):
            if self.rows is not None:
                self._rec(seq, st.id, OP_NAMES[code], loc, 0, order, -1, -1, -1, -1,
                          op[2] if wait else -1, op[3] if wait else 0, -1, -1)
            return _STOP
        if order == SC:
            self._fence_view(st)
        h = self.hist[loc]
        view = st.view
        lo = view[loc]
        if wait:
            f = CMP_FN[op[2]]
            e = op[3]
            cands = [i for i in range(len(h) - 1, lo - 1, -1) if f(h[i][0], e)]
            idx = cands[choose(len(cands))] if len(cands) > 1 else cands[0]
        else:
            n = len(h) - lo
            idx = len(h) - 1 - (choose(n) if n > 1 else 0)
        w = h[idx]
        view[loc] = idx
        if w[W_VIEW] is not None and IS_ACQUIRE[order]:
            _join(view, w[W_VIEW])
        st.last_read[loc] = idx
        if self.rows is not None:
            self._rec(seq, st.id, OP_NAMES[code], loc, w[0], order, -1, -1, -1, w[W_SEQ],
                      op[2] if wait else -1, op[3] if wait else 0, -1, -1)
        return w[0]

    def _store(self, st: _ActorState, op: tuple, seq: int, choose: Chooser) -> object:
        loc, value, order = op[1], op[2], op[3]
        if self.rows is not None:
            self._rec(seq, st.id, "store", loc, value, order, -1, -1, -1, -1, -1, 0, -1, -1)
        if self.faulty and not self._access(loc, seq, st.name):
            return _STOP
        if order == SC:
            self._fence_view(st)
        st.view[loc] = len(self.hist[loc])
        self._write(loc, value, seq, st.view[:] if IS_RELEASE[order] else None, st.name)
        if order == SC:
            self._fence_view(st)
        return None

    def _rmw(self, st: _ActorState, op: tuple, seq: int, choose: Chooser) -> object:
        loc, delta, order = op[1], op[2], op[3]
        h = self.hist[loc]
        prev = h[-1]
        if self.rows is not None:
            self._rec(seq, st.id, "rmw", loc, prev[0] + delta, order, -1, -1, -1, prev[W_SEQ], -1, 0, -1, -1)
        if self.faulty and not self._access(loc, seq, st.name):
            return _STOP
        if order == SC:
            self._fence_view(st)
        if IS_ACQUIRE[order] and prev[W_VIEW] is not None:
            _join(st.view, prev[W_VIEW])
        st.view[loc] = len(h)
        if IS_RELEASE[order]:
            carried = st.view[:]
            if prev[W_VIEW] is not None:
                _join(carried, prev[W_VIEW])
        else:  # a relaxed RMW continues the release sequence it read from
            carried = prev[W_VIEW][:] if prev[W_VIEW] is not None else None
        self._write(loc, prev[0] + delta, seq, carried, st.name)
        return prev[0]

    def _fence(self, st: _ActorState, op: tuple, seq: int, choose: Chooser) -> object:
        if self.rows is not None:
            self._rec(seq, st.id, "fence", -1, 0, SC, -1, -1, -1, -1, -1, 0, -1, -1)
        self._fence_view(st)
        # NIC side: later messages to a rank land after every earlier one to it. Landed
        # predecessors are folded into a view; the others become dependencies.
        for t in set(st.sent) | set(st.fenced):
            fv = st.fence_view.get(t)
            keep = []
            for x in st.fenced.get(t, []) + st.sent.get(t, []):
                if x.landed:
                    if fv is None:
                        fv = [0] * len(self.gview)
                    _join(fv, x.view)
                else:
                    keep.append(x)
            if fv is not None:
                st.fence_view[t] = fv
            st.fenced[t] = keep
        st.sent = {}
        return None

    def _nic(self, st: _ActorState, op: tuple, seq: int, choose: Chooser) -> object:
        m = self._post(st, op, seq)
        if op[0] == ATOMIC and op[4] and self.hazard is None:  # fetching: wait for the reply
            st.op = (AWAIT, m)
            st.ready = False
            self.version += 1
            st.checked = -1
            return _STOP
        return None

    def _doorbell(self, st: _ActorState, op: tuple, seq: int, choose: Chooser) -> object:
        q = self.qstate[op[1]]
        if self.rows is not None:
            self._rec(seq, st.id, "doorbell", -1, 0, 1, q.spec.index, -1, -1, -1, -1, 0, -1, -1)
        for m in q.unrung:
            m.rung = True
            if m.ndeps == 0:
                self.landable.append(m)
        q.unrung = []
        return None

    def _cq_poll(self, st: _ActorState, op: tuple, seq: int, choose: Chooser) -> object:
        q = self.qstate[op[1]]
        m = q.cqes.pop(0)
        q.sq_used -= 1
        self.version += 1
        if not q.cqes:  # another actor polling this CQ has nothing left to reap
            for other in self.live:
                if other is not st and other.op is not None and other.op[0] == CQ_POLL and other.op[1] == op[1]:
                    other.ready = False
                    other.checked = -1
        _join(st.view, m.view)
        if self.rows is not None:
            self._rec(seq, st.id, "cq_poll", -1, 0, 2, q.spec.index, -1, m.seq, -1, -1, 0, -1, -1)
        return None

    def _quiet(self, st: _ActorState, op: tuple, seq: int, choose: Chooser) -> object:
        if self.rows is not None:
            self._rec(seq, st.id, "quiet", -1, 0, 2, -1, -1, -1, -1, -1, 0, -1, -1)
        for m in st.unjoined:
            _join(st.view, m.view)
        st.unjoined = []
        for qi in st.qps:
            q = self.qstate[qi]
            q.sq_used -= len(q.cqes)
            q.cqes.clear()  # cleared in place: a waiting poller watches this list
        return None

    def _map(self, st: _ActorState, op: tuple, seq: int, choose: Chooser) -> object:
        code = op[0]
        if self.rows is not None:
            self._rec(seq, st.id, OP_NAMES[code], -1, 0, 1, -1, -1, -1, -1, -1, 0, op[1], -1)
        self.mapped[op[1]] = code == MAP
        if code == UNMAP:
            self.faulty = True
            for other in self.live:
                other.checked = -1  # a wait on the region can now run (and is the hazard)
        self.version += 1
        return None

    def _crash(self, st: _ActorState, op: tuple, seq: int, choose: Chooser) -> object:
        if self.rows is not None:
            self._rec(seq, st.id, "crash", -1, 0, 1, -1, -1, -1, -1, -1, 0, -1, -1)
        self.crashed[st.rank] = True
        self.faulty = True
        self.version += 1
        for other in self.live:
            other.checked = -1
        for other in self.live:
            if other.rank == st.rank:
                other.done = True
                other.gen.close()
        self.live = [a for a in self.live if not a.done]
        return _STOP

    def _consume(self, st: _ActorState, op: tuple, seq: int, choose: Chooser) -> object:
        loc = op[1]
        idx = st.last_read.get(loc)
        if idx is None:
            raise TracekitError(f"{st.name} consumed {self._loc(loc)} without reading it first",
                                fix="load (or wait on) a slot before consuming it")
        h = self.hist[loc]
        w = h[idx]
        if self.rows is not None:
            self._rec(seq, st.id, "slot_release", loc, w[0], 1, -1, -1, -1, w[W_SEQ], -1, 0, -1, -1)
        if self.faulty and not self._access(loc, seq, st.name):
            return _STOP
        if w[W_CONSUMED]:
            newer = idx + 1 < len(h) or self.inflight_to[loc] > 0
            if w[W_SEQ] < 0:
                self._flag("stale_read_after_flag", f"{st.name} consumed {self._loc(loc)} while it was still "
                           f"empty (value {w[0]})", seq)
            elif newer:
                self._flag("stale_read_after_flag", f"{st.name} consumed {self._loc(loc)} = {w[0]} (written at "
                           f"event {w[W_SEQ]}, already consumed) instead of the newer write", w[W_SEQ], seq)
            else:
                self._flag("duplicated_delivery", f"{st.name} consumed {self._loc(loc)} = {w[0]} (written at "
                           f"event {w[W_SEQ]}) a second time", w[W_SEQ], seq)
            return _STOP
        w[W_CONSUMED] = True
        return None

    def _post(self, st: _ActorState, op: tuple, seq: int) -> _Msg:
        code, loc, value, qi = op[0], op[1], op[2], op[3]
        q = self.qstate[qi]
        spec = q.spec
        m = _Msg()
        m.seq, m.actor, m.kind, m.loc, m.value, m.qp = seq, st, code, loc, value, q
        m.src = op[4] if code == PUT else -1
        m.fetch = code == ATOMIC and op[4]
        m.rung = op[5]
        m.landed = False
        m.old = None
        m.path = seq if spec.multipath else -1
        if self.rows is not None:
            self._rec(seq, st.id, OP_NAMES[code], loc, value, 1, spec.index, m.path, -1, -1, -1, 0, -1, m.src)
        q.sq_used += 1
        if spec.sq_depth >= 0 and q.sq_used > spec.sq_depth:
            self._flag("send_queue_overflow", f"{st.name} posted a WQE to {spec!r} with all {spec.sq_depth} "
                       f"send-queue entries in use", seq)
        # Delivery order: m lands after each predecessor. One that already landed is folded into
        # m's view now (its view is final); the others are dependencies, joined when m lands.
        view = st.view[:]
        deps: list[_Msg] = []
        preds: list[_Msg] = []
        if not spec.multipath:
            if q.last is not None:
                preds.append(q.last)
        elif code == ATOMIC:  # the NIC orders an atomic after every earlier message of its QP
            preds = q.unordered
            if q.last_atomic is not None:
                preds.append(q.last_atomic)
            q.unordered = []
            q.last_atomic = m
        else:
            q.unordered.append(m)
        q.last = m
        t = spec.dst
        if st.fenced:
            fv = st.fence_view.get(t)
            if fv is not None:
                _join(view, fv)
            preds = preds + st.fenced.get(t, [])
        for x in preds:
            if x.landed:
                _join(view, x.view)
            elif x not in deps:
                deps.append(x)
        st.sent.setdefault(t, []).append(m)
        m.deps = deps
        m.ndeps = len(deps)
        m.children = []
        for d in deps:
            d.children.append(m)
        m.view = view
        if qi not in st.qps:
            st.qps.append(qi)
        st.inflight.append(m)
        self.inflight_to[loc] += 1
        if not m.rung:
            q.unrung.append(m)
        elif m.ndeps == 0:
            self.landable.append(m)
        return m

    # -- landings -----------------------------------------------------------------------------
    def land(self, m: _Msg) -> None:
        """Deliver in-flight message ``m`` (it must be in :attr:`landable`)."""
        self.landable.remove(m)
        seq = self.seq
        self.seq += 1
        loc = m.loc
        h = self.hist[loc]
        q = m.qp
        view = m.view
        for d in m.deps:
            _join(view, d.view)
        prev = h[-1]
        if m.kind == PUT:
            value = m.value if m.src < 0 else self.hist[m.src][-1][0]
            rf = -1
        else:
            value = prev[0] + m.value
            m.old = prev[0]
            rf = prev[W_SEQ]
            if prev[W_VIEW] is not None:
                _join(view, prev[W_VIEW])
        if self.rows is not None:
            self._rec(seq, -1, "deliver", loc, value, 1, q.spec.index, m.path, m.seq, rf, -1, 0, -1, -1)
        ok = True
        if self.faulty:
            ok = self._access(loc, seq, _who(m), m.seq)
            if ok and m.src >= 0:
                ok = self._access(m.src, seq, f"the NIC executing {_who(m)}", m.seq)
        if ok:
            self._write(loc, value, seq, view, m, m.seq)
        m.landed = True
        self.landings += 1
        self.version += 1
        self.inflight_to[loc] -= 1
        st = m.actor
        st.inflight.remove(m)
        st.unjoined.append(m)
        for c in m.children:
            c.ndeps -= 1
            if c.ndeps == 0 and c.rung:
                self.landable.append(c)
        q.cqes.append(m)
        spec = q.spec
        if spec.cq_depth >= 0 and len(q.cqes) > spec.cq_depth:
            self._flag("cq_overflow", f"the completion of {_who(m)} arrived at {spec!r} with all {spec.cq_depth} "
                       f"CQ entries unreaped", m.seq, seq)

    # -- the end ------------------------------------------------------------------------------
    def finish(self) -> None:
        """End-of-run checks: blocked actors (deadlock), undelivered messages and unconsumed slots
        (lost delivery). Called by :meth:`step` when nothing can happen any more."""
        if self.finished:
            return
        self.finished = True
        if self.hazard is not None:
            return
        blocked = [st for st in self.live if not st.done]
        if blocked:
            seqs = []
            for st in blocked:
                seqs.append(self.seq)
                op = st.op
                if self.rows is not None:
                    loc = op[1] if op[0] == WAIT else -1
                    now = self.hist[loc][-1][0] if loc >= 0 else 0
                    self._rec(self.seq, st.id, "blocked", loc, now, op[4] if op[0] == WAIT else 1, -1, -1,
                              op[1].seq if op[0] == AWAIT else -1, -1,
                              op[2] if op[0] == WAIT else -1, op[3] if op[0] == WAIT else 0, -1, -1)
                self.seq += 1
                self.blocked_rows += 1
            what = "; ".join(self._blocked_text(st) for st in blocked)
            self._flag("deadlock", f"nothing else can happen and {what}", *seqs)
            return
        stuck = [m for st in self.actors for m in st.inflight]
        if stuck:
            m = stuck[0]
            self._flag("lost_delivery", f"{m.actor.name}'s {OP_NAMES[m.kind]} to {self._loc(m.loc)} "
                       f"(event {m.seq}) never landed (doorbell never rung?)", m.seq)
            return
        for spec in self.program.locs:
            if spec.consumable and not self.crashed[spec.rank]:
                w = self.hist[spec.id][-1]
                if not w[W_CONSUMED]:
                    self._flag("lost_delivery", f"{spec!r} = {w[0]} (written at event {w[W_SEQ]}) was never "
                               "consumed", w[W_SEQ])
                    return

    def _blocked_text(self, st: _ActorState) -> str:
        op = st.op
        if op[0] == WAIT:
            return (f"{st.name} waits for {self._loc(op[1])} {CMPS[op[2]]} {op[3]} "
                    f"(it holds {self.hist[op[1]][-1][0]})")
        if op[0] == QUIET:
            return f"{st.name} waits in quiet for {len(st.inflight)} messages"
        if op[0] == CQ_POLL:
            return f"{st.name} polls {self.program.qps[op[1]]!r}, which will get no more completions"
        return f"{st.name} waits for the reply of event {op[1].seq}"

    # -- results ------------------------------------------------------------------------------
    def value(self, loc: object) -> int:
        """The newest value of a location (a :class:`~tracekit.hazards.ops.Loc`)."""
        return self.hist[loc.id][-1][0]  # type: ignore[attr-defined]
