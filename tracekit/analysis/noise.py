"""Run-to-run spread: bootstrap confidence intervals for the change of a mean.

A side with several steps, layers or iterations gives several samples of one metric (a phase's
latency per (step, layer), say). The change between sides is the difference of the means; its
confidence interval comes from resampling each side's samples with replacement. The generator of
each side is seeded from the fixed ``seed`` and the side's own values (sorted), so results are
reproducible, a trace compared with itself gives an interval of exactly [0, 0], and swapping the
sides negates the interval exactly.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

#: resamples per side
RESAMPLES = 2000
#: two-sided confidence level
LEVEL = 0.95
#: fewest samples a side needs for an interval (two samples give only three distinct means)
MIN_SAMPLES = 3


@dataclass(frozen=True)
class Interval:
    """Bootstrap interval of (mean after - mean before)."""

    low: float
    high: float

    @property
    def contains_zero(self) -> bool:
        return self.low <= 0.0 <= self.high


def _means(values: np.ndarray, seed: int, resamples: int) -> np.ndarray:
    v = np.sort(np.asarray(values, dtype=np.float64))  # the samples' order must not matter
    rng = np.random.default_rng([seed, zlib.crc32(v.tobytes()), v.size])
    idx = rng.integers(0, v.size, size=(resamples, v.size))
    return v[idx].mean(axis=1)


def bootstrap_delta(before: np.ndarray, after: np.ndarray, *, seed: int = 0, resamples: int = RESAMPLES,
                    level: float = LEVEL) -> Interval | None:
    """Interval of mean(after) - mean(before), or None when a side has fewer than
    :data:`MIN_SAMPLES` samples."""
    before = np.asarray(before, dtype=np.float64)
    after = np.asarray(after, dtype=np.float64)
    if before.size < MIN_SAMPLES or after.size < MIN_SAMPLES:
        return None
    d = np.sort(_means(after, seed, resamples) - _means(before, seed, resamples))
    return Interval(_quantile(d, (1.0 - level) / 2.0) + 0.0, -_quantile(-d[::-1], (1.0 - level) / 2.0) + 0.0)


def _quantile(x: np.ndarray, q: float) -> float:
    """Linear-interpolated quantile of sorted ``x``. The upper bound is taken as minus the lower
    quantile of the negated samples, so that negating the samples negates the interval exactly."""
    pos = (x.size - 1) * q
    f = int(np.floor(pos))
    frac = pos - f
    if f + 1 >= x.size:
        return float(x[-1])
    return float(x[f] + (x[f + 1] - x[f]) * frac)

