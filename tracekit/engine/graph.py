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
  attribute (then creation order): models give tasks of one message and chunk index the same key, so
  that ties follow the pipeline's order. Runs are deterministic.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
from numba import njit

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

    def pools(self, names: list[str], capacity: int, cause: str) -> np.ndarray:
        """Ids of the pools ``names`` (each created on first use, holding ``capacity`` units)."""
        if capacity < 1:
            raise TracekitError(f"pool {names[0] if names else ''}: capacity={capacity} must be >= 1",
                                fix="give it at least one unit")
        index = self._pool_index
        ids = np.empty(len(names), np.int64)
        for i, name in enumerate(names):
            j = index.get(name)
            if j is None:
                j = index[name] = len(self.pool_names)
                self.pool_names.append(name)
                self.pool_capacity.append(int(capacity))
                self.pool_cause.append(cause)
            ids[i] = j
        return ids

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
            value = np.asarray(value)
            # scalars stay zero-stride views until freeze; arrays are copied (the caller may reuse them)
            self._tasks[name].append(np.broadcast_to(value.astype(dtype), (n,)) if value.ndim == 0
                                     else value.astype(dtype).reshape(n))
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
        """Every release as (task id, pool, amount, lag), grouped by task."""
        f = self.freeze()
        return f["rel_task"], f["rel_pool_e"], f["rel_amount_e"], f["rel_lag_e"]

    def add_edges(self, src: np.ndarray, dst: np.ndarray, lag: object = 0) -> None:
        """``dst`` may start only ``lag`` ns after ``src`` finished (arrays of equal length)."""
        src = np.asarray(src, dtype=np.int64).reshape(-1)
        dst = np.asarray(dst, dtype=np.int64).reshape(-1)
        lag_arr = np.broadcast_to(np.asarray(lag, dtype=np.int64), src.shape)  # a scalar stays a zero-stride view
        if src.shape != dst.shape:
            raise ValueError("src and dst differ in length")
        if src.size and (np.any(lag_arr < 0)):
            raise ValueError("negative lag")
        self._edges.append((src, dst, lag_arr))

    # -- frozen view --------------------------------------------------------------------------
    def freeze(self) -> dict[str, np.ndarray]:
        """Concatenate columns and build the successor and release lists (CSR, by task id).

        Every per-task array is indexed by task id. ``prio`` is each task's *position*: its rank in
        (``order_key``, id) order, which breaks ties between simultaneous events. ``succ`` packs each
        edge as ``lag << 32 | destination`` (see :func:`unpack_edges`); releases are listed per task,
        its ``rel_pool`` column first, then :meth:`add_releases` in order."""
        if self._frozen is not None:
            return self._frozen
        n = self.num_tasks
        if n >= 1 << 30:
            raise TracekitError(f"{n} tasks exceed the engine's limit of 2^30",
                                fix="replay fewer steps or layers at once")
        out: dict[str, np.ndarray] = {}
        for name, (dtype, _) in _TASK_COLS.items():
            parts = self._tasks[name]
            col = np.concatenate(parts) if len(parts) > 1 else np.array(parts[0]) if parts else np.zeros(0, dtype)
            for uname, ids, values in self._updates:
                if uname == name:
                    col[ids] = values
            out[name] = col
            self._tasks[name] = []
        self._updates = []
        out["prio"] = _ranks(self.attr("order_key")) if "order_key" in self._attrs else np.arange(n, dtype=np.int32)
        self._attr_cache.pop("order_key", None)
        # releases: the column's own release first, then add_releases in order, grouped by task
        own = np.flatnonzero(out["rel_pool"] >= 0)
        parts = [(own, out["rel_pool"][own].astype(np.int64), out["rel_amount"][own], out["rel_lag"][own])]
        parts += self._releases
        self._releases = []
        r_task = np.concatenate([q[0] for q in parts])
        if r_task.size and (r_task.min() < 0 or r_task.max() >= n):
            raise ValueError("release refers to a task that does not exist")
        r_order, out["rel_ptr"] = _group_by(r_task, n)
        out["rel_task"] = r_task[r_order].astype(np.int32)
        out["rel_pool_e"] = np.concatenate([q[1] for q in parts])[r_order].astype(np.int32)
        out["rel_amount_e"] = np.concatenate([q[2] for q in parts])[r_order]
        out["rel_lag_e"] = np.concatenate([q[3] for q in parts])[r_order]
        out["succ_ptr"], out["succ"], out["npred"] = _successors(self._edges, n)
        self._edges = []
        out["res_servers"] = np.asarray(self.res_servers, dtype=np.int64)
        out["pool_capacity"] = np.asarray(self.pool_capacity, dtype=np.int64)
        self._check_limits(out)
        self._frozen = out
        return out

    def _check_limits(self, f: dict[str, np.ndarray]) -> None:
        """The engine keeps a task in 64 bytes: durations, amounts and alignments are 32-bit."""
        bad = np.flatnonzero((f["pool"] >= 0) & (f["amount"] > np.append(f["pool_capacity"], 0)[f["pool"]]))
        if bad.size:
            t = int(bad[0])
            p = int(f["pool"][t])
            raise TracekitError(
                f"a task needs {int(f['amount'][t])} units of {self.pool_names[p]} which holds only "
                f"{self.pool_capacity[p]}", fix="enlarge that buffer or make its chunks smaller",
            )
        for name, limit, what in (("dur", 1 << 31, "a duration"), ("align", 1 << 27, "an alignment"),
                                  ("pool_capacity", 1 << 31, "a pool capacity"),
                                  ("rel_amount_e", 1 << 31, "a release")):
            col = f[name]
            if col.size and (col.min() < 0 or col.max() >= limit):
                raise TracekitError(f"{what} of {int(col.max() if col.max() >= limit else col.min())} is outside the "
                                    f"engine's range [0, {limit})", fix="check the model's units (ns, bytes, tokens)")

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
        return self.freeze()[name]

    @property
    def attr_names(self) -> list[str]:
        return list(self._attrs)


def unpack_edges(succ: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split frozen ``succ`` entries into (destination task, lag)."""
    return succ & 0xFFFFFFFF, succ >> 32


def _ranks(key: np.ndarray) -> np.ndarray:
    """Each entry's rank in (key, index) order, as int32. One sort of packed (key rank, index) words:
    about 20x faster than a stable argsort."""
    n = key.shape[0]
    bits = max(int(n).bit_length(), 1)
    key = np.asarray(key, np.int64)
    lo = int(key.min()) if n else 0
    span = int(key.max()) - lo + 1 if n else 1
    if span.bit_length() + bits > 62:
        key = np.unique(key, return_inverse=True)[1].reshape(-1).astype(np.int64)
        lo = 0
    packed = ((key - lo) << bits) | np.arange(n, dtype=np.int64)
    packed.sort()
    rank = np.empty(n, np.int32)
    rank[packed & ((1 << bits) - 1)] = np.arange(n, dtype=np.int32)
    return rank


@njit(cache=True)
def _group_by_kernel(key, n):
    ptr = np.zeros(n + 1, np.int64)
    for k in key:
        ptr[k + 1] += 1
    for i in range(n):
        ptr[i + 1] += ptr[i]
    fill = ptr[:-1].copy()
    order = np.empty(key.shape[0], np.int64)
    for i in range(key.shape[0]):
        order[fill[key[i]]] = i
        fill[key[i]] += 1
    return order, ptr


@njit(cache=True)
def _count_edges(src, dst, lag, n, ptr, npred):
    for i in range(src.shape[0]):
        if src[i] < 0 or src[i] >= n or dst[i] < 0 or dst[i] >= n:
            return 1
        if lag[i] >= 1 << 31:
            return 2
        ptr[src[i] + 1] += 1
        npred[dst[i]] += 1
    return 0


@njit(cache=True)
def _fill_edges(src, dst, lag, fill, succ):
    for i in range(src.shape[0]):
        succ[fill[src[i]]] = (lag[i] << 32) | dst[i]
        fill[src[i]] += 1


def _successors(edges: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Successor lists as CSR (pointers, ``lag << 32 | destination`` entries in the order added) and
    each task's number of predecessors, by counting sort over the edge batches."""
    ptr = np.zeros(n + 1, np.int64)
    npred = np.zeros(n, np.int32)
    for src, dst, lag in edges:
        err = _count_edges(src, dst, lag, n, ptr, npred)
        if err == 1:
            raise ValueError("edge refers to a task that does not exist")
        if err == 2:
            raise TracekitError(f"an edge lag of {int(lag.max())} ns exceeds the engine's limit of 2^31 ns",
                                fix="check the hardware profile's latencies")
    np.cumsum(ptr, out=ptr)
    succ = np.empty(int(ptr[-1]), np.int64)
    fill = ptr[:-1].copy()
    for src, dst, lag in edges:
        _fill_edges(src, dst, lag, fill, succ)
    return ptr, succ, npred


def _group_by(key: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Stable counting sort of ``key`` in [0, n): (order, CSR pointers of length n + 1)."""
    return _group_by_kernel(np.asarray(key, np.int64), n)


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
