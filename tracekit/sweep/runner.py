"""Run a sweep: the points not finished yet go to a pool of workers, each finished point is stored
as it arrives, then the results table and the report are written.

The pool is a local process pool (``spawn``; one worker per core by default) or, with a Ray
address, :class:`ray.util.multiprocessing.Pool`: both are driven through the same
``imap_unordered(run_task, tasks)`` call, and each result comes back as a one-row Arrow table.
``workers=0`` runs the points in the calling process (tests, debugging).

Layout of the output directory::

    OUT/points/<key>.parquet   one row per finished point (the resume state)
    OUT/results.parquet        every point of the grid, in grid order (written at the end)
    OUT/report.html            plots and the best point per group (written at the end)
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from tracekit.errors import TracekitError
from tracekit.io.atomic import atomic_path
from tracekit.progress import Progress
from tracekit.sweep.grid import Grid, Point
from tracekit.sweep.point import COLUMNS_KEY, Task, make_task, run_task

_POLARS = {bool: pl.Boolean, int: pl.Int64, float: pl.Float64, str: pl.String}


class SweepInterrupted(Exception):
    """The sweep stopped early (Ctrl-C, SIGTERM, or an ``on_point`` hook); finished points are kept."""

    def __init__(self, done: int, total: int, out: Path) -> None:
        self.done, self.total, self.out = done, total, out
        super().__init__(f"interrupted after {done} of {total} point(s) to run; finished points are kept in "
                         f"{out / 'points'}; rerun the same command to resume")


@dataclass
class SweepResult:
    results: pl.DataFrame
    ran: int  # points replayed by this call
    reused: int  # points found finished by an earlier call
    out: Path


def point_path(out: Path, key: str) -> Path:
    return out / "points" / f"{key}.parquet"


def _ignore_sigint() -> None:  # workers: the parent alone handles Ctrl-C
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _pool(ray_address: str | None, workers: int | None) -> Iterator[Any]:
    if ray_address is None:
        pool = multiprocessing.get_context("spawn").Pool(workers or os.cpu_count() or 1, initializer=_ignore_sigint)
    else:
        try:
            import ray
            from ray.util.multiprocessing import Pool
        except ImportError:
            raise TracekitError("--ray needs Ray, which is not installed",
                                fix="pip install 'tracekit[ray]', or run without --ray") from None
        if not ray.is_initialized():
            try:
                ray.init(address=ray_address, log_to_driver=False)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise TracekitError(f"--ray {ray_address}: cannot connect ({str(exc).splitlines()[0]})",
                                    fix="start a cluster (ray start --head) or pass its address") from None
        pool = Pool(processes=workers)
    try:
        yield pool
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def run_sweep(grid: Grid, out: str | os.PathLike[str], *, ray_address: str | None = None, workers: int | None = None,
              quiet: bool = False, timelines: bool = False,
              on_point: Callable[[str, int, int], None] | None = None) -> SweepResult:
    """Replay the grid's unfinished points, then write ``results.parquet`` and ``report.html``.

    ``on_point(key, done, total)`` runs after each point is stored; raising ``KeyboardInterrupt``
    from it (or Ctrl-C / SIGTERM) stops the sweep with :class:`SweepInterrupted`."""
    out = Path(out)  # points/ appears with the first finished point
    todo = [p for p in grid.points if not point_path(out, p.key).is_file()]
    timeline_dir = str((out / "timelines").resolve()) if timelines else None
    if timeline_dir and todo:
        Path(timeline_dir).mkdir(parents=True, exist_ok=True)
    done = 0
    try:
        with Progress("sweep", total=len(todo), quiet=quiet) as progress, contextlib.ExitStack() as stack:
            if todo and workers != 0:
                pool = stack.enter_context(_pool(ray_address, workers))
                rows = pool.imap_unordered(run_task, _tasks(todo, ray_address, timeline_dir))
            else:
                rows = map(run_task, _tasks(todo, None, timeline_dir))
            for table in rows:
                _store(out, table)
                done += 1
                progress.advance()
                if on_point is not None:
                    on_point(table.column("key")[0].as_py(), done, len(todo))
    except KeyboardInterrupt:
        raise SweepInterrupted(done, len(todo), out) from None
    results = collect(grid, out)
    with atomic_path(out / "results.parquet") as tmp:
        pq.write_table(results.to_arrow(), tmp, compression="zstd")
    from tracekit.sweep.report import write_report

    write_report(grid, results, out / "report.html")
    return SweepResult(results, done, len(grid.points) - len(todo), out)


def _tasks(todo: list[Point], ray_address: str | None, timeline_dir: str | None) -> list[Task]:
    """Tasks for the points; on Ray a routing file travels once per workload, as a shared object."""
    shared: dict[str, Any] = {}
    if ray_address is not None:
        import ray

        for p in todo:
            wl = p.workload
            if wl.path and wl.sha256 not in shared:
                shared[wl.sha256] = ray.put(Path(wl.path).read_bytes())
    return [make_task(p, routing_data=shared.get(p.workload.sha256), timeline_dir=timeline_dir) for p in todo]


def _store(out: Path, table: pa.Table) -> None:
    with atomic_path(point_path(out, table.column("key")[0].as_py())) as tmp:
        pq.write_table(table, tmp)


def collect(grid: Grid, out: Path) -> pl.DataFrame:
    """One row per grid point (grid order): the point's columns from the grid, its figures from its
    stored row. Every point must be finished."""
    frames = []
    for p in grid.points:
        path = point_path(out, p.key)
        if not path.is_file():
            raise TracekitError(f"{p.label()} has no result", where=str(out), fix="rerun the sweep to finish it")
        table = pq.read_table(path)
        figures = table.drop_columns(json.loads((table.schema.metadata or {})[COLUMNS_KEY]))
        frames.append(pl.from_arrow(figures).with_columns(
            *[pl.lit(v, dtype=_POLARS[type(v)]).alias(k) for k, v in p.columns().items()]))
    df = pl.concat(frames, how="diagonal_relaxed")
    ident = ["point", "key", "block", "workload", "profile"] + grid.knobs()
    return df.select(ident + sorted(c for c in df.columns if c not in ident))
