"""PyTorch profiler (Kineto) traces in: GPU kernels, streams, user annotations -> events (+ traffic).

A Kineto trace is Chrome-trace JSON (``traceEvents``; plain or gzipped), one file per rank, with
``distributedInfo`` giving ``rank`` and ``world_size``. What becomes an ``events.v1`` row:

* GPU kernels (``cat: kernel``), on resource ``node<n>/rank<r>/stream<s>``:
  - NCCL all-to-all kernels (``Collective name`` all_to_all / all_to_allv / alltoall...) become
    ``dispatch`` or ``combine`` (stage and phase), with the bytes and tokens sent; a small
    integer all-to-all (the exchange of per-peer counts) is the ``notify`` stage of the dispatch.
    The phase comes from the enclosing user annotations (``record_function`` scopes whose name
    contains dispatch / combine / notify); without them, payload all-to-alls alternate
    dispatch, combine, dispatch... per rank.
  - DeepEP kernels (``deep_ep::`` / ``dpsk::ep::``): ``get_dispatch_layout`` -> layout,
    ``notify_dispatch`` / ``cached_notify*`` -> notify, ``dispatch`` -> dispatch, ``combine`` ->
    combine, ``clean_low_latency_buffer`` -> clean; intranode / internode / low-latency noted in
    ``args``. A notify takes the phase of the next DeepEP kernel on its stream.
  - any other kernel: stage ``compute``, kind ``compute``.
* ``gpu_memcpy`` / ``gpu_memset``: stage memcpy / memset, kind memory, with their bytes.
* user annotations (``user_annotation`` on the CPU, ``gpu_user_annotation`` on a stream):
  kind ``annotation``, on ``.../cpu/annotations`` or ``.../stream<s>/annotations``.
* the host side of a launch: a kernel's, copy's or set's ``args`` get ``host_tid`` (the CPU thread of
  the runtime call with its correlation id, e.g. ``cudaLaunchKernel``) and ``host_lead_ns`` (GPU start
  minus the call's start), as Kineto recorded them.

Times: Kineto's microsecond timestamps are parsed as decimals, so nanoseconds are exact; all
files share one origin (the earliest imported event), which is meaningful when the ranks' clocks
agree (one host, or synchronised hosts). ``traffic.v1`` rows (per step, layer, phase, source and
destination rank) come from the all-to-alls' ``In split size`` lists (dim-0 rows sent to each
peer); when both ends of a pair were captured, the receiver's ``Out split size`` must agree.
"""

from __future__ import annotations

import bisect
import gzip
import json
import os
import re
import zlib
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import polars as pl

from tracekit import schemas
from tracekit.errors import TracekitError
from tracekit.io.guard import json_loads

_DTYPE_BYTES = {"float": 4, "float32": 4, "double": 8, "float64": 8, "half": 2, "float16": 2, "bfloat16": 2,
                "long": 8, "int64": 8, "int": 4, "int32": 4, "short": 2, "int16": 2, "char": 1, "int8": 1,
                "byte": 1, "uint8": 1, "bool": 1, "float8_e4m3fn": 1, "float8_e5m2": 1}
_INT_DTYPES = {"long", "int64", "int", "int32", "short", "int16", "char", "int8", "byte", "uint8"}
_A2A = re.compile(r"all_?to_?all", re.I)
_DEEPEP = re.compile(r"(deep_ep|dpsk::ep)::")
_KEEP_ARGS = ("stream", "correlation", "grid", "block", "registers per thread", "shared memory", "device")


@dataclass
class KinetoImport:
    """The tables an import produced and its metadata."""

    events: pl.DataFrame
    traffic: pl.DataFrame | None
    meta: dict[str, Any]
    summary: dict[str, Any]
    traffic_meta: dict[str, Any]


def _parse_float(s: str) -> Decimal:
    return Decimal(s)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def load_json(path: Path) -> dict[str, Any]:
    """One trace file (plain JSON or gzip), numbers with a fraction parsed as Decimal."""
    where = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TracekitError(f"cannot read ({exc.strerror})", where=where, fix="check the path") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise TracekitError(f"truncated or corrupt gzip ({exc})", where=where,
                                fix="copy the trace again; gzip -t FILE checks it") from None
    try:
        doc = json_loads(raw.decode("utf-8"), where=where, parse_float=_parse_float, parse_constant=_no_constant,
                         fix="pass the profiler's .json or .json.gz output")
    except UnicodeDecodeError:
        raise TracekitError("not UTF-8 text, so not a JSON trace", where=where,
                            fix="pass the profiler's .json or .json.gz output") from None
    except ValueError as exc:
        if not isinstance(exc, json.JSONDecodeError):
            raise TracekitError(f"not a Kineto trace ({exc})", where=where,
                                fix="write finite numbers; the profiler never writes Infinity or NaN") from None
        raise TracekitError(f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})", where=where,
                            fix="pass the profiler's .json or .json.gz output (is the file truncated?)") from None
    if isinstance(doc, list):
        doc = {"traceEvents": doc}
    if not isinstance(doc, dict) or not isinstance(doc.get("traceEvents"), list):
        raise TracekitError("no traceEvents list", where=where,
                            fix="pass a Chrome/Kineto trace: a JSON object with a traceEvents array")
    return doc


def expand_paths(paths: list[str | os.PathLike[str]]) -> list[Path]:
    """Files as given; a directory is replaced by the profiler traces inside it: its
    ``*.pt.trace.json[.gz]`` files (the profiler's naming), or else all ``*.json[.gz]``."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(q for q in p.iterdir() if q.is_file())
            found = [q for q in files if q.name.endswith((".pt.trace.json", ".pt.trace.json.gz"))] or \
                [q for q in files if q.name.endswith((".json", ".json.gz"))]
            if not found:
                raise TracekitError("directory holds no .json or .json.gz traces", where=str(p),
                                    fix="pass the per-rank profiler traces")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise TracekitError("no such file or directory", where=str(p), fix="check the path")
    return out


#: Largest |time| accepted, in ns (2^62 ns is 146 years: any clock's microseconds since the epoch fit,
#: and differences and ts + dur of two such times cannot overflow int64).
MAX_ABS_NS = 1 << 62


def _ns(v: Any, where: str, what: str) -> int:
    try:
        ns = int((Decimal(v) if not isinstance(v, Decimal) else v) * 1000)
    except (InvalidOperation, TypeError, ValueError, OverflowError):
        raise TracekitError(f"{what} {v!r} is not a finite number", where=where, fix="the trace is malformed") from None
    if abs(ns) > MAX_ABS_NS:
        raise TracekitError(f"{what} {v} us is out of range (more than 146 years from 0)", where=where,
                            fix="the trace is malformed: Kineto writes microseconds since the profiler's start or "
                                "the epoch")
    return ns


def _int(v: Any, where: str, what: str, lo: int, hi: int) -> int:
    """An integer field of the trace in [lo, hi]."""
    if isinstance(v, bool) or not isinstance(v, (int, str)) or not str(v).strip().lstrip("-").isdigit():
        raise TracekitError(f"{what} {v!r} is not an integer", where=where, fix="the trace is malformed")
    if not lo <= int(v) <= hi:
        raise TracekitError(f"{what} {v} outside [{lo}, {hi}]", where=where, fix="the trace is malformed")
    return int(v)


#: Largest world size accepted (a sanity bound before anything is sized by it).
MAX_WORLD = 1 << 16


def _int_list(v: Any) -> list[int]:
    if isinstance(v, list):
        return [int(x) for x in v]
    if isinstance(v, str):
        v = v.strip()
        if not v or v == "[]":
            return []
        try:
            return [int(x) for x in json.loads(v)]
        except (ValueError, TypeError):
            return []
    return []


def deepep_stage(name: str) -> tuple[str, str, str, str] | None:
    """(stage, phase, kind, variant) of a DeepEP kernel name, or None. A phase of "" means
    "the phase of the next DeepEP kernel on the stream" (notify kernels shared by both)."""
    if not _DEEPEP.search(name):
        return None
    variant = ("low_latency" if re.search(r"internode_ll|low_latency", name) else
               "internode" if "internode" in name else "intranode" if "intranode" in name else "")
    short = re.sub(r"<.*", "", re.sub(r"\(.*", "", name)).split("::")[-1]
    if "layout" in short:
        return "layout", "dispatch", "comm", variant
    if "clean" in short:
        return "clean", "", "sync", variant
    if "notify" in short:
        phase = "combine" if "combine" in short else "dispatch" if short == "notify_dispatch" else ""
        return "notify", phase, "sync", variant
    if "dispatch" in short:
        return "dispatch", "dispatch", "comm", variant
    if "combine" in short:
        return "combine", "combine", "comm", variant
    return short or "deepep", "", "comm", variant


@dataclass
class _Rank:
    path: Path
    rank: int
    world: int | None
    doc: dict[str, Any]


class _Scopes:
    """User annotations of one CPU thread, to find the ones enclosing a launch."""

    def __init__(self) -> None:
        self.items: list[tuple[int, int, str]] = []  # (start, end, name), sorted by start

    def enclosing(self, ts: int) -> list[str]:
        """Names of the annotations around ``ts``, innermost (latest start) first."""
        k = bisect.bisect_right(self.items, (ts, 1 << 62, ""))
        return [name for start, end, name in reversed(self.items[:k]) if start <= ts <= end]


def _phase_from_scopes(names: list[str]) -> tuple[str, str] | None:
    for n in names:
        low = n.lower()
        if low.startswith("nccl:") or low.startswith("profilerstep"):
            continue
        if "notify" in low or "layout" in low:
            return "notify", "dispatch"
        if "dispatch" in low:
            return "dispatch", "dispatch"
        if "combine" in low:
            return "combine", "combine"
    return None


def _step_from_scopes(names: list[str]) -> int:
    for n in names:
        m = re.match(r"ProfilerStep#(\d+)", n)
        if m:
            return int(m.group(1))
    return 0


def import_kineto(paths: list[str | os.PathLike[str]], *, gpus_per_node: int | None = None) -> KinetoImport:
    """Read Kineto traces (files or directories) into ``events`` (and ``traffic`` when the
    all-to-alls carry split sizes). Bad input raises :class:`TracekitError`."""
    files = expand_paths(paths)
    ranks: list[_Rank] = []
    for p in files:
        doc = load_json(p)
        info = doc.get("distributedInfo") or {}
        if not isinstance(info, dict):
            raise TracekitError(f"distributedInfo is a {type(info).__name__}, not an object", where=str(p),
                                fix="the trace is malformed: torch.distributed writes {\"rank\": R, \"world_size\": W}")
        rank, world = info.get("rank"), info.get("world_size")
        if rank is None and len(files) > 1:
            raise TracekitError("no distributedInfo.rank, so its rank is unknown", where=str(p),
                                fix="pass one file per rank from a torch.distributed run, or import files one at a time")
        rank = _int(rank or 0, str(p), "distributedInfo.rank", 0, MAX_WORLD - 1)
        world = _int(world, str(p), "distributedInfo.world_size", 1, MAX_WORLD) if world is not None else None
        ranks.append(_Rank(p, rank, world, doc))
    worlds = {r.world for r in ranks if r.world is not None}
    if len(worlds) > 1:
        a, b = sorted(worlds)[:2]
        fa = next(r.path for r in ranks if r.world == a)
        fb = next(r.path for r in ranks if r.world == b)
        raise TracekitError(f"mixed world sizes: {fa} has world_size {a}, {fb} has {b}", where=str(fb),
                            fix="import the traces of one run together")
    seen: dict[int, Path] = {}
    for r in ranks:
        if r.rank in seen:
            raise TracekitError(f"rank {r.rank} appears twice (also in {seen[r.rank]})", where=str(r.path),
                                fix="pass one trace per rank")
        seen[r.rank] = r.path
    world = worlds.pop() if worlds else max(r.rank for r in ranks) + 1
    for r in ranks:
        if not 0 <= r.rank < world:
            raise TracekitError(f"rank {r.rank} outside world_size {world}", where=str(r.path),
                                fix="the trace's distributedInfo is inconsistent")
    gpn = gpus_per_node or min(8, world)
    rows: list[dict[str, Any]] = []
    sends: list[dict[str, Any]] = []
    for r in sorted(ranks, key=lambda r: r.rank):
        try:
            _rank_rows(r, gpn, rows, sends)
        except (ValueError, TypeError, OverflowError, KeyError, AttributeError) as exc:
            # a field of an unexpected type or size deep in an event: the file is malformed
            raise TracekitError(f"malformed event ({type(exc).__name__}: {exc})", where=str(r.path),
                                fix="pass the profiler's own output, unedited") from None
    if not rows:
        raise TracekitError("no GPU kernels, copies or annotations in the traces", where=str(files[0]),
                            fix="profile with ProfilerActivity.CUDA")
    t0 = min(row["ts_ns"] for row in rows)
    for row in rows:
        row["ts_ns"] -= t0
    meta = {"source": "import:kineto", "ep_size": world, "gpus_per_node": gpn}
    try:
        events = pl.DataFrame(rows, schema_overrides={"flow_out": pl.Int64, "flow_in": pl.Int64},
                              infer_schema_length=None)
        table = schemas.conform(events.to_arrow(), "events", meta, where=str(files[0]))
        traffic = _traffic(sends)
    except (pl.exceptions.PolarsError, OverflowError, ValueError, TypeError) as exc:
        raise TracekitError(f"a value out of range or of the wrong type ({str(exc).splitlines()[0][:200]})",
                            where=", ".join(map(str, files)), fix="pass the profiler's own output, unedited") from None
    events = pl.from_arrow(table).sort(["ts_ns", "resource"], maintain_order=True)
    traffic_meta = dict(meta)
    hiddens = {s["hidden"] for s in sends if s["hidden"]}
    if len(hiddens) == 1:
        traffic_meta["hidden"] = hiddens.pop()
    counts = events.group_by("stage").len().sort("stage")
    summary = {"files": len(files), "ranks": sorted(seen), "world_size": world, "events": events.height,
               "stages": dict(zip(counts["stage"].to_list(), counts["len"].to_list())),
               "traffic_rows": 0 if traffic is None else traffic.height}
    return KinetoImport(events, traffic, meta, summary, traffic_meta)


def _rank_rows(r: _Rank, gpn: int, rows: list[dict[str, Any]], sends: list[dict[str, Any]]) -> None:
    where = str(r.path)
    evs = r.doc["traceEvents"]
    prefix = f"node{r.rank // gpn}/rank{r.rank}"
    scopes: dict[tuple[Any, Any], _Scopes] = {}
    launches: dict[int, tuple[Any, Any, int]] = {}  # correlation -> (pid, tid, ts)
    for e in evs:
        if not isinstance(e, dict):
            continue
        cat = e.get("cat")
        if cat == "user_annotation" and e.get("ph") == "X":
            s = scopes.setdefault((e.get("pid"), e.get("tid")), _Scopes())
            start = _ns(e.get("ts"), where, "ts")
            s.items.append((start, start + _ns(e.get("dur", 0), where, "dur"), str(e.get("name", ""))))
        elif cat in ("cuda_runtime", "cuda_driver") and isinstance(e.get("args"), dict):
            corr = e["args"].get("correlation")
            if corr is not None:
                launches[int(corr)] = (e.get("pid"), e.get("tid"), _ns(e.get("ts"), where, "ts"))
    for s in scopes.values():
        s.items.sort()

    def context(args: dict[str, Any]) -> list[str]:
        corr = args.get("correlation")
        if corr is None or int(corr) not in launches:
            return []
        pid, tid, ts = launches[int(corr)]
        s = scopes.get((pid, tid))
        return s.enclosing(ts) if s else []

    kernels: list[dict[str, Any]] = []
    for i, e in enumerate(evs):
        if not isinstance(e, dict) or e.get("ph") != "X":
            continue
        cat = e.get("cat")
        if cat not in ("kernel", "gpu_memcpy", "gpu_memset", "user_annotation", "gpu_user_annotation"):
            continue
        args = e.get("args")
        name = str(e.get("name", ""))
        if cat in ("kernel", "gpu_memcpy", "gpu_memset") and (not isinstance(args, dict) or "stream" not in args):
            raise TracekitError(f"event {i} ({cat} {name[:60]!r}) has no args.stream", where=where,
                                fix="export the trace with the PyTorch profiler's CUDA activity; a kernel needs its args")
        ts = _ns(e.get("ts"), where, f"event {i} ts")
        dur = _ns(e.get("dur", 0), where, f"event {i} dur")
        if dur < 0:
            raise TracekitError(f"event {i} ({name[:60]!r}) has a negative duration", where=where,
                                fix="the trace is malformed")
        row = {"ts_ns": ts, "dur_ns": dur, "rank": r.rank, "name": name, "step": 0, "layer": 0,
               "tokens": 0, "bytes": 0, "src_rank": -1, "dst_rank": -1, "phase": "", "kind": "comm"}
        if cat == "user_annotation":
            low = name.lower()
            rows.append({**row, "resource": f"{prefix}/cpu/annotations", "stage": "annotation", "kind": "annotation",
                         "phase": "dispatch" if "dispatch" in low else "combine" if "combine" in low else ""})
            continue
        stream = args.get("stream") if isinstance(args, dict) else None
        if cat == "gpu_user_annotation":
            low = name.lower()
            res = f"{prefix}/stream{stream}/annotations" if stream is not None else f"{prefix}/gpu/annotations"
            rows.append({**row, "resource": res, "stage": "annotation", "kind": "annotation",
                         "phase": "dispatch" if "dispatch" in low else "combine" if "combine" in low else ""})
            continue
        row["resource"] = f"{prefix}/stream{stream}"
        kept = {k: args[k] for k in _KEEP_ARGS if k in args}
        launch = launches.get(int(args["correlation"])) if args.get("correlation") is not None else None
        if launch is not None:  # the host call that issued it: its thread and how long before the GPU start
            kept["host_tid"], kept["host_lead_ns"] = launch[1], ts - launch[2]
        names = context(args)
        row["step"] = _step_from_scopes(names)
        scope = next((n for n in names if not n.startswith("nccl:") and not n.startswith("ProfilerStep")), "")
        if scope:
            kept["annotation"] = scope
        if cat in ("gpu_memcpy", "gpu_memset"):
            row.update(stage="memcpy" if cat == "gpu_memcpy" else "memset", kind="memory",
                       bytes=int(args.get("bytes", 0) or 0))
            row["args"] = json.dumps(kept, default=str, sort_keys=True)
            rows.append(row)
            continue
        coll = str(args.get("Collective name", ""))
        dee = deepep_stage(name)
        if coll and _A2A.search(coll):
            kernels.append({"row": row, "args": args, "names": names, "kept": kept, "coll": coll})
        elif dee is not None:
            stage, phase, kind, variant = dee
            row.update(stage=stage, phase=phase, kind=kind)
            kept["deepep"] = variant or "yes"
            row["args"] = json.dumps(kept, default=str, sort_keys=True)
            rows.append(row)
        elif coll or name.startswith("nccl"):
            row.update(stage=(coll or "nccl").lower(), kind="comm")
            kept.update({k: args[k] for k in ("Collective name", "dtype", "In msg nelems", "Out msg nelems",
                                               "Group size") if k in args})
            row["args"] = json.dumps(kept, default=str, sort_keys=True)
            rows.append(row)
        else:
            row.update(stage="compute", phase="compute", kind="compute")
            row["args"] = json.dumps(kept, default=str, sort_keys=True)
            rows.append(row)
    _resolve_deepep_notify(rows, r.rank)
    _deepep_layers(rows, r.rank)
    _all_to_alls(kernels, r, rows, sends, where)


def _resolve_deepep_notify(rows: list[dict[str, Any]], rank: int) -> None:
    """A DeepEP notify without its own phase takes the phase of the next DeepEP kernel on its stream."""
    mine = sorted((row for row in rows if row["rank"] == rank and '"deepep"' in row.get("args", "")),
                  key=lambda row: row["ts_ns"])
    by_stream: dict[str, list[dict[str, Any]]] = {}
    for row in mine:
        by_stream.setdefault(row["resource"], []).append(row)
    for seq in by_stream.values():
        nxt = ""
        for row in reversed(seq):
            if row["phase"]:
                nxt = row["phase"]
            elif nxt:
                row["phase"] = nxt


def _deepep_layers(rows: list[dict[str, Any]], rank: int) -> None:
    """Number a rank's DeepEP dispatch (and combine) kernels in time order within each step: the n-th is
    layer n. Layout and notify kernels take the layer of the next dispatch or combine on their stream."""
    mine = sorted((row for row in rows if row["rank"] == rank and '"deepep"' in row.get("args", "")),
                  key=lambda row: row["ts_ns"])
    count: dict[tuple[int, str], int] = {}
    for row in mine:
        if row["stage"] in ("dispatch", "combine"):
            key = (row["step"], row["stage"])
            row["layer"] = count.get(key, 0)
            count[key] = row["layer"] + 1
    by_stream: dict[str, list[dict[str, Any]]] = {}
    for row in mine:
        by_stream.setdefault(row["resource"], []).append(row)
    for seq in by_stream.values():
        nxt = None
        for row in reversed(seq):
            if row["stage"] in ("dispatch", "combine"):
                nxt = row["layer"]
            elif nxt is not None:
                row["layer"] = nxt


def _all_to_alls(kernels: list[dict[str, Any]], r: _Rank, rows: list[dict[str, Any]], sends: list[dict[str, Any]],
                 where: str) -> None:
    """Phase, stage, bytes and per-peer traffic of one rank's all-to-all kernels (time order)."""
    kernels.sort(key=lambda k: k["row"]["ts_ns"])
    payload_count: dict[tuple[int, str], int] = {}
    alternate = 0
    pending_notify: list[dict[str, Any]] = []
    for k in kernels:
        row, args = k["row"], k["args"]
        dtype = str(args.get("dtype", "")).lower()
        size = _DTYPE_BYTES.get(dtype, 0)
        in_n = int(args.get("In msg nelems", 0) or 0)
        group = int(args.get("Group size", 0) or 0)
        in_split = _int_list(args.get("In split size"))
        out_split = _int_list(args.get("Out split size"))
        scoped = _phase_from_scopes(k["names"])
        small_int = dtype in _INT_DTYPES and in_n <= max(group, 1) * 64
        if scoped is not None:
            stage, phase = scoped
        elif small_int:
            stage, phase = "notify", ""
        else:
            phase = "dispatch" if alternate % 2 == 0 else "combine"
            stage = phase
            alternate += 1
        if stage == "notify" and not phase:
            pending_notify.append(row)
        elif stage != "notify":
            for nrow in pending_notify:
                nrow["phase"] = phase
            pending_notify = []
        row.update(stage=stage, phase=phase or "dispatch", kind="sync" if stage == "notify" else "comm")
        row["bytes"] = in_n * size
        rows_total = sum(in_split)
        row["tokens"] = rows_total if stage != "notify" else 0
        row["src_rank"] = r.rank
        kept = dict(k["kept"])
        kept.update({key: args[key] for key in ("Collective name", "dtype", "In msg nelems", "Out msg nelems",
                                                 "Group size", "In split size", "Out split size") if key in args})
        row["args"] = json.dumps(kept, default=str, sort_keys=True)
        if stage != "notify":
            key = (row["step"], phase)
            layer = payload_count.get(key, 0)
            payload_count[key] = layer + 1
            row["layer"] = layer
            if in_split:
                if group and len(in_split) != group:
                    raise TracekitError(f"all-to-all at {row['ts_ns']} ns: {len(in_split)} split sizes for a group of "
                                        f"{group}", where=where, fix="the trace's NCCL metadata is inconsistent")
                elems_per_row = in_n // rows_total if rows_total else 0
                sends.append({"step": row["step"], "layer": layer, "phase": phase, "rank": r.rank, "in": in_split,
                              "out": out_split, "bytes_per_row": elems_per_row * size, "where": where,
                              "hidden": elems_per_row})
        rows.append(row)
    for nrow in pending_notify:  # a trailing counts exchange: assume it precedes a dispatch
        nrow["phase"] = "dispatch"


def _traffic(sends: list[dict[str, Any]]) -> pl.DataFrame | None:
    if not sends:
        return None
    recv = {(s["step"], s["layer"], s["phase"], s["rank"]): s for s in sends}
    out = []
    for s in sends:
        for dst, n in enumerate(s["in"]):
            other = recv.get((s["step"], s["layer"], s["phase"], dst))
            if other is not None and other["out"] and len(other["out"]) > s["rank"] and other["out"][s["rank"]] != n:
                raise TracekitError(
                    f"{s['phase']} step {s['step']} layer {s['layer']}: rank {s['rank']} sends {n} rows to rank {dst}, "
                    f"but rank {dst} receives {other['out'][s['rank']]} from it", where=other["where"],
                    fix="import the traces of one run (same steps) together")
            if n:
                out.append({"step": s["step"], "layer": s["layer"], "phase": s["phase"], "src_rank": s["rank"],
                            "dst_rank": dst, "tokens": n, "bytes": n * s["bytes_per_row"]})
    if not out:
        return None
    return pl.DataFrame(out, schema_overrides={"step": pl.Int32, "layer": pl.Int32, "src_rank": pl.Int32,
                                               "dst_rank": pl.Int32, "tokens": pl.Int64, "bytes": pl.Int64}
                        ).sort(["step", "layer", "phase", "src_rank", "dst_rank"])
