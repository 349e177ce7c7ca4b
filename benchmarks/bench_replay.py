"""Benchmark: replay speed and the engine's event rate, against a SimPy run of the same task graph.

    PYTHONPATH=. python benchmarks/bench_replay.py [--simpy-ep 16] [--simpy-tokens 512]

Targets (issue 3), each case in a fresh subprocess so that its peak RSS is its own:

* EP8 intranode prefill (4096 tokens/rank, top-8 of 256, H800 profile): dispatch + combine <= 2 s;
* EP64 internode prefill (8 nodes x 8 GPUs, 4096 tokens/rank, top-8 of 256, group-limited to 4
  nodes): dispatch + combine <= 10 s and <= 4 GB peak RSS;
* engine event rate >= 5 M events/s and >= 4x a SimPy loop processing the same events (the same task
  graph: each task a SimPy process that waits for its predecessors, a ``Resource`` server and a
  ``Container`` of credits), measured in this process on one graph (EP16 dispatch, whose state fits
  in cache). The engine's rate on the EP64 graphs (millions of tasks: memory-bound) is printed too.

"Replay" is :func:`tracekit.replay.replay`: layout, graph building, the engine, conservation checks,
analysis, and the events and counters tables (writing files is not included).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import time

import numpy as np


def _case(ep: int, tokens: int, queue: "mp.Queue") -> None:
    from tracekit.hardware import load_profile
    from tracekit.replay import replay
    from tracekit.workload.synth import SynthConfig, synth

    hw = load_profile("h800-ib")
    warm = synth(SynthConfig(preset="decode", ep=8, tokens=8, experts=16, topk=2))
    replay(warm, hw)  # load numba's compiled kernels before timing
    routing = synth(SynthConfig(preset="prefill", ep=ep, tokens=tokens))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    cpu = time.process_time()
    result = replay(routing, hw)
    wall = time.perf_counter() - t
    cpu = time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    s = result.summary
    out = {
        "ep": ep, "tokens_per_rank": tokens, "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak, "rss_before_mb": rss0,
        "events_rows": result.events.height, "counter_rows": result.counters.height,
        "tasks": s["dispatch"]["tasks"] + s["combine"]["tasks"],
        "engine_events": s["dispatch"]["events_processed"] + s["combine"]["events_processed"],
        "dispatch_us": s["dispatch"]["latency_ns"] / 1e3, "combine_us": s["combine"]["latency_ns"] / 1e3,
        "dispatch_bw": s["dispatch"]["bandwidth_gbps"], "combine_bw": s["combine"]["bandwidth_gbps"],
    }
    del result
    out["engine"] = _phase_rates(routing, hw)
    queue.put(out)


def _phase_rates(routing, hw) -> dict:
    """The engine alone (``tracekit.engine.run``: state setup, event loop, schedule) on this replay's
    dispatch and combine graphs: events per second, best of two runs."""
    from tracekit.arrays import small_pages
    from tracekit.engine import run
    from tracekit.model.config import ReplayConfig
    from tracekit.model.normal import build_combine, build_dispatch
    from tracekit.workload.layout import dispatch_layout

    cfg = ReplayConfig().resolved(routing.meta.ep_size)
    layout = dispatch_layout(routing)
    rates = {}
    with small_pages():  # as inside replay()
        for build in (build_dispatch, build_combine):
            built = build(routing, layout, hw, cfg)
            built.graph.freeze()
            best = float("inf")
            for _ in range(2):
                t = time.perf_counter()
                sched = run(built.graph)
                best = min(best, time.perf_counter() - t)
            rates[built.phase] = {"tasks": built.graph.num_tasks, "events": sched.events, "s": best,
                                  "events_per_s": sched.events / best}
            del built, sched
    return rates


def run_case(ep: int, tokens: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_case, args=(ep, tokens, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def simpy_run(graph) -> tuple[int, np.ndarray]:
    """Execute a TaskGraph with SimPy: one process per task; returns (events, finish times)."""
    import simpy

    from tracekit.engine.graph import unpack_edges

    f = graph.freeze()
    n = graph.num_tasks
    env = simpy.Environment()
    servers = [simpy.Resource(env, capacity=int(c)) for c in f["res_servers"]]
    pools = [simpy.Container(env, capacity=int(c), init=int(c)) for c in f["pool_capacity"]]
    done = [env.event() for _ in range(n)]
    finish = np.full(n, -1, np.int64)
    preds: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    succ, succ_lag = unpack_edges(f["succ"])
    for t in range(n):
        for e in range(f["succ_ptr"][t], f["succ_ptr"][t + 1]):
            preds[int(succ[e])].append((t, int(succ_lag[e])))
    rel = [[] for _ in range(n)]
    for e in range(f["rel_task"].size):
        rel[int(f["rel_task"][e])].append((int(f["rel_pool_e"][e]), int(f["rel_amount_e"][e]), int(f["rel_lag_e"][e])))

    def delayed_put(pool, amount, lag):
        yield env.timeout(lag)
        yield pool.put(amount)

    def task(t):
        if preds[t]:
            yield simpy.AllOf(env, [done[p] for p, _ in preds[t]])
            ready = max(finish[p] + lag for p, lag in preds[t])
            if ready > env.now:
                yield env.timeout(ready - env.now)
        elif f["release"][t] > 0:
            yield env.timeout(int(f["release"][t]))
        p, r = int(f["pool"][t]), int(f["res"][t])
        hold = bool(f["hold"][t])
        if p >= 0 and not hold:
            yield pools[p].get(int(f["amount"][t]))
        req = None
        if r >= 0:
            req = servers[r].request()
            yield req
        if p >= 0 and hold:
            yield pools[p].get(int(f["amount"][t]))
        a = int(f["align"][t])
        if a > 0 and env.now % a:
            yield env.timeout(a - env.now % a)
        yield env.timeout(int(f["dur"][t]))
        if req is not None:
            servers[r].release(req)
        for pool, amount, lag in rel[t]:
            if lag > 0:
                env.process(delayed_put(pools[pool], amount, lag))
            else:
                pools[pool].put(amount)
        finish[t] = env.now
        done[t].succeed()

    for t in range(n):
        env.process(task(t))
    events = 0
    while True:
        try:
            env.step()
            events += 1
        except simpy.core.EmptySchedule:
            break
    return events, finish


def engine_rate(ep: int, tokens: int) -> dict:
    """Our engine and SimPy on the dispatch graph of one replay; same graph, same process."""
    from tracekit.engine import run
    from tracekit.hardware import load_profile
    from tracekit.model.config import ReplayConfig
    from tracekit.model.normal import build_dispatch
    from tracekit.workload.layout import dispatch_layout
    from tracekit.workload.synth import SynthConfig, synth

    routing = synth(SynthConfig(preset="prefill", ep=ep, tokens=tokens))
    hw = load_profile("h800-ib")
    cfg = ReplayConfig().resolved(ep)
    layout = dispatch_layout(routing)
    built = build_dispatch(routing, layout, hw, cfg)
    built.graph.freeze()
    run(built.graph)  # warm
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        sched = run(built.graph)
        best = min(best, time.perf_counter() - t)
    t = time.perf_counter()
    simpy_events, simpy_finish = simpy_run(built.graph)
    simpy_s = time.perf_counter() - t
    makespans = (int(sched.finish.max()), int(simpy_finish.max()))
    return {
        "graph": f"EP{ep} dispatch, {tokens} tokens/rank", "tasks": built.graph.num_tasks,
        "engine_events": sched.events, "engine_s": best, "engine_events_per_s": sched.events / best,
        "simpy_events": simpy_events, "simpy_s": simpy_s, "simpy_events_per_s": simpy_events / simpy_s,
        "ratio_tasks_per_s": (built.graph.num_tasks / best) / (built.graph.num_tasks / simpy_s),
        "makespan_ns": makespans,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--simpy-ep", type=int, default=16)
    ap.add_argument("--simpy-tokens", type=int, default=2048)
    ap.add_argument("--skip-ep64", action="store_true")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {mp.cpu_count()} cores, python {platform.python_version()}")
    out = {}
    out["ep8"] = ep8 = run_case(8, 4096)
    print(f"EP8  intranode prefill: replay {ep8['wall_s']:.2f} s (cpu {ep8['cpu_s']:.2f} s), peak RSS "
          f"{ep8['peak_rss_mb']:.0f} MB, {ep8['tasks']} tasks, {ep8['events_rows']} event rows  [target <= 2 s]")
    if not args.skip_ep64:
        out["ep64"] = ep64 = run_case(64, 4096)
        print(f"EP64 internode prefill: replay {ep64['wall_s']:.2f} s (cpu {ep64['cpu_s']:.2f} s), peak RSS "
              f"{ep64['peak_rss_mb']:.0f} MB, {ep64['tasks']} tasks, {ep64['events_rows']} event rows, "
              f"{ep64['counter_rows']} counter rows  [target <= 10 s, <= 4096 MB]")
        for phase, r in ep64["engine"].items():
            print(f"  engine on the EP64 {phase} graph ({r['tasks']} tasks): {r['events_per_s'] / 1e6:.2f} M events/s "
                  f"({r['events']} events in {r['s']:.2f} s)")
    rate = engine_rate(args.simpy_ep, args.simpy_tokens)
    out["engine"] = rate
    print(f"engine on {rate['graph']} ({rate['tasks']} tasks): {rate['engine_events_per_s'] / 1e6:.2f} M events/s "
          f"({rate['engine_events']} events in {rate['engine_s']:.3f} s)  [target >= 5 M/s]")
    print(f"SimPy on the same graph: {rate['simpy_events_per_s'] / 1e6:.3f} M events/s ({rate['simpy_events']} "
          f"events in {rate['simpy_s']:.2f} s); engine/SimPy time ratio {rate['simpy_s'] / rate['engine_s']:.1f}x "
          f"[target >= 4x]; makespan tracekit {rate['makespan_ns'][0]} ns, SimPy {rate['makespan_ns'][1]} ns (SimPy breaks ties at equal times differently)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2, default=str)


if __name__ == "__main__":
    main()
