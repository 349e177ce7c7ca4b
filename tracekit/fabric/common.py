"""What both fabric simulators share: the flows input, derived arrays, hashing, the result and the
diagnosis of a stalled (deadlocked or pause-stormed) run."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tracekit.errors import TracekitError
from tracekit.fabric.params import ROUTING_CODE, FabricParams
from tracekit.fabric.topology import Topology

MASK = (1 << 64) - 1
INF = np.iinfo(np.int64).max // 4

# event kinds (the heap key is (time, sequence number); kinds only say what to do)
PORT_FREE, ARRIVE, WAKE, PAUSE, CNP, ACK, NACK, INC, RTO, SAMPLE, SACK, DEC = range(12)  # alpha windows close lazily: no timer event
OK, STALLED = 0, 1


class PfcDeadlock(TracekitError):
    """Ports pause each other in a cycle: no packet can ever move again."""


class PauseStorm(TracekitError):
    """Pause never clears (no packet moved for the watchdog period) without a cyclic dependency."""


def mix64(x: int) -> int:
    """SplitMix64 finaliser (Steele et al., 2014) on Python ints; ``fast._mix64`` is the same on uint64."""
    x = (x + 0x9E3779B97F4A7C15) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def hash3(a: int, b: int, c: int) -> int:
    return mix64((a & MASK) ^ mix64((b & MASK) ^ mix64(c & MASK)))


def mix64_array(x: np.ndarray) -> np.ndarray:
    """:func:`mix64` on a uint64 array (numpy's uint64 arithmetic wraps, as the masks do)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hash3_array(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """:func:`hash3` elementwise on arrays of non-negative int64."""
    u = [np.asarray(v, np.int64).astype(np.uint64) for v in (a, b, c)]
    return mix64_array(u[0] ^ mix64_array(u[1] ^ mix64_array(u[2])))


@dataclass(frozen=True)
class Flows:
    """Queue pairs and the messages each posts, in order: message ``m`` of flow ``f`` lies in
    ``msg_ptr[f]:msg_ptr[f+1]`` and may start when the NIC is free after ``msg_ready_ns[m]``."""

    src: np.ndarray  # host per flow
    dst: np.ndarray
    prio: np.ndarray
    qp: np.ndarray  # queue pair number (the UDP source port of RoCE v2 is derived from it)
    msg_ptr: np.ndarray
    msg_ready_ns: np.ndarray
    msg_bytes: np.ndarray

    @staticmethod
    def of(src, dst, ready_ns, nbytes, prio=None, qp=None) -> "Flows":
        """One message per flow (long flows, incast): the simplest input."""
        n = len(src)
        return Flows(np.asarray(src, np.int64), np.asarray(dst, np.int64),
                     np.zeros(n, np.int64) if prio is None else np.asarray(prio, np.int64),
                     np.arange(n, dtype=np.int64) if qp is None else np.asarray(qp, np.int64),
                     np.arange(n + 1, dtype=np.int64), np.asarray(ready_ns, np.int64), np.asarray(nbytes, np.int64))

    @property
    def count(self) -> int:
        return int(self.src.shape[0])


@dataclass
class Prepared:
    """Derived per-message, per-flow, per-port and per-node arrays both simulators read."""

    msg_npk: np.ndarray
    msg_first: np.ndarray  # first packet sequence number of the message within its flow
    flow_npk: np.ndarray
    flow_ctrl_ns: np.ndarray  # one-way delay of ACK/NACK/CNP back to the sender
    flow_hash: np.ndarray  # uint64 five-tuple hash
    host_flows_ptr: np.ndarray
    host_flows: np.ndarray
    headroom: np.ndarray  # per port (ingress at its destination switch), bytes
    shared_cap: np.ndarray  # per node: buffer minus reserved headroom (lossless) or buffer (lossy)
    line_mbps: np.ndarray  # per flow: its host port's rate
    routing: int
    switch_nodes: np.ndarray


def check_flows(topo: Topology, flows: Flows) -> None:
    n = flows.count
    for name in ("src", "dst", "prio", "qp"):
        if getattr(flows, name).shape != (n,):
            raise TracekitError(f"flows.{name} has shape {getattr(flows, name).shape}, expected ({n},)",
                                fix="give one value per flow")
    if n and (flows.src.min() < 0 or flows.src.max() >= topo.hosts or flows.dst.min() < 0
              or flows.dst.max() >= topo.hosts):
        raise TracekitError(f"a flow's host is outside [0, {topo.hosts})", fix="use hosts of the topology")
    if n and (flows.src == flows.dst).any():
        raise TracekitError("a flow goes from a host to itself", fix="the fabric carries only inter-host flows")
    if flows.msg_ptr.shape != (n + 1,) or (np.diff(flows.msg_ptr) < 1).any():
        raise TracekitError("flows.msg_ptr must give every flow at least one message", fix="check msg_ptr")
    if (flows.msg_bytes < 0).any() or (flows.msg_ready_ns < 0).any():
        raise TracekitError("negative message size or ready time", fix="give sizes and times >= 0")


def flow_hashes(src: np.ndarray, dst: np.ndarray, qp: np.ndarray, seed: int) -> np.ndarray:
    """Each flow's five-tuple hash (source, destination, QP, with the run's seed): ECMP's key."""
    with np.errstate(over="ignore"):
        return hash3_array(src, dst, qp ^ (np.int64(seed) << 32))


def prepare(topo: Topology, p: FabricParams, flows: Flows) -> Prepared:
    check_flows(topo, flows)
    if (flows.prio >= p.priorities).any() or (flows.prio < 0).any():
        raise TracekitError(f"a flow's priority is outside [0, {p.priorities})", fix="raise fabric.priorities")
    npk = np.maximum(-(-flows.msg_bytes // p.mtu_bytes), 1).astype(np.int64)
    before = np.cumsum(npk) - npk  # packets of all earlier messages
    flow_start = before[flows.msg_ptr[:-1]]
    msg_first = before - np.repeat(flow_start, np.diff(flows.msg_ptr))
    flow_npk = np.diff(np.r_[flow_start, npk.sum()]).astype(np.int64)
    ctrl = topo.path_delays_ns(flows.dst, flows.src)
    fh = flow_hashes(flows.src, flows.dst, flows.qp, p.seed)
    order = np.argsort(flows.src, kind="stable")
    hptr = np.searchsorted(flows.src[order], np.arange(topo.hosts + 1)).astype(np.int64)
    # headroom: 3 x (rate x round trip of the link) + 2 MTU per ingress port and priority, unless given
    wire = p.mtu_bytes + p.header_bytes
    bdp = (topo.port_mbps * (2 * topo.port_delay_ns) + 7999) // 8000
    headroom = np.full(topo.ports, p.headroom_bytes, np.int64) if p.headroom_bytes else 3 * bdp + 2 * wire
    cap = np.full(topo.nodes, p.buffer_bytes, np.int64)
    if p.pfc:
        reserved = np.zeros(topo.nodes, np.int64)
        np.add.at(reserved, topo.port_dst, headroom * p.priorities)
        cap = cap - reserved
        bad = np.nonzero((cap < 4 * wire) & (np.arange(topo.nodes) >= topo.hosts))[0]
        if bad.size:
            raise TracekitError(f"switch {topo.node_names[bad[0]]}: buffer of {p.buffer_bytes} B leaves "
                                f"{int(cap[bad[0]])} B after PFC headroom",
                                fix="enlarge switch.buffer_bytes, or set a smaller fabric.headroom_bytes")
    return Prepared(npk, msg_first, flow_npk, ctrl, fh, hptr, order.astype(np.int64), headroom, cap,
                    topo.port_mbps[topo.host_port[flows.src]].astype(np.float64), ROUTING_CODE[p.routing],
                    np.arange(topo.hosts, topo.nodes, dtype=np.int64))


@dataclass
class FabricRun:
    """What one fabric simulation produced (both simulators fill every field identically)."""

    status: int
    end_ns: int
    msg_done_ns: np.ndarray
    flow_retx_bytes: np.ndarray
    flow_retx_pkts: np.ndarray
    flow_marked: np.ndarray  # ECN-marked packets received
    flow_cnps: np.ndarray
    flow_reorder: np.ndarray
    flow_timeouts: np.ndarray
    port_tx_bytes: np.ndarray
    port_pkts: np.ndarray  # packets enqueued at a switch egress port
    port_marks: np.ndarray
    port_drops: np.ndarray
    port_max_queue: np.ndarray
    pauses: np.ndarray  # rows (port, prio, start_ns, end_ns)
    rates: np.ndarray  # rows (ts_ns, flow, rate in kbit/s)
    queue: np.ndarray  # rows (ts_ns, port, bytes)
    marked: np.ndarray  # rows (ts_ns, port, marked packets x 10^6 / packets) per sample period
    drops: np.ndarray  # rows (ts_ns, port, flow, seq)
    retx: np.ndarray  # rows (ts_ns, flow, seq)
    stuck: np.ndarray  # at a stall: rows (port, prio, ingress port) of queued packets
    paused_at_end: np.ndarray  # at a stall: rows (port, prio, since_ns)
    extra: dict = field(default_factory=dict)

    def first_difference(self, other: "FabricRun") -> str | None:
        for name in self.__dataclass_fields__:
            if name == "extra":
                continue
            a, b = getattr(self, name), getattr(other, name)
            if isinstance(a, np.ndarray):
                if a.shape != b.shape or not np.array_equal(a, b):
                    return f"{name}: {a[:8]!r}... vs {b[:8]!r}..."
            elif a != b:
                return f"{name}: {a} vs {b}"
        return None


def rows(items: list, width: int) -> np.ndarray:
    return np.array(items, np.int64).reshape(-1, width)


def raise_if_stalled(run: FabricRun, topo: Topology, p: FabricParams) -> FabricRun:
    """A stalled run raises :class:`PfcDeadlock` (naming the cycle of ports) or :class:`PauseStorm`."""
    if run.status == OK:
        return run
    waits: dict[int, set[int]] = {}
    paused = {(int(a), int(b)) for a, b, _ in run.paused_at_end}
    for port, prio, ingress in run.stuck:
        # the packet queued at ``port`` holds buffer counted against ``ingress``; if ``port`` is paused,
        # ``ingress`` cannot resume until ``port`` moves: ingress waits for port
        if (int(port), int(prio)) in paused:
            waits.setdefault(int(ingress), set()).add(int(port))
    cycle = _find_cycle(waits)
    if cycle:
        names = " -> ".join(topo.port_names[c] for c in cycle + [cycle[0]])
        raise PfcDeadlock(f"PFC deadlock at {run.end_ns} ns: paused ports wait for each other in a cycle {names}",
                          fix="break the cyclic buffer dependency (up-down routing, no ring routes), or run with "
                              "PFC off (fabric.pfc=0)")
    names = ", ".join(sorted({topo.port_names[int(a)] for a, _, _ in run.paused_at_end})[:6]) or "none"
    raise PauseStorm(f"pause storm: no packet moved for {p.pfc_watchdog_ns} ns (paused ports: {names})",
                     fix="find the receiver that never drains, or enable a PFC watchdog")


def _find_cycle(graph: dict[int, set[int]]) -> list[int]:
    color: dict[int, int] = {}
    for start in sorted(graph):
        if color.get(start, 0) == 2:
            continue
        stack: list[tuple[int, list[int]]] = [(start, sorted(graph.get(start, ())))]
        path = [start]
        color[start] = 1
        while stack:
            node, todo = stack[-1]
            if not todo:
                color[node] = 2
                stack.pop()
                path.pop()
                continue
            nxt = todo.pop(0)
            if color.get(nxt, 0) == 1:
                return path[path.index(nxt):]
            if color.get(nxt, 0) == 0:
                color[nxt] = 1
                stack.append((nxt, sorted(graph.get(nxt, ()))))
                path.append(nxt)
    return []
