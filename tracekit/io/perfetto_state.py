"""Per-file writer state of the Perfetto export: the packet sink (plain or deflated bundles),
the interning tables, and what each packet sequence has already been told.

Perfetto scopes interned data to a packet sequence, and tracekit writes one sequence per track
lane, so an interned name must be defined on every sequence that uses it, before its first use.
The :class:`Interner` keeps file-wide ids (one id per string, whatever the sequence) and, per
sequence, which ids were emitted there; each batch it emits one ``interned_data`` packet per
sequence that meets something new. The first-use scan is compiled (numba).
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
from typing import IO

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from tracekit.io import perfetto_wire as wire

#: Sequence-scoped incremental clock used by every sequence (ids 64..127 are sequence-scoped).
CLOCK_ID = 64
BOOTTIME = pb.BUILTIN_CLOCK_BOOTTIME
#: Interned ids below this are tracked per sequence in a dense table; the rest in a set.
_DENSE = 256


class Sink:
    """Writes framed packets, optionally bundled into deflated ``compressed_packets`` chunks
    (zlib, as Perfetto's tracing service writes them).

    Chunks are compressed on worker threads (zlib releases the GIL) while the next one is encoded;
    a bounded number are in flight, so memory stays bounded whatever the trace length."""

    def __init__(self, f: IO[bytes], compress: bool, chunk_bytes: int = 1 << 20) -> None:
        self.f = f
        self.compress = compress
        self.chunk_bytes = chunk_bytes
        self.buf: list[bytes] = []
        self.size = 0
        workers = max(1, min(8, (os.cpu_count() or 1)))
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers) if compress else None
        self.max_pending = workers + 1
        self.pending: collections.deque = collections.deque()
        self.bytes_in = 0

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.bytes_in += len(data)
        self.buf.append(data)
        self.size += len(data)
        if self.size >= self.chunk_bytes:
            self._flush_chunk()

    def packet(self, p: pb.TracePacket) -> None:
        self.write(wire.frame(p))

    def _flush_chunk(self) -> None:
        if not self.buf:
            return
        raw = b"".join(self.buf)
        self.buf, self.size = [], 0
        if not self.compress:
            self.f.write(raw)
            return
        self.pending.append(self.pool.submit(wire.compressed_frame, raw))
        while len(self.pending) > self.max_pending:
            self.f.write(self.pending.popleft().result())

    def close(self) -> None:
        try:
            self._flush_chunk()
            while self.pending:
                self.f.write(self.pending.popleft().result())
        finally:
            if self.pool is not None:
                self.pool.shutdown()


@numba.njit(cache=True)
def _first_uses(seq, iids, present, seen, flags):  # pragma: no cover - compiled
    """Mark rows whose (sequence, id) is new and record it in ``seen``; ids beyond the dense
    table are flagged -1 for the caller's set."""
    cap = seen.shape[1]
    for i in range(seq.shape[0]):
        if not present[i]:
            continue
        v = iids[i]
        if v >= cap:
            flags[i] = -1
            continue
        s = seq[i]
        if not seen[s, v]:
            seen[s, v] = True
            flags[i] = 1


@numba.njit(cache=True)
def _new_bits(seq, bits, seq_bits, out):  # pragma: no cover - compiled
    for i in range(seq.shape[0]):
        s = seq[i]
        nb = bits[i] & ~seq_bits[s]
        if nb:
            out[i] = nb
            seq_bits[s] |= nb


class Interner:
    """File-wide interning tables and, per sequence, what has already been emitted on it.

    ``annotation_names`` are the debug annotation names, ids 1..len in order."""

    def __init__(self, annotation_names: list[str], max_strings: int) -> None:
        self.annotation_names = annotation_names
        self.max_strings = max_strings
        self.event_names: dict[str, int] = {}
        self.strings: dict[str, int] = {}
        self.names_by_iid: list[str] = [""]
        self.strings_by_iid: list[str] = [""]
        self.seen_names = np.zeros((64, _DENSE), np.bool_)
        self.seen_strings = np.zeros((64, _DENSE), np.bool_)
        self.seq_bits = np.zeros(64, np.int64)
        self.sparse: set[tuple[int, int, int]] = set()
        self._entries: dict[tuple[int, int], bytes] = {}

    def _grow(self, seq_max: int) -> None:
        rows = self.seq_bits.shape[0]
        if seq_max < rows:
            return
        new = max(2 * rows, seq_max + 1)
        for name in ("seen_names", "seen_strings"):
            old = getattr(self, name)
            grown = np.zeros((new, _DENSE), np.bool_)
            grown[:rows] = old
            setattr(self, name, grown)
        bits = np.zeros(new, np.int64)
        bits[:rows] = self.seq_bits
        self.seq_bits = bits

    @staticmethod
    def encode(arr: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, list]:
        """(index of each row into the distinct values, the distinct values) of a string column."""
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        if len(arr) == 0:
            return np.zeros(0, np.int64), []
        enc = arr if pa.types.is_dictionary(arr.type) else pc.dictionary_encode(arr)
        return enc.indices.to_numpy(zero_copy_only=False), enc.dictionary.to_pylist()

    @staticmethod
    def _ids(values: list, table: dict[str, int], by_iid: list[str], cap: int | None) -> np.ndarray:
        """Interned id of each value, new values added (0 where the table is full, or for None)."""
        lut = np.zeros(len(values), np.uint64)
        for k, s in enumerate(values):
            iid = table.get(s)
            if iid is None and s is not None and (cap is None or len(table) < cap):
                iid = len(table) + 1
                table[s] = iid
                by_iid.append(s)
            lut[k] = iid or 0
        return lut

    def event_name_ids(self, values: list) -> np.ndarray:
        """Ids of ``values`` in the event-name table."""
        return self._ids(values, self.event_names, self.names_by_iid, None)

    def string_ids(self, values: list, capped: bool = False) -> np.ndarray:
        """Ids of ``values`` in the string-value table (capped: at most ``max_strings`` entries)."""
        return self._ids(values, self.strings, self.strings_by_iid, self.max_strings if capped else None)

    def packets(self, seq: np.ndarray, name_iid: np.ndarray, strings: list[tuple[np.ndarray, np.ndarray]],
                ann_bits: np.ndarray) -> list[bytes]:
        """Framed interned-data packets defining, on each sequence, what these rows use that the sequence
        has not seen yet. ``strings``: (ids, present) pairs; ``ann_bits``: each row's bitmask of
        annotation names."""
        n = seq.shape[0]
        if n == 0:
            return []
        self._grow(int(seq.max()))
        seq64 = seq.astype(np.int64)
        new: dict[int, list[tuple[int, int]]] = collections.defaultdict(list)  # seq -> [(table, iid)]
        uses = [(0, self.seen_names, name_iid, np.ones(n, np.bool_))]
        uses += [(1, self.seen_strings, iids, present) for iids, present in strings]
        for table, seen, iids, present in uses:
            flags = np.zeros(n, np.int8)
            iids64 = iids.astype(np.int64)
            _first_uses(seq64, iids64, present, seen, flags)
            for i in np.flatnonzero(flags == 1).tolist():
                new[int(seq64[i])].append((table, int(iids64[i])))
            for i in np.flatnonzero(flags == -1).tolist():
                key = (table, int(seq64[i]), int(iids64[i]))
                if key not in self.sparse:
                    self.sparse.add(key)
                    new[key[1]].append((table, key[2]))
        bits = np.zeros(n, np.int64)
        _new_bits(seq64, ann_bits, self.seq_bits, bits)
        new_bits: dict[int, int] = collections.defaultdict(int)
        for i in np.flatnonzero(bits).tolist():
            new_bits[int(seq64[i])] |= int(bits[i])
        out = []
        for s in sorted(set(new) | set(new_bits)):
            entries = sorted(new.get(s, []))
            b = new_bits.get(s, 0)
            names = [self._entry(0, iid) for table, iid in entries if table == 0]
            anns = [self._entry(2, k + 1) for k in range(len(self.annotation_names)) if b >> k & 1]
            strs = [self._entry(1, iid) for table, iid in entries if table == 1]
            out.append(interned_packet(s, names + anns + strs))
        return out

    def _entry(self, table: int, iid: int) -> bytes:
        """One serialized InternedData entry: event_names (2), debug_annotation_string_values (29)
        or debug_annotation_names (3), field tag included."""
        key = (table, iid)
        e = self._entries.get(key)
        if e is None:
            if table == 0:
                tag, text = b"\x12", self.names_by_iid[iid].encode()
            elif table == 1:
                tag, text = b"\xea\x01", self.strings_by_iid[iid].encode()
            else:
                tag, text = b"\x1a", self.annotation_names[iid - 1].encode()
            body = b"\x08" + wire.varint_bytes(iid) + b"\x12" + wire.varint_bytes(len(text)) + text
            e = self._entries[key] = tag + wire.varint_bytes(len(body)) + body
        return e


def interned_packet(seq: int, entries: list[bytes]) -> bytes:
    """A framed ``TracePacket{trusted_packet_sequence_id, interned_data{entries}}``; entries
    ordered as the serializer orders them (event names, annotation names, string values)."""
    data = b"".join(entries)
    body = b"\x50" + wire.varint_bytes(seq) + b"\x62" + wire.varint_bytes(len(data)) + data
    return b"\x0a" + wire.varint_bytes(len(body)) + body


def sequence_start_bytes(seq: int, track_uuid: int) -> bytes:
    """:func:`sequence_start` framed, built by hand (the same bytes; many lanes start sequences)."""
    t = b"\x58" + wire.varint_bytes(track_uuid)
    d = b"\x5a" + wire.varint_bytes(len(t)) + t + b"\xd0\x03" + wire.varint_bytes(CLOCK_ID)
    body = (_SNAPSHOT + b"\x50" + wire.varint_bytes(seq) + b"\x68\x01" + b"\xda\x03" + wire.varint_bytes(len(d)) + d)
    return b"\x0a" + wire.varint_bytes(len(body)) + body


def sequence_start(seq: int, track_uuid: int) -> pb.TracePacket:
    """First packet of a sequence: clears its incremental state, names its default track and
    defines its incremental clock (starting at trace time 0)."""
    p = pb.TracePacket()
    p.trusted_packet_sequence_id = seq
    p.sequence_flags = pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
    p.trace_packet_defaults.timestamp_clock_id = CLOCK_ID
    p.trace_packet_defaults.track_event_defaults.track_uuid = track_uuid
    snap = p.clock_snapshot
    snap.primary_trace_clock = BOOTTIME
    c = snap.clocks.add()
    c.clock_id = BOOTTIME
    c.timestamp = 0
    c = snap.clocks.add()
    c.clock_id = CLOCK_ID
    c.timestamp = 0
    c.is_incremental = True
    return p


@numba.njit(cache=True)
def running_delta(key, ts, last, out):  # pragma: no cover - compiled
    """``out[i] = ts[i] - last[key[i]]``, then ``last[key[i]] = ts[i]`` (rows in time order)."""
    for i in range(key.shape[0]):
        k = key[i]
        out[i] = ts[i] - last[k]
        last[k] = ts[i]


#: The clock snapshot field of every sequence start (the same for all sequences).
_SNAPSHOT = sequence_start(1, 1).SerializeToString().split(b"\x50\x01\x68\x01", 1)[0]
