"""The validation set: measured rows against replay predictions.

A row is one real measurement the project stands on (a figure of DeepEP's published tables, or a
kernel time of one of our captures) with its provenance, the workload recipe, the replay knobs and
the measured figure. :func:`evaluate` replays every distinct (workload, hardware, knobs) once and
returns one line per row: measured, predicted and the signed error in percent. Nothing here is
fitted to the rows; the rows only judge the model.

Pure: rows (plain dicts, as read from ``validation/rows/*.toml`` by
:mod:`tracekit.io.validation_rows`) in, polars DataFrames out. Workloads of captured traces need
files; the caller passes a ``routing_for`` function that turns such a workload into a routing table.

Metrics (``metric`` of a row) and what is predicted for them:

* ``nvlink_gbps`` / ``rdma_gbps``: the phase's bandwidth by DeepEP's definitions
  (``summary[phase].bandwidth_gbps``); a positive error means the replay is faster than measured;
* ``latency_us``: the phase's latency (``summary[phase].latency_ns``, first send to last receive);
* ``call_us``: the whole call as CUDA events around it see it (host prologue included: layout,
  notify, CPU wait, launch; ``cached`` skips what a cached handle skips): the phase's end minus its
  start, averaged over the replay's (step, layer) pairs;
* ``kernel_us``: one call of a captured step (the phase result of ``step``), against the measured
  time from the last rank joining the collective to the last rank finishing it.
* ``exposed_comm_us`` / ``step_us`` (phase ``step``, a captured workload): one rank's captured training
  step replayed kernel by kernel (:mod:`tracekit.overlap_capture`): its communication time that no
  compute kernel overlaps, and first to last kernel. The caller passes ``step_for``, which replays
  such a row and returns both figures.
  For the time metrics a positive error means the replay is slower than measured.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from tracekit.errors import TracekitError
from tracekit.model.config import PhaseConfig, ReplayConfig, deepep_defaults

METRICS = {"nvlink_gbps": "GB/s", "rdma_gbps": "GB/s", "latency_us": "us", "call_us": "us", "kernel_us": "us",
           "exposed_comm_us": "us", "step_us": "us"}
#: Metrics of a whole captured step (phase ``step``), predicted by the caller's ``step_for``.
STEP_METRICS = ("exposed_comm_us", "step_us")
STATUSES = ("modelled", "not modelled yet")
PHASES = ("dispatch", "combine")
#: Workload kinds: a synth recipe, a directory of Kineto traces (replayed from its traffic), or a
#: routing dump (``routing`` = .npz path, with ``ep``, ``experts``, ``hidden`` and the dtypes beside it).
WORKLOADS = ("synth", "capture", "routing")
SWEEPS = ("chunk_size", "num_sms", "tokens", "dtype", "ep_size", "experts", "skew")
_PHASE_KNOBS = ("nvl_send_chunk", "nvl_recv_buffer", "rdma_send_chunk", "rdma_recv_buffer")


@dataclass(frozen=True)
class Row:
    """One measurement and how to predict it (see ``validation/README.md`` for every field)."""

    id: str
    family: str
    status: str
    phase: str
    metric: str
    measured: float
    unit: str
    workload: dict[str, Any]
    hardware: str = ""
    knobs: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    step: int | None = None
    sweeps: dict[str, str] = field(default_factory=dict)
    ci: bool = False
    provenance: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    also_measured: dict[str, float] = field(default_factory=dict)  # figures published beside ``measured``

    @property
    def modelled(self) -> bool:
        return self.status == "modelled"


def rows_from_doc(doc: dict[str, Any], where: str) -> list[Row]:
    """The rows of one rows file: each ``[[rows]]`` entry over the file's ``[defaults]``.

    The file's ``family``, ``status`` and ``[provenance]`` apply to all of its rows; a row's own
    ``provenance`` keys are added to them.
    """
    family = doc.get("family")
    if not isinstance(family, str) or not family:
        raise TracekitError("no family", where=where, fix='start the file with family = "name"')
    defaults = doc.get("defaults", {})
    prov = doc.get("provenance", {})
    out = []
    for i, entry in enumerate(doc.get("rows", [])):
        merged = {**defaults, **entry}
        merged["provenance"] = {**prov, **entry.get("provenance", {})}
        merged.setdefault("status", doc.get("status", "modelled"))
        out.append(_row(merged, family, f"{where}: rows[{i}]"))
    return out


def _row(d: dict[str, Any], family: str, where: str) -> Row:
    rid = d.get("id")
    where = f"{where} ({rid})" if rid else where
    if not isinstance(rid, str) or not rid:
        raise TracekitError("row has no id", where=where, fix='give every row id = "unique-name"')
    known = set(Row.__dataclass_fields__) - {"family"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise TracekitError(f"unknown field(s) {', '.join(unknown)}", where=where,
                            fix=f"use only {', '.join(sorted(known))}")
    checks = [("status", d.get("status") in STATUSES, f"one of {', '.join(STATUSES)}"),
              ("phase", d.get("phase") in (("step",) if d.get("metric") in STEP_METRICS else PHASES),
               "step (a step metric)" if d.get("metric") in STEP_METRICS else "dispatch or combine"),
              ("metric", d.get("metric") in METRICS, f"one of {', '.join(METRICS)}"),
              ("measured", isinstance(d.get("measured"), (int, float)) and d["measured"] > 0, "a positive number"),
              ("workload", isinstance(d.get("workload"), dict) and sum(k in WORKLOADS for k in d["workload"]) == 1,
               f"a table with one of {', '.join(WORKLOADS)}")]
    for name, ok, expected in checks:
        if not ok:
            raise TracekitError(f"{name} = {d.get(name)!r}: expected {expected}", where=where,
                                fix="correct the row (validation/README.md lists the fields)")
    if d.get("unit", METRICS[d["metric"]]) != METRICS[d["metric"]]:
        raise TracekitError(f"unit {d['unit']!r} does not match metric {d['metric']} ({METRICS[d['metric']]})",
                            where=where, fix=f"write unit = {METRICS[d['metric']]!r}")
    bad = sorted(set(d.get("sweeps", {})) - set(SWEEPS))
    if bad:
        raise TracekitError(f"unknown sweep(s) {', '.join(bad)}", where=where, fix=f"use {', '.join(SWEEPS)}")
    if d["metric"] == "kernel_us" and "capture" not in d["workload"]:
        raise TracekitError("metric kernel_us needs a captured workload", where=where, fix="use latency_us")
    if d["metric"] in STEP_METRICS and "capture" not in d["workload"]:
        raise TracekitError(f"metric {d['metric']} needs a captured workload", where=where,
                            fix='give workload = { capture = "trace.json", rank = 0, traffic = { ... } }')
    if d["status"] == "modelled" and not d.get("hardware"):
        raise TracekitError("a modelled row needs a hardware profile", where=where, fix='add hardware = "h800-ib"')
    return Row(family=family, unit=METRICS[d["metric"]], measured=float(d["measured"]),
               **{k: v for k, v in d.items() if k not in ("unit", "measured")})


def replay_config(knobs: dict[str, Any], ep_size: int, where: str = "knobs") -> ReplayConfig:
    """A ReplayConfig from a row's knobs; ``dispatch_nvl_send_chunk`` etc. replace DeepEP's table entry."""
    k = dict(knobs)
    phases = {}
    for phase in PHASES:
        d = deepep_defaults(ep_size, phase)
        phases[phase] = PhaseConfig(**{f: int(k.pop(f"{phase}_{f}", getattr(d, f))) for f in _PHASE_KNOBS})
    try:
        return ReplayConfig(dispatch=phases["dispatch"], combine=phases["combine"], **k)
    except TypeError as exc:
        raise TracekitError(f"bad knob: {exc}", where=where,
                            fix="use ReplayConfig field names or <phase>_nvl_send_chunk style chunk sizes") from None


def replay_key(row: Row) -> str:
    """Rows with the same key share one replay."""
    return json.dumps([row.hardware, row.workload, row.knobs, row.overrides], sort_keys=True)


def synth_routing(recipe: dict[str, Any]):
    """The routing table of a ``workload.synth`` recipe (SynthConfig fields)."""
    from tracekit.workload.synth import SynthConfig, synth

    return synth(SynthConfig(**recipe))


def _kernel_ns(phase_summary: dict) -> int:
    """The kernel part of a phase (first send to last receive: ``data_ns``), what DeepEP's tests and a
    captured kernel measure; ``latency_ns`` also holds the host part of the call."""
    return phase_summary.get("data_ns", phase_summary["latency_ns"])


def _predicted(result, row: Row) -> float:
    if row.metric in STEP_METRICS:
        return float(result[row.metric])
    if row.metric == "kernel_us":
        hits = [p for p in result.phases if p.phase == row.phase and p.step == row.step]
        if not hits:
            raise TracekitError(f"the replay has no {row.phase} of step {row.step}", where=row.id,
                                fix="set step to one of the capture's profiled steps")
        return _kernel_ns(hits[0].summary) / 1e3
    if row.metric == "call_us":
        spans = [p.end_ns - p.t0 for p in result.phases if p.phase == row.phase]
        return sum(spans) / len(spans) / 1e3
    s = result.summary[row.phase]
    if row.metric == "latency_us":
        return _kernel_ns(s) / 1e3
    return float(s["bandwidth_gbps"][row.metric.removesuffix("_gbps")])


def evaluate(rows: list[Row], routing_for: Callable[[dict[str, Any], int], Any],
             on_replay: Callable[[str, float], None] | None = None,
             step_for: Callable[[Row], dict[str, float]] | None = None) -> pl.DataFrame:
    """One line per row: id, family, status, phase, metric, unit, measured, predicted, error_pct, ci.

    Rows marked "not modelled yet" get no prediction (null). ``routing_for(workload, gpus_per_node)``
    returns the Routing of a capture workload (synth recipes are built here). ``step_for(row)``
    replays a row of a step metric and returns ``{metric: predicted}`` for :data:`STEP_METRICS`.
    ``on_replay(key, cpu_seconds)`` is called after each replay.
    """
    import time

    from tracekit.hardware import load_profile
    from tracekit.replay import replay

    predicted: dict[str, float] = {}
    results: dict[str, Any] = {}
    for row in rows:
        if not row.modelled:
            continue
        key = replay_key(row)
        if key not in results and row.metric in STEP_METRICS:
            if step_for is None:
                raise TracekitError(f"metric {row.metric} needs a step replay", where=row.id,
                                    fix="pass step_for (tracekit.io.validation_rows.capture_step_replay)")
            t = time.process_time()
            results[key] = step_for(row)
            if on_replay is not None:
                on_replay(key, time.process_time() - t)
        if key not in results:
            t = time.process_time()
            hw = load_profile(row.hardware)
            if "synth" in row.workload:
                routing = synth_routing(row.workload["synth"])
            else:
                routing = routing_for(row.workload, hw.with_overrides(row.overrides).system.gpus_per_node)
            cfg = replay_config({**row.knobs, "hardware_overrides": dict(row.overrides)}, routing.meta.ep_size, row.id)
            results[key] = replay(routing, hw, cfg)
            if on_replay is not None:
                on_replay(key, time.process_time() - t)
        predicted[row.id] = _predicted(results[key], row)
    return table(rows, predicted)


def table(rows: list[Row], predicted: dict[str, float]) -> pl.DataFrame:
    """The result frame for ``rows`` and their predictions (absent = not predicted)."""
    pred = [predicted.get(r.id) for r in rows]
    return pl.DataFrame({
        "id": [r.id for r in rows], "family": [r.family for r in rows], "status": [r.status for r in rows],
        "phase": [r.phase for r in rows], "metric": [r.metric for r in rows], "unit": [r.unit for r in rows],
        "measured": [r.measured for r in rows], "predicted": pred,
        "error_pct": [None if p is None else 100.0 * (p - r.measured) / r.measured for r, p in zip(rows, pred)],
        "ci": [r.ci for r in rows],
    }, schema={"id": pl.String, "family": pl.String, "status": pl.String, "phase": pl.String,
               "metric": pl.String, "unit": pl.String, "measured": pl.Float64, "predicted": pl.Float64,
               "error_pct": pl.Float64, "ci": pl.Boolean})


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (scipy.stats if installed, else polars average ranks + Pearson)."""
    try:
        from scipy.stats import spearmanr
    except ImportError:
        return spearman_polars(a, b)
    import warnings

    with warnings.catch_warnings():  # a constant side gives NaN, as spearman_polars does
        warnings.simplefilter("ignore")
        return float(spearmanr(a, b).statistic)


def spearman_polars(a: list[float], b: list[float]) -> float:
    """Pearson correlation of the average ranks (ties share their mean rank); NaN if a side is constant."""
    df = pl.DataFrame({"a": a, "b": b}, schema={"a": pl.Float64, "b": pl.Float64})
    ranked = df.select(pl.col("a").rank("average"), pl.col("b").rank("average"))
    ra, rb = ranked["a"].to_numpy(), ranked["b"].to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def sweep_correlations(rows: list[Row], result: pl.DataFrame) -> pl.DataFrame:
    """Per (sweep kind, group): the rows' count and the rank correlation of measured vs predicted."""
    pred = dict(zip(result["id"], result["predicted"]))
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        for kind, group in r.sweeps.items():
            groups.setdefault((kind, group), []).append(r)
    out = []
    for (kind, group), members in sorted(groups.items()):
        have = [r for r in members if pred.get(r.id) is not None]
        rho = spearman([r.measured for r in have], [pred[r.id] for r in have]) if len(have) >= 3 else None
        out.append({"sweep": kind, "group": group, "rows": len(members), "predicted": len(have),
                    "spearman": None if rho is None or math.isnan(rho) else rho})
    return pl.DataFrame(out, schema={"sweep": pl.String, "group": pl.String, "rows": pl.Int64, "predicted": pl.Int64,
                                     "spearman": pl.Float64})


def family_stats(result: pl.DataFrame) -> pl.DataFrame:
    """Per family: rows, predicted rows, mean / median / worst |error| in percent and the worst row."""
    got = result.filter(pl.col("error_pct").is_not_null()).with_columns(pl.col("error_pct").abs().alias("abs"))
    stats = got.sort("abs", descending=True).group_by("family", maintain_order=True).agg(
        pl.len().alias("predicted"), pl.col("abs").mean().alias("mean_abs_pct"),
        pl.col("abs").median().alias("median_abs_pct"), pl.col("abs").max().alias("worst_abs_pct"),
        pl.col("id").first().alias("worst_id"))
    counts = result.group_by("family", maintain_order=True).agg(pl.len().alias("rows"))
    return counts.join(stats, on="family", how="left").with_columns(pl.col("predicted").fill_null(0))


def bands_from(result: pl.DataFrame, slack_pct: float) -> dict[str, tuple[float, float, float]]:
    """Each predicted row's band: (recorded error, low, high) with ``slack_pct`` percentage points each side."""
    return {i: (e, e - slack_pct, e + slack_pct)
            for i, e in zip(result["id"], result["error_pct"]) if e is not None}


def band_violations(result: pl.DataFrame, bands: dict[str, tuple[float, float, float]]) -> list[str]:
    """One line per predicted row whose error left its recorded band, or that has no band."""
    out = []
    for rid, err in zip(result["id"], result["error_pct"]):
        if err is None:
            continue
        if rid not in bands:
            out.append(f"{rid}: error {err:+.2f}% has no recorded band (regenerate: python tools/make_validation.py)")
            continue
        rec, low, high = bands[rid]
        if not low <= err <= high:
            out.append(f"{rid}: error {err:+.2f}% left its band [{low:+.2f}, {high:+.2f}] (recorded {rec:+.2f}%)")
    return out


def capture_call_times(events: pl.DataFrame) -> pl.DataFrame:
    """Per (phase, step) of imported all-to-all kernels: the call's time once every rank has joined.

    ``measured_us`` = last rank's end - last rank's start (the first ranks' kernels wait for the last
    one to launch, which is launch skew, not transfer); also each rank's kernel time, in rank order.
    """
    ev = events.filter(pl.col("stage").is_in(PHASES) & (pl.col("kind") == "comm"))
    return ev.sort("rank").group_by("stage", "step", maintain_order=True).agg(
        ((pl.col("ts_ns") + pl.col("dur_ns")).max() - pl.col("ts_ns").max()).alias("measured_ns"),
        pl.col("dur_ns").alias("rank_dur_ns"), pl.col("rank")).rename({"stage": "phase"}).with_columns(
        (pl.col("measured_ns") / 1e3).alias("measured_us")).sort("phase", "step")


def replay_command(row: Row) -> str:
    """The CLI commands that replay ``row`` (what :func:`evaluate` does in-process)."""
    if not row.modelled:
        return ""
    if row.metric in STEP_METRICS:
        return "PYTHONPATH=. python tools/overlap_validate.py"
    flags = []
    for k, v in sorted(row.knobs.items()):
        if k in ("num_sms", "mode", "dispatch_dtype", "combine_dtype", "granularity", "doorbell"):
            flags.append(f"--{k.replace('_', '-')} {v}")
        elif k == "cached" and v:
            flags.append("--cached")
        elif k.split("_", 1)[0] in PHASES and k.split("_", 1)[1] in _PHASE_KNOBS:
            flags.append(f"--{k.replace('_send', '').replace('_recv', '').replace('_', '-')} {v}")
        else:
            flags.append(f"(API knob {k}={v})")
    flags += [f"--set {k}={v}" for k, v in sorted(row.overrides.items())]
    tail = f"--hardware {row.hardware} {' '.join(flags)}".strip()
    if "capture" in row.workload:
        cap = row.workload["capture"]
        return f"tracekit import kineto {cap} -o cap && tracekit replay --from-capture cap {tail} -o out"
    if "routing" in row.workload:
        w = row.workload
        dump = " ".join(f"--{k.replace('_', '-')} {w[k]}" for k in ("ep", "experts", "hidden", "dispatch_dtype",
                                                                     "combine_dtype") if k in w)
        return (f"tracekit import routing {w['routing']} {dump} -o cap && tracekit replay --from-capture cap "
                f"{tail} -o out")
    s = row.workload["synth"]
    synth_flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in s.items())
    return f"tracekit synth {synth_flags} -o w.parquet && tracekit replay w.parquet {tail} -o out"


TARGET_KEYS = ("mean_abs_pct", "median_abs_pct", "worst_abs_pct")


def read_targets(doc: dict[str, Any], where: str = "validation/targets.toml") -> dict[str, dict[str, float]]:
    """Per family, the issue's accuracy targets (``[targets.<family>]`` with keys of TARGET_KEYS)."""
    out = {}
    for family, t in doc.get("targets", {}).items():
        bad = sorted(set(t) - set(TARGET_KEYS))
        if bad:
            raise TracekitError(f"unknown target(s) {', '.join(bad)} for {family}", where=where,
                                fix=f"use {', '.join(TARGET_KEYS)}")
        out[family] = {k: float(v) for k, v in t.items()}
    return out
