"""The compiled wire encoder writes exactly what the protobuf bindings serialize."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from tracekit.io import perfetto_wire as wire

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


def test_hand_built_control_packets_equal_the_bindings():
    from tracekit.io.perfetto_state import interned_packet, sequence_start, sequence_start_bytes

    for seq, uuid in [(1, 1), (127, 128), (300, 1 << 40)]:
        assert sequence_start_bytes(seq, uuid) == wire.frame(sequence_start(seq, uuid))
    p = pb.TracePacket(trusted_packet_sequence_id=300)
    p.interned_data.event_names.add(iid=1, name="pack")
    p.interned_data.debug_annotation_names.add(iid=3, name="msg_id")
    p.interned_data.debug_annotation_string_values.add(iid=200, str=b"dispatch")
    entries = [b"\x12" + wire.varint_bytes(len(e)) + e for e in [p.interned_data.event_names[0].SerializeToString()]]
    entries += [b"\x1a" + wire.varint_bytes(len(e)) + e for e in [p.interned_data.debug_annotation_names[0].SerializeToString()]]
    e = p.interned_data.debug_annotation_string_values[0].SerializeToString()
    entries.append(b"\xea\x01" + wire.varint_bytes(len(e)) + e)
    assert interned_packet(300, entries) == wire.frame(p)


def test_extra_lane_descriptors_equal_the_bindings(tmp_path):
    import polars as pl

    from tracekit.io.perfetto import write_trace
    from tracekit.io.perfetto_check import iter_frames
    from tracekit.io.perfetto_tracks import descriptor, Node

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
