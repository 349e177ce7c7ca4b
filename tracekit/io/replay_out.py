"""Write a replay's outputs into a directory, all or nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from tracekit import schemas
from tracekit.errors import TracekitError
from tracekit.io.atomic import REPLAY_OUTPUTS, atomic_dir
from tracekit.replay import ReplayResult
from tracekit.summary_types import Summary


def summary_json(summary: Summary | dict[str, Any]) -> str:
    """Deterministic text of a summary: sorted keys, fixed float formatting."""
    if isinstance(summary, Summary):
        return summary.to_json()
    return json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n"


def read_summary(path: str | os.PathLike[str]) -> Summary:
    """A ``summary.json`` written by a replay, typed; bad files raise :class:`TracekitError`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TracekitError(f"cannot read ({exc})", where=str(path), fix="write the replay output again") from None
    return Summary.from_json(text, where=str(path))


def write_replay(result: ReplayResult, outdir: str | os.PathLike[str], *, meta: dict[str, Any],
                 timeline: bool = True) -> list[Path]:
    """Write events.parquet, counters.parquet, summary.json and (if ``timeline``) timeline.pftrace into
    ``outdir``; nothing appears there unless every file was written."""
    written = []
    with atomic_dir(outdir, owns=REPLAY_OUTPUTS) as tmp:
        for name, table in (("events", result.events), ("counters", result.counters)):
            t = schemas.conform(table, name, meta, where=f"{name}.parquet")
            pq.write_table(t, tmp / f"{name}.parquet", compression="zstd", write_statistics=False)
            written.append(Path(outdir) / f"{name}.parquet")
        if result.memops is not None:
            t = schemas.conform(result.memops, "memops", {"source": "replay", "complete": "yes"}, where="memops.parquet")
            pq.write_table(t, tmp / "memops.parquet", compression="zstd", write_statistics=False)
            written.append(Path(outdir) / "memops.parquet")
        (tmp / "summary.json").write_text(summary_json(result.summary))
        written.append(Path(outdir) / "summary.json")
        if timeline:
            from tracekit.io.perfetto import write_trace

            write_trace(tmp / "timeline.pftrace", result.events, result.counters,
                        title=f"tracekit replay on {meta.get('hardware', '')}")
            written.append(Path(outdir) / "timeline.pftrace")
    return written
