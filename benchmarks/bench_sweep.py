"""Benchmark: a 64-point sweep against the 64 CLI commands it replaces, side by side.

    PYTHONPATH=. python benchmarks/bench_sweep.py [--tokens 512] [--ray]

Workload: EP16 prefill (2 nodes of 8 H800s, h800-ib), ``--tokens`` tokens per rank (default 512, so
one replay is ~0.1 s of CPU and the baseline stays short; DeepEP's tests use 4096), top-8 of 256
experts. Grid: num_sms {16, 20, 24, 32} x dispatch NVL chunk {4, 8, 16, 32} x dispatch RDMA chunk
{4, 8, 16, 32} = 64 points.

* baseline: 64 ``python -m tracekit replay ROUTING --num-sms S --dispatch-nvl-chunk N
  --dispatch-rdma-chunk R --no-timeline --quiet -o DIR`` commands one after the other (no timeline,
  as the sweep writes none);
* sweep: one ``python -m tracekit sweep GRID -o DIR --quiet`` (local process pool, one worker per
  core);
* ``--ray``: the same sweep on a local Ray instance (``ray.init(num_cpus=2)``) in this process, its
  rows compared with the local pool's.

Prints wall and CPU seconds (CPU of the child processes, workers included) of each and the ratio
sweep / baseline; target: sweep wall < 0.65x baseline wall. Checks every point's dispatch and combine
latency equal between the sweep's results and the baseline's summary.json files.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
SMS = (16, 20, 24, 32)
NVL = (4, 8, 16, 32)
RDMA = (4, 8, 16, 32)


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _timed(cmds: list[list[str]]) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cpu0, t0 = _children_cpu(), time.perf_counter()
    for cmd in cmds:
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0, _children_cpu() - cpu0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--ray", action="store_true", help="also run the sweep once on a local Ray instance")
    p.add_argument("--keep", metavar="DIR", help="work in DIR (kept) instead of a temporary directory")
    args = p.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="bench-sweep-"))
    work.mkdir(parents=True, exist_ok=True)
    py = [sys.executable, "-m", "tracekit"]
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} CPUs usable, python "
          f"{platform.python_version()}; workload EP16 prefill, {args.tokens} tokens/rank, h800-ib; "
          f"{len(SMS) * len(NVL) * len(RDMA)} points")
    routing = work / "routing.parquet"
    _timed([py + ["synth", "--preset", "prefill", "--ep", "16", "--tokens", str(args.tokens), "-o", str(routing),
                  "--quiet"]])
    grid = work / "grid.toml"
    grid.write_text(f'[[workloads]]\nname = "ep16"\nrouting = "{routing.name}"\n[knobs]\nnum_sms = {list(SMS)}\n'
                    f'"dispatch.nvl_send_chunk" = {list(NVL)}\n"dispatch.rdma_send_chunk" = {list(RDMA)}\n')
    points = [(s, n, r) for s in SMS for n in NVL for r in RDMA]
    cli = [py + ["replay", str(routing), "--num-sms", str(s), "--dispatch-nvl-chunk", str(n), "--dispatch-rdma-chunk",
                 str(r), "--no-timeline", "--quiet", "-o", str(work / "cli" / f"{i}")] for i, (s, n, r) in enumerate(points)]
    # warm the numba on-disk cache so neither side pays compilation
    _timed([cli[0]])
    base_wall, base_cpu = _timed(cli)
    print(f"baseline: 64 CLI replays one after the other: wall {base_wall:7.2f} s   CPU {base_cpu:7.2f} s")
    sweep_wall, sweep_cpu = _timed([py + ["sweep", str(grid), "-o", str(work / "sweep"), "--quiet"]])
    print(f"sweep   : tracekit sweep (local pool)        : wall {sweep_wall:7.2f} s   CPU {sweep_cpu:7.2f} s")
    ratio = sweep_wall / base_wall
    print(f"ratio sweep / baseline: wall {ratio:.3f}x (target < 0.65x: {'met' if ratio < 0.65 else 'NOT met'}), "
          f"CPU {sweep_cpu / base_cpu:.3f}x")
    res = pl.read_parquet(work / "sweep" / "results.parquet")
    for i, (s, n, r) in enumerate(points):
        row = res.filter(num_sms=s, **{"dispatch.nvl_send_chunk": n, "dispatch.rdma_send_chunk": r}).row(0, named=True)
        summary = json.loads((work / "cli" / f"{i}" / "summary.json").read_text())
        for phase in ("dispatch", "combine"):
            assert row[f"{phase}.latency_ns"] == summary[phase]["latency_ns"], (i, phase)
    print("check: every point's dispatch/combine latency equals its CLI replay's summary.json")
    if args.ray:
        _ray(work, grid)


def _ray(work: Path, grid_path: Path) -> None:
    import pyarrow.parquet as pq
    import ray

    from tracekit.sweep import load_grid, run_sweep
    from tracekit.sweep.runner import point_path

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    started = time.perf_counter() - t0
    grid = load_grid(grid_path)
    t0 = time.perf_counter()
    res = run_sweep(grid, work / "ray", ray_address="auto", quiet=True)
    wall = time.perf_counter() - t0
    ray.shutdown()
    same = all(pq.read_table(point_path(work / "sweep", p.key)).equals(pq.read_table(point_path(res.out, p.key)))
               for p in grid.points)
    print(f"ray     : local Ray (num_cpus=2): ray.init {started:.2f} s, sweep wall {wall:.2f} s; "
          f"rows identical to the local pool's: {same}")


if __name__ == "__main__":
    main()
