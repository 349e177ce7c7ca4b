"""`tracekit calibrate`: fit a hardware profile from micro-benchmark results (tools/microbench/run_suite.py).

Reads the results file only (never the validation rows), fits what its benchmarks determine, takes every
other field from ``--base``, checks the profile and writes it as TOML; each fitted value's source names
the file, benchmark, number of points and residual.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import polars as pl

from tracekit.calibrate import calibrated_profile, fit_results, load_results, profile_toml
from tracekit.commands.info import show
from tracekit.errors import TracekitError
from tracekit.hardware import load_profile

HELP = "fit a hardware profile from micro-benchmark results (tools/microbench/run_suite.py)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", metavar="RESULTS", help="results JSON written by tools/microbench/run_suite.py")
    p.add_argument("-o", "--output", metavar="TOML", required=True, help="profile file to write")
    p.add_argument("--base", metavar="PROFILE", default="generic",
                   help="profile (name or .toml) giving every field the results do not fit (default: generic)")
    p.add_argument("--name", default=None, help="name of the new profile (default: the output file's stem)")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if out.suffix != ".toml":
        raise TracekitError(f"-o {args.output}: a profile file must end in .toml", fix="e.g. -o my-gpu.toml")
    results = load_results(args.results)
    base = load_profile(args.base)
    fitted, notes = fit_results(results)
    meta = results.meta
    what = ", ".join(f"{k} {meta[k]}" for k in ("gpu", "driver", "cuda", "torch", "date") if meta.get(k))
    name = args.name or out.stem
    profile, skipped = calibrated_profile(base, fitted, args.results, name,
                                          f"{base.description} -- calibrated from {args.results} ({what})")
    header = (f"Written by: tracekit calibrate {args.results} -o {args.output} --base {args.base}\n"
              f"Fitted fields say 'fitted from ...'; every other field is {base.name}'s.")
    _write_atomic(out, profile_toml(profile, header))
    used = [f for f in fitted if f not in skipped]
    show(pl.DataFrame({"field": [f.key for f in used], "value": [str(f.value) for f in used],
                       "benchmark": [f.benchmark for f in used], "points": [f.points for f in used],
                       "residual": [f.residual for f in used]}))
    for note in notes:
        print(f"not fitted: {note}")
    if skipped:
        print(f"not in this tracekit's hardware schema, left out: {', '.join(f.key for f in skipped)}")
    print(f"wrote {out}: {len(used)} fitted field(s), the rest from {base.name}")
    return 0
