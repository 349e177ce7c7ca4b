"""Benchmark: synthetic routing + dispatch layout at DeepEP prefill scale.

    PYTHONPATH=. python benchmarks/bench_synth.py [--ep 256] [--tokens 4096] [--repeat 3]

Default workload: EP256 (32 nodes of 8), 4096 tokens per rank, top-8 of 256 experts, group-limited
to 4 nodes: ~1M tokens and ~8M selections. Target: synth + layout <= 3 s and peak RSS <= 2 GB on a
2-core machine. Prints wall time per part (first run and median of --repeat runs), peak RSS, and the
ratio against baselines timed in the same process:

* generator baseline: a straightforward numpy port of DeepEP's test generator (float64
  ``|randn| + 1`` scores, group max, top groups, masked scores, top-k by argpartition), timed on a
  subsample of ranks and scaled to all ranks;
* layout baseline: :func:`reference_layout` (per-token Python loops) on a subsample of rows, scaled.
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time

import numpy as np

from tracekit.workload.layout import dispatch_layout, reference_layout, traffic_bytes
from tracekit.workload.synth import SynthConfig, synth


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def deepep_style_numpy(config: SynthConfig, ranks: int, seed: int = 0) -> np.ndarray:
    """DeepEP's test recipe in plain numpy, float64 scores, for ``ranks`` rank batches."""
    rng = np.random.default_rng(seed)
    t, e, k = config.tokens_per_rank, config.experts, config.topk
    nodes, max_nodes = config.num_nodes, config.max_nodes
    out = []
    for _ in range(ranks):
        scores = np.abs(rng.standard_normal((t, e))) + 1
        if nodes > max_nodes:
            group = scores.reshape(t, nodes, -1).max(axis=2)
            top_groups = np.argpartition(-group, max_nodes - 1, axis=1)[:, :max_nodes]
            keep = np.zeros((t, nodes), dtype=bool)
            np.put_along_axis(keep, top_groups, True, axis=1)
            scores = np.where(np.repeat(keep, e // nodes, axis=1), scores, 0.0)
        out.append(np.argpartition(-scores, k - 1, axis=1)[:, :k])
    return np.concatenate(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--ep", type=int, default=256)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--experts", type=int, default=256)
    p.add_argument("--topk", type=int, default=8)
    p.add_argument("--skew", type=float, default=0.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--baseline-ranks", type=int, default=8, help="rank batches the generator baseline runs")
    p.add_argument("--baseline-rows", type=int, default=16384, help="rows the reference layout runs")
    args = p.parse_args()

    config = SynthConfig(preset="prefill", ep=args.ep, tokens=args.tokens, experts=args.experts, topk=args.topk,
                         skew=args.skew).check()
    print(f"workload: EP{config.ep} ({config.num_nodes} nodes), {config.tokens_per_rank} tokens/rank, "
          f"top-{config.topk} of {config.experts} experts, max {config.max_nodes} nodes, skew {config.skew}")
    print(f"machine: {platform.machine()}, {len(__import__('os').sched_getaffinity(0))} CPUs usable, "
          f"python {platform.python_version()}, numpy {np.__version__}")

    t0 = time.perf_counter()
    synth(SynthConfig(ep=8, tokens=4, experts=16, topk=2))
    warm = time.perf_counter() - t0
    print(f"numba kernel load/compile (once per process, cached on disk): {warm:.3f} s")

    synth_times, layout_times = [], []
    rows = selections = 0
    rss_main = 0.0
    for i in range(args.repeat):
        t0 = time.perf_counter()
        routing = synth(config)
        t1 = time.perf_counter()
        layout = dispatch_layout(routing)
        traffic_bytes(layout, routing.meta.hidden, routing.meta.dispatch_dtype)
        t2 = time.perf_counter()
        synth_times.append(t1 - t0)
        layout_times.append(t2 - t1)
        rows, selections = routing.num_rows, int((routing.topk_expert >= 0).sum())
        rss_main = peak_rss_mb()
        del routing, layout
    total = [a + b for a, b in zip(synth_times, layout_times)]
    print(f"rows {rows:,}, selections {selections:,}")
    for label, times in (("synth", synth_times), ("layout", layout_times), ("synth + layout", total)):
        print(f"{label:>15}: first {times[0]:.3f} s, median {statistics.median(times):.3f} s "
              f"(runs: {', '.join(f'{t:.3f}' for t in times)})")
    print(f"peak RSS: {rss_main:.0f} MB (target <= 2048 MB)")
    print(f"target synth + layout <= 3 s: {'met' if statistics.median(total) <= 3.0 else 'NOT met'} "
          f"(median {statistics.median(total):.3f} s)")

    # baselines, same process
    b_ranks = min(args.baseline_ranks, config.ep)
    t0 = time.perf_counter()
    deepep_style_numpy(config, b_ranks)
    gen = (time.perf_counter() - t0) * config.ep / b_ranks
    sub = synth(SynthConfig(**{**config.to_dict(), "ep": config.ep, "tokens": max(1, args.baseline_rows // config.ep)}))
    t0 = time.perf_counter()
    reference_layout(sub)
    ref = (time.perf_counter() - t0) * rows / sub.num_rows
    med_s, med_l = statistics.median(synth_times), statistics.median(layout_times)
    print(f"baseline generator (numpy float64 DeepEP recipe, {b_ranks} ranks scaled x{config.ep / b_ranks:g}): "
          f"{gen:.2f} s -> synth is {gen / med_s:.1f}x faster")
    print(f"baseline layout (reference_layout, {sub.num_rows} rows scaled x{rows / sub.num_rows:.0f}): "
          f"{ref:.1f} s -> dispatch_layout is {ref / med_l:.0f}x faster")
    print(f"baseline total {gen + ref:.1f} s vs {med_s + med_l:.3f} s: ratio {(gen + ref) / (med_s + med_l):.0f}x")


if __name__ == "__main__":
    main()
