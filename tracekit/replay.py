"""Replay: routing table + hardware profile + config -> events, counters and a summary.

For every (step, layer) of the routing table, dispatch then combine are built as task graphs
(:mod:`tracekit.model.normal`), executed by the engine, checked for conservation and turned into
tables. Phases run back to back on one clock. Pure: no file I/O (see :mod:`tracekit.io.replay_out`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from tracekit import schemas
from tracekit.engine import Schedule, run
from tracekit.errors import TracekitError
from tracekit.hardware import Profile
from tracekit.model.config import ReplayConfig
from tracekit.model.normal import Built, build_combine, build_dispatch
from tracekit.summary_types import Summary
from tracekit.arrays import small_pages
from tracekit.analysis.phase import PhaseResult, analyse_phase, check_conservation, phase_tables
from tracekit.workload.layout import dispatch_layout
from tracekit.workload.routing import Routing


@dataclass
class ReplayResult:
    """Everything one replay produced: events and counters (polars), the typed summary, per-phase results.

    >>> from tracekit import replay, synth
    >>> r = replay(synth("decode", ep=8, tokens=16))
    >>> r.events.columns[:3], r.summary.workload.ep_size
    (['ts_ns', 'dur_ns', 'rank'], 8)
    """

    events: pl.DataFrame
    counters: pl.DataFrame
    summary: Summary  # also reads like the summary.json dict (a mapping view)
    phases: list[PhaseResult] = field(default_factory=list)
    memops: pl.DataFrame | None = None  # with ReplayConfig.record_memops


def _check_inputs(routing: Routing, hw: Profile, cfg: ReplayConfig) -> None:
    m = routing.meta
    if routing.num_rows == 0:
        raise TracekitError("routing table is empty", fix="pass a table with at least one token")
    if m.gpus_per_node != hw.system.gpus_per_node:
        raise TracekitError(
            f"routing has gpus_per_node={m.gpus_per_node} but hardware profile {hw.name} has "
            f"{hw.system.gpus_per_node}",
            fix="synthesise the routing with --gpus-per-node matching the profile, or choose another profile",
        )
    if cfg.record_memops and m.ep_size > m.gpus_per_node:
        raise TracekitError(
            f"--record-memops covers the NVLink rings of an intranode dispatch; this workload spans "
            f"{m.num_nodes} nodes", fix="replay a single-node workload (ep <= gpus per node) to record memory operations",
        )
    if m.ep_size > m.gpus_per_node and m.ep_size % m.gpus_per_node:
        raise TracekitError(f"ep_size={m.ep_size} is not a whole number of {m.gpus_per_node}-GPU nodes",
                            fix="use whole nodes")


@small_pages()
def replay(
    routing: Routing,
    hw: Profile,
    cfg: ReplayConfig | None = None,
    *,
    on_phase: Callable[[str, int, int], None] | None = None,
    tables: bool = True,
) -> ReplayResult:
    """Replay every (step, layer) of ``routing`` on ``hw``; see the module docstring. ``tables=False``
    skips building the events and counters tables (left empty; the summary is the same), for sweeps."""
    cfg = (cfg or ReplayConfig()).resolved(routing.meta.ep_size)
    hw = hw.with_overrides(cfg.hardware_overrides)
    _check_inputs(routing, hw, cfg)
    if cfg.schedule is not None:  # whole layers, compute included
        from tracekit.overlap import replay_schedule

        return replay_schedule(routing, hw, cfg, on_phase)
    t0 = 0
    ids = {"flow": 1, "msg": 0}
    gemm_events = None
    gemm_ranks: list[np.ndarray] = []
    events, counters, phases, memops = [], [], [], []
    fabric_parts: dict[str, list] = {"dispatch": [], "combine": []}
    for step, layer in routing.steps_layers():
        part = routing.select(step, layer)
        layout = dispatch_layout(part)
        gemm_done = None
        for builder in _builders(cfg.mode):
            def build(builder=builder, gemm_done=gemm_done) -> Built:
                built = builder(part, layout, hw, cfg)
                if gemm_done is not None:  # each rank starts its combine when its experts are done
                    first = built.start if built.call_start is None else built.call_start
                    built.graph.update(first, release=gemm_done[built.graph.attr("rank")[first]])
                return built

            built = build()
            sched: Schedule = run(built.graph)
            if cfg.fabric == "dynamic":  # RDMA on the packet-level RoCE fabric (tracekit.fabric)
                from tracekit.fabric.replay import fabric_outputs, fabric_phase

                built, sched, pf = fabric_phase(build, hw, cfg, built, sched, step=step, layer=layer)
            check_conservation(built, sched, layout, part)
            result = analyse_phase(built, sched, layout, part, step=step, layer=layer, t0=t0)
            ev, ctr = phase_tables(built, sched, layout, part, result, t0=t0, ids=ids) if tables else _no_tables()
            if cfg.fabric == "dynamic":
                ev, ctr, fsum = fabric_outputs(pf, built, sched, result, ev, ctr, t0, rows=tables)
                fabric_parts[built.phase].append(fsum)
            if gemm_events is not None and built.phase == "combine" and tables:
                gemm = pl.from_arrow(schemas.conform(gemm_events, "events", {"source": "replay"})).cast(ev.schema)
                ev = pl.concat([gemm, ev], how="vertical").sort("ts_ns", maintain_order=True)
                gemm_events = None
            events.append(ev)
            counters.append(ctr)
            if cfg.record_memops and built.phase == "dispatch":
                from tracekit.model.memops import ring_memops

                memops.append(ring_memops(built, sched, t0=t0))
            phases.append(result)
            t0 = result.end_ns
            if cfg.expert_gemm and built.phase == "dispatch":
                from tracekit.model.expert import expert_gemm

                gemm_done, gemm_events = expert_gemm(part, layout, hw, cfg.expert_ffn, built.cluster.prefix, t0,
                                                     step, layer)
                gemm_ranks.append(gemm_done)
            if on_phase is not None:
                on_phase(built.phase, step, layer)
    summary = summarise(phases, routing, hw, cfg)
    if cfg.fabric == "dynamic":
        from tracekit.fabric.params import params_from_profile
        from tracekit.fabric.tables import merge_fabric_summaries

        summary["fabric"] = {"mode": "dynamic", "params": params_from_profile(hw).to_dict(),
                             **{k: merge_fabric_summaries(v) for k, v in fabric_parts.items() if v}}
    if gemm_ranks:
        done = np.concatenate(gemm_ranks)
        summary["expert_gemm"] = {"rank_ns": {"p50": int(np.percentile(done, 50)), "max": int(done.max())},
                                  "tflops": hw.gpu.gemm_tflops, "expert_ffn": cfg.expert_ffn}
    return ReplayResult(
        events=pl.concat(events, how="vertical"),  # phases follow each other; each is sorted by time
        counters=pl.concat(counters, how="vertical"),
        summary=Summary.from_dict(summary),
        phases=phases,
        memops=_renumber(memops) if cfg.record_memops else None,
    )


def _no_tables() -> tuple[pl.DataFrame, pl.DataFrame]:
    ev, ctr = (pl.from_arrow(schemas.load(name).arrow_schema().empty_table()) for name in ("events", "counters"))
    return ev, ctr  # type: ignore[return-value]


def _renumber(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """One memops table over all phases: seq runs on across them."""
    out = pl.concat(parts, how="vertical")
    return out.with_columns(pl.int_range(0, out.height, dtype=pl.Int64).alias("seq"))


def _builders(mode: str):
    if mode == "nccl":
        from tracekit.model.nccl import build_nccl_combine, build_nccl_dispatch

        return build_nccl_dispatch, build_nccl_combine
    if mode in ("low_latency", "zero_buffer"):
        from tracekit.model.low_latency import build_ll_combine, build_ll_dispatch

        return build_ll_dispatch, build_ll_combine
    return build_dispatch, build_combine


def _merge_phase(results: list[PhaseResult]) -> dict[str, Any]:
    """One phase's summary over all steps and layers (calls): ``latency_ns`` and ``data_ns`` summed over
    calls, ``latency_ns_per_call`` mean/p50/max, rank finishes pooled per call, means of bandwidth."""
    lat = [r.summary["latency_ns"] for r in results]
    per_call = {"calls": len(lat), "mean": int(round(float(np.mean(lat)))), "p50": int(np.percentile(lat, 50)),
                "max": int(max(lat))}
    if len(results) == 1:
        return {**results[0].summary, "latency_ns_per_call": per_call}
    stages: dict[str, int] = {}
    stalls: dict[str, int] = {}
    for r in results:
        for k, v in r.summary["stages"].items():
            stages[k] = stages.get(k, 0) + v
        for k, v in r.summary["stalls"].items():
            stalls[k] = stalls.get(k, 0) + v
    finish = np.concatenate([r.rank_finish for r in results])
    bw = {k: (float(np.mean([r.summary["bandwidth_gbps"][k] for r in results])) if k != "unit" else v)
          for k, v in results[0].summary["bandwidth_gbps"].items()}
    bottlenecks = [r.summary["bottleneck"]["resource_kind"] for r in results]
    worst = max(results, key=lambda r: r.summary["latency_ns"])
    return {
        "latency_ns": int(sum(lat)),
        "latency_ns_per_call": per_call,
        "data_ns": int(sum(r.summary["data_ns"] for r in results)),
        "bytes": int(sum(r.summary["bytes"] for r in results)),
        "stages": dict(sorted(stages.items())),
        "rank_finish_ns": {"p50": int(np.percentile(finish, 50)), "p99": int(np.percentile(finish, 99)),
                           "max": int(finish.max())},
        "bandwidth_gbps": bw,
        "bottleneck": {**worst.summary["bottleneck"], "most_common_kind": max(set(bottlenecks), key=bottlenecks.count)},
        "stalls": dict(sorted(stalls.items())),
        "bound_ns": int(sum(r.summary["bound_ns"] for r in results)),
        "bound_ratio": float(sum(lat) / max(sum(r.summary["bound_ns"] for r in results), 1)),
        "tail_rank": worst.summary["tail_rank"],
    }


def summarise(phases: list[PhaseResult], routing: Routing, hw: Profile, cfg: ReplayConfig) -> dict[str, Any]:
    """The stable, machine-readable summary (``summary.json``)."""
    m = routing.meta
    out: dict[str, Any] = {
        "schema": "summary.v1",
        "conservation": "ok",
        "hardware": hw.name,
        "workload": {
            "ep_size": m.ep_size, "gpus_per_node": m.gpus_per_node, "num_experts": m.num_experts,
            "hidden": m.hidden, "topk": routing.topk, "tokens": int(routing.num_rows),
            "steps_layers": len(routing.steps_layers()),
            "dispatch_dtype": cfg.payload_dtype(m, "dispatch"),
            "combine_dtype": cfg.payload_dtype(m, "combine"),
        },
        "config": {k: v for k, v in cfg.to_dict().items() if k != "hardware_overrides"},
        "hardware_overrides": dict(cfg.hardware_overrides),
    }
    for phase in ("dispatch", "combine"):
        out[phase] = _merge_phase([p for p in phases if p.phase == phase])
    out["total_ns"] = int(phases[-1].end_ns) if phases else 0
    out["scale"] = phases[0].scale if phases else {}
    return out
