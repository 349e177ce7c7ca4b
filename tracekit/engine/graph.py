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
* Ties are broken by (time, event kind, task id): finishes before readies, lower ids first. Runs are
  deterministic.
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
    _attrs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    num_tasks: int = 0
    _res_index: dict[str, int] = field(default_factory=dict)
    _pool_index: dict[str, int] = field(default_factory=dict)
    _frozen: dict[str, np.ndarray] | None = None

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
            if name not in self._attrs:
                self._attrs[name] = [np.full(self.num_tasks, -1, dtype=arr.dtype if arr.dtype.kind in "iub" else np.int64)]
            self._attrs[name].append(np.broadcast_to(arr, (n,)).copy())
        for name in self._attrs:
            if name not in cols:
                self._attrs[name].append(np.full(n, -1, dtype=self._attrs[name][0].dtype))
        ids = np.arange(self.num_tasks, self.num_tasks + n, dtype=np.int64)
        self.num_tasks += n
        return ids

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
        """Concatenate columns and build the successor CSR (sorted by source, then destination)."""
        if self._frozen is not None:
            return self._frozen
        out: dict[str, np.ndarray] = {}
        for name, (dtype, _) in _TASK_COLS.items():
            parts = self._tasks[name]
            out[name] = np.concatenate(parts) if parts else np.zeros(0, dtype)
        if self._edges:
            src = np.concatenate([e[0] for e in self._edges])
            dst = np.concatenate([e[1] for e in self._edges])
            lag = np.concatenate([e[2] for e in self._edges])
        else:
            src = dst = lag = np.zeros(0, np.int64)
        n = self.num_tasks
        if src.size and (src.min() < 0 or dst.min() < 0 or src.max() >= n or dst.max() >= n):
            raise ValueError("edge refers to a task that does not exist")
        order = np.lexsort((dst, src))
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
            t = int(bad[0])
            p = int(out["pool"][t])
            raise TracekitError(
                f"a task needs {int(out['amount'][t])} units of {self.pool_names[p]} which holds only "
                f"{self.pool_capacity[p]}", fix="enlarge that buffer or make its chunks smaller",
            )
        self._frozen = out
        return out

    def attr(self, name: str) -> np.ndarray:
        """A model attribute column (``-1`` where a task did not set it)."""
        parts = self._attrs.get(name)
        if parts is None:
            return np.full(self.num_tasks, -1, dtype=np.int64)
        return np.concatenate(parts)

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
