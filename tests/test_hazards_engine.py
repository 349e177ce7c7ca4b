"""The memory-operation model, one rule at a time, on tiny programs explored exhaustively."""

import pytest

from tracekit.errors import TracekitError
from tracekit.hazards import Program, exhaustive, run_schedule
from tracekit.hazards.engine import Execution
from tracekit.hazards.explore import Replay


def _hazards(p: Program) -> set:
    return {ex.hazard.name if ex.hazard else None for _, ex in exhaustive(p)}


def _two_puts(multipath=False, fence=False, second="put", two_qps=False):
    """Rank 0 puts data then a flag; rank 1 waits for the flag and consumes the data."""
    p = Program("two_puts")
    data = p.slots("data", 1, 1)[0]
    flag = p.var("flag", 1)
    qp = p.qp(0, 1, multipath=multipath)
    qp2 = p.qp(0, 1, multipath=multipath) if two_qps else qp

    def sender(a):
        yield a.put(data, 7, qp2)
        if fence:
            yield a.fence()
        yield a.atomic_add(flag, 1, qp) if second == "atomic" else a.put(flag, 1, qp)

    def receiver(a):
        yield a.wait(flag, ">=", 1)
        yield a.load(data)
        yield a.consume(data)
    p.spawn(0, "sm/s", sender)
    p.spawn(1, "sm/r", receiver)
    return p


@pytest.mark.parametrize("kw, stale", [
    ({}, False),                                        # one QP, one path: in order
    ({"multipath": True}, True),                        # adaptive routing: the flag may overtake
    ({"multipath": True, "fence": True}, False),        # fence orders delivery to one peer
    ({"multipath": True, "second": "atomic"}, False),   # the NIC orders an atomic after earlier puts
    ({"two_qps": True}, True),                          # nothing orders two QPs
    ({"two_qps": True, "fence": True}, False),          # ... except a fence
])
def test_delivery_rules(kw, stale):
    found = _hazards(_two_puts(**kw))
    assert ("stale_read_after_flag" in found) == stale
    assert found <= {None, "stale_read_after_flag"}


def test_landed_predecessor_still_orders_a_later_put():
    # the data lands before the flag is even posted: the flag's landing must still carry it
    p = _two_puts()
    ex = run_schedule(p, [])
    assert ex.hazard is None and ex.finished


def test_quiet_waits_for_own_messages_and_reaps_completions():
    p = Program("quiet")
    x = p.var("x", 1)
    qp = p.qp(0, 1, sq_depth=1)

    def s(a):
        yield a.put(x, 1, qp)
        yield a.quiet()  # frees the only send-queue entry
        yield a.put(x, 2, qp)
    p.spawn(0, "sm/s", s)
    assert _hazards(p) == {None}


def test_send_queue_overflow_without_reaping():
    p = Program("sq")
    x = p.var("x", 1)
    qp = p.qp(0, 1, sq_depth=1)

    def s(a):
        yield a.put(x, 1, qp)
        yield a.put(x, 2, qp)
    p.spawn(0, "sm/s", s)
    assert _hazards(p) == {"send_queue_overflow"}


def test_cq_overflow_and_poll():
    def prog(poll):
        p = Program("cq")
        x = p.var("x", 1)
        qp = p.qp(0, 1, cq_depth=1)

        def s(a):
            yield a.put(x, 1, qp)
            if poll:
                yield a.poll_cq(qp)
            yield a.put(x, 2, qp)
            if poll:
                yield a.poll_cq(qp)
        p.spawn(0, "sm/s", s)
        return p
    assert _hazards(prog(True)) == {None}
    assert "cq_overflow" in _hazards(prog(False))


def test_doorbell_gates_delivery_and_a_missing_one_loses_the_message():
    def prog(ring):
        p = Program("db")
        x = p.var("x", 1)
        qp = p.qp(0, 1)

        def s(a):
            yield a.put(x, 1, qp, doorbell=False)
            if ring:
                yield a.doorbell(qp)
        p.spawn(0, "sm/s", s)
        return p
    assert _hazards(prog(True)) == {None}
    assert _hazards(prog(False)) == {"lost_delivery"}


def test_credit_bounds():
    p = Program("credits")
    c = p.var("credits", 0, init=1, capacity=1)

    def s(a):
        yield a.add(c, -1)
        yield a.add(c, -1)
    p.spawn(0, "sm/s", s)
    assert _hazards(p) == {"credit_underflow"}
    q = Program("credits2")
    c2 = q.var("credits", 0, init=1, capacity=1)

    def r(a):
        yield a.add(c2, 1)
    q.spawn(0, "sm/r", r)
    assert _hazards(q) == {"credit_overflow"}


def test_unmap_while_a_put_reads_its_source():
    p = Program("unmap")
    reg = p.region("buf", 0)
    src = p.array("buf", 0, 1, region=reg)[0]
    dst = p.var("dst", 1)
    qp = p.qp(0, 1)

    def s(a):
        yield a.store(src, 5)
        yield a.put(dst, qp=qp, src=src)
        yield a.unmap(reg)
    p.spawn(0, "sm/s", s)
    found = _hazards(p)
    assert found == {None, "access_after_unmap"}  # depends on whether the NIC ran before the unmap
    ex = run_schedule(p, [])  # schedule 0: the actor runs first, the put lands after the unmap
    assert ex.hazard.name == "access_after_unmap"


def test_crash_stops_the_rank_and_its_memory():
    p = Program("crash")
    x = p.var("x", 1)
    qp = p.qp(0, 1)

    def s(a):
        yield a.put(x, 1, qp)

    def fault(a):
        yield a.crash()
    p.spawn(0, "sm/s", s)
    p.spawn(1, "fault", fault)
    assert _hazards(p) == {None, "access_to_crashed_rank"}


def test_deadlock_when_a_wait_can_never_hold():
    p = Program("dl")
    x = p.var("x", 0)

    def w(a):
        yield a.wait(x, "==", 1)
    p.spawn(0, "sm/w", w)
    ex = run_schedule(p)
    assert ex.hazard.name == "deadlock" and "x@rank0 == 1" in ex.hazard.message


def test_fetching_atomic_returns_the_old_value():
    p = Program("fetch")
    off = p.var("offset", 1, init=10)
    out = p.var("got", 0)
    qp = p.qp(0, 1)

    def s(a):
        old = yield a.atomic_add(off, 3, qp, fetch=True)
        yield a.store(out, old)
    p.spawn(0, "sm/s", s)
    ex = run_schedule(p)
    assert ex.value(out) == 10 and ex.value(off) == 13


def test_consume_twice_is_a_duplicated_delivery():
    p = Program("dup")
    s = p.slots("s", 0, 1)[0]

    def w(a):
        yield a.store(s, 1)
        yield a.load(s)
        yield a.consume(s)
        yield a.load(s)
        yield a.consume(s)
    p.spawn(0, "sm/w", w)
    assert run_schedule(p).hazard.name == "duplicated_delivery"


def test_unconsumed_slot_at_the_end_is_lost():
    p = Program("lost")
    s = p.slots("s", 0, 1)[0]

    def w(a):
        yield a.store(s, 1)
    p.spawn(0, "sm/w", w)
    assert run_schedule(p).hazard.name == "lost_delivery"


def test_bad_protocols_raise_one_clear_error():
    p = Program("bad")
    x = p.var("x", 0)
    with pytest.raises(TracekitError, match="not a generator function"):
        p.spawn(0, "sm/f", lambda a: None)

    def yields_junk(a):
        yield "store x"
    p.spawn(0, "sm/j", yields_junk)
    with pytest.raises(TracekitError, match="yielded 'store x'"):
        Execution(p)
    q = Program("bad2")
    y = q.var("y", 1)
    qp = q.qp(1, 0)

    def wrong_qp(a):
        yield a.put(y, 1, qp)
    q.spawn(0, "sm/s", wrong_qp)
    with pytest.raises(TracekitError, match="cannot post"):
        run_schedule(q)
    with pytest.raises(TracekitError, match="declared twice"):
        q.var("y", 1)
    o = Program("o")
    z = o.var("z", 0)

    def seq_cst(a):
        yield a.store(z, 1, order="seq_cst")
    o.spawn(0, "sm/o", seq_cst)
    with pytest.raises(TracekitError, match="unknown memory order 'seq_cst'"):
        run_schedule(o)

    def foreign(a):
        yield a.store(x, 1)  # a location of another program
    o2 = Program("o2")
    o2.spawn(0, "sm/f", foreign)
    with pytest.raises(TracekitError, match="not a location of this protocol"):
        run_schedule(o2)


def test_replay_is_deterministic_and_any_choice_list_is_valid():
    p = _two_puts(multipath=True)
    for choices in ([], [5, 9, 1], [1, 1, 1, 1, 1, 1]):
        a = run_schedule(p, choices)
        b = run_schedule(p, choices)
        assert a.rows == b.rows and a.schedule == b.schedule
    r = Replay([7])
    assert r(3) == 1 and r(2) == 0 and r.used == [1, 0]


@pytest.mark.parametrize("name", ["ring_buffer", "rdma_ring", "low_latency", "zero_buffer", "eager"])
def test_the_inlined_run_loop_equals_step_by_step(name):
    """run() (the explorer's hot loop) and step() (the reference path the state machines use)
    give the same events for the same choices, for every variant."""
    import random

    from tracekit.hazards.protocols import PROTOCOLS
    spec = PROTOCOLS[name]
    rng = random.Random(2)
    for variant in spec.variants:
        for k in range(15):
            sizes = {s: rng.randint(lo, hi) for s, (lo, hi) in spec.sizes.items()}
            program = spec.build(variant, **sizes)
            fast = Execution(program, record=True)
            fast.run(uniform=random.Random(k).random)
            slow = Execution(program, record=True)
            r = random.Random(k).random
            while slow.hazard is None and slow.step(lambda n: int(r() * n)):
                pass
            assert fast.rows == slow.rows, (variant, sizes, k)
            assert (fast.hazard, fast.finished) == (slow.hazard, slow.finished)
