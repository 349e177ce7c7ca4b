"""Parquet in and out for every tracekit table, checked against ``schemas/``.

Files carry their schema id (``tracekit.schema``) and a JSON metadata object (``tracekit.meta``)
in the Parquet key/value metadata. Writes are atomic and deterministic: the same table gives the
same bytes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from tracekit import schemas
from tracekit.errors import TracekitError
from tracekit.io.atomic import atomic_path
from tracekit.io.guard import input_file, json_loads


def write_table(
    table: pa.Table | pl.DataFrame,
    path: str | os.PathLike[str],
    schema: str,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Conform ``table`` to ``schema`` and write it to ``path`` atomically; return the path."""
    s = schemas.load(schema)
    meta = dict(meta or {})
    schemas.check_meta(s, meta, where=str(path))
    t = schemas.conform(table, schema, meta, where=str(path))
    with atomic_path(path) as tmp:
        pq.write_table(t, tmp, compression="zstd", write_statistics=False)
    return Path(path)


def read_meta(path: str | os.PathLike[str]) -> tuple[str | None, dict[str, Any]]:
    """The schema id and metadata dict stored in a Parquet file, without reading its rows."""
    where = str(path)
    input_file(path, "Parquet file")
    try:
        md = pq.read_schema(path).metadata or {}
    except (pa.ArrowException, OSError, ValueError, MemoryError) as exc:
        raise TracekitError(
            f"not a Parquet file ({str(exc).splitlines()[0]})", where=where,
            fix="pass a .parquet file written by tracekit or with the documented columns",
        ) from None
    sid = md.get(schemas.SCHEMA_KEY)
    raw = md.get(schemas.META_KEY)
    meta: dict[str, Any] = {}
    if raw:
        try:
            meta = json_loads(raw, where=f"{where}: metadata tracekit.meta", fix="rewrite the file with tracekit")
        except ValueError:
            raise TracekitError(
                "metadata tracekit.meta is not valid JSON", where=where, fix="rewrite the file with tracekit"
            ) from None
        if not isinstance(meta, dict):
            raise TracekitError("metadata tracekit.meta is not a JSON object", where=where,
                                fix="rewrite the file with tracekit")
    try:
        return (sid.decode() if sid else None), meta
    except UnicodeDecodeError:
        raise TracekitError("metadata tracekit.schema is not text", where=where,
                            fix="rewrite the file with tracekit") from None


def read_declared(path: str | os.PathLike[str], schema: str | None = None) -> tuple[dict[str, Any], schemas.Schema]:
    """The metadata and schema a tracekit Parquet file declares, checked as :func:`read_table`
    checks them (``schema`` the expected kind), without reading its rows."""
    where = str(path)
    sid, meta = read_meta(path)
    if sid is None:
        if schema is None:
            raise TracekitError(
                "no tracekit.schema metadata, so its kind is unknown", where=where,
                fix="write it with tracekit, or use the command for its kind (e.g. tracekit import)",
            )
        s = schemas.load(schema)
    else:
        if sid not in schemas.available():
            name = sid.split(".v")[0]
            known = [k for k in schemas.available() if k.startswith(name + ".")]
            raise TracekitError(
                f"schema {sid} is not supported by this tracekit",
                where=where,
                fix=f"this version reads {', '.join(known) or 'no ' + name + ' tables'}; convert the file or upgrade tracekit",
            )
        s = schemas.available()[sid]
        if schema is not None:
            want = schemas.load(schema)
            if s.name != want.name:
                raise TracekitError(
                    f"file holds a {s.name} table where a {want.name} table is expected", where=where,
                    fix=f"pass a {want.name} file",
                )
            if s.id != want.id:
                raise TracekitError(f"schema version {s.id}, expected {want.id}", where=where,
                                    fix=f"convert the file to {want.id}")
    schemas.check_meta(s, meta, where)
    return meta, s


def read_table(
    path: str | os.PathLike[str], schema: str | None = None
) -> tuple[pa.Table, dict[str, Any], schemas.Schema]:
    """Read a tracekit Parquet file, conform it to its schema and return (table, meta, schema).

    ``schema`` names the expected kind (``"routing"``); a file that declares another kind or
    another version is rejected. A file without a declared schema is read as ``schema``.
    """
    meta, s = read_declared(path, schema)
    where = str(path)
    try:
        raw = pq.read_table(path)
        raw.validate(full=True)  # e.g. invalid UTF-8 in string columns of a damaged file
    except (pa.ArrowException, OSError, ValueError, MemoryError) as exc:
        raise TracekitError(
            f"unreadable Parquet data ({str(exc).splitlines()[0]})", where=where,
            fix="the file is truncated or corrupt; write it again",
        ) from None
    return schemas.conform(raw, s.id, meta, where=where), meta, s
