"""`tracekit view FILE`: how to open a timeline in the Perfetto UI, and a short SQL summary from
Perfetto's trace processor when one is at hand."""

from __future__ import annotations

import argparse
from pathlib import Path

from tracekit.errors import TracekitError

HELP = "how to open a timeline (.pftrace or JSON) in ui.perfetto.dev; a summary if a trace processor is found"

#: Statements of the summary, in the order printed.
SUMMARY_SQL = """
select count(*) as slices, ifnull(max(ts + dur) - min(ts), 0) as span from slice;
select name as stage, count(*) as n, sum(dur) as total from slice group by name order by total desc, name limit {top};
with recursive path(id, p) as (
  select id, '' from track where parent_id is null
  union all
  select t.id, case when path.p = '' then t.name else path.p || '/' || t.name end
  from track t join path on t.parent_id = path.id)
select coalesce(nullif(path.p, ''), pr.name || '/' || th.name, path.p) as track, count(*) as n, sum(s.dur) as busy
from slice s left join path on s.track_id = path.id
left join thread_track tt on tt.id = s.track_id left join thread th using (utid) left join process pr using (upid)
group by 1 order by busy desc, track limit {top};
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="a timeline: .pftrace (tracekit replay/export) or Chrome JSON")
    p.add_argument("--shell", metavar="PATH", default=None,
                   help="trace_processor_shell for the summary (default: $TRACE_PROCESSOR_SHELL, else PATH)")
    p.add_argument("--top", type=int, default=8, metavar="N", help="rows per summary table (default 8)")


def _check_file(path: Path) -> str:
    """The kind of timeline at ``path`` ("protobuf" or "JSON"), or a TracekitError."""
    if not path.exists():
        raise TracekitError("no such file", where=str(path), fix="give the path of a .pftrace or .json timeline")
    if not path.is_file():
        raise TracekitError("not a regular file", where=str(path), fix="give the path of a .pftrace or .json timeline")
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise TracekitError(f"cannot read it ({exc.strerror})", where=str(path), fix="check its permissions") from None
    text = head.lstrip()
    if text[:1] in (b"{", b"["):
        return "JSON"
    if head[:1] == b"\x0a":  # a Trace's first field: a TracePacket
        _check_framing(path)
        return "protobuf"
    what = "empty" if not head else "neither a Perfetto protobuf trace nor a JSON trace"
    raise TracekitError(f"{what}", where=str(path),
                        fix="write one with tracekit replay, or tracekit export with --format json for JSON")


def _check_framing(path: Path) -> None:
    """Walk the trace's top-level packets (cheap: bundles are ~1 MiB each), so a cut-short file
    is reported here rather than shown silently shortened (the trace processor loads what
    precedes the cut). ``tracekit validate`` checks the packets themselves."""
    import mmap

    from tracekit.io.perfetto.check import iter_frames

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        for _frame in iter_frames(buf, str(path)):
            pass


def steps(path: Path, kind: str) -> list[str]:
    """The steps that open ``path`` in the Perfetto UI."""
    return [
        f"open {path} ({kind} trace, {path.stat().st_size:,} bytes) in the Perfetto UI:",
        "  1. go to https://ui.perfetto.dev in Chrome or Firefox",
        f"  2. click 'Open trace file' in the left sidebar and pick {path}, or drag the file onto the page",
        "     (the file is read inside the browser; nothing is uploaded)",
        "  3. W/S zoom, A/D pan; click a slice for its arguments and flows; drag over a region for a summary",
        "  4. 'Query (SQL)' in the sidebar runs SQL over it (docs/perfetto.md has examples)",
    ]


def summary(shell: str, path: Path, top: int) -> list[str]:
    """Lines of the SQL summary: time per stage, the busiest tracks."""
    from tracekit.io.trace_processor import query

    blocks = query(shell, path, SUMMARY_SQL.format(top=max(1, top)))
    totals, stages, tracks = (blocks + [[], [], []])[:3]
    span = int(totals[0]["span"]) if totals else 0
    out = [f"trace processor ({shell}): {int(totals[0]['slices']) if totals else 0:,} slices over "
           f"{span / 1e3:,.1f} us"]
    out.append("  time per stage (slice name):        slices    total us    mean us")
    for r in stages:
        n, total = int(r["n"]), int(r["total"] or 0)
        out.append(f"    {r['stage'][:32]:32s} {n:9,d} {total / 1e3:11,.1f} {total / max(n, 1) / 1e3:10,.3f}")
    out.append("  busiest tracks (slice time; a track's lanes added up):   slices     busy us  of span")
    for r in tracks:
        busy = int(r["busy"] or 0)
        out.append(f"    {r['track'][:52]:52s} {int(r['n']):9,d} {busy / 1e3:11,.1f} {busy / max(span, 1):8.0%}")
    return out


def run(args: argparse.Namespace) -> int:
    from tracekit.io.trace_processor import ENV, find_shell

    path = Path(args.file)
    kind = _check_file(path)
    shell = find_shell(args.shell)
    lines = steps(path.resolve(), kind)
    if shell is None:
        lines.append(f"(for a summary here, put trace_processor_shell on PATH, set ${ENV} or pass --shell)")
    else:
        lines += summary(shell, path, args.top)
    print("\n".join(lines))
    return 0
