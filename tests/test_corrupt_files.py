"""Corrupted files must give one clean error line (exit 2), never a traceback or another exception."""

import functools
import io
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracekit import schemas
from tracekit.cli import main
from tracekit.errors import TracekitError
from tracekit.io.tables import write_table
from tracekit.io.validate import FileSummary, validate_file
from tracekit.workload.layout import traffic_meta, traffic_table
from tracekit.workload.synth import SynthConfig, synth


def _bytes_of(table: pa.Table, kind: str, meta: dict, tmp) -> bytes:
    path = tmp / f"{kind}.parquet"
    write_table(table, path, kind, meta)
    return path.read_bytes()


@functools.cache
def _originals() -> dict[str, bytes]:
    tmp = Path(tempfile.mkdtemp(prefix="tracekit-corrupt-"))
    r = synth(SynthConfig(ep=4, gpus_per_node=2, experts=16, topk=4, tokens=6, masked=2))
    events = pa.table({"ts_ns": [0, 10, 20], "dur_ns": [5, 5, 5], "rank": [0, 1, -1],
                       "resource": ["rank0/nic0", "rank1/nic0", "switch0/port1"], "stage": ["pack", "nic_send", "fabric"],
                       "name": ["a", "b", "c"]})
    counters = pa.table({"ts_ns": [0, 5, 9], "resource": ["q0", "q1", "q0"], "counter": ["queue_bytes"] * 3,
                         "value": [1.0, 2.0, 0.0]})
    out = {
        "routing": _bytes_of(r.to_arrow(), "routing", r.meta.to_dict(), tmp),
        "events": _bytes_of(events, "events", {"source": "test", "ep_size": 2}, tmp),
        "counters": _bytes_of(counters, "counters", {"source": "test"}, tmp),
        "traffic": _bytes_of(traffic_table(r), "traffic", traffic_meta(r), tmp),
    }
    shutil.rmtree(tmp)
    return out


@pytest.fixture
def originals():
    """Valid files of each kind, as bytes (not a Hypothesis argument, so failures stay readable)."""
    return _OriginalBytes()


class _OriginalBytes(dict):
    def __init__(self) -> None:
        super().__init__(_originals())

    def __repr__(self) -> str:
        return "<valid routing/events/counters/traffic files>"


def _check_clean(path, capsys) -> None:
    """validate_file raises only TracekitError; the CLI answers 0, or 2 with exactly one error line."""
    try:
        assert isinstance(validate_file(path), FileSummary)
    except TracekitError as exc:
        assert "\n" not in str(exc)
    for command in ("validate", "info"):
        code = main([command, str(path)])
        out, err = capsys.readouterr()
        assert code in (0, 2), (command, code, err)
        assert "Traceback" not in err
        if code == 2:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("tracekit: error: "), err


KINDS = st.sampled_from(["routing", "events", "counters", "traffic"])
_SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_SETTINGS
@given(kind=KINDS, data=st.data())
def test_truncated_files(originals, tmp_path, capsys, kind, data):
    raw = originals[kind]
    cut = data.draw(st.integers(0, len(raw) - 1))
    path = tmp_path / "t.parquet"
    path.write_bytes(raw[:cut])
    _check_clean(path, capsys)


@_SETTINGS
@given(kind=KINDS, data=st.data())
def test_random_byte_flips(originals, tmp_path, capsys, kind, data):
    raw = bytearray(originals[kind])
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(1, 255)), min_size=1, max_size=8))
    for pos, mask in flips:
        raw[pos] ^= mask
    path = tmp_path / "f.parquet"
    path.write_bytes(bytes(raw))
    _check_clean(path, capsys)


def _table(raw: bytes) -> pa.Table:
    return pq.read_table(io.BytesIO(raw))


_ODD_VALUES = st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from([-1, -2, 0, 2**31 - 1, 16, 255, 300]))


@_SETTINGS
@given(kind=KINDS, data=st.data())
def test_out_of_range_values(originals, tmp_path, capsys, kind, data):
    t = _table(originals[kind])
    names = [f.name for f in t.schema if pa.types.is_integer(f.type) or pa.types.is_list(f.type)
             or pa.types.is_floating(f.type)]
    name = data.draw(st.sampled_from(names))
    col = t.column(name).to_pylist()
    row = data.draw(st.integers(0, len(col) - 1))
    typ = t.schema.field(name).type
    if pa.types.is_list(typ):
        j = data.draw(st.integers(0, len(col[row]) - 1))
        col[row][j] = data.draw(_ODD_VALUES if pa.types.is_integer(typ.value_type)
                                else st.floats(allow_nan=True, allow_infinity=True, width=32))
    elif pa.types.is_integer(typ):
        col[row] = data.draw(_ODD_VALUES)
    else:
        col[row] = data.draw(st.floats(allow_nan=True, allow_infinity=True))
    t = t.set_column(t.schema.get_field_index(name), name, pa.array(col, typ))
    path = tmp_path / "v.parquet"
    pq.write_table(t, path)
    _check_clean(path, capsys)


@_SETTINGS
@given(kind=KINDS, data=st.data())
def test_wrong_column_types(originals, tmp_path, capsys, kind, data):
    t = _table(originals[kind])
    name = data.draw(st.sampled_from(t.column_names))
    values = t.column(name).to_pylist()
    replacement = data.draw(st.sampled_from(["string", "float", "bool", "list<str>", "null", "drop"]))
    i = t.schema.get_field_index(name)
    if replacement == "drop":
        t = t.remove_column(i)
    else:
        arr = {
            "string": lambda: pa.array([str(v) for v in values]),
            "float": lambda: pa.array([1.5] * len(values)),
            "bool": lambda: pa.array([True] * len(values)),
            "list<str>": lambda: pa.array([["x"]] * len(values)),
            "null": lambda: pa.nulls(len(values), t.schema.field(name).type),
        }[replacement]()
        t = t.set_column(i, name, arr)
    path = tmp_path / "w.parquet"
    pq.write_table(t, path)
    _check_clean(path, capsys)


@_SETTINGS
@given(kind=KINDS, data=st.data())
def test_wrong_schema_and_metadata(originals, tmp_path, capsys, kind, data):
    t = _table(originals[kind])
    md = dict(t.schema.metadata)
    meta = json.loads(md[schemas.META_KEY])
    what = data.draw(st.sampled_from(["version", "kind", "no_schema", "bad_json", "meta_value", "drop_meta_key"]))
    if what == "version":
        md[schemas.SCHEMA_KEY] = f"{kind}.v{data.draw(st.integers(2, 99))}".encode()
    elif what == "kind":
        md[schemas.SCHEMA_KEY] = data.draw(st.sampled_from([b"routing.v1", b"events.v1", b"traffic.v1", b"hardware.v1",
                                                            b"nonsense", b"\xff\xfe"]))
    elif what == "no_schema":
        del md[schemas.SCHEMA_KEY]
    elif what == "bad_json":
        md[schemas.META_KEY] = data.draw(st.sampled_from([b"{", b"[]", b"null", b"\xff", b'"x"']))
    elif meta:
        key = data.draw(st.sampled_from(sorted(meta)))
        if what == "drop_meta_key":
            del meta[key]
        else:
            meta[key] = data.draw(st.one_of(st.integers(-5, 10**12), st.text(max_size=5), st.none(),
                                             st.floats(allow_nan=True), st.booleans(), st.lists(st.integers(), max_size=2)))
        md[schemas.META_KEY] = json.dumps(meta).encode()
    path = tmp_path / "m.parquet"
    pq.write_table(t.replace_schema_metadata(md), path)
    _check_clean(path, capsys)


def test_every_byte_prefix_of_a_small_file(originals, tmp_path, capsys):
    """Truncation at every footer position, where Parquet readers are most fragile."""
    raw = originals["counters"]
    for cut in list(range(0, 16)) + list(range(len(raw) - 64, len(raw))):
        path = tmp_path / f"p{cut}.parquet"
        path.write_bytes(raw[:cut])
        _check_clean(path, capsys)


def test_corrupt_routing_values_are_named(originals, tmp_path):
    t = _table(originals["routing"])
    experts = t.column("topk_expert").to_pylist()
    experts[17][1] = 300
    t = t.set_column(4, "topk_expert", pa.array(experts, pa.list_(pa.int32())))
    pq.write_table(t, tmp_path / "r.parquet")
    with pytest.raises(TracekitError, match=r"r.parquet: column topk_expert row 17: expert 300 out of range \[0, 16\)"):
        validate_file(tmp_path / "r.parquet")
