"""Read one side of a diff from disk: a replay output directory, an imported capture directory, an
``events.parquet`` file, PyTorch profiler (Kineto) traces, or a ``.pftrace`` written by tracekit."""

from __future__ import annotations

import itertools

import json
import os
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from tracekit import schemas
from tracekit.analysis.matching import NameMap
from tracekit.analysis.profile import Trace
from tracekit.errors import TracekitError
from tracekit.io.guard import input_file, json_loads
from tracekit.io.tables import read_declared, read_table

#: what a side can be, for help texts and errors
FORMS = ("a replay output directory (events.parquet, counters.parquet, summary.json)",
         "an imported capture directory (events.parquet, traffic.parquet)", "an events.parquet file",
         "Kineto traces (.json / .json.gz files or a directory of them)", "a .pftrace written by tracekit")


#: events columns no measure reads (left unread by a ``lean`` load)
_UNMEASURED = ("args", "qp")
#: events columns only compared for equality or packed into keys by the measures: held as Int32
#: where their values fit in a ``lean`` load (memory on big traces)
_NARROW = ("msg_id", "flow_out", "flow_in")


def _frame(path: Path, schema: str, lean_read: bool = False) -> tuple[pl.DataFrame, dict[str, Any], str]:
    if schema == "events":
        lean = _events_lean(path, lean_read)
        if lean is not None:
            return lean
    from tracekit.io.validate import check_table

    table, meta, s = read_table(path, schema)
    check_table(table, meta, schema, str(path))  # the checks of tracekit validate: ranks, times, flows
    if schema == "events" and "args" in table.column_names:
        table = table.drop(["args"])  # free-form annotations: no measure reads them (memory on big traces)
    want = pl.from_arrow(table.slice(0, 0)).schema  # type: ignore[union-attr]
    if not _same_columns(path, want):
        return pl.from_arrow(table), meta, s.id  # type: ignore[return-value]
    # read again by polars' own Parquet reader once the Arrow copy is dropped: half the memory of
    # converting the Arrow table, whose string buffers the converted frame would keep alive
    del table
    pa.default_memory_pool().release_unused()  # the pool keeps freed pages otherwise
    return _read_polars(path, list(want), schemas.load(schema)), meta, s.id


def _read_polars(path: Path, columns: list[str], s: schemas.Schema, *, categorical: bool = False,
                 narrow: tuple[str, ...] = ()) -> pl.DataFrame:
    """``columns`` of ``path`` by polars' Parquet reader, non-nullable columns' nulls set to their
    defaults as conforming does; with ``categorical`` one column at a time, strings as categorical
    codes (the reader's buffers for one column, not all, at any time: memory on big traces), and
    the ``narrow`` columns as Int32 where their values fit."""
    fields = {f.name: f for f in s.fields}
    try:
        if not categorical:
            frame = pl.read_parquet(path, columns=columns)
        else:
            parts = []
            for c in columns:
                part = pl.read_parquet(path, columns=[c])
                if part[c].dtype == pl.String:
                    part = part.with_columns(pl.col(c).cast(narrow_categorical(part[c])))
                elif c in narrow and _fits_int32(part[c]):
                    part = part.with_columns(pl.col(c).cast(pl.Int32))
                parts.append(part)
            frame = pl.concat(parts, how="horizontal")
            del parts
    except (pl.exceptions.PolarsError, OSError) as exc:  # e.g. the file changed since it was checked
        raise TracekitError(f"unreadable Parquet data ({str(exc).splitlines()[0]})", where=str(path),
                            fix="the file is truncated, corrupt or being written; write it again") from None
    for c in columns:
        f = fields[c]
        if not f.nullable and f.default is None and frame[c].null_count():
            raise TracekitError(f"column {c}: {frame[c].null_count()} null values", where=str(path),
                                fix=f"{c} must be set on every row")
    defaults = [pl.col(c).fill_null(fields[c].default) for c in columns
                if not fields[c].nullable and fields[c].default is not None and frame[c].null_count()]
    return frame.with_columns(defaults) if defaults else frame  # the defaults conform filled in


class _ColumnReader:
    """The columns of a Parquet file read one at a time, with conforming's defaults: what the
    events checks read (a column or two at a time), without the whole table in memory."""

    def __init__(self, path: Path, s: schemas.Schema) -> None:
        self.path, self.fields = path, {f.name: f for f in s.fields}

    def column(self, name: str) -> pa.ChunkedArray:
        try:
            col = pq.read_table(self.path, columns=[name]).column(name)
        except (pa.ArrowException, OSError, ValueError, MemoryError) as exc:
            raise TracekitError(f"unreadable Parquet data ({str(exc).splitlines()[0]})", where=str(self.path),
                                fix="the file is truncated or corrupt; write it again") from None
        f = self.fields[name]
        if not f.nullable and col.null_count:
            if f.default is None:
                raise TracekitError(f"column {name}: {col.null_count} null values", where=str(self.path),
                                    fix=f"{name} must be set on every row")
            col = col.fill_null(pa.scalar(f.default, f.arrow_type))
        return col


_CATEGORIES = itertools.count()


def narrow_categorical(col: pl.Series) -> pl.DataType:
    """A categorical type for the strings of ``col`` whose codes are as narrow as its distinct
    values allow (UInt8 up to 255 of them, UInt16 up to 65,535, else polars' UInt32): a column
    of stages or phases then costs 1 byte a row instead of 4 (memory on big traces). Each call
    gets categories of its own, so a second file's values never overflow the first's codes; the
    measures turn categorical columns into strings before the two sides meet."""
    n = col.n_unique()
    if n > 65535:
        return pl.Categorical()
    physical = pl.UInt8 if n <= 255 else pl.UInt16
    return pl.Categorical(pl.Categories(f"tracekit.load.{next(_CATEGORIES)}", physical=physical))


def _fits_int32(col: pl.Series) -> bool:
    if not col.dtype.is_integer() or col.null_count() == col.len():
        return False
    return -(2**31) <= int(col.min()) and int(col.max()) < 2**31  # type: ignore[arg-type]


def _events_lean(path: Path, lean_read: bool = False) -> tuple[pl.DataFrame, dict[str, Any], str] | None:
    """An events file whose columns are the schema's, checked column by column and read with
    categorical strings (with ``lean_read``, without the columns no measure reads and with
    :data:`_NARROW` as Int32 where they fit); None where reading it conforms more than missing
    values (then the whole table is read, conformed and checked)."""
    from tracekit.io.validate import check_table

    meta, s = read_declared(path, "events")
    arrow = s.arrow_schema(meta)
    want = {f.name: t for f, t in zip(arrow, pl.from_arrow(arrow.empty_table()).schema.values())
            if f.name != "args"}  # free-form annotations: no measure reads them
    if not _same_columns(path, pl.Schema(want)):
        return None
    check_table(_ColumnReader(path, s), meta, "events", str(path))  # type: ignore[arg-type]
    pa.default_memory_pool().release_unused()  # the checks' columns: the pool keeps freed pages otherwise
    columns = [c for c in want if not (lean_read and c in _UNMEASURED)]
    return _read_polars(path, columns, s, categorical=True, narrow=_NARROW if lean_read else ()), meta, s.id


def _same_columns(path: Path, want: pl.Schema) -> bool:
    """Whether the file holds every column of ``want`` with its type (so reading conformed nothing
    but missing values, which :func:`_frame` fills the same way)."""
    try:
        have = pl.read_parquet_schema(path)
    except (pl.exceptions.PolarsError, OSError):
        return False
    return all(have.get(c) == t for c, t in want.items())


def _summary(path: Path) -> dict[str, Any]:
    try:
        doc = json_loads(path.read_text(encoding="utf-8"), where=str(path), fix="write the replay output again")
    except (OSError, UnicodeDecodeError) as exc:
        raise TracekitError(f"cannot read ({exc})", where=str(path), fix="write the replay output again") from None
    except json.JSONDecodeError as exc:
        raise TracekitError(f"not JSON ({exc.msg} at line {exc.lineno})", where=str(path),
                            fix="write the replay output again") from None
    if not isinstance(doc, dict):
        raise TracekitError("not a JSON object", where=str(path), fix="pass the summary.json a replay wrote")
    sid = doc.get("schema")
    if sid is not None and sid != "summary.v1":
        raise TracekitError(f"summary schema {sid!r} is not supported by this tracekit", where=str(path),
                            fix="this version reads summary.v1; replay again with this tracekit")
    return doc


def _is_kineto(p: Path) -> bool:
    return p.is_file() and p.name.endswith((".json", ".json.gz"))


def load_side(path: str | os.PathLike[str], *, label: str = "", lean: bool = False) -> tuple[Trace, str]:
    """One side of a diff and the schema id of its events (``events.v1``); from an events.parquet
    whose columns are the schema's, the string columns come as categorical codes (memory on big
    traces), and with ``lean`` (for measuring only, not for writing the events again) without the
    columns no measure reads and with msg_id and the flow ids as Int32 where they fit. Raises
    :class:`TracekitError` naming the file for anything unreadable."""
    p = Path(path)
    label = label or str(p)
    if not p.exists():
        raise TracekitError("no such file or directory", where=str(p), fix="check the path")
    if p.is_dir():
        ev_path = p / "events.parquet"
        if ev_path.is_file():
            events, meta, sid = _frame(ev_path, "events", lean)
            counters = _frame(p / "counters.parquet", "counters")[0] if (p / "counters.parquet").is_file() else None
            traffic = _frame(p / "traffic.parquet", "traffic")[0] if (p / "traffic.parquet").is_file() else None
            summary = _summary(p / "summary.json") if (p / "summary.json").is_file() else None
            return Trace(events, counters, summary, traffic, meta, label), sid
        if any(_is_kineto(q) for q in p.iterdir()):
            return _kineto([p], label)
        raise TracekitError("directory holds neither events.parquet nor Kineto .json traces", where=str(p),
                            fix="pass " + "; or ".join(FORMS))
    if p.name.endswith(".parquet"):
        events, meta, sid = _frame(p, "events", lean)
        return Trace(events, None, None, None, meta, label), sid
    if p.name.endswith((".pftrace", ".perfetto-trace")):
        try:
            from tracekit.io.perfetto import read_trace
        except ImportError:
            raise TracekitError("this tracekit cannot read .pftrace files", where=str(p),
                                fix="pass the replay output directory or events.parquet instead") from None
        events, counters = read_trace(p)
        return Trace(events, counters, None, None, {"source": "import:perfetto"}, label), "events.v1"
    if _is_kineto(p):
        return _kineto([p], label)
    raise TracekitError("unrecognised input", where=str(p), fix="pass " + "; or ".join(FORMS))


def _kineto(paths: list[Path], label: str) -> tuple[Trace, str]:
    try:
        from tracekit.io.kineto import import_kineto
    except ImportError:
        raise TracekitError("this tracekit cannot import Kineto traces", where=str(paths[0]),
                            fix="import them with a tracekit that has 'tracekit import kineto'") from None
    imp = import_kineto(paths)
    return Trace(imp.events, None, None, imp.traffic, dict(imp.meta), label), "events.v1"


def load_mapping(path: str | os.PathLike[str]) -> NameMap:
    """A ``--map`` file: a JSON object of kernel name (or ``re:PATTERN``) -> canonical name."""
    p = Path(path)
    try:
        doc = json_loads(input_file(p, "JSON file").read_text(encoding="utf-8"), where=str(p),
                         fix='write a flat JSON object such as {"old kernel": "new kernel"}')
    except FileNotFoundError:
        raise TracekitError("no such file", where=str(p), fix="check the path of --map") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TracekitError(f"cannot read ({exc})", where=str(p), fix="check the file") from None
    except json.JSONDecodeError as exc:
        raise TracekitError(f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})", where=str(p),
                            fix='write a JSON object such as {"old kernel": "new kernel"}') from None
    return NameMap.from_dict(doc, where=str(p))
