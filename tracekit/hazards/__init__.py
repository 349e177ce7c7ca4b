"""Ordering and fencing hazards: a memory-operation model, a schedule explorer, a checker and a
library of protocols with their broken variants. See docs/fuzzing.md."""

from __future__ import annotations

from tracekit.hazards.checker import check_trace
from tracekit.hazards.engine import Execution
from tracekit.hazards.explore import Found, explore, exhaustive, run_schedule, shrink
from tracekit.hazards.ops import HAZARDS, QP, Actor, Hazard, Loc, Program, ProtocolSpec, Region, protocol

__all__ = [
    "HAZARDS", "QP", "Actor", "Execution", "Found", "Hazard", "Loc", "Program", "ProtocolSpec", "Region",
    "check_trace", "exhaustive", "explore", "protocol", "run_schedule", "shrink",
]
