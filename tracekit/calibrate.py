"""Fit hardware-profile fields from micro-benchmark results (``tools/microbench/run_suite.py``).

The input is a results file in the ``microbench.v1`` form (``schemas/microbench.v1.json``):
``{"meta": {...}, "benchmarks": {name: [row, ...]}}``. Each fitted field comes from the rows of one
benchmark by a median or a least-squares line (numpy), and carries its source: the file, the benchmark,
the number of points and the residual. Fields the file has no benchmark for keep the base profile's
value and source.

This module reads micro-benchmark results ONLY. The validation rows (``validation/``) are the real
measurements the replay is judged against; nothing here reads them, so no parameter is ever fitted to
the rows it is validated on (docs/calibration.md). Pure apart from :func:`load_results`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tracekit import schemas
from tracekit.errors import TracekitError
from tracekit.hardware.profile import Profile, parse_profile

#: The reference token of the per-token fields: DeepSeek-V3's hidden size 7168 (BF16 row 14336 B).
REFERENCE_HIDDEN = 7168
REFERENCE_ROW_BYTES = 2 * REFERENCE_HIDDEN
#: warps per SM of the combine rows fitted: DeepEP's intranode combine block (768 threads)
COMBINE_WARPS = 24
_FIX_FILE = "give the JSON written by tools/microbench/run_suite.py"


@dataclass(frozen=True)
class Results:
    """A checked micro-benchmark results file."""

    where: str
    meta: Mapping[str, Any]
    benchmarks: Mapping[str, Sequence[Mapping[str, Any]]]


@dataclass(frozen=True)
class Fitted:
    """One fitted profile value and how it was obtained."""

    key: str  # "gpu.dispatch_token_ns"
    value: int | float
    raw: float
    benchmark: str
    points: int
    method: str
    residual: str

    def source(self, where: str) -> str:
        clipped = "" if self.raw >= 0 else f" (fit gave {self.raw:.4g}, clipped to 0)"
        return (f"fitted from {where}: {self.benchmark}, {self.points} points, {self.method}, "
                f"residual {self.residual}{clipped}")


# -- reading -------------------------------------------------------------------------------------
def load_results(path: str | Path) -> Results:
    """Read and check a results file; bad input raises one :class:`TracekitError` naming the file."""
    where = str(path)
    p = Path(path)
    if not p.is_file():
        raise TracekitError("no such results file", where=where,
                            fix=_FIX_FILE)
    try:
        doc = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TracekitError(f"not valid JSON ({exc})", where=where,
                            fix=_FIX_FILE) from None
    return parse_results(doc, where)


def parse_results(doc: Any, where: str) -> Results:
    """Check the layout of a parsed results document and the types of the columns it carries."""
    if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), dict) or not isinstance(doc.get("meta"), dict):
        raise TracekitError("not a micro-benchmark results file: expected {\"meta\": {...}, \"benchmarks\": {...}}",
                            where=where, fix=_FIX_FILE)
    known = {f.section for f in schemas.load("microbench").fields}
    for name, rows in doc["benchmarks"].items():
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise TracekitError(f"benchmark {name} is not a list of rows", where=where,
                                fix="each benchmark is a list of {column: value} objects")
        if name in known:
            for i, row in enumerate(rows):
                _check_row(name, i, row, where)
    return Results(where, doc["meta"], doc["benchmarks"])


def _check_row(bench: str, i: int, row: Mapping[str, Any], where: str) -> None:
    for f in schemas.load("microbench").fields:
        if f.section != bench or f.name not in row:
            continue
        v = row[f.name]
        ok = isinstance(v, str) if f.type == "string" else (
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
        if not ok:
            raise TracekitError(f"column {f.name} is {v!r}, expected a {'string' if f.type == 'string' else 'finite number'}",
                                where=f"{where}: benchmark {bench} row {i}", fix=f"{f.name}: {f.description}")


def _column(rows: Sequence[Mapping[str, Any]], name: str, bench: str, where: str) -> np.ndarray:
    missing = [i for i, r in enumerate(rows) if name not in r]
    if missing:
        raise TracekitError(f"missing column {name}", where=f"{where}: benchmark {bench} row {missing[0]}",
                            fix=f"{name}: {schemas.load('microbench').field(name, bench).description}")
    return np.array([r[name] for r in rows], dtype=object if isinstance(rows[0][name], str) else np.float64)


# -- fitting helpers -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Fit:
    coef: np.ndarray
    points: int
    residual: str


def _median(values: np.ndarray) -> _Fit:
    med = float(np.median(values))
    spread = float(np.max(np.abs(values - med)) / abs(med)) if med else float(np.max(np.abs(values)) > 0)
    return _Fit(np.array([med]), values.size, f"max deviation {spread:.2%} from the median")


def _lstsq(y: np.ndarray, x: np.ndarray, bench: str, where: str, need: str) -> _Fit:
    """Least squares y = x @ coef; refuses a design that cannot separate the coefficients."""
    if x.shape[0] <= x.shape[1] or np.linalg.matrix_rank(x) < x.shape[1]:
        raise TracekitError(f"benchmark {bench} has too few distinct rows to fit ({x.shape[0]} usable)",
                            where=where, fix=f"rerun tools/microbench/run_suite.py: the fit needs {need}")
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    res = y - x @ coef
    rms = float(np.sqrt(np.mean(res ** 2)))
    scale = float(np.mean(np.abs(y)))
    return _Fit(coef, y.size, f"rms {rms:.3g} ns" + (f" ({rms / scale:.1%} of the mean)" if scale else ""))


def _select(rows, bench, where, **equal: object) -> list[Mapping[str, Any]]:
    """Rows whose columns equal the given values (``max`` picks the column's largest value)."""
    out = list(rows)
    for col, want in equal.items():
        vals = _column(out, col, bench, where) if out else np.array([])
        if want == "max" and vals.size:
            want = vals.max()
        out = [r for r, v in zip(out, vals) if v == want]
    if not out:
        cond = ", ".join(f"{k}={v}" for k, v in equal.items())
        raise _NoRows(f"{bench} has no rows with {cond}")
    return out


class _NoRows(Exception):
    """A benchmark is present but holds none of the rows a fit uses (e.g. only recorded methods)."""


# -- the fits: each returns (fit, {field key: (coefficient index, scale, method)}) ------------------------


def _fit_hbm_copy(rows, where):
    bench = "hbm_copy_per_sm"
    one = _select(rows, bench, where, sms=1)
    unrolled = all("unroll" in r for r in one)  # files before the unrolled copy have one kernel
    if unrolled:  # the copy with loads in flight, as DeepEP's unrolled warp copies keep them
        one = _select(one, bench, where, unroll="max")
    f = _median(_column(one, "gbyte_s", bench, where))
    text = "median GB/s of the one-SM rows" + (" of the most-unrolled copy" if unrolled else "")
    return f, {"gpu.sm_copy_bandwidth_gbyte_s": (0, 1.0, text)}


def _median_of(bench: str, col: str, method: str, key: str, scale: float, text: str):
    """A field as ``scale`` x the median of ``col`` over the rows of one ``method``."""
    def fit(rows, where):
        sel = _select(rows, bench, where, method=method)
        return _median(_column(sel, col, bench, where)), {key: (0, scale, text)}
    return fit


_Col = Callable[[str], np.ndarray]


def _linear(bench: str, y: Callable[[_Col], np.ndarray], terms: Sequence[Callable[[_Col], Any]],
            fields: Mapping[str, int], text: str, need: str, keep: Callable[[_Col], np.ndarray] | None = None,
            **select: object):
    """Least squares ``y = sum(coef_i * term_i)`` over the rows matching ``select`` and, of those,
    the ones where the mask ``keep`` (of their columns, like a term) holds; ``fields`` maps a
    profile field to the index of its coefficient. A term may return a list of columns (one per level)."""
    def fit(rows, where):
        sel = _select(rows, bench, where, **select) if select else list(rows)
        if keep is not None:  # a missing column is the same one-line error as in a term
            sel = [r for r, k in zip(sel, keep(lambda name: _column(sel, name, bench, where))) if k]
            if not sel:
                raise _NoRows(f"{bench} has none of the rows its fit needs ({need})")
        col: _Col = lambda name: _column(sel, name, bench, where)  # noqa: E731
        target = y(col)
        x = []
        for term in terms:
            v = term(col)
            x.extend(v if isinstance(v, list) else [np.broadcast_to(np.asarray(v, np.float64), target.shape)])
        f = _lstsq(target, np.column_stack(x), bench, where, need)
        return f, {key: (i, 1.0, f"least squares {text}") for key, i in fields.items()}
    return fit


_ONE = lambda c: 1.0  # noqa: E731 - the intercept term


#: benchmark -> its fit. gemm_sm_reserved, cast_int8 and the non-fitted methods are recorded only.
FITS: dict[str, Callable] = {
    "hbm_copy_per_sm": _fit_hbm_copy,
    "kernel_launch": _median_of("kernel_launch", "ns_per_launch", "event_back_to_back", "gpu.kernel_launch_ns",
                                1.0, "median of back-to-back empty launches (events)"),
    # per SM with the most warps (24, as DeepEP's 768-thread blocks): the replay charges a channel's SM
    # per token (tracekit/model/cluster.py copy_ns), its warps working side by side
    "token_copy_loop": _linear(
        "token_copy_loop", lambda c: c("ns_per_token_per_sm"),
        [_ONE, lambda c: c("payload_bytes") + c("meta_bytes"), lambda c: (c("scales") > 0).astype(np.float64)],
        {"gpu.dispatch_token_ns": 0, "gpu.fp8_token_ns": 2},
        "ns/token/SM = a + bytes/rate + b*[scales] on one SM with the most warps",
        "one-SM rows with and without scales at two or more payload sizes", warps_per_sm="max", sms=1, chunk=0),
    "chunk_sync": _linear(
        "chunk_sync", lambda c: c("ns_per_token"),
        [lambda c: 1.0 / c("chunk"),
         lambda c: [(c("payload_bytes") == p).astype(np.float64) for p in np.unique(c("payload_bytes"))]],
        {"gpu.chunk_sync_ns": 0}, "ns/token = c/chunk + a[payload]", "two or more chunk sizes per payload"),
    "combine_reduce": _linear(
        "combine_reduce", lambda c: c("ns_per_token_per_sm"),
        [_ONE, lambda c: c("topk"), lambda c: (c("topk") + 1) * c("payload_bytes")],
        {"gpu.combine_token_ns": 0, "gpu.combine_topk_ns": 1},
        "ns/token/SM = a + b*topk + bytes/rate on one SM with 24 warps",
        "24-warp rows at two or more top-k values and payload sizes", warps_per_sm=COMBINE_WARPS, sms=1),
    # top-k >= 1: a token with no selection sends nothing (its row times the cast alone), and a
    # dispatched token always has one (the first selection's message copy and flag are in ll_token_ns)
    "cast_fp8": _linear(
        "cast_fp8", lambda c: c("ns_per_token_per_sm"), [_ONE, lambda c: c("topk")],
        {"gpu.ll_token_ns": 0, "gpu.ll_selection_ns": 1},
        f"ns/token/SM = a + b*topk at hidden {REFERENCE_HIDDEN}, top-k >= 1",
        f"hidden {REFERENCE_HIDDEN} rows at two or more top-k values >= 1", keep=lambda c: c("topk") >= 1,
        hidden=REFERENCE_HIDDEN, warps_per_sm="max"),
    "ll_combine": _linear(
        "ll_combine", lambda c: c("ns_per_token_per_sm"), [_ONE, lambda c: c("topk")],
        {"gpu.ll_combine_token_ns": 0}, f"ns/token/SM = a + b*topk at {REFERENCE_ROW_BYTES} B rows",
        "two or more top-k values", payload_bytes=REFERENCE_ROW_BYTES),
    "layout": _linear(
        "layout", lambda c: c("time_ns") - c("empty_kernel_ns"),
        [_ONE, lambda c: c("tokens"), lambda c: c("tokens") * c("ranks")],
        {"host.layout_base_ns": 0, "host.layout_token_ns": 1, "host.layout_token_rank_ns": 2},
        "(time - empty kernel) = a + b*tokens + c*tokens*ranks", "two or more token counts at two or more rank counts"),
    "notify": _linear(
        "notify", lambda c: c("time_ns") - c("empty_kernel_ns"), [_ONE, lambda c: c("ranks")],
        {"host.notify_base_ns": 0, "host.notify_rank_ns": 1}, "(time - empty kernel) = a + b*ranks",
        "two or more values of ranks"),
    "mapped_poll": _median_of("mapped_poll", "ns", "pingpong_round_trip", "host.cpu_wait_ns", 0.5,
                              "half the median GPU-to-CPU-to-GPU round trip over mapped host memory"),
    "alloc": _median_of("alloc", "ns", "torch_empty_set", "host.alloc_ns", 1.0,
                        "median host time of one set of receive tensors"),
    "host_sync": _median_of("host_sync", "ns", "event_record_sync_idle", "host.stream_sync_ns", 1.0,
                            "median event record + synchronize"),
}


def _rounded(key: str, raw: float) -> int | float:
    """Profile value of a fit: whole ns for int fields, 1 decimal for bandwidths, 4 significant digits else."""
    section, _, name = key.partition(".")
    raw = max(raw, 0.0)
    try:
        ftype = schemas.load("hardware").field(name, section).type
    except KeyError:
        ftype = "float64" if name.endswith("_gbyte_s") else "int64"
    if ftype == "int64":
        return int(round(raw))
    if name.endswith("_gbyte_s"):
        return round(raw, 1)
    return float(f"{raw:.4g}")


def fit_results(results: Results) -> tuple[list[Fitted], list[str]]:
    """Every field the file's benchmarks determine, in the order of :data:`FITS`, and a note for each
    benchmark present without the rows its fit uses."""
    out: list[Fitted] = []
    notes: list[str] = []
    for bench, fit in FITS.items():
        rows = results.benchmarks.get(bench)
        if not rows:
            continue
        try:
            f, fields = fit(rows, results.where)
        except _NoRows as exc:
            notes.append(str(exc))
            continue
        for key, (index, scale, method) in fields.items():
            raw = float(f.coef[index]) * scale
            out.append(Fitted(key, _rounded(key, raw), raw, bench, f.points, method, f.residual))
    if not out:
        raise TracekitError("no benchmark that tracekit calibrate fits", where=results.where,
                            fix=f"the file needs one of {', '.join(FITS)} (tools/microbench/run_suite.py writes them)"
                            + (f"; {'; '.join(notes)}" if notes else ""))
    return out, notes


# -- the calibrated profile ----------------------------------------------------------------------
def calibrated_profile(base: Profile, fitted: Sequence[Fitted], where: str, name: str,
                       description: str) -> tuple[Profile, list[Fitted]]:
    """``base`` with the fitted values and their sources; returns (profile, fits the schema lacks)."""
    hw = schemas.load("hardware")
    known = {f"{f.section}.{f.name}" for f in hw.fields}
    doc: dict[str, Any] = {"name": name, "description": description}
    for f in hw.fields:
        if f.name not in base.values.get(f.section, {}):  # an optional field the base leaves to its default
            continue
        doc.setdefault(f.section, {})[f.name] = {"value": base.values[f.section][f.name],
                                                 "source": base.sources[f.section][f.name]}
    skipped = []
    for fit in fitted:
        if fit.key not in known:
            skipped.append(fit)
            continue
        section, _, field = fit.key.partition(".")
        doc[section][field] = {"value": fit.value, "source": fit.source(where)}
    return parse_profile(doc, where=f"calibrated profile {name}"), skipped


def _toml_value(v: Any) -> str:
    if isinstance(v, str):
        return json.dumps(v)  # TOML basic strings take JSON's escapes
    if isinstance(v, float):
        return repr(v)
    return str(int(v))


def profile_toml(profile: Profile, header: str = "") -> str:
    """The profile as a TOML file in the shipped profiles' layout (sections in schema order)."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"name = {_toml_value(profile.name)}", f"description = {_toml_value(profile.description)}"]
    section = None
    for f in schemas.load("hardware").fields:
        if f.name not in profile.values.get(f.section, {}):  # optional, left to its default
            continue
        if f.section != section:
            section = f.section
            lines += ["", f"[{section}]"]
        value, source = profile.values[f.section][f.name], profile.sources[f.section][f.name]
        lines.append(f"{f.name} = {{ value = {_toml_value(value)}, source = {_toml_value(source)} }}")
    return "\n".join(lines) + "\n"
