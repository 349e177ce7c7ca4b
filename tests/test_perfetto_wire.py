"""The compiled wire encoder writes exactly what the protobuf bindings serialize."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from tracekit.io.perfetto import encode as wire

u64 = st.integers(0, (1 << 64) - 1)
small = st.integers(0, 1 << 20)


@st.composite
def slice_batches(draw):
    n = draw(st.integers(0, 40))
    col = lambda s: np.array(draw(st.lists(s, min_size=n, max_size=n)), dtype=np.uint64)  # noqa: E731
    bools = lambda: np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)  # noqa: E731
    anns = []
    for iid in draw(st.lists(st.integers(1, 127), max_size=5, unique=True)):
        interned = draw(st.booleans())
        vals = draw(st.lists(small if interned else st.integers(-(1 << 63), (1 << 63) - 1), min_size=n, max_size=n))
        anns.append(wire.Annotation(iid, np.array(vals, np.int64 if not interned else np.uint64), bools(), interned))
    return wire.SliceBatch(
        seq=col(st.integers(1, 1 << 31)), begin_delta=col(st.one_of(small, u64)), dur=col(st.one_of(small, u64)),
        instant=bools(), name_iid=col(st.integers(1, 1 << 40)), annotations=anns,
        flow_out=col(u64), flow_out_present=bools(), flow_in=col(u64), flow_in_present=bools(),
    )


@settings(max_examples=150, deadline=None)
@given(slice_batches())
def test_slices_are_byte_identical_to_the_bindings(batch):
    fast, ends = wire.encode_slices(batch)
    fast = fast.tobytes()
    assert fast == wire.encode_slices_reference(batch)
    assert (ends[-1] if batch.n else 0) == len(fast)
    # and the bytes parse back into the same packets
    trace = pb.Trace.FromString(fast)
    expected = [p for i in range(batch.n) for p in wire.slice_packets_reference(batch, i)]
    assert list(trace.packet) == expected


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_counters_are_byte_identical_to_the_bindings(data):
    n = data.draw(st.integers(0, 40))
    values = data.draw(st.lists(st.one_of(st.integers(-(1 << 60), 1 << 60).map(float),
                                          st.floats(allow_nan=False), st.just(-0.0), st.just(2.0 ** 53)),
                                min_size=n, max_size=n))
    batch = wire.CounterBatch(
        seq=np.array(data.draw(st.lists(st.integers(1, 1 << 31), min_size=n, max_size=n)), np.uint64),
        delta=np.array(data.draw(st.lists(u64, min_size=n, max_size=n)), np.uint64),
        value=np.array(values, np.float64),
    )
    fast = wire.encode_counters(batch)
    assert fast == wire.encode_counters_reference(batch)
    back = [p.track_event for p in pb.Trace.FromString(fast).packet]
    got = [te.counter_value if te.HasField("counter_value") else te.double_counter_value for te in back]
    assert np.array_equal(np.array(got, np.float64), batch.value)
    assert [np.signbit(v) for v in got] == [bool(np.signbit(v)) for v in batch.value]


def test_varint_bytes():
    assert wire.varint_bytes(0) == b"\x00"
    assert wire.varint_bytes(300) == b"\xac\x02"
    assert wire.varint_bytes(-1) == b"\xff" * 9 + b"\x01"


def test_compressed_frame_parses_as_a_packet():
    inner = wire.frame(pb.TracePacket(timestamp=5))
    packet = pb.Trace.FromString(wire.compressed_frame(inner)).packet[0]
    import zlib
    assert pb.Trace.FromString(zlib.decompress(packet.compressed_packets)).packet[0].timestamp == 5


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_interned_packets_equal_the_bindings(data):
    """Interner.packets, batch after batch, defines on each sequence exactly the event names and
    string values its rows use first, one packet per sequence in sequence order, as the bindings
    serialize it."""
    from tracekit.io.perfetto.packets import Interner

    names = [f"stage{i}" for i in range(300)]
    strs = [f"value{i}" for i in range(300)]
    it = Interner(["a", "b", "c", "d"], 1 << 16)
    it.event_name_ids(names)
    it.string_ids(strs)
    done: set = set()
    ids = st.one_of(st.integers(1, 5), st.integers(250, 300))
    for _batch in range(data.draw(st.integers(1, 3))):
        n = data.draw(st.integers(0, 30))
        rows = lambda s: np.array(data.draw(st.lists(s, min_size=n, max_size=n)), np.int64)  # noqa: E731
        seq = rows(st.sampled_from([1, 2, 3, 70, 300]))
        name_iid = rows(ids)
        strings = [(rows(ids), rows(st.booleans()).astype(bool)) for _ in range(data.draw(st.integers(0, 2)))]
        got = it.packets(seq.astype(np.uint64), name_iid.astype(np.uint64), strings)
        want = {}
        for i in range(n):
            s = int(seq[i])
            uses = [(0, int(name_iid[i]))] + [(2, int(v[i])) for v, present in strings if present[i]]
            for use in uses:
                if (s, use) not in done:
                    done.add((s, use))
                    want.setdefault(s, set()).add(use)
        expected = b""
        for s in sorted(want):
            p = pb.TracePacket(trusted_packet_sequence_id=s)
            for table, iid in sorted(want[s]):
                if table == 0:
                    p.interned_data.event_names.add(iid=iid, name=names[iid - 1])
                else:
                    p.interned_data.debug_annotation_string_values.add(iid=iid, str=strs[iid - 1].encode())
            expected += wire.frame(p)
        assert got == expected
    assert [(e.iid, e.name) for e in it.names.debug_annotation_names] == [(1, "a"), (2, "b"), (3, "c"), (4, "d")]


def test_extra_lane_descriptors_equal_the_bindings(tmp_path):
    import polars as pl

    from tracekit.io.perfetto import write_trace
    from tracekit.io.perfetto.check import iter_frames
    from tracekit.io.perfetto.tracks import descriptor, Node

    ev = pl.DataFrame({"ts_ns": [0, 1, 2], "dur_ns": [10, 10, 10], "rank": [0, 0, 0],
                       "resource": ["node0/rank0/nic0/qp1"] * 3, "stage": ["w"] * 3, "name": ["w"] * 3})
    path = write_trace(tmp_path / "l.pftrace", ev, compress=False)
    descs = [pb.TracePacket.FromString(raw) for _o, raw in iter_frames(path.read_bytes(), "t")]
    descs = [p for p in descs if p.HasField("track_descriptor") and p.track_descriptor.name == "qp1"]
    first = descs[0].track_descriptor
    for extra in descs[1:]:
        d = extra.track_descriptor
        node = Node(d.name, d.uuid, first.parent_uuid, "", first.sibling_order_rank)
        assert extra == descriptor(node, has_children=False)


def _cuts_reference(first_end, ends, chunk):
    candidates = ([first_end] if first_end > 0 else []) + list(ends)
    total = candidates[-1] if candidates else 0
    cuts, pos = [0], 0
    while total - pos > chunk:
        fitting = [c for c in candidates if pos < c <= pos + chunk]
        pos = max(fitting) if fitting else min(c for c in candidates if c > pos)
        cuts.append(pos)
    if total > pos:
        cuts.append(total)
    return cuts


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 50), st.lists(st.integers(1, 60), max_size=30), st.integers(1, 100))
def test_chunks_are_cut_greedily_at_row_ends(first_end, rows, chunk):
    ends = np.cumsum([first_end] + rows)[1:].astype(np.int64)
    cuts = np.empty(len(rows) + 3, np.int64)
    m = wire._chunk_cuts(first_end, ends, chunk, cuts)
    assert cuts[:m].tolist() == _cuts_reference(first_end, ends.tolist(), chunk)


def _with_rules(data, batch):
    """``batch`` with presence rules on some int annotations, and the same batch with the
    presence those rules give written out (for the reference encoder)."""
    import copy

    k, n = batch.ann_iid.shape[0], batch.n
    r = data.draw(st.integers(1, 4))
    implied = np.array(data.draw(st.lists(st.lists(st.integers(-2, 2), min_size=r, max_size=r), min_size=3,
                                          max_size=3)), np.int64)
    res = np.array(data.draw(st.lists(st.integers(0, r - 1), min_size=n, max_size=n)), np.int64)
    rule = np.array([-1 if batch.ann_interned[a] else data.draw(st.integers(-1, 3)) for a in range(k)], np.int64)
    ref = np.array(data.draw(st.lists(st.integers(-2, 2), min_size=k, max_size=k)), np.int64)
    for a in range(k):
        if rule[a] >= 0:
            batch.ann_vals[a] = np.array(data.draw(st.lists(st.integers(-2, 2), min_size=n, max_size=n)), np.int64)
    expected = copy.deepcopy(batch)
    for a in range(k):
        if rule[a] == 0:
            expected.ann_present[a] = batch.ann_vals[a] != ref[a]
        elif rule[a] > 0:
            expected.ann_present[a] = batch.ann_vals[a] != implied[rule[a] - 1][res]
    batch.ann_rule, batch.ann_ref, batch.implied, batch.res = rule, ref, implied, res
    return batch, expected


@settings(max_examples=60, deadline=None)
@given(slice_batches(), st.binary(max_size=300), st.integers(1, 400), st.data())
def test_slice_writer_jobs_are_the_packets_prefixed_and_bundled(batch, prefix, chunk, data):
    import zlib

    batch, expected = _with_rules(data, batch)
    packets = prefix + wire.encode_slices_reference(expected)
    plain = b"".join(bytes(p) for p in wire.slice_writer(batch)(prefix, False, chunk))
    assert plain == packets
    bundled = b"".join(bytes(p) for p in wire.slice_writer(batch)(prefix, True, chunk))
    inner = [zlib.decompress(p.compressed_packets) for p in pb.Trace.FromString(bundled).packet]
    assert b"".join(inner) == packets
    _data, ends = wire.encode_slices(batch)
    row_ends = [len(prefix)] * bool(prefix) + [len(prefix) + int(e) for e in ends]
    assert [len(x) for x in inner] == np.diff(_cuts_reference(len(prefix), row_ends[bool(prefix):], chunk)).tolist()


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_presence_rules(data):
    """An int annotation is present where it differs from its default, or from the value the row's
    resource implies; rule -1 keeps the given presence."""
    n, k, r = data.draw(st.integers(0, 20)), data.draw(st.integers(0, 4)), data.draw(st.integers(1, 5))
    small = st.integers(-2, 2)
    vals = np.array(data.draw(st.lists(st.lists(small, min_size=n, max_size=n), min_size=k, max_size=k)),
                    np.int64).reshape(k, n)
    given_present = np.array(data.draw(st.lists(st.lists(st.booleans(), min_size=n, max_size=n), min_size=k,
                                                max_size=k)), np.bool_).reshape(k, n)
    rule = np.array(data.draw(st.lists(st.integers(-1, 3), min_size=k, max_size=k)), np.int64)
    ref = np.array(data.draw(st.lists(small, min_size=k, max_size=k)), np.int64)
    implied = np.array(data.draw(st.lists(st.lists(small, min_size=r, max_size=r), min_size=3, max_size=3)), np.int64)
    res = np.array(data.draw(st.lists(st.integers(0, r - 1), min_size=n, max_size=n)), np.int64)
    present = given_present.copy()
    wire._resolve_presence(vals, present, rule, ref, implied, res)
    for a in range(k):
        want = (given_present[a] if rule[a] < 0 else vals[a] != ref[a] if rule[a] == 0
                else vals[a] != implied[rule[a] - 1][res])
        assert present[a].tolist() == want.tolist()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 50)), max_size=40), st.lists(st.integers(0, 9), min_size=5,
                                                                                         max_size=5))
def test_running_delta_equals_a_loop(rows, start):
    from tracekit.io.perfetto.packets import running_delta

    key = np.array([k for k, _ in rows], np.int64)
    ts = np.cumsum([d for _, d in rows]).astype(np.int64)
    last = np.array(start, np.int64)
    want_last = last.copy()
    want = []
    for k, t in zip(key.tolist(), ts.tolist()):
        want.append(t - want_last[k])
        want_last[k] = t
    assert running_delta(key, ts, last).tolist() == want and last.tolist() == want_last.tolist()
