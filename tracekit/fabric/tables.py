"""A phase's fabric run as rows of the events and counters tables, and its summary.

Events: PFC pause slices per port and priority (``<port>/pfc<prio>``, stage ``pfc_pause``), drops
(instants on ``<port>/drops``) and retransmissions (instants on ``<nic>/retransmit``). Counters:
``fabric_queue_bytes`` per switch port, ``ecn_marked_fraction`` per switch port and sample period,
``dcqcn_rate_gbps`` per QP (``<nic>/qp<dst rank>``), ``pfc_paused`` (1 while paused). Host ports are
named after the rank's NIC (``node0/rank3/nic0``), switch ports as in the static model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from tracekit import schemas
from tracekit.fabric.replay import PhaseFabric


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
    return out


def fabric_findings(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[str]:
    """Diff sentences naming the fabric's part in a change, from two replays' ``summary.json``: pause
    time and where it started, drops, retransmissions and timeouts, ECN marks, the delay the dynamic
    fabric added and its share of the critical path. Empty unless a side ran ``--fabric dynamic``."""
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
            root = (a if a.get("pause_ns", 0) >= b.get("pause_ns", 0) else b).get("max_queue_port", "")
            causes.append(f"PFC pause {pair('pause_ns', 1e6, ' ms')} on {pair('paused_ports')} ports"
                          + (f" (congestion root {root}: incast)" if root else ""))
        if b.get("drops", 0) or a.get("drops", 0):
            causes.append(f"drops {pair('drops')}, retransmitted {pair('retransmitted_bytes', 1e6, ' MB')}, "
                          f"timeouts {pair('timeouts')}")
        if b.get("ecn_marks", 0) or a.get("ecn_marks", 0):
            causes.append(f"ECN marks {pair('ecn_marks')}, CNPs {pair('cnps')}")
        causes.append(f"fabric delay {pair('fabric_delay_ns', 1e6, ' ms')} "
                      f"({pair('fabric_share_of_critical_path', 0.01, '%')} of the critical path)")
        out.append(f"{phase} fabric: " + "; ".join(causes))
    return out
