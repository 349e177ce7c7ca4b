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
from collections.abc import Callable
from typing import IO, Any

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
    """Writes framed packets in order, optionally bundled into deflated ``compressed_packets``
    chunks of about ``chunk_bytes`` (whole packets each).

    Work is handed to worker threads: deflating chunks (the zlib stream library runs without
    the GIL) and encoding batches of rows (:meth:`write_encoded`), while the writer
    prepares the next batch. Results are written in submission order and chunk boundaries depend
    only on the bytes, so the file does not depend on thread timing. At most about
    ``max_pending_bytes`` of packets are in flight: memory stays bounded whatever the trace
    length."""

    def __init__(self, f: IO[bytes], compress: bool, chunk_bytes: int = 1 << 20,
                 max_pending_bytes: int = 16 << 20) -> None:
        self.f = f
        self.compress = compress
        self.chunk_bytes = chunk_bytes
        self.parts: list[bytes | np.ndarray] = []
        self.size = 0
        workers = max(1, min(8, (os.cpu_count() or 1)))
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
        self.max_pending_bytes = max_pending_bytes
        self.pending: collections.deque = collections.deque()  # (future or ready parts, size)
        self.pending_bytes = 0

    def write(self, data: bytes | np.ndarray) -> None:
        """Append whole packets (bytes or a uint8 array, which must not change afterwards)."""
        n = len(data)
        if not n:
            return
        self.parts.append(data)
        self.size += n
        if self.size >= self.chunk_bytes:
            self._flush_chunk()

    def write_encoded(self, job: Callable[[bytes, bool, int], list], size_hint: int) -> None:
        """Append what ``job(prefix, compress, chunk_bytes)`` returns, run on a worker thread: the
        parts to write for ``prefix`` (the packets written before, which go first) and the
        packets the job encodes, deflated into bundles of about ``chunk_bytes`` when
        ``compress`` (see :func:`tracekit.io.perfetto_wire.slice_writer`). A chunk ends after
        them. ``size_hint``: about how many bytes the job encodes."""
        prefix = b"".join(self.parts)
        self.parts, self.size = [], 0
        self._push(self.pool.submit(job, prefix, self.compress, self.chunk_bytes), len(prefix) + size_hint)

    def packet(self, p: pb.TracePacket) -> None:
        self.write(wire.frame(p))

    def _flush_chunk(self) -> None:
        if not self.parts:
            return
        parts, size = self.parts, self.size
        self.parts, self.size = [], 0
        if not self.compress:
            self._push(parts, size)
        else:
            self._push(self.pool.submit(_bundle, parts[0] if len(parts) == 1 else b"".join(parts)), size)

    def _push(self, item: Any, size: int) -> None:
        self.pending.append((item, size))
        self.pending_bytes += size
        while self.pending_bytes > self.max_pending_bytes:
            self._drain_one()

    def _drain_one(self) -> None:
        item, size = self.pending.popleft()
        for part in (item.result() if isinstance(item, concurrent.futures.Future) else item):
            self.f.write(part)
        self.pending_bytes -= size

    def close(self) -> None:
        try:
            self._flush_chunk()
            while self.pending:
                self._drain_one()
        finally:
            self.pool.shutdown()


def _bundle(raw: bytes | np.ndarray) -> list:
    """A framed ``compressed_packets`` packet holding ``raw``."""
    return [wire.compressed_frame(raw)]


@numba.njit(cache=True, inline="always")
def _put(buf, pos, v):  # pragma: no cover - compiled
    """A varint of a non-negative int64 at ``buf[pos]``; returns the position after it."""
    while v >= 128:
        buf[pos] = (v & 0x7F) | 0x80
        v >>= 7
        pos += 1
    buf[pos] = v
    return pos + 1


@numba.njit(cache=True, inline="always")
def _copy(out, pos, src, a, b):  # pragma: no cover - compiled
    """``src[a:b]`` into ``out`` at ``pos``; returns the position after it. A loop rather than a
    slice assignment, whose shape-mismatch error path costs seconds of compilation."""
    for k in range(b - a):
        out[pos + k] = src[a + k]
    return pos + b - a


@numba.njit(cache=True)
def _first_uses(seq, iids, present, table, seen, keys, key_table, far):  # pragma: no cover - compiled
    """The (sequence, id) pairs that rows use for the first time, in tables ``table[c]`` of
    columns ``c`` of ``iids`` (where ``present``), recorded in ``seen[table, sequence, id]``:
    (a bit per id), ``keys`` gets sequence << 32 | id and ``key_table`` the table. Ids past the
    dense table go
    to ``far`` (column << 32 | row) for the caller. Returns (pairs, far rows)."""
    cap = 64 * seen.shape[2]
    m = 0
    f = 0
    for c in range(iids.shape[0]):
        t = table[c]
        for i in range(seq.shape[0]):
            if not present[c, i]:
                continue
            v = iids[c, i]
            s = seq[i]
            if v >= cap:
                far[f] = (c << 32) | i
                f += 1
                continue
            bit = np.int64(1) << (v & 63)
            w = seen[t, s, v >> 6]
            if not w & bit:
                seen[t, s, v >> 6] = w | bit
                keys[m] = (s << 32) | v
                key_table[m] = t
                m += 1
    return m, f


@numba.njit(cache=True, inline="always")
def _vlen(v):  # pragma: no cover - compiled
    n = 1
    while v >= 128:
        v >>= 7
        n += 1
    return n


@numba.njit(cache=True)
def _interned_packets(ent_seq, ent_table, ent_iid, blob, lo, hi, out):  # pragma: no cover - compiled
    """One interned-data packet per run of equal ``ent_seq``, holding those entries in order
    (entry ``(table, iid)`` is ``blob[lo[table, iid]:hi[table, iid]]``)."""
    pos = 0
    i = 0
    m = ent_seq.shape[0]
    while i < m:
        s = ent_seq[i]
        j = i
        size = 0
        while j < m and ent_seq[j] == s:
            size += hi[ent_table[j], ent_iid[j]] - lo[ent_table[j], ent_iid[j]]
            j += 1
        body = 1 + _vlen(s) + 1 + _vlen(size) + size
        out[pos] = 0x0A
        pos = _put(out, pos + 1, body)
        out[pos] = 0x50
        pos = _put(out, pos + 1, s)
        out[pos] = 0x62
        pos = _put(out, pos + 1, size)
        for k in range(i, j):
            a = lo[ent_table[k], ent_iid[k]]
            b = hi[ent_table[k], ent_iid[k]]
            pos = _copy(out, pos, blob, a, b)
        i = j
    return pos


@numba.njit(cache=True)
def _lane_packets(seqs, uuids, extra, res, tmpl, tmpl_lo, tmpl_hi, snapshot, names, out):  # pragma: no cover
    """For each new lane: its TrackDescriptor when it is an extra lane (the resource's template
    ``tmpl[tmpl_lo[r]:tmpl_hi[r]]`` after a fresh uuid), its sequence start packet (see
    :func:`sequence_start`), then, when ``names`` is not empty, an interned-data packet holding
    those serialized entries."""
    pos = 0
    for i in range(seqs.shape[0]):
        u = uuids[i]
        if extra[i]:
            a = tmpl_lo[res[i]]
            b = tmpl_hi[res[i]]
            d = 1 + _vlen(u) + b - a
            out[pos] = 0x0A
            pos = _put(out, pos + 1, 2 + _vlen(d) + d)
            out[pos] = 0xE2
            out[pos + 1] = 0x03
            pos = _put(out, pos + 2, d)
            out[pos] = 0x08
            pos = _put(out, pos + 1, u)
            pos = _copy(out, pos, tmpl, a, b)
        t = 1 + _vlen(u)
        d = 1 + _vlen(t) + t + 3
        body = snapshot.shape[0] + 1 + _vlen(seqs[i]) + 2 + 2 + _vlen(d) + d
        out[pos] = 0x0A
        pos = _put(out, pos + 1, body)
        pos = _copy(out, pos, snapshot, 0, snapshot.shape[0])
        out[pos] = 0x50
        pos = _put(out, pos + 1, seqs[i])
        out[pos] = 0x68
        out[pos + 1] = 0x01
        out[pos + 2] = 0xDA
        out[pos + 3] = 0x03
        pos = _put(out, pos + 4, d)
        out[pos] = 0x5A
        pos = _put(out, pos + 1, t)
        out[pos] = 0x58
        pos = _put(out, pos + 1, u)
        out[pos] = 0xD0
        out[pos + 1] = 0x03
        out[pos + 2] = CLOCK_ID
        pos += 3
        m = names.shape[0]
        if m:
            out[pos] = 0x0A
            pos = _put(out, pos + 1, 1 + _vlen(seqs[i]) + 1 + _vlen(m) + m)
            out[pos] = 0x50
            pos = _put(out, pos + 1, seqs[i])
            out[pos] = 0x62
            pos = _put(out, pos + 1, m)
            pos = _copy(out, pos, names, 0, m)
    return pos


class _Blob:
    """Serialized byte strings addressed by (table, id), ids dense from 0 in each table, appended
    as they appear: the arrays a compiled packet builder reads."""

    def __init__(self, tables: int) -> None:
        self.data = bytearray()
        self.bounds: list[list[tuple[int, int]]] = [[] for _ in range(tables)]
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def add(self, table: int, data: bytes) -> None:
        self.bounds[table].append((len(self.data), len(self.data) + len(data)))
        self.data += data
        self._arrays = None

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(blob, lo, hi): entry ``(t, i)`` is ``blob[lo[t, i]:hi[t, i]]``."""
        if self._arrays is None:
            width = max(len(b) for b in self.bounds)
            lo = np.zeros((len(self.bounds), width), np.int64)
            hi = np.zeros((len(self.bounds), width), np.int64)
            for t, b in enumerate(self.bounds):
                if b:
                    lo[t, :len(b)], hi[t, :len(b)] = np.array(b, np.int64).T
            self._arrays = np.frombuffer(bytes(self.data) or b"\0", np.uint8), lo, hi
        return self._arrays


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
        self.seen = np.zeros((2, 64, _DENSE // 64), np.int64)  # bits [event names | strings, sequence, id]
        self.sparse = [np.zeros(0, np.int64), np.zeros(0, np.int64)]  # sorted seq << 32 | iid emitted
        # serialized entries by (table, iid): 0 event names, 1 annotation names, 2 string values
        # (the order the serializer writes InternedData's fields 2, 3 and 29 in); id 0 unused
        self.entries = _Blob(3)
        for table in range(3):
            self.entries.add(table, b"")
        for k in range(len(annotation_names)):
            self.entries.add(1, _entry(b"\x1a", k + 1, annotation_names[k]))
        self._name_entries: np.ndarray | None = None

    def name_entries(self) -> np.ndarray:
        """The InternedData entries defining every annotation name (ids 1..), serialized."""
        if self._name_entries is None:
            blob, lo, hi = self.entries.arrays()
            self._name_entries = blob[lo[1, 1]:hi[1, len(self.annotation_names)]].copy()
        return self._name_entries

    def _grow(self, seq_max: int) -> None:
        rows = self.seen.shape[1]
        if seq_max < rows:
            return
        grown = np.zeros((2, max(2 * rows, seq_max + 1), _DENSE // 64), np.int64)
        grown[:, :rows] = self.seen
        self.seen = grown

    @staticmethod
    def encode(arr: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, list]:
        """(index of each row into the distinct values, the distinct values) of a string column."""
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        if len(arr) == 0:
            return np.zeros(0, np.int64), []
        enc = arr if pa.types.is_dictionary(arr.type) else pc.dictionary_encode(arr)
        return enc.indices.to_numpy(zero_copy_only=False), enc.dictionary.to_pylist()

    def _ids(self, values: list, table: dict[str, int], by_iid: list[str], cap: int | None, blob: int) -> np.ndarray:
        """Interned id of each value, new values added (0 where the table is full, or for None)."""
        lut = np.zeros(len(values), np.uint64)
        tag = b"\x12" if blob == 0 else b"\xea\x01"
        for k, s in enumerate(values):
            iid = table.get(s)
            if iid is None and s is not None and (cap is None or len(table) < cap):
                iid = len(table) + 1
                table[s] = iid
                by_iid.append(s)
                self.entries.add(blob, _entry(tag, iid, s))
            lut[k] = iid or 0
        return lut

    def event_name_ids(self, values: list) -> np.ndarray:
        """Ids of ``values`` in the event-name table."""
        return self._ids(values, self.event_names, self.names_by_iid, None, 0)

    def string_ids(self, values: list, capped: bool = False) -> np.ndarray:
        """Ids of ``values`` in the string-value table (capped: at most ``max_strings`` entries)."""
        return self._ids(values, self.strings, self.strings_by_iid, self.max_strings if capped else None, 2)

    def packets(self, seq: np.ndarray, name_iid: np.ndarray, strings: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """Framed interned-data packets defining, on each sequence, the event names and string
        values these rows use that the sequence has not seen yet (one packet per such sequence,
        by sequence id). ``strings``: (ids, present) pairs. Annotation names are defined when a
        sequence starts (:meth:`name_entries`)."""
        n = seq.shape[0]
        if n == 0:
            return np.zeros(0, np.uint8)
        self._grow(int(seq.max()))
        seq64 = seq.astype(np.int64)
        m = 1 + len(strings)
        iids = np.empty((m, n), np.int64)
        present = np.ones((m, n), np.bool_)
        iids[0] = name_iid
        for c, (ids, used) in enumerate(strings):
            iids[c + 1] = ids
            present[c + 1] = used
        table = np.array([0] + [1] * len(strings), np.int64)
        keys, key_table, far = np.empty(m * n, np.int64), np.empty(m * n, np.int64), np.empty(m * n, np.int64)
        k, f = _first_uses(seq64, iids, present, table, self.seen, keys, key_table, far)
        key, tables = [keys[:k]], [key_table[:k] * 2]  # blob tables: 0 event names, 2 strings
        for t in (0, 1):
            col, row = far[:f] >> 32, far[:f] & 0xFFFFFFFF
            sel = table[col] == t
            if not sel.any():
                continue
            cand = np.unique((seq64[row[sel]] << 32) | iids[col[sel], row[sel]])
            done = self.sparse[t]
            fresh = cand[~np.isin(cand, done, assume_unique=True)]
            if fresh.size:
                self.sparse[t] = np.union1d(done, fresh)
                key.append(fresh)
                tables.append(np.full(fresh.size, 2 * t, np.int64))
        keys = key
        key = np.concatenate(keys)
        if key.size == 0:
            return np.zeros(0, np.uint8)
        table = np.concatenate(tables)
        ent_seq, ent_iid = key >> 32, key & 0xFFFFFFFF
        order = np.lexsort((ent_iid, table, ent_seq))
        blob, lo, hi = self.entries.arrays()
        out = np.empty(int((hi[table, ent_iid] - lo[table, ent_iid]).sum()) + 24 * key.size, np.uint8)
        size = _interned_packets(ent_seq[order], table[order], ent_iid[order], blob, lo, hi, out)
        return out[:size]


def _entry(tag: bytes, iid: int, text: str) -> bytes:
    """One serialized InternedData entry (``iid`` and ``name``/``str``, field 1 and 2), tag included."""
    raw = text.encode()
    body = b"\x08" + wire.varint_bytes(iid) + b"\x12" + wire.varint_bytes(len(raw)) + raw
    return tag + wire.varint_bytes(len(body)) + body


def lane_packets(seqs: np.ndarray, uuids: np.ndarray, extra: np.ndarray, res: np.ndarray,
                 templates: tuple[np.ndarray, np.ndarray, np.ndarray], names: np.ndarray | None = None) -> np.ndarray:
    """Framed packets that open new lanes: for each, a TrackDescriptor where ``extra`` (a sibling
    track: the descriptor body ``templates`` holds for its resource, after uuid field 1), the
    start of its sequence (:func:`sequence_start`, byte for byte), and an interned-data packet
    with the serialized entries ``names`` (the annotation names) if given."""
    tmpl, lo, hi = templates
    names = np.zeros(0, np.uint8) if names is None else names
    size = (int((hi[res[extra]] - lo[res[extra]]).sum()) + 24 * int(extra.sum())
            + (_SNAPSHOT.size + 40 + names.size + 20) * seqs.size)
    out = np.empty(size, np.uint8)
    n = _lane_packets(seqs.astype(np.int64), uuids.astype(np.int64), extra, res.astype(np.int64), tmpl, lo, hi,
                      _SNAPSHOT, names, out)
    return out[:n]


def sequence_start_bytes(seq: int, track_uuid: int) -> bytes:
    """:func:`sequence_start` framed, built by hand (the same bytes; many lanes start sequences)."""
    t = b"\x58" + wire.varint_bytes(track_uuid)
    d = b"\x5a" + wire.varint_bytes(len(t)) + t + b"\xd0\x03" + wire.varint_bytes(CLOCK_ID)
    body = (_SNAPSHOT_BYTES + b"\x50" + wire.varint_bytes(seq) + b"\x68\x01" + b"\xda\x03" + wire.varint_bytes(len(d)) + d)
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
_SNAPSHOT_BYTES = sequence_start(1, 1).SerializeToString().split(b"\x50\x01\x68\x01", 1)[0]
_SNAPSHOT = np.frombuffer(_SNAPSHOT_BYTES, np.uint8)
