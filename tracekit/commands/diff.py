"""`tracekit diff`: compare two traces (replays or captures) and report what moved, where and why."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tracekit.errors import TracekitError
from tracekit.io.guard import output_file

HELP = "compare two traces (replays or captures): phases, stages, tails, exposed communication, resources"

_SUFFIX = {".txt": "text", ".md": "md", ".markdown": "md", ".json": "json", ".html": "html", ".htm": "html"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("before", metavar="BEFORE", help="replay output directory, events.parquet, imported capture "
                   "directory, Kineto .json[.gz] traces or .pftrace")
    p.add_argument("after", metavar="AFTER", help="the same kinds as BEFORE")
    p.add_argument("-o", "--output", metavar="REPORT", help="write the report here (default: print it)")
    p.add_argument("--format", choices=["text", "md", "json", "html"],
                   help="report format (default: from REPORT's suffix, else text)")
    p.add_argument("--perfetto", metavar="FILE", help="also write one Perfetto trace with both timelines, aligned at "
                   "their start, as groups 'before' and 'after'")
    p.add_argument("--map", metavar="MAPPING.json", help="JSON object renaming kernels before matching: "
                   '{"old name": "new name", "re:PATTERN": "name"}')
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling (default 0)")
    p.add_argument("--strict", action="store_true",
                   help="fail (exit 2) on a partial match (different ranks or phases) instead of reporting it")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors when writing to a file")


def _format(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    if args.output:
        return _SUFFIX.get(Path(args.output).suffix.lower(), "text")
    return "text"


def run(args: argparse.Namespace) -> int:
    from tracekit.analysis.diff import diff_profiles
    from tracekit.analysis.profile import profile
    from tracekit.io.diff_input import load_mapping, load_side
    from tracekit.io.report import render, write_report

    if args.output is not None:
        output_file(args.output)
    if args.perfetto is not None:
        output_file(args.perfetto, "--perfetto")
    for side in (args.before, args.after):  # both, before the first is measured
        if not Path(side).exists():
            raise TracekitError("no such file or directory", where=side, fix="check the path")
    fmt = _format(args)
    names = load_mapping(args.map) if args.map else None
    # one side at a time: its events are measured, then freed (unless --perfetto needs them), so that
    # two large traces never sit in memory together with their intermediate tables
    before, sid_b = load_side(args.before, lean=not args.perfetto)  # --perfetto writes the events again
    pb = profile(before, names=names)
    if not args.perfetto:
        before = None
        release_freed_memory()
    after, sid_a = load_side(args.after, lean=not args.perfetto)
    if sid_b != sid_a:
        raise TracekitError(f"different schema versions: {args.before} holds {sid_b}, {args.after} holds {sid_a}",
                            fix="convert both traces to the same version")
    pa = profile(after, names=names)
    if not args.perfetto:
        after = None
    d = diff_profiles(pb, pa, seed=args.seed)
    partial = [w for w in d.warnings if w.startswith("partial match")]
    if args.strict and partial:
        raise TracekitError(partial[0], where="diff", fix="compare traces of the same ranks and phases, or drop --strict")
    if args.perfetto:
        _write_perfetto(args.perfetto, before, after)
    if args.output:
        path = write_report(d, args.output, fmt)
        if not args.quiet:
            for w in d.warnings:
                print(f"warning: {w}", file=sys.stderr)
            print(f"wrote {path} ({fmt})")
            if args.perfetto:
                print(f"wrote {args.perfetto} (Perfetto: groups before, after)")
    else:
        sys.stdout.write(render(d, fmt))
        if args.perfetto and not args.quiet:
            print(f"wrote {args.perfetto} (Perfetto: groups before, after)", file=sys.stderr)
    return 0


def release_freed_memory() -> None:
    """Give the pages freed by one side's measures back to the system before the next side is
    read: glibc's malloc keeps numpy's freed heap pages (about 0.1 GB after an EP64 side) and
    side two's peak would stand on them (measured: benchmarks/mem_diff.py, docs/diff.md)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


def _write_perfetto(path: str, before, after) -> None:  # type: ignore[no-untyped-def]
    try:
        from tracekit.io.perfetto import write_trace_groups
    except ImportError:
        raise TracekitError("this tracekit has no Perfetto writer", where="--perfetto",
                            fix="drop --perfetto, or use a tracekit with 'tracekit export'") from None
    import polars as pl

    def strings(events):  # type: ignore[no-untyped-def]
        return events.with_columns(pl.col(pl.Categorical).cast(pl.String))  # names read as codes, as written

    write_trace_groups(path, {"before": (strings(before.events), before.counters),
                              "after": (strings(after.events), after.counters)},
                       title=f"tracekit diff: {before.label} -> {after.label}")
