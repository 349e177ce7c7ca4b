"""`tracekit synth`: write a synthetic routing table (DeepEP-test-style scores, skew knobs)."""

from __future__ import annotations

import argparse

from tracekit.errors import TracekitError
from tracekit.io.guard import output_file
from tracekit.io.tables import write_table
from tracekit.progress import Progress
from tracekit.workload.routing import DTYPES
from tracekit.workload.synth import PRESETS, SynthConfig, synth

HELP = "write a synthetic MoE routing table (routing.v1 Parquet)"

_DEFAULTS = SynthConfig()


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = _DEFAULTS
    p.add_argument("--preset", metavar="{decode,prefill}", default=d.preset, help=f"tokens per rank: {', '.join(f'{k} {v}' for k, v in PRESETS.items())} (default {d.preset})")
    p.add_argument("--ep", metavar="N", type=int, default=d.ep, help=f"expert-parallel ranks (default {d.ep})")
    p.add_argument("--gpus-per-node", metavar="N", type=int, default=d.gpus_per_node, help=f"ranks per node (default {d.gpus_per_node})")
    p.add_argument("--tokens", metavar="N", type=int, default=None, help="tokens per rank, overrides the preset")
    p.add_argument("--hidden", metavar="H", type=int, default=d.hidden, help=f"hidden size (default {d.hidden})")
    p.add_argument("--topk", metavar="K", type=int, default=d.topk, help=f"experts per token (default {d.topk})")
    p.add_argument("--experts", metavar="E", type=int, default=d.experts, help=f"routed experts, a multiple of --ep (default {d.experts})")
    p.add_argument("--max-nodes", metavar="N", type=int, default=d.max_nodes, help=f"node groups each token may use (default {d.max_nodes})")
    p.add_argument("--skew", metavar="S", type=float, default=d.skew, help="Zipf exponent of expert popularity; 0 = balanced (default 0)")
    p.add_argument("--rank-imbalance", metavar="SIGMA", type=float, default=d.rank_imbalance,
                   help="sigma of a log-normal factor on each rank's token count; 0 = equal (default 0)")
    p.add_argument("--masked", metavar="N", type=int, default=d.masked, help="top-k entries set to -1 per rank batch (default 0)")
    p.add_argument("--layers", metavar="N", type=int, default=d.layers, help=f"MoE layers (default {d.layers})")
    p.add_argument("--steps", metavar="N", type=int, default=d.steps, help=f"steps (default {d.steps})")
    p.add_argument("--dispatch-dtype", metavar="DTYPE", default=d.dispatch_dtype, help=f"{' | '.join(DTYPES)} (default {d.dispatch_dtype})")
    p.add_argument("--combine-dtype", metavar="DTYPE", default=d.combine_dtype, help=f"{' | '.join(DTYPES)} (default {d.combine_dtype})")
    p.add_argument("--seed", metavar="N", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    p.add_argument("-o", "--output", required=True, metavar="FILE.parquet", help="output file")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")


def config_from_args(args: argparse.Namespace) -> SynthConfig:
    return SynthConfig(
        preset=args.preset, ep=args.ep, gpus_per_node=args.gpus_per_node, tokens=args.tokens, hidden=args.hidden,
        topk=args.topk, experts=args.experts, max_nodes=args.max_nodes, skew=args.skew,
        rank_imbalance=args.rank_imbalance, masked=args.masked, layers=args.layers, steps=args.steps,
        dispatch_dtype=args.dispatch_dtype, combine_dtype=args.combine_dtype, seed=args.seed,
    ).check()


def run(args: argparse.Namespace) -> int:
    if not args.output.endswith(".parquet"):
        raise TracekitError(f"-o {args.output}: expected a .parquet file name", where="synth",
                            fix=f"e.g. -o {args.output}.parquet")
    output_file(args.output)
    config = config_from_args(args)
    with Progress("synth", total=config.steps * config.layers, quiet=args.quiet) as progress:
        routing = synth(config, on_layer=progress.advance)
    path = write_table(routing.to_arrow(), args.output, "routing", routing.meta.to_dict())
    if not args.quiet:
        print(f"wrote {path} (routing.v1, {routing.num_rows} rows: {config.steps} step(s) x {config.layers} "
              f"layer(s) x EP{config.ep} x ~{config.tokens_per_rank} tokens/rank, top-{config.topk} of "
              f"{config.experts} experts)")
    return 0
