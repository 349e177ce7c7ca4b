"""One side of a diff: what a timeline measures, computed from its events (and its counters,
summary and traffic where it has them). :mod:`tracekit.analysis.diff` sets two profiles side by
side; nothing here looks at the other side, so swapping the sides of a diff swaps the profiles.

Definitions (all times integer nanoseconds):

* **phase instance**: the rows of one (phase, step, layer); its span runs from its first
  operation's start to its last operation's end. Phases are the ``phase`` values of
  communication rows (kind comm or sync), ``compute`` and empty excluded.
* **rank finish**: end of the last operation on a rank in a phase instance, minus the instance's
  start.
* **exposed communication** (per step and rank): time covered by communication (kind comm or
  sync) and not by compute (kind compute), by interval arithmetic on that rank's rows.
* **utilisation**: time a resource is busy (union of its operations) over the phase's total span.
* **traffic**: bytes between rank pairs; from the capture's traffic table, or from transfer rows
  (``src_rank``/``dst_rank`` set), counting each message once per hop.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from tracekit.analysis.critical import COLUMNS as CRITICAL_COLUMNS
from tracekit.analysis.critical import WAIT, composition, critical_path
from tracekit.analysis.intervals import intersection_length, lengths, union, union_length
from tracekit.analysis.match_keys import OpKeys, op_keys
from tracekit.analysis.matching import MATCH_COLUMNS, NameMap, operation_names
from tracekit.errors import TracekitError
from tracekit.resources import ResourcePath

COMM_KINDS = ("comm", "sync")
COMPUTE_KIND = "compute"
#: stall causes always shown (replays record them; a capture has none)
STALL_CAUSES = ("credit", "send_queue", "cq", "switch_buffer")
_NOT_PHASES = ("", "compute")
_NOT_RESOURCES = ("expert_queue",)
_INSTANCE = ["phase", "step", "layer"]
#: columns the per-phase measures read (selected before filtering: a filter copies what it keeps)
_INPHASE_COLUMNS = ("phase", "step", "layer", "stage", "ts_ns", "dur_ns", "bytes", "tokens", "rank", "resource",
                    "stall_ns", "stall_cause")
#: ``Profile.ops`` columns held as categorical (few distinct names, millions of rows)
_CATEGORICAL_OPS = ("phase", "stage", "op", "kind")
_RANK_PREFIX = re.compile(r"^node\d+/rank\d+/")
_DIGITS = re.compile(r"\d+")


@dataclass(frozen=True)
class Trace:
    """One side of a diff, in memory: events (events.v1) and what may come with them."""

    events: pl.DataFrame
    counters: pl.DataFrame | None = None
    summary: dict[str, Any] | None = None
    traffic: pl.DataFrame | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    label: str = ""


@dataclass(frozen=True)
class TailCause:
    """Why one rank sets a phase's tail."""

    phase: str
    rank: int
    finish_ns: int
    median_finish_ns: int
    step: int
    layer: int
    dominant_stage: str
    stage_share: float
    dominant_resource: str
    resource_share: float
    bytes_in: int
    bytes_in_median: float
    top_expert: str
    top_expert_tokens: int
    mean_expert_tokens: float

    def sentence(self) -> str:
        """One line naming the rank and its cause."""
        parts = [f"rank {self.rank} sets the {self.phase} tail ({_us(self.finish_ns)} vs median "
                 f"{_us(self.median_finish_ns)})"]
        if self.dominant_stage:
            parts.append(f"its critical path is {self.stage_share:.0%} {self.dominant_stage}"
                         + (f", mostly on {self.dominant_resource}" if self.dominant_resource else ""))
        if self.bytes_in_median > 0:
            parts.append(f"it receives {self.bytes_in / self.bytes_in_median:.2f}x the median rank's bytes")
        if self.top_expert and self.mean_expert_tokens > 0:
            parts.append(f"its busiest expert ({self.top_expert}) gets {self.top_expert_tokens} tokens "
                         f"({self.top_expert_tokens / self.mean_expert_tokens:.2f}x the mean expert)")
        return "; ".join(parts)


def _us(ns: float) -> str:
    return f"{ns / 1e3:.1f} us"


def resource_kind(path: str) -> str:
    """Kind of a resource path, without node/rank prefix and numbers: ``node0/rank3/nic0/tx`` ->
    ``nic/tx``, ``node0/rank3/sm/ch2/a`` -> ``sm``, ``switch0/port5`` -> ``switch/port``,
    ``node0/rank1/stream7`` -> ``stream`` (:meth:`ResourcePath.kind`)."""
    return ResourcePath.parse(path).kind()


@dataclass
class Profile:
    """What one timeline measures; see the module docstring for definitions."""

    label: str
    source: str
    ranks: list[int]
    phases: list[str]
    ops: pl.DataFrame | None  # events without annotations: the columns matching reads (MATCH_COLUMNS), ``op``
    # included; phase, stage, op and kind categorical. None where ``op_keys`` holds them
    instances: pl.DataFrame  # phase, step, layer, start_ns, end_ns, span_ns
    stages: pl.DataFrame  # phase, stage, step, layer, count, busy_ns, bytes, tokens
    finish: pl.DataFrame  # phase, step, layer, rank, finish_ns
    exposure: pl.DataFrame  # step, rank, comm_ns, compute_ns, overlap_ns, exposed_ns, comm_busy_ns, compute_busy_ns
    critical: pl.DataFrame  # phase, stage, ns (events-derived, summed over steps)
    critical_engine: pl.DataFrame | None  # phase, stage, ns from the replay summary, if any
    critical_resources: pl.DataFrame  # phase, resource, ns on the events-derived path
    traffic: pl.DataFrame  # phase, src_rank, dst_rank, bytes, tokens
    resources: pl.DataFrame  # phase, resource, kind, busy_ns, utilisation
    stalls: pl.DataFrame  # phase, cause, ns, count
    stalls_recorded: bool
    counters: pl.DataFrame  # counter, kind, series, max, mean, total
    experts: pl.DataFrame  # rank, expert, tokens (dispatch expert queues)
    payload_bytes: dict[str, int | None]
    dtypes: dict[str, str | None]
    tails: dict[str, TailCause] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    op_keys: OpKeys | None = None  # the operations as matching's packed keys (when they fit), instead of ``ops``


def _check(events: pl.DataFrame, label: str) -> pl.DataFrame:
    need = {"ts_ns", "dur_ns", "rank", "resource", "stage", "name", "phase", "kind", "step", "layer"}
    missing = sorted(need - set(events.columns))
    if missing:
        raise TracekitError(f"events lack column(s) {', '.join(missing)}", where=label,
                            fix="pass an events.v1 table (tracekit replay or tracekit import writes one)")
    # filter (a copy of every column) only where there is something to drop
    annotated = events.select((pl.col("kind") == "annotation").any()).item()  # an expression: narrow codes too
    ev = events.filter(pl.col("kind") != "annotation") if annotated else events
    if ev.height == 0:
        raise TracekitError("the trace has no operations (empty, or annotations only)", where=label,
                            fix="pass a trace with events: a replay output or an imported capture")
    if (ev["dur_ns"] < 0).any():
        row = int(ev.with_row_index().filter(pl.col("dur_ns") < 0)["index"][0])
        raise TracekitError(f"negative duration at row {row}", where=f"{label}: column dur_ns",
                            fix="the trace is malformed")
    return ev


def profile(trace: Trace, *, names: NameMap | None = None) -> Profile:
    """Measure one timeline. Raises :class:`TracekitError` for an unusable trace."""
    label = trace.label or "trace"
    ev = _check(trace.events, label)
    ev = operation_names(ev, names)
    end = pl.col("ts_ns") + pl.col("dur_ns")
    # select, then filter: a frame's filter copies every column it keeps (memory on big traces)
    comm = ev.select("phase", "kind").filter(pl.col("kind").is_in(COMM_KINDS) & ~pl.col("phase").is_in(_NOT_PHASES))
    phases = sorted(comm["phase"].unique().to_list(), key=phase_order)
    ranks = sorted(int(r) for r in ev["rank"].filter(ev["rank"] >= 0).unique().to_list())
    exposure = _exposure(ev)
    critical, crit_res = _critical(ev)
    traffic = _traffic(ev, trace.traffic, phases)
    # group-bys of the in-phase rows by the streaming engine: no copy of the rows (memory on big traces)
    inphase = ev.lazy().select(c for c in _INPHASE_COLUMNS if c in ev.columns).filter(pl.col("phase").is_in(phases))
    instances = _collect(inphase.group_by(_INSTANCE).agg(pl.col("ts_ns").min().alias("start_ns"),
                                                         end.max().alias("end_ns"))
                         ).with_columns((pl.col("end_ns") - pl.col("start_ns")).alias("span_ns")).sort(_INSTANCE)
    stages = _collect(inphase.group_by("phase", "stage", "step", "layer")
                      .agg(pl.len().cast(pl.Int64).alias("count"), pl.col("dur_ns").sum().alias("busy_ns"),
                           pl.col("bytes").sum().alias("bytes"), pl.col("tokens").sum().alias("tokens"))
                      ).sort("phase", "stage", "step", "layer")
    finish = (_collect(inphase.select(*_INSTANCE, "rank", "ts_ns", "dur_ns").filter(pl.col("rank") >= 0)
                       .group_by(*_INSTANCE, "rank").agg(end.max().alias("_end")))
              .join(instances.select(*_INSTANCE, "start_ns"), on=_INSTANCE)
              .select(*_INSTANCE, "rank", (pl.col("_end") - pl.col("start_ns")).alias("finish_ns"))
              .sort(*_INSTANCE, "rank"))
    resources = _resources(inphase, instances, phases)
    stalls, recorded = _stalls(inphase, phases, trace.meta)
    del inphase
    experts = _experts(ev)
    summary = trace.summary if isinstance(trace.summary, Mapping) else None
    payload, dtypes, engine = _from_summary(summary, phases, trace.meta)
    prof = Profile(
        label=label, source=str(trace.meta.get("source", "")), ranks=ranks, phases=phases, ops=ev,
        instances=instances, stages=stages, finish=finish, exposure=exposure, critical=critical,
        critical_engine=engine, critical_resources=crit_res, traffic=traffic, resources=resources, stalls=stalls,
        stalls_recorded=recorded, counters=_counters(trace.counters), experts=experts, payload_bytes=payload,
        dtypes=dtypes, summary=summary,
    )
    prof.tails = {p: _tail_cause(prof, p, ev) for p in phases if finish.filter(pl.col("phase") == p).height}
    # what matching reads (the rest is freed), kept while the other side is measured: packed keys and
    # durations where they fit, else the columns with the names as categorical codes
    prof.op_keys = op_keys(ev)
    prof.ops = None if prof.op_keys is not None else ev.select(c for c in MATCH_COLUMNS if c in ev.columns).with_columns(
        pl.col(c).cast(pl.Categorical) for c in _CATEGORICAL_OPS if c in ev.columns).with_columns(
        pl.col(c).cast(pl.Int64) for c in ("msg_id",) if c in ev.columns)  # as the other side's, however it was read
    return prof


def _collect(lf: pl.LazyFrame) -> pl.DataFrame:
    """A query on the events by polars' streaming engine (in batches, without copies of the rows it
    reads: memory on big traces), names as strings (:func:`_plain`)."""
    return _plain(lf.collect(engine="streaming"))


def _plain(df: pl.DataFrame) -> pl.DataFrame:
    """``df`` with categorical columns (names read as codes: memory on big traces) as strings, so
    that a measure's table sorts, joins and prints as strings whatever the input held."""
    return df.with_columns(pl.col(pl.Categorical).cast(pl.String))


def phase_order(p: str) -> tuple[int, str]:
    """Sort key of phase names: dispatch, combine, then the rest by name."""
    return ({"dispatch": 0, "combine": 1}.get(p, 2), p)


def _exposure(ev: pl.DataFrame) -> pl.DataFrame:
    """Exposure per (step, rank), computed for a batch of ranks at a time (of about
    :data:`EXPOSURE_BATCH_ROWS` rows: the interval unions' intermediates scale with a batch, not
    the trace); each (step, rank) is measured on its own rows only, so batches change nothing."""
    ranks = ev["rank"].filter(ev["rank"] >= 0).unique().sort().to_list()
    k = max(1, len(ranks) * EXPOSURE_BATCH_ROWS // max(ev.height, 1))
    batches = [ranks[i:i + k] for i in range(0, len(ranks), k)] or [[]]
    parts = [_exposure_of(ev.lazy().filter(pl.col("rank").is_in(b))) for b in batches]
    return parts[0] if len(parts) == 1 else pl.concat(parts).sort("step", "rank")


#: rows of events per batch of ranks in :func:`_exposure`
EXPOSURE_BATCH_ROWS = 1_000_000


def _exposure_of(rows: pl.LazyFrame) -> pl.DataFrame:
    by = ["step", "rank"]
    cols = [*by, pl.col("ts_ns").alias("start"), (pl.col("ts_ns") + pl.col("dur_ns")).alias("end"), "dur_ns"]
    r = rows.filter(pl.col("rank") >= 0)  # by the streaming engine: only the selected columns are copied
    comm = r.filter(pl.col("kind").is_in(COMM_KINDS)).select(cols).collect(engine="streaming")
    comp = r.filter(pl.col("kind") == COMPUTE_KIND).select(cols).collect(engine="streaming")
    keys = r.select(by).unique().collect(engine="streaming")
    ucomm, ucomp = union(comm, by), union(comp, by)  # each once: the lengths and the overlap read them
    out = (keys.join(lengths(ucomm, by).rename({"length": "comm_ns"}), on=by, how="left")
           .join(lengths(ucomp, by).rename({"length": "compute_ns"}), on=by, how="left")
           .join(intersection_length(ucomm, ucomp, by).rename({"length": "overlap_ns"}), on=by, how="left")
           .join(comm.group_by(by).agg(pl.col("dur_ns").sum().alias("comm_busy_ns")), on=by, how="left")
           .join(comp.group_by(by).agg(pl.col("dur_ns").sum().alias("compute_busy_ns")), on=by, how="left"))
    out = out.with_columns(pl.col("comm_ns", "compute_ns", "overlap_ns", "comm_busy_ns", "compute_busy_ns")
                           .fill_null(0).cast(pl.Int64))
    return (out.with_columns((pl.col("comm_ns") - pl.col("overlap_ns")).alias("exposed_ns"))
            .select("step", "rank", "comm_ns", "compute_ns", "overlap_ns", "exposed_ns", "comm_busy_ns",
                    "compute_busy_ns").sort(by))


def _critical(ev: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Events-derived critical path of each step's whole timeline, summed over steps."""
    comps, res = [], []
    lean = ev.select(c for c in ("step", *CRITICAL_COLUMNS) if c in ev.columns)
    # one step needs no partition (a copy of every column)
    parts = [lean] if lean["step"].n_unique() <= 1 else lean.partition_by("step", maintain_order=True)
    for part in parts:
        path = critical_path(part)
        comps.append(composition(path))
        res.append(path.group_by("phase", "resource").agg(pl.col("op_ns").sum().alias("ns")))
    c = pl.concat(comps).group_by("phase", "stage").agg(pl.col("ns").sum()).sort("phase", "stage")
    r = pl.concat(res).group_by("phase", "resource").agg(pl.col("ns").sum()).sort("phase", "resource")
    return c, r


def _traffic(ev: pl.DataFrame, table: pl.DataFrame | None, phases: list[str]) -> pl.DataFrame:
    schema = {"phase": pl.String, "src_rank": pl.Int32, "dst_rank": pl.Int32, "bytes": pl.Int64, "tokens": pl.Int64}
    if table is not None and table.height and {"phase", "src_rank", "dst_rank", "bytes"} <= set(table.columns):
        t = table if "tokens" in table.columns else table.with_columns(pl.lit(0).alias("tokens"))
        out = t.group_by("phase", "src_rank", "dst_rank").agg(pl.col("bytes").sum(), pl.col("tokens").sum())
        return out.cast(schema).sort("phase", "src_rank", "dst_rank")  # type: ignore[arg-type]
    hops = ev.lazy().select("phase", "step", "layer", "msg_id", "src_rank", "dst_rank", "bytes", "tokens").filter(
        (pl.col("src_rank") >= 0) & (pl.col("dst_rank") >= 0) & (pl.col("bytes") > 0))
    outs = []
    for p in phases:  # one phase at a time (its rows only in memory); phases share no message and no row
        x = hops.filter(pl.col("phase") == p)
        per_msg = _per_message(x.filter(pl.col("msg_id") >= 0).collect(engine="streaming"))
        loose = x.filter(pl.col("msg_id") < 0).select("phase", "src_rank", "dst_rank", "bytes", "tokens").collect(
            engine="streaming")
        both = pl.concat([per_msg.select(loose.columns), loose])
        outs.append(both.group_by("phase", "src_rank", "dst_rank").agg(pl.col("bytes").sum(), pl.col("tokens").sum()))
    out = pl.concat(outs).cast(schema) if outs else pl.DataFrame(schema=schema)  # type: ignore[arg-type]
    return out.sort("phase", "src_rank", "dst_rank")


_MESSAGE = ["phase", "step", "layer", "msg_id", "src_rank", "dst_rank"]


def _per_message(x: pl.DataFrame) -> pl.DataFrame:
    """One row per message (its ``_MESSAGE`` key): phase, src_rank, dst_rank and its largest bytes
    and tokens over its hops; by sorting packed integer keys where they fit (a hash group-by on
    six keys held +1.2 GB on an EP64 prefill trace), else by :func:`_per_message_polars`."""
    fast = _per_message_numpy(x)
    return fast if fast is not None else _per_message_polars(x)


def _per_message_polars(x: pl.DataFrame) -> pl.DataFrame:
    """The reference form of :func:`_per_message`."""
    return (x.group_by(_MESSAGE).agg(pl.col("bytes").max(), pl.col("tokens").max())
            .drop("step", "layer", "msg_id"))


def _per_message_numpy(x: pl.DataFrame) -> pl.DataFrame | None:
    if x.height == 0 or any(x[c].null_count() for c in (*_MESSAGE, "bytes", "tokens")):
        return None
    key, bits = np.zeros(x.height, np.int64), 0
    for c in _MESSAGE:
        s = x[c].cast(pl.Categorical) if x[c].dtype == pl.String else x[c]
        s = s.to_physical() if isinstance(s.dtype, pl.Categorical) else s  # codes, as narrow as stored
        v = s.to_numpy()  # as stored: widened as it is added (no int64 copy of every column)
        lo = int(v.min())
        width = max(int(v.max()) - lo, 0).bit_length() or 1
        bits += width
        if bits > 62:
            return None
        key <<= width
        key += v
        key -= lo
    order = np.argsort(key, kind="stable")
    key = key[order]
    start = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    del key
    first = order[start]
    return x[first].select("phase", "src_rank", "dst_rank").with_columns(
        pl.Series("bytes", np.maximum.reduceat(x["bytes"].to_numpy()[order], start)),
        pl.Series("tokens", np.maximum.reduceat(x["tokens"].to_numpy()[order], start)))


def _resources(inphase: pl.LazyFrame, instances: pl.DataFrame, phases: list[str]) -> pl.DataFrame:
    by = ["phase", "resource"]
    x = inphase.filter(~pl.col("stage").is_in(_NOT_RESOURCES)).select(
        *by, pl.col("ts_ns").alias("start"), (pl.col("ts_ns") + pl.col("dur_ns")).alias("end"))
    # one phase at a time (its rows and the union's arrays only in memory); a group is in one phase
    parts = [_plain(union_length(x.filter(pl.col("phase") == p).collect(engine="streaming"), by)) for p in phases]
    busy = pl.concat(parts or [_plain(union_length(x.collect(engine="streaming"), by))]).rename({"length": "busy_ns"})
    span = instances.group_by("phase").agg(pl.col("span_ns").sum().alias("_span"))
    out = busy.join(span, on="phase").with_columns(
        (pl.col("busy_ns") / pl.max_horizontal(pl.col("_span"), pl.lit(1))).alias("utilisation"))
    kinds = out.select(pl.col("resource").unique())
    kinds = kinds.with_columns(pl.col("resource").map_elements(resource_kind, return_dtype=pl.String).alias("kind"))
    return out.join(kinds, on="resource").select(*by, "kind", "busy_ns", "utilisation").sort(by)


def _stalls(inphase: pl.LazyFrame, phases: list[str], meta: dict[str, Any]) -> tuple[pl.DataFrame, bool]:
    names = inphase.collect_schema().names()
    have = "stall_ns" in names and "stall_cause" in names
    recorded = str(meta.get("source", "")) == "replay" or (
        have and bool(inphase.select((pl.col("stall_ns") > 0).any()).collect().item()))
    rows = []
    got = (_collect(inphase.filter(pl.col("stall_ns") > 0).group_by("phase", "stall_cause").agg(
        pl.col("stall_ns").sum().alias("ns"), pl.len().cast(pl.Int64).alias("count"))) if have else None)
    seen = {} if got is None else {(p, c): (n, k) for p, c, n, k in got.iter_rows()}
    causes = list(STALL_CAUSES) + sorted({c for _, c in seen if c and c not in STALL_CAUSES})
    for p in phases:
        for c in causes:
            n, k = seen.get((p, c), (0, 0))
            rows.append((p, c, int(n), int(k)))
    return pl.DataFrame(rows, schema={"phase": pl.String, "cause": pl.String, "ns": pl.Int64, "count": pl.Int64},
                        orient="row"), recorded


def _experts(ev: pl.DataFrame) -> pl.DataFrame:
    x = ev.lazy().filter(pl.col("stage") == "expert_queue")
    return (_collect(x.group_by("rank", "resource").agg(pl.col("tokens").sum()))
            .select("rank", pl.col("resource").str.replace(r"^.*/", "").alias("expert"), "tokens")
            .sort("rank", "expert"))


def _counters(counters: pl.DataFrame | None) -> pl.DataFrame:
    """Per counter and resource kind: series, peak, time-weighted mean, and a total: for
    ``pfc*`` counters the time the value was above zero (pause time, ns); for ``ecn*`` counters
    the sum over resources of the last value (a running count of marks); otherwise 0."""
    schema = {"counter": pl.String, "kind": pl.String, "series": pl.Int64, "max": pl.Float64, "mean": pl.Float64,
              "total": pl.Float64}
    if counters is None or counters.height == 0:
        return pl.DataFrame(schema=schema)
    c = counters.sort("resource", "counter", "ts_ns")
    c = c.with_columns(pl.col("ts_ns").shift(-1).over("resource", "counter").alias("_next"))
    c = c.with_columns((pl.col("_next") - pl.col("ts_ns")).fill_null(0).alias("_dt"))
    kinds = c.select(pl.col("resource").unique())
    kinds = kinds.with_columns(pl.col("resource").map_elements(resource_kind, return_dtype=pl.String).alias("kind"))
    c = c.join(kinds, on="resource")
    per = c.group_by("counter", "kind", "resource").agg(
        pl.col("value").max().alias("max"),
        ((pl.col("value") * pl.col("_dt")).sum() / pl.max_horizontal(pl.col("_dt").sum(), pl.lit(1))).alias("mean"),
        (pl.col("_dt") * (pl.col("value") > 0)).sum().cast(pl.Float64).alias("_above"),
        pl.col("value").last().alias("_last"),
    )
    total = (pl.when(pl.col("counter").str.starts_with("pfc")).then(pl.col("_above"))
             .when(pl.col("counter").str.starts_with("ecn")).then(pl.col("_last")).otherwise(0.0))
    # sorted, so that float sums over resources add up in the same order every time
    out = per.with_columns(total.alias("_total")).sort("counter", "kind", "resource").group_by(
        "counter", "kind", maintain_order=True).agg(
        pl.len().cast(pl.Int64).alias("series"), pl.col("max").max(), pl.col("mean").mean(),
        pl.col("_total").sum().alias("total"))
    return out.cast(schema).sort("counter", "kind")  # type: ignore[arg-type]


def _from_summary(summary: dict[str, Any] | None, phases: list[str], meta: dict[str, Any]
                  ) -> tuple[dict[str, int | None], dict[str, str | None], pl.DataFrame | None]:
    payload: dict[str, int | None] = {p: None for p in phases}
    dtypes: dict[str, str | None] = {p: None for p in phases}
    rows = []
    if summary:
        work = summary.get("workload") or {}
        for p in phases:
            d = summary.get(p)
            if isinstance(d, dict):
                if isinstance(d.get("bytes"), int):
                    payload[p] = int(d["bytes"])
                for s, ns in (d.get("stages") or {}).items():
                    if isinstance(ns, (int, float)):
                        rows.append((p, str(s), int(ns)))
            dt = work.get(f"{p}_dtype")
            dtypes[p] = str(dt) if dt else None
    engine = (pl.DataFrame(rows, schema={"phase": pl.String, "stage": pl.String, "ns": pl.Int64}, orient="row")
              .sort("phase", "stage") if rows else None)
    return payload, dtypes, engine


def _tail_cause(prof: Profile, phase: str, ev: pl.DataFrame) -> TailCause:
    f = prof.finish.filter(pl.col("phase") == phase)
    per_rank = f.group_by("rank").agg(pl.col("finish_ns").mean().alias("mean")).sort("rank")
    top = per_rank.sort(["mean", "rank"], descending=[True, False]).row(0, named=True)
    rank = int(top["rank"])
    median = float(np.median(per_rank["mean"].to_numpy()))
    worst = f.filter(pl.col("rank") == rank).sort(["finish_ns", "step", "layer"], descending=[True, False, False]
                                                  ).row(0, named=True)
    step, layer = int(worst["step"]), int(worst["layer"])
    inst = ev.select(c for c in ("step", "layer", *CRITICAL_COLUMNS) if c in ev.columns).filter(
        (pl.col("phase") == phase) & (pl.col("step") == step) & (pl.col("layer") == layer))
    inst = inst.with_row_index("_r")
    mine = inst.filter(pl.col("rank") == rank).with_columns((pl.col("ts_ns") + pl.col("dur_ns")).alias("_e"))
    last = int(mine.sort(["_e", "_r"], descending=[True, True])["_r"][0])
    path = critical_path(inst.drop("_r"), end_row=last)
    ops = path.group_by("stage").agg(pl.col("op_ns").sum()).sort(["op_ns", "stage"], descending=[True, False])
    span = int(path["op_ns"].sum() + path["wait_ns"].sum()) or 1
    stage, stage_ns = ("", 0)
    if ops.height:
        stage, stage_ns = ops.row(0)
    waits = int(path["wait_ns"].sum())
    if waits > stage_ns:
        stage, stage_ns = WAIT, waits
    res = path.group_by("resource").agg(pl.col("op_ns").sum()).sort(["op_ns", "resource"], descending=[True, False])
    resource, res_ns = res.row(0) if res.height else ("", 0)
    t = prof.traffic.filter(pl.col("phase") == phase)
    bytes_in = t.group_by("dst_rank").agg(pl.col("bytes").sum())
    got = dict(zip(bytes_in["dst_rank"].to_list(), bytes_in["bytes"].to_list()))
    all_in = np.array([got.get(r, 0) for r in prof.ranks], dtype=np.float64)
    ex = prof.experts.filter(pl.col("rank") == rank).sort(["tokens", "expert"], descending=[True, False])
    top_expert, top_tokens = (ex.row(0)[1], int(ex.row(0)[2])) if ex.height else ("", 0)
    work = (prof.summary or {}).get("workload") or {}
    if top_expert and work.get("num_experts") and work.get("ep_size") and top_expert[6:].isdigit():
        local = int(top_expert[6:])
        top_expert = f"expert {rank * (int(work['num_experts']) // int(work['ep_size'])) + local}, local {local}"
    mean_tokens = float(prof.experts["tokens"].mean()) if prof.experts.height else 0.0
    return TailCause(
        phase=phase, rank=rank, finish_ns=int(round(top["mean"])), median_finish_ns=int(round(median)), step=step,
        layer=layer, dominant_stage=str(stage), stage_share=stage_ns / span, dominant_resource=str(resource),
        resource_share=res_ns / span, bytes_in=int(got.get(rank, 0)),
        bytes_in_median=float(np.median(all_in)) if all_in.size else 0.0, top_expert=str(top_expert),
        top_expert_tokens=top_tokens, mean_expert_tokens=mean_tokens,
    )
