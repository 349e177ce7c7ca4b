"""`tracekit export`: events (and counters) tables to a Perfetto timeline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tracekit.errors import TracekitError
from tracekit.io.guard import output_file
from tracekit.io.tables import read_table
from tracekit.workload.validate import check_counters, check_events

HELP = "write events.parquet (or a replay/import output dir) as a Perfetto timeline (.pftrace) or Chrome JSON"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="EVENTS.parquet|OUTDIR",
                   help="an events table, or a directory holding events.parquet and optionally counters.parquet")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="trace to write (.pftrace, or .json)")
    p.add_argument("--format", choices=["proto", "json"], default=None,
                   help="proto: Perfetto TrackEvent protobuf (default; json if FILE ends in .json); "
                        "json: Chrome trace JSON, best effort")
    p.add_argument("--counters", metavar="COUNTERS.parquet", help="counters table (default: OUTDIR/counters.parquet)")
    p.add_argument("--title", default="", help="name of the root track (default: the source's name)")
    p.add_argument("--max-events", type=int, metavar="N",
                   help="keep only the first N events (by time) and the counter samples up to the last one kept: "
                        "a cap for --format json, which takes ~210 bytes per row (the protobuf ~20)")
    p.add_argument("--no-compress", action="store_true",
                   help="write plain packets (faster, ~3x larger) instead of deflated bundles")


def _sources(args: argparse.Namespace) -> tuple[Path, Path | None]:
    src = Path(args.source)
    if src.is_dir():
        events = src / "events.parquet"
        if not events.is_file():
            raise TracekitError("directory holds no events.parquet", where=str(src),
                                fix="pass an events table or a replay/import output directory")
        counters = Path(args.counters) if args.counters else (src / "counters.parquet")
        return events, counters if (args.counters or counters.is_file()) else None
    if not src.exists():
        raise TracekitError("no such file or directory", where=str(src), fix="check the path")
    return src, Path(args.counters) if args.counters else None


def run(args: argparse.Namespace) -> int:
    from tracekit.io.perfetto import write_json, write_trace

    output_file(args.output)
    if args.max_events is not None and args.max_events < 1:
        raise TracekitError(f"--max-events {args.max_events}: expected a positive number", fix="e.g. --max-events 100000")
    events_path, counters_path = _sources(args)
    events, meta, _s = read_table(events_path, "events")
    check_events(events, meta, str(events_path))
    counters = None
    if counters_path:
        counters, cmeta, _s = read_table(counters_path, "counters")
        check_counters(counters, cmeta, str(counters_path))
    out = Path(args.output)
    fmt = args.format or ("json" if out.suffix == ".json" else "proto")
    events, counters = _capped(events, counters, args.max_events)
    if fmt == "json":
        _warn_size(events.num_rows + (counters.num_rows if counters is not None else 0))
    title = args.title or (Path(args.source).resolve().name)
    if fmt == "json":
        write_json(out, events, counters, title=title)
    else:
        write_trace(out, events, counters, title=title, compress=not args.no_compress)
    n_ctr = counters.num_rows if counters is not None else 0
    print(f"wrote {out} ({events.num_rows} events, {n_ctr} counter samples, {out.stat().st_size} bytes)")
    if fmt == "proto":
        print("open it at https://ui.perfetto.dev (drag and drop the file); see docs/perfetto.md")
    return 0


#: Bytes of Chrome JSON per exported row (event or counter sample), measured: the EP64 prefill replay of
#: the README tour (4.26 M events, 0.67 M counter samples) exported to 1.0 GB (issue 11).
JSON_BYTES_PER_ROW = 210
#: Above this estimate, export --format json warns before writing.
JSON_WARN_BYTES = 256 << 20


def _warn_size(rows: int) -> None:
    size = rows * JSON_BYTES_PER_ROW
    if size > JSON_WARN_BYTES:
        print(f"warning: writing about {size / 2**30:.1f} GiB of JSON ({rows:,} rows at ~{JSON_BYTES_PER_ROW} B each); "
              f"the .pftrace export is ~10x smaller, or cap it with --max-events N", file=sys.stderr, flush=True)


def _capped(events, counters, n: int | None):  # type: ignore[no-untyped-def]
    """The first ``n`` events by time and the counter samples up to the last kept event's start."""
    if n is None or n >= events.num_rows:
        return events, counters
    import pyarrow.compute as pc

    events = events.take(pc.sort_indices(events, [("ts_ns", "ascending")])[:n])
    if counters is not None and events.num_rows:
        last = pc.max(events.column("ts_ns"))
        counters = counters.filter(pc.less_equal(counters.column("ts_ns"), last))
    return events, counters
