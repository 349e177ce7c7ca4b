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
                            fix="give the JSON written by tools/microbench/run_suite.py")
    try:
        doc = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TracekitError(f"not valid JSON ({exc})", where=where,
                            fix="give the JSON written by tools/microbench/run_suite.py") from None
    return parse_results(doc, where)


def parse_results(doc: Any, where: str) -> Results:
    """Check the layout of a parsed results document and the types of the columns it carries."""
    if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), dict) or not isinstance(doc.get("meta"), dict):
        raise TracekitError("not a micro-benchmark results file: expected {\"meta\": {...}, \"benchmarks\": {...}}",
                            where=where, fix="give the JSON written by tools/microbench/run_suite.py")
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


# -- the fits: one function per benchmark: (fit, {field key: (coefficient index, scale, method)}) --------


def _fit_hbm_copy(rows, where):
    bench = "hbm_copy_per_sm"
    one = _select(rows, bench, where, sms=1)
    f = _median(_column(one, "gbyte_s", bench, where))
    return f, {"gpu.sm_copy_bandwidth_gbyte_s": (0, 1.0, "median GB/s of the one-SM rows")}


def _fit_median_of(bench: str, col: str, method: str, key: str, scale: float, text: str):
    def fit(rows, where):
        sel = _select(rows, bench, where, method=method)
        return _median(_column(sel, col, bench, where)), {key: (0, scale, text)}
    return fit


def _fit_token_copy(rows, where):
    bench = "token_copy_loop"
    sel = _select(rows, bench, where, warps_per_sm=1, chunk=0)
    y = _column(sel, "ns_per_token_per_warp", bench, where)
    nbytes = _column(sel, "payload_bytes", bench, where) + _column(sel, "meta_bytes", bench, where)
    fp8 = (_column(sel, "scales", bench, where) > 0).astype(np.float64)
    f = _lstsq(y, np.column_stack([np.ones_like(y), nbytes, fp8]), bench, where,
               "one-warp rows with and without scales at two or more payload sizes")
    text = "least squares ns/token/warp = a + bytes/rate + b*[scales]"
    return f, {"gpu.dispatch_token_ns": (0, 1.0, text), "gpu.fp8_token_ns": (2, 1.0, text)}


def _fit_chunk_sync(rows, where):
    bench = "chunk_sync"
    y = _column(rows, "ns_per_token", bench, where)
    chunk = _column(rows, "chunk", bench, where)
    payload = _column(rows, "payload_bytes", bench, where)
    levels = np.unique(payload)
    x = np.column_stack([1.0 / chunk] + [(payload == p).astype(np.float64) for p in levels])
    f = _lstsq(y, x, bench, where, "two or more chunk sizes per payload")
    return f, {"gpu.chunk_sync_ns": (0, 1.0, "least squares ns/token = c/chunk + a[payload]")}


def _fit_combine(rows, where):
    bench = "combine_reduce"
    sel = _select(rows, bench, where, warps_per_sm=1)
    y = _column(sel, "ns_per_token_per_warp", bench, where)
    k = _column(sel, "topk", bench, where)
    nbytes = (k + 1) * _column(sel, "payload_bytes", bench, where)
    f = _lstsq(y, np.column_stack([np.ones_like(y), k, nbytes]), bench, where,
               "one-warp rows at two or more top-k values and payload sizes")
    text = "least squares ns/token/warp = a + b*topk + bytes/rate"
    return f, {"gpu.combine_token_ns": (0, 1.0, text), "gpu.combine_topk_ns": (1, 1.0, text)}


def _fit_ll_send(rows, where):
    bench = "cast_fp8"
    sel = _select(rows, bench, where, hidden=REFERENCE_HIDDEN, warps_per_sm="max")
    y = _column(sel, "ns_per_token_per_sm", bench, where)
    k = _column(sel, "topk", bench, where)
    f = _lstsq(y, np.column_stack([np.ones_like(y), k]), bench, where, f"hidden {REFERENCE_HIDDEN} rows at two or more top-k values")
    text = f"least squares ns/token/SM = a + b*topk at hidden {REFERENCE_HIDDEN}"
    return f, {"gpu.ll_token_ns": (0, 1.0, text), "gpu.ll_selection_ns": (1, 1.0, text)}


def _fit_ll_combine(rows, where):
    bench = "ll_combine"
    sel = _select(rows, bench, where, payload_bytes=REFERENCE_ROW_BYTES)
    y = _column(sel, "ns_per_token_per_sm", bench, where)
    k = _column(sel, "topk", bench, where)
    f = _lstsq(y, np.column_stack([np.ones_like(y), k]), bench, where, "two or more top-k values")
    return f, {"gpu.ll_combine_token_ns": (0, 1.0, f"least squares ns/token/SM = a + b*topk at {REFERENCE_ROW_BYTES} B rows")}


def _fit_kernel_beyond_empty(bench: str, xcol: Callable[[Callable[[str], np.ndarray]], np.ndarray], base: str,
                             slope: str, xtext: str):
    def fit(rows, where):
        col = lambda name: _column(rows, name, bench, where)  # noqa: E731
        y = col("time_ns") - col("empty_kernel_ns")
        x = xcol(col)
        f = _lstsq(y, np.column_stack([np.ones_like(y), x]), bench, where, f"two or more values of {xtext}")
        text = f"least squares (time - empty kernel) = a + b*{xtext}"
        return f, {base: (0, 1.0, text), slope: (1, 1.0, text)}
    return fit


#: benchmark -> its fit. gemm_sm_reserved, cast_int8 and the non-fitted methods are recorded only.
FITS: dict[str, Callable] = {
    "hbm_copy_per_sm": _fit_hbm_copy,
    "kernel_launch": _fit_median_of("kernel_launch", "ns_per_launch", "event_back_to_back", "gpu.kernel_launch_ns",
                                    1.0, "median of back-to-back empty launches (events)"),
    "token_copy_loop": _fit_token_copy,
    "chunk_sync": _fit_chunk_sync,
    "combine_reduce": _fit_combine,
    "cast_fp8": _fit_ll_send,
    "ll_combine": _fit_ll_combine,
    "layout": _fit_kernel_beyond_empty("layout", lambda c: c("tokens") * c("experts"), "host.layout_base_ns",
                                       "host.layout_token_expert_ns", "tokens x experts"),
    "notify": _fit_kernel_beyond_empty("notify", lambda c: c("ranks"), "host.notify_base_ns", "host.notify_rank_ns",
                                       "ranks"),
    "mapped_poll": _fit_median_of("mapped_poll", "ns", "pingpong_round_trip", "host.cpu_wait_ns", 0.5,
                                  "half the median GPU-to-CPU-to-GPU round trip over mapped host memory"),
    "alloc": _fit_median_of("alloc", "ns", "torch_empty_set", "host.alloc_ns", 1.0,
                            "median host time of one set of receive tensors"),
    "host_sync": _fit_median_of("host_sync", "ns", "event_record_sync_idle", "host.stream_sync_ns", 1.0,
                                "median event record + synchronize"),
}


def _rounded(key: str, raw: float) -> int | float:
    """Profile value of a fit: whole ns for int fields, 1 decimal for bandwidths, 4 significant digits else."""
    section, _, name = key.partition(".")
    raw = max(raw, 0.0)
    try:
        ftype = schemas.load("hardware").field(name, section).type
    except KeyError:
        ftype = "float64" if name == "layout_token_expert_ns" or name.endswith("_gbyte_s") else "int64"
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
        if f.section != section:
            section = f.section
            lines += ["", f"[{section}]"]
        value, source = profile.values[f.section][f.name], profile.sources[f.section][f.name]
        lines.append(f"{f.name} = {{ value = {_toml_value(value)}, source = {_toml_value(source)} }}")
    return "\n".join(lines) + "\n"
