import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tracekit import schemas
from tracekit.errors import TracekitError
from tracekit.io.tables import read_table, write_table
from tracekit.workload import Routing, RoutingMeta, bytes_per_token
from same_bytes import assert_same_bytes


def _routing(n=6, k=3):
    rng = np.random.default_rng(0)
    meta = RoutingMeta(num_experts=8, ep_size=2, gpus_per_node=2, hidden=256)
    return Routing(
        step=np.zeros(n, np.int32), layer=np.zeros(n, np.int32), rank=np.repeat([0, 1], n // 2).astype(np.int32),
        token=np.tile(np.arange(n // 2), 2).astype(np.int32),
        topk_expert=np.stack([rng.permutation(8)[:k] for _ in range(n)]).astype(np.int32),
        topk_weight=rng.random((n, k)).astype(np.float32), meta=meta,
    )


def test_every_schema_file_loads_with_units_and_descriptions():
    found = schemas.available()
    assert {"routing.v1", "events.v1", "counters.v1", "traffic.v1"} <= set(found)
    for s in found.values():
        for f in s.fields:
            assert f.unit and f.description, (s.id, f.name)


def test_routing_round_trip(tmp_path):
    r = _routing()
    path = write_table(r.to_arrow(), tmp_path / "r.parquet", "routing", r.meta.to_dict())
    table, meta, s = read_table(path, "routing")
    assert s.id == "routing.v1"
    back = Routing.from_arrow(table, meta)
    np.testing.assert_array_equal(back.topk_expert, r.topk_expert)
    np.testing.assert_array_equal(back.topk_weight, r.topk_weight)
    assert back.meta == r.meta


def test_write_is_deterministic(tmp_path):
    r = _routing()
    a = write_table(r.to_arrow(), tmp_path / "a.parquet", "routing", r.meta.to_dict()).read_bytes()
    b = write_table(r.to_arrow(), tmp_path / "b.parquet", "routing", r.meta.to_dict()).read_bytes()
    assert_same_bytes(a, b, "two writes")


def test_wrong_schema_version_is_one_clear_error(tmp_path):
    r = _routing()
    t = r.to_arrow()
    md = dict(t.schema.metadata)
    md[schemas.SCHEMA_KEY] = b"routing.v9"
    pq.write_table(t.replace_schema_metadata(md), tmp_path / "v9.parquet")
    with pytest.raises(TracekitError, match=r"v9.parquet: schema routing.v9 is not supported"):
        read_table(tmp_path / "v9.parquet", "routing")


def test_missing_column_names_column_and_fix(tmp_path):
    t = pa.table({"ts_ns": pa.array([1], pa.int64())})
    with pytest.raises(TracekitError, match="missing column dur_ns"):
        schemas.conform(t, "events")


def test_events_defaults_are_filled():
    t = pa.table({"ts_ns": [0], "dur_ns": [5], "rank": [0], "resource": ["rank0/hbm"], "stage": ["pack"],
                  "name": ["pack"]})
    out = schemas.conform(t, "events", {"source": "test"})
    assert out.column("msg_id").to_pylist() == [-1]
    assert out.column("flow_out").null_count == 1
    assert json.loads(out.schema.metadata[schemas.META_KEY]) == {"source": "test"}


@pytest.mark.parametrize("dtype,expected", [("bf16", 14336), ("fp8", 7168 + 4 * 56), ("int8", 7168 + 224)])
def test_bytes_per_token(dtype, expected):
    assert bytes_per_token(7168, dtype) == expected
