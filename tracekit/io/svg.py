"""Small inline-SVG charts for self-contained HTML reports (no scripts, no external files).

Each function returns one ``<svg>`` element as a string. Numbers are formatted deterministically,
so the same data gives the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

BEFORE = "#4e79a7"
AFTER = "#f28e2b"
#: categorical colours for stages (assigned in a fixed order by name)
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac", "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#aec7e8")
FONT = "font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif"


def _n(x: float) -> str:
    """Compact coordinate text."""
    return f"{x:.1f}".rstrip("0").rstrip(".") if not float(x).is_integer() else str(int(x))


def _text(x: float, y: float, s: str, *, size: int = 11, anchor: str = "start", color: str = "#333",
          weight: str = "normal", rotate: float | None = None) -> str:
    rot = f' transform="rotate({_n(rotate)} {_n(x)} {_n(y)})"' if rotate is not None else ""
    return (f'<text x="{_n(x)}" y="{_n(y)}" font-size="{size}" text-anchor="{anchor}" fill="{color}" '
            f'font-weight="{weight}"{rot}>{escape(s)}</text>')


def _svg(width: float, height: float, body: list[str], title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{_n(width)}" height="{_n(height)}" '
            f'viewBox="0 0 {_n(width)} {_n(height)}" role="img" aria-label="{escape(title)}" style="{FONT}">'
            f'<title>{escape(title)}</title>' + "".join(body) + "</svg>")


def nice_ticks(hi: float, n: int = 5) -> list[float]:
    """Round tick values from 0 to at least ``hi``."""
    if hi <= 0 or not math.isfinite(hi):
        return [0.0, 1.0]
    raw = hi / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    count = int(math.ceil(hi / step - 1e-9))
    return [i * step for i in range(count + 1)]


def colour_for(names: Sequence[str]) -> dict[str, str]:
    """Stable colours: names sorted, palette cycled; ``wait`` is always grey."""
    out = {}
    for i, name in enumerate(sorted(set(names) - {"wait"})):
        out[name] = PALETTE[i % len(PALETTE)]
    out["wait"] = "#d0d0d0"
    return out


def legend(items: Sequence[tuple[str, str]], x: float, y: float, width: float) -> tuple[list[str], float]:
    """Legend swatches wrapping within ``width``; returns (elements, height used)."""
    body, cx, cy = [], x, y
    for label, colour in items:
        w = 16 + 7 * len(label) + 14
        if cx + w > x + width and cx > x:
            cx, cy = x, cy + 16
        body.append(f'<rect x="{_n(cx)}" y="{_n(cy - 9)}" width="10" height="10" fill="{colour}"/>')
        body.append(_text(cx + 14, cy, label, size=10))
        cx += w
    return body, cy - y + 16


def stacked_bars(title: str, bars: Sequence[tuple[str, Sequence[tuple[str, float]]]], *, fmt: Callable[[float], str],
                 width: int = 760) -> str:
    """Horizontal stacked bars, one per (label, [(segment, value)]); segments share colours by name."""
    names = [s for _, segs in bars for s, _ in segs]
    colours = colour_for(names)
    left, right, top, bar_h, gap = 150, 90, 28, 22, 10
    hi = max([sum(v for _, v in segs) for _, segs in bars] + [1e-9])
    plot_w = width - left - right
    body = [_text(8, 16, title, size=13, weight="bold")]
    y = top
    for label, segs in bars:
        body.append(_text(left - 8, y + bar_h * 0.7, label, anchor="end"))
        x = left
        total = 0.0
        for name, v in segs:
            w = plot_w * v / hi
            if w > 0:
                body.append(f'<rect x="{_n(x)}" y="{_n(y)}" width="{_n(max(w, 0.5))}" height="{bar_h}" '
                            f'fill="{colours[name]}"><title>{escape(name)}: {escape(fmt(v))}</title></rect>')
                if w > 38:
                    body.append(_text(x + w / 2, y + bar_h * 0.7, name[:max(3, int(w / 7))], size=9, anchor="middle",
                                      color="#fff"))
            x += w
            total += v
        body.append(_text(x + 6, y + bar_h * 0.7, fmt(total), size=10))
        y += bar_h + gap
    seen = []
    for n in names:
        if n not in seen:
            seen.append(n)
    leg, h = legend([(n, colours[n]) for n in seen], 8, y + 12, width - 16)
    return _svg(width, y + 12 + h, body + leg, title)


def grouped_bars(title: str, rows: Sequence[tuple[str, float, float]], *, fmt: Callable[[float], str],
                 width: int = 760) -> str:
    """Horizontal bar pairs (before, after) per category."""
    left, right, top, bh = 150, 80, 40, 9
    hi = max([max(b, a) for _, b, a in rows] + [1e-9])
    plot_w = width - left - right
    body = [_text(8, 16, title, size=13, weight="bold")]
    leg, _ = legend([("before", BEFORE), ("after", AFTER)], left, 32, plot_w)
    body += leg
    y = top + 6
    for label, b, a in rows:
        body.append(_text(left - 8, y + bh + 3, label, anchor="end"))
        for i, (v, colour) in enumerate(((b, BEFORE), (a, AFTER))):
            w = plot_w * v / hi
            body.append(f'<rect x="{left}" y="{_n(y + i * (bh + 1))}" width="{_n(max(w, 0.5 if v else 0))}" '
                        f'height="{bh}" fill="{colour}"><title>{escape(label)} {"after" if i else "before"}: '
                        f'{escape(fmt(v))}</title></rect>')
            body.append(_text(left + w + 4, y + i * (bh + 1) + bh - 1, fmt(v), size=9, color="#555"))
        y += 2 * bh + 10
    return _svg(width, y + 6, body, title)


def _axes(left: float, top: float, pw: float, ph: float, xs: list[float], ys: list[float],
          xmax: float, ymax: float, xfmt: Callable[[float], str], yfmt: Callable[[float], str],
          xlabel: str, ylabel: str) -> list[str]:
    body = [f'<rect x="{_n(left)}" y="{_n(top)}" width="{_n(pw)}" height="{_n(ph)}" fill="#fafafa" stroke="#ccc"/>']
    for v in ys:
        y = top + ph - ph * v / ymax
        body.append(f'<line x1="{_n(left)}" y1="{_n(y)}" x2="{_n(left + pw)}" y2="{_n(y)}" stroke="#e5e5e5"/>')
        body.append(_text(left - 6, y + 4, yfmt(v), size=10, anchor="end"))
    for v in xs:
        x = left + pw * v / xmax
        body.append(_text(x, top + ph + 14, xfmt(v), size=10, anchor="middle"))
    body.append(_text(left + pw / 2, top + ph + 30, xlabel, size=11, anchor="middle"))
    body.append(_text(14, top + ph / 2, ylabel, size=11, anchor="middle", rotate=-90))
    return body


def rank_series(title: str, ranks: Sequence[int], before: Sequence[float | None], after: Sequence[float | None], *,
                fmt: Callable[[float], str], ylabel: str, marks: dict[str, int] | None = None,
                width: int = 760, height: int = 260) -> str:
    """Per-rank values before and after (dots joined by lines); ``marks`` labels ranks (e.g. tails)."""
    left, right, top, bottom = 70, 20, 40, 44
    pw, ph = width - left - right, height - top - bottom
    vals = [v for v in list(before) + list(after) if v is not None]
    ticks = nice_ticks(max(vals + [1e-9]))
    ymax = ticks[-1] or 1.0
    n = max(len(ranks), 1)
    step = max(1, int(math.ceil(n / 16)))
    body = [_text(8, 16, title, size=13, weight="bold")]
    leg, _ = legend([("before", BEFORE), ("after", AFTER)], left + pw - 150, 30, 150)
    body += leg

    def x_of(i: int) -> float:
        return left + pw * (i + 0.5) / n

    body += _axes(left, top, pw, ph, [], ticks, 1.0, ymax, str, fmt, "rank", ylabel)
    for i, r in enumerate(ranks):
        if i % step == 0:
            body.append(_text(x_of(i), top + ph + 14, str(r), size=10, anchor="middle"))
    for series, colour in ((before, BEFORE), (after, AFTER)):
        pts = [(x_of(i), top + ph - ph * v / ymax) for i, v in enumerate(series) if v is not None]
        if len(pts) > 1:
            body.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="'
                        + " ".join(f"{_n(x)},{_n(y)}" for x, y in pts) + '"/>')
        for (x, y), v, r in zip(pts, [v for v in series if v is not None],
                                [r for r, v in zip(ranks, series) if v is not None]):
            body.append(f'<circle cx="{_n(x)}" cy="{_n(y)}" r="3" fill="{colour}"><title>rank {r}: '
                        f'{escape(fmt(v))}</title></circle>')
    for label, r in (marks or {}).items():
        if r in ranks:
            i = list(ranks).index(r)
            body.append(f'<line x1="{_n(x_of(i))}" y1="{top}" x2="{_n(x_of(i))}" y2="{top + ph}" stroke="#999" '
                        f'stroke-dasharray="3,3"/>')
            near_right = x_of(i) > left + pw - 7 * len(label) - 6
            body.append(_text(x_of(i) - 3 if near_right else x_of(i) + 3, top + 11 + 12 * list(marks).index(label),
                              label, size=10, color="#555", anchor="end" if near_right else "start"))
    return _svg(width, height, body, title)


def cdf(title: str, series: dict[str, Sequence[float]], *, fmt: Callable[[float], str], xlabel: str,
        width: int = 370, height: int = 250) -> str:
    """Empirical CDFs (step lines), one per named series (``before`` / ``after`` get their colours)."""
    left, right, top, bottom = 50, 30, 40, 44
    pw, ph = width - left - right, height - top - bottom
    vals = [v for s in series.values() for v in s]
    ticks = nice_ticks(max(vals + [1e-9]), 4)
    xmax = ticks[-1] or 1.0
    body = [_text(8, 16, title, size=13, weight="bold")]
    colours = {"before": BEFORE, "after": AFTER}
    leg, _ = legend([(k, colours.get(k, PALETTE[i])) for i, k in enumerate(series)], left, 32, pw)
    body += leg
    body += _axes(left, top + 6, pw, ph - 6, ticks, [0, 0.5, 1.0], xmax, 1.0, fmt, lambda v: f"{v:g}", xlabel,
                  "fraction of ranks")
    top += 6
    ph -= 6
    for i, (name, s) in enumerate(series.items()):
        xs = sorted(s)
        if not xs:
            continue
        pts = [(left, top + ph)]
        for k, v in enumerate(xs):
            x = left + pw * v / xmax
            pts.append((x, top + ph - ph * k / len(xs)))
            pts.append((x, top + ph - ph * (k + 1) / len(xs)))
        pts.append((left + pw, top))
        body.append(f'<polyline fill="none" stroke="{colours.get(name, PALETTE[i])}" stroke-width="1.8" points="'
                    + " ".join(f"{_n(x)},{_n(y)}" for x, y in pts) + '"/>')
    return _svg(width, height, body, title)


def _mix(c0: tuple[int, int, int], c1: tuple[int, int, int], t: float) -> str:
    t = min(max(t, 0.0), 1.0)
    return "#%02x%02x%02x" % tuple(int(round(a + (b - a) * t)) for a, b in zip(c0, c1))


def heatmap(title: str, matrix: Sequence[Sequence[float]], labels: Sequence[int], *, fmt: Callable[[float], str],
            diverging: bool = False, vmax: float | None = None, size: int = 300) -> str:
    """Square matrix as coloured cells (rows = source rank, columns = destination rank). Sequential
    white -> blue, or diverging blue (negative) -> white -> red (positive)."""
    n = max(len(labels), 1)
    left, top = 44, 44
    cell = max(2.0, min(60.0, (size - left) / n))
    side = cell * n
    flat = [abs(v) for row in matrix for v in row]
    hi = vmax if vmax is not None else (max(flat) if flat else 1.0)
    hi = hi or 1.0
    body = [_text(8, 16, title, size=13, weight="bold")]
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            if diverging:
                colour = _mix((255, 255, 255), (214, 39, 40), v / hi) if v >= 0 else _mix((255, 255, 255), (31, 119, 180), -v / hi)
            else:
                colour = _mix((255, 255, 255), (31, 90, 160), v / hi)
            body.append(f'<rect x="{_n(left + j * cell)}" y="{_n(top + i * cell)}" width="{_n(cell)}" '
                        f'height="{_n(cell)}" fill="{colour}"><title>{labels[i]} -> {labels[j]}: '
                        f'{escape(fmt(v))}</title></rect>')
    body.append(f'<rect x="{left}" y="{top}" width="{_n(side)}" height="{_n(side)}" fill="none" stroke="#999"/>')
    step = max(1, int(math.ceil(n / 8)))
    for k in range(0, n, step):
        body.append(_text(left + (k + 0.5) * cell, top - 4, str(labels[k]), size=9, anchor="middle"))
        body.append(_text(left - 4, top + (k + 0.5) * cell + 3, str(labels[k]), size=9, anchor="end"))
    body.append(_text(left + side / 2, top - 18, "destination rank", size=10, anchor="middle"))
    body.append(_text(12, top + side / 2, "source rank", size=10, anchor="middle", rotate=-90))
    scale = f"scale: -{fmt(hi)} .. {fmt(hi)}" if diverging else f"scale: 0 .. {fmt(hi)}"
    body.append(_text(left, top + side + 16, scale, size=10, color="#555"))
    width = max(left + side + 12, 8 + 7.5 * len(title), left + 6 * len(scale))
    return _svg(width, top + side + 24, body, title)


def range_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (not forced to start at 0), at least two."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        base = lo if math.isfinite(lo) else 0.0
        return [base - 1.0, base + 1.0] if base else [0.0, 1.0]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step + 1e-9) * step
    count = int(math.ceil((hi - first) / step - 1e-9))
    return [first + i * step for i in range(max(count, 1) + 1)]


def lines(title: str, xs: Sequence[str], series: dict[str, Sequence[float | None]], *, fmt: Callable[[float], str],
          xlabel: str, ylabel: str, width: int = 460, height: int = 260) -> str:
    """Lines over categorical x values (evenly spaced, in the given order), one per named series;
    ``None`` leaves a gap. The y axis spans the values (not from 0), so small differences show.
    Dots carry their value as a tooltip."""
    left, right, bottom = 70, 20, 44
    body = [_text(8, 16, title, size=13, weight="bold")]
    leg, leg_h = legend([(name, PALETTE[i % len(PALETTE)]) for i, name in enumerate(series)], left, 32,
                        width - left - right) if len(series) > 1 else ([], 0.0)
    body += leg
    top = 36 + leg_h
    height += int(leg_h)
    pw, ph = width - left - right, height - top - bottom
    vals = [v for s in series.values() for v in s if v is not None]
    ticks = range_ticks(min(vals, default=0.0), max(vals, default=1.0))
    y0, y1 = ticks[0], ticks[-1]
    n = max(len(xs), 1)

    def y_of(v: float) -> float:
        return top + ph - ph * (v - y0) / (y1 - y0)

    body.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>')
    for v in ticks:
        body.append(f'<line x1="{left}" y1="{_n(y_of(v))}" x2="{left + pw}" y2="{_n(y_of(v))}" stroke="#e5e5e5"/>')
        body.append(_text(left - 6, y_of(v) + 4, fmt(v), size=10, anchor="end"))
    step = max(1, int(math.ceil(n / 12)))
    for i, x in enumerate(xs):
        if i % step == 0:
            body.append(_text(left + pw * (i + 0.5) / n, top + ph + 14, str(x), size=10, anchor="middle"))
    body.append(_text(left + pw / 2, top + ph + 30, xlabel, size=11, anchor="middle"))
    body.append(_text(14, top + ph / 2, ylabel, size=11, anchor="middle", rotate=-90))
    for k, (name, s) in enumerate(series.items()):
        colour = PALETTE[k % len(PALETTE)]
        pts = [(left + pw * (i + 0.5) / n, y_of(v), v, xs[i]) for i, v in enumerate(s) if v is not None]
        if len(pts) > 1:
            body.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="'
                        + " ".join(f"{_n(x)},{_n(y)}" for x, y, _, _ in pts) + '"/>')
        for x, y, v, label in pts:
            body.append(f'<circle cx="{_n(x)}" cy="{_n(y)}" r="3" fill="{colour}"><title>{escape(name)} '
                        f'{escape(str(label))}: {escape(fmt(v))}</title></circle>')
    return _svg(width, height, body, title)


def table_heatmap(title: str, matrix: Sequence[Sequence[float | None]], rows: Sequence[str], cols: Sequence[str], *,
                  fmt: Callable[[float], str], xlabel: str, ylabel: str, mark: tuple[int, int] | None = None,
                  cell: int = 40) -> str:
    """A rows x columns matrix as cells coloured from the lowest (white) to the highest value (blue),
    each labelled with its value; ``mark`` outlines one cell (e.g. the best point); ``None`` is grey."""
    left, top = 70, 50
    flat = [v for row in matrix for v in row if v is not None]
    lo, hi = (min(flat), max(flat)) if flat else (0.0, 1.0)
    body = [_text(8, 16, title, size=13, weight="bold")]
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            colour = "#eeeeee" if v is None else _mix((255, 255, 255), (31, 90, 160), (v - lo) / ((hi - lo) or 1.0))
            x, y = left + j * cell, top + i * cell
            tip = f"{ylabel} {rows[i]}, {xlabel} {cols[j]}: {fmt(v) if v is not None else 'no value'}"
            body.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{colour}">'
                        f'<title>{escape(tip)}</title></rect>')
            if v is not None and cell >= 34:
                dark = (v - lo) / ((hi - lo) or 1.0) > 0.6
                body.append(_text(x + cell / 2, y + cell / 2 + 3, fmt(v), size=8, anchor="middle",
                                  color="#fff" if dark else "#333"))
    if mark is not None:
        body.append(f'<rect x="{left + mark[1] * cell}" y="{top + mark[0] * cell}" width="{cell}" height="{cell}" '
                    f'fill="none" stroke="#e15759" stroke-width="2.5"/>')
    for j, c in enumerate(cols):
        body.append(_text(left + (j + 0.5) * cell, top - 5, str(c), size=9, anchor="middle"))
    for i, r in enumerate(rows):
        body.append(_text(left - 5, top + (i + 0.5) * cell + 3, str(r), size=9, anchor="end"))
    w, h = cell * max(len(cols), 1), cell * max(len(rows), 1)
    body.append(_text(left + w / 2, top - 20, xlabel, size=10, anchor="middle"))
    body.append(_text(12, top + h / 2, ylabel, size=10, anchor="middle", rotate=-90))
    scale = f"scale: {fmt(lo)} (white) .. {fmt(hi)} (blue)"
    body.append(_text(left, top + h + 16, scale, size=10, color="#555"))
    width = max(left + w + 12, 12 + 8.5 * len(title), left + 6 * len(scale))
    return _svg(width, top + h + 24, body, title)
