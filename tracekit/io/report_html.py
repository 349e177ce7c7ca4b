"""The HTML report: one self-contained page (inline CSS and SVG; no scripts, fonts or links to fetch).

Figures: critical-path composition (stacked bars), busy time per stage (bar pairs), per-rank finish
times, tail CDFs, rank x rank traffic heatmaps (before, after, change) and exposed communication
per rank; then every table of the text report.
"""

from __future__ import annotations

from html import escape

import numpy as np
import polars as pl

from tracekit.analysis.diff import TraceDiff
from tracekit.analysis.findings import fmt_bytes, fmt_ns
from tracekit.io import svg
from tracekit.io.report import Section, sections

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;
color:#222;padding:0 16px;line-height:1.4}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 6px;border-bottom:1px solid #ddd;padding-bottom:3px}
p.note{color:#555;font-size:13px;margin:4px 0 8px}
table{border-collapse:collapse;font-size:12px;margin:6px 0}
th,td{padding:3px 8px;border-bottom:1px solid #eee;text-align:left;white-space:nowrap}
th{background:#f4f4f4;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.up td.verdict{color:#c0392b} tr.down td.verdict{color:#1e7b34} tr.noise td.verdict{color:#888}
ul.findings li{margin:3px 0} ul.findings li.sub{list-style:none;color:#444;font-size:13px}
.warn{background:#fff4e0;border-left:4px solid #f0a030;padding:6px 10px;margin:6px 0;font-size:13px}
.figs{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start} figure{margin:8px 0}
figcaption{font-size:12px;color:#555;max-width:760px}
.scroll{overflow-x:auto}
"""


def _num(s: str) -> bool:
    return bool(s) and (s[0].isdigit() or s[0] in "+-[") and s != "-"


def _table(s: Section) -> str:
    if not s.headers:
        return ""
    verdict = s.headers.index("verdict") if "verdict" in s.headers else -1
    out = ["<div class='scroll'><table><thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in s.headers)
           + "</tr></thead><tbody>"]
    for row in s.rows:
        cls = f" class='{escape(row[verdict])}'" if verdict >= 0 else ""
        cells = []
        for i, c in enumerate(row):
            klass = "verdict" if i == verdict else "num" if _num(c) else ""
            cells.append(f"<td class='{klass}'>{escape(c)}</td>" if klass else f"<td>{escape(c)}</td>")
        out.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    if s.more:
        out.append(f"<p class='note'>{s.more} more row(s) in the JSON report.</p>")
    return "".join(out)


def _figure(svg_text: str, caption: str) -> str:
    return f"<figure>{svg_text}<figcaption>{escape(caption)}</figcaption></figure>"


def _phases(d: TraceDiff) -> list[str]:
    from tracekit.analysis.profile import phase_order

    return sorted(set(d.before.phases) | set(d.after.phases), key=phase_order)


def figures(d: TraceDiff) -> list[str]:
    """The report's figures as HTML fragments (each a <figure> holding an inline <svg>)."""
    out = []
    phases = _phases(d)
    bars = []
    others = sorted(set(d.critical["phase"].to_list()) - set(phases))
    for ph in phases + others:
        c = d.critical.filter(pl.col("phase") == ph).sort("stage")
        for side in ("before", "after"):
            segs = [(r["stage"], float(r[f"ns_{side}"])) for r in c.iter_rows(named=True) if r[f"ns_{side}"]]
            if segs:
                bars.append((f"{ph or '(no phase)'} {side}", segs))
    if bars:
        out.append(_figure(svg.stacked_bars("Critical path by stage", bars, fmt=fmt_ns),
                           f"What each phase's latency is made of, before and after (source: {d.critical_source})."))
    for ph in phases:
        s = d.stages.filter(pl.col("phase") == ph)
        s = s.with_columns(pl.max_horizontal("busy_ns_before", "busy_ns_after").alias("_m")).sort(
            ["_m", "stage"], descending=[True, False]).head(12)
        rows = [(r["stage"], float(r["busy_ns_before"]), float(r["busy_ns_after"])) for r in s.iter_rows(named=True)]
        if rows:
            out.append(_figure(svg.grouped_bars(f"{ph}: busy time per stage", rows, fmt=fmt_ns),
                               "Summed over operations (all ranks and resources); the 12 largest stages."))
    for ph in phases:
        r = d.ranks.filter(pl.col("phase") == ph).sort("rank")
        if r.height == 0:
            continue
        marks = {}
        for side, cause in d.tail_causes.get(ph, {}).items():
            marks[f"tail {side}: rank {cause.rank}"] = cause.rank
        out.append(_figure(svg.rank_series(f"{ph}: finish time per rank", r["rank"].to_list(),
                                           r["finish_ns_before"].to_list(), r["finish_ns_after"].to_list(),
                                           fmt=fmt_ns, ylabel="finish", marks=marks),
                           "Mean over (step, layer) instances of when each rank's last operation of the phase ends, "
                           "from the phase's start."))
    cdfs = []
    for ph in phases:
        series = {side: p.finish.filter(pl.col("phase") == ph)["finish_ns"].to_list()
                  for side, p in (("before", d.before), ("after", d.after))}
        if any(series.values()):
            cdfs.append(svg.cdf(f"{ph}: rank finish CDF", series, fmt=fmt_ns, xlabel="finish"))
    if cdfs:
        out.append("<div class='figs'>" + "".join(_figure(c, "") for c in cdfs) + "</div>"
                   + "<p class='note'>Tail CDFs: fraction of (rank, instance) pairs finished by a time; the tail is "
                     "the top right.</p>")
    for ph in phases:
        out.append(_heatmaps(d, ph))
    out.append(_exposure(d))
    return [f for f in out if f]


def _matrix(t: pl.DataFrame, col: str, ranks: list[int]) -> list[list[float]]:
    idx = {r: i for i, r in enumerate(ranks)}
    m = np.zeros((len(ranks), len(ranks)))
    for s, dst, v in t.select("src_rank", "dst_rank", col).iter_rows():
        if s in idx and dst in idx:
            m[idx[s], idx[dst]] += float(v or 0)
    return m.tolist()


def _heatmaps(d: TraceDiff, ph: str) -> str:
    t = d.traffic.filter(pl.col("phase") == ph)
    if t.height == 0:
        return ""
    ranks = sorted(set(t["src_rank"].to_list()) | set(t["dst_rank"].to_list()))
    mb, ma, md = (_matrix(t, c, ranks) for c in ("bytes_before", "bytes_after", "bytes_delta"))
    hi = max(max((max(r) for r in mb), default=0), max((max(r) for r in ma), default=0)) or 1.0
    dhi = max((abs(v) for r in md for v in r), default=0)
    figs = [svg.heatmap(f"{ph} traffic before", mb, ranks, fmt=fmt_bytes, vmax=hi),
            svg.heatmap(f"{ph} traffic after", ma, ranks, fmt=fmt_bytes, vmax=hi),
            svg.heatmap(f"{ph} change" if dhi else f"{ph} change: none", md, ranks, fmt=fmt_bytes, diverging=True,
                        vmax=dhi or 1.0)]
    return ("<div class='figs'>" + "".join(_figure(f, "") for f in figs) + "</div><p class='note'>Rank x rank "
            "bytes per hop (rows send, columns receive); before and after share one scale; the change is red where "
            "after sends more, blue where less.</p>")


def _exposure(d: TraceDiff) -> str:
    e = d.exposure.sort("rank")
    if e.height == 0:
        return ""
    return _figure(svg.rank_series("Exposed communication per rank", e["rank"].to_list(),
                                   e["exposed_ns_before"].to_list(), e["exposed_ns_after"].to_list(), fmt=fmt_ns,
                                   ylabel="exposed"),
                   "Communication time not overlapped by compute on the same rank, summed over steps.")


def render_html(d: TraceDiff) -> str:
    """The whole report as one HTML document."""
    secs = sections(d)
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             f"<title>tracekit diff: {escape(d.before.label)} -> {escape(d.after.label)}</title>",
             f"<style>{_CSS}</style></head><body>",
             f"<h1>tracekit diff</h1><p class='note'>before: <b>{escape(d.before.label)}</b> &nbsp; after: "
             f"<b>{escape(d.after.label)}</b></p>"]
    for s in secs:
        parts.append(f"<h2 id='{s.key}'>{escape(s.title)}</h2>")
        if s.note:
            parts.append(f"<p class='note'>{escape(s.note)}</p>")
        if s.key == "findings":
            items = []
            for x in s.extra:
                sub = x.startswith("  ")
                items.append(f"<li class='sub'>{escape(x.strip())}</li>" if sub else f"<li>{escape(x)}</li>")
            parts.append("<ul class='findings'>" + "".join(items) + "</ul>")
            parts.append("<h2 id='figures'>Figures</h2>")
            parts += figures(d)
            continue
        if s.key == "inputs":
            parts.append(_table(s))
            parts += [f"<div class='warn'>{escape(w)}</div>" for w in s.extra]
            continue
        parts.append(_table(s))
        if s.extra:
            parts.append("<ul>" + "".join(f"<li>{escape(x)}</li>" for x in s.extra) + "</ul>")
    parts.append("<p class='note'>Written by tracekit diff. Self-contained: no scripts, no external resources.</p>"
                 "</body></html>\n")
    return "".join(parts)
