"""The dynamic fabric inside a replay (``ReplayConfig.fabric = "dynamic"``).

Per phase, the engine first runs the phase's task graph with the static fabric (pass 1). Its RDMA
messages (NIC transmit start, source and destination rank, payload bytes) become the fabric's input:
one QP per (source, destination) rank pair, messages posted at the times pass 1 started them. The
fabric simulator (:func:`tracekit.fabric.simulate`) returns when each message's last packet reached
its receiver NIC. Pass 2 rebuilds the same graph and delays every message's NIC receive by what the
fabric added beyond pass 1 (a zero-cost ``fabric`` task between transmit and receive, so the critical
path charges the wait to the fabric); everything downstream (credits, forwarders, combine) follows.
One correction step of a fixed-point iteration, deterministic; see ``docs/fabric.md`` for why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from tracekit.errors import TracekitError
from tracekit.fabric.common import FabricRun, Flows, raise_if_stalled
from tracekit.fabric.fast import simulate
from tracekit.fabric.params import FabricParams, params_from_profile
from tracekit.fabric.topology import Topology, leaf_spine, rail_optimised, single_switch
from tracekit.model.cluster import STAGE


@dataclass
class PhaseFabric:
    """One phase's fabric run and how its messages map to the task graph."""

    phase: str
    step: int
    layer: int
    run: FabricRun
    topo: Topology
    params: FabricParams
    flows: Flows
    tx: np.ndarray  # per message (in the fabric's message order): NIC transmit task
    rx: np.ndarray  # ... NIC receive task
    extra_ns: np.ndarray  # ... delay the fabric adds to the receive, beyond pass 1
    static_latency_ns: int = 0


def fabric_topology(hw: Any, ranks: int) -> Topology:
    """The profile's fabric as a :class:`Topology` (hosts are ranks' NICs)."""
    mbps = int(round(hw.nic.line_rate_gbit_s * 1000))
    cable, sw = int(hw.switch.cable_latency_ns), int(hw.switch.latency_ns)
    fabric = hw.values.get("fabric", {})
    oversub = float(fabric.get("oversubscription", 1.0))
    if fabric.get("topology", "switch") == "rail_optimised":
        gpn = int(hw.system.gpus_per_node)
        return rail_optimised(max(ranks // gpn, 1), min(gpn, ranks), int(hw.switch.spines), mbps, cable, sw, oversub)
    if hw.switch.topology == "leaf_spine":
        return leaf_spine(ranks, int(hw.switch.ports) // 2, int(hw.switch.spines), mbps, cable, sw, oversub)
    if ranks > int(hw.switch.ports):
        raise TracekitError(f"{ranks} NICs do not fit one {hw.switch.ports}-port switch of profile {hw.name}",
                            fix="use --set switch.topology=leaf_spine or --set fabric.topology=rail_optimised")
    return single_switch(ranks, mbps, cable, sw)


def rdma_messages(built: Any, sched: Any) -> dict[str, np.ndarray]:
    """The phase's RDMA messages from pass 1: transmit and receive tasks (paired in creation order)."""
    g = built.graph
    stage = g.attr("stage")
    tx = np.flatnonzero(stage == STAGE["nic_send"])
    rx = np.flatnonzero(stage == STAGE["nic_recv"])
    if tx.size != rx.size:
        raise TracekitError("--fabric dynamic pairs each RDMA transmit with its receive; this graph has "
                            f"{tx.size} transmits and {rx.size} receives", fix="use --granularity chunk or token")
    rank = g.attr("rank")
    if not np.array_equal(g.attr("dst_rank")[tx], rank[rx]):
        raise TracekitError("--fabric dynamic could not pair RDMA transmits with their receives",
                            fix="report this as a bug; replay without --fabric meanwhile")
    nbytes = np.maximum(g.attr("bytes")[tx], 0)
    return {"tx": tx, "rx": rx, "src": rank[tx].astype(np.int64), "dst": rank[rx].astype(np.int64),
            "bytes": nbytes.astype(np.int64), "ready": sched.ready[tx].astype(np.int64),
            "tx_end": sched.finish[tx].astype(np.int64), "rx_dur": (sched.finish[rx] - sched.start[rx]).astype(np.int64)}


def run_fabric(built: Any, sched: Any, hw: Any, ranks: int, *, step: int, layer: int,
               overrides: dict[str, Any] | None = None) -> PhaseFabric:
    """Simulate pass 1's RDMA messages on the dynamic fabric."""
    if hw.nic.transport != "roce":
        raise TracekitError(f"--fabric dynamic models RoCE (PFC, ECN, DCQCN); profile {hw.name} has "
                            f"nic.transport={hw.nic.transport!r}, whose credit-based flow control the static fabric "
                            "models", fix="use a RoCE profile (ascend910b-roce, biren-br200-roce) or --set nic.transport=roce")
    m = rdma_messages(built, sched)
    topo = fabric_topology(hw, ranks)
    params = params_from_profile(hw, **(overrides or {}))
    pair = m["src"] * ranks + m["dst"]
    order = np.lexsort((m["tx"], m["ready"], pair))  # by QP, then post time
    pairs, first = np.unique(pair[order], return_index=True)
    ptr = np.r_[first, order.size].astype(np.int64)
    flows = Flows(pairs // ranks, pairs % ranks, np.zeros(pairs.size, np.int64), np.arange(pairs.size, dtype=np.int64),
                  ptr, m["ready"][order], m["bytes"][order])
    run = raise_if_stalled(simulate(topo, params, flows), topo, params) if pairs.size else None
    done = run.msg_done_ns if run is not None else np.zeros(0, np.int64)
    extra = np.maximum(done - m["tx_end"][order] - m["rx_dur"][order], 0)
    return PhaseFabric(built.phase, step, layer, run, topo, params, flows, m["tx"][order], m["rx"][order], extra)


def apply_fabric(built: Any, pf: PhaseFabric) -> None:
    """Pass 2: a zero-cost ``fabric`` wait between each message's transmit and receive."""
    g = built.graph
    stage = g.attr("stage")
    tx = np.flatnonzero(stage == STAGE["nic_send"])
    if tx.size != pf.tx.size or not np.array_equal(np.sort(pf.tx), tx):
        raise TracekitError("the rebuilt phase graph differs from pass 1", fix="report this as a bug")
    wait = built.cluster.add(pf.tx.size, "fabric", -1, dur=0, record=False)
    g._attr_cache.clear()  # attribute columns were cached before these tasks existed
    g.add_edges(pf.tx, wait, lag=pf.extra_ns)
    g.add_edges(wait, pf.rx)


def fabric_phase(build: Any, hw: Any, cfg: Any, built: Any, sched: Any, *, step: int, layer: int) -> tuple:
    """Pass 1 ran (``built``, ``sched``); simulate its RDMA on the fabric, rebuild with ``build()`` and
    run pass 2. Returns the pass-2 ``(built, sched, PhaseFabric)``."""
    from tracekit.engine import run

    ranks = int(built.cluster.R)
    pf = run_fabric(built, sched, hw, ranks, step=step, layer=layer)
    pf.static_latency_ns = int(sched.finish.max(initial=0))
    built2 = build()
    apply_fabric(built2, pf)
    return built2, run(built2.graph), pf


def fabric_outputs(pf: PhaseFabric, built: Any, sched: Any, result: Any, events: pl.DataFrame,
                   counters: pl.DataFrame, t0: int, rows: bool = True) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    """The phase's events and counters with the fabric's rows merged in (``rows``; a replay without
    tables keeps its empty ones), and its fabric summary."""
    from tracekit.fabric.tables import fabric_counters, fabric_events, phase_fabric_summary

    prefix = list(built.cluster.prefix)
    if rows:
        ev = pl.from_arrow(fabric_events(pf, prefix, t0)).cast(events.schema)
        events = pl.concat([events, ev], how="vertical").sort("ts_ns", maintain_order=True)
        counters = pl.concat([counters, fabric_counters(pf, prefix, t0).cast(counters.schema)], how="vertical")
    makespan = int(sched.finish.max(initial=0))
    part = phase_fabric_summary(pf, prefix, makespan, result.summary["stages"])
    part["fabric_share_of_critical_path"] = float(result.summary["stages"].get("fabric", 0)
                                                  / max(result.summary["latency_ns"], 1))
    return events, counters, part
