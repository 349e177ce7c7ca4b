"""check_trace on hand-built memops tables (the rows a replay records) and on fuzzer executions."""

import random

import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings

from tracekit import schemas
from tracekit.errors import TracekitError
from tracekit.hazards import Execution, check_trace
from tracekit.hazards.protocols import PROTOCOLS
from tracekit.hazards.trace import to_events, to_memops
from tracekit.testing import executions


class Rows:
    """Builds a memops table row by row, as a replay engine would record it."""

    def __init__(self, with_rf: bool = True) -> None:
        self.rows: list[dict] = []
        self.with_rf = with_rf

    def add(self, actor: str, op: str, **kw) -> int:
        seq = len(self.rows)
        row = {"seq": seq, "ts_ns": 100 * seq, "rank": int(actor[4]), "actor": actor, "op": op, **kw}
        if not self.with_rf:
            row.pop("rf", None)
        self.rows.append(row)
        return seq

    def table(self) -> pl.DataFrame:
        return pl.DataFrame(self.rows)


class Ring:
    """An RDMA ring from rank 0 to rank 1 with 2 slots and 2 credits (credits returned by RDMA
    atomic), recorded the way a replay engine records it: the sender posts an RDMA write of the
    slot and an RDMA atomic on the tail on the same QP, the NIC delivers them, the receiver waits
    for the tail (acquire), copies the slot out and releases it, credits come back by atomic, and
    the sender reaps its completions."""

    def __init__(self, with_rf: bool) -> None:
        self.r = Rows(with_rf)
        self.credits, self.credits_w, self.tail_w = 2, -1, -1
        self.slot_w: dict[int, int] = {}
        self.posts: list[int] = []

    def send(self, i: int) -> None:
        r, snd = self.r, "rank0/sm/ch0"
        r.add(snd, "wait", target_rank=0, var="credits", value=self.credits, cmp=">=", expect=1,
              ordering="acquire", rf=self.credits_w, capacity=2)
        self.credits -= 1
        self.credits_w = r.add(snd, "rmw", target_rank=0, var="credits", value=self.credits, rf=self.credits_w,
                               capacity=2)
        self.posts.append(r.add(snd, "put", target_rank=1, var="ring", slot=i % 2, value=i + 1, qp=0,
                                sq_depth=8, cq_depth=8))
        self.posts.append(r.add(snd, "atomic", target_rank=1, var="tail", value=1, qp=0, sq_depth=8, cq_depth=8))

    def land(self, i: int) -> None:
        put, tail = self.posts[2 * i], self.posts[2 * i + 1]
        self.slot_w[i] = self.r.add("rank1/hbm", "deliver", target_rank=1, var="ring", slot=i % 2, value=i + 1,
                                    ref=put)
        self.tail_w = self.r.add("rank1/hbm", "deliver", target_rank=1, var="tail", value=i + 1, ref=tail,
                                 rf=self.tail_w)

    def wait_tail(self, i: int) -> None:
        self.r.add("rank1/sm/ch0", "wait", target_rank=1, var="tail", value=i + 1, cmp=">=", expect=i + 1,
                   ordering="acquire", rf=self.tail_w)

    def copy_out(self, i: int) -> None:
        rcv = "rank1/sm/ch0"
        self.r.add(rcv, "load", target_rank=1, var="ring", slot=i % 2, value=i + 1, ordering="plain",
                   rf=self.slot_w[i])
        self.r.add(rcv, "slot_release", target_rank=1, var="ring", slot=i % 2, value=i + 1, rf=self.slot_w[i])

    def credit(self) -> None:
        back = self.r.add("rank1/sm/ch0", "atomic", target_rank=0, var="credits", value=1, qp=0, capacity=2)
        self.credits += 1
        self.credits_w = self.r.add("rank0/hbm", "deliver", target_rank=0, var="credits", value=self.credits,
                                    ref=back, rf=self.credits_w, capacity=2)

    def reap(self) -> None:
        for p in self.posts:
            self.r.add("rank0/sm/ch0", "cq_poll", qp=0, ref=p)


def ring_replay(credit_early: bool, with_rf: bool = True) -> pl.DataFrame:
    """Three messages through the two-slot ring. Early credits: the receiver returns the credit of
    message 0 as soon as it sees the tail; the sender takes it and posts message 2 into slot 0, but
    the receiver copies slot 0 out before that write lands, so nothing goes wrong *in this run*."""
    g = Ring(with_rf)
    g.send(0), g.send(1), g.land(0), g.land(1)
    g.wait_tail(0)
    if credit_early:
        g.credit()
        g.send(2)          # reuses slot 0 on the strength of a credit returned before the copy
        g.copy_out(0)      # ... which the replay's timing still lets finish first
    else:
        g.copy_out(0)
        g.credit()
        g.send(2)
    g.land(2)
    for i in (1, 2):
        g.wait_tail(i)
        if credit_early:
            g.credit()
        g.copy_out(i)
        if not credit_early:
            g.credit()
    g.reap()
    return g.r.table()


@pytest.mark.parametrize("with_rf", [True, False])
def test_ring_with_credits_returned_early_is_caught_on_a_replay_where_nothing_went_wrong(with_rf):
    good = check_trace(ring_replay(credit_early=False, with_rf=with_rf))
    assert good == []
    bad = check_trace(ring_replay(credit_early=True, with_rf=with_rf))
    assert [(h.name, h.manifest) for h in bad] == [("slot_overwrite", False)]
    h = bad[0]
    assert "ring[0]@rank1" in h.message and "another ordering" in h.message
    rows = ring_replay(credit_early=True, with_rf=with_rf).to_dicts()
    shown = [(rows[e]["actor"], rows[e]["op"], rows[e]["var"], rows[e]["value"]) for e in h.events]
    # the witness: message 0's write of slot 0, the credit returned before its copy-out, the
    # sender taking that credit and writing message 2 into slot 0, and the release it may overtake
    assert shown == [
        ("rank0/sm/ch0", "put", "ring", 1), ("rank1/hbm", "deliver", "ring", 1),
        ("rank1/sm/ch0", "atomic", "credits", 1), ("rank0/hbm", "deliver", "credits", 1),
        ("rank0/sm/ch0", "wait", "credits", 1), ("rank0/sm/ch0", "put", "ring", 3),
        ("rank1/sm/ch0", "slot_release", "ring", 1), ("rank1/hbm", "deliver", "ring", 3),
    ]


def test_a_real_overwrite_in_a_replay_is_manifest():
    # the same ring, but the receiver is slow: the third message lands before slot 0 is released
    r = Rows()
    snd, rcv = "rank0/sm/ch0", "rank1/sm/ch0"
    writes = []
    for i in range(3):
        p = r.add(snd, "put", target_rank=1, var="ring", slot=i % 2, value=i + 1, qp=0)
        writes.append(r.add("rank1/hbm", "deliver", target_rank=1, var="ring", slot=i % 2, value=i + 1, ref=p))
    r.add(rcv, "load", target_rank=1, var="ring", slot=0, value=3, rf=writes[2])
    r.add(rcv, "slot_release", target_rank=1, var="ring", slot=0, value=3, rf=writes[2])
    found = check_trace(r.table(), complete=False)
    assert found[0].name == "slot_overwrite" and found[0].manifest
    assert set(found[0].events) >= {0, 1, 4, 5}


def test_stale_read_possible_when_the_flag_is_not_ordered_after_the_data():
    # data and flag on a multipath QP (distinct paths): the data happened to land first
    r = Rows()
    d = r.add("rank0/sm/w", "put", target_rank=1, var="buf", slot=0, value=7, qp=0, path=1)
    f = r.add("rank0/sm/w", "put", target_rank=1, var="flag", value=1, qp=0, path=2)
    dw = r.add("rank1/hbm", "deliver", target_rank=1, var="buf", slot=0, value=7, ref=d)
    fw = r.add("rank1/hbm", "deliver", target_rank=1, var="flag", value=1, ref=f)
    r.add("rank1/sm/r", "wait", target_rank=1, var="flag", value=1, cmp=">=", expect=1, ordering="acquire", rf=fw)
    r.add("rank1/sm/r", "load", target_rank=1, var="buf", slot=0, value=7, ordering="plain", rf=dw)
    r.add("rank1/sm/r", "slot_release", target_rank=1, var="buf", slot=0, value=7, rf=dw)
    found = check_trace(r.table())
    assert [(h.name, h.manifest) for h in found] == [("stale_read_after_flag", False)]
    # same path: in order, no hazard
    same = r.table().with_columns(pl.when(pl.col("op") == "put").then(1).otherwise(-1).alias("path"))
    assert check_trace(same) == []


def test_queue_and_fault_hazards_from_rows():
    r = Rows()
    a, b = (r.add("rank0/sm/w", "put", target_rank=1, var="x", value=v, qp=0, sq_depth=1, cq_depth=4) for v in (1, 2))
    assert [h.name for h in check_trace(r.table(), complete=False)] == ["send_queue_overflow"]
    r = Rows()
    r.add("rank1/sm/o", "unmap", target_rank=1, var="win")
    p = r.add("rank0/sm/w", "put", target_rank=1, var="x", value=1, qp=0, region="win")
    r.add("rank1/hbm", "deliver", target_rank=1, var="x", value=1, ref=p, region="win")
    assert [h.name for h in check_trace(r.table())] == ["access_after_unmap"]
    r = Rows()
    p = r.add("rank0/sm/w", "put", target_rank=1, var="x", value=1, qp=0)
    r.add("rank1/hbm", "deliver", target_rank=1, var="x", value=1, ref=p)
    r.add("rank1/hbm", "deliver", target_rank=1, var="x", value=1, ref=p)
    assert [h.name for h in check_trace(r.table())] == ["duplicated_delivery"]
    r = Rows()
    r.add("rank0/sm/w", "put", target_rank=1, var="x", value=1, qp=0)
    assert [h.name for h in check_trace(r.table())] == ["lost_delivery"]
    assert check_trace(r.table(), complete=False) == []


@pytest.mark.parametrize("change, match", [
    ({"op": "teleport"}, "unknown op 'teleport'"),
    ({"ordering": "seq_cst"}, "unknown ordering"),
    ({"seq": 0}, "does not follow"),
])
def test_malformed_tables_name_the_row(change, match):
    rows = ring_replay(credit_early=False).to_dicts()
    rows[3].update(change)
    with pytest.raises(TracekitError, match=match) as err:
        check_trace(pl.DataFrame(rows))
    assert "row 3" in str(err.value)
    with pytest.raises(TracekitError, match="missing column actor"):
        check_trace(pa.table({"seq": [0], "rank": [0], "op": ["load"]}))


def test_deliver_must_refer_to_a_post():
    r = Rows()
    r.add("rank1/hbm", "deliver", target_rank=1, var="x", value=1, ref=5)
    with pytest.raises(TracekitError, match="not an earlier put or atomic"):
        check_trace(r.table())


@pytest.mark.parametrize("name", ["ring_buffer", "rdma_ring", "low_latency", "zero_buffer", "eager"])
def test_correct_protocols_are_clean_under_happens_before(name):
    """No hazard, manifest or possible, on random complete runs of every correct protocol: the
    checker's happens-before agrees with the engine's views."""
    spec = PROTOCOLS[name]
    rng = random.Random(11)
    for variant in spec.correct:
        for _ in range(25):
            sizes = {k: rng.randint(lo, hi) for k, (lo, hi) in spec.sizes.items()}
            ex = Execution(spec.build(variant, **sizes), record=True)
            ex.run(lambda n: int(rng.random() * n))
            assert ex.hazard is None
            assert check_trace(to_memops(ex)) == [], (variant, sizes)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(executions(PROTOCOLS["rdma_ring"], "credit_before_consume"))
def test_checker_names_the_engines_hazard(ex):
    table = to_memops(ex)
    found = check_trace(table, complete=ex.finished)
    if ex.hazard is not None:
        assert any(h.name == ex.hazard.name and h.manifest for h in found)
    else:
        assert all(not h.manifest for h in found)
    events = to_events(table, found)
    assert events.height == table.num_rows


def test_events_table_has_flows_for_deliveries_and_completions():
    memops = schemas.conform(ring_replay(False), "memops")
    ev = to_events(memops)
    outs = set(ev["flow_out"].drop_nulls())
    ins = set(ev["flow_in"].drop_nulls())
    # 6 posts -> deliveries, 3 credit atomics -> deliveries, 6 deliveries -> cq_poll
    assert outs == ins and len(outs) == 6 + 3 + 6
    assert set(ev["resource"]) == {"rank0/sm/ch0", "rank1/sm/ch0", "rank1/hbm", "rank0/hbm"}
    assert (ev["ts_ns"].diff().drop_nulls() > 0).all()
