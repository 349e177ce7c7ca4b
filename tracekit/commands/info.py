"""`tracekit info`: summarise a tracekit file (rows, ranks, skew statistics)."""

from __future__ import annotations

import argparse

import polars as pl

from tracekit.io.tables import read_table
from tracekit.errors import TracekitError
from tracekit.io.validate import TABLE_KINDS, check_table, read_routing
from tracekit.workload.routing import bytes_per_token
from tracekit.workload.summary import (counters_summary, events_summary, masked_fraction, routing_summary,
                                       traffic_summary)

HELP = "summarise a tracekit file: rows, ranks, tokens, expert and rank imbalance"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="a routing, events, counters or traffic Parquet file")


def show(df: pl.DataFrame) -> None:
    """Print a summary table in full (every row, column and character), without the shape line."""
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True,
                   float_precision=3, tbl_width_chars=10_000, fmt_str_lengths=10_000,
                   tbl_formatting="ASCII_MARKDOWN"):
        print(df)


def _routing(path: str) -> None:
    r = read_routing(path)
    m = r.meta
    pairs = r.steps_layers()
    print(f"{path}: routing.v1, {r.num_rows} rows, {len({s for s, _ in pairs})} step(s), "
          f"{len({l for _, l in pairs})} layer(s)")
    print(f"EP{m.ep_size} on {m.num_nodes} node(s) of {m.gpus_per_node}, {m.num_experts} experts "
          f"({m.experts_per_rank} per rank), top-{r.topk}, hidden {m.hidden}, dispatch {m.dispatch_dtype} "
          f"({bytes_per_token(m.hidden, m.dispatch_dtype)} B/token), combine {m.combine_dtype} "
          f"({bytes_per_token(m.hidden, m.combine_dtype)} B/token), masked {masked_fraction(r):.2%} of top-k entries")
    if m.provenance:
        print(f"provenance: {m.provenance}")
    summary = routing_summary(r)
    show(summary["stats"])
    print("nodes per token:")
    show(summary["nodes_per_token"])


def run(args: argparse.Namespace) -> int:
    table, meta, schema = read_table(args.file)
    if schema.name not in TABLE_KINDS:
        raise TracekitError(f"file declares schema {schema.id}, which is not a table", where=args.file,
                            fix=f"pass a {', '.join(TABLE_KINDS)} file")
    if schema.name == "routing":
        _routing(args.file)
        return 0
    check_table(table, meta, schema.name, args.file)
    print(f"{args.file}: {schema.id}, {table.num_rows} rows, metadata "
          + ", ".join(f"{k}={v}" for k, v in sorted(meta.items()) if k != "config"))
    if schema.name == "events":
        if table.num_rows:
            ts = table.column("ts_ns").to_numpy()
            end = ts + table.column("dur_ns").to_numpy()
            ranks = sorted(set(table.column("rank").to_numpy().tolist()) - {-1})
            print(f"span {int(end.max()) - int(ts.min())} ns, {len(ranks)} rank(s), "
                  f"{len(set(table.column('resource').to_pylist()))} resource(s)")
        show(events_summary(table))
    elif schema.name == "counters":
        show(counters_summary(table))
    else:
        show(traffic_summary(table))
    return 0
