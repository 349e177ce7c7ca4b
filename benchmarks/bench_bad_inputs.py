"""Ten thousand generated bad inputs across every command, run in this process; prints the counts.

    PYTHONPATH=. python benchmarks/bench_bad_inputs.py [--cases 10000] [--seed 0] [--show 20]

Prints: cases, tracebacks, hangs, partial outputs, bad error lines (each should be 0), the clean
errors and legal inputs, CPU seconds, and the first failures in full. Exit status 1 if any failed.
"""

from __future__ import annotations

import argparse
import collections
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from badinputs import run_many  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show", type=int, default=20, help="failures to print in full")
    ap.add_argument("--limit", type=float, default=60.0, help="seconds before a case counts as a hang")
    args = ap.parse_args()
    families: collections.Counter[str] = collections.Counter()
    failed: collections.Counter[str] = collections.Counter()
    t0, c0 = time.perf_counter(), time.process_time()

    def seen(o):  # type: ignore[no-untyped-def]
        families[o.case.family.split("/")[0]] += 1
        if o.failed:
            failed[f"{o.kind} {o.case.family}"] += 1
            if sum(failed.values()) <= args.show:
                print(o, flush=True)

    tally = run_many(args.seed, args.cases, limit_s=args.limit, on_outcome=seen)
    cpu = time.process_time() - c0 + resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
    print(tally.line())
    print(f"families: {dict(sorted(families.items()))}")
    if failed:
        print(f"failures by kind and family: {dict(failed.most_common())}")
    print(f"{cpu:.1f} CPU-s, {time.perf_counter() - t0:.1f} s wall, {1e3 * cpu / max(tally.cases, 1):.1f} CPU-ms/case")
    return 1 if tally.failures else 0


if __name__ == "__main__":
    sys.exit(main())
