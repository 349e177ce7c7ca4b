"""A captured DualPipe training step against its replay: exposed communication and step time.

The capture (events imported by ``tracekit import kineto``) gives, for one rank, the compute blocks
of each overlapped forward-backward pair: the kernels of a compute stream in issue order carry the
user annotation they were launched under (``attn(F)``, ``mlp(B)``, ``mlp(W)``, ``mlp(F)``, the
unannotated backward of attention, ``attn(W)``), so a run of kernels of one annotation is one block
and its span (first start to last end, launch gaps included) is the block's time. The replay keeps
those compute times and arranges them with the ``dualpipe`` schedule around dispatch and combine
replayed on the modelled cluster for the same workload (EP, tokens, hidden, top-k): communication
is predicted, compute is taken as measured. Both sides' exposed communication (communication time
no compute kernel overlaps) uses the same interval arithmetic. Pure: no file I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import polars as pl

from tracekit.analysis.intervals import intersection_length, union_length
from tracekit.engine import run
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


@dataclass(frozen=True)
class CaptureStep:
    """What one rank's captured step shows."""

    blocks: list[dict[str, int]]  # per layer pair: block -> span ns
    exposed_comm_ns: int  # communication no compute kernel overlaps
    exposed_comm_blocks_ns: int  # ... no compute block (first to last kernel of a block) overlaps: the replay's view
    comm_ns: int
    step_ns: int


def _annotation(args: str) -> str:
    return json.loads(args).get("annotation", "") if args else ""


def capture_step(events: pl.DataFrame, rank: int = 0) -> CaptureStep:
    """The compute blocks, exposed communication and step time of ``rank`` in an imported capture."""
    ev = events.filter((pl.col("rank") == rank) & pl.col("kind").is_in(["compute", "comm", "sync"]))
    comm = ev.filter(pl.col("stage").is_in(list(COMM_STAGES)))
    if comm.height == 0:
        raise TracekitError(f"rank {rank}: no DeepEP or all-to-all kernels in the capture",
                            fix="import a training step that ran dispatch and combine kernels")
    comm_streams = comm["resource"].unique().to_list()
    compute = ev.filter((pl.col("kind") == "compute") & ~pl.col("resource").is_in(comm_streams)).sort("ts_ns")
    compute = compute.with_columns(pl.col("args").map_elements(_annotation, return_dtype=pl.Utf8).alias("ann"))
    runs = (compute.with_columns((pl.col("ann") != pl.col("ann").shift(1)).fill_null(True).cum_sum().alias("run"))
            .group_by("run", maintain_order=True)
            .agg(pl.col("ann").first(), pl.col("ts_ns").min().alias("t0"),
                 (pl.col("ts_ns") + pl.col("dur_ns")).max().alias("t1")))
    names = [ANNOTATIONS.get(a, "?") for a in runs["ann"]]
    n = len(DUALPIPE_BLOCKS)
    if len(names) % n or any(a != b for a, b in zip(names, DUALPIPE_BLOCKS * (len(names) // n))):
        raise TracekitError(f"rank {rank}: compute blocks {names[:n + 1]}... do not repeat DualPipe's pair order "
                            f"{list(DUALPIPE_BLOCKS)}", fix="import a step profiled with DeepSeek's block annotations")
    spans = (runs["t1"] - runs["t0"]).to_list()
    blocks = [dict(zip(DUALPIPE_BLOCKS, spans[i:i + n])) for i in range(0, len(spans), n)]
    iv = lambda d: d.select(pl.col("ts_ns").alias("start"), (pl.col("ts_ns") + pl.col("dur_ns")).alias("end"))  # noqa: E731
    total = int(union_length(iv(comm), [])["length"][0])
    hidden = int(intersection_length(iv(comm), iv(compute), [])["length"][0])
    in_blocks = int(intersection_length(iv(comm), runs.select(pl.col("t0").alias("start"), pl.col("t1").alias("end")),
                                        [])["length"][0])
    both = pl.concat([iv(comm), iv(compute)])
    return CaptureStep(blocks=blocks, exposed_comm_ns=total - hidden, exposed_comm_blocks_ns=total - in_blocks,
                       comm_ns=total,
                       step_ns=int(both["end"].max() - both["start"].min()))


def replay_capture_step(cap: CaptureStep, routing: Routing, hw: Profile, cfg: ReplayConfig) -> dict[str, object]:
    """Replay ``cap``'s compute blocks under ``dualpipe`` with dispatch and combine of ``routing``
    (one layer, reused by every pair) replayed on ``hw``; the figures beside the capture's."""
    cfg = cfg.resolved(routing.meta.ep_size)
    hw = hw.with_overrides(cfg.hardware_overrides)
    step, layer = routing.steps_layers()[0]
    part = routing.select(step, layer)
    res, _, layout = _phases(part, hw, cfg, step, layer, {"flow": 1, "msg": 0})
    cached = _cached_dispatch(part, layout, hw, cfg)
    R = routing.meta.ep_size
    csms = hw.gpu.sms - cfg.num_sms
    (d, _, _), (c, _, _) = res
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
