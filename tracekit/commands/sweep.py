"""`tracekit sweep`: replay a grid of workloads x hardware profiles x knobs (docs/sweep.md)."""

from __future__ import annotations

import argparse
import sys

from tracekit.errors import TracekitError

HELP = "replay a grid of workloads x hardware x knobs (local process pool or Ray); results table and report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("grid", metavar="GRID.toml", nargs="?",
                   help="grid file: [[workloads]], profiles, [knobs] (lists are swept), metric, goal (docs/sweep.md)")
    p.add_argument("-o", "--output", metavar="OUTDIR", required=True,
                   help="directory for results.parquet, report.html and points/ (the resume state)")
    p.add_argument("--preset", choices=["deepep-tune"],
                   help="a built-in grid instead of GRID.toml: deepep-tune mirrors DeepEP's test tuning loops")
    p.add_argument("--ep", type=int, metavar="N", help="--preset: expert-parallel ranks")
    p.add_argument("--tokens", type=int, metavar="T", help="--preset: tokens per rank (default 4096, DeepEP's tests)")
    p.add_argument("--hardware", "--hw", metavar="PROFILE", default="h800-ib", help="--preset: hardware profile")
    p.add_argument("--sms", default="24", metavar="N[,N...]", help="--preset: SM counts to try (default 24, as DeepEP)")
    p.add_argument("--ray", metavar="ADDRESS", help="run on a Ray cluster: its address, or 'auto' (pip install 'tracekit[ray]')")
    p.add_argument("-j", "--jobs", type=int, metavar="N",
                   help="worker processes (default: one per core; 0 runs in this process)")
    p.add_argument("--timelines", action="store_true", help="also write each point's Perfetto timeline "
                   "(OUTDIR/timelines/KEY.pftrace; off by default, for speed)")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")


def _grid(args: argparse.Namespace):
    from tracekit.sweep import load_grid
    from tracekit.sweep.presets import deepep_tune

    if bool(args.grid) == bool(args.preset):
        raise TracekitError("give either GRID.toml or --preset", where="sweep",
                            fix="e.g. tracekit sweep grid.toml -o out/ or tracekit sweep --preset deepep-tune --ep 16 -o out/")
    if args.grid:
        return load_grid(args.grid)
    if args.ep is None:
        raise TracekitError("--preset deepep-tune needs --ep", where="sweep", fix="e.g. --ep 16")
    try:
        sms = tuple(int(s) for s in args.sms.split(","))
    except ValueError:
        raise TracekitError(f"--sms {args.sms!r}: expected comma-separated integers", where="sweep",
                            fix="e.g. --sms 20,24") from None
    return deepep_tune(args.ep, args.tokens, args.hardware, sms)



def run(args: argparse.Namespace) -> int:
    from tracekit.sweep import SweepInterrupted, best_points, run_sweep
    from tracekit.sweep.presets import best_lines

    if args.jobs is not None and args.jobs < 0:
        raise TracekitError(f"--jobs {args.jobs}: expected 0 or more", where="sweep", fix="e.g. --jobs 2")
    grid = _grid(args)
    try:
        # SIGTERM arrives as KeyboardInterrupt (tracekit.cli); finished points stay stored
        res = run_sweep(grid, args.output, ray_address=args.ray, workers=args.jobs, quiet=args.quiet,
                        timelines=args.timelines)
    except SweepInterrupted as exc:
        print(f"tracekit: {exc}", file=sys.stderr)
        return 130
    if args.quiet:
        return 0
    print(f"{len(grid.points)} point(s): replayed {res.ran}, reused {res.reused} from an earlier run")
    if args.preset:
        for line in best_lines(grid, res.results):
            print(line)
    else:
        best = best_points(grid, res.results)
        for row in best.iter_rows(named=True):
            group = " / ".join(str(row[k]) for k in grid.group_by if k in row and k != "block")
            knobs = ", ".join(f"{k}={row[k]}" for k in grid.knobs() if k in row)
            print(f"best {group}: {row['metric']} {row['value']:.6g} at {knobs or 'the only point'}")
    print(f"wrote {res.out / 'results.parquet'} and {res.out / 'report.html'}")
    return 0
