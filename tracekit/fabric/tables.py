"""A phase's fabric run as rows of the events and counters tables, and its summary.

Events: PFC pause slices per port and priority (``<port>/pfc<prio>``, stage ``pfc_pause``), drops
(instants on ``<port>/drops``) and retransmissions (instants on ``<nic>/retransmit``). Counters:
``fabric_queue_bytes`` per switch port, ``ecn_marked_fraction`` per switch port and sample period,
``dcqcn_rate_gbps`` per QP (``<nic>/qp<dst rank>``), ``pfc_paused`` (1 while paused). Host ports are
named after the rank's NIC (``node0/rank3/nic0``), switch ports as in the static model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from tracekit import schemas
from tracekit.fabric.common import flow_hashes, hash3
from tracekit.fabric.replay import PhaseFabric
from tracekit.fabric.topology import Topology


def _port_names(pf: PhaseFabric, prefix: list[str]) -> list[str]:
    t = pf.topo
    return [f"{prefix[int(t.port_src[p])]}/nic0" if t.port_src[p] < t.hosts else t.port_names[p]
            for p in range(t.ports)]


def fabric_events(pf: PhaseFabric, prefix: list[str], t0: int) -> pa.Table:
    """Events rows (schema events.v1) of one phase's fabric run, times offset by ``t0``, sorted."""
    run, t = pf.run, pf.topo
    names = _port_names(pf, prefix)
    rows: dict[str, list] = {k: [] for k in ("ts_ns", "dur_ns", "rank", "resource", "stage", "name", "src_rank",
                                             "dst_rank", "stall_ns", "stall_cause", "qp")}

    def add(ts, dur, rank, resource, stage, name, src=-1, dst=-1, stall=0, cause="", qp=-1):
        for k, v in zip(rows, (ts + t0, dur, rank, resource, stage, name, src, dst, stall, cause, qp)):
            rows[k].append(v)

    if run is not None:
        for port, prio, a, b in run.pauses.tolist():
            host = int(t.port_src[port]) if t.port_src[port] < t.hosts else -1
            add(a, b - a, host, f"{names[port]}/pfc{prio}", "pfc_pause", f"PFC pause (priority {prio})",
                stall=b - a, cause="pfc")
        for ts, port, f, seq in run.drops.tolist():
            add(ts, 0, -1, f"{names[port]}/drops", "drop", f"drop psn {seq}", int(pf.flows.src[f]),
                int(pf.flows.dst[f]), qp=int(pf.flows.dst[f]))
        for ts, f, seq in run.retx.tolist():
            s, d = int(pf.flows.src[f]), int(pf.flows.dst[f])
            add(ts, 0, s, f"{prefix[s]}/nic0/retransmit", "retransmit", f"retransmit psn {seq}", s, d, qp=d)
    n = len(rows["ts_ns"])
    table = pa.table({
        **{k: pa.array(v, pa.int64()) for k, v in rows.items() if k in ("ts_ns", "dur_ns", "stall_ns")},
        **{k: pa.array(v, pa.int32()) for k, v in rows.items() if k in ("rank", "src_rank", "dst_rank", "qp")},
        **{k: pa.array(v, pa.string()) for k, v in rows.items() if k in ("resource", "stage", "name", "stall_cause")},
        "phase": pa.array([pf.phase] * n, pa.string()), "kind": pa.array(["comm"] * n, pa.string()),
        "step": pa.array([pf.step] * n, pa.int32()), "layer": pa.array([pf.layer] * n, pa.int32()),
    })
    return schemas.conform(table, "events", {"source": "replay"}).sort_by([("ts_ns", "ascending")])


def fabric_counters(pf: PhaseFabric, prefix: list[str], t0: int) -> pl.DataFrame:
    """Counter rows (schema counters.v1) of one phase's fabric run, times offset by ``t0``."""
    run = pf.run
    names = _port_names(pf, prefix)
    parts: list[tuple[np.ndarray, list[str], str, np.ndarray, str]] = []
    if run is not None:
        q = run.queue
        parts.append((q[:, 0], [names[p] for p in q[:, 1]], "fabric_queue_bytes", q[:, 2].astype(float), "B"))
        m = run.marked
        parts.append((m[:, 0], [names[p] for p in m[:, 1]], "ecn_marked_fraction", m[:, 2] / 1e6, "1"))
        r = run.rates
        qp = [f"{prefix[int(pf.flows.src[f])]}/nic0/qp{int(pf.flows.dst[f])}" for f in r[:, 1]]
        parts.append((r[:, 0], qp, "dcqcn_rate_gbps", r[:, 2] / 1e6, "Gb/s"))
        pz = run.pauses
        res = [f"{names[p]}/pfc{q}" for p, q in pz[:, :2]] * 2
        parts.append((np.r_[pz[:, 2], pz[:, 3]], res, "pfc_paused", np.r_[np.ones(len(pz)), np.zeros(len(pz))], "1"))
    frames = [pl.DataFrame({"ts_ns": np.asarray(ts, np.int64) + t0, "resource": pl.Series(res, dtype=pl.String),
                            "counter": pl.repeat(c, len(res), eager=True, dtype=pl.String),
                            "value": np.asarray(v, np.float64), "rank": np.full(len(res), -1, np.int32),
                            "unit": pl.repeat(u, len(res), eager=True, dtype=pl.String)})
              for ts, res, c, v, u in parts if len(res)]
    if not frames:
        return pl.from_arrow(schemas.conform(pa.table({"ts_ns": pa.array([], pa.int64())}), "counters",
                                             {"source": "replay"}))
    return pl.concat(frames).sort("ts_ns", maintain_order=True)


def phase_fabric_summary(pf: PhaseFabric, prefix: list[str], latency_ns: int, stages: dict[str, int]) -> dict[str, Any]:
    """What ``summary.json`` says about one phase's fabric."""
    run = pf.run
    names = _port_names(pf, prefix)
    if run is None:
        return {"messages": 0}
    pauses = run.pauses
    by_port: dict[str, list[int]] = {}
    for port, _q, a, b in pauses.tolist():
        e = by_port.setdefault(names[port], [0, a])
        e[0] += b - a
        e[1] = min(e[1], a)
    spread = sorted(by_port.items(), key=lambda kv: (kv[1][1], kv[0]))
    return {
        "messages": int(pf.flows.msg_bytes.size), "qps": int(pf.flows.count),
        "pause_ns": int((pauses[:, 3] - pauses[:, 2]).sum()) if pauses.size else 0,
        "pauses": int(pauses.shape[0]), "paused_ports": len(by_port),
        "pause_spread": [{"port": k, "first_pause_ns": int(v[1]), "pause_ns": int(v[0])} for k, v in spread[:8]],
        "ecn_marks": int(run.port_marks.sum()), "packets": int(run.port_pkts.sum()),
        "marked_fraction": float(run.port_marks.sum() / max(run.port_pkts.sum(), 1)),
        "cnps": int(run.flow_cnps.sum()), "drops": int(run.port_drops.sum()),
        "retransmitted_bytes": int(run.flow_retx_bytes.sum()), "timeouts": int(run.flow_timeouts.sum()),
        "reordered_packets": int(run.flow_reorder.sum()), "max_queue_bytes": int(run.port_max_queue.max(initial=0)),
        "max_queue_port": names[int(np.argmax(run.port_max_queue))] if run.port_max_queue.size else "",
        "static_latency_ns": int(pf.static_latency_ns), "fabric_delay_ns": int(latency_ns - pf.static_latency_ns),
        "fabric_share_of_critical_path": float(stages.get("fabric", 0) / max(latency_ns, 1)),
        **link_summary(pf, prefix),
    }


def merge_fabric_summaries(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Sums over steps and layers of one phase (the earliest pauses first in ``pause_spread``)."""
    if len(parts) == 1:
        return parts[0]
    out: dict[str, Any] = {}
    for k in ("messages", "qps", "pause_ns", "pauses", "ecn_marks", "packets", "cnps", "drops", "retransmitted_bytes",
              "timeouts", "reordered_packets", "static_latency_ns", "fabric_delay_ns"):
        out[k] = int(sum(p.get(k, 0) for p in parts))
    out["paused_ports"] = max(p.get("paused_ports", 0) for p in parts)
    out["max_queue_bytes"] = max(p.get("max_queue_bytes", 0) for p in parts)
    out["marked_fraction"] = float(out["ecn_marks"] / max(out["packets"], 1))
    out["fabric_share_of_critical_path"] = float(np.mean([p.get("fabric_share_of_critical_path", 0.0) for p in parts]))
    out["pause_spread"] = parts[0].get("pause_spread", [])
    out["max_queue_port"] = max(parts, key=lambda p: p.get("max_queue_bytes", 0)).get("max_queue_port", "")
    # the ECMP view of the instance with the latest tail flow (a collision there explains that tail)
    worst = max(parts, key=lambda p: (p.get("tail_flow") or {}).get("finish_ns", -1))
    out.update({k: worst[k] for k in ("routing", "uplinks", "tail_flow", "median_flow_finish_ns", "ecmp_collision")
                if k in worst})
    return out


def ecmp_paths(topo: Topology, seed: int, src: np.ndarray, dst: np.ndarray, qp: np.ndarray) -> list[list[int]]:
    """The ports each flow crosses under ``routing = "ecmp"``, recomputed from the topology: the
    five-tuple hash of :func:`tracekit.fabric.common.prepare` and, at each switch, the choice among the
    equal-cost next ports that both simulators make (hash of the flow hash and the switch, modulo the
    number of candidates). ``tests/test_fabric_diff.py`` holds it equal to the simulators' per-port
    packet counts."""
    out = []
    for s, d, fh in zip(src.tolist(), dst.tolist(), flow_hashes(src, dst, qp, seed).tolist()):
        port = int(topo.host_port[s])
        path = [port]
        node = int(topo.port_dst[port])
        for _ in range(topo.nodes):
            if node == d:
                break
            c = topo.candidates(node, d)
            port = int(c[hash3(fh, node, 0) % len(c)])
            path.append(port)
            node = int(topo.port_dst[port])
        out.append(path)
    return out


def uplink_groups(topo: Topology) -> list[tuple[int, ...]]:
    """Sets of parallel equal-cost ports (e.g. one leaf's uplinks to every spine): each switch's choices
    of next port toward some host, where it has more than one, in port order."""
    seen: dict[tuple[int, ...], None] = {}
    for node in range(topo.hosts, topo.nodes):
        for d in range(topo.hosts):
            c = topo.candidates(node, d)
            if c.size > 1:
                seen.setdefault(tuple(sorted(int(x) for x in c)), None)
    return list(seen)


def link_summary(pf: PhaseFabric, prefix: list[str]) -> dict[str, Any]:
    """Summary keys on load balancing: per uplink group, the bytes each uplink carried and (ECMP) how
    many flows hashed onto it; the phase's tail flow (the last to finish) and the median flow finish;
    and ``ecmp_collision`` when ECMP put the tail flow on an uplink that other flows hashed onto too
    while a parallel uplink carried at least two fewer flows, and that uplink was the busiest port of
    the tail's path (bytes x 8 / rate: the path's bottleneck), else ``None``. Spraying and flowlets have
    no fixed per-flow path: their ``flows`` are ``None`` and they name no collision."""
    run, t, fl = pf.run, pf.topo, pf.flows
    if run is None or fl.count == 0:
        return {}
    names = _port_names(pf, prefix)
    finish = np.maximum.reduceat(run.msg_done_ns, fl.msg_ptr[:-1])
    tail = int(np.argmax(finish))
    ecmp = pf.params.routing == "ecmp"
    on = np.zeros(t.ports, np.int64)
    paths = ecmp_paths(t, pf.params.seed, fl.src, fl.dst, fl.qp) if ecmp else []
    for path in paths:
        on[path] += 1
    groups = uplink_groups(t)
    uplinks = [{"switch": t.node_names[int(t.port_src[g[0]])], "ports": [names[p] for p in g],
                "bytes": [int(run.port_tx_bytes[p]) for p in g], "flows": [int(on[p]) for p in g] if ecmp else None}
               for g in groups]
    a, b = int(fl.msg_ptr[tail]), int(fl.msg_ptr[tail + 1])
    collision = None
    if ecmp and groups:
        busy = run.port_tx_bytes * 8000 // t.port_mbps
        member = {p: g for g in groups for p in g}
        # the busiest port of the tail's path. On a tie a host's own port (its NIC, or the last hop into the
        # receiver: incast) wins over an uplink, and an uplink over the ports behind it (a spine's downlink
        # carries the flows the uplink before it carried)
        edge = (t.port_src < t.hosts) | (t.port_dst < t.hosts)
        hot = max(paths[tail], key=lambda p: (int(busy[p]), 2 if edge[p] else 1 if p in member else 0))
        g = member.get(hot)
        if g is not None and on[hot] >= 2 and min(int(on[p]) for p in g if p != hot) <= on[hot] - 2:
            collision = {"port": names[hot], "flows": int(on[hot]), "busy_ns": int(busy[hot]),
                         "ports": [names[p] for p in g], "port_flows": [int(on[p]) for p in g],
                         "port_bytes": [int(run.port_tx_bytes[p]) for p in g]}
    return {"routing": pf.params.routing, "uplinks": uplinks,
            "tail_flow": {"src": prefix[int(fl.src[tail])], "dst": prefix[int(fl.dst[tail])],
                          "finish_ns": int(finish[tail]), "bytes": int(fl.msg_bytes[a:b].sum())},
            "median_flow_finish_ns": int(np.median(finish)), "ecmp_collision": collision}


@dataclass(frozen=True)
class EcmpCollision:
    """An ECMP collision that explains one side's tail in a diff (from ``summary.json``'s fabric keys)."""

    phase: str
    side: str  # "before" or "after": the side whose tail the collision explains
    port: str  # the uplink the tail flow shared
    flows: int  # flows hashed onto it
    ports: tuple[str, ...]  # its group of parallel uplinks (itself included)
    port_flows: tuple[int, ...]
    port_bytes: tuple[int, ...]
    tail_src: str
    tail_dst: str
    tail_finish_ns: int
    median_finish_ns: int
    other_routing: str  # the other side's routing ("" when it ran without the dynamic fabric)
    other_tail_finish_ns: int  # the other side's tail flow finish (-1: none)

    def sentence(self) -> str:
        others = [(f, b) for n, f, b in zip(self.ports, self.port_flows, self.port_bytes) if n != self.port]
        idle = sum(1 for f, _ in others if f == 0)
        mine = self.port_bytes[self.ports.index(self.port)]
        s = (f"{self.phase} ECMP collision on {self.port} ({self.side}): {self.flows} flows on one uplink while "
             f"{len(others)} parallel uplinks carried {', '.join(str(f) for f, _ in others)} flows ({idle} idle; "
             f"{mine / 1e6:.3g} MB vs {', '.join(f'{b / 1e6:.3g}' for _, b in others)} MB); the tail flow "
             f"{self.tail_src} -> {self.tail_dst} finished at {self.tail_finish_ns / 1e3:.1f} us, "
             f"{(self.tail_finish_ns - self.median_finish_ns) / 1e3:.1f} us after the median flow")
        if self.other_tail_finish_ns >= 0:
            gap = self.tail_finish_ns - self.other_tail_finish_ns
            other = "after" if self.side == "before" else "before"
            s += (f", {abs(gap) / 1e3:.1f} us {'later' if gap >= 0 else 'earlier'} than the {other} side's tail "
                  f"flow ({self.other_routing})")
        return s


def ecmp_causes(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[EcmpCollision]:
    """The ECMP collisions that explain a tail on either side of a diff, from two ``summary.json``."""
    fb = (before or {}).get("fabric") or {}
    fa = (after or {}).get("fabric") or {}
    out = []
    for phase in ("dispatch", "combine"):
        for side, mine, other in (("before", fb.get(phase, {}), fa.get(phase, {})),
                                  ("after", fa.get(phase, {}), fb.get(phase, {}))):
            c, tail = mine.get("ecmp_collision"), mine.get("tail_flow")
            if not c or not tail:
                continue
            other_tail = int((other.get("tail_flow") or {}).get("finish_ns", -1))
            out.append(EcmpCollision(phase, side, c["port"], int(c["flows"]), tuple(c["ports"]),
                                     tuple(c["port_flows"]), tuple(c["port_bytes"]), tail["src"], tail["dst"],
                                     int(tail["finish_ns"]), int(mine["median_flow_finish_ns"]),
                                     str(other.get("routing", "")), other_tail))
    return out


def fabric_findings(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[str]:
    """Diff sentences naming the fabric's part in a change, from two replays' ``summary.json``: pause
    time and where it started, drops, retransmissions and timeouts, ECN marks, the delay the dynamic
    fabric added and its share of the critical path, and an ECMP collision that explains a side's tail
    (:func:`ecmp_causes`). Empty unless a side ran ``--fabric dynamic``."""
    fb = (before or {}).get("fabric") or {}
    fa = (after or {}).get("fabric") or {}
    out: list[str] = []
    for phase in ("dispatch", "combine"):
        b, a = fb.get(phase, {}), fa.get(phase, {})
        if not b and not a:
            continue

        def pair(key: str, scale: float = 1.0, unit: str = "") -> str:
            if scale == 1.0:
                return f"{int(b.get(key, 0))} -> {int(a.get(key, 0))}"
            return f"{b.get(key, 0) / scale:.3g}{unit} -> {a.get(key, 0) / scale:.3g}{unit}"

        causes = []
        if b.get("pause_ns", 0) or a.get("pause_ns", 0):
            side = a if a.get("pause_ns", 0) >= b.get("pause_ns", 0) else b
            root = side.get("max_queue_port", "")
            why = "ECMP collision" if root and root == (side.get("ecmp_collision") or {}).get("port") else "incast"
            causes.append(f"PFC pause {pair('pause_ns', 1e6, ' ms')} on {pair('paused_ports')} ports"
                          + (f" (congestion root {root}: {why})" if root else ""))
        if b.get("drops", 0) or a.get("drops", 0):
            causes.append(f"drops {pair('drops')}, retransmitted {pair('retransmitted_bytes', 1e6, ' MB')}, "
                          f"timeouts {pair('timeouts')}")
        if b.get("ecn_marks", 0) or a.get("ecn_marks", 0):
            causes.append(f"ECN marks {pair('ecn_marks')}, CNPs {pair('cnps')}")
        causes.append(f"fabric delay {pair('fabric_delay_ns', 1e6, ' ms')} "
                      f"({pair('fabric_share_of_critical_path', 0.01, '%')} of the critical path)")
        out.append(f"{phase} fabric: " + "; ".join(causes))
        out += [c.sentence() for c in ecmp_causes(before, after) if c.phase == phase]
    return out
