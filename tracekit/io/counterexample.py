"""Writing a fuzz counterexample: ``events.parquet``, ``memops.parquet`` and
``counterexample.pftrace`` in one directory, all or nothing."""

from __future__ import annotations

import os
from pathlib import Path

from tracekit.errors import TracekitError
from tracekit.hazards.report import Counterexample
from tracekit.io.atomic import atomic_dir
from tracekit.io.tables import write_table


def write_counterexample(cx: Counterexample, outdir: str | os.PathLike[str]) -> list[Path]:
    """Write the counterexample's tables and Perfetto trace into ``outdir``; return the paths."""
    try:
        from tracekit.io.perfetto import write_trace
    except ImportError:
        raise TracekitError("this tracekit has no Perfetto writer (tracekit.io.perfetto)", where=str(outdir),
                            fix="run without -o to print the counterexample, or update tracekit") from None
    meta = cx.meta()
    names = ("events.parquet", "memops.parquet", "counterexample.pftrace")
    with atomic_dir(outdir) as tmp:
        write_table(cx.events, tmp / names[0], "events",
                    {"source": "fuzz", "ep_size": cx.found.program().ranks, "config": meta["config"]})
        write_table(cx.memops, tmp / names[1], "memops", meta)
        f = cx.found
        write_trace(tmp / names[2], cx.events, title=f"tracekit fuzz: {cx.hazard.name} in {f.spec.name}/{f.variant}")
    return [Path(outdir) / n for n in names]
