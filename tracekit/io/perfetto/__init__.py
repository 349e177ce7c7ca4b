"""Perfetto timelines out (and back in): native TrackEvent protobuf, streamed and compact.

``write_trace`` turns an ``events`` table (and optionally ``counters``) into a ``.pftrace`` that
opens at https://ui.perfetto.dev. The file is written in batches (memory does not grow with the
number of events), atomically, and deterministically (same tables, same bytes).

Layout (see ``docs/perfetto.md``):

* one track per resource-path prefix under a root track named after the trace
  (node -> rank -> {sm/ch*, nvlink/tx|rx, nic*/qp*|tx|cq, pcie, hbm, cpu/proxy}, switch -> port);
  a resource whose operations overlap gets extra lanes (sibling tracks of the same name);
* one slice per event: name = ``stage``; debug annotations for bytes, tokens, msg_id, src/dst
  rank, qp, channel, stall, and the other columns where they differ from their defaults;
* a flow arrow from every ``flow_out`` to the matching ``flow_in``;
* one counter track per (resource, counter) of the ``counters`` table.

Compactness: each track lane is its own packet sequence whose ``TrackEventDefaults`` name the
track and whose incremental clock makes every timestamp a delta; event names, annotation names
and string values are interned; values implied by the resource path (rank, channel, qp) and
defaults are left out; and by default packets are deflated in ~1 MiB ``compressed_packets``
bundles, as Perfetto's own tracing service writes them.

The package's modules follow the writer's stages: :mod:`.tracks` (track tree and lanes),
:mod:`.packets` (sequence starts, descriptors, interned data: the bindings), :mod:`.encode` (the
per-event packets, compiled, byte-identical to the bindings), :mod:`.sink` (bundles, worker
threads, ordered output); :mod:`.check` reads a trace back, :mod:`.chrome_json` writes Chrome JSON.

Speed: batches are prepared here (strings, interning, lanes) and handed to worker threads, which
encode them in one compiled call without the GIL and deflate them with a zlib-stream library
(ISA-L, else the standard library's zlib); the sink writes the results in order.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from tracekit import schemas
from tracekit.errors import TracekitError
from tracekit.io.atomic import atomic_path
from tracekit.io.perfetto import encode as wire
from tracekit.io.perfetto.packets import Interner, lane_starts, running_delta, sequence_start
from tracekit.io.perfetto.sink import Sink
from tracekit.resources import ResourcePath
from tracekit.io.perfetto.tracks import (LaneAssigner, Node, Uuids, build_tree, descriptor,
                                         natural_key, walk)

#: Debug annotations in the order they are written: (name, events column, type, default), from
#: the events schema's ``annotations`` list (schemas/events.v1.json), shared with the JSON export
#: and the reader. type "int" -> int_value; "str" -> interned string_value_iid; "raw" -> inline
#: string_value. A default of None means "implied by the row": name -> the stage; rank, channel,
#: qp -> the number in the resource path's rank<r>, ch<c>, qp<q> segment (-1 without one).
ANNOTATIONS: list[tuple[str, str, str, Any]] = [
    (name, col, typ, None if default == "implied" else default)
    for name, col, typ, default in schemas.load("events").annotations]
ANNOTATION_NAMES = [a[0] for a in ANNOTATIONS]

#: Rows per batch: the unit of streaming (and of interning, so it is part of the byte format).
BATCH_ROWS = 1 << 16
#: Distinct interned strings per file for the ``name`` column; further new names go inline.
MAX_INTERNED_STRINGS = 1 << 16
#: Flow ids of group g (grouped traces) are offset by g << FLOW_GROUP_SHIFT to stay unique.
FLOW_GROUP_SHIFT = 56

#: Rows of a group's table of the values resource paths imply.
_IMPLIED_ROW = {"rank": 0, "channel": 1, "qp": 2}
_UNITS = {"B": pb.CounterDescriptor.UNIT_SIZE_BYTES, "ns": pb.CounterDescriptor.UNIT_TIME_NS}
_EVENTS = schemas.load("events")
_NUMERIC = {"int32": np.int32, "int64": np.int64}
_EVENTS_DEFAULTS = {f.name: f.default for f in _EVENTS.fields}


def implied(path: str) -> dict[str, int]:
    """The annotation values a resource path implies (left out of the trace when equal): the
    number of its first ``rank<r>``, ``ch<c>`` and ``qp<q>`` segment, -1 without one."""
    return ResourcePath.parse(path).implied()


def _to_arrow(table: pl.DataFrame | pa.Table | None, what: str) -> pa.Table | None:
    if table is None:
        return None
    if isinstance(table, pl.DataFrame):
        return table.to_arrow()
    if isinstance(table, pa.Table):
        return table
    raise TracekitError(f"{what} must be a polars DataFrame or a pyarrow Table, not {type(table).__name__}")


def _sorted_by_ts(t: pa.Table) -> pa.Table:
    ts = t.column("ts_ns")
    if len(ts) > 1:
        a = ts.to_numpy()
        if (a[1:] < a[:-1]).any():
            return t.take(pc.sort_indices(t, [("ts_ns", "ascending")]))  # stable
    return t


def _batch(t: pa.Table, start: int, where: str) -> dict[str, Any]:
    """The columns of one batch (rows ``start``...) of a table already checked against events.v1
    (on its empty slice): numeric columns as numpy, strings as Arrow, None for an absent column
    (every row has the default), nullable ones as values (int64) and ``<name>_ok`` (bool)."""
    n = t.num_rows
    out: dict[str, Any] = {"num_rows": n}
    names = set(t.column_names)
    for f in _EVENTS.fields:
        if f.name in names:
            c = t.column(f.name)
            if c.null_count and f.default is None and not f.nullable:
                row = start + int(np.flatnonzero(_bools(pc.is_null(c)))[0])
                raise TracekitError(f"column {f.name} row {row}: null", where=where, fix=f"{f.name} must be set on every row")
            if f.type in _NUMERIC and not f.nullable:
                a = c.to_numpy() if c.null_count == 0 else c.fill_null(f.default).to_numpy()
                out[f.name] = a.astype(_NUMERIC[f.type], copy=False)
            elif f.type == "string":
                out[f.name] = c.fill_null(f.default) if (c.null_count and f.default is not None) else c
            else:  # a nullable id: values and validity
                out[f.name], out[f.name + "_ok"] = _int_column(t, f.name) or (np.zeros(n, np.int64),
                                                                             np.zeros(n, np.bool_))
        elif f.nullable:
            out[f.name], out[f.name + "_ok"] = np.zeros(n, np.int64), np.zeros(n, np.bool_)
        else:
            out[f.name] = None  # an absent column: every row has the default
    return out


def _bools(a: Any) -> np.ndarray:
    return np.asarray(a.to_numpy(zero_copy_only=False), np.bool_)


class _Group:
    """One timeline (events + counters) below a parent track, written batch by batch."""

    def __init__(self, sink: Sink | None, ids: Uuids, interner: Interner, parent: Node, events: pa.Table,
                 counters: pa.Table | None, *, shift: int, flow_offset: int, where: str,
                 unpaired: np.ndarray | None = None) -> None:
        self.sink, self.ids, self.interner, self.parent = sink, ids, interner, parent
        self.where = where
        self.shift = shift
        self.flow_offset = np.uint64(flow_offset)
        self.unpaired = np.zeros(0, np.int64) if unpaired is None else unpaired
        self.events = events
        self.counters = counters
        paths: set[str] = set()
        for t in (events, counters):
            if t is not None and t.num_rows:
                paths.update(pc.unique(t.column("resource")).to_pylist())
        for p in sorted(paths, key=lambda p: (p is not None, p or "")):
            try:
                ResourcePath.parse(p)
            except TracekitError as exc:
                raise exc.located(f"{where}: column resource") from None
        self.paths = sorted(paths)
        self.nodes = build_tree(parent, self.paths, ids)
        self.value_set = pa.array(self.paths, pa.string())
        implied_values = [implied(p) for p in self.paths]
        self.implied_table = np.array([[v[k] for v in implied_values] for k in _IMPLIED_ROW], np.int64).reshape(
            len(_IMPLIED_ROW), len(self.paths))
        self.res_nodes = [self.nodes[p] for p in self.paths]
        self.res_uuid = np.array([n.uuid for n in self.res_nodes], np.int64)
        self.counter_parents: set[int] = set()

    def _resource_ids(self, col: Any) -> np.ndarray:
        return np.asarray(pc.index_in(col, value_set=self.value_set).to_numpy(zero_copy_only=False), np.int64)

    # -- tracks -----------------------------------------------------------------------------
    def counter_tracks(self) -> tuple[list[tuple[Node, str]], dict[tuple[int, str], int], list[str]]:
        """One counter track per (resource, counter), a child of the resource's track placed
        after its other children; the unit is the first one given for that pair."""
        t = self.counters
        if t is None or t.num_rows == 0:
            return [], {}, []
        # the first (resource, counter) pairs, batch by batch: resources and counters as numbers,
        # a table of the pairs seen so far (resources x counter capacity)
        counter_ids: dict[str, int] = {}
        seen = np.zeros((len(self.paths), 8), np.bool_)
        first: list[tuple[int, str, str]] = []  # (resource, counter, unit) in order of appearance
        for start in range(0, t.num_rows, BATCH_ROWS):
            b = t.slice(start, BATCH_ROWS)
            res = self._resource_ids(b.column("resource"))
            codes, names = Interner.encode(b.column("counter"))
            for name in names:
                counter_ids.setdefault(name, len(counter_ids))
            if len(counter_ids) > seen.shape[1]:
                grown = np.zeros((len(self.paths), 2 * len(counter_ids)), np.bool_)
                grown[:, :seen.shape[1]] = seen
                seen = grown
            cid = np.array([counter_ids[name] for name in names], np.int64)[codes]
            rows = _first_pairs(res, cid, seen)
            if rows.size:
                units = b.column("unit").take(pa.array(rows)).to_pylist()
                first += [(int(res[i]), b.column("counter")[int(i)].as_py(), u) for i, u in zip(rows, units)]
        keys = [(self.paths[r], c, u) for r, c, u in first]
        rows = sorted(keys, key=lambda r: ([natural_key(s) for s in r[0].split("/")], natural_key(r[1])))
        res_index = {p: k for k, p in enumerate(self.paths)}
        tracks, index = [], {}
        seen: dict[str, int] = {}
        for res, counter, unit in rows:
            parent = self.nodes[res]
            j = seen.get(res, 0)
            seen[res] = j + 1
            node = Node(counter, self.ids.uuid(), parent.uuid, res, rank=len(parent.children) + j)
            index[(res_index[res], counter)] = len(tracks)
            tracks.append((node, unit or ""))
        self.counter_parents = {self.nodes[r].uuid for r in seen}
        return tracks, index, sorted({r[1] for r in rows})

    def write_descriptors(self, counter_tracks: list[tuple[Node, str]]) -> None:
        for node in walk(self.parent):
            self.sink.packet(descriptor(node, has_children=bool(node.children) or node.uuid in self.counter_parents))
        for node, unit in counter_tracks:
            c = pb.CounterDescriptor()
            if unit in _UNITS:
                c.unit = _UNITS[unit]
            elif unit:
                c.unit_name = unit
            d = descriptor(node, counter=c, description="")
            # never merged with a sibling slice track that happens to share its name
            d.track_descriptor.sibling_merge_behavior = pb.TrackDescriptor.SIBLING_MERGE_BEHAVIOR_NONE
            self.sink.packet(d)

    def _new_lanes(self, lanes: LaneAssigner, lane_seq: np.ndarray) -> np.ndarray:
        """Sequences (and tracks, for lanes past the first) of the lanes created by the last batch."""
        old, new = lane_seq.shape[0], lanes.num_lanes
        seqs = np.concatenate([lane_seq, self.ids.seqs(new - old).astype(np.uint64)])
        starts = []
        for lane in range(old, new):
            node = self.res_nodes[int(lanes.lane_res[lane])]
            if lanes.lane_index[lane] > 0:  # an extra lane: a sibling track, same name
                extra = Node(node.name, self.ids.uuid(), node.parent, node.path, node.rank)
                starts.append((int(seqs[lane]), extra.uuid, extra))
            else:
                starts.append((int(seqs[lane]), node.uuid, None))
        self.sink.write(lane_starts(starts, self.interner.names))
        return seqs

    # -- events -----------------------------------------------------------------------------
    def write_events(self) -> None:
        t_all = self.events
        lanes = LaneAssigner(len(self.paths))
        lane_seq = np.zeros(0, np.uint64)
        for start in range(0, t_all.num_rows, BATCH_ROWS):
            t = _batch(t_all.slice(start, BATCH_ROWS), start, self.where)
            ts, dur = t.pop("ts_ns").astype(np.int64), t.pop("dur_ns").astype(np.int64)  # taken apart below
            role = _flow_role(t)
            order = None
            if ((ts[1:] == ts[:-1]) & (role[1:] < role[:-1])).any():
                order = np.lexsort((role, ts))
                ts, dur = ts[order], dur[order]
            ts = ts + self.shift
            self._check_times(ts, dur, start)
            res = self._resource_ids(t["resource"])
            if order is not None:
                res = res[order]
            # each BEGIN is a delta from the previous END on its lane (the lane's sequence clock)
            lane, begin_delta = lanes.assign(res, ts, ts + dur)
            if lanes.num_lanes > lane_seq.shape[0]:
                lane_seq = self._new_lanes(lanes, lane_seq)
            flows = {k: t[k] if order is None else t[k][order] for k in ("flow_out", "flow_out_ok", "flow_in",
                                                                         "flow_in_ok")}
            by_lane = _lane_order(lane, ts, flows)
            if by_lane is not None:
                lane, begin_delta, dur, res = lane[by_lane], begin_delta[by_lane], dur[by_lane], res[by_lane]
                order = by_lane if order is None else order[by_lane]
            if order is not None:
                t = _take(t, order)  # once, in the order written
            self._write_slices(t, lane_seq[lane], begin_delta.astype(np.uint64), dur.astype(np.uint64), res)

    def _check_times(self, ts: np.ndarray, dur: np.ndarray, start: int) -> None:
        bad = np.flatnonzero(dur < 0)
        if bad.size:
            raise TracekitError(f"row {start + int(bad[0])}: dur_ns={int(dur[bad[0]])} is negative",
                                where=f"{self.where}: column dur_ns", fix="durations are >= 0 (0 for an instant)")
        bad = np.flatnonzero(ts < 0)
        if bad.size:
            raise TracekitError(f"row {start + int(bad[0])}: ts_ns={int(ts[bad[0]]) - self.shift} is before the "
                                "trace start", where=f"{self.where}: column ts_ns",
                                fix="times are nanoseconds from the start of the trace, >= 0")

    def _write_slices(self, t: dict[str, Any], seq: np.ndarray, begin_delta: np.ndarray, dur: np.ndarray,
                      res: np.ndarray) -> None:
        n = t["num_rows"]
        it = self.interner
        order = t.get("order")  # rows to take, in this order, of the string columns (still unordered)

        def perm(x: Any) -> Any:
            if order is None:
                return x
            return [x[i] for i in order.tolist()] if isinstance(x, list) else x[order]

        stage_idx, stage_values = it.encode(t["stage"])
        stage_idx = perm(stage_idx)
        name_iid = it.event_name_ids(stage_values)[stage_idx]
        vals = np.empty((len(ANNOTATIONS), n), np.int64)  # rows 0..k-1: the annotations written
        present = np.empty((len(ANNOTATIONS), n), np.bool_)
        iids: list[int] = []
        interned: list[bool] = []
        rule: list[int] = []  # how the encoder finds where an int annotation is present
        ref: list[int] = []
        strings: list[tuple[np.ndarray, np.ndarray]] = []
        inline: dict[str, tuple[list, np.ndarray]] = {}  # annotation -> (values, rows written inline)
        for k, (aname, col, typ, default) in enumerate(ANNOTATIONS):
            j = len(iids)
            if typ == "int":
                if t[col] is None:  # an absent column
                    if default is not None:
                        continue  # every row has the default: never written
                    vals[j] = _EVENTS_DEFAULTS[col]
                else:
                    vals[j] = t[col]
                rule.append(_IMPLIED_ROW[aname] + 1 if default is None else 0)
                ref.append(0 if default is None else default)
                iids.append(k + 1)
                interned.append(False)
            elif t[col] is None:
                continue  # absent column: every row has the default
            elif typ == "str":
                # cheap test first: a column equal to its default everywhere needs no encoding
                same = pc.equal(t[col], t["stage"] if default is None else default)
                if same.null_count == 0 and pc.all(same).as_py():
                    continue
                idx, values = it.encode(t[col])
                idx = perm(idx)
                if default is None:  # name: written where it differs from the stage
                    sids = it.string_ids(values, capped=True)[idx]
                    used = sids != it.string_ids(stage_values)[stage_idx]  # compared by id
                else:
                    sids = it.string_ids(values)[idx]
                    used = sids != it.strings.get(default, 0)
                if not used.any():
                    continue
                spill = used & (sids == 0)  # the string table is full: inline
                if spill.any():
                    inline[aname] = (perm(t[col].to_pylist()), spill)
                vals[j] = sids
                np.logical_and(used, ~spill, out=present[j])
                rule.append(-1)
                ref.append(0)
                iids.append(k + 1)
                interned.append(True)
                strings.append((sids, present[j]))
            else:  # free text (captured kernels' args): those rows take the slow path
                used = perm(_bools(pc.not_equal(t[col], default)))
                if used.any():
                    inline[aname] = (perm(t[col].to_pylist()), used)
        flows = {}
        for col in ("flow_out", "flow_in"):
            raw, valid = t[col], t[col + "_ok"]
            if self.unpaired.size:
                at = np.minimum(np.searchsorted(self.unpaired, raw), self.unpaired.size - 1)
                valid = valid & (self.unpaired[at] != raw)
            flows[col] = (raw.view(np.uint64) + self.flow_offset, valid)
        k = len(iids)
        batch = wire.SliceBatch(
            seq=seq, begin_delta=begin_delta, dur=dur, instant=np.zeros(n, np.bool_), name_iid=name_iid,
            flow_out=flows["flow_out"][0], flow_out_present=flows["flow_out"][1],
            flow_in=flows["flow_in"][0], flow_in_present=flows["flow_in"][1],
            ann_vals=vals[:k], ann_present=present[:k], ann_iid=np.array(iids, np.uint64),
            ann_interned=np.array(interned, np.bool_), ann_rule=np.array(rule, np.int64),
            ann_ref=np.array(ref, np.int64), implied=self.implied_table, res=res,
        )
        self.sink.write(it.packets(seq, name_iid, strings))
        if not inline:
            self.sink.write_encoded(wire.slice_writer(batch), 100 * n)
            return
        data, ends = wire.encode_slices(batch)
        slow = np.zeros(n, np.bool_)
        for _vals, rows in inline.values():
            slow |= rows
        pos = 0
        for i in np.flatnonzero(slow).tolist():
            self.sink.write(data[pos:int(ends[i - 1]) if i else 0])
            pos = int(ends[i])
            self.sink.write(self._slow_row(batch, i, {a: v[i] for a, (v, rows) in inline.items() if rows[i]}))
        self.sink.write(data[pos:])

    @staticmethod
    def _slow_row(b: wire.SliceBatch, i: int, inline: dict[str, str]) -> bytes:
        """A row carrying inline (not interned) strings, built through the bindings, its
        annotations in the order of :data:`ANNOTATIONS`."""
        packets = wire.slice_packets_reference(b, i)
        te = packets[0].track_event
        present = {int(b.ann_iid[a]): a for a in range(b.ann_iid.shape[0]) if b.ann_present[a, i]}
        del te.debug_annotations[:]
        for k, aname in enumerate(ANNOTATION_NAMES):
            if k + 1 in present:
                a = present[k + 1]
                d = te.debug_annotations.add()
                d.name_iid = k + 1
                if b.ann_interned[a]:
                    d.string_value_iid = int(b.ann_vals[a, i])
                else:
                    d.int_value = int(b.ann_vals[a, i])
            elif aname in inline:
                d = te.debug_annotations.add()
                d.name_iid = k + 1
                d.string_value = inline[aname]
        return b"".join(wire.frame(p) for p in packets)

    # -- counters ---------------------------------------------------------------------------
    def write_counters(self, tracks: list[tuple[Node, str]], index: dict[tuple[int, str], int],
                       names: list[str]) -> None:
        if not tracks:
            return
        seqs = np.zeros(len(tracks), np.uint64)
        for k, (node, _unit) in enumerate(tracks):
            seqs[k] = self.ids.seq()
            self.sink.packet(sequence_start(int(seqs[k]), node.uuid))
        lut = np.full((len(self.paths), len(names)), -1, np.int64)
        for (r, cname), k in index.items():
            lut[r, names.index(cname)] = k
        name_set = pa.array(names, pa.string())
        last = np.zeros(len(tracks), np.int64)
        t_all = self.counters
        for start in range(0, t_all.num_rows, BATCH_ROWS):
            t = t_all.slice(start, BATCH_ROWS)
            ts = t.column("ts_ns").to_numpy().astype(np.int64) + self.shift
            bad = np.flatnonzero(ts < 0)
            if bad.size:
                raise TracekitError(f"row {start + int(bad[0])}: ts_ns is before the trace start",
                                    where=f"{self.where} (counters): column ts_ns", fix="times are >= 0")
            res = self._resource_ids(t.column("resource"))
            cid = np.asarray(pc.index_in(t.column("counter"), value_set=name_set).to_numpy(zero_copy_only=False),
                             np.int64)
            track = lut[res, cid]
            delta = running_delta(track, ts, last)
            by_track = np.argsort(track, kind="stable")  # one run per sequence: see _lane_order
            batch = wire.CounterBatch(seq=seqs[track[by_track]], delta=delta[by_track].astype(np.uint64),
                                      value=t.column("value").to_numpy().astype(np.float64)[by_track])
            self.sink.write(wire.encode_counters(batch))


def _flow_ids(t: pa.Table, col: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids, row numbers) of the non-null values of a flow column."""
    if col not in t.column_names:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    c = t.column(col)
    if c.null_count == len(c):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    valid = np.flatnonzero(np.asarray(pc.is_valid(c).to_numpy(zero_copy_only=False), np.bool_))
    ids = c.drop_null().to_numpy().astype(np.int64, copy=False)
    return ids, valid.astype(np.int32 if len(c) < 2**31 else np.int64)


def _int_column(t: pa.Table, col: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(values as int64, valid) of a nullable integer column, read from its buffers (the
    values of null rows are whatever the buffer holds); None when absent or all null."""
    if col not in t.column_names:
        return None
    c = t.column(col)
    if c.null_count == len(c):
        return None
    a = c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c
    if a.type != pa.int64():
        a = a.cast(pa.int64())
    n, off = len(a), a.offset
    bitmap, data = a.buffers()
    values = np.frombuffer(data, np.int64)[off:off + n]
    if bitmap is None:
        return values, np.ones(n, np.bool_)
    valid = np.unpackbits(np.frombuffer(bitmap, np.uint8), bitorder="little")[off:off + n].view(np.bool_)
    return values, valid


def _first_pairs(res: np.ndarray, cid: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Rows (ascending) where a (resource, counter) pair appears first, recorded in ``seen``."""
    _keys, idx = np.unique(res * seen.shape[1] + cid, return_index=True)
    r, c = res[idx], cid[idx]
    new = ~seen[r, c]
    seen[r[new], c[new]] = True
    return np.sort(idx[new])


def _flow_plan(t: pa.Table, where: str) -> np.ndarray:
    """Check the flow columns of a time-sorted table; return the ids that have no partner (a
    flow_out never terminated, or a flow_in never started), which are left out of the trace.

    A flow started or terminated twice, or terminated by an operation that starts before the
    one that started it, is bad input. (The temporary arrays are one int per flow; only the
    unpaired ids are kept while writing.)"""
    o_ids, o_rows = _flow_ids(t, "flow_out")
    i_ids, i_rows = _flow_ids(t, "flow_in")
    if o_ids.size + i_ids.size == 0:
        return np.zeros(0, np.int64)
    both = np.concatenate([o_ids, i_ids])
    lo, hi = int(both.min()), int(both.max())
    if hi - lo < 4 * both.size + 1024:  # dense ids (the usual 0..F): direct-address tables
        span = hi - lo + 1
        at_o = np.full(span, -1, o_rows.dtype)
        at_i = np.full(span, -1, o_rows.dtype)
        for ids, rows, at, col, verb in ((o_ids, o_rows, at_o, "flow_out", "started"),
                                         (i_ids, i_rows, at_i, "flow_in", "terminated")):
            at[ids - lo] = rows
            if np.count_nonzero(at >= 0) != ids.size:  # some id written twice
                order = np.argsort(ids, kind="stable")
                k = np.flatnonzero(ids[order][1:] == ids[order][:-1])[0]
                fid, a, b = int(ids[order][k]), rows[order][k], rows[order][k + 1]
                raise TracekitError(f"flow id {fid} is {verb} twice (rows {a} and {b})", where=f"{where}: column {col}",
                                    fix="give every flow its own id")
        dst_of_o = at_i[o_ids - lo]
        o_paired = dst_of_o >= 0
        i_paired = at_o[i_ids - lo] >= 0
        src, dst = o_rows[o_paired], dst_of_o[o_paired]
    else:  # sparse ids: sort and binary search
        sorted_ids = []
        for ids, rows, col, verb in ((o_ids, o_rows, "flow_out", "started"), (i_ids, i_rows, "flow_in", "terminated")):
            order = np.argsort(ids)
            ids_s, rows_s = ids[order], rows[order]
            dup = np.flatnonzero(ids_s[1:] == ids_s[:-1])
            if dup.size:
                raise TracekitError(f"flow id {int(ids_s[dup[0]])} is {verb} twice (rows {rows_s[dup[0]]} and "
                                    f"{rows_s[dup[0] + 1]})", where=f"{where}: column {col}",
                                    fix="give every flow its own id")
            sorted_ids.append((ids_s, rows_s))
        (o_ids, o_rows), (i_ids, i_rows) = sorted_ids
        pos = np.minimum(np.searchsorted(i_ids, o_ids), max(i_ids.size - 1, 0))
        o_paired = (i_ids[pos] == o_ids) if i_ids.size else np.zeros(o_ids.size, np.bool_)
        back = np.minimum(np.searchsorted(o_ids, i_ids), max(o_ids.size - 1, 0))
        i_paired = (o_ids[back] == i_ids) if o_ids.size else np.zeros(i_ids.size, np.bool_)
        src, dst = o_rows[o_paired], i_rows[pos[o_paired]]
    unpaired = np.sort(np.concatenate([o_ids[~o_paired], i_ids[~i_paired]]))
    if src.size:
        ts = t.column("ts_ns").to_numpy().astype(np.int64, copy=False)
        bad = np.flatnonzero(ts[dst] < ts[src])
        if bad.size:
            k = bad[0]
            fid = int(o_ids[o_paired][k])
            raise TracekitError(f"flow id {fid} ends at row {dst[k]} (ts {ts[dst[k]]} ns) before it starts at row "
                                f"{src[k]} (ts {ts[src[k]]} ns)", where=f"{where}: column flow_in",
                                fix="a flow goes from an operation to one that starts no earlier")
    return unpaired


def _flow_role(t: dict[str, Any]) -> np.ndarray:
    """0 for rows that only start a flow, 1 for rows that do both or neither, 2 for rows that
    only end one: rows with equal timestamps are written in this order, so that a flow's source
    comes before its sink in the file (Perfetto breaks timestamp ties by file order)."""
    out, into = t["flow_out_ok"], t["flow_in_ok"]
    return 1 - (out & ~into).astype(np.int64) + (into & ~out).astype(np.int64)


def _take(t: dict[str, Any], order: np.ndarray) -> dict[str, Any]:
    """The batch with its numeric columns in ``order``; string (Arrow) columns stay as they are,
    with ``order`` recorded (composed with an earlier one) for whoever turns them into numbers
    (cheaper than moving strings)."""
    out = {k: (v[order] if isinstance(v, np.ndarray) else v) for k, v in t.items()}
    out["order"] = order if t.get("order") is None else t["order"][order]
    return out


def _lane_order(lane: np.ndarray, ts: np.ndarray, t: dict[str, Any]) -> np.ndarray | None:
    """The rows of a batch grouped by lane, each lane's rows in time order; None to keep them
    in time order.

    Every lane is a packet sequence with its own clock. The trace processor converts each
    timestamp through a cache of 8 clocks, so packets in time order, which hop between
    thousands of sequences, miss it on about every packet (stat ``clock_sync_cache_miss``);
    grouped, once per lane and batch. It sorts by timestamp and breaks ties by file order, so a
    flow whose sink starts when its source does needs the source's lane first: lanes are put
    in an order that respects those pairs (None when they form a cycle)."""
    key = lane.astype(np.uint16) if lane.size and lane.max() < (1 << 16) else lane
    order = np.argsort(key, kind="stable")  # a radix sort for 16-bit keys
    # only rows that share their start time with a neighbour can be such a pair (rows are in time order)
    tied = np.zeros(ts.shape[0], np.bool_)
    same = ts[1:] == ts[:-1]
    tied[1:] |= same
    tied[:-1] |= same
    fo, fo_ok, fi, fi_ok = t["flow_out"], t["flow_out_ok"], t["flow_in"], t["flow_in_ok"]
    src, snk = np.flatnonzero(fo_ok & tied), np.flatnonzero(fi_ok & tied)
    if not (src.size and snk.size):
        return order
    _ids, a, b = np.intersect1d(fo[src], fi[snk], assume_unique=True, return_indices=True)
    a, b = src[a], snk[b]
    tie = (ts[a] == ts[b]) & (lane[a] != lane[b])
    if not tie.any():
        return order
    rank = _lane_rank(lane[a[tie]], lane[b[tie]], int(lane.max()) + 1)
    return None if rank is None else np.argsort(rank[lane], kind="stable")


def _lane_rank(first: np.ndarray, then: np.ndarray, num_lanes: int) -> np.ndarray | None:
    """A position for every lane, increasing with the lane id except that each ``first[k]``
    comes before ``then[k]`` (Kahn's algorithm, smallest lane first); None for a cycle."""
    edges: dict[int, set[int]] = {}
    indegree = np.zeros(num_lanes, np.int64)
    for u, v in set(zip(first.tolist(), then.tolist())):
        edges.setdefault(u, set()).add(v)
        indegree[v] += 1
    ready = np.flatnonzero(indegree == 0).tolist()  # ascending: already a heap
    rank = np.empty(num_lanes, np.int64)
    k = 0
    while ready:
        u = heapq.heappop(ready)
        rank[u] = k
        k += 1
        for v in edges.get(u, ()):
            indegree[v] -= 1
            if indegree[v] == 0:
                heapq.heappush(ready, v)
    return rank if k == num_lanes else None


def _without_defaults(df: pl.DataFrame) -> pl.DataFrame:
    """``df`` without the optional string columns whose every value is the default (``kind``
    "comm", empty ``phase``, ``stall_cause``, ``args``): the writer leaves those values out, so the
    columns need neither converting to Arrow nor looking at batch by batch."""
    drop = [col for col, default in (("kind", "comm"), ("phase", ""), ("stall_cause", ""), ("args", ""))
            if col in df.columns and df.schema[col] == pl.String and not df[col].null_count()
            and (df.height == 0 or bool((df[col] == default).all()))]
    return df.drop(drop) if drop else df


def _prepare(events: Any, counters: Any, where: str,
             drop_defaults: bool = False) -> tuple[pa.Table, pa.Table | None, np.ndarray]:
    if drop_defaults and isinstance(events, pl.DataFrame):
        events = _without_defaults(events)
    ev = _to_arrow(events, "events")
    schemas.conform(ev.slice(0, 0), "events", where=where)  # column errors before any work
    if ev.num_rows and "ts_ns" in ev.column_names and ev.column("ts_ns").null_count:
        row = int(np.flatnonzero(_bools(pc.is_null(ev.column("ts_ns"))))[0])
        raise TracekitError(f"column ts_ns row {row}: null", where=where, fix="every event needs a start time")
    ev = _sorted_by_ts(ev)
    unpaired = _flow_plan(ev, where)
    ct = _to_arrow(counters, "counters")
    if ct is not None:
        ct = _sorted_by_ts(schemas.conform(ct, "counters", where=f"{where} (counters)"))
        if ct.column("value").null_count:
            raise TracekitError("column value has nulls", where=f"{where} (counters)", fix="every sample needs a value")
    return ev, ct, unpaired


def _write(path: str | os.PathLike[str],
           groups: list[tuple[str | None, pa.Table, pa.Table | None, int, np.ndarray]], title: str,
           compress: bool) -> Path:
    ids = Uuids()
    interner = Interner(ANNOTATION_NAMES, MAX_INTERNED_STRINGS)
    root = Node(title or "tracekit", ids.uuid(), 0, "")
    parents = [root if name is None else Node(name, ids.uuid(), root.uuid, "", rank=g)
               for g, (name, *_r) in enumerate(groups)]
    writers = [
        _Group(None, ids, interner, parent, ev, ct, shift=shift, unpaired=unpaired,
               flow_offset=(g << FLOW_GROUP_SHIFT) if name is not None else 0,
               where=str(path) if name is None else f"{path}: group {name}")
        for g, ((name, ev, ct, shift, unpaired), parent) in enumerate(zip(groups, parents))
    ]
    plans = [w.counter_tracks() for w in writers]
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        sink = Sink(f, compress)
        try:
            for w in writers:
                w.sink = sink
            sink.packet(descriptor(root, description="tracekit timeline", has_children=True))
            for (name, *_r), parent in zip(groups, parents):
                if name is not None:
                    sink.packet(descriptor(parent, description=f"timeline {name}", has_children=True))
            for w, plan in zip(writers, plans):
                w.write_descriptors(plan[0])
            for w, plan in zip(writers, plans):
                w.write_events()
                w.write_counters(*plan)
        finally:
            sink.close()
    return Path(path)


def write_trace(path: str | os.PathLike[str], events: pl.DataFrame | pa.Table,
                counters: pl.DataFrame | pa.Table | None = None, *, title: str = "",
                compress: bool = True) -> Path:
    """Write ``events`` (schema events.v1) and optional ``counters`` (counters.v1) to ``path`` as a
    Perfetto TrackEvent protobuf trace; return the path.

    Streams in batches of :data:`BATCH_ROWS` rows, writes atomically, and gives the same bytes for
    the same tables. ``title`` names the root track. A flow id without a partner (a ``flow_out``
    that no row's ``flow_in`` ends, or the reverse, as after filtering a table) is left out; a flow
    started or ended twice, or ending before it starts, is bad input. ``compress=False`` writes plain packets
    (about 3x larger, faster to write) instead of deflated bundles. Events that are not sorted
    by ``ts_ns`` are sorted first (a copy). Bad input raises :class:`TracekitError`."""
    ev, ct, unpaired = _prepare(events, counters, str(path), drop_defaults=True)
    return _write(path, [(None, ev, ct, 0, unpaired)], title, compress)


def write_trace_groups(path: str | os.PathLike[str],
                       groups: Mapping[str, tuple[pl.DataFrame | pa.Table, pl.DataFrame | pa.Table | None]],
                       *, title: str = "", compress: bool = True) -> Path:
    """Write several timelines side by side, e.g. ``{"before": (ev, ctr), "after": (ev2, ctr2)}``.

    Each becomes a sibling group under the root track, in the mapping's order, shifted so that it
    starts at time 0 (the earliest event or counter sample of every group lines up). Flow ids of
    group ``g`` are offset by ``g << 56`` so they stay unique across groups; read back, resource
    paths start with the group name."""
    if not groups:
        raise TracekitError("no timelines to write", fix="pass at least one group")
    prepared = []
    for name, pair in groups.items():
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise TracekitError(f"group {name!r} must be an (events, counters) pair", fix="use None for no counters")
        if not str(name) or "/" in str(name):
            raise TracekitError(f"group name {name!r} must be non-empty and without '/'", fix="rename the group")
        ev, ct, unpaired = _prepare(pair[0], pair[1], f"{path}: group {name}", drop_defaults=True)
        starts = [int(pc.min(t.column("ts_ns")).as_py()) for t in (ev, ct) if t is not None and t.num_rows]
        prepared.append((str(name), ev, ct, -min(starts) if starts else 0, unpaired))
    return _write(path, prepared, title, compress)


def read_trace(path: str | os.PathLike[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Parse a ``.pftrace`` written by :func:`write_trace` back into (events, counters) tables
    (schemas events.v1 and counters.v1). The file is checked as it is read
    (:func:`tracekit.io.perfetto.check.check_trace`); a violation raises :class:`TracekitError`.

    Resource paths are the track names below the root joined by '/' (in a grouped trace they
    start with the group name); a counter's rank is the one its path implies. Rows come out
    sorted by (ts_ns, resource)."""
    from tracekit.io.perfetto.check import walk_trace

    result = walk_trace(path, collect=True)
    return result.events(), result.counters()


def write_json(path: str | os.PathLike[str], events: pl.DataFrame | pa.Table,
               counters: pl.DataFrame | pa.Table | None = None, *, title: str = "") -> Path:
    """Chrome trace-event JSON of the same timeline, for chrome://tracing (best effort: microsecond
    floats, flows as s/f pairs). Prefer :func:`write_trace` for Perfetto."""
    from tracekit.io.perfetto.chrome_json import write_chrome_json

    ev, ct, _unpaired = _prepare(events, counters, str(path))
    return write_chrome_json(path, ev, ct, title=title)
