"""Writing a fuzz counterexample: ``events.parquet``, ``memops.parquet`` and
``counterexample.pftrace`` in one directory, all or nothing."""

from __future__ import annotations

import os
from pathlib import Path

from tracekit.hazards.report import Counterexample
from tracekit.io.atomic import COUNTEREXAMPLE_OUTPUTS, atomic_dir
from tracekit.io.tables import write_table


def has_perfetto_writer() -> bool:
    """Whether this build has the Perfetto writer (``tracekit.io.perfetto``)."""
    try:
        import tracekit.io.perfetto  # noqa: F401
    except ImportError:
        return False
    return True


def write_counterexample(cx: Counterexample, outdir: str | os.PathLike[str], *, timeline: bool = True) -> list[Path]:
    """Write the counterexample's events and memops tables and (if ``timeline``) its Perfetto
    trace into ``outdir``; nothing appears there unless every file was written. Returns the paths."""
    meta = cx.meta()
    f = cx.found
    written = []
    with atomic_dir(outdir, owns=COUNTEREXAMPLE_OUTPUTS) as tmp:
        write_table(cx.events, tmp / "events.parquet", "events",
                    {"source": "fuzz", "ep_size": f.program().ranks, "config": meta["config"]})
        write_table(cx.memops, tmp / "memops.parquet", "memops", meta)
        written += [Path(outdir) / "events.parquet", Path(outdir) / "memops.parquet"]
        if timeline:
            from tracekit.io.perfetto import write_trace

            write_trace(tmp / "counterexample.pftrace", cx.events,
                        title=f"tracekit fuzz: {cx.hazard.name} in {f.spec.name}/{f.variant}")
            written.append(Path(outdir) / "counterexample.pftrace")
    return written
