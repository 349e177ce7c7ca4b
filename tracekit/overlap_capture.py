"""A captured DualPipe training step against its replay: exposed communication and step time.

The capture (events imported by ``tracekit import kineto``) gives, for one rank, every kernel with
its stream, its host launch (thread and time) and the user annotation it was launched under
(``attn(F)``, ``mlp(B)``, ``mlp(W)``, ``mlp(F)``, the unannotated backward of attention, ``attn(W)``
on the compute streams; ``combine(B)``, ``dispatch(F)``, ``dispatch(B)``, ``combine(F)`` on the
communication stream): :func:`capture_kernels`. :func:`kernel_exposure` is the one definition of
exposed communication (communication kernel time no compute kernel of the rank overlaps) for the
capture and its replays.

:func:`replay_capture_kernels` (the validation row) replays every kernel on the engine
(:func:`replay_kernels`: streams, host launches, DualPipe's edges and the capture's own delays), with
the dispatch and combine kernels predicted by the communication models for the same workload and
everything else taken as captured, the notify kernels' wait for the other ranks included.
:func:`replay_capture_step` (the first, coarser replay) takes each block as one span (first start to
last end) and arranges the blocks for every rank alike with the ``dualpipe`` schedule. docs/overlap.md
says what is input and what is predicted. Pure: no file I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import polars as pl

from tracekit import schemas
from tracekit.analysis.intervals import intersection_length, union_length
from tracekit.engine import TaskGraph, run
from tracekit.errors import TracekitError
from tracekit.hardware import Profile
from tracekit.model.config import ReplayConfig
from tracekit.model.schedule import DUALPIPE_BLOCKS, Slice, build
from tracekit.overlap import _cached_dispatch, _phases, exposed_comm, plan_table
from tracekit.workload.routing import Routing

#: Capture annotations of the DualPipe blocks ("" : the attention backward runs unannotated).
ANNOTATIONS = {"attn(F)": "attn_f", "mlp(B)": "mlp_b", "mlp(W)": "mlp_w", "mlp(F)": "mlp_f", "": "attn_b",
               "attn(B)": "attn_b", "attn(W)": "attn_w"}
COMM_STAGES = ("dispatch", "combine", "notify", "layout")
#: A pair's operations on the communication stream, in issue order (a backward combine is a cached
#: dispatch, a backward dispatch a combine), and the DualPipe edges of ``tracekit.model.schedule``:
#: the block (and pair offset) each waits for, and the block that waits for it.
COMM_OPS = ("combine(B)", "dispatch(F)", "dispatch(B)", "combine(F)")
OP_AFTER = {"combine(B)": ("attn_b", -1), "dispatch(F)": ("attn_f", 0), "dispatch(B)": ("mlp_b", 0),
            "combine(F)": ("mlp_f", 0)}
OP_FEEDS = {"combine(B)": ("mlp_b", 0), "dispatch(F)": ("mlp_f", 0), "dispatch(B)": ("attn_b", 0),
            "combine(F)": ("attn_f", 1)}
#: DeepEP's normal (uncached) dispatch: the host waits for this kernel's received-token counts before it
#: launches the dispatch kernel (deep_ep.cpp, Buffer::internode_dispatch: a CPU busy-wait on the
#: mapped counters), so the dispatch's launch, and the host's later launches, follow its end.
HOST_SYNC_KERNEL = "notify_dispatch"


@dataclass(frozen=True)
class CaptureStep:
    """What one rank's captured step shows."""

    blocks: list[dict[str, int]]  # per layer pair: block -> span ns
    exposed_comm_ns: int  # communication no compute kernel overlaps
    exposed_comm_blocks_ns: int  # ... no compute block (first to last kernel) overlaps: the block replay's view
    comm_ns: int
    step_ns: int


def _annotation(args: str) -> str:
    return json.loads(args).get("annotation", "") if args else ""


def _host(args: str) -> tuple[int, int]:
    """(host thread, GPU start minus host launch ns), (-1, -1) when the import has no launch for it."""
    a = json.loads(args) if args else {}
    return (int(a["host_tid"]), int(a["host_lead_ns"])) if "host_lead_ns" in a else (-1, -1)


def _runs(by: str) -> pl.Expr:
    """Index of the run of equal ``by`` values each row (in row order) belongs to."""
    return ((pl.col(by) != pl.col(by).shift(1)).fill_null(True).cum_sum() - 1).alias("run")


def capture_kernels(events: pl.DataFrame, rank: int = 0) -> pl.DataFrame:
    """``rank``'s GPU kernels, copies and sets, one row each in start order: ``id``, ``stream``, ``stage``,
    ``name``, ``start``, ``end``, ``role`` (``comm``: DeepEP/all-to-all kernels; ``compute``: other kernels
    of a stream without communication; ``other``), ``pair`` and ``block`` (a compute kernel's DualPipe
    block) or ``op`` (a communication stream's kernel: ``combine(B)``, ``dispatch(F)``, ...), ``host_tid``
    and ``host_ns`` (when the host issued it; -1 if unknown)."""
    ev = events.filter((pl.col("rank") == rank) & pl.col("kind").is_in(["compute", "comm", "sync", "memory"]))
    comm_streams = ev.filter(pl.col("stage").is_in(list(COMM_STAGES)))["resource"].unique().to_list()
    if not comm_streams:
        raise TracekitError(f"rank {rank}: no DeepEP or all-to-all kernels in the capture",
                            fix="import a training step that ran dispatch and combine kernels")
    host = [_host(a) for a in ev["args"]]
    k = ev.sort("ts_ns", "resource", maintain_order=True).select(
        pl.col("resource").alias("stream"), "stage", "name", pl.col("ts_ns").alias("start"),
        (pl.col("ts_ns") + pl.col("dur_ns")).alias("end"),
        pl.when(pl.col("stage").is_in(list(COMM_STAGES))).then(pl.lit("comm"))
        .when((pl.col("kind") == "compute") & ~pl.col("resource").is_in(comm_streams)).then(pl.lit("compute"))
        .otherwise(pl.lit("other")).alias("role"),
        pl.col("args").map_elements(_annotation, return_dtype=pl.Utf8).alias("ann"),
        pl.Series("host_tid", [h[0] for h in host], pl.Int64), pl.Series("lead", [h[1] for h in host], pl.Int64),
    ).with_row_index("id").with_columns(
        pl.when(pl.col("lead") >= 0).then(pl.col("start") - pl.col("lead")).otherwise(-1).alias("host_ns"))
    return k.join(_labels(k, comm_streams, rank), on="id", how="left").drop("ann", "lead").sort("id")


def _labels(k: pl.DataFrame, comm_streams: list[str], rank: int) -> pl.DataFrame:
    """Per kernel id: its layer ``pair`` and DualPipe ``block`` (compute) or ``op`` (communication
    stream), from the annotations the kernels were launched under."""
    n = len(DUALPIPE_BLOCKS)
    comp = k.filter(pl.col("role") == "compute").with_columns(_runs("ann"))
    first = comp.group_by("run", maintain_order=True).agg(pl.col("ann").first())["ann"]
    names = [ANNOTATIONS.get(a, "?") for a in first]
    if len(names) % n or any(a != b for a, b in zip(names, DUALPIPE_BLOCKS * (len(names) // n))):
        raise TracekitError(f"rank {rank}: compute blocks {names[:n + 1]}... do not repeat DualPipe's pair order "
                            f"{list(DUALPIPE_BLOCKS)}", fix="import a step profiled with DeepSeek's block annotations")
    block = pl.col("run").map_elements(lambda r: DUALPIPE_BLOCKS[r % n], return_dtype=pl.Utf8)
    comp = comp.select("id", (pl.col("run") // n).alias("pair"), block.alias("block"))
    ops = k.filter(pl.col("stream").is_in(comm_streams)).with_columns(_runs("ann"))
    seq = ops.group_by("run", maintain_order=True).agg(pl.col("ann").first())["ann"].to_list()
    m = len(COMM_OPS)
    if len(seq) != m * len(names) // n or any(a != b for a, b in zip(seq, COMM_OPS * (len(seq) // m))):
        raise TracekitError(f"rank {rank}: communication {seq[:m + 1]}... does not repeat DualPipe's order "
                            f"{list(COMM_OPS)} once per pair", fix="import a step profiled with DeepSeek's annotations")
    ops = ops.select("id", (pl.col("run") // m).alias("pair"), pl.col("ann").alias("op"))
    return pl.concat([comp.with_columns(pl.lit(None, pl.Utf8).alias("op")),
                      ops.with_columns(pl.lit(None, pl.Utf8).alias("block")).select("id", "pair", "block", "op")])


def kernel_exposure(kernels: pl.DataFrame) -> dict[str, int]:
    """Exposed communication of a kernel table (:func:`capture_kernels`, captured or replayed): the time
    communication kernels run (``comm_ns``, their union) that no compute kernel of the rank overlaps
    (``exposed_ns``); ``step_ns`` is first start to last end of communication and compute kernels. The
    one definition both sides of the validation row use."""
    iv = lambda role: kernels.filter(pl.col("role") == role).select("start", "end")  # noqa: E731
    comm, comp = iv("comm"), iv("compute")
    total = int(union_length(comm, [])["length"][0])
    hit = intersection_length(comm, comp, [])
    hidden = int(hit["length"][0]) if hit.height else 0
    both = kernels.filter(pl.col("role").is_in(["comm", "compute"]))
    return {"comm_ns": total, "exposed_ns": total - hidden, "step_ns": int(both["end"].max() - both["start"].min())}


def kernel_events(k: pl.DataFrame, rank: int = 0) -> pl.DataFrame:
    """A kernel table (captured or replayed) as events.v1 rows on its streams, for a timeline; a
    kernel's ``phase`` is its DualPipe block or communication operation."""
    df = k.select(pl.col("start").alias("ts_ns"), (pl.col("end") - pl.col("start")).alias("dur_ns"),
                  pl.lit(rank, pl.Int32).alias("rank"), pl.col("stream").alias("resource"), "stage", "name",
                  pl.coalesce("block", "op", pl.lit("")).alias("phase"),
                  pl.when(pl.col("role") == "comm").then(pl.lit("comm")).otherwise(pl.lit("compute")).alias("kind"))
    return pl.from_arrow(schemas.conform(df.to_arrow(), "events", {"source": "overlap_capture"}))


def capture_step(events: pl.DataFrame, rank: int = 0) -> CaptureStep:
    """The compute blocks, exposed communication and step time of ``rank`` in an imported capture."""
    k = capture_kernels(events, rank)
    spans = (k.filter(pl.col("role") == "compute").group_by("pair", "block", maintain_order=True)
             .agg(pl.col("start").min(), pl.col("end").max()))
    blocks = [dict(zip(g["block"], (g["end"] - g["start"]).to_list()))
              for _, g in spans.group_by("pair", maintain_order=True)]
    e = kernel_exposure(k)
    in_blocks = intersection_length(k.filter(pl.col("role") == "comm").select("start", "end"),
                                    spans.select("start", "end"), [])
    return CaptureStep(blocks=blocks, exposed_comm_ns=e["exposed_ns"],
                       exposed_comm_blocks_ns=e["comm_ns"] - int(in_blocks["length"][0]), comm_ns=e["comm_ns"],
                       step_ns=e["step_ns"])


def _edges(k: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """What each kernel waits for besides its host launch: (source kernel, kernel) pairs. Its stream's
    previous kernel; DualPipe's edges between a block and an operation (:data:`OP_AFTER`, :data:`OP_FEEDS`;
    a block starts with its first kernel and ends with its last); and, for a compute kernel that started
    after all of those and its launch, the compute kernel of another compute stream that ended last
    before it did (a CUDA event wait; Kineto does not record which event a stream waited for)."""
    src, dst = [], []
    prev = k.with_columns(pl.col("id").shift(1).over("stream").alias("p")).filter(pl.col("p").is_not_null())
    src += prev["p"].to_list()
    dst += prev["id"].to_list()
    blk = k.filter(pl.col("block").is_not_null()).group_by("pair", "block").agg(
        pl.col("id").sort_by("start").first().alias("first"), pl.col("id").sort_by("end").last().alias("last"))
    op = k.filter(pl.col("op").is_not_null()).group_by("pair", "op").agg(
        pl.col("id").sort_by("start").first().alias("first"), pl.col("id").sort_by("end").last().alias("last"))
    bfirst = {(p, b): i for p, b, i in blk.select("pair", "block", "first").iter_rows()}
    blast = {(p, b): i for p, b, i in blk.select("pair", "block", "last").iter_rows()}
    for p, o, first, last in op.select("pair", "op", "first", "last").iter_rows():
        b, d = OP_AFTER[o]
        if (p + d, b) in blast:
            src.append(blast[p + d, b]), dst.append(first)
        b, d = OP_FEEDS[o]
        if (p + d, b) in bfirst:
            src.append(last), dst.append(bfirst[p + d, b])
    start, end = k["start"].to_numpy(), k["end"].to_numpy()
    bound = np.maximum(k["host_ns"].to_numpy(), -1)
    np.maximum.at(bound, np.asarray(dst), end[np.asarray(src)])
    comp = k.filter(pl.col("role") == "compute").select("id", "stream", "end").sort("end")
    ends, ids, streams = comp["end"].to_numpy(), comp["id"].to_numpy(), comp["stream"].to_list()
    for i, s in zip(ids, streams):
        j = int(np.searchsorted(ends, start[i], side="right")) - 1
        while j >= 0 and ends[j] > bound[i] and streams[j] == s:
            j -= 1
        if j >= 0 and ends[j] > bound[i]:
            src.append(int(ids[j])), dst.append(int(i))
    return np.asarray(src, np.int64), np.asarray(dst, np.int64)


def replay_kernels(k: pl.DataFrame, dur: dict[int, int] | None = None) -> pl.DataFrame:
    """The kernels of :func:`capture_kernels` run again on the engine, kernel ``i`` lasting ``dur[i]`` ns
    (the others as captured); returns the same table with the replayed ``start`` and ``end``.

    Each stream runs its kernels in captured order. A kernel starts when its stream's previous kernel,
    its host launch and what it waits for (:func:`_edges`) are done, plus the delay the capture shows
    after the last of these (the GPU's gap between queued kernels, a launch's latency, an event
    wait's). The host: each thread issues its launches in captured order, as far apart as captured,
    except that the launch of DeepEP's uncached dispatch waits for the end of the ``notify_dispatch``
    before it (:data:`HOST_SYNC_KERNEL`), as long after it as captured. With every duration as
    captured, the replay is the capture (``tests/test_overlap_capture.py``)."""
    n = k.height
    start, end = k["start"].to_numpy(), k["end"].to_numpy()
    d = end - start
    for i, v in (dur or {}).items():
        d[i] = max(int(v), 0)
    src, dst = _edges(k)
    g = TaskGraph()
    g.add_tasks(n, res=g.resources(k["stream"].to_list()), dur=d)
    has_host = k["host_ns"].to_numpy() >= 0
    h_ids = np.flatnonzero(has_host)
    host_t = k["host_ns"].to_numpy()[h_ids]
    base = min(int(start.min()), int(host_t.min()) if h_ids.size else 0)
    host = g.add_tasks(h_ids.size, release=host_t - base)
    # a kernel's sources: its edges, its host launch; all its in-edges carry the captured delay
    all_src = np.r_[src, host]
    all_dst = np.r_[dst, h_ids]
    src_t = np.r_[end[src], host_t]
    ok = src_t <= start[all_dst]  # a source that ended after the kernel started did not hold it
    latest = np.full(n, np.iinfo(np.int64).min)
    np.maximum.at(latest, all_dst[ok], src_t[ok])
    g.add_edges(all_src[ok], all_dst[ok], (start - latest)[all_dst[ok]])
    srcless = np.setdiff1d(np.arange(n), all_dst[ok])
    g.update(srcless, release=start[srcless] - base)
    _host_chain(g, k, h_ids, host, host_t)
    sched = run(g)
    return k.with_columns(pl.Series("start", sched.start[:n] + base), pl.Series("end", sched.finish[:n] + base))


def _host_chain(g: TaskGraph, k: pl.DataFrame, h_ids: np.ndarray, host: np.ndarray, host_t: np.ndarray) -> None:
    """Each host thread's launches in order, as far apart as captured; the dispatch after a
    ``notify_dispatch`` on its stream launches after that kernel ends (as long after as captured)."""
    if h_ids.size == 0:  # an import without host launches: the streams and edges alone
        return
    tid = k["host_tid"].to_numpy()[h_ids]
    names = k["name"].to_list()
    prev_on_stream = k.with_columns(pl.col("id").shift(1).over("stream").fill_null(-1).alias("p"))["p"].to_numpy()
    end = k["end"].to_numpy()
    order = np.lexsort((h_ids, host_t, tid))
    for a, b in zip(order[:-1], order[1:]):
        if tid[a] != tid[b]:
            continue
        kid, p = int(h_ids[b]), int(prev_on_stream[h_ids[b]])
        if k["stage"][kid] == "dispatch" and p >= 0 and HOST_SYNC_KERNEL in names[p] and host_t[b] >= end[p]:
            g.add_edges(np.array([host[a], p]), np.array([host[b], host[b]]),
                        np.array([0, host_t[b] - end[p]]))  # the wait replaces the captured gap
        else:
            g.add_edges(np.array([host[a]]), np.array([host[b]]), host_t[b] - host_t[a])
    first = order[np.r_[True, tid[order][1:] != tid[order][:-1]]]
    g.update(host[np.setdiff1d(np.arange(host.size), first)], release=0)


def _replayed_phases(routing: Routing, hw: Profile, cfg: ReplayConfig):
    """Dispatch, cached dispatch and combine of ``routing``'s first layer replayed on ``hw``; with the
    resolved profile and config."""
    cfg = cfg.resolved(routing.meta.ep_size)
    hw = hw.with_overrides(cfg.hardware_overrides)
    step, layer = routing.steps_layers()[0]
    part = routing.select(step, layer)
    ((d, _, _), (c, _, _)), _, layout = _phases(part, hw, cfg, step, layer, {"flow": 1, "msg": 0})
    return d, _cached_dispatch(part, layout, hw, cfg), c, hw, cfg


def replay_capture_step(cap: CaptureStep, routing: Routing, hw: Profile, cfg: ReplayConfig) -> dict[str, object]:
    """Replay ``cap``'s compute blocks under ``dualpipe`` with dispatch and combine of ``routing``
    (one layer, reused by every pair) replayed on ``hw``; the figures beside the capture's."""
    d, cached, c, hw, cfg = _replayed_phases(routing, hw, cfg)
    R = routing.meta.ep_size
    csms = hw.gpu.sms - cfg.num_sms
    empty = np.zeros((R, 1), np.int64)
    layers = [[Slice(compute={csms: {k: np.full(R, v, np.int64) for k, v in blocks.items()}}, experts={},
                     experts_fused={}, dispatch=d.rank_finish.astype(np.int64), combine=c.rank_finish.astype(np.int64),
                     arrival=empty, tokens=empty, dispatch_cached=cached.rank_finish.astype(np.int64))]
              for blocks in cap.blocks]
    plan = build("dualpipe", layers, sms=hw.gpu.sms, num_sms=cfg.num_sms, launch_ns=hw.gpu.kernel_launch_ns)
    sched = run(plan.graph)
    exp = exposed_comm(plan_table(plan, sched))
    replayed = int(round(exp["exposed"].mean()))
    return {
        "capture": {"exposed_comm_ns": cap.exposed_comm_ns, "exposed_comm_blocks_ns": cap.exposed_comm_blocks_ns,
                    "comm_ns": cap.comm_ns, "step_ns": cap.step_ns,
                    "layers": len(cap.blocks)},
        "replay": {"exposed_comm_ns": replayed, "exposed_comm_ns_max_rank": int(exp["exposed"].max()),
                   "comm_ns": int(round(exp["comm"].mean())), "step_ns": int(sched.finish.max()),
                   "dispatch_ns": int(d.rank_finish.max()), "cached_dispatch_ns": int(cached.rank_finish.max()),
                   "combine_ns": int(c.rank_finish.max())},
        "exposed_comm_error": (replayed - cap.exposed_comm_ns) / max(cap.exposed_comm_ns, 1),
        "step_error": (int(sched.finish.max()) - cap.step_ns) / max(cap.step_ns, 1),
    }


#: The prologue of a replayed DeepEP phase (critical-path stages before its main kernel runs): in the
#: kernel replay the capture's own layout and notify kernels and host launches stand for it.
PROLOGUE_STAGES = ("launch", "layout", "notify", "cpu_sync")


def kernel_ns(result, rank: int) -> int:
    """A replayed phase's main kernel on ``rank``: its finish less the modelled prologue."""
    st = result.summary["stages"]
    return int(result.rank_finish[rank]) - sum(int(st.get(x, 0)) for x in PROLOGUE_STAGES)


def modelled_kernels(k: pl.DataFrame, dispatch: int, cached: int, combine: int) -> dict[int, int]:
    """Kernel id -> predicted ns for the capture's dispatch and combine kernels: a forward dispatch is
    a dispatch, a backward combine a cached dispatch, every combine kernel a combine. Layout and notify
    kernels keep their captured times (a notify's time is mostly its wait for the other ranks)."""
    main = k.filter(pl.col("stage").is_in(["dispatch", "combine"]))
    pick = {("dispatch", "dispatch(F)"): dispatch, ("dispatch", "combine(B)"): cached}
    return {int(i): pick.get((st, op), combine) for i, st, op in main.select("id", "stage", "op").iter_rows()}


def replay_capture_kernels(k: pl.DataFrame, routing: Routing, hw: Profile, cfg: ReplayConfig,
                           rank: int = 0) -> dict[str, object]:
    """The capture's kernels (:func:`capture_kernels` of ``rank``) replayed with its dispatch and combine
    kernels predicted: dispatch, cached dispatch and combine of ``routing`` (one layer) replayed on
    ``hw``, ``rank``'s kernel time each; everything else as captured (:func:`replay_kernels`). The
    capture's and the replay's exposed communication and step time by :func:`kernel_exposure`."""
    d, cached, c, _, _ = _replayed_phases(routing, hw, cfg)
    model = {"dispatch_ns": kernel_ns(d, rank), "cached_dispatch_ns": kernel_ns(cached, rank),
             "combine_ns": kernel_ns(c, rank)}
    r = replay_kernels(k, modelled_kernels(k, model["dispatch_ns"], model["cached_dispatch_ns"], model["combine_ns"]))
    cap, rep = kernel_exposure(k), kernel_exposure(r)
    main = (k.filter(pl.col("stage").is_in(["dispatch", "combine"]))
            .with_columns((pl.col("end") - pl.col("start")).alias("d")))
    captured = {f"{key}_ns": int(main.filter(m)["d"].mean()) for key, m in (
        ("dispatch", (pl.col("stage") == "dispatch") & (pl.col("op") == "dispatch(F)")),
        ("cached_dispatch", (pl.col("stage") == "dispatch") & (pl.col("op") == "combine(B)")),
        ("combine", pl.col("stage") == "combine"))}
    return {"capture": {**cap, "mean_kernel": captured}, "replay": {**rep, "kernel": model},
            "exposed_comm_error": (rep["exposed_ns"] - cap["exposed_ns"]) / max(cap["exposed_ns"], 1),
            "step_error": (rep["step_ns"] - cap["step_ns"]) / max(cap["step_ns"], 1), "kernels": r}
