"""Paired differences with intervals that hold with few seeds: "MDLM's last minus AR's best", an accuracy's change
between two eval points of one trial (the Delta NLL view), on the same items and, where there are several, the same
seeds.

    paired_difference(a, b) -> Difference   # b - a; a, b: (seeds, items) scores, NaN where missing

The estimate is the mean over seeds and items of b - a. Its variance has two parts, each estimated from the data:
    seeds: the variance over seeds of each seed's item-mean difference, / seeds  (training noise; needs 2+ seeds)
    items: the variance over items of each item's seed-mean difference, / items  (which items were drawn)
(the item x seed interaction is in both: a little conservative). The interval is mean +- t * sqrt(seeds + items)
with Welch-Satterthwaite degrees of freedom, so with 3 seeds whose spread dominates it has the t tails of 2 degrees
of freedom (a normal or bootstrap interval over 3 seeds covers ~76% at a nominal 90%: bench/bench_crossover.py).
One seed: the items part only, and `source` says the interval holds item noise only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Difference:
    value: float  # mean of b - a
    low: float
    high: float
    confidence: float
    seeds: int
    items: int
    source: str  # what the interval resampled, as the verdict prints it

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def within(self, margin: float) -> bool:
        """Equivalent within +-margin: the whole interval lies inside it."""
        return -margin < self.low and self.high < margin

    def text(self, digits: int = 2) -> str:
        return (
            f"{self.value:+.{digits}f} ({self.confidence:.0%} CI {self.low:+.{digits}f} to {self.high:+.{digits}f}; "
            f"{self.source})"
        )


def paired_difference(a: np.ndarray, b: np.ndarray, confidence: float = 0.9) -> Difference:
    """b - a with its interval (module docstring). `a`, `b`: (seeds, items) on the same items in the same order,
    seeds paired by row (the same seed's AR and MDLM trials); a 1-D array is one seed's items."""
    a, b = (np.atleast_2d(np.asarray(v, dtype=float)) for v in (a, b))
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same (seeds, items) shape, got {a.shape} and {b.shape}")
    diff = b - a
    diff = diff[:, np.isfinite(diff).any(axis=0)]
    diff = diff[np.isfinite(diff).any(axis=1)]
    seeds, items = diff.shape
    if items == 0:
        raise ValueError("no item has both scores")
    value = float(np.nanmean(diff))
    parts: list[tuple[float, int]] = []  # (variance of the mean, degrees of freedom)
    if items >= 2:
        per_item = np.nanmean(diff, axis=0)
        parts.append((float(np.var(per_item, ddof=1)) / items, items - 1))
    if seeds >= 2:
        per_seed = np.nanmean(diff, axis=1)
        parts.append((float(np.var(per_seed, ddof=1)) / seeds, seeds - 1))
    variance = sum(v for v, _ in parts)
    denominator = sum(v * v / df for v, df in parts)
    df = variance * variance / denominator if denominator > 0 else math.inf
    from scipy.stats import t  # lazy: scipy is slow to import

    half = float(t.ppf(0.5 + confidence / 2, df)) * math.sqrt(variance)  # df inf: the normal quantile
    if seeds >= 2:
        source = f"seeds and items, {seeds} seeds x {items} items (t, {df:.3g} df)"
    else:
        source = f"items, 1 seed x {items} items (item noise only: training noise between seeds is not in it)"
    return Difference(value, value - half, value + half, confidence, seeds, items, source)
