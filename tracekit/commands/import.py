"""`tracekit import`: captured traces and dumps into tracekit tables."""

from __future__ import annotations

import argparse
from pathlib import Path

from tracekit.errors import TracekitError
from tracekit.io.atomic import atomic_dir
from tracekit.io.guard import output_dir
from tracekit.schemas import MAX_SIZE
from tracekit.io.tables import write_table

HELP = "turn captures into tables: kineto (PyTorch profiler JSON), routing (topk dumps), perfetto (.pftrace)"

FORMATS = {
    "kineto": "PyTorch profiler traces (.json / .json.gz, one per rank, or a directory) -> events.parquet "
              "(+ traffic.parquet when all-to-alls carry split sizes)",
    "routing": "a top-k dump (.npy, .npz, .parquet, .csv) -> routing.parquet; needs --ep --experts --hidden",
    "perfetto": "a .pftrace written by tracekit -> events.parquet + counters.parquet",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "formats:\n" + "\n".join(f"  {k:9} {v}" for k, v in FORMATS.items())
    p.add_argument("format", choices=sorted(FORMATS), help="what the files are")
    p.add_argument("files", nargs="+", metavar="FILE", help="input files (kineto: files or directories)")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="directory to write the tables into")
    p.add_argument("--gpus-per-node", type=int, help="GPUs per node (kineto: default min(8, world size))")
    g = p.add_argument_group("routing dumps")
    g.add_argument("--ep", type=int, help="expert-parallel ranks")
    g.add_argument("--experts", type=int, help="routed experts in the model")
    g.add_argument("--hidden", type=int, help="hidden size")
    g.add_argument("--dispatch-dtype", default="fp8", choices=["bf16", "fp8", "int8"])
    g.add_argument("--combine-dtype", default="bf16", choices=["bf16", "fp8", "int8"])
    g.add_argument("--rank", type=int, help="all rows of a [N, K] dump belong to this rank")
    g.add_argument("--step", type=int, default=0, help="step number for the rows (default 0)")
    g.add_argument("--layer", type=int, default=0, help="first layer number (default 0)")


def _kineto(args: argparse.Namespace, out: Path) -> str:
    from tracekit.io.kineto import import_kineto

    imp = import_kineto(args.files, gpus_per_node=args.gpus_per_node)
    written = ["events.parquet"]
    with atomic_dir(out, owns=frozenset({"events.parquet", "traffic.parquet"})) as tmp:
        write_table(imp.events, tmp / "events.parquet", "events", imp.meta)
        if imp.traffic is not None:
            write_table(imp.traffic, tmp / "traffic.parquet", "traffic", imp.traffic_meta)
            written.append("traffic.parquet")
    s = imp.summary
    stages = ", ".join(f"{v} {k}" for k, v in s["stages"].items())
    return (f"imported {s['events']} events from {s['files']} file(s), ranks {s['ranks']} of {s['world_size']} "
            f"({stages}); wrote {', '.join(str(out / w) for w in written)}")


def _routing(args: argparse.Namespace, out: Path) -> str:
    from tracekit.io.routing_dumps import routing_from_dump, routing_summary

    if len(args.files) != 1:
        raise TracekitError(f"routing takes one dump, got {len(args.files)}", fix="import dumps one at a time")
    missing = [f"--{k}" for k in ("ep", "experts", "hidden") if getattr(args, k) is None]
    if missing:
        raise TracekitError(f"routing dumps need {', '.join(missing)}", where=args.files[0],
                            fix="give the run's sizes, e.g. --ep 64 --experts 256 --hidden 7168")
    gpn = args.gpus_per_node or min(8, args.ep)
    r = routing_from_dump(args.files[0], ep_size=args.ep, num_experts=args.experts, hidden=args.hidden,
                          gpus_per_node=gpn, dispatch_dtype=args.dispatch_dtype, combine_dtype=args.combine_dtype,
                          rank=args.rank, step=args.step, layer=args.layer)
    with atomic_dir(out) as tmp:
        write_table(r.to_arrow(), tmp / "routing.parquet", "routing", r.meta.to_dict())
    s = routing_summary(r)
    return (f"imported {s['rows']} tokens x top-{s['topk']} on {s['ranks']} rank(s), {s['layers']} (step, layer) "
            f"pair(s), {s['masked']} masked choices; wrote {out / 'routing.parquet'}")


def _perfetto(args: argparse.Namespace, out: Path) -> str:
    from tracekit.io.perfetto import read_trace

    if len(args.files) != 1:
        raise TracekitError(f"perfetto takes one trace, got {len(args.files)}", fix="import traces one at a time")
    events, counters = read_trace(args.files[0])
    with atomic_dir(out) as tmp:
        write_table(events, tmp / "events.parquet", "events", {"source": "import:perfetto"})
        write_table(counters, tmp / "counters.parquet", "counters", {"source": "import:perfetto"})
    return (f"imported {events.height} events and {counters.height} counter samples; wrote "
            f"{out / 'events.parquet'}, {out / 'counters.parquet'}")


def run(args: argparse.Namespace) -> int:
    out = output_dir(args.output)
    for flag in ("gpus_per_node", "ep", "experts", "hidden"):
        value = getattr(args, flag)
        if value is not None and not 1 <= value <= MAX_SIZE:
            raise TracekitError(f"--{flag.replace('_', '-')} {value}: expected an integer in [1, {MAX_SIZE}]",
                                fix=f"give the run's real --{flag.replace('_', '-')}")
    line = {"kineto": _kineto, "routing": _routing, "perfetto": _perfetto}[args.format](args, out)
    print(line)
    return 0
