"""The checker: named hazards in one execution's memops table, each with the events that show it.

:func:`check_trace` reads a ``memops`` table (``schemas/memops.v1.json``) from the fuzzer or from
a replay and reports two kinds of hazard:

- *manifest*: it happened in this execution (a write landed on an unconsumed slot, a reader
  consumed an empty or already-consumed slot, a counter left its bounds, a queue overflowed,
  unmapped or crashed memory was touched, an actor was still waiting at the end, a message was
  lost or delivered twice). These are the same rules the exploration engine applies as it runs.
- *possible* (``manifest=False``): happens-before shows that another ordering of the same
  operations makes it happen: a slot's consumer read a write that is not ordered before the read
  (stale read after flag), or the next write to a slot is not ordered after the consumer released
  it (slot overwrite).

Happens-before is built from program order, release/acquire reads-from (including release
sequences through RMWs and atomics), sequentially consistent fences, the delivery order of the
NIC (one QP and one path in order; an atomic after every earlier put of its QP; ``fence`` orders an
actor's messages to one rank), and completions (``cq_poll``, ``quiet``). Actor events carry vector
clocks; deliveries, which no actor performs, are related to later events through their successors.
Cost is O(rows x actors) time and memory: meant for fuzz counterexamples and replay windows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl
import pyarrow as pa

from tracekit import schemas
from tracekit.errors import TracekitError
from tracekit.hazards.ops import CMPS, ORDERS, Hazard

_OPS = {"load", "store", "rmw", "wait", "fence", "put", "atomic", "doorbell", "deliver", "cq_poll", "quiet",
        "slot_release", "map", "unmap", "crash", "blocked"}
_ACQ = {"acquire", "acq_rel", "sc"}
_REL = {"release", "acq_rel", "sc"}
Key = tuple[int, str, int]  # (rank, var, slot): one location


def _name(key: Key) -> str:
    rank, var, slot = key
    return f"{var}{f'[{slot}]' if slot >= 0 else ''}@rank{rank}"


def _join(a: list[int] | None, b: list[int] | None) -> list[int] | None:
    if a is None:
        return None if b is None else list(b)
    if b is None:
        return list(a)
    return [x if x > y else y for x, y in zip(a, b)]


@dataclass
class _Write:
    seq: int  # -1: the initial value
    value: int | None
    carried: list[int] | None = None
    consumed: bool = True
    consumer: int = -1  # seq of the slot_release that consumed it
    node: int = -1  # node id for successor queries (= seq of the store, rmw or deliver)


@dataclass
class _Msg:
    seq: int
    actor: int
    rank: int
    qp: int
    path: int
    kind: str
    key: Key
    src: Key | None
    src_region: str
    vc: list[int]
    guard: list[int] = field(default_factory=list)  # the poster's latest wait and what it read
    deps: list[int] = field(default_factory=list)  # message seqs it must land after
    groups: list[int] = field(default_factory=list)  # fence groups it must land after
    delivered: int = -1


class _Checker:
    def __init__(self, table: pa.Table, complete: bool) -> None:
        self.complete = complete
        self.c = {name: table.column(name).to_pylist() for name in table.column_names}
        self.n = table.num_rows
        self.hazards: list[Hazard] = []
        self.seen: set[tuple[str, Any, bool]] = set()
        names: dict[str, int] = {}
        for op, actor in zip(self.c["op"], self.c["actor"]):
            if op != "deliver" and actor not in names:
                names[actor] = len(names)
        self.actor_ids = names
        self.actor_names = list(names)
        self.A = len(names)
        self.vc = [[0] * self.A for _ in range(self.A)]
        self.gvc = [0] * self.A
        self.node_vc: dict[int, list[int]] = {}  # vector clock of each delivery and fence group
        self.succ: dict[int, list[int]] = {}  # write/delivery/group node -> successor nodes
        self.succ_actor: dict[int, dict[int, int]] = {}  # node -> {actor: min clock}
        self.event_of: dict[int, tuple[int, int]] = {}  # seq -> (actor, clock) of actor events
        self.mem: dict[Key, list[_Write]] = {}
        self.write_at: dict[int, tuple[Key, int]] = {}
        self.msgs: dict[int, _Msg] = {}
        self.pending_to: dict[Key, list[int]] = {}  # location -> posts to it not yet delivered
        self.mapped: dict[tuple[int, str], bool] = {}
        self.unmap_row: dict[tuple[int, str], int] = {}
        self.crashed: dict[int, int] = {}
        self.last_read: dict[tuple[int, Key], tuple[int, int]] = {}  # (actor, key) -> (write idx, load seq)
        self.load_vc: dict[int, list[int]] = {}
        self.guard: dict[int, int] = {}  # actor -> seq of its latest wait
        self.sq: dict[tuple[int, int], list[int]] = {}  # (rank, qp) -> unreaped posts
        self.cq: dict[tuple[int, int], list[int]] = {}  # (rank, qp) -> unreaped completions (post seqs)
        self.actor_qps: dict[int, list[tuple[int, int]]] = {}
        self.unquieted: dict[int, list[int]] = {}  # actor -> its delivered, unjoined message seqs
        self.qp_last: dict[tuple[int, int, int], int] = {}  # (rank, qp, path) -> last message
        self.qp_since_atomic: dict[tuple[int, int], list[int]] = {}
        self.qp_last_atomic: dict[tuple[int, int], int] = {}
        self.sent: dict[tuple[int, int], list[int]] = {}  # (actor, target) -> messages since its fence
        self.group_of: dict[tuple[int, int], int] = {}  # (actor, target) -> current fence group node
        self.groups: dict[int, tuple[list[int], int]] = {}  # group node -> (member msgs, previous group)
        self.member_groups: dict[int, list[int]] = {}  # msg seq -> groups it belongs to
        self.group_cache: dict[int, list[int]] = {}
        self.next_node = self.n and (max(self.c["seq"]) + 1)
        self.stale_checks: list[tuple[int, int, Key, int, int]] = []
        self.delivered_msg: dict[int, int] = {}  # delivery seq -> post seq
        self.cq_depth: dict[tuple[int, int], int] = {}
        self.guard_of_load: dict[int, list[int]] = {}  # load seq -> its guard wait and what it read
        self.blocked: list[int] = []
        self.rf_given = any(x >= 0 for x in self.c["rf"])  # else reads-from is inferred by value
        self.rf_of: dict[int, int] = {}  # load/wait seq -> seq of the write it read (-1: initial)

    # -- reporting ----------------------------------------------------------------------------
    def flag(self, name: str, message: str, events: list[int], where: Any, manifest: bool = True) -> None:
        key = (name, where, manifest)
        if key in self.seen:
            return
        self.seen.add(key)
        ev = sorted({e for e in events if e is not None and e >= 0})
        self.hazards.append(Hazard(name, message, tuple(ev), manifest))

    def who(self, i: int) -> str:
        return self.c["actor"][i]

    def issue_of(self, seq: int) -> list[int]:
        """The write ``seq`` and, for a delivery, the post it delivers."""
        if seq < 0:
            return []
        m = self.delivered_msg.get(seq)
        return [seq] if m is None else [m, seq]

    # -- knowledge ------------------------------------------------------------------------------
    def add_succ(self, node: int, target: int) -> None:
        self.succ.setdefault(node, []).append(target)

    def add_succ_actor(self, node: int, actor: int, clock: int) -> None:
        d = self.succ_actor.setdefault(node, {})
        if actor not in d or clock < d[actor]:
            d[actor] = clock

    def frontier(self, node: int, memo: dict[int, dict[int, int]]) -> dict[int, int]:
        """Earliest event of each actor that ``node`` happens before, through successor edges
        (iterative post-order: chains of deliveries and release sequences can be long)."""
        stack = [node]
        opened: set[int] = set()
        while stack:
            n = stack[-1]
            if n in memo:
                stack.pop()
                continue
            todo = [x for x in self.succ.get(n, ()) if x not in memo]
            if todo and n not in opened:
                opened.add(n)
                stack.extend(todo)
                continue
            out = dict(self.succ_actor.get(n, {}))
            for x in self.succ.get(n, ()):
                for a, c in memo.get(x, {}).items():
                    if a not in out or c < out[a]:
                        out[a] = c
            memo[n] = out
            stack.pop()
        return memo[node]

    def hb(self, node: int, vc: list[int], memo: dict[int, dict[int, int]]) -> bool:
        """Whether write/delivery ``node`` happens before the actor event whose clock is ``vc``."""
        ev = self.event_of.get(node)
        if ev is not None and vc[ev[0]] >= ev[1]:
            return True
        return any(vc[a] >= c for a, c in self.frontier(node, memo).items())

    # -- main pass ------------------------------------------------------------------------------
    def run(self) -> list[Hazard]:
        c = self.c
        prev_seq = None
        for i in range(self.n):
            seq, op = c["seq"][i], c["op"][i]
            where = f"memops table: row {i} (seq {seq})"
            if prev_seq is not None and seq <= prev_seq:
                raise TracekitError(f"seq {seq} does not follow {prev_seq}", where=where,
                                    fix="rows must be in execution order with strictly increasing seq")
            prev_seq = seq
            if op not in _OPS:
                raise TracekitError(f"unknown op {op!r}", where=where, fix=f"use one of {', '.join(sorted(_OPS))}")
            if c["ordering"][i] not in ORDERS:
                raise TracekitError(f"unknown ordering {c['ordering'][i]!r}", where=where,
                                    fix=f"use one of {', '.join(ORDERS)}")
            if c["cmp"][i] and c["cmp"][i] not in CMPS:
                raise TracekitError(f"unknown cmp {c['cmp'][i]!r}", where=where, fix=f"use one of {' '.join(CMPS)}")
            if op == "deliver":
                self.deliver(i, where)
            else:
                self.actor_event(i, where)
        self.end()
        memo: dict[int, dict[int, int]] = {}
        for lseq, rseq, key, wseq, actor in self.stale_checks:
            if not self.hb(wseq, self.load_vc[lseq], memo):
                self.flag("stale_read_after_flag",
                          f"{self.actor_names[actor]} read {_name(key)} (event {lseq}) from event {wseq}, but "
                          "nothing orders that write before the read: another ordering lets it read older data",
                          [*self.guard_of_load.get(lseq, []), *self.issue_of(wseq), lseq, rseq], key, manifest=False)
        self.hazards.sort(key=lambda h: (h.events[-1] if h.events else -1, not h.manifest))
        return self.hazards

    def key(self, i: int) -> Key:
        return (self.c["target_rank"][i], self.c["var"][i], self.c["slot"][i])

    def hist(self, key: Key) -> list[_Write]:
        h = self.mem.get(key)
        if h is None:
            h = self.mem[key] = [_Write(-1, None)]
        return h

    def access(self, i: int, key: Key, region: str, who: str, extra: list[int]) -> bool:
        rank = key[0]
        if rank in self.crashed:
            self.flag("access_to_crashed_rank", f"{who} accessed {_name(key)} after rank {rank} crashed",
                      [self.crashed[rank], *extra, self.c["seq"][i]], rank)
            return False
        if region and not self.mapped.get((rank, region), True):
            self.flag("access_after_unmap", f"{who} accessed {_name(key)} after region {region} of rank {rank} "
                      "was unmapped", [self.unmap_row[(rank, region)], *extra, self.c["seq"][i]], (rank, region))
            return False
        return True

    def guard_chain(self, a: int) -> list[int]:
        """Actor ``a``'s latest wait and the write it read (what let it go on)."""
        g = self.guard.get(a)
        if g is None:
            return []
        return [g, *self.issue_of(self.rf_of.get(g, -1))]

    def write(self, i: int, key: Key, value: int, carried: list[int] | None, who: str, extra: list[int],
              guard: list[int] | None = None) -> None:
        c = self.c
        seq = c["seq"][i]
        h = self.hist(key)
        prev = h[-1]
        slot = key[2] >= 0
        if slot and guard is None and (not prev.consumed or prev.consumer >= 0):
            guard = self.guard_chain(self.actor_ids[c["actor"][i]])
        if slot and not prev.consumed:
            self.flag("slot_overwrite", f"{who} wrote {value} to {_name(key)} while it still held {prev.value} "
                      f"(written at event {prev.seq}) that nobody had consumed",
                      [*self.issue_of(prev.seq), *guard, *extra, seq], key)
        elif slot and prev.consumer >= 0:
            ev = self.event_of[prev.consumer]
            vc = self.node_vc[seq] if c["op"][i] == "deliver" else self.vc[self.actor_ids[c["actor"][i]]]
            if vc[ev[0]] < ev[1]:
                self.flag("slot_overwrite", f"{who} wrote {_name(key)} (event {seq}) after "
                          f"{self.actor_names[ev[0]]} consumed its previous content (event {prev.consumer}), but "
                          "nothing orders the write after that: another ordering overwrites it unconsumed",
                          [*self.issue_of(prev.seq), prev.consumer, *(guard or []), *extra, seq], key,
                          manifest=False)
        cap = c["capacity"][i]
        if cap >= 0 and value < 0:
            self.flag("credit_underflow", f"{who} took {_name(key)} to {value}, below zero",
                      [*self.issue_of(prev.seq), *extra, seq], key)
        elif cap >= 0 and value > cap:
            self.flag("credit_overflow", f"{who} took {_name(key)} to {value}, above its capacity {cap}",
                      [*self.issue_of(prev.seq), *extra, seq], key)
        h.append(_Write(seq, value, carried, consumed=not slot, node=seq))
        self.write_at[seq] = (key, len(h) - 1)

    def actor_event(self, i: int, where: str) -> None:
        c = self.c
        op, seq = c["op"][i], c["seq"][i]
        a = self.actor_ids[c["actor"][i]]
        vc = self.vc[a]
        vc[a] += 1
        self.event_of[seq] = (a, vc[a])
        who = c["actor"][i]
        order = c["ordering"][i]
        key = self.key(i)
        region = c["region"][i]
        if op in ("load", "wait", "rmw", "slot_release"):
            if not self.access(i, key, region, who, []):
                return
        if order == "sc" and op in ("load", "wait", "store", "rmw"):
            self.fence(a)
        if op in ("load", "wait"):
            h = self.hist(key)
            idx = self.read_index(i, key, h, where)
            w = h[idx]
            self.rf_of[seq] = w.seq
            if order in _ACQ:
                if w.carried is not None:
                    self.vc[a] = vc = _join(vc, w.carried)  # type: ignore[assignment]
                if w.seq >= 0:
                    self.add_succ_actor(w.node, a, vc[a])
            self.last_read[(a, key)] = (idx, seq)
            if key[2] >= 0:
                self.load_vc[seq] = list(vc)
            if op == "wait":
                self.guard[a] = seq
            elif key[2] >= 0 and a in self.guard:
                g = self.guard[a]
                self.guard_of_load[seq] = [g, *self.issue_of(self.rf_of.get(g, -1))]
        elif op == "store":
            if not self.access(i, key, region, who, []):
                return
            self.write(i, key, c["value"][i], list(vc) if order in _REL else None, who, [])
        elif op == "rmw":
            h = self.hist(key)
            prev = h[-1]
            if order in _ACQ and prev.carried is not None:
                self.vc[a] = vc = _join(vc, prev.carried)  # type: ignore[assignment]
            carried = _join(list(vc), prev.carried) if order in _REL else prev.carried
            if prev.seq >= 0:
                self.add_succ(prev.node, seq)
                if order in _ACQ:
                    self.add_succ_actor(prev.node, a, vc[a])
            self.write(i, key, c["value"][i], carried, who, [])
        elif op == "fence":
            self.fence(a)
            for (actor, target), msgs in list(self.sent.items()):
                if actor != a:
                    continue
                node = self.next_node
                self.next_node += 1
                self.groups[node] = (msgs, self.group_of.get((a, target), -1))
                for m in msgs:
                    self.member_groups.setdefault(m, []).append(node)
                    if self.msgs[m].delivered >= 0:
                        self.add_succ(self.msgs[m].delivered, node)
                prevg = self.group_of.get((a, target), -1)
                if prevg >= 0:
                    self.add_succ(prevg, node)
                self.group_of[(a, target)] = node
                self.sent[(actor, target)] = []
        elif op in ("put", "atomic"):
            self.post(i, a, key)
        elif op == "cq_poll":
            self.reap(i, a, where)
        elif op == "quiet":
            for m in self.unquieted.get(a, []):
                d = self.msgs[m].delivered
                self.vc[a] = vc = _join(vc, self.node_vc[d])  # type: ignore[assignment]
                self.add_succ_actor(d, a, vc[a])
            self.unquieted[a] = []
            for qk in self.actor_qps.get(a, []):
                reaped = self.cq.get(qk, [])
                posts = self.sq.get(qk, [])
                for m in reaped:
                    if m in posts:
                        posts.remove(m)
                self.cq[qk] = []
        elif op == "slot_release":
            self.consume(i, a, key, where)
        elif op in ("map", "unmap"):
            rk = (c["target_rank"][i], c["var"][i])
            self.mapped[rk] = op == "map"
            if op == "unmap":
                self.unmap_row[rk] = seq
        elif op == "crash":
            self.crashed.setdefault(c["rank"][i], seq)
        elif op == "blocked":
            self.blocked.append(i)

    def fence(self, a: int) -> None:
        self.gvc = _join(self.vc[a], self.gvc)  # type: ignore[assignment]
        self.vc[a] = list(self.gvc)

    def deadlock(self) -> None:
        c = self.c
        texts, events = [], []
        for i in self.blocked:
            key = self.key(i)
            text = f"{c['actor'][i]} waits"
            if c["var"][i]:
                text += f" for {_name(key)} {c['cmp'][i]} {c['expect'][i]} (it holds {c['value'][i]})"
                events += self.issue_of(self.hist(key)[-1].seq)
            texts.append(text)
            events.append(c["seq"][i])
        self.flag("deadlock", "nothing else can happen and " + "; ".join(texts), events, "deadlock")

    def read_index(self, i: int, key: Key, h: list[_Write], where: str) -> int:
        rf = self.c["rf"][i]
        if rf >= 0:
            at = self.write_at.get(rf)
            if at is None or at[0] != key:
                raise TracekitError(f"rf {rf} is not an earlier write of {_name(key)}", where=where,
                                    fix="set rf to the seq of the store, rmw or deliver row read, or -1")
            return at[1]
        if not self.rf_given:
            for idx in range(len(h) - 1, 0, -1):
                if h[idx].value == self.c["value"][i]:
                    return idx
        return 0

    def post(self, i: int, a: int, key: Key) -> None:
        c = self.c
        seq, rank, qp, path = c["seq"][i], c["rank"][i], c["qp"][i], c["path"][i]
        src = (rank, c["src_var"][i], c["src_slot"][i]) if c["src_var"][i] else None
        m = _Msg(seq, a, rank, qp, path, c["op"][i], key, src, c["src_region"][i], list(self.vc[a]),
                 guard=self.guard_chain(a))
        qk = (rank, qp)
        prev = self.qp_last.get((rank, qp, path))
        if prev is not None:
            m.deps.append(prev)
        self.qp_last[(rank, qp, path)] = seq
        if m.kind == "atomic":
            m.deps.extend(self.qp_since_atomic.get(qk, []))
            if qk in self.qp_last_atomic:
                m.deps.append(self.qp_last_atomic[qk])
            self.qp_since_atomic[qk] = []
            self.qp_last_atomic[qk] = seq
        else:
            self.qp_since_atomic.setdefault(qk, []).append(seq)
        g = self.group_of.get((a, key[0]), -1)
        if g >= 0:
            m.groups.append(g)
        self.sent.setdefault((a, key[0]), []).append(seq)
        self.msgs[seq] = m
        self.pending_to.setdefault(key, []).append(seq)
        if qk not in self.actor_qps.setdefault(a, []):
            self.actor_qps[a].append(qk)
        posts = self.sq.setdefault(qk, [])
        posts.append(seq)
        depth = c["sq_depth"][i]
        if depth >= 0 and len(posts) > depth:
            self.flag("send_queue_overflow", f"{c['actor'][i]} posted a WQE to qp{qp} of rank {rank} with all "
                      f"{depth} send-queue entries in use", posts[-depth - 1:], qk)
        self.cq_depth[qk] = c["cq_depth"][i]

    def group_vc(self, g: int) -> list[int]:
        """Vector clock of fence group ``g``: the join of its members' deliveries and of the groups
        before it (walked iteratively; cached once every member has landed)."""
        chain = []
        while g >= 0 and g not in self.group_cache:
            chain.append(g)
            g = self.groups[g][1]
        vc = list(self.group_cache[g]) if g >= 0 else [0] * self.A
        complete = True
        for node in reversed(chain):
            for m in self.groups[node][0]:
                d = self.msgs[m].delivered
                if d >= 0:
                    vc = _join(vc, self.node_vc[d])  # type: ignore[assignment]
                else:
                    complete = False  # the trace landed a later message first: join what has landed
            if complete:
                self.group_cache[node] = list(vc)
        return vc

    def deliver(self, i: int, where: str) -> None:
        c = self.c
        seq, ref = c["seq"][i], c["ref"][i]
        m = self.msgs.get(ref)
        if m is None:
            raise TracekitError(f"deliver row refers to {ref}, which is not an earlier put or atomic",
                                where=where, fix="set ref to the seq of the put or atomic row delivered")
        if m.delivered >= 0:
            self.flag("duplicated_delivery", f"the {m.kind} of event {ref} was delivered twice (events "
                      f"{m.delivered} and {seq})", [ref, m.delivered, seq], ("msg", ref))
            return
        m.delivered = seq
        self.delivered_msg[seq] = ref
        self.pending_to[m.key].remove(ref)
        vc = list(m.vc)
        for d in m.deps:
            dd = self.msgs[d].delivered
            if dd >= 0:
                vc = _join(vc, self.node_vc[dd])  # type: ignore[assignment]
                self.add_succ(dd, seq)
        for g in m.groups:
            vc = _join(vc, self.group_vc(g))  # type: ignore[assignment]
            self.add_succ(g, seq)
        for g in self.member_groups.get(ref, []):
            self.add_succ(seq, g)
        key = m.key
        who = f"{self.actor_names[m.actor]}'s {m.kind} (event {ref})"
        h = self.hist(key)
        prev = h[-1]
        if m.kind == "atomic":
            vc = _join(vc, prev.carried)  # type: ignore[assignment]
            if prev.seq >= 0:
                self.add_succ(prev.node, seq)
        self.node_vc[seq] = vc  # type: ignore[assignment]
        ok = self.access(i, key, c["region"][i], who, [ref])
        if ok and m.src is not None:
            ok = self.access(i, m.src, m.src_region, f"the NIC executing {who}", [ref])
        if ok:
            self.write(i, key, c["value"][i], vc, who, [ref], m.guard)
        self.unquieted.setdefault(m.actor, []).append(ref)
        qk = (m.rank, m.qp)
        cqes = self.cq.setdefault(qk, [])
        cqes.append(ref)
        depth = self.cq_depth.get(qk, -1)
        if depth >= 0 and len(cqes) > depth:
            self.flag("cq_overflow", f"the completion of {who} arrived at qp{m.qp} of rank {m.rank} with all "
                      f"{depth} CQ entries unreaped", [*cqes[-depth - 1:], seq], qk)

    def reap(self, i: int, a: int, where: str) -> None:
        c = self.c
        ref = c["ref"][i]
        m = self.msgs.get(ref)
        if m is None or m.delivered < 0:
            raise TracekitError(f"cq_poll reaps event {ref}, which is not a delivered put or atomic",
                                where=where, fix="set ref to the seq of the put or atomic whose completion was reaped")
        qk = (m.rank, m.qp)
        if ref in self.cq.get(qk, []):
            self.cq[qk].remove(ref)
        if ref in self.sq.get(qk, []):
            self.sq[qk].remove(ref)
        self.vc[a] = _join(self.vc[a], self.node_vc[m.delivered])  # type: ignore[assignment]
        self.add_succ_actor(m.delivered, a, self.vc[a][a])

    def consume(self, i: int, a: int, key: Key, where: str) -> None:
        c = self.c
        seq = c["seq"][i]
        got = self.last_read.get((a, key))
        if got is None:
            raise TracekitError(f"slot_release of {_name(key)} by {c['actor'][i]} without an earlier load",
                                where=where, fix="record the load (or wait) of a slot before its slot_release")
        idx, lseq = got
        h = self.hist(key)
        w = h[idx]
        gw = self.guard_of_load.get(lseq, [])
        if w.consumed:
            pending = self.pending_to.get(key, [])
            newer = idx + 1 < len(h) or bool(pending)
            # the write the reader should have seen: the next one landed, else the first in flight
            nxt = self.issue_of(h[idx + 1].seq) if idx + 1 < len(h) else pending[:1]
            if w.seq < 0:
                self.flag("stale_read_after_flag", f"{c['actor'][i]} consumed {_name(key)} while it was still empty",
                          [*gw, lseq, seq, *nxt], key)
            elif newer:
                self.flag("stale_read_after_flag", f"{c['actor'][i]} consumed {_name(key)} = {w.value} (written at "
                          f"event {w.seq}, already consumed) instead of the newer write",
                          [*gw, *self.issue_of(w.seq), lseq, seq, *nxt], key)
            else:
                self.flag("duplicated_delivery", f"{c['actor'][i]} consumed {_name(key)} = {w.value} (written at "
                          f"event {w.seq}) a second time", [*self.issue_of(w.seq), w.consumer, lseq, seq], key)
            return
        w.consumed = True
        w.consumer = seq
        self.stale_checks.append((lseq, seq, key, w.node, a))

    def end(self) -> None:
        if self.blocked:
            self.deadlock()
        if not self.complete:
            return
        for ref, m in self.msgs.items():
            if m.delivered < 0 and m.key[0] not in self.crashed:
                self.flag("lost_delivery", f"{self.actor_names[m.actor]}'s {m.kind} to {_name(m.key)} (event {ref}) "
                          "never landed", [ref], ("msg", ref))
        for key, h in self.mem.items():
            w = h[-1]
            if key[2] >= 0 and not w.consumed and key[0] not in self.crashed:
                self.flag("lost_delivery", f"{_name(key)} = {w.value} (written at event {w.seq}) was never consumed",
                          self.issue_of(w.seq), key)


def check_trace(memops: pa.Table | pl.DataFrame, *, complete: bool = True) -> list[Hazard]:
    """Named hazards of one execution recorded as a ``memops`` table, in the order they show.

    ``complete`` says the table holds a whole execution, so that messages never delivered and slot
    contents never consumed count as lost. Pure: reads nothing but the table. A malformed table
    raises :class:`~tracekit.errors.TracekitError` naming the row."""
    table = schemas.conform(memops, "memops", where="memops table")
    return _Checker(table, complete).run()
