"""Per-stage breakdown of one replay: build, freeze, run, conservation, analyse, tables.

    PYTHONPATH=. python benchmarks/stages_replay.py [--ep 64] [--tokens 4096] [--repeat 1]

Times are CPU seconds (``time.process_time``, user + system; the wall clock is noisy on shared
machines), the best of ``--repeat`` runs, then the peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ep", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--granularity", default="chunk")
    args = ap.parse_args()

    from tracekit.arrays import small_pages
    from tracekit.analysis.phase import analyse_phase, check_conservation, phase_tables
    from tracekit.engine import run
    from tracekit.hardware import load_profile
    from tracekit.model.config import ReplayConfig
    from tracekit.model.normal import build_combine, build_dispatch
    from tracekit.replay import replay
    from tracekit.workload.layout import dispatch_layout
    from tracekit.workload.synth import SynthConfig, synth

    hw = load_profile("h800-ib")
    replay(synth(SynthConfig(preset="decode", ep=8, tokens=8, experts=16, topk=2)), hw)  # compile
    routing = synth(SynthConfig(preset="prefill", ep=args.ep, tokens=args.tokens))
    cfg = ReplayConfig(granularity=args.granularity).resolved(args.ep)
    stages = ("build", "freeze", "run", "conserve", "analyse", "tables")
    best: dict[tuple[str, str], float] = {}
    info: dict[str, str] = {}
    pages = small_pages()
    pages.__enter__()  # as replay() does
    for _ in range(args.repeat):
        layout = dispatch_layout(routing)
        ids = {"flow": 1, "msg": 0}
        for builder in (build_dispatch, build_combine):
            times = []
            c = time.process_time()
            built = builder(routing, layout, hw, cfg)
            times.append(time.process_time() - c)
            c = time.process_time()
            built.graph.freeze()
            times.append(time.process_time() - c)
            c = time.process_time()
            sched = run(built.graph)
            times.append(time.process_time() - c)
            c = time.process_time()
            check_conservation(built, sched, layout, routing)
            times.append(time.process_time() - c)
            c = time.process_time()
            result = analyse_phase(built, sched, layout, routing, step=0, layer=0, t0=0)
            times.append(time.process_time() - c)
            c = time.process_time()
            ev, ctr = phase_tables(built, sched, layout, routing, result, t0=0, ids=ids)
            times.append(time.process_time() - c)
            for s, t in zip(stages, times):
                best[(built.phase, s)] = min(best.get((built.phase, s), float("inf")), t)
            if args.repeat > 1:
                print(built.phase, " ".join(f"{s} {t:.2f}" for s, t in zip(stages, times)), flush=True)
            info[built.phase] = (f"{built.graph.num_tasks} tasks, {sched.events} engine events "
                                 f"({sched.events / max(times[2], 1e-9) / 1e6:.1f} M/s), {ev.height} event rows, "
                                 f"{ctr.height} counter rows")
            del built, sched, ev, ctr
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    total = 0.0
    for phase in ("dispatch", "combine"):
        row = [best[(phase, s)] for s in stages]
        total += sum(row)
        print(f"{phase:8s} " + " ".join(f"{s} {t:5.2f}" for s, t in zip(stages, row)) + f"  = {sum(row):5.2f} s cpu")
        print(f"         {info[phase]}")
    print(f"total {total:.2f} s cpu; peak RSS {rss:.0f} MB")


if __name__ == "__main__":
    main()
