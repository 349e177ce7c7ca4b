"""Tables of an execution: recorded engine rows to a ``memops`` table, and a memops table to an
``events`` table (each operation a slice on its actor's track, deliveries and completions as
flows) for Parquet and Perfetto output. Pure: no file I/O here.
"""

from __future__ import annotations

import json
from typing import Any

import polars as pl
import pyarrow as pa

from tracekit import schemas
from tracekit.hazards.engine import Execution
from tracekit.hazards.ops import CMPS, ORDERS, Hazard

#: Logical time of one event when a memops table has no ts_ns: events are spaced this far apart.
STEP_NS = 1000
#: Duration given to each slice of a logical-time timeline.
SLICE_NS = 800

_KIND = {
    "load": "memory", "store": "memory", "rmw": "memory", "slot_release": "memory",
    "wait": "sync", "fence": "sync", "quiet": "sync", "cq_poll": "sync", "blocked": "sync",
    "put": "comm", "atomic": "comm", "deliver": "comm", "doorbell": "comm",
    "map": "memory", "unmap": "memory", "crash": "sync",
}
_ORDERED = ("load", "store", "rmw", "wait", "blocked")


def to_memops(ex: Execution) -> pa.Table:
    """The memops table (``schemas/memops.v1.json``) of an execution run with ``record=True``."""
    if ex.rows is None:
        raise ValueError("the execution was not recorded; run it with record=True")
    p = ex.program
    cols: dict[str, list[Any]] = {f: [] for f in schemas.load("memops").column_names}
    for r in ex.rows:
        seq, actor, op, loc, value, order, qp, path, ref, rf, cmp, expect, region, src = r
        spec = p.locs[loc] if loc >= 0 else None
        if actor >= 0:
            a = p.actors[actor].handle
            rank, name = a.rank, a.name
        else:  # a delivery: performed by the target memory
            rank, name = spec.rank, f"rank{spec.rank}/hbm"  # type: ignore[union-attr]
        target = spec.rank if spec else -1
        var = spec.var if spec else ""
        reg = spec.region_name if spec else ""
        if region >= 0:
            target, var = p.regions[region].rank, p.regions[region].name
        if op == "crash":
            target = rank
        sq = cq = -1
        if op in ("put", "atomic"):
            qspec = next(q for q in p.qps if q.src == rank and q.index == qp)
            sq, cq = qspec.sq_depth, qspec.cq_depth
        s = p.locs[src] if src >= 0 else None
        cols["seq"].append(seq)
        cols["ts_ns"].append(-1)
        cols["rank"].append(rank)
        cols["actor"].append(name)
        cols["op"].append(op)
        cols["target_rank"].append(target)
        cols["var"].append(var)
        cols["slot"].append(spec.slot if spec else -1)
        cols["value"].append(value)
        cols["ordering"].append("sc" if op == "fence" else ORDERS[order] if op in _ORDERED else "relaxed")
        cols["qp"].append(qp)
        cols["path"].append(path)
        cols["ref"].append(ref)
        cols["rf"].append(rf)
        cols["cmp"].append(CMPS[cmp] if cmp >= 0 else "")
        cols["expect"].append(expect)
        cols["capacity"].append(spec.capacity if spec else -1)
        cols["sq_depth"].append(sq)
        cols["cq_depth"].append(cq)
        cols["src_var"].append(s.var if s else "")
        cols["src_slot"].append(s.slot if s else -1)
        cols["src_region"].append(s.region_name if s else "")
        cols["region"].append(reg)
        cols["args"].append("")
    schema = schemas.load("memops")
    return pa.Table.from_pydict(cols, schema=schema.arrow_schema())


def _loc_text(var: str, slot: int, rank: int) -> str:
    return f"{var}{f'[{slot}]' if slot >= 0 else ''}@rank{rank}" if var else ""


def label(row: dict[str, Any]) -> str:
    """A one-line description of a memops row, e.g. ``store tail@rank1 = 3 (release)``."""
    op = row["op"]
    loc = _loc_text(row["var"], row["slot"], row["target_rank"])
    order = f" ({row['ordering']})" if op in ("load", "store", "rmw", "wait") and row["ordering"] != "relaxed" else ""
    if op in ("store", "deliver"):
        return f"{op} {loc} = {row['value']}{order}" + (f" (of event {row['ref']})" if op == "deliver" else "")
    if op == "rmw":
        return f"rmw {loc} -> {row['value']}{order}"
    if op in ("load", "slot_release"):
        return f"{op} {loc} -> {row['value']}{order}"
    if op in ("wait", "blocked"):
        return f"{op} {loc} {row['cmp']} {row['expect']}: saw {row['value']}{order}"
    if op == "put":
        src = f" from {row['src_var']}[{row['src_slot']}]" if row["src_var"] else f" = {row['value']}"
        return f"put {loc}{src} on qp{row['qp']}"
    if op == "atomic":
        return f"atomic {loc} += {row['value']} on qp{row['qp']}"
    if op in ("doorbell",):
        return f"doorbell qp{row['qp']}"
    if op == "cq_poll":
        return f"cq_poll qp{row['qp']} (completion of event {row['ref']})"
    if op in ("map", "unmap"):
        return f"{op} {row['var']}@rank{row['target_rank']}"
    return op


def to_events(memops: pa.Table | pl.DataFrame, hazards: list[Hazard] | tuple[Hazard, ...] = ()) -> pl.DataFrame:
    """An ``events`` table of a memops table: one slice per row on its actor's resource (deliveries
    on the target memory ``rankN/hbm``), a flow from each put or atomic to its delivery and from a
    delivery to the cq_poll that reaped it. Rows in the witness set of a hazard carry it in args."""
    df = memops if isinstance(memops, pl.DataFrame) else pl.from_arrow(memops)
    rows = df.to_dicts()
    n = len(rows)
    witness: dict[int, list[str]] = {}
    for h in hazards:
        for e in h.events:
            witness.setdefault(e, []).append(h.name)
    polled = {r["ref"] for r in rows if r["op"] == "cq_poll"}
    delivery_of = {r["ref"]: r["seq"] for r in rows if r["op"] == "deliver"}
    out: dict[str, list[Any]] = {k: [] for k in (
        "ts_ns", "dur_ns", "rank", "resource", "stage", "name", "phase", "kind", "msg_id", "qp",
        "src_rank", "dst_rank", "flow_out", "flow_in", "args")}
    for r in rows:
        op = r["op"]
        logical = r["ts_ns"] < 0
        out["ts_ns"].append(r["seq"] * STEP_NS if logical else r["ts_ns"])
        out["dur_ns"].append(SLICE_NS if logical else 0)
        out["rank"].append(r["rank"])
        out["resource"].append(r["actor"])
        out["stage"].append(op)
        out["name"].append(label(r))
        out["phase"].append("")
        out["kind"].append(_KIND.get(op, "memory"))
        msg = r["seq"] if op in ("put", "atomic") else r["ref"] if op in ("deliver", "cq_poll") else -1
        out["msg_id"].append(msg)
        out["qp"].append(r["qp"])
        nic = op in ("put", "atomic", "deliver")
        out["src_rank"].append(r["rank"] if op in ("put", "atomic") else -1)  # deliveries: set below
        out["dst_rank"].append(r["target_rank"] if nic else -1)
        # flow ids: the post's seq for post -> delivery; n + delivery seq for delivery -> cq_poll
        flow_out = flow_in = None
        if op in ("put", "atomic") and r["seq"] in delivery_of:
            flow_out = r["seq"]
        elif op == "deliver":
            flow_in = r["ref"]
            if r["ref"] in polled:
                flow_out = n + r["seq"]
        elif op == "cq_poll" and r["ref"] in delivery_of:
            flow_in = n + delivery_of[r["ref"]]
        out["flow_out"].append(flow_out)
        out["flow_in"].append(flow_in)
        args: dict[str, Any] = {"seq": r["seq"], "op": op}
        for k in ("var", "value", "rf"):
            if r[k] not in ("", -1) or k == "value":
                args[k] = r[k]
        if op in _ORDERED or op == "fence":
            args["ordering"] = r["ordering"]
        if r["slot"] >= 0:
            args["slot"] = r["slot"]
        if r["seq"] in witness:
            args["hazard"] = ",".join(witness[r["seq"]])
        out["args"].append(json.dumps(args, sort_keys=True))
    frame = pl.DataFrame(out, schema={
        "ts_ns": pl.Int64, "dur_ns": pl.Int64, "rank": pl.Int32, "resource": pl.String, "stage": pl.String,
        "name": pl.String, "phase": pl.String, "kind": pl.String, "msg_id": pl.Int64, "qp": pl.Int32,
        "src_rank": pl.Int32, "dst_rank": pl.Int32, "flow_out": pl.Int64, "flow_in": pl.Int64, "args": pl.String,
    })
    # src_rank of a delivery is the issuing rank
    if n:
        issuer = {r["seq"]: r["rank"] for r in rows if r["op"] in ("put", "atomic")}
        frame = frame.with_columns(
            pl.when(pl.col("stage") == "deliver")
            .then(pl.col("msg_id").replace_strict(issuer, default=-1, return_dtype=pl.Int32))
            .otherwise(pl.col("src_rank")).alias("src_rank"))
    return pl.from_arrow(schemas.conform(frame, "events", where="fuzz counterexample"))  # type: ignore[return-value]
