"""Benchmark: the dynamic fabric's speed and memory.

    PYTHONPATH=. python benchmarks/bench_fabric.py [--tokens 4096] [--skip-packet]

Figures, each case in a fresh subprocess so that its CPU time and peak RSS are its own:

1. the numba simulator against its heapq reference on one incast (8 senders x 4 MB into one port,
   PFC + ECN + DCQCN), same process: packets per CPU second and the ratio;
2. the EP64 prefill (8 nodes x 8 GPUs, ``--tokens`` per rank, top-8 of 256, <= 4 nodes per token)
   on ``ascend910b-roce``: a static chunk replay (baseline), the same with ``--fabric dynamic``
   (packets generated as the run goes), and ``--granularity packet`` (every packet a task before the
   run: the issue's 38.8 CPU-s / 6.2 GB point), CPU seconds and peak RSS side by side.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import resource
import time


def _incast(queue: "mp.Queue") -> None:
    from tracekit.fabric import FabricParams, Flows, simulate, simulate_reference, single_switch

    n = 8
    topo = single_switch(n + 1, 200_000, 25, 600)
    flows = Flows.of(list(range(1, n + 1)), [0] * n, [0] * n, [4 * 1024 * 1024] * n)
    params = FabricParams()
    simulate(topo, params, Flows.of([1], [0], [0], [1000]))  # compile / load the cache first
    out = {}
    for name, fn in (("fast", simulate), ("reference", simulate_reference)):
        t = time.process_time()
        run = fn(topo, params, flows)
        out[name] = time.process_time() - t
        out["packets"] = int(run.port_pkts.sum())
    queue.put(out)


def _replay(tokens: int, mode: str, queue: "mp.Queue") -> None:
    from tracekit.hardware import load_profile
    from tracekit.model.config import ReplayConfig
    from tracekit.replay import replay
    from tracekit.workload.synth import SynthConfig, synth

    hw = load_profile("ascend910b-roce")
    cfg = {"static": ReplayConfig(), "dynamic": ReplayConfig(fabric="dynamic"),
           "packet": ReplayConfig(granularity="packet")}[mode]
    replay(synth(SynthConfig(preset="decode", ep=16, tokens=16, experts=32, topk=2)), hw, cfg)  # warm the JIT
    routing = synth(SynthConfig(preset="prefill", ep=64, tokens=tokens))
    t = time.process_time()
    res = replay(routing, hw, cfg)
    cpu = time.process_time() - t
    queue.put({"cpu_s": cpu, "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
               "dispatch_us": res.summary["dispatch"]["latency_ns"] / 1e3,
               "combine_us": res.summary["combine"]["latency_ns"] / 1e3,
               "fabric": {k: res.summary.get("fabric", {}).get("dispatch", {}).get(k)
                          for k in ("packets", "pause_ns", "paused_ports", "ecn_marks", "fabric_delay_ns")}})


def _in_subprocess(target, *args):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    out = q.get()
    p.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--skip-packet", action="store_true", help="skip --granularity packet (slow, GBs of memory)")
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    inc = _in_subprocess(_incast)
    print(f"incast 8 x 4 MB: {inc['packets']} switch packets; fast {inc['fast']:.3f} CPU-s "
          f"({inc['packets'] / inc['fast'] / 1e6:.2f} M pkt/s), reference {inc['reference']:.3f} CPU-s: "
          f"fast / reference = 1 / {inc['reference'] / inc['fast']:.0f}")
    modes = ["static", "dynamic"] + ([] if args.skip_packet else ["packet"])
    base = None
    for mode in modes:
        r = _in_subprocess(_replay, args.tokens, mode)
        base = base or r
        print(f"EP64 prefill {args.tokens} tok/rank, {mode:7s}: {r['cpu_s']:7.2f} CPU-s "
              f"(x{r['cpu_s'] / base['cpu_s']:.2f} of static), peak RSS {r['rss_gb']:.2f} GB, dispatch "
              f"{r['dispatch_us']:.0f} us, combine {r['combine_us']:.0f} us"
              + (f", fabric {r['fabric']}" if mode == "dynamic" else ""))


if __name__ == "__main__":
    main()
