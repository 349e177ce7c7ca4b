"""Task graphs: the engine's whole input, built with vectorised appends.

Semantics (shared by the fast kernel and the reference):

* A task becomes *ready* when every predecessor has finished; ready time is the maximum over its
  in-edges of ``finish[pred] + lag``. Tasks without predecessors are ready at ``release`` (default 0).
* A task may use one *resource* (FIFO, ``servers`` identical servers) for ``dur`` ns, and may
  *acquire* ``amount`` units of one *pool* (credits, buffer slots, queue entries). With
  ``hold = False`` the pool is acquired before the task queues for its resource (a ring producer
  waiting for credits does not occupy anything); with ``hold = True`` it is acquired after the task
  has seized its server, which it keeps while it waits (head-of-line blocking, e.g. a NIC port paused
  by link-level flow control). Pools grant strictly in request order (FIFO).
* Service starts at the grant/seize time rounded up to a multiple of ``align`` (if > 0), e.g. a
  completion noticed at the next poll. It ends ``dur`` ns later; then the server is freed, ``rel_amount``
  units are returned to ``rel_pool`` and successors are notified.
* Ties are broken by (time, event kind, position): finishes, then delayed releases, then readies;
  lower positions first. A task's position is its rank in the order of the optional ``order_key``
  attribute (then creation order): models give tasks that run close in time close keys, which keeps
  the event loop's memory accesses local. Runs are deterministic.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from tracekit.errors import TracekitError

NONE = -1


class BindKind(enum.IntEnum):
    """Why a task started when it did: the last constraint that held it back."""

    SOURCE = 0  # no predecessor: started at its release time
    DEP = 1  # a predecessor's finish (+ lag)
    RESOURCE = 2  # its resource became free when another task finished
    POOL = 3  # credits/buffer returned by another task


_TASK_COLS = {
    "res": (np.int32, NONE),
    "dur": (np.int64, 0),
    "pool": (np.int32, NONE),
    "amount": (np.int64, 0),
    "hold": (np.bool_, False),
    "rel_pool": (np.int32, NONE),
    "rel_amount": (np.int64, 0),
    "rel_lag": (np.int64, 0),
    "align": (np.int64, 0),
    "release": (np.int64, 0),
}


@dataclass
class TaskGraph:
    """Columns of tasks, edges, resources and pools. Append with :meth:`add_tasks`/:meth:`add_edges`."""

    res_names: list[str] = field(default_factory=list)
    res_servers: list[int] = field(default_factory=list)
    pool_names: list[str] = field(default_factory=list)
    pool_capacity: list[int] = field(default_factory=list)
    pool_cause: list[str] = field(default_factory=list)
    _tasks: dict[str, list[np.ndarray]] = field(default_factory=lambda: {k: [] for k in _TASK_COLS})
    _edges: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    _attrs: dict[str, list[tuple[int, np.ndarray]]] = field(default_factory=dict)
    _attr_cache: dict[str, np.ndarray] = field(default_factory=dict)
    num_tasks: int = 0
    _res_index: dict[str, int] = field(default_factory=dict)
    _pool_index: dict[str, int] = field(default_factory=dict)
    _frozen: dict[str, np.ndarray] | None = None
    _updates: list[tuple[str, np.ndarray, np.ndarray]] = field(default_factory=list)
    _releases: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)

    # -- resources and pools -------------------------------------------------------------------
    def resource(self, name: str, servers: int = 1) -> int:
        """Id of the FIFO resource ``name`` (created on first use)."""
        if name in self._res_index:
            return self._res_index[name]
        if servers < 1:
            raise TracekitError(f"resource {name}: servers={servers} must be >= 1", fix="give at least one server")
        self._res_index[name] = len(self.res_names)
        self.res_names.append(name)
        self.res_servers.append(int(servers))
        return self._res_index[name]

    def resources(self, names: list[str], servers: int = 1) -> np.ndarray:
        return np.array([self.resource(n, servers) for n in names], dtype=np.int32)

    def pool(self, name: str, capacity: int, cause: str) -> int:
        """Id of the credit pool ``name`` holding ``capacity`` units; ``cause`` names its stalls."""
        if name in self._pool_index:
            return self._pool_index[name]
        if capacity < 1:
            raise TracekitError(f"pool {name}: capacity={capacity} must be >= 1", fix="give it at least one unit")
        self._pool_index[name] = len(self.pool_names)
        self.pool_names.append(name)
        self.pool_capacity.append(int(capacity))
        self.pool_cause.append(cause)
        return self._pool_index[name]

    # -- tasks and edges ----------------------------------------------------------------------
    def add_tasks(self, n: int, **cols: object) -> np.ndarray:
        """Append ``n`` tasks; each keyword is an engine column (see ``_TASK_COLS``) or a free
        attribute column for the model (stage, rank, bytes, ...), scalar or length ``n``.
        Returns the new task ids."""
        if self._frozen is not None:
            raise RuntimeError("TaskGraph is frozen")
        n = int(n)
        for name, (dtype, default) in _TASK_COLS.items():
            value = cols.pop(name, default)
            self._tasks[name].append(np.broadcast_to(np.asarray(value, dtype=dtype), (n,)).copy())
        for name, value in cols.items():
            arr = np.asarray(value)
            self._attrs.setdefault(name, []).append((self.num_tasks, np.broadcast_to(arr, (n,))))
        ids = np.arange(self.num_tasks, self.num_tasks + n, dtype=np.int64)
        self.num_tasks += n
        return ids

    def update(self, ids: np.ndarray, **cols: object) -> None:
        """Set engine columns of existing tasks (e.g. make a consumer return credits itself)."""
        if self._frozen is not None:
            raise RuntimeError("TaskGraph is frozen")
        ids = np.asarray(ids, np.int64)
        for name, value in cols.items():
            dtype = _TASK_COLS[name][0]
            self._updates.append((name, ids, np.broadcast_to(np.asarray(value, dtype=dtype), ids.shape).copy()))

    def add_releases(self, task: np.ndarray, pool: np.ndarray, amount: np.ndarray, lag: object = 0) -> None:
        """Extra releases: when ``task`` finishes, ``amount`` units go back to ``pool``, ``lag`` ns later.
        A task's releases happen in the order they were added, after its own ``rel_pool`` release."""
        task = np.asarray(task, np.int64).reshape(-1)
        n = task.shape[0]
        self._releases.append((task, np.broadcast_to(np.asarray(pool, np.int64), (n,)).copy(),
                               np.broadcast_to(np.asarray(amount, np.int64), (n,)).copy(),
                               np.broadcast_to(np.asarray(lag, np.int64), (n,)).copy()))

    def releases(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every release as (task id, pool, amount, lag), in engine order."""
        f = self.freeze()
        return f["perm"][f["rel_task"]], f["rel_pool_e"], f["rel_amount_e"], f["rel_lag_e"]

    def add_edges(self, src: np.ndarray, dst: np.ndarray, lag: object = 0) -> None:
        """``dst`` may start only ``lag`` ns after ``src`` finished (arrays of equal length)."""
        src = np.asarray(src, dtype=np.int64).reshape(-1)
        dst = np.asarray(dst, dtype=np.int64).reshape(-1)
        lag_arr = np.broadcast_to(np.asarray(lag, dtype=np.int64), src.shape).copy()
        if src.shape != dst.shape:
            raise ValueError("src and dst differ in length")
        if src.size and (np.any(lag_arr < 0)):
            raise ValueError("negative lag")
        self._edges.append((src, dst, lag_arr))

    # -- frozen view --------------------------------------------------------------------------
    def freeze(self) -> dict[str, np.ndarray]:
        """Concatenate columns into engine order and build the successor CSR.

        The engine works on *positions*: ``perm[position]`` is the task id, ``inv[task id]`` its
        position. Every array returned is indexed by position; edges are in positions too."""
        if self._frozen is not None:
            return self._frozen
        n = self.num_tasks
        if "order_key" in self._attrs:
            perm = np.argsort(self.attr("order_key"), kind="stable").astype(np.int64)
        else:
            perm = np.arange(n, dtype=np.int64)
        inv = np.empty(n, np.int64)
        inv[perm] = np.arange(n, dtype=np.int64)
        out: dict[str, np.ndarray] = {"perm": perm, "inv": inv}
        for name, (dtype, _) in _TASK_COLS.items():
            parts = self._tasks[name]
            col = np.concatenate(parts) if parts else np.zeros(0, dtype)
            for uname, ids, values in self._updates:
                if uname == name:
                    col[ids] = values
            out[name] = col[perm]
            self._tasks[name] = []
        self._updates = []
        # releases as a CSR list per position: the column release first, then add_releases in order
        own = np.flatnonzero(out["rel_pool"] >= 0)
        parts = [(own, out["rel_pool"][own].astype(np.int64), out["rel_amount"][own], out["rel_lag"][own])]
        parts += [(inv[t], p, a, lg) for t, p, a, lg in self._releases]
        self._releases = []
        r_task = np.concatenate([q[0] for q in parts])
        r_order = np.argsort(r_task, kind="stable")
        out["rel_task"] = r_task[r_order]
        out["rel_pool_e"] = np.concatenate([q[1] for q in parts])[r_order]
        out["rel_amount_e"] = np.concatenate([q[2] for q in parts])[r_order]
        out["rel_lag_e"] = np.concatenate([q[3] for q in parts])[r_order]
        out["rel_ptr"] = np.zeros(n + 1, np.int64)
        np.cumsum(np.bincount(out["rel_task"], minlength=n), out=out["rel_ptr"][1:])
        if self._edges:
            src = np.concatenate([e[0] for e in self._edges])
            dst = np.concatenate([e[1] for e in self._edges])
            lag = np.concatenate([e[2] for e in self._edges])
        else:
            src = dst = lag = np.zeros(0, np.int64)
        self._edges = []
        if src.size and (src.min() < 0 or dst.min() < 0 or src.max() >= n or dst.max() >= n):
            raise ValueError("edge refers to a task that does not exist")
        src, dst = inv[src], inv[dst]
        order = np.argsort(src, kind="stable")  # successor order within a source does not matter
        src, dst, lag = src[order], dst[order], lag[order]
        out["succ_ptr"] = np.zeros(n + 1, np.int64)
        np.cumsum(np.bincount(src, minlength=n), out=out["succ_ptr"][1:])
        out["succ"] = dst
        out["succ_lag"] = lag
        out["npred"] = np.bincount(dst, minlength=n).astype(np.int64)
        out["res_servers"] = np.asarray(self.res_servers, dtype=np.int64)
        out["pool_capacity"] = np.asarray(self.pool_capacity, dtype=np.int64)
        bad = np.flatnonzero((out["pool"] >= 0) & (out["amount"] > np.append(out["pool_capacity"], 0)[out["pool"]]))
        if bad.size:
            t = int(bad[0])  # a position
            p = int(out["pool"][t])
            raise TracekitError(
                f"a task needs {int(out['amount'][t])} units of {self.pool_names[p]} which holds only "
                f"{self.pool_capacity[p]}", fix="enlarge that buffer or make its chunks smaller",
            )
        self._frozen = out
        return out

    def attr(self, name: str) -> np.ndarray:
        """A model attribute column by task id (``-1`` where a task did not set it)."""
        if name in self._attr_cache:
            return self._attr_cache[name]
        parts = self._attrs.get(name)
        if parts is None:
            return np.full(self.num_tasks, -1, dtype=np.int64)
        dtype = np.result_type(*[p.dtype for _, p in parts])
        if dtype.kind not in "iub":
            dtype = np.dtype(np.int64)
        out = np.full(self.num_tasks, -1, dtype=dtype)
        for start, values in parts:
            out[start:start + values.shape[0]] = values
        self._attr_cache[name] = out
        return out

    def column(self, name: str) -> np.ndarray:
        """An engine column (res, dur, pool, ...) by task id."""
        f = self.freeze()
        out = np.empty_like(f[name])
        out[f["perm"]] = f[name]
        return out

    @property
    def attr_names(self) -> list[str]:
        return list(self._attrs)


@dataclass(frozen=True)
class Schedule:
    """What the engine computed for every task (all int64 ns, ``-1`` for tasks that never ran)."""

    ready: np.ndarray  # dependencies satisfied
    seize: np.ndarray  # resource server obtained (or, without a resource, the time it would have been)
    grant: np.ndarray  # pool units obtained (== the request time when the task has no pool)
    stall: np.ndarray  # time spent waiting for pool units
    start: np.ndarray  # service start (after alignment)
    finish: np.ndarray
    binder: np.ndarray  # task that last held this one back (-1 for sources)
    bind_kind: np.ndarray  # BindKind
    events: int  # events processed (heap pops)

    FIELDS = ("ready", "seize", "grant", "stall", "start", "finish", "binder", "bind_kind")

    @property
    def completed(self) -> bool:
        return bool(self.finish.size == 0 or self.finish.min() >= 0)

    @classmethod
    def from_positions(cls, cols: list[np.ndarray], perm: np.ndarray, events: int) -> "Schedule":
        """Map engine output (indexed by position, binders as positions) back to task ids."""
        out = []
        for i, c in enumerate(cols):
            a = np.empty_like(c)
            a[perm] = c
            if cls.FIELDS[i] == "binder":
                a = np.where(a >= 0, perm[np.maximum(a, 0)], -1)
            out.append(a)
        return cls(*out, events=events)

    def first_difference(self, other: "Schedule") -> str | None:
        """``None`` when equal, else which field and task differ first."""
        for k in self.FIELDS:
            a, b = getattr(self, k), getattr(other, k)
            if a.shape != b.shape:
                return f"{k}: shapes {a.shape} vs {b.shape}"
            diff = np.flatnonzero(a != b)
            if diff.size:
                t = int(diff[0])
                return f"{k}[{t}]: {int(a[t])} vs {int(b[t])}"
        return None
