"""Data efficiency: how many unique AR tokens buy the performance MDLM reaches on U unique tokens (the paper's ~3x).

AR's final performance is read as a function of log U: first made monotone (isotonic regression: more unique data
never hurts on this view, so a dip is noise), then interpolated with a monotone cubic (PCHIP) in log U, and inverted.
An MDLM performance outside the range AR covers gives None -- with the bound it implies in `efficiency_details` --
never an extrapolated number.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Efficiency:
    unique_tokens: float  # the MDLM budget U
    performance: float  # MDLM's final performance at U
    ar_equivalent: float | None  # U': the AR budget of equal performance (None outside the observed AR budgets)
    ratio: float | None  # U'/U
    status: str  # "ok", "above_range" (U' > largest AR budget), "below_range" (U' < smallest), "too_few_ar_budgets"
    bound: float | None = None  # when out of range: U'/U is above (above_range) or below (below_range) this


def isotonic(y: np.ndarray, increasing: bool = True) -> np.ndarray:
    """Pool-adjacent-violators: the closest monotone sequence in least squares."""
    values = list(y if increasing else -y)
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, c2 = blocks.pop()
            m1, c1 = blocks.pop()
            blocks.append([(m1 * c1 + m2 * c2) / (c1 + c2), c1 + c2])
    out = np.concatenate([np.full(int(c), m) for m, c in blocks])
    return out if increasing else -out


def efficiency_details(
    ar: Mapping[float, float], mdlm: Mapping[float, float], higher_is_better: bool = True
) -> list[Efficiency]:
    """`data_efficiency` with the reasons: one row per MDLM budget, in increasing order of budget."""
    from scipy.interpolate import PchipInterpolator  # lazy: scipy is slow to import

    ar_items = sorted((float(u), float(p)) for u, p in ar.items() if np.isfinite(p))
    rows = []
    if len(ar_items) < 2:
        for u, p in sorted(mdlm.items()):
            rows.append(Efficiency(float(u), float(p), None, None, "too_few_ar_budgets"))
        return rows
    lu = np.log([u for u, _ in ar_items])
    perf = isotonic(np.array([p for _, p in ar_items]), increasing=higher_is_better)
    sign = 1.0 if higher_is_better else -1.0
    curve = sign * perf  # increasing in log U
    grid = np.linspace(lu[0], lu[-1], 4001)
    dense = np.maximum.accumulate(PchipInterpolator(lu, curve)(grid))
    low_u, high_u = float(np.exp(lu[0])), float(np.exp(lu[-1]))
    for u, p in sorted((float(u), float(p)) for u, p in mdlm.items()):
        target = sign * p
        if not np.isfinite(p):
            rows.append(Efficiency(u, p, None, None, "no_value"))
        elif target > dense[-1]:
            rows.append(Efficiency(u, p, None, None, "above_range", bound=high_u / u))
        elif target < dense[0]:
            rows.append(Efficiency(u, p, None, None, "below_range", bound=low_u / u))
        else:
            j = int(np.searchsorted(dense, target, side="left"))  # first grid point reaching the target
            if j == 0:
                lu_eq = grid[0]
            else:
                lo, hi = dense[j - 1], dense[j]
                lu_eq = grid[j - 1] + (grid[j] - grid[j - 1]) * ((target - lo) / (hi - lo) if hi > lo else 1.0)
            u_eq = float(np.exp(lu_eq))
            rows.append(Efficiency(u, p, u_eq, u_eq / u, "ok"))
    return rows


def data_efficiency(
    ar: Mapping[float, float], mdlm: Mapping[float, float], higher_is_better: bool = True
) -> dict[float, float | None]:
    """Per MDLM unique budget U: U'/U, with U' the AR unique budget of equal final performance (interpolated in
    log U), or None when U' lies outside the observed AR budgets. `ar` and `mdlm` map budget -> final performance."""
    return {row.unique_tokens: row.ratio for row in efficiency_details(ar, mdlm, higher_is_better)}
