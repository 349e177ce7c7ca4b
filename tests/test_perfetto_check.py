"""The checker applies the importer's rules and names the first violation."""

import polars as pl
import pytest

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from tracekit.errors import TracekitError
from tracekit.io.perfetto import encode as wire
from tracekit.io.perfetto import write_trace
from tracekit.io.perfetto.check import check_trace, iter_frames, validate_pftrace

SEQ = 7


def _track(uuid, name, parent=0, counter=False):
    p = pb.TracePacket()
    p.track_descriptor.uuid = uuid
    p.track_descriptor.name = name
    if parent:
        p.track_descriptor.parent_uuid = parent
    if counter:
        p.track_descriptor.counter.SetInParent()
    return p


def _first():
    """Sequence start: cleared state, interned name 1 = "work" and annotation name 1 = "bytes"."""
    p = pb.TracePacket(trusted_packet_sequence_id=SEQ, sequence_flags=pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED)
    p.interned_data.event_names.add(iid=1, name="work")
    p.interned_data.debug_annotation_names.add(iid=1, name="bytes")
    return p


def _ev(ts, typ, track=1, name_iid=1, flow=None, term=None, seq=SEQ):
    p = pb.TracePacket(timestamp=ts, trusted_packet_sequence_id=seq)
    te = p.track_event
    te.type = typ
    te.track_uuid = track
    if typ in (1, 3):
        te.name_iid = name_iid
    if flow is not None:
        te.flow_ids.append(flow)
    if term is not None:
        te.terminating_flow_ids.append(term)
    return p


def _write(tmp_path, packets):
    path = tmp_path / "t.pftrace"
    path.write_bytes(b"".join(wire.frame(p) for p in packets))
    return path


def _base():
    return [_track(1, "lane"), _track(2, "other"), _track(3, "ctr", counter=True), _first()]


def test_a_valid_hand_written_trace_passes(tmp_path):
    path = _write(tmp_path, _base() + [_ev(10, 1, flow=5), _ev(20, 2), _ev(30, 1, track=2, term=5),
                                       _ev(40, 2, track=2), _ev(45, 3)])
    report = check_trace(path)
    assert (report.slices, report.instants, report.flows) == (2, 1, 1)
    assert str(validate_pftrace(path)).startswith(f"ok: {path} (perfetto trace: 2 slices, 1 instants, 1 flows")


@pytest.mark.parametrize("packets,message", [
    ([_ev(10, 1)], r"packet 4, track lane \(uuid 1\), ts 10 ns: slice begun here is never ended"),
    ([_ev(10, 2)], r"SLICE_END with no open slice"),
    ([_ev(10, 1, flow=5), _ev(20, 2), _ev(30, 1, flow=5), _ev(40, 2)], r"flow id 5 started twice"),
    ([_ev(10, 1, term=9), _ev(20, 2)], r"flow id 9 is terminated but never started"),
    ([_ev(10, 1, flow=9), _ev(20, 2)], r"flow id 9 is started but never terminated"),
    ([_ev(50, 1), _ev(40, 2)], r"packet 5.*timestamp goes backwards on sequence 7"),
    ([_ev(10, 1, name_iid=4), _ev(20, 2)], r"event name iid 4 is not defined on sequence 7"),
    ([_ev(10, 1, track=99)], r"uuid 99, which no earlier TrackDescriptor declares"),
    ([_ev(10, 4, track=1)], r"counter value on a track that is not a counter track"),
    ([_ev(10, 1, track=3)], r"slice event on a counter track"),
    ([_ev(10, 1, seq=8), _ev(20, 2, seq=8)], r"event name iid 1 is not defined on sequence 8"),
    ([_track(4, "orphan", parent=77)], r"parent uuid 77 of track 'orphan' is never declared"),
    ([_track(1, "renamed")], r"track uuid 1 declared twice with different contents"),
])
def test_planted_violations_are_named(tmp_path, packets, message):
    path = _write(tmp_path, _base() + packets)
    with pytest.raises(TracekitError, match=message) as exc:
        check_trace(path)
    assert str(exc.value).startswith(str(path))
    assert "\n" not in str(exc.value)


def test_interned_data_before_the_state_is_cleared_is_dropped_by_the_importer(tmp_path):
    p = pb.TracePacket(trusted_packet_sequence_id=SEQ)
    p.interned_data.event_names.add(iid=1, name="work")
    with pytest.raises(TracekitError, match="before its incremental state was cleared"):
        check_trace(_write(tmp_path, [_track(1, "lane"), p]))


def test_overlap_across_sequences_is_not_nesting(tmp_path):
    other = pb.TracePacket(trusted_packet_sequence_id=8, sequence_flags=1)
    other.interned_data.event_names.add(iid=1, name="work")
    packets = _base() + [other, _ev(10, 1), _ev(30, 2), _ev(20, 1, seq=8), _ev(40, 2, seq=8)]
    with pytest.raises(TracekitError, match="slices of one track overlap without nesting"):
        check_trace(_write(tmp_path, packets))


def test_a_written_trace_with_a_packet_removed_fails(tmp_path):
    ev = pl.DataFrame({"ts_ns": [0, 100], "dur_ns": [50, 50], "rank": [0, 0], "resource": ["node0/rank0/hbm"] * 2,
                       "stage": ["a", "b"], "name": ["a", "b"], "flow_out": [1, None], "flow_in": [None, 1]})
    path = write_trace(tmp_path / "w.pftrace", ev, compress=False)
    check_trace(path)
    frames = [raw for _o, raw in iter_frames(path.read_bytes(), "t")]
    ends = [k for k, raw in enumerate(frames) if pb.TracePacket.FromString(raw).track_event.type == 2]
    broken = b"".join(b"\x0a" + wire.varint_bytes(len(r)) + r for k, r in enumerate(frames) if k != ends[-1])
    (tmp_path / "w.pftrace").write_bytes(broken)
    with pytest.raises(TracekitError, match="never ended"):
        check_trace(path)


def test_truncated_and_foreign_files(tmp_path):
    ev = pl.DataFrame({"ts_ns": [0], "dur_ns": [5], "rank": [0], "resource": ["node0/rank0/hbm"], "stage": ["a"],
                       "name": ["a"]})
    data = write_trace(tmp_path / "w.pftrace", ev).read_bytes()
    (tmp_path / "cut.pftrace").write_bytes(data[:-3])
    with pytest.raises(TracekitError, match="runs past the end|truncated"):
        check_trace(tmp_path / "cut.pftrace")
    (tmp_path / "j.pftrace").write_text('{"traceEvents": []}')
    with pytest.raises(TracekitError, match="not a Perfetto protobuf trace|does not parse"):
        check_trace(tmp_path / "j.pftrace")
    with pytest.raises(TracekitError, match="no such file"):
        check_trace(tmp_path / "missing.pftrace")


def test_tracekit_validate_dispatches_pftrace(tmp_path, capsys):
    from tracekit.cli import main

    ev = pl.DataFrame({"ts_ns": [0], "dur_ns": [5], "rank": [0], "resource": ["node0/rank0/hbm"], "stage": ["a"],
                       "name": ["a"]})
    good = write_trace(tmp_path / "g.pftrace", ev)
    assert main(["validate", str(good)]) == 0
    assert "perfetto trace: 1 slices" in capsys.readouterr().out
    bad = _write(tmp_path, _base() + [_ev(10, 1)])
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "never ended" in err and err.count("\n") == 1
