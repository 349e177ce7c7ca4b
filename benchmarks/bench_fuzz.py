"""Schedules explored per second by tracekit's explorer, against the same exploration driven
through Hypothesis (one draw per choice), in the same process.

Target (issue 6): >= 2,000 schedules/s for the ring-buffer protocol with 2 ranks and 8 slots.
The instance: ``ring_buffer/correct`` with ranks=2 (a ring in each direction), slots=8 and
messages=16 per direction (two laps of each ring, so slots are reused under credit), about 210
steps per schedule. Every schedule runs to its end (a correct variant finds no hazard).

    PYTHONPATH=. python benchmarks/bench_fuzz.py [--schedules 5000] [--baseline 200]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402

from tracekit.hazards import explore  # noqa: E402
from tracekit.hazards.protocols import PROTOCOLS  # noqa: E402
from tracekit.testing import executions  # noqa: E402

TARGET = 2000.0
RING = ("ring_buffer", "correct", {"ranks": 2, "slots": 8, "messages": 16})
OTHERS = [
    ("rdma_ring", "correct", {"slots": 8, "messages": 16, "cq_depth": 4}),
    ("low_latency", "correct", {"tokens": 3, "warps": 2, "rounds": 4}),
]


def fast(name: str, variant: str, sizes: dict[str, int], n: int) -> tuple[float, float, float]:
    """(schedules/s, steps/s, steps per schedule), best of three runs of ``n`` schedules."""
    best = None
    for rep in range(3):
        t = time.perf_counter()
        r = explore(PROTOCOLS[name], variant, examples=n, seed=rep, sizes=sizes)
        dt = time.perf_counter() - t
        assert r.found is None and r.examples == n
        if best is None or dt < best[0]:
            best = (dt, r.steps)
    dt, steps = best
    return n / dt, steps / dt, steps / n


def through_hypothesis(name: str, variant: str, sizes: dict[str, int], n: int) -> float:
    """Schedules/s when Hypothesis draws every choice (the baseline)."""
    count = [0]

    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(executions(PROTOCOLS[name], variant, sizes=sizes, record=False))
    def run(ex: object) -> None:
        count[0] += 1
        assert ex.hazard is None  # type: ignore[attr-defined]

    t = time.perf_counter()
    run()
    return count[0] / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schedules", type=int, default=5000, help="schedules per timed run of the explorer")
    ap.add_argument("--baseline", type=int, default=200, help="schedules for the Hypothesis baseline")
    args = ap.parse_args()
    name, variant, sizes = RING
    rate, steps_rate, per = fast(name, variant, sizes, args.schedules)
    base = through_hypothesis(name, variant, sizes, args.baseline)
    print(f"{name}/{variant} {sizes}: {per:.0f} steps per schedule")
    print(f"  explorer:            {rate:8.0f} schedules/s  ({steps_rate / 1e3:.0f}k steps/s, best of 3 x {args.schedules})")
    print(f"  through Hypothesis:  {base:8.0f} schedules/s  ({args.baseline} examples, one draw per choice)")
    print(f"  ratio explorer / Hypothesis: {rate / base:.1f}x")
    print(f"  target >= {TARGET:.0f} schedules/s: {'PASS' if rate >= TARGET else 'BELOW TARGET'}")
    for other in OTHERS:
        r, s, p = fast(*other, max(args.schedules // 2, 1))
        print(f"{other[0]}/{other[1]} {other[2]}: {r:.0f} schedules/s, {p:.0f} steps per schedule")
    return 0


if __name__ == "__main__":
    sys.exit(main())
