"""Schedule exploration: random, exhaustive (DFS) and replay of a recorded schedule, plus a
shrinker that turns a failing schedule into a short one.

A schedule is the list of choices made at the steps that had more than one possibility (see
:mod:`tracekit.hazards.engine`). Replaying a list takes ``choice % n`` at each step and 0 once the
list runs out, so any list of non-negative ints is a valid schedule: that is what makes shrinking
(deleting and lowering choices) and Hypothesis' own shrinking work.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from tracekit.errors import TracekitError
from tracekit.hazards.engine import Chooser, Execution
from tracekit.hazards.ops import Hazard, Program, ProtocolSpec


class Replay:
    """Chooser that follows ``choices`` (``c % n``; 0 after the end) and logs what it used."""

    __slots__ = ("choices", "used", "i")

    def __init__(self, choices: list[int] | tuple[int, ...] = ()) -> None:
        self.choices = choices
        self.used: list[int] = []
        self.i = 0

    def __call__(self, n: int) -> int:
        i = self.i
        c = self.choices[i] % n if i < len(self.choices) else 0
        self.i = i + 1
        self.used.append(c)
        return c


def run_schedule(program: Program, choices: list[int] | tuple[int, ...] = (), *, record: bool = True) -> Execution:
    """Run ``program`` under the schedule ``choices``; return the finished execution."""
    ex = Execution(program, record=record)
    chooser = Replay(choices)
    ex.run(chooser)
    ex.schedule = chooser.used  # type: ignore[attr-defined]
    return ex


def exhaustive(program: Program, *, limit: int | None = None, record: bool = False) -> Iterator[tuple[list[int], Execution]]:
    """Every schedule of ``program`` (depth-first over the choice tree), as (choices, execution).

    A run that stops at a hazard is a leaf. Stops after ``limit`` schedules if given."""
    prefix: list[int] = []
    count = 0
    while True:
        trail: list[tuple[int, int]] = []

        def choose(n: int) -> int:
            i = len(trail)
            c = prefix[i] if i < len(prefix) else 0
            trail.append((c, n))
            return c

        ex = Execution(program, record=record)
        ex.run(choose)
        yield [c for c, _ in trail], ex
        count += 1
        if limit is not None and count >= limit:
            return
        while trail and trail[-1][0] + 1 >= trail[-1][1]:
            trail.pop()
        if not trail:
            return
        c, _ = trail.pop()
        prefix = [x for x, _ in trail] + [c + 1]


@dataclass
class Found:
    """A failing schedule: the protocol variant, its sizes, the choices and the hazard."""

    spec: ProtocolSpec
    variant: str
    sizes: dict[str, int]
    choices: list[int]
    hazard: Hazard
    #: Examples run before this one was found (1 = the first).
    example: int = 0

    def program(self) -> Program:
        return self.spec.build(self.variant, **self.sizes)

    def replay(self, *, record: bool = True) -> Execution:
        return run_schedule(self.program(), self.choices, record=record)


@dataclass
class ExploreResult:
    examples: int
    steps: int
    found: Found | None = None
    sizes_seen: set[tuple[int, ...]] = field(default_factory=set)


class _Programs:
    """Programs of one variant, built once per size combination."""

    def __init__(self, spec: ProtocolSpec, variant: str) -> None:
        spec.check_variant(variant)
        self.spec, self.variant = spec, variant
        self.cache: dict[tuple[int, ...], Program] = {}

    def get(self, sizes: dict[str, int]) -> Program:
        key = tuple(sizes[k] for k in self.spec.sizes)
        p = self.cache.get(key)
        if p is None:
            p = self.cache[key] = self.spec.build(self.variant, **sizes)
        return p


def explore(spec: ProtocolSpec, variant: str, *, examples: int = 10_000, seed: int = 0,
            sizes: dict[str, int] | None = None) -> ExploreResult:
    """Run up to ``examples`` random schedules; stop at the first hazard.

    Each example draws the sizes not fixed by ``sizes`` uniformly from the protocol's ranges, then
    picks every choice uniformly. Deterministic for a given seed."""
    fixed = spec.check_sizes(sizes or {}) if sizes else {}
    fixed = {k: v for k, v in fixed.items() if k in (sizes or {})}
    programs = _Programs(spec, variant)
    rng = random.Random(seed)
    rnd = rng.random
    result = ExploreResult(0, 0)
    ranges = [(k, lo, hi) for k, (lo, hi) in spec.sizes.items() if k not in fixed]
    for k in range(examples):
        drawn = dict(fixed)
        for name, lo, hi in ranges:
            drawn[name] = lo + int(rnd() * (hi - lo + 1))
        program = programs.get(drawn)
        # Each example has its own generator, so its choices need not be logged as it runs: a
        # failing one is replayed from its seed with a logging chooser.
        example_seed = rng.getrandbits(64)
        ex = Execution(program)
        hazard = ex.run(uniform=random.Random(example_seed).random)
        result.examples = k + 1
        result.steps += ex.steps
        if hazard is not None:
            log: list[int] = []
            r2 = random.Random(example_seed).random

            def logged(n: int) -> int:
                c = int(r2() * n)
                log.append(c)
                return c
            again = Execution(program)
            if again.run(logged) != hazard:
                raise TracekitError(f"{spec.name}/{variant}: a schedule did not replay the same way",
                                    fix="actors must be deterministic: no randomness or global state in them")
            result.found = Found(spec, variant, drawn, log, hazard, k + 1)
            return result
    return result


def _key(ex: Execution, sizes: dict[str, int], used: list[int]) -> tuple[int, ...]:
    return (ex.nops, ex.seq, sum(sizes.values()), len(used), sum(used))


def shrink(found: Found, *, budget: int = 6000, tries: int = 200, restarts: int = 1000, seed: int = 0) -> Found:
    """A failing schedule with the same hazard name and as few operations as this search finds:
    smaller sizes first (keeping the schedule, else trying up to ``tries`` random ones), then
    deleting and lowering choices, then ``restarts`` random schedules at the final sizes to escape
    a local minimum; at most ``budget`` re-runs. Deterministic for a given seed."""
    spec, variant, name = found.spec, found.variant, found.hazard.name
    programs = _Programs(spec, variant)
    rng = random.Random(seed)
    runs = 0

    def attempt(sizes: dict[str, int], choices: list[int] | None) -> tuple[tuple[int, ...], list[int], Hazard] | None:
        nonlocal runs
        runs += 1
        ex = Execution(programs.get(sizes))
        if choices is None:  # a random schedule
            rnd = rng.random
            used: list[int] = []

            def pick(n: int) -> int:
                c = int(rnd() * n)
                used.append(c)
                return c
            try:
                hz = ex.run(pick)
            except TracekitError:
                return None
            if hz is None or hz.name != name:
                return None
            return _key(ex, sizes, used), used, hz
        chooser = Replay(choices)
        try:
            hz = ex.run(chooser)
        except TracekitError:
            return None
        if hz is None or hz.name != name:
            return None
        return _key(ex, sizes, chooser.used), chooser.used, hz

    sizes = dict(found.sizes)
    first = attempt(sizes, found.choices)
    if first is None:
        raise TracekitError(f"the schedule of {spec.name}/{variant} does not reproduce {name}",
                            fix="this is a bug in tracekit: the engine must be deterministic")
    best_key, choices, hazard = first
    improved = True
    while improved and runs < budget:
        improved = False
        # 1. smaller sizes (keep the choices; they are reinterpreted)
        for k, (lo, _) in spec.sizes.items():
            for v in range(lo, sizes[k]):
                trial = {**sizes, k: v}
                r = attempt(trial, choices)
                for _ in range(tries):
                    if r is not None or runs >= budget:
                        break
                    r = attempt(trial, None)
                if r is not None:
                    sizes, (best_key, choices, hazard) = trial, r
                    improved = True
                    break
        # 2. delete runs of choices, then 3. lower single choices
        for width in (8, 4, 2, 1):
            i = len(choices) - width
            while i >= 0 and runs < budget:
                trial_c = choices[:i] + choices[i + width:]
                r = attempt(sizes, trial_c)
                if r is not None and r[0] < best_key:
                    best_key, choices, hazard = r
                    improved = True
                i -= 1
        for i in range(len(choices)):
            for v in sorted({0, choices[i] - 1} - {choices[i]}) if i < len(choices) else ():
                if v < 0 or runs >= budget:
                    continue
                trial_c = choices[:i] + [v] + choices[i + 1:]
                r = attempt(sizes, trial_c)
                if r is not None and r[0] < best_key:
                    best_key, choices, hazard = r
                    improved = True
                    break
        if not improved and restarts:
            # 4. local search gets stuck: try random schedules at these sizes, then shrink again
            for _ in range(restarts):
                r = attempt(sizes, None)
                if r is not None and r[0] < best_key:
                    best_key, choices, hazard = r
                    improved = True
            restarts = 0
    return Found(spec, variant, sizes, choices, hazard, found.example)
