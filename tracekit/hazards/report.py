"""A found hazard as a counterexample: its memops and events tables and a readable text block."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from tracekit.hazards.checker import check_trace
from tracekit.hazards.engine import Execution
from tracekit.hazards.explore import Found
from tracekit.hazards.ops import Hazard
from tracekit.hazards.trace import label, to_events, to_memops


@dataclass
class Counterexample:
    found: Found
    execution: Execution
    memops: pa.Table
    #: Every hazard the checker names in the counterexample (manifest and possible).
    hazards: list[Hazard]
    #: The checker's account of the hazard the explorer stopped at (same name, manifest).
    hazard: Hazard
    events: pl.DataFrame

    @property
    def operations(self) -> int:
        """Operations the actors performed (a put and its delivery count once)."""
        return self.execution.nops

    def meta(self) -> dict[str, object]:
        f = self.found
        return {"source": "fuzz", "protocol": f.spec.name, "variant": f.variant,
                "complete": "yes" if self.execution.finished else "no",
                "config": {"sizes": f.sizes, "schedule": f.choices, "hazard": self.hazard.name}}


def counterexample(found: Found) -> Counterexample:
    """Replay ``found`` with recording and explain it with :func:`check_trace`."""
    ex = found.replay(record=True)
    memops = to_memops(ex)
    hazards = check_trace(memops, complete=ex.finished)
    match = [h for h in hazards if h.name == found.hazard.name and h.manifest]
    hazard = match[0] if match else Hazard(found.hazard.name, found.hazard.message, found.hazard.events)
    return Counterexample(found, ex, memops, hazards, hazard, to_events(memops, [hazard]))


def describe(cx: Counterexample) -> str:
    """The hazard in one readable block: what, where, and the operations of the counterexample,
    with the witness events marked ``*``."""
    f, h = cx.found, cx.hazard
    sizes = ", ".join(f"{k}={v}" for k, v in f.sizes.items()) or "none"
    lines = [
        f"HAZARD {h.name} in {f.spec.name}/{f.variant} ({sizes})",
        f"  {h.message}",
        f"  found at example {f.example}; counterexample of {cx.operations} operations "
        f"({cx.memops.num_rows} events), schedule {f.choices}",
        "  events (* = witness):",
    ]
    witness = set(h.events)
    for row in cx.memops.to_pylist():
        mark = "*" if row["seq"] in witness else " "
        lines.append(f"  {mark} {row['seq']:>3}  {row['actor']:<22} {label(row)}")
    return "\n".join(lines)
