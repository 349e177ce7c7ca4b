"""The sweep's HTML report: the best point per group, then for each group a heatmap of the metric
over two knobs and line plots of it along each knob (the other knobs held at the group's best
point). One self-contained page, the diff report's style (no scripts, nothing fetched)."""

from __future__ import annotations

import os
from html import escape
from typing import Any

import polars as pl

from tracekit.io import svg
from tracekit.io.atomic import atomic_path
from tracekit.io.report_html import _CSS
from tracekit.sweep.best import best_points
from tracekit.sweep.grid import Block, Grid


def fmt_value(metric: str) -> Any:
    if metric.endswith("_ns"):
        return lambda v: f"{v / 1e3:.1f} us" if abs(v) >= 1e3 else f"{v:.0f} ns"
    return lambda v: f"{v:.3g}"


def render(grid: Grid, results: pl.DataFrame) -> str:
    best = best_points(grid, results)
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             f"<title>tracekit sweep: {escape(grid.source)}</title><style>{_CSS}</style></head><body>",
             f"<h1>tracekit sweep</h1><p class='note'>{escape(grid.source)}: {results.height} point(s); "
             "each point is one replay; results.parquet has every figure of every point.</p>",
             "<h2>Best point per group</h2>", _table(best)]
    for block in grid.blocks:
        part = results.filter(pl.col("block") == block.label)
        fixed = ", ".join(f"{k} = {v}" for k, v in block.fixed)
        goal = "lowest" if block.goal == "min" else "highest"
        parts.append(f"<h2>{escape(block.label)}: {escape(block.metric)} ({goal} is best)</h2>")
        if fixed:
            parts.append(f"<p class='note'>fixed for every point: {escape(fixed)}</p>")
        keys = [k for k in grid.group_by if k in part.columns and k != "block"]
        for group in part.partition_by(keys, maintain_order=True) if keys else [part]:
            title = " / ".join(str(group[k][0]) for k in keys)
            parts.append(f"<h3>{escape(title)}</h3><div class='figs'>" + "".join(_figures(grid, block, group))
                         + "</div>")
    parts.append("<p class='note'>Written by tracekit sweep. Self-contained: no scripts, no external resources."
                 "</p></body></html>\n")
    return "".join(parts)


def _table(df: pl.DataFrame) -> str:
    if df.height == 0:
        return "<p class='note'>no points</p>"
    head = "".join(f"<th>{escape(c)}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{escape(_cell(v))}</td>" for v in row) + "</tr>" for row in df.iter_rows())
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _figures(grid: Grid, block: Block, group: pl.DataFrame) -> list[str]:
    swept = [k for k, vals in block.swept if len(vals) > 1]
    if not swept or block.metric not in group.columns:
        return []
    fmt = fmt_value(block.metric)
    order = group.sort([block.metric, "point"], descending=[block.goal == "max", False], nulls_last=True)
    best = order.row(0, named=True)
    axes = [k for k in grid.plot if k in swept] or swept
    out = []
    if len(axes) >= 2:
        out.append(_heatmap(block, group, best, axes[0], axes[1], fmt))
    for x in swept:
        other = next((k for k in axes if k != x), None)
        out.append(_lines(block, group, best, x, other, fmt))
    return out


def _slice(group: pl.DataFrame, best: dict[str, Any], keep: list[str], block: Block) -> pl.DataFrame:
    """Rows where every swept knob other than ``keep`` has the best point's value."""
    cond = [pl.col(k) == best[k] for k, vals in block.swept if k not in keep and len(vals) > 1]
    return group.filter(*cond) if cond else group


def _heatmap(block: Block, group: pl.DataFrame, best: dict[str, Any], x: str, y: str, fmt: Any) -> str:
    sl = _slice(group, best, [x, y], block)
    xs, ys = list(dict(block.swept)[x]), list(dict(block.swept)[y])
    cells = {(r[y], r[x]): r[block.metric] for r in sl.iter_rows(named=True)}
    matrix = [[cells.get((yv, xv)) for xv in xs] for yv in ys]
    mark = (ys.index(best[y]), xs.index(best[x]))
    return _figure(svg.table_heatmap(f"{block.metric} over {x} x {y}", matrix, [str(v) for v in ys],
                                     [str(v) for v in xs], fmt=fmt, xlabel=x, ylabel=y, mark=mark),
                   "Other knobs at the best point's values; the outlined cell is the best point.")


def _lines(block: Block, group: pl.DataFrame, best: dict[str, Any], x: str, other: str | None, fmt: Any) -> str:
    xs = list(dict(block.swept)[x])
    sl = _slice(group, best, [x] + ([other] if other else []), block)
    series: dict[str, list[float | None]] = {}
    for name, part in (sl.partition_by(other, maintain_order=True, as_dict=True).items() if other
                       else [((block.metric,), sl)]):
        values = {r[x]: r[block.metric] for r in part.iter_rows(named=True)}
        label = f"{other}={name[0]}" if other else block.metric
        series[label] = [values.get(v) for v in xs]
    return _figure(svg.lines(f"{block.metric} along {x}", [str(v) for v in xs], series, fmt=fmt, xlabel=x,
                             ylabel=block.metric), "Other knobs at the best point's values.")


def _figure(svg_text: str, caption: str) -> str:
    return f"<figure>{svg_text}<figcaption>{escape(caption)}</figcaption></figure>"


def write_report(grid: Grid, results: pl.DataFrame, path: str | os.PathLike[str]) -> None:
    text = render(grid, results)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
