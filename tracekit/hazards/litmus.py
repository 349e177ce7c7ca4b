"""Litmus tests: the classic ordering shapes as tiny programs, with the outcome sets the model
allows, enumerated exhaustively over every schedule.

Each :class:`Litmus` names its registers (the values the loads return, plus final memory values for
the coherence shapes), the outcomes the model allows, and the *interesting* outcome: the one
sequential consistency forbids (or, for coherence, the one that would break coherence). Model:
release/acquire and relaxed accesses with sequentially consistent fences, as in C11 and the PTX
memory model, without load-to-store reordering (so LB's cycle is forbidden here, as on x86-TSO,
while C11 permits it); NIC puts follow the delivery rules of :mod:`tracekit.hazards.ops`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import product
from typing import Any

from tracekit.hazards.explore import exhaustive
from tracekit.hazards.ops import Actor, Loc, Program

Outcome = tuple[int, ...]


@dataclass(frozen=True)
class Litmus:
    name: str
    description: str
    registers: tuple[str, ...]
    build: Callable[[Program, dict[str, int]], None]
    allowed: frozenset[Outcome]
    interesting: Outcome
    textbook: str

    @property
    def interesting_allowed(self) -> bool:
        return self.interesting in self.allowed

    def program(self) -> tuple[Program, dict[str, int]]:
        regs: dict[str, int] = {}
        p = Program(f"litmus/{self.name}")
        self.build(p, regs)
        return p, regs

    def outcomes(self, limit: int | None = None) -> dict[Outcome, int]:
        """Every outcome over every schedule (exhaustive), with how many schedules give it."""
        p, regs = self.program()
        seen: dict[Outcome, int] = {}
        for _, ex in exhaustive(p, limit=limit):
            if ex.hazard is not None:
                raise AssertionError(f"litmus {self.name}: unexpected hazard {ex.hazard}")
            out = tuple(regs[r] if r in regs else ex.value(_final(p, r)) for r in self.registers)
            seen[out] = seen.get(out, 0) + 1
            regs.clear()
        return seen


def _final(p: Program, reg: str) -> Loc:
    var = reg.removeprefix("final_")
    return next(loc for loc in p.locs if loc.var == var)


def _all(*ranges: tuple[int, ...]) -> frozenset[Outcome]:
    return frozenset(product(*ranges))


def _loads(a: Actor, regs: dict[str, int], pairs: list[tuple[str, Loc]], order: str, fence: bool) -> Iterator[tuple]:
    for i, (reg, loc) in enumerate(pairs):
        if fence and i:
            yield a.fence()
        regs[reg] = yield a.load(loc, order=order)


def _mp(store_order: str, load_order: str, fence: bool) -> Callable[[Program, dict[str, int]], None]:
    def build(p: Program, regs: dict[str, int]) -> None:
        x, y = p.var("x", 1), p.var("y", 1)

        def writer(a: Actor) -> Iterator[tuple]:
            yield a.store(x, 1)
            if fence:
                yield a.fence()
            yield a.store(y, 1, order=store_order)

        p.spawn(0, "sm/writer", writer)
        if load_order == "acquire":
            p.spawn(1, "sm/reader", _acquire_then, regs, y, x)
        else:
            p.spawn(1, "sm/reader", _loads, regs, [("r1", y), ("r2", x)], "relaxed", fence)
    return build


def _acquire_then(a: Actor, regs: dict[str, int], flag: Loc, data: Loc) -> Iterator[tuple]:
    regs["r1"] = yield a.load(flag, order="acquire")
    regs["r2"] = yield a.load(data)


def _mp_rdma(how: str) -> Callable[[Program, dict[str, int]], None]:
    def build(p: Program, regs: dict[str, int]) -> None:
        x, y = p.var("x", 1), p.var("y", 1)
        qp = p.qp(0, 1, multipath=how != "single_path")

        def writer(a: Actor) -> Iterator[tuple]:
            yield a.put(x, 1, qp)
            if how == "fence":
                yield a.fence()
            yield a.atomic_add(y, 1, qp) if how == "atomic_flag" else a.put(y, 1, qp)
        p.spawn(0, "sm/writer", writer)
        p.spawn(1, "sm/reader", _acquire_then, regs, y, x)
    return build


def _sb(fence: bool) -> Callable[[Program, dict[str, int]], None]:
    def build(p: Program, regs: dict[str, int]) -> None:
        x, y = p.var("x", 0), p.var("y", 1)

        def t(a: Actor, mine: Loc, other: Loc, reg: str) -> Iterator[tuple]:
            yield a.store(mine, 1)
            if fence:
                yield a.fence()
            regs[reg] = yield a.load(other)
        p.spawn(0, "sm/t0", t, x, y, "r1")
        p.spawn(1, "sm/t1", t, y, x, "r2")
    return build


def _lb(p: Program, regs: dict[str, int]) -> None:
    x, y = p.var("x", 0), p.var("y", 1)

    def t(a: Actor, read: Loc, write: Loc, reg: str) -> Iterator[tuple]:
        regs[reg] = yield a.load(read)
        yield a.store(write, 1)
    p.spawn(0, "sm/t0", t, x, y, "r1")
    p.spawn(1, "sm/t1", t, y, x, "r2")


def _iriw(fence: bool) -> Callable[[Program, dict[str, int]], None]:
    def build(p: Program, regs: dict[str, int]) -> None:
        x, y = p.var("x", 0), p.var("y", 1)

        def w(a: Actor, loc: Loc) -> Iterator[tuple]:
            yield a.store(loc, 1, order="release")
        p.spawn(0, "sm/w0", w, x)
        p.spawn(1, "sm/w1", w, y)
        p.spawn(2, "sm/r0", _loads, regs, [("r1", x), ("r2", y)], "acquire", fence)
        p.spawn(3, "sm/r1", _loads, regs, [("r3", y), ("r4", x)], "acquire", fence)
    return build


def _corr(p: Program, regs: dict[str, int]) -> None:
    x = p.var("x", 0)

    def w(a: Actor) -> Iterator[tuple]:
        yield a.store(x, 1)
    p.spawn(0, "sm/w", w)
    p.spawn(1, "sm/r", _loads, regs, [("r1", x), ("r2", x)], "relaxed", False)


def _coww(p: Program, regs: dict[str, int]) -> None:
    x = p.var("x", 0)

    def w(a: Actor) -> Iterator[tuple]:
        yield a.store(x, 1)
        yield a.store(x, 2)
    p.spawn(0, "sm/w", w)
    p.spawn(1, "sm/r", _loads, regs, [("r1", x), ("r2", x)], "relaxed", False)


def _cowr(p: Program, regs: dict[str, int]) -> None:
    x = p.var("x", 0)

    def t0(a: Actor) -> Iterator[tuple]:
        yield a.store(x, 1)
        regs["r1"] = yield a.load(x)

    def t1(a: Actor) -> Iterator[tuple]:
        yield a.store(x, 2)
    p.spawn(0, "sm/t0", t0)
    p.spawn(1, "sm/t1", t1)


def _corw(p: Program, regs: dict[str, int]) -> None:
    x = p.var("x", 0)

    def t0(a: Actor) -> Iterator[tuple]:
        regs["r1"] = yield a.load(x)
        yield a.store(x, 1)

    def t1(a: Actor) -> Iterator[tuple]:
        yield a.store(x, 2)
    p.spawn(0, "sm/t0", t0)
    p.spawn(1, "sm/t1", t1)


_B = (0, 1)
_MP_ALL = _all(_B, _B)
_MP_ORDERED = _MP_ALL - {(1, 0)}

#: Every litmus test by name.
LITMUS: dict[str, Litmus] = {t.name: t for t in (
    Litmus("MP", "message passing, relaxed flag: the reader sees the flag but stale data",
           ("r1", "r2"), _mp("relaxed", "relaxed", False), _MP_ALL, (1, 0),
           "C11/PTX relaxed, ARM, Power: allowed; x86-TSO: forbidden"),
    Litmus("MP+rel+acq", "message passing with a release store of the flag and an acquire load",
           ("r1", "r2"), _mp("release", "acquire", False), _MP_ORDERED, (1, 0), "forbidden in every model"),
    Litmus("MP+rel+rlx", "release store of the flag but a relaxed load of it",
           ("r1", "r2"), _mp("release", "relaxed", False), _MP_ALL, (1, 0),
           "C11/PTX: allowed (the reader needs acquire)"),
    Litmus("MP+fences", "relaxed accesses with a fence between the stores and between the loads",
           ("r1", "r2"), _mp("relaxed", "relaxed", True), _MP_ORDERED, (1, 0), "forbidden"),
    Litmus("MP+rdma", "two RDMA puts on a multipath QP, no fence: the flag can land before the data",
           ("r1", "r2"), _mp_rdma("multipath"), _MP_ALL, (1, 0),
           "allowed under adaptive routing (DeepEP issue 20)"),
    Litmus("MP+rdma+fence", "two RDMA puts on a multipath QP with a fence between them",
           ("r1", "r2"), _mp_rdma("fence"), _MP_ORDERED, (1, 0), "forbidden (NVSHMEM fence)"),
    Litmus("MP+rdma+single_path", "two RDMA puts on one QP and one path",
           ("r1", "r2"), _mp_rdma("single_path"), _MP_ORDERED, (1, 0), "forbidden (RC QP in-order delivery)"),
    Litmus("MP+rdma+atomic", "RDMA put then RDMA atomic flag on the same multipath QP",
           ("r1", "r2"), _mp_rdma("atomic_flag"), _MP_ORDERED, (1, 0),
           "forbidden (the NIC orders the atomic after the put, DeepEP issue 437)"),
    Litmus("SB", "store buffering: each thread stores then loads the other's location",
           ("r1", "r2"), _sb(False), _all(_B, _B), (0, 0), "allowed in every weak model, x86-TSO included"),
    Litmus("SB+fences", "store buffering with a fence between store and load",
           ("r1", "r2"), _sb(True), _all(_B, _B) - {(0, 0)}, (0, 0), "forbidden"),
    Litmus("LB", "load buffering: each thread loads then stores the other's location",
           ("r1", "r2"), _lb, _all(_B, _B) - {(1, 1)}, (1, 1),
           "x86-TSO: forbidden; C11/ARM/Power: allowed, but this model does not reorder a load after a "
           "later store, so it forbids it"),
    Litmus("IRIW+acq", "independent reads of independent writes, acquire loads",
           ("r1", "r2", "r3", "r4"), _iriw(False), _all(_B, _B, _B, _B), (1, 0, 1, 0),
           "C11 release/acquire, PTX, Power: allowed; x86, ARMv8: forbidden"),
    Litmus("IRIW+fences", "independent reads of independent writes, fences between the loads",
           ("r1", "r2", "r3", "r4"), _iriw(True), _all(_B, _B, _B, _B) - {(1, 0, 1, 0)}, (1, 0, 1, 0),
           "forbidden"),
    Litmus("CoRR", "read-read coherence: a later read cannot return an older write",
           ("r1", "r2"), _corr, _all(_B, _B) - {(1, 0)}, (1, 0), "forbidden in every model"),
    Litmus("CoWW", "write-write coherence: writes of one thread to x are seen in order, and the last stays",
           ("r1", "r2", "final_x"),
           _coww, frozenset((a, b, 2) for a in (0, 1, 2) for b in (0, 1, 2) if b >= a), (2, 1, 2),
           "forbidden in every model"),
    Litmus("CoWR", "write-read coherence: a thread reads its own write or a later one",
           ("r1", "final_x"), _cowr, frozenset({(1, 1), (1, 2), (2, 2)}), (2, 1), "forbidden in every model"),
    Litmus("CoRW", "read-write coherence: a read cannot see a write that is coherence-after its own write",
           ("r1", "final_x"), _corw, frozenset({(0, 1), (0, 2), (2, 1)}), (2, 2), "forbidden in every model"),
)}


def table(names: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per litmus test: its enumerated outcomes next to the expected ones."""
    rows = []
    for name in names or list(LITMUS):
        t = LITMUS[name]
        seen = t.outcomes()
        rows.append({
            "test": t.name, "registers": ",".join(t.registers), "interesting": t.interesting,
            "interesting_allowed": t.interesting in seen, "outcomes": sorted(seen),
            "matches_model": set(seen) == set(t.allowed), "schedules": sum(seen.values()),
            "textbook": t.textbook,
        })
    return rows
