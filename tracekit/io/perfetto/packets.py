"""The packets of the Perfetto writer other than the per-event ones, built through the
``perfetto`` bindings: sequence starts, lane descriptors, interned data, and the interning
tables with what each packet sequence has already been told.

Perfetto scopes interned data to a packet sequence, and tracekit writes one sequence per track
lane, so an interned name must be defined on every sequence that uses it, before its first use.
The :class:`Interner` keeps file-wide ids (one id per string, whatever the sequence) and, per
sequence, which ids were emitted there; each batch it emits one ``interned_data`` packet per
sequence that meets something new.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from tracekit.io.perfetto.tracks import Node, descriptor

#: Sequence-scoped incremental clock used by every sequence (ids 64..127 are sequence-scoped).
CLOCK_ID = 64
BOOTTIME = pb.BUILTIN_CLOCK_BOOTTIME
#: Interned ids below this are tracked per sequence in a dense table; the rest in a set.
_DENSE = 256


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
        self.seen = np.zeros((2, 64, _DENSE), np.bool_)  # [event names | strings, sequence, id] emitted
        self.sparse = [np.zeros(0, np.int64), np.zeros(0, np.int64)]  # sorted seq << 32 | iid emitted, iid >= _DENSE
        self.names = pb.InternedData()
        for k, name in enumerate(annotation_names):
            self.names.debug_annotation_names.add(iid=k + 1, name=name)

    def _grow(self, seq_max: int) -> None:
        rows = self.seen.shape[1]
        if seq_max < rows:
            return
        grown = np.zeros((2, max(2 * rows, seq_max + 1), _DENSE), np.bool_)
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

    def _ids(self, values: list, table: dict[str, int], by_iid: list[str], cap: int | None) -> np.ndarray:
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

    def _first_uses(self, table: int, seq: np.ndarray, iids: np.ndarray) -> np.ndarray:
        """The distinct keys ``seq << 32 | iid`` not emitted before in ``table``, now recorded."""
        dense = iids < _DENSE
        s, v = seq[dense], iids[dense]
        new = ~self.seen[table, s, v]
        keys = np.unique((s[new] << 32) | v[new])
        self.seen[table, keys >> 32, keys & 0xFFFFFFFF] = True
        if dense.all():
            return keys
        far = np.unique((seq[~dense] << 32) | iids[~dense])
        fresh = far[~np.isin(far, self.sparse[table], assume_unique=True)]
        self.sparse[table] = np.union1d(self.sparse[table], fresh)
        return np.concatenate([keys, fresh])

    def packets(self, seq: np.ndarray, name_iid: np.ndarray, strings: list[tuple[np.ndarray, np.ndarray]]) -> bytes:
        """Framed interned-data packets defining, on each sequence, the event names and string
        values these rows use that the sequence has not seen yet (one packet per such sequence,
        by sequence id), built through the bindings. ``strings``: (ids, present) pairs.
        Annotation names are defined when a sequence starts (:func:`lane_starts`)."""
        if seq.shape[0] == 0:
            return b""
        self._grow(int(seq.max()))
        seq64 = seq.astype(np.int64)
        new = [self._first_uses(0, seq64, name_iid.astype(np.int64)), np.zeros(0, np.int64)]
        if strings:
            new[1] = np.unique(np.concatenate([self._first_uses(1, seq64[used], ids.astype(np.int64)[used])
                                               for ids, used in strings]))
        keys = np.unique(np.concatenate([new[0] << 1, (new[1] << 1) | 1]))  # by sequence, names first
        trace = pb.Trace()  # its serialization is the framed packets, one after another
        p = None
        for key in keys.tolist():
            s, iid, table = key >> 33, (key >> 1) & 0xFFFFFFFF, key & 1
            if p is None or p.trusted_packet_sequence_id != s:
                p = trace.packet.add(trusted_packet_sequence_id=s)
            if table == 0:
                p.interned_data.event_names.add(iid=iid, name=self.names_by_iid[iid])
            else:
                p.interned_data.debug_annotation_string_values.add(iid=iid, str=self.strings_by_iid[iid].encode())
        return trace.SerializeToString()


def lane_starts(lanes: list[tuple[int, int, Node | None]], names: pb.InternedData) -> bytes:
    """Framed packets that open new lanes ``(sequence, track uuid, extra)``, built through the
    bindings: for each, its TrackDescriptor when ``extra`` is a node (an extra lane: a sibling
    track of that node), the start of its sequence (:func:`sequence_start`), and an interned-data
    packet with the annotation ``names``."""
    trace = pb.Trace()  # its serialization is the framed packets, one after another
    for seq, uuid, extra in lanes:
        if extra is not None:
            descriptor(extra, has_children=False, into=trace.packet.add())
        sequence_start(seq, uuid, into=trace.packet.add())
        trace.packet.add(trusted_packet_sequence_id=seq).interned_data.MergeFrom(names)
    return trace.SerializeToString()


def running_delta(key: np.ndarray, ts: np.ndarray, last: np.ndarray) -> np.ndarray:
    """``ts[i]`` minus the previous ``ts`` of the same key (rows in time order), the first of a
    key counting from ``last[key]``; ``last`` is updated to each key's latest ``ts``."""
    order = np.argsort(key, kind="stable")
    k, t = key[order], ts[order]
    first = np.ones(k.shape[0], np.bool_)
    first[1:] = k[1:] != k[:-1]
    d = np.empty_like(t)
    d[1:] = t[1:] - t[:-1]
    d[first] = t[first] - last[k[first]]
    final = np.ones(k.shape[0], np.bool_)
    final[:-1] = first[1:]
    last[k[final]] = t[final]
    out = np.empty_like(d)
    out[order] = d
    return out


def sequence_start(seq: int, track_uuid: int, into: pb.TracePacket | None = None) -> pb.TracePacket:
    """First packet of a sequence: clears its incremental state, names its default track and
    defines its incremental clock (starting at trace time 0). Filled ``into`` a given packet."""
    p = pb.TracePacket() if into is None else into
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
