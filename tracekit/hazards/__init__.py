"""Ordering and fencing hazards: a memory-operation model, a schedule explorer, a checker and a
library of protocols with their broken variants. See docs/fuzzing.md."""

from __future__ import annotations

from typing import Any

from tracekit.hazards.engine import Execution
from tracekit.hazards.explore import Found, explore, exhaustive, run_schedule, shrink
from tracekit.hazards.ops import HAZARDS, QP, Actor, Hazard, Loc, Program, ProtocolSpec, Region, protocol

__all__ = [
    "HAZARDS", "QP", "Actor", "Execution", "Found", "Hazard", "Loc", "Program", "ProtocolSpec", "Region",
    "check_trace", "exhaustive", "explore", "protocol", "run_schedule", "shrink",
]


def __getattr__(name: str) -> Any:
    # check_trace needs polars and pyarrow; the explorer does not, so it is imported on first use
    if name == "check_trace":
        from tracekit.hazards.checker import check_trace

        return check_trace
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
