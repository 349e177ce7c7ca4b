"""The one reader of the top-level ``schemas/`` folder.

Every column tracekit reads or writes is defined in a ``schemas/<name>.v<N>.json`` file; this
module turns those files into :class:`Schema` objects, Arrow schemas, and conformance checks.
Nothing here touches user files: reading and writing Parquet lives in :mod:`tracekit.io.tables`.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from tracekit.errors import TracekitError

#: Parquet/Arrow file-level metadata key naming the schema of a table, e.g. ``b"routing.v1"``.
SCHEMA_KEY = b"tracekit.schema"
#: Metadata key holding the JSON object of schema metadata values (num_experts, ep_size, ...).
META_KEY = b"tracekit.meta"

_TYPES: dict[str, pa.DataType] = {
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "string": pa.string(),
    "list<int32>": pa.list_(pa.int32()),
    "list<float32>": pa.list_(pa.float32()),
    "list<int64>": pa.list_(pa.int64()),
}


#: Default upper bound of integer metadata (``"max"`` in a schema's metadata entry overrides it).
#: Arrays are sized by these numbers (experts, hidden, ranks), so a damaged file claiming 2^64
#: must be refused before anything is allocated; 2^20 is far above any published model (DeepSeek-V3:
#: 256 routed experts, hidden 7168) and below int32 ids.
MAX_SIZE = 1 << 20

@dataclass(frozen=True)
class Field:
    """One column: name, Arrow type, unit and meaning, and the default used when it is absent."""

    name: str
    type: str
    unit: str
    description: str
    required: bool = True
    nullable: bool = False
    default: Any = None
    section: str = ""

    @property
    def arrow_type(self) -> pa.DataType:
        return _TYPES[self.type]


@dataclass(frozen=True)
class MetaKey:
    """One file-level metadata entry."""

    key: str
    type: str
    required: bool
    description: str
    #: largest value accepted (int keys); see :data:`MAX_SIZE`
    max: int | None = None


@dataclass(frozen=True)
class Schema:
    """A versioned table schema loaded from ``schemas/``."""

    name: str
    version: int
    description: str
    fields: tuple[Field, ...]
    metadata: tuple[MetaKey, ...] = field(default=())
    #: Columns a timeline shows as slice arguments: (name, column, value type, default or
    #: "implied"), in order (events only).
    annotations: tuple[tuple[str, str, str, Any], ...] = field(default=())

    @property
    def id(self) -> str:
        """Schema id as stored in files, e.g. ``"routing.v1"``."""
        return f"{self.name}.v{self.version}"

    @property
    def column_names(self) -> list[str]:
        return [f.name for f in self.fields]

    def field(self, name: str, section: str = "") -> Field:
        for f in self.fields:
            if f.name == name and f.section == section:
                return f
        raise KeyError(f"{section}.{name}" if section else name)

    def arrow_schema(self, meta: dict[str, Any] | None = None) -> pa.Schema:
        """The Arrow schema, with the schema id and ``meta`` attached as file metadata."""
        md = {SCHEMA_KEY: self.id.encode()}
        if meta is not None:
            md[META_KEY] = json.dumps(meta, sort_keys=True).encode()
        return pa.schema(
            [pa.field(f.name, f.arrow_type, nullable=f.nullable) for f in self.fields], metadata=md
        )


def _schema_dir() -> Path:
    """``schemas/`` in a source checkout, else the copy installed inside the package."""
    here = Path(__file__).resolve().parent
    checkout = here.parent / "schemas"
    if checkout.is_dir():
        return checkout
    return Path(str(importlib.resources.files("tracekit") / "_schemas"))


def _parse(doc: dict[str, Any]) -> Schema:
    fields = []
    for f in doc["fields"]:
        if f["type"] not in _TYPES:
            raise ValueError(f"schema {doc['name']}: field {f['name']}: unknown type {f['type']!r}")
        has_default = "default" in f or f.get("nullable", False)
        fields.append(
            Field(
                name=f["name"],
                type=f["type"],
                unit=f.get("unit", ""),
                description=f["description"],
                required=not has_default,
                nullable=bool(f.get("nullable", False)),
                default=f.get("default"),
                section=f.get("section", ""),
            )
        )
    meta = tuple(
        MetaKey(m["key"], m["type"], bool(m.get("required", False)), m["description"],
                int(m["max"]) if "max" in m else (MAX_SIZE if m["type"] == "int" else None))
        for m in doc.get("metadata", [])
    )
    annotations = tuple((a["name"], a["column"], a["value"], a["default"]) for a in doc.get("annotations", []))
    return Schema(doc["name"], int(doc["version"]), doc["description"], tuple(fields), meta, annotations)


@functools.cache
def available() -> dict[str, Schema]:
    """All schemas shipped with tracekit, keyed by id (``"events.v1"``)."""
    out: dict[str, Schema] = {}
    for path in sorted(_schema_dir().glob("*.json")):
        doc = json.loads(path.read_text())
        if "$schema" in doc:  # a JSON Schema document (summary.v1), not a table schema
            continue
        s = _parse(doc)
        if path.name != f"{s.id}.json":
            raise ValueError(f"schema file {path.name} declares {s.id}; rename it to {s.id}.json")
        out[s.id] = s
    return out


@functools.cache
def json_schema(schema_id: str) -> dict[str, Any]:
    """A JSON Schema document shipped in ``schemas/`` (e.g. ``"summary.v1"``)."""
    return json.loads((_schema_dir() / f"{schema_id}.json").read_text())


def load(name: str) -> Schema:
    """The newest schema called ``name`` (``"routing"``), or an exact id (``"routing.v1"``)."""
    schemas = available()
    if name in schemas:
        return schemas[name]
    matches = [s for s in schemas.values() if s.name == name]
    if not matches:
        known = sorted({s.name for s in schemas.values()})
        raise TracekitError(f"unknown schema {name!r}", fix=f"use one of {', '.join(known)}")
    return max(matches, key=lambda s: s.version)


def _same_type(actual: pa.DataType, expected: pa.DataType) -> bool:
    """Type equality that accepts Arrow's string and list variants (large_string, string_view...)."""
    if actual == expected:
        return True
    if pa.types.is_string(expected):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual) or pa.types.is_string_view(actual)
    if pa.types.is_list(expected):
        if pa.types.is_list(actual) or pa.types.is_large_list(actual) or pa.types.is_list_view(actual):
            return _same_type(actual.value_type, expected.value_type)
    return False


def _castable(actual: pa.DataType, expected: pa.DataType) -> bool:
    """Whether a column of ``actual`` type may be safely converted to ``expected``."""
    if _same_type(actual, expected):
        return True
    if pa.types.is_integer(expected):
        return pa.types.is_integer(actual)
    if pa.types.is_floating(expected):
        return pa.types.is_floating(actual) or pa.types.is_integer(actual)
    if pa.types.is_list(expected) and (pa.types.is_list(actual) or pa.types.is_large_list(actual)):
        return _castable(actual.value_type, expected.value_type)
    return False


def conform(table: Any, name: str, meta: dict[str, Any] | None = None, where: str = "table") -> pa.Table:
    """Return ``table`` (pyarrow Table or polars DataFrame) with exactly the columns of schema
    ``name``, in order, cast to their types, missing optional columns filled with defaults, and the
    schema id plus ``meta`` attached. Extra columns are dropped. A missing required column or a
    type that cannot be converted raises :class:`TracekitError` naming ``where`` and the column.
    """
    schema = load(name)
    if not isinstance(table, pa.Table):
        table = table.to_arrow()
    n = table.num_rows
    cols = []
    for f in schema.fields:
        if f.name in table.column_names:
            col = table.column(f.name)
            if not _castable(col.type, f.arrow_type):
                raise TracekitError(
                    f"column {f.name}: type {col.type} where {schema.id} expects {f.type}",
                    where=where,
                    fix=f"write {f.name} as {f.type}",
                )
            if col.type != f.arrow_type:
                try:
                    col = col.cast(f.arrow_type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise TracekitError(
                        f"column {f.name}: cannot convert {col.type} to {f.type} ({exc})",
                        where=where,
                        fix=f"write {f.name} as {f.type} within its range",
                    ) from None
            if not f.nullable and col.null_count:
                if f.default is None:
                    raise TracekitError(
                        f"column {f.name}: {col.null_count} null values", where=where,
                        fix=f"{f.name} must be set on every row",
                    )
                col = col.fill_null(pa.scalar(f.default, f.arrow_type))
        elif not f.required:
            col = pa.nulls(n, f.arrow_type) if f.nullable else pa.array([f.default] * n, f.arrow_type)
        else:
            raise TracekitError(
                f"missing column {f.name} required by {schema.id}",
                where=where,
                fix=f"add {f.name} ({f.type}, {f.unit}): {f.description}",
            )
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=schema.arrow_schema(meta))


def check_meta(schema: Schema, meta: dict[str, Any], where: str) -> dict[str, Any]:
    """Check metadata values against the schema's metadata keys; return them unchanged."""
    for m in schema.metadata:
        if m.key not in meta or meta[m.key] is None:
            if m.required:
                raise TracekitError(
                    f"metadata key {m.key} missing (required by {schema.id})",
                    where=where,
                    fix=f"set {m.key}: {m.description}",
                )
            continue
        v = meta[m.key]
        if m.type == "int" and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise TracekitError(
                f"metadata {m.key}={v!r} is not a non-negative integer", where=where,
                fix=f"set {m.key} to an integer: {m.description}",
            )
        if m.type == "int" and m.max is not None and v > m.max:
            raise TracekitError(
                f"metadata {m.key}={v} is larger than {m.max}, the most this tracekit accepts", where=where,
                fix=f"the file is damaged or not from a real run; set {m.key}: {m.description}",
            )
        if m.type.startswith("enum:") and v not in m.type[5:].split("|"):
            raise TracekitError(
                f"metadata {m.key}={v!r} not one of {m.type[5:].replace('|', ', ')}", where=where,
                fix=f"set {m.key} to one of {m.type[5:].replace('|', ', ')}",
            )
    return meta
