"""Render a :class:`~tracekit.analysis.diff.TraceDiff` as a terminal table, Markdown, JSON or a
self-contained HTML page, and write it atomically.

Text, Markdown and HTML share one list of sections (:func:`sections`): a title, a line saying what
the section means, and a table of formatted cells. JSON carries the raw tables instead.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from tracekit.analysis.diff import TraceDiff
from tracekit.analysis.findings import fmt_bytes, fmt_ns, fmt_rel
from tracekit.errors import TracekitError
from tracekit.io.atomic import atomic_path

FORMATS = ("text", "md", "json", "html")
#: rows shown per table in text and Markdown (the JSON has all)
MAX_ROWS = 40


@dataclass
class Section:
    """One part of a report: title, what it means, and a table of cells."""

    key: str
    title: str
    note: str
    headers: list[str]
    rows: list[list[str]]
    more: int = 0  # rows left out
    extra: list[str] = field(default_factory=list)  # lines after the table


def _fmt(value: Any, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit == "ns":
        return fmt_ns(value)
    if unit == "B":
        return fmt_bytes(value)
    if unit == "ratio":
        return f"{value:.1%}"
    if unit == "x":
        return f"{value:.3f}"
    if isinstance(value, float) and value.is_integer():
        return f"{int(value)}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _delta(value: Any, unit: str) -> str:
    if value is None:
        return "-"
    s = _fmt(value, unit)
    return s if s.startswith("-") or value == 0 else "+" + s


def _ci(row: dict[str, Any], unit: str) -> str:
    if row.get("ci_low") is None:
        return "-"
    return f"[{_fmt(row['ci_low'], unit)}, {_fmt(row['ci_high'], unit)}]"


def _rel(v: Any) -> str:
    return "-" if v is None else fmt_rel(v)


def _limit(rows: list[list[str]], n: int = MAX_ROWS) -> tuple[list[list[str]], int]:
    return rows[:n], max(0, len(rows) - n)


def _by_phase(t: pl.DataFrame, col: str) -> pl.DataFrame:
    """Rows in phase order (dispatch, combine, others), then by ``col`` descending."""
    rank = pl.col("phase").replace_strict({"dispatch": 0, "combine": 1}, default=2, return_dtype=pl.Int64)
    return t.with_columns(rank.alias("_p")).sort(["_p", "phase", col], descending=[False, False, True]).drop("_p")


def sections(d: TraceDiff) -> list[Section]:
    """The report's sections, in order."""
    out = [_header(d)]
    out.append(Section("findings", "Findings", "What moved, where and why, most important first.", [], [],
                       extra=list(d.findings)))
    rows = [[r["phase"], r["metric"], _fmt(r["before"], r["unit"]), _fmt(r["after"], r["unit"]),
             _delta(r["delta"], r["unit"]), _rel(r["rel"]), _ci(r, r["unit"]), r["change"]]
            for r in d.phases.iter_rows(named=True)]
    out.append(Section("phases", "Phases",
                       "Latency is the span of each (phase, step, layer) from its first operation to its last, "
                       "summed; per instance is its mean. Rank finish: when each rank's last operation of the phase "
                       "ends. The CI is the bootstrap 95% interval of the change of the per-instance mean "
                       "(shown when both sides have several instances).",
                       ["phase", "metric", "before", "after", "change", "rel", "95% CI", "verdict"], rows))
    rows = [[r["phase"], r["stage"], f"{r['count_before']}/{r['count_after']}", fmt_ns(r["busy_ns_before"]),
             fmt_ns(r["busy_ns_after"]), _delta(r["busy_ns_delta"], "ns"), _rel(r["busy_ns_rel"]),
             fmt_bytes(r["bytes_before"]), fmt_bytes(r["bytes_after"]), _rel(r["bytes_rel"]), r["change"]]
            for r in d.stages.iter_rows(named=True)]
    rows, more = _limit(rows, 3 * MAX_ROWS)
    out.append(Section("stages", "Stages",
                       "Per phase and stage: operations (before/after), busy time summed over operations, and bytes.",
                       ["phase", "stage", "ops", "busy before", "busy after", "change", "rel", "bytes before",
                        "bytes after", "bytes rel", "verdict"], rows, more))
    rows = [[r["phase"] or "(no phase)", r["stage"], fmt_ns(r["ns_before"]), f"{r['share_before']:.1%}", fmt_ns(r["ns_after"]),
             f"{r['share_after']:.1%}", _delta(r["ns_delta"], "ns")]
            for r in _by_phase(d.critical, "ns_after").iter_rows(named=True)]
    out.append(Section("critical_path", "Critical path",
                       f"Time on the critical path per stage (source: {d.critical_source}); 'wait' is time between "
                       f"operations on the path (latency, launch gaps, waiting for a peer).",
                       ["phase", "stage", "before", "share", "after", "share", "change"], rows))
    out.append(_tails(d))
    out += _exposure(d)
    out += _resources(d)
    out.append(_matching(d))
    out.append(_traffic(d))
    return out


def _header(d: TraceDiff) -> Section:
    rows = []
    for side, p in (("before", d.before), ("after", d.after)):
        inst = ", ".join(f"{ph} x{p.instances.filter(pl.col('phase') == ph).height}" for ph in p.phases)
        rows.append([side, p.label, p.source or "-", str(len(p.ranks)), inst or "-"])
    extra = [f"warning: {w}" for w in d.warnings]
    return Section("inputs", "Inputs", "The two traces; 'x N' is the number of (step, layer) instances per phase.",
                   ["side", "trace", "source", "ranks", "phases"], rows, extra=extra)


def _tails(d: TraceDiff) -> Section:
    rows = []
    for r in d.tails.iter_rows(named=True):
        unit = "x" if r["stat"] == "max/p50" else "" if r["stat"] == "tail rank" else "ns"
        rows.append([r["phase"], r["stat"], _fmt(r["before"], unit), _fmt(r["after"], unit),
                     _delta(r["delta"], unit) if unit != "" else ("same" if r["delta"] == 0 else "changed")])
    extra = []
    for phase, sides in d.tail_causes.items():
        for side, cause in sides.items():
            extra.append(f"{phase} {side}: {cause.sentence()}")
    moved = d.ranks.filter(pl.col("moved")).sort(pl.col("finish_ns_delta").abs(), descending=True)
    if moved.height:
        extra.append("ranks that moved (finish changed by >= 2% of the median, beyond noise): " + ", ".join(
            f"{r['phase']} rank {r['rank']} {_delta(r['finish_ns_delta'], 'ns')}" for r in moved.head(12).iter_rows(named=True))
            + (f" and {moved.height - 12} more" if moved.height > 12 else ""))
    return Section("tails", "Tails", "Rank finish times pooled over ranks and instances; the tail rank has the "
                   "latest mean finish, and its cause is read from its own critical path and its load.",
                   ["phase", "stat", "before", "after", "change"], rows, extra=extra)


def _exposure(d: TraceDiff) -> list[Section]:
    names = {"comm_ns": "communication (union)", "compute_ns": "compute (union)", "overlap_ns": "overlapped",
             "exposed_ns": "exposed communication", "comm_busy_ns": "summed communication kernels",
             "compute_busy_ns": "summed compute kernels"}
    rows = [[names.get(r["metric"], r["metric"]), fmt_ns(r["before"]), fmt_ns(r["after"]), _delta(r["delta"], "ns"),
             _rel(r["rel"]), _ci(r, "ns"), r["change"]] for r in d.exposure_totals.iter_rows(named=True)]
    totals = Section("exposure", "Exposed communication",
                     "Per rank and step: communication time not covered by compute on the same rank (interval "
                     "arithmetic), as a mean per rank over the ranks both sides have. Summed kernel durations "
                     "are what an operation-counting diff sees; exposed time is what the timeline costs.",
                     ["measure", "before", "after", "change", "rel", "95% CI", "verdict"], rows)
    rows = [[str(r["rank"]), fmt_ns(r["comm_ns_before"]), fmt_ns(r["comm_ns_after"]), fmt_ns(r["overlap_ns_before"]),
             fmt_ns(r["overlap_ns_after"]), fmt_ns(r["exposed_ns_before"]), fmt_ns(r["exposed_ns_after"]),
             _delta(r["exposed_ns_delta"], "ns"), r["change"]] for r in d.exposure.iter_rows(named=True)]
    rows, more = _limit(rows)
    per_rank = Section("exposure_ranks", "Exposed communication per rank", "",
                       ["rank", "comm before", "comm after", "overlap before", "overlap after", "exposed before",
                        "exposed after", "change", "verdict"], rows, more)
    return [totals, per_rank]


def _resources(d: TraceDiff) -> list[Section]:
    rows = [[r["phase"], r["side"], r["which"], r["resource"], r["kind"], f"{r['utilisation']:.1%}"]
            for r in d.bottlenecks.iter_rows(named=True)]
    bott = Section("bottlenecks", "Bottleneck", "Utilisation = busy time of a resource (union of its operations) over "
                   "the phase's span. 'on critical path': the busiest resource the critical path uses; 'replay "
                   "engine': the replay's own choice (summary.json).",
                   ["phase", "side", "which", "resource", "kind", "utilisation"], rows)
    rows = [[r["phase"], r["kind"], str(r["resources_after"] or r["resources_before"]), f"{r['util_max_before']:.1%}",
             f"{r['util_max_after']:.1%}", f"{r['util_mean_before']:.1%}", f"{r['util_mean_after']:.1%}"]
            for r in _by_phase(d.resources, "util_max_after").iter_rows(named=True)]
    rows, more = _limit(rows)
    kinds = Section("resources", "Utilisation by resource kind", "",
                    ["phase", "kind", "resources", "max before", "max after", "mean before", "mean after"], rows, more)
    recorded = d.before.stalls_recorded or d.after.stalls_recorded
    rows = [[r["phase"], r["cause"], fmt_ns(r["ns_before"]), fmt_ns(r["ns_after"]), _delta(r["ns_delta"], "ns"),
             f"{r['count_before']}/{r['count_after']}"] for r in d.stalls.iter_rows(named=True)]
    note = ("Time operations were ready but blocked: credit starvation (ring full), full send queue, full completion "
            "queue, switch buffer; PFC pause and ECN marks appear when a trace records them.")
    if not recorded:
        note += " Neither trace records stalls (captures do not); zeros here mean 'not recorded'."
    stalls = Section("stalls", "Stalls", note, ["phase", "cause", "before", "after", "change", "stalled ops"], rows)
    rows = []
    for r in d.counters.iter_rows(named=True):
        total = ""
        if r["counter"].startswith("pfc"):
            total = f"{fmt_ns(r['total_before'])} / {fmt_ns(r['total_after'])} paused"
        elif r["counter"].startswith("ecn"):
            total = f"{r['total_before']:.0f} / {r['total_after']:.0f} marks"
        rows.append([r["counter"], r["kind"], _fmt(r["max_before"], ""), _fmt(r["max_after"], ""),
                     _fmt(r["mean_before"], ""), _fmt(r["mean_after"], ""), total])
    rows, more = _limit(rows)
    counters = Section("counters", "Counters", "Per counter and resource kind: peak and time-weighted mean "
                       "(averaged over resources); PFC counters add pause time, ECN counters mark counts.",
                       ["counter", "kind", "max before", "max after", "mean before", "mean after", "total"], rows, more)
    return [bott, kinds, stalls, counters]


def _matching(d: TraceDiff) -> Section:
    m = d.matching
    interesting = m.filter((pl.col("status") != "matched") | (pl.col("busy_delta") != 0))
    rows = [[r["phase"], r["stage"], r["op"], f"{r['count_before']}/{r['count_after']}", str(r["paired"]),
             fmt_ns(r["busy_before"]), fmt_ns(r["busy_after"]), _delta(r["median_op_delta"], "ns"), r["status"]]
            for r in interesting.sort("status", pl.col("busy_delta").abs(), descending=[False, True]).iter_rows(named=True)]
    rows, more = _limit(rows)
    same = m.height - interesting.height
    extra = [f"{same} operation group(s) identical on both sides"] if same else []
    for status, word in (("added", "only after"), ("removed", "only before")):
        ops = m.filter(pl.col("status") == status)
        if ops.height:
            extra.append(f"{word}: " + ", ".join(f"{r['phase']}/{r['stage']}/{r['op']}" for r in ops.iter_rows(named=True)))
    return Section("matching", "Matching",
                   "Operations grouped by (phase, stage, normalised name), paired by rank, step, layer, message and "
                   "order of occurrence; 'median op' is the median change of a paired operation's duration.",
                   ["phase", "stage", "operation", "ops", "paired", "busy before", "busy after", "median op",
                    "status"], rows, more, extra)


def _traffic(d: TraceDiff) -> Section:
    t = d.traffic
    rows = []
    for phase in t["phase"].unique(maintain_order=True).to_list():
        x = t.filter(pl.col("phase") == phase)
        rows.append([phase, "all pairs", fmt_bytes(x["bytes_before"].sum()), fmt_bytes(x["bytes_after"].sum()),
                     _delta(int(x["bytes_delta"].sum()), "B")])
        for r in x.filter(pl.col("bytes_delta") != 0).sort(pl.col("bytes_delta").abs(), descending=True).head(5
                                                                                                          ).iter_rows(named=True):
            rows.append([phase, f"{r['src_rank']} -> {r['dst_rank']}", fmt_bytes(r["bytes_before"]),
                         fmt_bytes(r["bytes_after"]), _delta(r["bytes_delta"], "B")])
    return Section("traffic", "Traffic", "Bytes between rank pairs per hop (RDMA to the forwarding GPU, NVLink on from "
                   "it), each message counted once; the pairs that changed most are listed.",
                   ["phase", "pair", "before", "after", "change"], rows)


# ----------------------------------------------------------------------------------------------- text

def _table_text(headers: list[str], rows: list[list[str]]) -> list[str]:
    if not headers:
        return []
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    numeric = [all(_numeric_cell(r[i]) for r in rows) and bool(rows) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)).rstrip()

    return [line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows]


def _numeric_cell(s: str) -> bool:
    return bool(s) and (s[0].isdigit() or s[0] in "+-[") and s != "-"


def render_text(d: TraceDiff) -> str:
    out = [f"tracekit diff: {d.before.label} -> {d.after.label}", ""]
    for s in sections(d):
        out.append(s.title.upper())
        if s.key == "findings":
            out += [f"  {x}" if x.startswith("  ") else f"- {x}" for x in s.extra]
        else:
            out += _table_text(s.headers, s.rows)
            if s.more:
                out.append(f"... {s.more} more row(s) in the JSON report")
            out += s.extra
        out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------- markdown

def _md_cell(s: str) -> str:
    return s.replace("|", "\\|")


def render_markdown(d: TraceDiff) -> str:
    out = [f"# tracekit diff: `{d.before.label}` -> `{d.after.label}`", ""]
    for s in sections(d):
        out += [f"## {s.title}", ""]
        if s.note:
            out += [s.note, ""]
        if s.key == "findings":
            out += [f"  - {x.strip()}" if x.startswith("  ") else f"- {x}" for x in s.extra] + [""]
            continue
        if s.headers:
            out.append("| " + " | ".join(map(_md_cell, s.headers)) + " |")
            out.append("|" + "|".join("---" for _ in s.headers) + "|")
            out += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in s.rows]
            if s.more:
                out.append(f"\n_{s.more} more row(s) in the JSON report._")
            out.append("")
        if s.extra:
            out += [f"- {x}" for x in s.extra] + [""]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------- json

def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    return v


def to_dict(d: TraceDiff) -> dict[str, Any]:
    """The whole diff as plain data: inputs, warnings, findings, tail causes and every table."""
    def side(p: Any) -> dict[str, Any]:
        return {"label": p.label, "source": p.source, "ranks": p.ranks, "phases": p.phases,
                "instances": {ph: p.instances.filter(pl.col("phase") == ph).height for ph in p.phases},
                "payload_dtype": p.dtypes}

    return {
        "format": "tracekit.diff", "version": 1,
        "before": side(d.before), "after": side(d.after),
        "warnings": d.warnings, "findings": d.findings, "critical_path_source": d.critical_source,
        "tail_causes": {ph: {s: asdict(c) | {"sentence": c.sentence()} for s, c in sides.items()}
                        for ph, sides in d.tail_causes.items()},
        "tables": {name: [{k: _jsonable(v) for k, v in row.items()} for row in t.iter_rows(named=True)]
                   for name, t in d.tables().items()},
    }


def render_json(d: TraceDiff) -> str:
    return json.dumps(to_dict(d), indent=1, sort_keys=True) + "\n"


def render(d: TraceDiff, fmt: str) -> str:
    """The report as text in ``fmt`` (text, md, json or html)."""
    if fmt == "text":
        return render_text(d)
    if fmt == "md":
        return render_markdown(d)
    if fmt == "json":
        return render_json(d)
    if fmt == "html":
        from tracekit.io.report_html import render_html

        return render_html(d)
    raise TracekitError(f"unknown report format {fmt!r}", fix=f"use one of {', '.join(FORMATS)}")


def write_report(d: TraceDiff, path: str | os.PathLike[str], fmt: str) -> Path:
    """Render and write atomically (no partial file on failure)."""
    text = render(d, fmt)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return Path(path)
