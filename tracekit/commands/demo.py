"""`tracekit demo`: the main job end to end on an embedded default workload.

Synthesise a prefill batch (EP16 on 2 nodes of 8 H800s, 512 tokens per rank, DeepEP's test recipe),
replay its dispatch and combine on the ``h800-ib`` profile, write the tables, the summary and a
Perfetto timeline, and say how to open it.
"""

from __future__ import annotations

import argparse
import json

from tracekit.hardware import load_profile
from tracekit.io.atomic import REPLAY_OUTPUTS, atomic_dir
from tracekit.io.guard import output_dir
from tracekit.io.tables import write_table
from tracekit.model.config import ReplayConfig
from tracekit.workload.layout import traffic_meta, traffic_table
from tracekit.workload.synth import SynthConfig, synth

HELP = "run the main job end to end on an embedded default: synth -> replay -> Perfetto timeline"

#: The embedded default: a small prefill batch on two H800 nodes (DeepEP's normal-kernel setting).
DEMO_CONFIG = SynthConfig(preset="prefill", ep=16, gpus_per_node=8, tokens=512, seed=0)
DEMO_HARDWARE = "h800-ib"
#: Where the demo writes unless told otherwise: one folder, rewritten by each run (not a new temporary
#: folder per run).
DEFAULT_OUTPUT = "tracekit-demo"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", metavar="DIR", default=DEFAULT_OUTPUT,
                   help=f"output directory (default: {DEFAULT_OUTPUT}/ in the current directory, replaced on every run)")
    p.add_argument("--quiet", action="store_true", help="print only the output directory")


def run(args: argparse.Namespace) -> int:
    from tracekit.io.replay_out import write_replay
    from tracekit.replay import replay

    out = output_dir(args.output)
    config = DEMO_CONFIG.check()
    routing = synth(config)
    hw = load_profile(DEMO_HARDWARE)
    cfg = ReplayConfig()
    result = replay(routing, hw, cfg)
    if not args.quiet:  # the results first: the files (and the timeline writer's kernels) come after
        m, s = routing.meta, result.summary
        print(f"workload: prefill, EP{m.ep_size} on {m.num_nodes} nodes x {m.gpus_per_node} GPUs, "
              f"{config.tokens_per_rank} tokens/rank, top-{config.topk} of {m.num_experts} experts, hidden {m.hidden}, "
              f"{m.dispatch_dtype} dispatch / {m.combine_dtype} combine; hardware {hw.name}")
        for phase in ("dispatch", "combine"):
            d = s[phase]
            top = sorted(d["stages"].items(), key=lambda kv: -kv[1])[:3]
            print(f"{phase:8s}: {d['latency_ns_per_call']['mean'] / 1e3:7.1f} us per call (host start -> last receive); "
                  f"rank finish p50/p99/max "
                  f"{d['rank_finish_ns']['p50'] / 1e3:.1f}/{d['rank_finish_ns']['p99'] / 1e3:.1f}/"
                  f"{d['rank_finish_ns']['max'] / 1e3:.1f} us; NVL {d['bandwidth_gbps']['nvlink']:.0f} GB/s, "
                  f"RDMA {d['bandwidth_gbps']['rdma']:.0f} GB/s; bottleneck {d['bottleneck']['resource']} "
                  f"({d['bottleneck']['utilisation']:.0%} busy); critical path mostly "
                  + ", ".join(f"{k} {v / 1e3:.0f} us" for k, v in top))
        print(f"conservation: {s['conservation']} ({result.events.height} events, "
              f"{result.counters.height} counter samples)")
    meta = {"source": "replay", "ep_size": routing.meta.ep_size, "gpus_per_node": routing.meta.gpus_per_node,
            "hardware": hw.name, "config": json.dumps(cfg.resolved(routing.meta.ep_size).to_dict(), default=str)}
    with atomic_dir(out, owns=REPLAY_OUTPUTS | {"routing.parquet", "traffic.parquet"}) as tmp:  # all files or none
        write_replay(result, tmp, meta=meta)
        write_table(routing.to_arrow(), tmp / "routing.parquet", "routing", routing.meta.to_dict())
        write_table(traffic_table(routing), tmp / "traffic.parquet", "traffic", traffic_meta(routing))
    timeline = out / "timeline.pftrace"
    if args.quiet:
        print(out)
        return 0
    print(f"wrote {out}/: routing.parquet traffic.parquet events.parquet counters.parquet summary.json "
          f"timeline.pftrace")
    print(f"open the timeline: drag {timeline} onto https://ui.perfetto.dev (it is read in the browser, "
          f"nothing is uploaded); docs/perfetto.md explains the tracks")
    return 0
