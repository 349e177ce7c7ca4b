"""The obviously correct twin of :mod:`tracekit.engine.core`: the same semantics, written as plain
Python objects and a ``heapq`` loop, with recursion where the fast kernel uses a work stack.

Slow (about a million times fewer lines per second of thought than the kernel, and ~50x slower),
and meant to be read: Hypothesis checks that both produce identical schedules.
"""

from __future__ import annotations

import heapq
from collections import deque

import numpy as np

from tracekit.engine.graph import BindKind, Schedule, TaskGraph

FINISH, RELEASE, READY = 0, 1, 2


class _Resource:
    def __init__(self, servers: int) -> None:
        self.servers = servers
        self.busy = 0
        self.queue: deque[int] = deque()


class _Pool:
    def __init__(self, capacity: int) -> None:
        self.available = capacity
        self.queue: deque[int] = deque()


class _Sim:
    def __init__(self, graph: TaskGraph) -> None:
        g = graph.freeze()
        self.g = g
        n = graph.num_tasks
        self.n = n
        self.resources = [_Resource(int(s)) for s in g["res_servers"]]
        self.pools = [_Pool(int(c)) for c in g["pool_capacity"]]
        self.succ = [
            [(int(g["succ"][e]), int(g["succ_lag"][e])) for e in range(g["succ_ptr"][t], g["succ_ptr"][t + 1])]
            for t in range(n)
        ]
        self.waiting_for = [int(x) for x in g["npred"]]
        self.ready_at = [int(x) for x in g["release"]]
        self.critical_pred = [-1] * n
        self.entered_queue = [0] * n
        self.requested_pool = [0] * n
        self.out = {k: [-1] * n for k in ("ready", "seize", "grant", "start", "finish", "binder")}
        self.out["stall"] = [0] * n
        self.out["bind_kind"] = [int(BindKind.SOURCE)] * n
        self.heap: list[tuple[int, int, int]] = []
        self.events = 0
        self.now = 0

    # each method below is one rule of the semantics in tracekit.engine.graph
    def on_ready(self, t: int) -> None:
        self.out["ready"][t] = self.now
        if self.critical_pred[t] >= 0:
            self.out["binder"][t] = self.critical_pred[t]
            self.out["bind_kind"][t] = int(BindKind.DEP)
        if self.g["pool"][t] >= 0 and not self.g["hold"][t]:
            self.request_pool(t)
        else:
            self.enqueue(t)

    def enqueue(self, t: int) -> None:
        self.entered_queue[t] = self.now
        r = int(self.g["res"][t])
        if r < 0:
            self.out["seize"][t] = self.now
            self.after_seize(t)
        else:
            self.resources[r].queue.append(t)
            self.try_start(r, freed_by=-1)

    def try_start(self, r: int, freed_by: int) -> None:
        res = self.resources[r]
        started = []
        while res.busy < res.servers and res.queue:
            t = res.queue.popleft()
            res.busy += 1
            self.out["seize"][t] = self.now
            if freed_by >= 0 and self.now > self.entered_queue[t]:
                self.out["binder"][t] = freed_by
                self.out["bind_kind"][t] = int(BindKind.RESOURCE)
            started.append(t)
        for t in started:
            self.after_seize(t)

    def after_seize(self, t: int) -> None:
        if self.g["pool"][t] >= 0 and self.g["hold"][t]:
            self.request_pool(t)
        else:
            self.start_service(t)

    def request_pool(self, t: int) -> None:
        self.requested_pool[t] = self.now
        pool = self.pools[int(self.g["pool"][t])]
        amount = int(self.g["amount"][t])
        if not pool.queue and pool.available >= amount:
            pool.available -= amount
            self.out["grant"][t] = self.now
            self.granted(t)
        else:
            pool.queue.append(t)

    def granted(self, t: int) -> None:
        if self.g["hold"][t]:
            self.start_service(t)
        else:
            self.enqueue(t)

    def grant_waiters(self, p: int, released_by: int) -> None:
        pool = self.pools[p]
        granted = []
        while pool.queue and pool.available >= int(self.g["amount"][pool.queue[0]]):
            t = pool.queue.popleft()
            pool.available -= int(self.g["amount"][t])
            self.out["grant"][t] = self.now
            self.out["stall"][t] = self.now - self.requested_pool[t]
            if self.now > self.requested_pool[t]:
                self.out["binder"][t] = released_by
                self.out["bind_kind"][t] = int(BindKind.POOL)
            granted.append(t)
        for t in granted:
            self.granted(t)

    def start_service(self, t: int) -> None:
        begin = self.now
        align = int(self.g["align"][t])
        if align > 0:
            begin = -(-begin // align) * align
        if self.out["grant"][t] < 0:
            self.out["grant"][t] = self.out["seize"][t] if self.g["hold"][t] else self.out["ready"][t]
        self.out["start"][t] = begin
        self.out["finish"][t] = begin + int(self.g["dur"][t])
        heapq.heappush(self.heap, (begin + int(self.g["dur"][t]), FINISH, t))

    def on_finish(self, t: int) -> None:
        r = int(self.g["res"][t])
        if r >= 0:
            self.resources[r].busy -= 1
        for e in range(int(self.g["rel_ptr"][t]), int(self.g["rel_ptr"][t + 1])):
            if self.g["rel_lag_e"][e] > 0:
                heapq.heappush(self.heap, (self.now + int(self.g["rel_lag_e"][e]), RELEASE, e))
            else:
                self.on_release(e)
        if r >= 0:
            self.try_start(r, freed_by=t)
        for v, lag in self.succ[t]:
            arrive = self.now + lag
            if self.critical_pred[v] < 0 or arrive > self.ready_at[v]:
                self.critical_pred[v] = t
                self.ready_at[v] = max(self.ready_at[v], arrive)
            self.waiting_for[v] -= 1
            if self.waiting_for[v] == 0:
                heapq.heappush(self.heap, (self.ready_at[v], READY, v))

    def on_release(self, e: int) -> None:
        """Release entry ``e``: its units return to its pool, credited to the task that made it."""
        p = int(self.g["rel_pool_e"][e])
        self.pools[p].available += int(self.g["rel_amount_e"][e])
        self.grant_waiters(p, released_by=int(self.g["rel_task"][e]))

    def run(self) -> Schedule:
        for t in range(self.n):
            if self.waiting_for[t] == 0:
                heapq.heappush(self.heap, (self.ready_at[t], READY, t))
        while self.heap:
            self.now, kind, t = heapq.heappop(self.heap)
            self.events += 1
            if kind == READY:
                self.on_ready(t)
            elif kind == RELEASE:
                self.on_release(t)
            else:
                self.on_finish(t)
        cols = [np.asarray(self.out[k], dtype=np.int64) for k in Schedule.FIELDS]
        return Schedule.from_positions(cols, self.g["perm"], self.events)


def run_reference(graph: TaskGraph) -> Schedule:
    """Execute ``graph`` with the reference loop (no deadlock error: unfinished tasks keep -1)."""
    return _Sim(graph).run()
