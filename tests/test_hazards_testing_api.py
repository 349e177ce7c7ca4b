"""tracekit.testing: the public Hypothesis strategies and state machines, as a user's pytest uses them."""

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.stateful import run_state_machine_as_test

import tracekit.testing as tt
from tracekit.hazards.protocols import PROTOCOLS
from tracekit.testing import HazardFound, assert_no_hazard, executions, protocol_machine, search


def test_all_is_exactly_the_public_api():
    public = {n for n, v in vars(tt).items() if not n.startswith("_") and getattr(v, "__module__", None) == tt.__name__}
    assert public <= set(tt.__all__)
    assert all(hasattr(tt, n) for n in tt.__all__)
    assert sorted(tt.__all__) == tt.__all__


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(executions(PROTOCOLS["eager"], "correct"))
def test_executions_of_a_correct_protocol_have_no_hazard(ex):
    assert ex.hazard is None and ex.finished
    assert set(ex.sizes) == {"messages"}


def test_search_finds_a_broken_variant_within_500_examples_and_shrinks_it():
    found, ran = search(PROTOCOLS["ring_buffer"], "credit_before_consume", examples=500, seed=1)
    assert found is not None and found.hazard.name == "slot_overwrite"
    assert found.example <= 500
    ex = found.replay()
    assert ex.hazard.name == "slot_overwrite" and ex.nops <= 12


@pytest.mark.slow
@pytest.mark.parametrize("name, variant", [
    (s.name, v) for s in PROTOCOLS.values() for v in s.variants if v not in s.correct])
def test_hypothesis_catches_every_broken_variant_within_500_examples(name, variant):
    found, ran = search(PROTOCOLS[name], variant, examples=500, seed=0)
    assert found is not None, f"{name}/{variant}"
    assert found.example <= 500
    assert found.replay().nops <= 12


def test_search_reports_none_for_a_correct_protocol():
    found, ran = search(PROTOCOLS["eager"], "correct", examples=50)
    assert found is None and ran == 50


def test_state_machine_runs_clean_on_a_correct_protocol():
    machine = protocol_machine(PROTOCOLS["rdma_ring"], "correct", slots=2, messages=3, cq_depth=2)
    run_state_machine_as_test(machine, settings=settings(max_examples=30, stateful_step_count=60, deadline=None,
                                                            suppress_health_check=list(HealthCheck)))


def test_state_machine_finds_the_hazard_of_a_broken_protocol():
    machine = protocol_machine(PROTOCOLS["rdma_ring"], "plain_flag_multipath", slots=1, messages=1, cq_depth=2)
    with pytest.raises(HazardFound) as err:
        run_state_machine_as_test(machine, settings=settings(max_examples=200, stateful_step_count=40,
                                                             deadline=None, database=None, derandomize=True,
                                                             suppress_health_check=list(HealthCheck),
                                                             phases=[Phase.generate]))
    assert err.value.hazard.name == "stale_read_after_flag"


def test_assert_no_hazard_passes_and_fails_with_the_counterexample():
    assert assert_no_hazard(PROTOCOLS["eager"], "correct", examples=300) == 300
    with pytest.raises(HazardFound, match=r"(?s)HAZARD credit_overflow in rdma_ring/double_credit.*events"):
        assert_no_hazard(PROTOCOLS["rdma_ring"], "double_credit", examples=300)
