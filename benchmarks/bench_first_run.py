"""First run of a fresh install: ``pip install . && tracekit demo`` with an empty kernel cache
(target: the first result printed in < 10 s wall on the 2-core development machine).

    python benchmarks/bench_first_run.py [--against REV] [--runs 1]

For this checkout (its committed HEAD plus the working tree) and, with ``--against``, the tree of an
earlier commit: make a fresh venv (``--system-site-packages``, so dependencies are not
downloaded; pip may fetch the build backend), ``pip install --no-deps`` the tree, empty the
kernel cache (a fresh ``XDG_CACHE_HOME``; ``NUMBA_CACHE_DIR`` unset; the installed package's
``__pycache__`` is new), then run ``tracekit demo`` and report the wall seconds to its first line
on stdout, to its first result (the ``dispatch:`` line) and to its end, the CPU seconds the demo's
process had used when its first result appeared (the critical path, whatever else the machine is
running) and the CPU seconds of the whole run: once with ``TRACEKIT_PREFETCH=0`` (one process compiles everything: its CPU seconds are
the whole cost), once as a user gets it (a second process compiles the timeline writer's kernels
on the other core), then once more with the cache warm. Each tree is timed in turn on the same
machine. (An earlier commit without the prefetch ignores ``TRACEKIT_PREFETCH``.)
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def install(tree: Path, where: Path) -> Path:
    """A fresh venv under ``where`` with ``tree`` installed; returns its ``tracekit`` script."""
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", str(tree)], check=True)
    return venv / "bin" / "tracekit"


def timed_demo(script: Path, where: Path, cache: Path, prefetch: bool = True) -> dict[str, float]:
    """Seconds to the first stdout line, to the ``dispatch:`` line and to the end; CPU seconds of
    the demo's process (not of the detached process that compiles the writer's kernels meanwhile:
    ``prefetch=False`` turns that off, so the CPU seconds are all the work)."""
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "PYTHONPATH")}
    env["XDG_CACHE_HOME"] = str(cache)
    env["TRACEKIT_PREFETCH"] = "1" if prefetch else "0"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.Popen([str(script), "demo", "-o", str(where / f"out{time.monotonic_ns()}")], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, cwd=where)
    out: dict[str, float] = {}
    for line in p.stdout:
        now = time.perf_counter() - t0
        out.setdefault("first_line_s", now)
        if line.startswith("dispatch") and "first_result_s" not in out:
            out["first_result_s"] = now
            out["cpu_to_result_s"] = _cpu_seconds(p.pid)
    err = p.stderr.read()
    if p.wait() != 0:
        raise SystemExit(f"tracekit demo failed: {err}")
    out["end_s"] = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out["notice"] = float("compiling kernels" in err)
    return out


def _cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, all threads) process ``pid`` has used so far (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_at(rev: str, where: Path) -> Path:
    """The files of commit ``rev``, extracted under ``where``."""
    dest = where / "src"
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--against", metavar="REV", default=None,
                    help="also time the demo of this earlier commit (e.g. 290838e), installed the same way")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} cpus, load average {load:.2f} (other jobs slow the wall times; CPU-s less so)")
    trees = [("this checkout", lambda w: ROOT)] + ([(args.against, lambda w: tree_at(args.against, w))]
                                                     if args.against else [])
    for label, make in trees:
        with tempfile.TemporaryDirectory() as tmp:
            where = Path(tmp)
            script = install(make(where), where)
            cache = where / "cache"
            for state in ("empty cache, one process", "empty cache", "warm cache"):
                if state.startswith("empty"):  # the user cache, and numba's files beside the installed sources
                    shutil.rmtree(cache, ignore_errors=True)
                    for f in (where / "venv").glob("lib/python*/site-packages/tracekit/**/__pycache__/*.nb[ic]"):
                        f.unlink()
                r = timed_demo(script, where, cache, prefetch=not state.endswith("one process"))
                print(f"{label:>14} {state:>24}: first line {r['first_line_s']:5.1f} s, first result "
                      f"{r['first_result_s']:5.1f} s ({r['cpu_to_result_s']:4.1f} CPU-s), done {r['end_s']:5.1f} s "
                      f"wall; {r['cpu_s']:5.1f} CPU-s"
                      f"{'; compile notice shown' if r['notice'] else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
