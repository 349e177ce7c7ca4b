"""The pure discrete-event kernel: task graphs over FIFO resources and credit pools.

A model (``tracekit.model``) describes one replay as a :class:`TaskGraph`; :func:`run` executes it
(fast, compiled with numba) and :func:`tracekit.engine.reference.run_reference` executes the same
graph with a plain heapq loop. Both return a :class:`Schedule`; they must agree exactly.
"""

from tracekit.engine.graph import BindKind, Schedule, TaskGraph
from tracekit.engine.core import run

__all__ = ["BindKind", "Schedule", "TaskGraph", "run"]
