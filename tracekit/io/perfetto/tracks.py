"""Track layout of a tracekit timeline: resource paths to a TrackDescriptor tree, lanes for
resources whose operations overlap, and the natural order the UI shows them in.

A resource path such as ``node0/rank3/nic0/qp5`` becomes one track per path prefix (``node0``,
``node0/rank3``, ``node0/rank3/nic0`` and the leaf), each the child of the one before, under a
root track named after the trace. Perfetto needs the slices of one track to nest; operations on
one resource may overlap (many outstanding RDMA writes on a QP), so each resource is split into
lanes by greedy interval partitioning: an operation goes to the lowest-numbered lane that is free
at its start. Lane 0 is the resource's own track; lane k > 0 is a sibling track with the same
name, which the UI draws merged into the same row group.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

import numba
import numpy as np

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

#: Segment prefixes in the order siblings are shown; anything else follows, by name.
ORDER = ["node", "switch", "leaf", "spine", "rank", "stream", "annotations", "sm", "ch", "a", "b", "nvlink", "to",
         "nic", "qp", "sq", "atomic", "tx", "rx", "cq", "pcie", "rd", "wr", "hbm", "expert", "cpu", "host", "proxy",
         "port", "up"]

#: What a track of each kind shows (the UI displays it as the track's description).
DESCRIPTIONS = {
    "node": "host: the GPUs that share NVLink",
    "rank": "one GPU (expert-parallel rank)",
    "stream": "CUDA stream of a captured trace: one slice per kernel",
    "sm": "communication SMs: one track per channel",
    "ch": "one channel (an SM pair) packing, sending and receiving token chunks",
    "nvlink": "the GPU's NVLink ports",
    "nic": "the RDMA NIC serving this GPU",
    "qp": "an RDMA queue pair: outstanding work requests stack as extra rows",
    "tx": "transmit direction: transfers on the wire",
    "rx": "receive direction: transfers landing",
    "cq": "completion queue: completions polled",
    "pcie": "PCIe between GPU, NIC and host",
    "hbm": "GPU memory (HBM) reads and writes",
    "cpu": "host CPU",
    "proxy": "CPU proxy thread that posts work requests when the GPU cannot (no IBGDA)",
    "switch": "network switch",
    "leaf": "leaf switch",
    "spine": "spine switch",
    "port": "switch egress port: queueing, ECN marks, PFC pauses",
    "up": "leaf uplink to a spine",
    "to": "NVLink path to one peer GPU",
    "rd": "PCIe reads (NIC fetching from GPU memory)",
    "wr": "PCIe writes (NIC writing into GPU memory)",
    "annotations": "user annotations (torch.profiler record_function scopes)",
    "expert": "one local expert: tokens waiting for and entering its computation",
    "atomic": "RDMA atomics (tail/head updates that publish data and return credit)",
    "host": "host-side work: launches and CPU waits",
}

_SPLIT = re.compile(r"(\d+)")


@functools.lru_cache(maxsize=1 << 16)
def natural_key(name: str) -> tuple:
    """Sort key: known kinds in domain order, then by name with digit runs compared as numbers
    (``rank2`` before ``rank10``)."""
    m = re.match(r"[^\d]*", name)
    prefix = m.group(0) if m else ""
    kind = ORDER.index(prefix) if prefix in ORDER else len(ORDER)
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in _SPLIT.split(name) if p)
    return (kind, parts, name)


def _kind(name: str) -> str:
    m = re.match(r"[a-z_]+", name)
    return m.group(0) if m else ""


@dataclass
class Node:
    """One track of the hierarchy."""

    name: str
    uuid: int
    parent: int
    path: str                      # resource path below the root or group ("" for those two)
    rank: int = 0                  # sibling_order_rank
    children: dict[str, "Node"] = field(default_factory=dict)


class Uuids:
    """Allocator of track uuids and sequence ids, shared by every group of one file."""

    def __init__(self) -> None:
        self.next_uuid = 1
        self.next_seq = 1

    def uuid(self) -> int:
        self.next_uuid += 1
        return self.next_uuid - 1

    def seq(self) -> int:
        self.next_seq += 1
        return self.next_seq - 1

    def uuids(self, k: int) -> np.ndarray:
        """The next ``k`` uuids, in order."""
        self.next_uuid += k
        return np.arange(self.next_uuid - k, self.next_uuid, dtype=np.int64)

    def seqs(self, k: int) -> np.ndarray:
        """The next ``k`` sequence ids, in order."""
        self.next_seq += k
        return np.arange(self.next_seq - k, self.next_seq, dtype=np.int64)


def build_tree(root: Node, paths: list[str], ids: Uuids) -> dict[str, Node]:
    """Add the tracks for ``paths`` under ``root``; return path -> Node for every prefix."""
    nodes: dict[str, Node] = {}
    # Insert in natural order so uuids increase in display order.
    for path in sorted(set(paths), key=lambda p: [natural_key(s) for s in p.split("/")]):
        node = root
        acc = ""
        for seg in path.split("/"):
            acc = f"{acc}/{seg}" if acc else seg
            child = node.children.get(seg)
            if child is None:
                child = Node(seg, ids.uuid(), node.uuid, acc)
                node.children[seg] = child
            nodes[acc] = child
            node = child
    _rank_children(root)
    return nodes


def _rank_children(node: Node) -> None:
    for i, name in enumerate(sorted(node.children, key=natural_key)):
        node.children[name].rank = i
        _rank_children(node.children[name])


def descriptor(node: Node, *, description: str | None = None, counter: pb.CounterDescriptor | None = None,
               has_children: bool | None = None, into: pb.TracePacket | None = None) -> pb.TracePacket:
    """The TrackDescriptor packet of ``node`` (filled ``into`` a given packet)."""
    p = pb.TracePacket() if into is None else into
    d = p.track_descriptor
    d.uuid = node.uuid
    if node.parent:
        d.parent_uuid = node.parent
    d.name = node.name
    if description is None:
        description = DESCRIPTIONS.get(_kind(node.name))
    if description:
        d.description = description
    if counter is not None:
        d.counter.CopyFrom(counter)
    if node.children if has_children is None else has_children:
        d.child_ordering = pb.TrackDescriptor.EXPLICIT
    if node.parent:
        d.sibling_order_rank = node.rank
    return p


def walk(node: Node):
    """Nodes below ``node`` (not itself), parents before children, in display order."""
    for name in sorted(node.children, key=natural_key):
        child = node.children[name]
        yield child
        yield from walk(child)


@numba.njit(cache=True)
def _assign(res, ts, end, first, last, nxt, lane_end, lane_inst, n_lanes, lane_res, lane_index, n_pool, out,
            delta):  # pragma: no cover - compiled
    """First-fit lanes; ``delta`` gets each start minus the end of the lane's previous operation
    (a new lane counts from 0). A lane whose last operation was an instant at ``t`` is not free
    at ``t``. Returns the number of rows done (stops early when the pool is full)."""
    for i in range(res.shape[0]):
        r = res[i]
        t = ts[i]
        lane = first[r]
        found = -1
        while lane >= 0:
            if lane_end[lane] < t or (lane_end[lane] == t and not lane_inst[lane]):
                found = lane
                break
            lane = nxt[lane]
        if found < 0:
            if n_pool[0] == lane_end.shape[0]:
                return i
            found = n_pool[0]
            n_pool[0] += 1
            nxt[found] = -1
            lane_res[found] = r
            lane_index[found] = n_lanes[r]
            n_lanes[r] += 1
            if first[r] < 0:
                first[r] = found
            else:
                nxt[last[r]] = found
            last[r] = found
        delta[i] = t - lane_end[found]
        lane_end[found] = end[i]
        lane_inst[found] = end[i] == t
        out[i] = found
    return res.shape[0]


class LaneAssigner:
    """Streaming greedy interval partitioning over resources ``0..num_resources-1``.

    Feed batches in start-time order; each row gets a global lane id (creation order). A lane is
    free for an operation starting at ``t`` when its last operation ended before ``t``, or ended
    at ``t`` with a duration: Perfetto keeps a zero-duration slice (an instant) open at its time,
    so whatever starts then on its track would nest under it. Instants at one time therefore
    take one lane each, and the rows of a resource equal its peak concurrency, instants counted."""

    def __init__(self, num_resources: int, capacity: int = 1024) -> None:
        self.first = np.full(num_resources, -1, np.int64)
        self.last = np.full(num_resources, -1, np.int64)
        self.n_lanes = np.zeros(num_resources, np.int64)
        self.n_pool = np.zeros(1, np.int64)
        self._alloc(capacity)

    def _alloc(self, cap: int) -> None:
        old = int(self.n_pool[0])
        def grow(a, fill):
            b = np.full(cap, fill, np.int64)
            if a is not None:
                b[:old] = a[:old]
            return b
        self.nxt = grow(getattr(self, "nxt", None), -1)
        self.lane_end = grow(getattr(self, "lane_end", None), 0)
        self.lane_inst = grow(getattr(self, "lane_inst", None), 0)
        self.lane_res = grow(getattr(self, "lane_res", None), -1)
        self.lane_index = grow(getattr(self, "lane_index", None), 0)

    @property
    def num_lanes(self) -> int:
        return int(self.n_pool[0])

    def assign(self, res: np.ndarray, ts: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lane id, start minus the lane's previous end) of each row."""
        res = np.ascontiguousarray(res, np.int64)
        ts = np.ascontiguousarray(ts, np.int64)
        end = np.ascontiguousarray(end, np.int64)
        out = np.empty(res.shape[0], np.int64)
        delta = np.empty(res.shape[0], np.int64)
        done = 0
        while done < res.shape[0]:
            k = _assign(res[done:], ts[done:], end[done:], self.first, self.last, self.nxt, self.lane_end,
                        self.lane_inst, self.n_lanes, self.lane_res, self.lane_index, self.n_pool, out[done:],
                        delta[done:])
            done += k
            if done < res.shape[0]:
                self._alloc(2 * self.lane_end.shape[0])
        return out, delta
