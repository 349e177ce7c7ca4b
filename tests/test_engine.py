"""The fast engine against its reference twin, and the semantics on hand-checked cases."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracekit.engine import BindKind, TaskGraph, run
from tracekit.engine.reference import run_reference
from tracekit.errors import TracekitError


@st.composite
def task_graphs(draw):
    g = TaskGraph()
    nres = draw(st.integers(0, 4))
    for i in range(nres):
        g.resource(f"r{i}", servers=draw(st.integers(1, 3)))
    npool = draw(st.integers(0, 3))
    caps = [draw(st.integers(1, 6)) for _ in range(npool)]
    for i, c in enumerate(caps):
        g.pool(f"p{i}", c, "credit")
    n = draw(st.integers(1, 40))
    res = [draw(st.integers(-1, nres - 1)) for _ in range(n)]
    pool = [draw(st.integers(-1, npool - 1)) for _ in range(n)]
    amount = [draw(st.integers(1, caps[p])) if p >= 0 else 0 for p in pool]
    rel_pool = [draw(st.integers(-1, npool - 1)) for _ in range(n)]
    rel_amount = [draw(st.integers(1, 3)) if p >= 0 else 0 for p in rel_pool]
    g.add_tasks(
        n, res=res, pool=pool, amount=amount, rel_pool=rel_pool, rel_amount=rel_amount,
        dur=[draw(st.integers(0, 50)) for _ in range(n)],
        hold=[draw(st.booleans()) for _ in range(n)],
        align=[draw(st.sampled_from([0, 0, 0, 7, 20])) for _ in range(n)],
        release=[draw(st.integers(0, 30)) for _ in range(n)],
        **({"order_key": [draw(st.integers(0, 5)) for _ in range(n)]} if draw(st.booleans()) else {}),
    )
    for _ in range(draw(st.integers(0, 6)) if npool else 0):
        g.add_releases([draw(st.integers(0, n - 1))], [draw(st.integers(0, npool - 1))], [draw(st.integers(1, 3))],
                       [draw(st.sampled_from([0, 4]))])
    m = draw(st.integers(0, 3 * n))
    src, dst, lag = [], [], []
    for _ in range(m):
        a = draw(st.integers(0, n - 1))
        b = draw(st.integers(0, n - 1))
        if a != b:
            src.append(min(a, b))
            dst.append(max(a, b))
            lag.append(draw(st.integers(0, 20)))
    g.add_edges(np.array(src, dtype=np.int64), np.array(dst, dtype=np.int64), np.array(lag, dtype=np.int64))
    return g


@settings(max_examples=300, deadline=None)
@given(task_graphs())
def test_fast_engine_equals_reference(g):
    fast = run(g, check=False)
    ref = run_reference(g)
    assert fast.first_difference(ref) is None
    assert fast.events == ref.events


def _chain_graph(ring):
    g = TaskGraph()
    link = g.resource("link")
    credits = g.pool("ring", ring, "credit")
    send = g.add_tasks(5, res=link, dur=10, pool=credits, amount=1)
    consume = g.add_tasks(5, dur=100, rel_pool=credits, rel_amount=1)
    g.add_edges(send, consume, lag=5)
    return g, send, consume


def test_ring_credits_by_hand():
    g, send, consume = _chain_graph(ring=2)
    s = run(g)
    # two slots: sends 0 and 1 go at once; send 2 waits for consume 0 (finishes 10+5+100=115)
    assert s.start[send].tolist() == [0, 10, 115, 125, 230]
    assert s.stall[send].tolist() == [0, 0, 115, 125, 230]
    assert s.bind_kind[send[2]] == BindKind.POOL and s.binder[send[2]] == consume[0]
    assert s.bind_kind[send[1]] == BindKind.RESOURCE and s.binder[send[1]] == send[0]


def test_hold_blocks_the_server():
    g = TaskGraph()
    port = g.resource("port")
    buf = g.pool("buf", 1, "switch_buffer")
    first = g.add_tasks(1, res=port, dur=10, pool=buf, amount=1)
    g.add_tasks(1, dur=50, release=0, rel_pool=buf, rel_amount=1)  # returns the unit at t=50
    blocked = g.add_tasks(1, res=port, dur=10, pool=buf, amount=1, hold=True, release=1)
    behind = g.add_tasks(1, res=port, dur=10, release=2)
    s = run(g)
    assert s.start[first[0]] == 0
    assert s.seize[blocked[0]] == 10 and s.start[blocked[0]] == 50  # holds the port while paused
    assert s.start[behind[0]] == 60  # head-of-line blocked behind it


def test_delayed_release_of_credits():
    g = TaskGraph()
    ring = g.pool("ring", 1, "credit")
    a = g.add_tasks(1, dur=10, pool=ring, amount=1, rel_pool=ring, rel_amount=1, rel_lag=25)
    b = g.add_tasks(1, dur=10, pool=ring, amount=1)
    s = run(g)
    assert s.start[b[0]] == 35 and s.binder[b[0]] == a[0] and s.bind_kind[b[0]] == BindKind.POOL


def test_alignment_to_poll_period():
    g = TaskGraph()
    done = g.add_tasks(1, dur=13)
    poll = g.add_tasks(1, dur=0, align=10)
    g.add_edges(done, poll)
    assert run(g).start[poll[0]] == 20


def test_deadlock_names_the_pool():
    g = TaskGraph()
    p = g.pool("nvl_ring", 1, "credit")
    g.add_tasks(2, dur=1, pool=p, amount=1)
    with pytest.raises(TracekitError, match="deadlock.*nvl_ring"):
        run(g)


def test_amount_above_capacity_is_rejected():
    g = TaskGraph()
    p = g.pool("rdma_ring", 4, "credit")
    g.add_tasks(1, dur=1, pool=p, amount=5)
    with pytest.raises(TracekitError, match="needs 5 units of rdma_ring which holds only 4"):
        run(g)
