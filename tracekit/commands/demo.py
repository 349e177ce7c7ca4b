"""`tracekit demo`: the main job end to end on an embedded default workload.

For now: synthesise a decode batch (EP16 on 2 nodes of 8), compute its dispatch layout, write the
routing and traffic tables and print a summary. Replay and the Perfetto timeline join later.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import polars as pl

from tracekit.commands.info import show
from tracekit.io.atomic import atomic_dir
from tracekit.io.tables import write_table
from tracekit.workload.layout import dispatch_layout, traffic_bytes, traffic_meta, traffic_table
from tracekit.workload.routing import bytes_per_token
from tracekit.workload.synth import SynthConfig, synth

HELP = "run the main job end to end on an embedded default workload (decode, EP16, 2 nodes)"

#: The embedded default: DeepEP's low-latency test sizes on two H800 nodes.
DEMO_CONFIG = SynthConfig(preset="decode", ep=16, gpus_per_node=8, seed=0)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", metavar="DIR", default=None,
                   help="output directory (default: a new temporary directory, printed at the end)")
    p.add_argument("--quiet", action="store_true", help="print only the output directory")


def run(args: argparse.Namespace) -> int:
    config = DEMO_CONFIG.check()
    out = Path(args.output) if args.output else Path(tempfile.mkdtemp(prefix="tracekit-demo-"))
    routing = synth(config)
    layout = dispatch_layout(routing)
    traffic = traffic_table(routing)
    with atomic_dir(out) as tmp:
        write_table(routing.to_arrow(), tmp / "routing.parquet", "routing", routing.meta.to_dict())
        write_table(traffic, tmp / "traffic.parquet", "traffic", traffic_meta(routing))
    if args.quiet:
        print(out)
        return 0
    m = routing.meta
    tokens = layout.num_tokens_per_rank
    nbytes = traffic_bytes(layout, m.hidden, m.dispatch_dtype)
    print(f"workload: decode, EP{m.ep_size} on {m.num_nodes} nodes x {m.gpus_per_node} GPUs, "
          f"{config.tokens_per_rank} tokens/rank, top-{config.topk} of {m.num_experts} experts "
          f"(<= {config.max_nodes} nodes per token), hidden {m.hidden}, dispatch {m.dispatch_dtype} "
          f"({bytes_per_token(m.hidden, m.dispatch_dtype)} B/token), seed {config.seed}")
    node = np.arange(m.ep_size) // m.gpus_per_node
    same = node[:, None] == node[None, :]
    off_diag = ~np.eye(m.ep_size, dtype=bool)
    show(pl.DataFrame({
        "traffic (dispatch)": ["to own rank", "to other ranks on the node (NVLink)", "to other nodes (RDMA)"],
        "tokens": [int(np.trace(tokens)), int(tokens[same & off_diag].sum()), int(tokens[~same].sum())],
        "bytes": [int(np.trace(nbytes)), int(nbytes[same & off_diag].sum()), int(nbytes[~same].sum())],
        "rank pairs": [m.ep_size, int((same & off_diag).sum()), int((~same).sum())],
        "tokens per pair (min/mean/max)": [
            f"{int(v.min())}/{v.mean():.1f}/{int(v.max())}" for v in
            (np.diag(tokens), tokens[same & off_diag], tokens[~same])],
    }))
    sent, recv = tokens.sum(axis=1), tokens.sum(axis=0)
    busiest = int(np.argmax(recv))
    load = layout.num_tokens_per_expert.sum(axis=0)
    hot = int(np.argmax(load))
    print(f"busiest rank: {busiest} receives {int(recv[busiest])} tokens ({int(nbytes[:, busiest].sum())} B), "
          f"{recv[busiest] / recv.mean():.2f}x the mean of {recv.mean():.1f}; senders send "
          f"{int(sent.min())}-{int(sent.max())} tokens")
    print(f"experts: {int(load.sum())} selections, {load.mean():.1f} per expert on average; hottest expert "
          f"{hot} (rank {hot // m.experts_per_rank}) has {int(load[hot])} = {load[hot] / load.mean():.2f}x the mean; "
          f"{int((load == 0).sum())} expert(s) idle")
    print(f"wrote {out / 'routing.parquet'} and {out / 'traffic.parquet'}")
    print(f"next: tracekit info {out / 'routing.parquet'}")
    return 0
