"""The protocol library: every broken variant is caught within 500 examples with a short
counterexample, every correct variant passes (10,000 schedules in the slow test), and the checker
names the same hazard as the explorer."""

import pytest

from tracekit.hazards import explore, shrink
from tracekit.hazards.protocols import PROTOCOLS
from tracekit.hazards.report import counterexample, describe

BROKEN = [(s.name, v) for s in PROTOCOLS.values() for v in s.variants if v not in s.correct]
CORRECT = [(s.name, v) for s in PROTOCOLS.values() for v in s.variants if v in s.correct]

#: The hazard each broken variant is meant to show.
EXPECTED = {
    ("ring_buffer", "relaxed_tail"): "stale_read_after_flag",
    ("ring_buffer", "no_head_check"): "slot_overwrite",
    ("ring_buffer", "credit_before_consume"): "slot_overwrite",
    ("ring_buffer", "chunked_head"): "deadlock",
    ("rdma_ring", "plain_flag_multipath"): "stale_read_after_flag",
    ("rdma_ring", "missing_fence"): "stale_read_after_flag",
    ("rdma_ring", "relaxed_poll"): "stale_read_after_flag",
    ("rdma_ring", "credit_before_consume"): "slot_overwrite",
    ("rdma_ring", "no_credit_check"): "credit_underflow",
    ("rdma_ring", "double_credit"): "credit_overflow",
    ("rdma_ring", "cq_not_drained"): "cq_overflow",
    ("low_latency", "flip_reused_early"): "slot_overwrite",
    ("low_latency", "small_qp"): "send_queue_overflow",
    ("zero_buffer", "unmap_in_flight"): "access_after_unmap",
    ("zero_buffer", "receiver_crash"): "access_to_crashed_rank",
    ("eager", "split_signal"): "stale_read_after_flag",
}


def test_the_library_covers_the_issue():
    assert set(BROKEN) == set(EXPECTED)
    assert {h for h in EXPECTED.values()} >= {
        "stale_read_after_flag", "slot_overwrite", "credit_underflow", "credit_overflow", "send_queue_overflow",
        "cq_overflow", "access_after_unmap", "access_to_crashed_rank", "deadlock"}
    assert all(PROTOCOLS[p].correct for p in PROTOCOLS)


@pytest.mark.parametrize("name, variant", BROKEN)
@pytest.mark.parametrize("seed", [0, 1])
def test_broken_variant_is_caught_and_shrunk(name, variant, seed):
    spec = PROTOCOLS[name]
    result = explore(spec, variant, examples=500, seed=seed)
    assert result.found is not None, f"{name}/{variant}: no hazard in 500 examples"
    small = shrink(result.found, seed=seed)
    cx = counterexample(small)
    assert cx.operations <= 12, describe(cx)
    # the reference checker, reading only the memops table, names the same hazard as manifest
    assert cx.hazard.name == small.hazard.name and cx.hazard.manifest
    assert any(h.name == small.hazard.name and h.manifest for h in cx.hazards)
    if seed == 0:
        assert small.hazard.name == EXPECTED[(name, variant)]
    assert cx.hazard.events and set(cx.hazard.events) <= set(cx.memops.column("seq").to_pylist())


@pytest.mark.parametrize("name, variant", CORRECT)
def test_correct_variant_passes_1000(name, variant):
    result = explore(PROTOCOLS[name], variant, examples=1000, seed=7)
    assert result.found is None, result.found and result.found.hazard


@pytest.mark.slow
@pytest.mark.parametrize("name, variant", CORRECT)
def test_correct_variant_passes_10000(name, variant):
    result = explore(PROTOCOLS[name], variant, examples=10_000, seed=0)
    assert result.examples == 10_000
    assert result.found is None, result.found and result.found.hazard


def test_exploration_is_deterministic():
    spec = PROTOCOLS["rdma_ring"]
    a = explore(spec, "missing_fence", examples=50, seed=3)
    b = explore(spec, "missing_fence", examples=50, seed=3)
    assert a.found.choices == b.found.choices and a.found.sizes == b.found.sizes
    assert shrink(a.found).choices == shrink(b.found).choices
