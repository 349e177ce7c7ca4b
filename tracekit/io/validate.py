"""``validate_file``: read any tracekit file and run the checks for its kind.

Dispatch is by file suffix (:data:`VALIDATORS`); a file with an unknown suffix is sniffed for the
Parquet magic bytes. To support a new file type, add ``VALIDATORS[".ext"] = fn`` where ``fn(path)``
returns a :class:`FileSummary` or raises :class:`TracekitError`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from tracekit.errors import TracekitError
from tracekit.io.guard import input_file
from tracekit.io.tables import read_table
from tracekit.workload.routing import Routing
from tracekit.workload.validate import check_counters, check_events, check_routing, check_traffic


@dataclass(frozen=True)
class FileSummary:
    """What ``validate_file`` found: the file, its schema id (or format) and its row count."""

    path: str
    schema: str
    rows: int

    def __str__(self) -> str:
        return f"ok: {self.path} ({self.schema}, {self.rows} rows)"


def read_routing(path: str | os.PathLike[str]) -> Routing:
    """Read and check a ``routing.v1`` file: the one way commands load routing tables."""
    table, meta, _ = read_table(path, "routing")
    routing = Routing.from_arrow(table, meta, where=str(path))
    check_routing(routing, str(path))
    return routing


def check_table(table: pa.Table, meta: dict[str, Any], kind: str, where: str) -> None:
    """Run the semantic checks of table kind ``kind`` (routing, events, counters, traffic)."""
    if kind == "routing":
        check_routing(Routing.from_arrow(table, meta, where=where), where)
    elif kind == "events":
        check_events(table, meta, where)
    elif kind == "counters":
        check_counters(table, meta, where)
    elif kind == "traffic":
        check_traffic(table, meta, where)
    else:
        raise TracekitError(f"schema {kind} describes no table that tracekit validates", where=where,
                            fix="pass a routing, events, counters or traffic file")


#: Table kinds that ``validate_file`` checks beyond their column types.
TABLE_KINDS = ("routing", "events", "counters", "traffic")


def validate_parquet(path: str | os.PathLike[str]) -> FileSummary:
    """Read a tracekit Parquet file by its declared schema and run the checks of its kind."""
    where = str(path)
    table, meta, schema = read_table(path)
    if schema.name not in TABLE_KINDS:
        raise TracekitError(f"file declares schema {schema.id}, which is not a table", where=where,
                            fix=f"pass a {', '.join(TABLE_KINDS)} file")
    check_table(table, meta, schema.name, where)
    return FileSummary(where, schema.id, table.num_rows)


def validate_pftrace(path: str | os.PathLike[str]) -> FileSummary:
    """A Perfetto trace, checked against the importer's rules (:mod:`tracekit.io.perfetto.check`)."""
    from tracekit.io.perfetto.check import validate_pftrace as check

    return check(path)


#: File suffix -> validator. Other formats register here.
VALIDATORS: dict[str, Callable[[Path], FileSummary]] = {".parquet": validate_parquet, ".pftrace": validate_pftrace}


def validate_file(path: str | os.PathLike[str]) -> FileSummary:
    """Validate one file by its suffix (or by sniffing Parquet's magic bytes); raise on the first problem."""
    p = input_file(path, "file")
    validator = VALIDATORS.get(p.suffix.lower())
    if validator is None:
        with open(p, "rb") as f:
            head = f.read(4)
        if head == b"PAR1":
            validator = validate_parquet
        else:
            raise TracekitError(
                f"unknown file type {p.suffix or '(no suffix)'}", where=str(path),
                fix=f"tracekit validates {', '.join(sorted(VALIDATORS))} files",
            )
    return validator(p)
