"""Diff speed on replay outputs (target: >= 100 k events/s through the whole diff, both sides
counted).

    PYTHONPATH=. python benchmarks/bench_diff.py [--tokens 1024] [--ep 16] [--repeat 3]

Replays one synthetic prefill routing twice (BF16 and FP8 dispatch) and times, best of
``--repeat``:

* ``diff_traces`` (both profiles, every table, findings) and its parts: ``profile`` of one side
  and the events-derived critical path of one side;
* rendering the text, JSON and HTML reports;
* the baseline in the same process: an operation-counting diff (count and summed duration per
  kernel name on each side, joined), what Holistic Trace Analysis's TraceDiff computes;
* the ratio of the two.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracekit.analysis.critical import critical_path  # noqa: E402
from tracekit.analysis.diff import diff_traces  # noqa: E402
from tracekit.analysis.profile import Trace, profile  # noqa: E402
from tracekit.hardware import load_profile  # noqa: E402
from tracekit.io.report import render  # noqa: E402
from tracekit.model.config import ReplayConfig  # noqa: E402
from tracekit.replay import replay  # noqa: E402
from tracekit.workload.synth import SynthConfig, synth  # noqa: E402


def counting_diff(a: pl.DataFrame, b: pl.DataFrame) -> pl.DataFrame:
    """The baseline: per kernel name, count and summed duration on each side."""
    def agg(e: pl.DataFrame) -> pl.DataFrame:
        return e.group_by("name").agg(pl.len().alias("n"), pl.col("dur_ns").sum().alias("dur"))

    return agg(a).join(agg(b), on="name", how="full", coalesce=True, suffix="_after").with_columns(
        (pl.col("dur_after").fill_null(0) - pl.col("dur").fill_null(0)).alias("delta"))


def best(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=1024, help="tokens per rank")
    ap.add_argument("--ep", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    routing = synth(SynthConfig(preset="prefill", ep=args.ep, tokens=args.tokens, seed=0))
    hw = load_profile("h800-ib")
    t = time.perf_counter()
    sides = []
    for dtype in ("bf16", "fp8"):
        r = replay(routing, hw, ReplayConfig(dispatch_dtype=dtype))
        sides.append(Trace(r.events, r.counters, r.summary, None, {"source": "replay"}, dtype))
    n = sum(s.events.height for s in sides)
    print(f"replays: EP{args.ep}, {args.tokens} tokens/rank, {n} events on both sides "
          f"({time.perf_counter() - t:.1f} s to replay)")
    a, b = sides
    t_diff = best(lambda: diff_traces(a, b), args.repeat)
    t_prof = best(lambda: profile(a), args.repeat)
    t_crit = best(lambda: critical_path(a.events), args.repeat)
    d = diff_traces(a, b)
    t_text = best(lambda: render(d, "text"), args.repeat)
    t_json = best(lambda: render(d, "json"), args.repeat)
    t_html = best(lambda: render(d, "html"), args.repeat)
    t_base = best(lambda: counting_diff(a.events, b.events), args.repeat)
    print(f"diff_traces              {t_diff:8.3f} s   {n / t_diff / 1e3:8.0f} k events/s")
    print(f"  profile (one side)     {t_prof:8.3f} s   {a.events.height / t_prof / 1e3:8.0f} k events/s")
    print(f"  critical path (one)    {t_crit:8.3f} s   {a.events.height / t_crit / 1e3:8.0f} k events/s")
    print(f"render text / json / html {t_text:.3f} / {t_json:.3f} / {t_html:.3f} s "
          f"({len(render(d, 'html')) / 1e3:.0f} kB of HTML)")
    print(f"baseline counting diff   {t_base:8.3f} s   {n / t_base / 1e3:8.0f} k events/s")
    print(f"ratio diff / baseline    {t_diff / t_base:8.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
