"""Litmus tests: outcome sets enumerated over every schedule match the textbook."""

import pytest

from tracekit.hazards.litmus import LITMUS, table


@pytest.mark.parametrize("name", list(LITMUS))
def test_outcome_set_is_exactly_the_allowed_set(name):
    t = LITMUS[name]
    seen = t.outcomes()
    assert set(seen) == set(t.allowed), (name, sorted(seen))


@pytest.mark.parametrize("name, allowed", [
    ("MP", True), ("MP+rel+acq", False), ("MP+rel+rlx", True), ("MP+fences", False),
    ("MP+rdma", True), ("MP+rdma+fence", False), ("MP+rdma+single_path", False), ("MP+rdma+atomic", False),
    ("SB", True), ("SB+fences", False), ("LB", False), ("IRIW+acq", True), ("IRIW+fences", False),
    ("CoRR", False), ("CoWW", False), ("CoWR", False), ("CoRW", False),
])
def test_textbook_verdict_on_the_interesting_outcome(name, allowed):
    """E.g. message passing without a fence allows the stale read; with one it is forbidden."""
    t = LITMUS[name]
    assert (t.interesting in t.outcomes()) is allowed


def test_sequentially_consistent_outcomes_are_always_reachable():
    # every outcome of a plain interleaving (no stale reads) must be in every allowed set
    mp = LITMUS["MP+fences"].outcomes()
    assert {(0, 0), (0, 1), (1, 1)} <= set(mp)
    assert {(0, 1), (1, 0), (1, 1)} <= set(LITMUS["SB+fences"].outcomes())


def test_table_reports_every_test():
    rows = table(["MP", "SB"])
    assert [r["test"] for r in rows] == ["MP", "SB"]
    assert all(r["matches_model"] and r["interesting_allowed"] for r in rows)
