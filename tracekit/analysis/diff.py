"""Timeline-aware diff of two traces: what moved, where and why.

:func:`diff_traces` measures each side (:func:`tracekit.analysis.profile.profile`) and sets the
measures side by side in polars tables. Every comparison column comes as ``<m>_before``,
``<m>_after``, ``<m>_delta`` (after - before) and, where it means something, ``<m>_rel``
(delta / before). Swapping the sides swaps before and after and negates every delta.

Noise: where a side has several instances of a measure (phase instances, steps), the change of
its mean gets a bootstrap interval (:mod:`tracekit.analysis.noise`), and ``change`` says
``same`` (no difference at all), ``noise`` (the interval contains 0), ``up`` or ``down``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from tracekit.analysis import noise
from tracekit.analysis.matching import NameMap, matching_table
from tracekit.analysis.profile import Profile, TailCause, Trace, phase_order, profile

#: a rank "moved" when its finish changed by at least this fraction of the phase's median finish
MOVED_FRACTION = 0.02


@dataclass
class TraceDiff:
    """Two profiles side by side; see the module docstring for the column conventions."""

    before: Profile
    after: Profile
    phases: pl.DataFrame
    stages: pl.DataFrame
    critical: pl.DataFrame
    critical_source: str
    ranks: pl.DataFrame
    tails: pl.DataFrame
    tail_causes: dict[str, dict[str, TailCause]]
    exposure: pl.DataFrame
    exposure_totals: pl.DataFrame
    resources: pl.DataFrame
    bottlenecks: pl.DataFrame
    stalls: pl.DataFrame
    counters: pl.DataFrame
    matching: pl.DataFrame
    traffic: pl.DataFrame
    warnings: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    schedule: pl.DataFrame | None = None  # both sides replayed with --schedule: the causes of a TPOT change
    fabric_causes: list = field(default_factory=list)  # typed fabric causes (tracekit.fabric.tables.EcmpCollision)

    def tables(self) -> dict[str, pl.DataFrame]:
        """Every table by name, in report order."""
        return {
            "phases": self.phases, "stages": self.stages, "critical_path": self.critical, "tails": self.tails,
            "ranks": self.ranks, "exposure": self.exposure, "exposure_totals": self.exposure_totals,
            "resources": self.resources, "bottlenecks": self.bottlenecks, "stalls": self.stalls,
            "counters": self.counters, "matching": self.matching, "traffic": self.traffic,
            **({"schedule": self.schedule} if self.schedule is not None else {}),
        }


def _change(delta: pl.Expr, low: pl.Expr, high: pl.Expr) -> pl.Expr:
    return (pl.when(delta == 0).then(pl.lit("same"))
            .when(low.is_not_null() & (low <= 0) & (high >= 0)).then(pl.lit("noise"))
            .when(delta > 0).then(pl.lit("up"))
            .when(delta < 0).then(pl.lit("down"))
            .otherwise(pl.lit("n/a")))


def compare(before: pl.DataFrame, after: pl.DataFrame, keys: list[str], values: list[str]) -> pl.DataFrame:
    """Full join of two tables on ``keys``; for each value ``v``: v_before, v_after (0 where a side
    lacks the row), v_delta, v_rel; ``present`` says both / before / after."""
    a = before.select(*keys, *values).with_columns(pl.lit(True).alias("_in_b"))
    b = after.select(*keys, *values).with_columns(pl.lit(True).alias("_in_a"))
    j = a.join(b, on=keys, how="full", coalesce=True, suffix="_after", nulls_equal=True)
    j = j.rename({v: f"{v}_before" for v in values})
    cols = []
    for v in values:
        vb, va = pl.col(f"{v}_before").fill_null(0), pl.col(f"{v}_after").fill_null(0)
        cols += [vb.alias(f"{v}_before"), va.alias(f"{v}_after"), (va - vb).alias(f"{v}_delta"),
                 pl.when(vb != 0).then((va - vb) / vb).otherwise(None).alias(f"{v}_rel")]
    present = (pl.when(pl.col("_in_b").is_not_null() & pl.col("_in_a").is_not_null()).then(pl.lit("both"))
               .when(pl.col("_in_b").is_not_null()).then(pl.lit("before")).otherwise(pl.lit("after")))
    out = j.select(*keys, *cols, present.alias("present"))
    return out.sort(keys, nulls_last=True)


def _with_ci(df: pl.DataFrame, keys: list[str], samples_b: dict[tuple, np.ndarray],
             samples_a: dict[tuple, np.ndarray], delta_col: str, seed: int,
             totals: bool | set[tuple] = False) -> pl.DataFrame:
    """Add ci_low, ci_high and change. The interval is the bootstrap interval of the change of the
    per-instance mean; for rows whose values are sums over the instances (``totals``: all rows, or
    a set of keys) it is scaled by the number of instances, which both sides must share (else no
    interval: sums over different counts do not compare)."""
    lows, highs = [], []
    for key in df.select(keys).iter_rows():
        b, a = samples_b.get(key, np.zeros(0)), samples_a.get(key, np.zeros(0))
        iv = noise.bootstrap_delta(b, a, seed=seed)
        if iv is not None and (totals is True or (isinstance(totals, set) and key in totals)):
            iv = noise.Interval(iv.low * b.size, iv.high * b.size) if b.size == a.size else None
        lows.append(iv.low if iv else None)
        highs.append(iv.high if iv else None)
    df = df.with_columns(pl.Series("ci_low", lows, dtype=pl.Float64), pl.Series("ci_high", highs, dtype=pl.Float64))
    return df.with_columns(_change(pl.col(delta_col), pl.col("ci_low"), pl.col("ci_high")).alias("change"))


def _samples(df: pl.DataFrame, keys: list[str], value: str, index: pl.DataFrame | None = None) -> dict[tuple, np.ndarray]:
    """Per key, the values of ``value`` over instances; with ``index`` (the side's instances, by
    phase) a key missing from an instance counts as 0 there."""
    out: dict[tuple, np.ndarray] = {}
    if index is not None:
        inst = ["step", "layer"]
        full = (df.select(keys).unique().join(index.select("phase", *inst), on="phase")
                .join(df.select(*keys, *inst, value), on=keys + inst, how="left").with_columns(pl.col(value).fill_null(0)))
        df = full
    for key, part in df.group_by(keys, maintain_order=True):
        out[tuple(key)] = part[value].to_numpy().astype(np.float64)
    return out


def diff_traces(before: Trace, after: Trace, *, names: NameMap | None = None, seed: int = 0) -> TraceDiff:
    """Compare two traces. Bad input raises :class:`~tracekit.errors.TracekitError`; a partial
    match (different ranks, phases or instance counts) is compared on what both sides share and
    explained in ``warnings``."""
    pb = profile(before, names=names)
    pa = profile(after, names=names)
    return diff_profiles(pb, pa, seed=seed)


def diff_profiles(pb: Profile, pa: Profile, *, seed: int = 0) -> TraceDiff:
    """Set two profiles side by side (see :func:`diff_traces`)."""
    warnings = _warnings(pb, pa)
    phases = _phases(pb, pa, seed)
    stages = _stages(pb, pa, seed)
    critical, source = _critical(pb, pa)
    ranks = _ranks(pb, pa, seed)
    tails = _tails(pb, pa)
    causes = {p: {side: prof.tails[p] for side, prof in (("before", pb), ("after", pa)) if p in prof.tails}
              for p in _union_phases(pb, pa)}
    exposure, totals = _exposure(pb, pa, seed)
    resources, bottlenecks = _resources(pb, pa)
    stalls = compare(pb.stalls, pa.stalls, ["phase", "cause"], ["ns", "count"]).drop("ns_rel", "count_rel")
    counters = compare(pb.counters, pa.counters, ["counter", "kind"], ["max", "mean", "total"]).drop(
        "mean_rel", "total_rel")
    matching = matching_table(*(p.ops if p.op_keys is None else p.op_keys for p in (pb, pa)))
    traffic = compare(pb.traffic, pa.traffic, ["phase", "src_rank", "dst_rank"], ["bytes", "tokens"]).drop(
        "tokens_rel")
    d = TraceDiff(pb, pa, phases, stages, critical, source, ranks, tails, causes, exposure, totals, resources,
                  bottlenecks, stalls, counters, matching, traffic, warnings, schedule=schedule_causes(pb, pa))
    from tracekit.analysis.findings import findings

    d.findings = findings(d)
    if (pb.summary or {}).get("fabric") or (pa.summary or {}).get("fabric"):  # replays with --fabric dynamic
        from tracekit.fabric.tables import ecmp_causes, fabric_findings

        d.findings += fabric_findings(pb.summary, pa.summary)
        d.fabric_causes = ecmp_causes(pb.summary, pa.summary)
    return d


def schedule_causes(pb: Profile, pa: Profile) -> pl.DataFrame | None:
    """When both sides were replayed with a schedule: the forward time (TPOT or step time) and its
    causes per layer (time on the critical path by part, exposed communication, the fused kernel's
    savings) and the communication SM-time share, as ``cause, before, after, delta`` (ns; the share
    as a fraction). ``None`` otherwise."""
    sb, sa = ((p.summary or {}).get("schedule") for p in (pb, pa))
    if not sb or not sa:
        return None

    def causes(s: dict[str, Any]) -> dict[str, float]:
        n = max(len(s["layer_ns"]["per_layer"]), 1)
        out = {"tpot" if "tpot_ns" in s else "step_time": s.get("tpot_ns", s.get("step_time_ns", 0)),
               "layer": s["layer_ns"]["steady"], "exposed_comm per layer": s["exposed_comm_ns"]["max_rank"] / n,
               "comm_sm_share": s["sm_time"]["comm_share"]}
        out.update({f"critical:{k} per layer": v / n for k, v in s["critical_path_ns"].items()})
        out.update({f"fused_saves:{k} per layer": v / n for k, v in s.get("fused_savings_ns", {}).items()})
        return out

    b, a = causes(sb), causes(sa)
    keys = list(b) + [k for k in a if k not in b]
    before = [float(b.get(k, 0.0)) for k in keys]
    after = [float(a.get(k, 0.0)) for k in keys]
    return pl.DataFrame({"cause": keys, "before": before, "after": after,
                         "delta": [y - x for x, y in zip(before, after)],
                         "schedule": [f"{sb['name']} -> {sa['name']}"] * len(keys)})


def _phase_rank() -> pl.Expr:
    return pl.col("phase").replace_strict({"dispatch": 0, "combine": 1}, default=2, return_dtype=pl.Int64)


def _union_phases(pb: Profile, pa: Profile) -> list[str]:
    return sorted(set(pb.phases) | set(pa.phases), key=phase_order)


def _warnings(pb: Profile, pa: Profile) -> list[str]:
    out = []
    rb, ra = set(pb.ranks), set(pa.ranks)
    if rb != ra:
        only_b, only_a = sorted(rb - ra), sorted(ra - rb)
        what = []
        if only_b:
            what.append(f"rank(s) {_ranges(only_b)} only before")
        if only_a:
            what.append(f"rank(s) {_ranges(only_a)} only after")
        out.append(f"partial match: {len(rb)} ranks before, {len(ra)} after ({'; '.join(what)}); per-rank tables "
                   f"compare the {len(rb & ra)} ranks both sides have")
    for p in _union_phases(pb, pa):
        if p not in pb.phases or p not in pa.phases:
            out.append(f"partial match: phase {p} exists only {'after' if p not in pb.phases else 'before'}")
            continue
        nb = pb.instances.filter(pl.col("phase") == p).height
        na = pa.instances.filter(pl.col("phase") == p).height
        if nb != na:
            out.append(f"partial match: {p} has {nb} (step, layer) instance(s) before and {na} after; summed latencies "
                       f"differ by construction, compare the per-instance means")
    for key in ("ep_size", "gpus_per_node"):
        vb, va = _meta(pb, key), _meta(pa, key)
        if vb is not None and va is not None and vb != va:
            out.append(f"{key} differs: {vb} before, {va} after")
    if pb.source and pa.source and pb.source != pa.source:
        out.append(f"comparing a {pb.source} trace with a {pa.source} trace: stages, resources and stalls are "
                   f"recorded differently")
    return out


def _meta(p: Profile, key: str) -> Any:
    if p.summary and isinstance(p.summary.get("workload"), dict):
        return p.summary["workload"].get(key)
    return None


def _ranges(xs: list[int]) -> str:
    out, start, prev = [], xs[0], xs[0]
    for x in xs[1:] + [None]:  # type: ignore[list-item]
        if x is not None and x == prev + 1:
            prev = x
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if x is not None:
            start = prev = x
    return ", ".join(out)


def _phase_metrics(p: Profile) -> tuple[pl.DataFrame, dict[tuple, np.ndarray]]:
    rows, samples = [], {}
    for ph in p.phases:
        inst = p.instances.filter(pl.col("phase") == ph)
        fin = p.finish.filter(pl.col("phase") == ph)["finish_ns"].to_numpy()
        busy = p.stages.filter(pl.col("phase") == ph)["busy_ns"].sum()
        spans = inst["span_ns"].to_numpy().astype(np.float64)
        payload = p.payload_bytes.get(ph)
        traffic = int(p.traffic.filter(pl.col("phase") == ph)["bytes"].sum())
        rows += [
            (ph, "latency", "ns", float(spans.sum())),
            (ph, "latency per instance", "ns", float(spans.mean()) if spans.size else 0.0),
            (ph, "instances", "count", float(spans.size)),
            (ph, "payload bytes", "B", float(payload) if payload is not None else None),
            (ph, "traffic bytes", "B", float(traffic)),
            (ph, "rank finish p50", "ns", float(np.percentile(fin, 50)) if fin.size else 0.0),
            (ph, "rank finish p99", "ns", float(np.percentile(fin, 99)) if fin.size else 0.0),
            (ph, "rank finish max", "ns", float(fin.max()) if fin.size else 0.0),
            (ph, "summed operation time", "ns", float(busy)),
        ]
        samples[(ph, "latency per instance")] = spans
        samples[(ph, "latency")] = spans
    df = pl.DataFrame(rows, schema={"phase": pl.String, "metric": pl.String, "unit": pl.String, "value": pl.Float64},
                      orient="row")
    return df, samples


def _phases(pb: Profile, pa: Profile, seed: int) -> pl.DataFrame:
    mb, sb = _phase_metrics(pb)
    ma, sa = _phase_metrics(pa)
    # payload bytes come from replay summaries; compare them only when both sides have them
    both = {ph for ph in set(pb.phases) & set(pa.phases)
            if pb.payload_bytes.get(ph) is not None and pa.payload_bytes.get(ph) is not None}
    keep = (pl.col("metric") != "payload bytes") | pl.col("phase").is_in(sorted(both))
    mb, ma = mb.filter(keep), ma.filter(keep)
    order = {m: i for i, m in enumerate(mb["metric"].unique(maintain_order=True).to_list()
                                        + ma["metric"].unique(maintain_order=True).to_list())}
    out = compare(mb.drop("unit"), ma.drop("unit"), ["phase", "metric"], ["value"])
    units = pl.concat([mb, ma]).select("metric", "unit").unique("metric")
    out = out.join(units, on="metric", how="left").rename(
        {"value_before": "before", "value_after": "after", "value_delta": "delta", "value_rel": "rel"})
    out = _with_ci(out, ["phase", "metric"], sb, sa, "delta", seed,
                   totals={(ph, "latency") for ph in set(pb.phases) | set(pa.phases)})
    out = out.with_columns(_phase_rank().alias("_p"),
                           pl.col("metric").replace_strict(order, default=99, return_dtype=pl.Int64).alias("_m"))
    return out.sort("_p", "phase", "_m").drop("_p", "_m").select(
        "phase", "metric", "unit", "before", "after", "delta", "rel", "ci_low", "ci_high", "change", "present")


def _stages(pb: Profile, pa: Profile, seed: int) -> pl.DataFrame:
    def agg(p: Profile) -> pl.DataFrame:
        return p.stages.group_by("phase", "stage").agg(pl.col("count", "busy_ns", "bytes").sum())

    out = compare(agg(pb), agg(pa), ["phase", "stage"], ["count", "busy_ns", "bytes"]).drop("count_rel")
    sb = _samples(pb.stages, ["phase", "stage"], "busy_ns", pb.instances)
    sa = _samples(pa.stages, ["phase", "stage"], "busy_ns", pa.instances)
    out = _with_ci(out, ["phase", "stage"], sb, sa, "busy_ns_delta", seed, totals=True)
    return out.with_columns(_phase_rank().alias("_p")).sort("_p", "phase", "busy_ns_before", descending=[False, False, True]
                                               ).drop("_p")


def _critical(pb: Profile, pa: Profile) -> tuple[pl.DataFrame, str]:
    if pb.critical_engine is not None and pa.critical_engine is not None:
        b, a, source = pb.critical_engine, pa.critical_engine, "replay engine (summary.json)"
    else:
        b, a, source = pb.critical, pa.critical, "events"
    out = compare(b, a, ["phase", "stage"], ["ns"])
    tot_b = b.group_by("phase").agg(pl.col("ns").sum().alias("_tb"))
    tot_a = a.group_by("phase").agg(pl.col("ns").sum().alias("_ta"))
    out = out.join(tot_b, on="phase", how="left").join(tot_a, on="phase", how="left")
    out = out.with_columns((pl.col("ns_before") / pl.col("_tb")).fill_null(0.0).alias("share_before"),
                           (pl.col("ns_after") / pl.col("_ta")).fill_null(0.0).alias("share_after"))
    out = out.with_columns((pl.col("share_after") - pl.col("share_before")).alias("share_delta")).drop("_tb", "_ta")
    return out.with_columns(_phase_rank().alias("_p")).sort("_p", "phase", "stage").drop("_p"), source


def _ranks(pb: Profile, pa: Profile, seed: int) -> pl.DataFrame:
    def agg(p: Profile) -> pl.DataFrame:
        return p.finish.group_by("phase", "rank").agg(pl.col("finish_ns").mean().alias("finish_ns"))

    out = compare(agg(pb), agg(pa), ["phase", "rank"], ["finish_ns"])
    out = out.filter(pl.col("present") == "both")
    sb = _samples(pb.finish, ["phase", "rank"], "finish_ns")
    sa = _samples(pa.finish, ["phase", "rank"], "finish_ns")
    out = _with_ci(out, ["phase", "rank"], sb, sa, "finish_ns_delta", seed)
    med = pb.finish.group_by("phase").agg(pl.col("finish_ns").median().alias("_med"))
    med2 = pa.finish.group_by("phase").agg(pl.col("finish_ns").median().alias("_med2"))
    out = out.join(med, on="phase", how="left").join(med2, on="phase", how="left")
    threshold = MOVED_FRACTION * pl.max_horizontal(pl.col("_med").fill_null(0), pl.col("_med2").fill_null(0))
    moved = pl.col("change").is_in(["up", "down"]) & (pl.col("finish_ns_delta").abs() >= threshold)
    return out.with_columns(moved.alias("moved")).drop("_med", "_med2")


def _tails(pb: Profile, pa: Profile) -> pl.DataFrame:
    rows = []
    for ph in _union_phases(pb, pa):
        vals = {}
        for side, p in (("before", pb), ("after", pa)):
            fin = p.finish.filter(pl.col("phase") == ph)["finish_ns"].to_numpy()
            t = p.tails.get(ph)
            vals[side] = {
                "p50": float(np.percentile(fin, 50)) if fin.size else None,
                "p99": float(np.percentile(fin, 99)) if fin.size else None,
                "max": float(fin.max()) if fin.size else None,
                "max/p50": float(fin.max() / max(np.percentile(fin, 50), 1)) if fin.size else None,
                "tail rank": float(t.rank) if t else None,
            }
        for stat in ("p50", "p99", "max", "max/p50", "tail rank"):
            b, a = vals["before"][stat], vals["after"][stat]
            delta = None if b is None or a is None else a - b
            rows.append((ph, stat, b, a, delta))
    return pl.DataFrame(rows, schema={"phase": pl.String, "stat": pl.String, "before": pl.Float64,
                                      "after": pl.Float64, "delta": pl.Float64}, orient="row")


def _exposure(pb: Profile, pa: Profile, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    values = ["comm_ns", "compute_ns", "overlap_ns", "exposed_ns", "comm_busy_ns", "compute_busy_ns"]

    def agg(p: Profile) -> pl.DataFrame:
        return p.exposure.group_by("rank").agg(pl.col(values).sum())

    per_rank = compare(agg(pb), agg(pa), ["rank"], values).filter(pl.col("present") == "both")
    sb = _samples(pb.exposure, ["rank"], "exposed_ns")
    sa = _samples(pa.exposure, ["rank"], "exposed_ns")
    per_rank = _with_ci(per_rank, ["rank"], sb, sa, "exposed_ns_delta", seed, totals=True)
    shared = sorted(set(pb.ranks) & set(pa.ranks))
    rows, samples_b, samples_a = [], {}, {}
    for side, p, samples in (("before", pb, samples_b), ("after", pa, samples_a)):
        e = p.exposure.filter(pl.col("rank").is_in(shared))
        steps = e.group_by("step").agg(pl.col(values).mean()).sort("step")
        for v in values:
            samples[(v,)] = steps[v].to_numpy().astype(np.float64)
        rows.append({v: float(e.group_by("rank").agg(pl.col(v).sum())[v].mean() or 0.0) for v in values})
    totals = pl.DataFrame({
        "metric": values, "unit": ["ns"] * len(values),
        "before": [rows[0][v] for v in values], "after": [rows[1][v] for v in values],
    }).with_columns((pl.col("after") - pl.col("before")).alias("delta"),
                    pl.when(pl.col("before") != 0).then((pl.col("after") - pl.col("before")) / pl.col("before"))
                    .otherwise(None).alias("rel"))
    totals = _with_ci(totals, ["metric"], samples_b, samples_a, "delta", seed, totals=True)
    return per_rank, totals


def _resources(pb: Profile, pa: Profile) -> tuple[pl.DataFrame, pl.DataFrame]:
    def kinds(p: Profile) -> pl.DataFrame:
        return p.resources.sort("phase", "kind", "resource").group_by("phase", "kind", maintain_order=True).agg(pl.col("utilisation").max().alias("util_max"),
                                                         pl.col("utilisation").mean().alias("util_mean"),
                                                         pl.len().cast(pl.Int64).alias("resources"))

    res = compare(kinds(pb), kinds(pa), ["phase", "kind"], ["util_max", "util_mean", "resources"]).drop(
        "util_max_rel", "util_mean_rel", "resources_rel")
    rows = []
    for side, p in (("before", pb), ("after", pa)):
        for ph in p.phases:
            r = p.resources.filter(pl.col("phase") == ph)
            if r.height == 0:
                continue
            top = r.sort(["utilisation", "resource"], descending=[True, False]).row(0, named=True)
            on_path = p.critical_resources.filter((pl.col("phase") == ph) & (pl.col("ns") > 0))
            cand = r.join(on_path.select("resource"), on="resource")
            pick = cand.sort(["utilisation", "resource"], descending=[True, False]).row(0, named=True) if cand.height else top
            rows.append((ph, side, "on critical path", pick["resource"], pick["kind"], float(pick["utilisation"])))
            rows.append((ph, side, "busiest", top["resource"], top["kind"], float(top["utilisation"])))
            eng = (p.summary or {}).get(ph, {}).get("bottleneck") if p.summary else None
            if isinstance(eng, dict) and "resource" in eng:
                rows.append((ph, side, "replay engine", str(eng["resource"]), str(eng.get("resource_kind", "")),
                             float(eng.get("utilisation", 0.0))))
    bott = pl.DataFrame(rows, schema={"phase": pl.String, "side": pl.String, "which": pl.String,
                                      "resource": pl.String, "kind": pl.String, "utilisation": pl.Float64},
                        orient="row")
    return res, bott
