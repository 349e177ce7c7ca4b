"""Hypothesis strategies and state machines for ordering and fencing protocols, for use in your
own pytest suite.

The schedule is drawn explicitly, one choice at a time (which actor runs next, which in-flight
message lands next, which of the values a load may return), so Hypothesis shrinks a failure to a
short schedule on a small instance::

    from hypothesis import given, settings
    from tracekit.testing import executions

    @settings(max_examples=500)
    @given(executions(my_protocol, "correct"))
    def test_no_hazard(ex):
        assert ex.hazard is None, ex.hazard

:func:`protocol_machine` gives the same as a :class:`~hypothesis.stateful.RuleBasedStateMachine`
whose rules are "run an actor" and "land a message", with "no hazard" as its invariant.
:func:`assert_no_hazard` runs the fast explorer (10,000 schedules in seconds) and fails with the
shrunk counterexample. :data:`LITMUS` holds the litmus tests with their allowed outcomes.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tracekit.hazards.engine import Execution
from tracekit.hazards.explore import Found, explore, shrink
from tracekit.hazards.litmus import LITMUS, Litmus
from tracekit.hazards.ops import Hazard, ProtocolSpec

__all__ = [
    "HazardFound", "LITMUS", "Litmus", "assert_no_hazard", "executions", "protocol_machine", "search", "sizes_of",
]


class HazardFound(AssertionError):
    """A schedule made a hazard happen. ``hazard`` is the hazard; ``execution`` the run."""

    def __init__(self, hazard: Hazard, execution: Execution | None = None, text: str = "") -> None:
        self.hazard = hazard
        self.execution = execution
        super().__init__(text or str(hazard))


def sizes_of(spec: ProtocolSpec, fixed: dict[str, int] | None = None) -> st.SearchStrategy[dict[str, int]]:
    """Sizes of ``spec``: each within its declared range (shrinking toward the smallest), except
    those given in ``fixed``."""
    fixed = fixed or {}
    spec.check_sizes(fixed)
    parts = {k: (st.just(fixed[k]) if k in fixed else st.integers(lo, hi)) for k, (lo, hi) in spec.sizes.items()}
    return st.fixed_dictionaries(parts)


def _chooser(data: Any, log: list[int]) -> Any:
    def choose(n: int) -> int:
        c = data.draw(st.integers(0, n - 1))
        log.append(c)
        return c
    return choose


@st.composite
def _executions(draw: Any, spec: ProtocolSpec, variant: str, sizes: dict[str, int] | None, record: bool) -> Execution:
    drawn = draw(sizes_of(spec, sizes))
    program = spec.build(variant, **drawn)
    log: list[int] = []
    ex = Execution(program, record=record)
    ex.run(_chooser(_Data(draw), log))
    ex.sizes = drawn  # type: ignore[attr-defined]
    ex.schedule = log  # type: ignore[attr-defined]
    return ex


class _Data:
    """Adapter giving a composite's ``draw`` the ``data.draw`` interface."""

    def __init__(self, draw: Any) -> None:
        self.draw = draw


def executions(spec: ProtocolSpec, variant: str | None = None, *, sizes: dict[str, int] | None = None,
               record: bool = True) -> st.SearchStrategy[Execution]:
    """Finished executions of ``spec``'s ``variant`` (default: its first correct one) under
    schedules drawn choice by choice. The execution's ``hazard`` is None or the first hazard;
    ``sizes`` and ``schedule`` record what was drawn."""
    variant = variant or spec.default_variant
    spec.check_variant(variant)
    return _executions(spec, variant, sizes, record)


def protocol_machine(spec: ProtocolSpec, variant: str | None = None, **sizes: int) -> type[RuleBasedStateMachine]:
    """A state machine running one execution of ``spec`` at the given sizes: rule ``run_actor``
    picks which runnable actor steps (and, for loads, which value it reads), rule
    ``land_message`` picks which in-flight message lands; the invariant fails with
    :class:`HazardFound` as soon as a hazard happens (a deadlock once nothing can move)."""
    variant = variant or spec.default_variant
    program = spec.build(variant, **sizes)

    class ProtocolMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.ex = Execution(program, record=True)

        def _idle(self) -> bool:
            return not self.ex.runnable() and not self.ex.landable

        @precondition(lambda self: not self.ex.hazard and bool(self.ex.runnable()))
        @rule(data=st.data())
        def run_actor(self, data: Any) -> None:
            run = self.ex.runnable()
            st_ = run[data.draw(st.integers(0, len(run) - 1), label="actor")]
            self.ex.step_actor(st_, lambda n: data.draw(st.integers(0, n - 1), label="read"))

        @precondition(lambda self: not self.ex.hazard and bool(self.ex.landable))
        @rule(data=st.data())
        def land_message(self, data: Any) -> None:
            msgs = self.ex.landable
            self.ex.land(msgs[data.draw(st.integers(0, len(msgs) - 1), label="message")])

        @precondition(lambda self: self._idle() or self.ex.hazard is not None)
        @rule()
        def finished(self) -> None:
            self.ex.finish()

        @invariant()
        def no_hazard(self) -> None:
            if self._idle():
                self.ex.finish()
            if self.ex.hazard is not None:
                raise HazardFound(self.ex.hazard, self.ex)

    ProtocolMachine.__name__ = ProtocolMachine.__qualname__ = f"{spec.name}_{variant}_machine"
    return ProtocolMachine


def search(spec: ProtocolSpec, variant: str | None = None, *, examples: int = 500, seed: int = 0,
           sizes: dict[str, int] | None = None, polish: bool = True) -> tuple[Found | None, int]:
    """Search for a hazard with Hypothesis (generation, then its shrinking) over at most
    ``examples`` examples. Returns the shrunk failing schedule (or None) and the examples run.
    With ``polish``, tracekit's own shrinker (:func:`~tracekit.hazards.explore.shrink`) then
    shortens Hypothesis' result further (it knows the schedule's structure)."""
    variant = variant or spec.default_variant
    spec.check_variant(variant)
    failures: list[Found] = []
    calls = [0]

    @settings(max_examples=examples, database=None, deadline=None, derandomize=False,
              phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck),
              verbosity=Verbosity.quiet, report_multiple_bugs=False)
    @hypothesis_seed(seed)
    @given(executions(spec, variant, sizes=sizes, record=False))
    def run(ex: Execution) -> None:
        calls[0] += 1
        if ex.hazard is not None:
            failures.append(Found(spec, variant, ex.sizes, ex.schedule, ex.hazard,  # type: ignore[attr-defined]
                                  calls[0]))
            raise HazardFound(ex.hazard, ex)

    try:
        run()
    except HazardFound:
        first = failures[0].example
        found = failures[-1]  # Hypothesis replays the shrunk example last
        if polish:
            found = shrink(found, seed=seed)
        found.example = first
        return found, calls[0]
    return None, calls[0]


def assert_no_hazard(spec: ProtocolSpec, variant: str | None = None, *, examples: int = 10_000, seed: int = 0,
                     sizes: dict[str, int] | None = None) -> int:
    """Run ``examples`` random schedules with the fast explorer; raise :class:`HazardFound` with the
    shrunk counterexample if any schedule shows a hazard. Returns the number of schedules run."""
    variant = variant or spec.default_variant
    result = explore(spec, variant, examples=examples, seed=seed, sizes=sizes)
    if result.found is None:
        return result.examples
    from tracekit.hazards.report import counterexample, describe  # needs polars: imported when used

    cx = counterexample(shrink(result.found))
    raise HazardFound(cx.hazard, cx.execution, describe(cx))
