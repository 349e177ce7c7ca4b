"""Check a ``.pftrace`` against the rules Perfetto's importer applies, and read it back.

Perfetto's trace processor cannot run here (it downloads a binary on first use), so this module
parses the file with the protobuf bindings and applies the importer's rules itself:

* every packet parses; ``compressed_packets`` bundles inflate;
* track events, interned data and packet defaults carry a ``trusted_packet_sequence_id``;
  interned data is only accepted after the sequence's incremental state was cleared
  (``SEQ_INCREMENTAL_STATE_CLEARED``), and every interned id is defined before it is used;
* timestamps: a sequence-scoped clock is defined by a clock snapshot before use, and the
  timestamps of one sequence never go backwards;
* tracks: every uuid is declared by a TrackDescriptor before an event uses it, one uuid is not
  declared twice with different contents, and every parent uuid exists;
* slices: on each track, taken in time order, BEGIN and END balance and nest (an END closes a
  slice begun by the same sequence; none is left open); counter values only on counter tracks
  and slices never on them;
* flows: each flow id is started once and terminated once, and not terminated before it starts.

:func:`check_trace` raises :class:`TracekitError` naming the first violation (packet index,
track, timestamp). :func:`walk_trace` also collects the slices and counter samples
(used by :func:`tracekit.io.perfetto.read_trace`).
"""

from __future__ import annotations

import mmap
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
from google.protobuf.message import DecodeError

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from tracekit import schemas
from tracekit.errors import TracekitError
from tracekit.resources import ResourcePath

BEGIN, END, INSTANT, COUNTER = 1, 2, 3, 4
_SEQ_CLEARED = pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
_SEQ_NEEDS = pb.TracePacket.SEQ_NEEDS_INCREMENTAL_STATE
_UNIT_NAMES = {pb.CounterDescriptor.UNIT_SIZE_BYTES: "B", pb.CounterDescriptor.UNIT_TIME_NS: "ns"}


class Violation(TracekitError):
    """A rule of the Perfetto importer broken by a trace."""


def _read_varint(buf: Any, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def iter_frames(buf: Any, where: str) -> Iterator[tuple[int, bytes]]:
    """(offset, packet bytes) of each ``Trace.packet`` in ``buf``."""
    pos, end = 0, len(buf)
    while pos < end:
        start = pos
        try:
            tag, pos = _read_varint(buf, pos, end)
            if tag != 0x0A:
                raise ValueError(f"field tag {tag:#x} where a TracePacket (field 1) is expected")
            size, pos = _read_varint(buf, pos, end)
            if pos + size > end:
                raise ValueError(f"packet of {size} bytes runs past the end of the data")
        except ValueError as exc:
            raise Violation(f"byte {start}: {exc}", where=where,
                            fix="the file is truncated or not a Perfetto protobuf trace") from None
        yield start, bytes(buf[pos:pos + size])
        pos += size


@dataclass
class _Seq:
    cleared: bool = False
    event_names: dict[int, str] = field(default_factory=dict)
    ann_names: dict[int, str] = field(default_factory=dict)
    strings: dict[int, str] = field(default_factory=dict)
    track_uuid: int = 0
    clock_id: int = 0
    clocks: dict[int, list] = field(default_factory=dict)  # id -> [incremental, value, ref, boot_ref, mult]
    last_ts: int = -(1 << 63)


@dataclass
class _Track:
    uuid: int
    name: str
    parent: int
    counter: bool
    unit: str
    packet: int
    raw: bytes


@dataclass
class CheckReport:
    """What a valid trace holds."""

    path: str
    packets: int = 0
    sequences: int = 0
    tracks: int = 0
    slices: int = 0
    instants: int = 0
    counter_samples: int = 0
    flows: int = 0
    file_bytes: int = 0

    def __str__(self) -> str:
        return (f"{self.path}: ok: {self.packets} packets, {self.sequences} sequences, {self.tracks} tracks, "
                f"{self.slices} slices, {self.instants} instants, {self.flows} flows, "
                f"{self.counter_samples} counter samples, {self.file_bytes} bytes")


class _Walker:
    def __init__(self, path: str, collect: bool) -> None:
        self.path = path
        self.collect = collect
        self.seqs: dict[int, _Seq] = {}
        self.tracks: dict[int, _Track] = {}
        self.track_events: dict[int, list] = {}   # track uuid -> [(ts, packet, type, seq, payload)]
        self.flow_start: dict[int, tuple[int, int, int]] = {}  # id -> (ts, packet, track)
        self.flow_end: dict[int, tuple[int, int, int]] = {}
        self.counter_rows: list[tuple[int, int, float]] = []  # (track, ts, value)
        self.report = CheckReport(path)
        self.index = 0

    # -- errors ------------------------------------------------------------------------------
    def track_path(self, uuid: int) -> str:
        names, seen = [], set()
        while uuid in self.tracks and uuid not in seen:
            seen.add(uuid)
            t = self.tracks[uuid]
            names.append(t.name)
            uuid = t.parent
        return "/".join(reversed(names)) or "?"

    def fail(self, what: str, packet: int | None = None, track: int | None = None, ts: int | None = None,
             fix: str = "write the trace with tracekit export, or fix the producer") -> None:
        loc = [f"packet {self.index if packet is None else packet}"]
        if track is not None:
            loc.append(f"track {self.track_path(track)} (uuid {track})")
        if ts is not None:
            loc.append(f"ts {ts} ns")
        raise Violation(what, where=f"{self.path}: {', '.join(loc)}", fix=fix)

    # -- packets -----------------------------------------------------------------------------
    def run(self, buf: Any) -> None:
        for _off, raw in iter_frames(buf, self.path):
            self.packet(raw, nested=False)

    def packet(self, raw: bytes, nested: bool) -> None:
        try:
            p = pb.TracePacket.FromString(raw)
        except DecodeError as exc:
            self.fail(f"TracePacket does not parse ({exc})", fix="the file is corrupt")
        if p.HasField("compressed_packets"):
            if nested:
                self.fail("compressed_packets inside compressed_packets")
            try:
                inner = zlib.decompress(p.compressed_packets)
            except zlib.error as exc:
                self.fail(f"compressed_packets do not inflate ({exc})", fix="the file is corrupt")
            for _off, sub in iter_frames(inner, f"{self.path}: packet {self.index} (compressed)"):
                self.packet(sub, nested=True)
            return
        self.report.packets += 1
        try:
            self._packet(p)
        finally:
            self.index += 1

    def _seq(self, p: pb.TracePacket, what: str) -> _Seq:
        sid = p.trusted_packet_sequence_id
        if not sid:
            self.fail(f"{what} without trusted_packet_sequence_id (the importer ignores it)")
        s = self.seqs.get(sid)
        if s is None:
            s = self.seqs[sid] = _Seq()
        return s

    def _packet(self, p: pb.TracePacket) -> None:
        sid = p.trusted_packet_sequence_id
        seq = self.seqs.get(sid) if sid else None
        if p.sequence_flags & _SEQ_CLEARED or p.incremental_state_cleared:
            if not sid:
                self.fail("incremental state cleared without trusted_packet_sequence_id")
            old = self.seqs.get(sid)
            seq = self.seqs[sid] = _Seq(cleared=True, clocks=old.clocks if old else {},
                                        last_ts=old.last_ts if old else -(1 << 63))
        if p.HasField("trace_packet_defaults"):
            seq = self._seq(p, "trace_packet_defaults")
            d = p.trace_packet_defaults
            seq.clock_id = d.timestamp_clock_id
            seq.track_uuid = d.track_event_defaults.track_uuid if d.HasField("track_event_defaults") else 0
        if p.HasField("interned_data"):
            seq = self._seq(p, "interned_data")
            if not seq.cleared:
                self.fail(f"interned data on sequence {sid} before its incremental state was cleared "
                          "(the importer drops it)", fix="set sequence_flags=SEQ_INCREMENTAL_STATE_CLEARED "
                          "on the sequence's first packet")
            idata = p.interned_data
            for e in idata.event_names:
                seq.event_names[e.iid] = e.name
            for e in idata.debug_annotation_names:
                seq.ann_names[e.iid] = e.name
            for e in idata.debug_annotation_string_values:
                seq.strings[e.iid] = e.str.decode("utf-8", "replace")
        kind = p.WhichOneof("data")
        if kind == "clock_snapshot":
            self._clock_snapshot(p)
            return
        if p.sequence_flags & _SEQ_NEEDS and (seq is None or not seq.cleared):
            self.fail(f"packet needs incremental state but sequence {sid} was never cleared (the importer skips it)")
        if kind == "track_descriptor":
            self._descriptor(p)
        elif kind == "track_event":
            self._event(p)

    def _clock_snapshot(self, p: pb.TracePacket) -> None:
        boot = next((c.timestamp for c in p.clock_snapshot.clocks if c.clock_id == pb.BUILTIN_CLOCK_BOOTTIME), None)
        for c in p.clock_snapshot.clocks:
            if 64 <= c.clock_id < 128:
                seq = self._seq(p, "a clock snapshot with a sequence-scoped clock")
                if boot is None:
                    self.fail(f"clock snapshot defines clock {c.clock_id} without a BOOTTIME reading")
                seq.clocks[c.clock_id] = [c.is_incremental, c.timestamp, c.timestamp, boot, c.unit_multiplier_ns or 1]

    def _timestamp(self, p: pb.TracePacket, seq: _Seq) -> int:
        if not p.HasField("timestamp"):
            self.fail("track event without a timestamp")
        clock = p.timestamp_clock_id or seq.clock_id
        if not clock or clock == pb.BUILTIN_CLOCK_BOOTTIME:
            ts = p.timestamp
        elif 64 <= clock < 128:
            c = seq.clocks.get(clock)
            if c is None:
                self.fail(f"timestamp on sequence-scoped clock {clock} that no clock snapshot of sequence "
                          f"{p.trusted_packet_sequence_id} defines")
            incremental, value, ref, boot, mult = c
            value = value + p.timestamp if incremental else p.timestamp
            c[1] = value
            ts = boot + (value - ref) * mult
        else:
            ts = p.timestamp  # other builtin clocks: no conversion attempted
        if ts < seq.last_ts:
            self.fail(f"timestamp goes backwards on sequence {p.trusted_packet_sequence_id} "
                      f"(previous {seq.last_ts} ns)", ts=ts)
        seq.last_ts = ts
        return ts

    def _descriptor(self, p: pb.TracePacket) -> None:
        d = p.track_descriptor
        if not d.uuid:
            self.fail("TrackDescriptor without uuid")
        raw = d.SerializeToString()
        old = self.tracks.get(d.uuid)
        if old is not None:
            if old.raw != raw:
                self.fail(f"track uuid {d.uuid} declared twice with different contents (first at packet {old.packet})",
                          track=d.uuid)
            return
        if d.parent_uuid == d.uuid:
            self.fail(f"track uuid {d.uuid} is its own parent")
        unit = ""
        if d.HasField("counter"):
            unit = d.counter.unit_name or _UNIT_NAMES.get(d.counter.unit, "")
        self.tracks[d.uuid] = _Track(d.uuid, d.name, d.parent_uuid, d.HasField("counter"), unit, self.index, raw)

    def _event(self, p: pb.TracePacket) -> None:
        seq = self._seq(p, "track event")
        te = p.track_event
        ts = self._timestamp(p, seq)
        uuid = te.track_uuid if te.HasField("track_uuid") else seq.track_uuid
        track = self.tracks.get(uuid)
        if track is None:
            self.fail(f"track event on uuid {uuid}, which no earlier TrackDescriptor declares", ts=ts)
        typ = te.type
        if typ == COUNTER:
            if not track.counter:
                self.fail("counter value on a track that is not a counter track", track=uuid, ts=ts)
            which = te.WhichOneof("counter_value_field")
            if which is None:
                self.fail("TYPE_COUNTER event without a value", track=uuid, ts=ts)
            self.report.counter_samples += 1
            if self.collect:
                self.counter_rows.append((uuid, ts, float(getattr(te, which))))
            return
        if typ not in (BEGIN, END, INSTANT):
            self.fail(f"track event of type {typ} (only SLICE_BEGIN, SLICE_END, INSTANT and COUNTER are written)",
                      track=uuid, ts=ts)
        if track.counter:
            self.fail("slice event on a counter track", track=uuid, ts=ts)
        payload = None
        if typ != END:
            name_field = te.WhichOneof("name_field")
            if name_field == "name_iid":
                if te.name_iid not in seq.event_names:
                    self.fail(f"event name iid {te.name_iid} is not defined on sequence {p.trusted_packet_sequence_id}",
                              track=uuid, ts=ts)
                name = seq.event_names[te.name_iid]
            else:
                name = te.name
            args: dict[str, Any] = {}
            for a in te.debug_annotations:
                if a.HasField("name_iid"):
                    if a.name_iid not in seq.ann_names:
                        self.fail(f"debug annotation name iid {a.name_iid} is not defined on sequence "
                                  f"{p.trusted_packet_sequence_id}", track=uuid, ts=ts)
                    aname = seq.ann_names[a.name_iid]
                else:
                    aname = a.name
                value_kind = a.WhichOneof("value")
                if value_kind == "string_value_iid":
                    if a.string_value_iid not in seq.strings:
                        self.fail(f"string value iid {a.string_value_iid} is not defined on sequence "
                                  f"{p.trusted_packet_sequence_id}", track=uuid, ts=ts)
                    args[aname] = seq.strings[a.string_value_iid]
                elif value_kind is not None:
                    args[aname] = getattr(a, value_kind)
            for fid in list(te.flow_ids) + list(te.flow_ids_old):
                if fid in self.flow_start:
                    self.fail(f"flow id {fid} started twice (first at packet {self.flow_start[fid][1]}); "
                              "the importer would chain the two", track=uuid, ts=ts)
                self.flow_start[fid] = (ts, self.index, uuid)
            for fid in list(te.terminating_flow_ids) + list(te.terminating_flow_ids_old):
                if fid in self.flow_end:
                    self.fail(f"flow id {fid} terminated twice (first at packet {self.flow_end[fid][1]})",
                              track=uuid, ts=ts)
                self.flow_end[fid] = (ts, self.index, uuid)
            if self.collect:
                fo = (list(te.flow_ids) or list(te.flow_ids_old) or [None])[0]
                fi = (list(te.terminating_flow_ids) or list(te.terminating_flow_ids_old) or [None])[0]
                payload = (name, args, fo, fi)
        self.track_events.setdefault(uuid, []).append((ts, self.index, typ, p.trusted_packet_sequence_id, payload))

    # -- end of trace ---------------------------------------------------------------------------
    def finish(self) -> None:
        for t in self.tracks.values():
            if t.parent and t.parent not in self.tracks:
                self.fail(f"parent uuid {t.parent} of track {t.name!r} is never declared", packet=t.packet, track=t.uuid)
        self.slices: list[tuple] = []  # (track, ts, dur, payload)
        for uuid, evs in self.track_events.items():
            evs.sort(key=lambda e: (e[0], e[1]))
            stack: list[tuple] = []
            for ts, idx, typ, sid, payload in evs:
                if typ == BEGIN:
                    stack.append((ts, idx, sid, payload))
                elif typ == END:
                    if not stack:
                        self.fail("SLICE_END with no open slice on its track", packet=idx, track=uuid, ts=ts)
                    bts, bidx, bsid, bpayload = stack.pop()
                    if bsid != sid:
                        self.fail(f"SLICE_END of sequence {sid} closes the slice begun by sequence {bsid} at "
                                  f"packet {bidx}: slices of one track overlap without nesting",
                                  packet=idx, track=uuid, ts=ts, fix="put overlapping slices on separate tracks")
                    self.report.slices += 1
                    if self.collect:
                        self.slices.append((uuid, bts, ts - bts, bpayload))
                else:
                    self.report.instants += 1
                    if self.collect:
                        self.slices.append((uuid, ts, 0, payload))
            if stack:
                bts, bidx, _sid, _p = stack[0]
                self.fail("slice begun here is never ended (unbalanced SLICE_BEGIN)", packet=bidx, track=uuid, ts=bts)
        for fid, (ts, idx, uuid) in sorted(self.flow_start.items(), key=lambda kv: kv[1][1]):
            end = self.flow_end.get(fid)
            if end is None:
                self.fail(f"flow id {fid} is started but never terminated", packet=idx, track=uuid, ts=ts,
                          fix="terminate every flow (terminating_flow_ids on its last slice)")
            if (end[0], end[1]) < (ts, idx):
                self.fail(f"flow id {fid} is terminated at {end[0]} ns, before it starts (the importer drops it)",
                          packet=end[1], track=end[2], ts=end[0])
        for fid, (ts, idx, uuid) in sorted(self.flow_end.items(), key=lambda kv: kv[1][1]):
            if fid not in self.flow_start:
                self.fail(f"flow id {fid} is terminated but never started", packet=idx, track=uuid, ts=ts)
        r = self.report
        r.sequences = len(self.seqs)
        r.tracks = len(self.tracks)
        r.flows = len(self.flow_start)

    # -- tables -------------------------------------------------------------------------------
    def _resource(self, uuid: int) -> str:
        names = []
        while uuid in self.tracks:
            t = self.tracks[uuid]
            if not t.parent:
                break  # the root (the trace title) is not part of resource paths
            names.append(t.name)
            uuid = t.parent
        return "/".join(reversed(names))

    def events(self) -> pl.DataFrame:
        from tracekit.io.perfetto import ANNOTATIONS, implied

        cols: dict[str, list] = {k: [] for k in ("ts_ns", "dur_ns", "rank", "resource", "stage", "flow_out", "flow_in")}
        for _aname, col, _typ, _d in ANNOTATIONS:
            cols.setdefault(col, [])
        paths: dict[int, tuple[str, dict[str, int]]] = {}
        for uuid, ts, dur, (name, args, fo, fi) in self.slices:
            if uuid not in paths:
                r = self._resource(uuid)
                paths[uuid] = (r, implied(r))
            res, imp = paths[uuid]
            cols["ts_ns"].append(ts)
            cols["dur_ns"].append(dur)
            cols["resource"].append(res)
            cols["stage"].append(name)
            cols["flow_out"].append(None if fo is None else _signed(fo))
            cols["flow_in"].append(None if fi is None else _signed(fi))
            for aname, col, _typ, default in ANNOTATIONS:
                if aname in args:
                    v = args[aname]
                elif default is not None:
                    v = default
                else:
                    v = name if aname == "name" else imp[aname]
                cols[col].append(v)
        schema = schemas.load("events")
        arrays = pa.table({f.name: pa.array(cols[f.name], f.arrow_type) for f in schema.fields if f.name in cols})
        table = schemas.conform(arrays, "events", {"source": "import:perfetto"}, where=self.path)
        return pl.from_arrow(table).sort(["ts_ns", "resource"], maintain_order=True)

    def counters(self) -> pl.DataFrame:
        res, name, unit, ts, val = [], [], [], [], []
        info: dict[int, tuple[str, str, str]] = {}
        for uuid, t, v in self.counter_rows:
            if uuid not in info:
                tr = self.tracks[uuid]
                info[uuid] = (self._resource(tr.parent), tr.name, tr.unit)
            r, c, u = info[uuid]
            res.append(r)
            name.append(c)
            unit.append(u)
            ts.append(t)
            val.append(v)
        arrays = pa.table({"ts_ns": pa.array(ts, pa.int64()), "resource": pa.array(res, pa.string()),
                           "counter": pa.array(name, pa.string()), "value": pa.array(val, pa.float64()),
                           "rank": pa.array([ResourcePath.parse(r).rank for r in res], pa.int32()),
                           "unit": pa.array(unit, pa.string())})
        table = schemas.conform(arrays, "counters", {"source": "import:perfetto"}, where=self.path)
        return pl.from_arrow(table).sort(["ts_ns", "resource", "counter"], maintain_order=True)


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def walk_trace(path: str | os.PathLike[str], collect: bool = False) -> _Walker:
    """Parse and check ``path``; return the walker (its ``report``, and with ``collect`` the
    ``events()`` and ``counters()`` tables). Raises :class:`TracekitError` on the first violation."""
    where = str(path)
    p = Path(path)
    if not p.is_file():
        raise TracekitError("no such file", where=where, fix="check the path")
    w = _Walker(where, collect)
    size = p.stat().st_size
    with open(p, "rb") as f:
        if size:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                w.run(buf)
    w.finish()
    w.report.file_bytes = size
    if w.report.packets == 0:
        raise TracekitError("no trace packets", where=where, fix="pass a Perfetto protobuf trace (.pftrace)")
    return w


def check_trace(path: str | os.PathLike[str]) -> CheckReport:
    """Apply the importer's rules to ``path``; return a :class:`CheckReport` or raise
    :class:`TracekitError` naming the first violation."""
    return walk_trace(path).report


def validate_pftrace(path: str | os.PathLike[str]) -> Any:
    """``tracekit validate FILE.pftrace``: a :class:`tracekit.io.validate.FileSummary` whose rows
    are the slices, instants and counter samples, or a TracekitError naming the first violation."""
    from tracekit.io.validate import FileSummary

    r = check_trace(path)
    what = (f"perfetto trace: {r.slices} slices, {r.instants} instants, {r.flows} flows, "
            f"{r.counter_samples} counter samples on {r.tracks} tracks, {r.sequences} sequences")
    return FileSummary(str(path), what, r.slices + r.instants + r.counter_samples)
