"""The memory-operation model: memory locations, queue pairs, regions and actors of one protocol.

A protocol is written as a few generator functions, one per actor (an SM warp of a rank, a NIC
client, a CPU proxy). Each yields operations built by its :class:`Actor` handle and receives the
result of loads, waits and fetching atomics::

    def sender(a, data, flag):
        yield a.store(data, 42)                      # plain store (over NVLink if data is remote)
        yield a.store(flag, 1, order="release")      # publishes everything before it

    def receiver(a, data, flag):
        yield a.wait(flag, ">=", 1)                  # acquire by default
        value = yield a.load(data)
        yield a.consume(data)                        # done with this slot

:class:`Program` holds the static part (locations, QPs, regions, actor functions); the engine
(:mod:`tracekit.hazards.engine`) runs it under an explicit schedule. Semantics, in brief
(docs/fuzzing.md has the full account):

- SM loads and stores follow release/acquire with relaxed accesses (C11 style, tracked as views:
  a load may return any write to its location that is not older than what the actor already
  knows); ``fence`` is a sequentially consistent fence.
- ``put`` and ``atomic_add`` post a WQE to a send queue; the message lands later, at a time the
  schedule picks. Messages on one QP and one path land in order; on a multipath QP puts land in
  any order, but an atomic lands after every earlier put on its QP; nothing orders different QPs;
  ``fence`` orders an actor's later messages to a rank after its earlier ones; ``quiet`` waits
  until all of the actor's messages landed. Each landing adds a completion to the QP's CQ.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tracekit.errors import TracekitError

#: Memory orders, weakest first. ``plain`` is non-atomic data.
ORDERS = ("plain", "relaxed", "acquire", "release", "acq_rel", "sc")
PLAIN, RELAXED, ACQUIRE, RELEASE, ACQ_REL, SC = range(6)
ORDER_CODE = {name: i for i, name in enumerate(ORDERS)}
#: Whether an order code acquires / releases.
IS_ACQUIRE = (False, False, True, False, True, True)
IS_RELEASE = (False, False, False, True, True, True)

#: Comparisons a wait may use.
CMPS = (">=", ">", "==", "!=", "<=", "<")
CMP_CODE = {c: i for i, c in enumerate(CMPS)}
CMP_FN: tuple[Callable[[int, int], bool], ...] = (
    lambda x, y: x >= y, lambda x, y: x > y, lambda x, y: x == y,
    lambda x, y: x != y, lambda x, y: x <= y, lambda x, y: x < y,
)

# Operation codes: the first element of every operation tuple an actor yields.
(LOAD, STORE, RMW, WAIT, FENCE, PUT, ATOMIC, DOORBELL, CQ_POLL, QUIET, CONSUME, MAP, UNMAP, CRASH,
 AWAIT) = range(15)
#: ``op`` column value (memops schema) of each operation code.
OP_NAMES = ("load", "store", "rmw", "wait", "fence", "put", "atomic", "doorbell", "cq_poll", "quiet",
            "slot_release", "map", "unmap", "crash", "await")
#: Operations that may block until something happens elsewhere.
BLOCKING = frozenset({WAIT, QUIET, CQ_POLL, AWAIT})

#: Every hazard the engine and the checker name, with what it means.
HAZARDS: dict[str, str] = {
    "stale_read_after_flag": "a reader saw the flag (or was told the data was there) but read older data",
    "slot_overwrite": "a write landed on a ring slot whose previous content had not been consumed",
    "credit_underflow": "a credit counter went below zero",
    "credit_overflow": "a credit counter went above its capacity",
    "send_queue_overflow": "a WQE was posted to a full send queue",
    "cq_overflow": "a completion arrived at a full completion queue",
    "lost_delivery": "a message never landed, or a slot's content was never consumed",
    "duplicated_delivery": "the same message was consumed (or delivered) twice",
    "access_after_unmap": "memory of an unmapped region was accessed (a load, store or landing write)",
    "access_to_crashed_rank": "memory of a crashed rank was accessed",
    "deadlock": "an actor waits for a condition that can never become true",
}


@dataclass(frozen=True)
class Hazard:
    """A named hazard: what happened, and the events (memops ``seq`` ids) that show it."""

    name: str
    message: str
    events: tuple[int, ...] = ()
    #: True when it happened in this execution; False when happens-before shows only that
    #: another schedule of the same operations makes it happen.
    manifest: bool = True

    def __str__(self) -> str:
        kind = "" if self.manifest else " (possible under another ordering)"
        return f"{self.name}{kind}: {self.message}"


@dataclass(frozen=True, eq=False)
class Loc:
    """One memory location: a scalar variable or one slot of an array, owned by ``rank``."""

    id: int
    rank: int
    var: str
    slot: int = -1
    region: int = -1
    region_name: str = ""
    capacity: int = -1
    init: int = 0
    #: Ring-slot semantics: each write must be consumed exactly once before the next lands.
    consumable: bool = False

    def __repr__(self) -> str:
        index = f"[{self.slot}]" if self.slot >= 0 else ""
        return f"{self.var}{index}@rank{self.rank}"


@dataclass(frozen=True, eq=False)
class Region:
    """A mapped (registered) range of a rank's memory; ``unmap`` makes it unreachable."""

    id: int
    rank: int
    name: str


@dataclass(frozen=True, eq=False)
class QP:
    """A reliable-connected queue pair from ``src`` to ``dst`` (numbered per source rank)."""

    id: int
    src: int
    dst: int
    index: int
    sq_depth: int = -1
    cq_depth: int = -1
    #: Adaptive routing / multipath: puts may land in any order.
    multipath: bool = False

    def __repr__(self) -> str:
        return f"qp{self.index}@rank{self.src}->rank{self.dst}"


def _int(value: Any, what: str, who: str) -> int:
    if type(value) is not int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TracekitError(f"{what} must be an int, got {value!r}", where=who)
        value = int(value)  # an int subclass such as numpy's
    return value


class Actor:
    """Handle an actor's generator uses to build operations. Stateless: shared by executions."""

    def __init__(self, program: Program, id: int, rank: int, name: str) -> None:
        self.program = program
        self._locs = program.locs
        self.id = id
        self.rank = rank
        self.name = name

    def __repr__(self) -> str:
        return self.name

    def _loc(self, loc: Any) -> int:
        try:
            if self._locs[loc.id] is loc:
                return loc.id
        except (AttributeError, IndexError, TypeError):
            pass
        raise TracekitError(f"{loc!r} is not a location of this protocol", where=self.name,
                            fix="pass a location made by p.var, p.array or p.slots")

    def _order(self, order: str) -> int:
        code = ORDER_CODE.get(order)
        if code is None:
            raise TracekitError(f"unknown memory order {order!r}", where=self.name,
                                fix=f"use one of {', '.join(ORDERS)}")
        return code

    def _qp(self, qp: Any) -> int:
        if not isinstance(qp, QP):
            raise TracekitError(f"{qp!r} is not a queue pair", where=self.name, fix="pass a QP made by p.qp")
        if qp.src != self.rank:
            raise TracekitError(f"{self.name} (rank {self.rank}) cannot post to {qp!r}", where=self.name,
                                fix="post on a QP whose source is the actor's rank")
        return qp.id

    # -- SM memory operations -----------------------------------------------------------------
    # The hot operations check their arguments inline; the slow path names what was wrong.
    def load(self, loc: Loc, order: str = "relaxed") -> tuple:
        """Read ``loc``; the generator receives the value."""
        try:
            if self._locs[loc.id] is loc:
                return (LOAD, loc.id, ORDER_CODE[order])
        except (AttributeError, IndexError, TypeError, KeyError):
            pass
        return (LOAD, self._loc(loc), self._order(order))

    def store(self, loc: Loc, value: int, order: str = "relaxed") -> tuple:
        """Write ``value`` to ``loc`` (local memory, or a peer's over NVLink)."""
        try:
            if self._locs[loc.id] is loc and value.__class__ is int:
                return (STORE, loc.id, value, ORDER_CODE[order])
        except (AttributeError, IndexError, TypeError, KeyError):
            pass
        return (STORE, self._loc(loc), _int(value, "store value", self.name), self._order(order))

    def add(self, loc: Loc, delta: int, order: str = "relaxed") -> tuple:
        """Atomic fetch-and-add by this actor; the generator receives the old value."""
        return (RMW, self._loc(loc), _int(delta, "add delta", self.name), self._order(order))

    def wait(self, loc: Loc, cmp: str, value: int, order: str = "acquire") -> tuple:
        """Block until ``loc cmp value`` can be read; the generator receives the value read."""
        code = CMP_CODE.get(cmp)
        try:
            if code is not None and self._locs[loc.id] is loc and value.__class__ is int:
                return (WAIT, loc.id, code, value, ORDER_CODE[order])
        except (AttributeError, IndexError, TypeError, KeyError):
            pass
        if code is None:
            raise TracekitError(f"unknown comparison {cmp!r}", where=self.name, fix=f"use one of {' '.join(CMPS)}")
        return (WAIT, self._loc(loc), code, _int(value, "wait value", self.name), self._order(order))

    def fence(self) -> tuple:
        """Sequentially consistent fence; also orders this actor's later NIC operations to each
        rank after its earlier ones (NVSHMEM ``fence``)."""
        return (FENCE,)

    def consume(self, loc: Loc) -> tuple:
        """Declare the content of ring slot ``loc`` (as last read by this actor) consumed."""
        i = self._loc(loc)
        if not loc.consumable:
            raise TracekitError(f"{loc!r} is not a ring slot", where=self.name,
                                fix="declare it with p.slots(...) to give it consume semantics")
        return (CONSUME, i)

    # -- NIC operations ------------------------------------------------------------------------
    def put(self, loc: Loc, value: int = 0, qp: QP | None = None, *, src: Loc | None = None,
            doorbell: bool = True) -> tuple:
        """RDMA write of ``value`` (or, with ``src``, of what the NIC reads from that local
        location when it executes the WQE) into remote ``loc`` on ``qp``."""
        q = self._qp(qp)
        i = self._loc(loc)
        if loc.rank != qp.dst:
            raise TracekitError(f"put to {loc!r} on {qp!r}", where=self.name, fix="use a QP to the location's rank")
        s = -1
        if src is not None:
            s = self._loc(src)
            if src.rank != self.rank:
                raise TracekitError(f"put source {src!r} is not local to rank {self.rank}", where=self.name)
        return (PUT, i, _int(value, "put value", self.name), q, s, bool(doorbell))

    def atomic_add(self, loc: Loc, delta: int, qp: QP, *, fetch: bool = False, doorbell: bool = True) -> tuple:
        """RDMA atomic add on remote ``loc``; with ``fetch`` the actor waits for the old value."""
        q = self._qp(qp)
        i = self._loc(loc)
        if loc.rank != qp.dst:
            raise TracekitError(f"atomic to {loc!r} on {qp!r}", where=self.name, fix="use a QP to the location's rank")
        return (ATOMIC, i, _int(delta, "atomic delta", self.name), q, bool(fetch), bool(doorbell))

    def doorbell(self, qp: QP) -> tuple:
        """Ring the doorbell: WQEs posted with ``doorbell=False`` on ``qp`` may now execute."""
        return (DOORBELL, self._qp(qp))

    def poll_cq(self, qp: QP) -> tuple:
        """Wait for and reap one completion of ``qp`` (frees its send-queue entry)."""
        return (CQ_POLL, self._qp(qp))

    def quiet(self) -> tuple:
        """Wait until every message this actor posted has landed; reap their completions."""
        return (QUIET,)

    # -- mappings and faults -----------------------------------------------------------------
    def map(self, region: Region) -> tuple:
        return (MAP, self._region(region))

    def unmap(self, region: Region) -> tuple:
        """Unmap (deregister) ``region``: later accesses, including landing writes, are hazards."""
        return (UNMAP, self._region(region))

    def crash(self) -> tuple:
        """This actor's rank crashes: its actors stop and its memory becomes unreachable."""
        return (CRASH,)

    def _region(self, region: Any) -> int:
        if not isinstance(region, Region):
            raise TracekitError(f"{region!r} is not a region", where=self.name, fix="pass a region made by p.region")
        return region.id


@dataclass
class ActorSpec:
    handle: Actor
    fn: Callable[..., Iterator[tuple]]
    args: tuple


class Program:
    """One protocol instance: its memory, queue pairs, regions and actors.

    Built once by a protocol function, then run many times under different schedules."""

    def __init__(self, name: str = "protocol") -> None:
        self.name = name
        self.locs: list[Loc] = []
        self.regions: list[Region] = []
        self.qps: list[QP] = []
        self.actors: list[ActorSpec] = []
        self._names: set[str] = set()
        self._vars: set[tuple[int, str]] = set()

    @property
    def ranks(self) -> int:
        used = [loc.rank for loc in self.locs] + [a.handle.rank for a in self.actors]
        return max(used) + 1 if used else 0

    def _new_var(self, name: str, rank: int) -> None:
        rank = _int(rank, "rank", f"{self.name}: {name}")
        if rank < 0:
            raise TracekitError(f"rank {rank} is negative", where=f"{self.name}: {name}")
        if (rank, name) in self._vars:
            raise TracekitError(f"variable {name} declared twice on rank {rank}", where=self.name,
                                fix="give every variable of a rank its own name")
        self._vars.add((rank, name))

    def _add(self, **kw: Any) -> Loc:
        loc = Loc(id=len(self.locs), **kw)
        self.locs.append(loc)
        return loc

    def region(self, name: str, rank: int) -> Region:
        """A mapped region of ``rank``'s memory (initially mapped)."""
        r = Region(len(self.regions), rank, name)
        self.regions.append(r)
        return r

    def var(self, name: str, rank: int, init: int = 0, *, capacity: int | None = None,
            region: Region | None = None) -> Loc:
        """A scalar location in ``rank``'s memory. ``capacity`` makes it a bounded counter
        (credits): a value below 0 or above capacity is a hazard."""
        self._new_var(name, rank)
        return self._add(rank=rank, var=name, init=init, capacity=-1 if capacity is None else capacity,
                         region=region.id if region else -1, region_name=region.name if region else "")

    def array(self, name: str, rank: int, size: int, init: int = 0, *, region: Region | None = None) -> list[Loc]:
        """Plain array: ``size`` scalar locations named ``name[i]``."""
        self._new_var(name, rank)
        return [self._add(rank=rank, var=f"{name}[{i}]", init=init, region=region.id if region else -1,
                          region_name=region.name if region else "") for i in range(size)]

    def slots(self, name: str, rank: int, size: int, *, region: Region | None = None) -> list[Loc]:
        """Ring slots: every write to a slot must be consumed (``a.consume``) exactly once, before
        the next write lands. Initially empty (value 0)."""
        self._new_var(name, rank)
        return [self._add(rank=rank, var=name, slot=i, consumable=True, region=region.id if region else -1,
                          region_name=region.name if region else "") for i in range(size)]

    def qp(self, src: int, dst: int, *, sq_depth: int | None = None, cq_depth: int | None = None,
           multipath: bool = False) -> QP:
        """A queue pair from rank ``src`` to rank ``dst``; depths default to unbounded."""
        index = sum(1 for q in self.qps if q.src == src)
        q = QP(len(self.qps), src, dst, index, -1 if sq_depth is None else sq_depth,
               -1 if cq_depth is None else cq_depth, multipath)
        self.qps.append(q)
        return q

    def spawn(self, rank: int, name: str, fn: Callable[..., Iterator[tuple]], *args: Any) -> Actor:
        """Add an actor of ``rank`` running ``fn(actor, *args)`` (a generator function).
        ``name`` is its resource below the rank, e.g. ``sm/warp0`` or ``cpu/proxy``."""
        full = f"rank{rank}/{name}"
        if full in self._names:
            raise TracekitError(f"two actors named {full}", where=self.name, fix="give each actor its own name")
        if not inspect.isgeneratorfunction(fn):
            raise TracekitError(f"actor {full}: {getattr(fn, '__name__', fn)!r} is not a generator function",
                                where=self.name, fix="write the actor as a function that yields a.load(...), a.store(...)")
        self._names.add(full)
        handle = Actor(self, len(self.actors), rank, full)
        self.actors.append(ActorSpec(handle, fn, args))
        return handle

    def actor(self, rank: int, name: str | None = None) -> Callable[[Callable[..., Iterator[tuple]]], Callable]:
        """Decorator form of :meth:`spawn` for an actor taking only its handle."""
        def register(fn: Callable[..., Iterator[tuple]]) -> Callable:
            self.spawn(rank, name or f"sm/{fn.__name__}", fn)
            return fn
        return register


@dataclass(frozen=True)
class ProtocolSpec:
    """A protocol: a build function with its named variants (correct or broken) and sizes."""

    name: str
    build_fn: Callable[..., None]
    variants: dict[str, str]
    correct: frozenset[str]
    #: Size parameter -> (smallest, largest) explored.
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    doc: str = ""

    @property
    def default_variant(self) -> str:
        for v in self.variants:
            if v in self.correct:
                return v
        return next(iter(self.variants))

    def check_variant(self, variant: str) -> None:
        if variant not in self.variants:
            raise TracekitError(f"protocol {self.name} has no variant {variant!r}",
                                fix=f"use one of {', '.join(self.variants)}")

    def check_sizes(self, sizes: dict[str, int]) -> dict[str, int]:
        out = {k: hi for k, (lo, hi) in self.sizes.items()}
        for k, v in sizes.items():
            if k not in self.sizes:
                raise TracekitError(f"protocol {self.name} has no size {k!r}",
                                    fix=f"sizes are {', '.join(self.sizes) or 'none'}")
            lo, hi = self.sizes[k]
            if not lo <= v <= hi:
                raise TracekitError(f"size {k}={v} of protocol {self.name} is outside [{lo}, {hi}]",
                                    fix=f"choose {k} between {lo} and {hi}")
            out[k] = v
        return out

    def build(self, variant: str, **sizes: int) -> Program:
        """The program of ``variant`` at the given sizes (missing sizes take their largest)."""
        self.check_variant(variant)
        sizes = self.check_sizes(sizes)
        p = Program(f"{self.name}/{variant}")
        self.build_fn(p, variant, **sizes)
        if not p.actors:
            raise TracekitError(f"protocol {self.name} declared no actors", fix="add actors with p.spawn or @p.actor")
        return p


def protocol(*, correct: dict[str, str], broken: dict[str, str] | None = None,
             sizes: dict[str, tuple[int, int]] | None = None, name: str | None = None
             ) -> Callable[[Callable[..., None]], ProtocolSpec]:
    """Declare a protocol. The decorated function ``build(p, variant, **sizes)`` declares memory,
    queue pairs and actors on ``p`` (a :class:`Program`). ``correct`` and ``broken`` map each
    variant name to a one-line description; ``sizes`` maps each size argument to the (smallest,
    largest) value to explore."""
    broken = broken or {}
    overlap = set(correct) & set(broken)
    if overlap:
        raise TracekitError(f"variants {sorted(overlap)} declared both correct and broken")

    def wrap(fn: Callable[..., None]) -> ProtocolSpec:
        for k, (lo, hi) in (sizes or {}).items():
            if not 0 <= lo <= hi:
                raise TracekitError(f"size {k}: ({lo}, {hi}) is not a range", where=fn.__name__)
        return ProtocolSpec(name=name or fn.__name__, build_fn=fn, variants={**correct, **broken},
                            correct=frozenset(correct), sizes=dict(sizes or {}),
                            doc=inspect.getdoc(fn) or "")
    return wrap
