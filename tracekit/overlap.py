"""Replay with a schedule (``ReplayConfig.schedule``): communication and compute of whole layers.

For every (step, layer) and micro-batch, dispatch and combine are replayed as usual (their own task
graphs, conservation checked); the compute of the layer comes from the roofline of
:mod:`tracekit.model.compute`; :mod:`tracekit.model.schedule` arranges both per rank, and the engine
runs that plan. The replayed phases' events are placed where the plan starts each phase, and the
plan's kernels become events on ``<rank>/stream/compute``, ``<rank>/stream/comm`` and
``<rank>/stream/nic`` (in flight with no SM). Pure: no file I/O.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import polars as pl

from tracekit import schemas
from tracekit.analysis.intervals import intersection_length, union_length
from tracekit.analysis.phase import PhaseResult, analyse_phase, check_conservation, phase_tables
from tracekit.engine import BindKind, Schedule, run
from tracekit.hardware import Profile
from tracekit.model import compute as cm
from tracekit.model.config import ReplayConfig
from tracekit.model.schedule import COMPUTE_PARTS, FUSED_FEATURES, Plan, Slice, build, split_exact
from tracekit.workload.layout import dispatch_layout
from tracekit.workload.routing import Routing

MICRO_BATCHES = {"serial": 1, "fused": 1, "two_microbatch": 2, "ll_hook": 2, "dualpipe": 1}


def micro_batches(part: Routing, n: int) -> list[Routing]:
    """Split each rank's tokens of one (step, layer) into ``n`` contiguous micro-batches (token
    indices renumbered from 0 in each)."""
    if n == 1:
        return [part]
    count = np.bincount(part.rank, minlength=part.meta.ep_size)[part.rank]
    out = []
    for m in range(n):
        lo, hi = count * m // n, count * (m + 1) // n
        idx = np.flatnonzero((part.token >= lo) & (part.token < hi))
        sub = part.take(idx)
        out.append(replace(sub, token=(sub.token - lo[idx]).astype(part.token.dtype)))
    return out


def _builders(mode: str):
    from tracekit.replay import _builders as b

    return b(mode)


def _phases(part: Routing, hw: Profile, cfg: ReplayConfig, step: int, layer: int, ids: dict[str, int]):
    """Replay dispatch and combine of ``part`` from time 0: (results, events, counters, arrival)."""
    layout = dispatch_layout(part)
    out = []
    arrival = None
    for builder in _builders(cfg.mode):
        built = builder(part, layout, hw, cfg)
        sched: Schedule = run(built.graph)
        check_conservation(built, sched, layout, part)
        result = analyse_phase(built, sched, layout, part, step=step, layer=layer, t0=0)
        ev, ctr = phase_tables(built, sched, layout, part, result, t0=0, ids=ids)
        out.append((result, ev, ctr))
        if built.phase == "dispatch":
            arrival = _arrival(built, sched, part, result)
    return out, arrival, layout


def _cached_dispatch(part: Routing, layout, hw: Profile, cfg: ReplayConfig) -> PhaseResult:
    """A dispatch with the cached layout (no notify, no CPU sync): the backward of a combine."""
    built = _builders(cfg.mode)[0](part, layout, hw, replace(cfg, cached=True))
    sched = run(built.graph)
    check_conservation(built, sched, layout, part)
    return analyse_phase(built, sched, layout, part, step=0, layer=0, t0=0)


def _arrival(built, sched: Schedule, part: Routing, result: PhaseResult) -> np.ndarray:
    """Per (rank, local expert): when its last token arrived, ns after the dispatch started."""
    R, E = part.meta.ep_size, part.meta.num_experts
    epr = E // R
    if built.delivery_expert is None:  # normal kernels deliver per rank: every expert waits for the rank
        return np.repeat(result.rank_finish[:, None], epr, axis=1)
    out = np.zeros(E, np.int64)
    np.maximum.at(out, built.delivery_expert, sched.finish[built.delivery_task])
    return out.reshape(R, epr)


def _slice(part: Routing, layout, hw: Profile, md: cm.ModelDesc, res: list, arrival: np.ndarray,
           sms_set: tuple[int, ...], cached: PhaseResult | None = None) -> Slice:
    """A micro-batch's durations; with ``cached`` (dualpipe: the backward combine, a cached dispatch),
    the training blocks too."""
    R, E = part.meta.ep_size, part.meta.num_experts
    epr = E // R
    tokens_rank = np.bincount(part.rank, minlength=R)
    per_expert = layout.num_tokens_per_expert.sum(axis=0).reshape(R, epr)
    compute, experts, fused = {}, {}, {}
    blocks = [cm.training_blocks(md, int(tokens_rank[r]), per_expert[r]) for r in range(R)] if cached else None
    for s in sms_set:
        compute[s] = {p: np.array([cm.part_ns(getattr(cm, f)(md, int(t)), hw, s) for t in tokens_rank], np.int64)
                      for p, f in (("attention", "attention"), ("shared", "shared_expert"))}
        if blocks is not None:
            compute[s].update({p: np.array([cm.part_ns(b[p], hw, s) for b in blocks], np.int64) for p in blocks[0]})
        experts[s] = np.stack([_expert_split(md, per_expert[r], hw, s, io=True) for r in range(R)])
        fused[s] = np.stack([_expert_split(md, per_expert[r], hw, s, io=False) for r in range(R)])
    (d, _, _), (c, _, _) = res
    st_d, st_c = d.summary["stages"], c.summary["stages"]
    return Slice(compute=compute, experts=experts, experts_fused=fused, dispatch=d.rank_finish.astype(np.int64),
                 combine=c.rank_finish.astype(np.int64), arrival=arrival, tokens=per_expert,
                 dispatch_issue=st_d.get("launch", 0) + st_d.get("pack", 0) + st_d.get("rdma_post", 0),
                 dispatch_recv=st_d.get("unpack", 0),
                 combine_issue=st_c.get("launch", 0) + st_c.get("combine_pack", 0) + st_c.get("rdma_post", 0),
                 combine_recv=st_c.get("combine_unpack", 0) + st_c.get("combine_reduce", 0),
                 dispatch_cached=None if cached is None else cached.rank_finish.astype(np.int64))


def _expert_split(md: cm.ModelDesc, tokens: np.ndarray, hw: Profile, sms: int, *, io: bool) -> np.ndarray:
    """A rank's grouped expert GEMM time split over its local experts (exactly, by work share).
    Without ``io`` the expert input is read from and the output written to on-chip memory (fused)."""
    kernels = cm.experts(md, tokens)
    if not kernels:
        return np.zeros(tokens.shape[0], np.int64)
    k = kernels[0]
    if not io:
        k = replace(k, bytes=k.bytes - cm.DTYPE_BYTES[md.dtype] * 2.0 * float(tokens.sum()) * md.hidden)
    return split_exact(cm.kernel_ns(k, hw, sms), tokens)


def replay_schedule(routing: Routing, hw: Profile, cfg: ReplayConfig, on_phase=None):
    """Replay ``routing`` under ``cfg.schedule``; returns a :class:`tracekit.replay.ReplayResult`."""
    from tracekit.replay import ReplayResult, summarise

    md = cfg.model_desc()
    name = cfg.schedule
    if name == "dualpipe" and md.workload == "decode":  # forward and backward chunks: a training step
        md = replace(md, workload="train")
    layers, replayed = _replayed_layers(routing, hw, cfg, md, on_phase)
    plan = build(name, layers, sms=hw.gpu.sms, num_sms=cfg.num_sms, launch_ns=hw.gpu.kernel_launch_ns)
    sched = run(plan.graph)
    tasks = plan_table(plan, sched)
    events, counters, phases = _placed(replayed, _phase_spans(tasks), name)
    events.append(_plan_events(tasks, routing))
    summary = summarise(phases, routing, hw, cfg)
    summary["schedule"] = schedule_summary(plan, sched, tasks, md, name, cfg.num_sms, hw.gpu.sms)
    if name in ("serial", "fused"):
        summary["schedule"]["fused_savings_ns"] = fused_savings(layers, hw.gpu.sms, cfg.num_sms,
                                                                hw.gpu.kernel_launch_ns)
    summary["total_ns"] = summary["schedule"]["step_ns"]
    return ReplayResult(events=pl.concat(events, how="vertical").sort("ts_ns", maintain_order=True),
                        counters=pl.concat(counters, how="vertical").sort("ts_ns", maintain_order=True),
                        summary=summary, phases=phases)


def _replayed_layers(routing: Routing, hw: Profile, cfg: ReplayConfig, md: cm.ModelDesc, on_phase):
    """Per (step, layer), its micro-batches' slices; and each micro-batch's replayed phases as
    ((layer index, micro-batch), [(result, events, counters), ...])."""
    n_mb = MICRO_BATCHES[cfg.schedule]
    sms_set = (hw.gpu.sms, hw.gpu.sms - cfg.num_sms)
    ids = {"flow": 1, "msg": 0}
    layers, replayed = [], []
    for li, (step, layer) in enumerate(routing.steps_layers()):
        mbs = []
        for m, mb in enumerate(micro_batches(routing.select(step, layer), n_mb)):
            res, arrival, layout = _phases(mb, hw, cfg, step, layer, ids)
            cached = _cached_dispatch(mb, layout, hw, cfg) if cfg.schedule == "dualpipe" else None
            mbs.append(_slice(mb, layout, hw, md, res, arrival, sms_set, cached))
            replayed.append(((li, m), res))
            if on_phase is not None:
                for r, _, _ in res:
                    on_phase(r.phase, step, layer)
        layers.append(mbs)
    return layers, replayed


def _placed(replayed: list, spans: dict[tuple[int, int, str], tuple[int, int]], name: str):
    """The replayed phases' events, counters and results moved to where the plan runs each phase:
    its start; a fused combine, paced by the expert GEMMs, so that it ends where the plan's last send
    ends."""
    events, counters, phases = [], [], []
    for (li, m), res in replayed:
        for result, ev, ctr in res:
            first, last = spans[(li, m, result.phase)]
            off = last - result.end_ns if (name == "fused" and result.phase == "combine") else first
            phases.append(replace(result, t0=off, end_ns=result.end_ns + off))
            events.append(ev.with_columns(pl.col("ts_ns") + off))
            counters.append(ctr.with_columns(pl.col("ts_ns") + off))
    return events, counters, phases


def plan_table(plan: Plan, sched: Schedule) -> pl.DataFrame:
    """One row per planned kernel: rank, part, stream, layer, micro-batch, SMs, start, end (ns)."""
    n = [ids.size for ids in plan.ids]
    ids = np.concatenate(plan.ids)
    return pl.DataFrame({
        "task": ids, "rank": np.concatenate(plan.rank).astype(np.int32),
        "part": np.repeat(plan.part, n), "stream": np.repeat(plan.stream, n),
        "layer": np.repeat(plan.layer, n).astype(np.int32), "micro": np.repeat(plan.micro, n).astype(np.int32),
        "sms": np.repeat(plan.sms, n).astype(np.int64),
        "start": sched.start[ids], "end": sched.finish[ids],
    })


def _phase_spans(tasks: pl.DataFrame) -> dict[tuple[int, int, str], tuple[int, int]]:
    """Per (layer, micro-batch, phase): the first start and last end of the plan's tasks."""
    t = tasks.with_columns(pl.col("part").str.replace(r"_(send|wire|recv|f)$", "").alias("phase"))
    t = t.filter(pl.col("phase").is_in(["dispatch", "combine"]))
    g = t.group_by("layer", "micro", "phase").agg(pl.col("start").min(), pl.col("end").max())
    return {(int(a), int(b), str(c)): (int(d), int(e)) for a, b, c, d, e in g.iter_rows()}


def _plan_events(tasks: pl.DataFrame, routing: Routing) -> pl.DataFrame:
    """The plan's kernels as events.v1 rows."""
    gpn = routing.meta.gpus_per_node
    steps = [s for s, _ in routing.steps_layers()]
    layers = [l for _, l in routing.steps_layers()]
    t = tasks.filter((pl.col("end") > pl.col("start")) & (pl.col("stream") != ""))
    compute = pl.col("part").is_in(list(COMPUTE_PARTS))
    df = t.select(
        pl.col("start").alias("ts_ns"), (pl.col("end") - pl.col("start")).alias("dur_ns"), "rank",
        pl.format("node{}/rank{}/stream/{}", pl.col("rank") // gpn, "rank", "stream").alias("resource"),
        pl.col("part").alias("stage"),
        pl.format("{} L{} mb{}", "part", "layer", "micro").alias("name"),
        # a stream's kernel spans a whole phase; the replayed phase's own events carry its phase
        pl.when(compute).then(pl.lit("compute")).otherwise(pl.lit("")).alias("phase"),
        pl.when(compute).then(pl.lit("compute")).otherwise(pl.lit("comm")).alias("kind"),
        pl.col("layer").map_elements(lambda i: steps[i], return_dtype=pl.Int32).alias("step"),
        pl.col("layer").map_elements(lambda i: layers[i], return_dtype=pl.Int32).alias("layer"),
    )
    return pl.from_arrow(schemas.conform(df.to_arrow(), "events", {"source": "replay"}))


def _critical_parts(plan: Plan, sched: Schedule) -> dict[str, int]:
    """Time on the critical path by part: walk back from the last task through what held each task
    back; the gap between a task's binder's finish and its start (an edge lag: a kernel launch) counts
    as ``launch``."""
    part_of = np.full(plan.graph.num_tasks, "", dtype=object)
    for ids, p in zip(plan.ids, plan.part):
        part_of[ids] = p
    t = int(np.argmax(sched.finish))
    out: dict[str, int] = {}
    while t >= 0:
        p = part_of[t] or "barrier"
        out[p] = out.get(p, 0) + int(sched.finish[t] - sched.start[t])
        b = int(sched.binder[t])
        prev_end = int(sched.finish[b]) if b >= 0 else 0
        if sched.bind_kind[t] in (BindKind.DEP, BindKind.RESOURCE, BindKind.SOURCE):
            gap = int(sched.start[t]) - prev_end
            if gap:
                out["launch"] = out.get("launch", 0) + gap
        t = b
    out.pop("barrier", None)
    return dict(sorted(out.items()))


def exposed_comm(tasks: pl.DataFrame) -> pl.DataFrame:
    """Per rank: communication time (union of its communication kernels and transfers), and how much
    of it no compute kernel overlaps (``exposed``, >= 0 by construction)."""
    iv = tasks.select("rank", "part", pl.col("start"), pl.col("end"))
    comp = iv.filter(pl.col("part").is_in(list(COMPUTE_PARTS)))
    comm = iv.filter(~pl.col("part").is_in(list(COMPUTE_PARTS)))
    ranks = tasks.select(pl.col("rank").unique().sort())
    total = union_length(comm, ["rank"]).rename({"length": "comm"})
    both = intersection_length(comm, comp, ["rank"]).rename({"length": "hidden"})
    out = ranks.join(total, on="rank", how="left").join(both, on="rank", how="left").fill_null(0)
    return out.with_columns((pl.col("comm") - pl.col("hidden")).alias("exposed"))


def schedule_summary(plan: Plan, sched: Schedule, tasks: pl.DataFrame, md: cm.ModelDesc, name: str, num_sms: int,
                     total_sms: int) -> dict[str, Any]:
    """The ``schedule`` section of summary.json."""
    step = int(sched.finish.max())
    layer_end = tasks.group_by("layer").agg(pl.col("end").max()).sort("layer")["end"].to_numpy()
    layer_ns = np.diff(np.r_[0, layer_end])
    exp = exposed_comm(tasks)
    sm = tasks.with_columns(((pl.col("end") - pl.col("start")) * pl.col("sms")).alias("sm_ns"),
                            pl.col("part").is_in(list(COMPUTE_PARTS)).alias("is_compute"))
    compute_sm = int(sm.filter(pl.col("is_compute"))["sm_ns"].sum())
    comm_sm = int(sm.filter(~pl.col("is_compute"))["sm_ns"].sum())
    steady = layer_ns[1:] if layer_ns.size > 1 else layer_ns  # the first layer also fills the pipeline
    per_layer = float(steady.mean())
    out: dict[str, Any] = {
        "name": name, "micro_batches": MICRO_BATCHES[name], "comm_sms": num_sms, "total_sms": total_sms,
        "model": md.to_dict(), "step_ns": step,
        "layer_ns": {"steady": int(round(per_layer)), "max": int(layer_ns.max()), "per_layer": layer_ns.tolist()},
        "critical_path_ns": _critical_parts(plan, sched),
        "exposed_comm_ns": {"max_rank": int(exp["exposed"].max()), "mean": int(round(exp["exposed"].mean())),
                            "comm_mean": int(round(exp["comm"].mean()))},
        "sm_time": {"compute_sm_ns": compute_sm, "comm_sm_ns": comm_sm,
                    "comm_share": comm_sm / max(compute_sm + comm_sm, 1)},
    }
    # a forward of md.layers layers: the replayed ones, then the rest at the steady per-layer time
    forward = int(round(step + max(md.layers - layer_ns.size, 0) * per_layer))
    out["tpot_ns" if md.workload == "decode" else "step_time_ns"] = forward
    return out


def fused_savings(layers: list[list[Slice]], sms: int, num_sms: int, launch_ns: int) -> dict[str, int]:
    """What the fused kernel saves against ``serial``, feature by feature (``FUSED_FEATURES`` switched
    on in order; each term is the step-time change it made, negative for a cost). Terms sum to
    serial minus fused."""
    out: dict[str, int] = {}
    prev = None
    on: tuple[str, ...] = ()
    for feat in (None, *FUSED_FEATURES):
        if feat is not None:
            on = (*on, feat)
        step = int(run(build("fused", layers, sms=sms, num_sms=num_sms, launch_ns=launch_ns, features=on).graph)
                   .finish.max())
        if prev is not None:
            out[feat] = prev - step
        prev = step
    out["total"] = sum(out.values())
    return out
