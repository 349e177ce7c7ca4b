"""What-if sweeps: a grid of workloads x hardware profiles x knobs, each point one replay, run on a
local process pool or a Ray cluster, resumable, gathered into one results table and a report.

>>> from tracekit.sweep import parse_grid
>>> grid = parse_grid({"workloads": [{"synth": {"preset": "prefill", "ep": 16, "tokens": 64}}],
...                    "knobs": {"num_sms": [20, 24], "dispatch": {"nvl_send_chunk": [8, 16]}}}, "example")
>>> len(grid.points), grid.knobs()
(4, ['num_sms', 'dispatch.nvl_send_chunk'])
"""

from tracekit.sweep.best import best_points
from tracekit.sweep.grid import Block, Grid, Point, expand, load_grid, parse_grid
from tracekit.sweep.runner import SweepInterrupted, SweepResult, run_sweep

__all__ = ["Block", "Grid", "Point", "SweepInterrupted", "SweepResult", "best_points", "expand", "load_grid",
           "parse_grid", "run_sweep"]
