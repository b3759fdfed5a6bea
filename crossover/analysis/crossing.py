"""Crossover detection: where the MDLM curve passes the AR curve for good, robust to evaluation noise, and how sure
the evidence makes it.

Method. The margin m(x) = MDLM - AR (AR - MDLM when lower is better, so positive always means "MDLM ahead") is
smoothed with LOWESS in log x: local-linear fits with tricube weights, twiced (the residuals smoothed once more
and added back, against curvature bias), the span chosen by leave-one-out cross-validation with the one-standard-error
rule, then two bisquare robustness passes (a single broken evaluation cannot move the answer). The
smoothed margin is evaluated on a fine grid in log x; the crossover is the zero crossing after which it stays
positive to the end of the observation, interpolated linearly in log x. With fewer than `MIN_SMOOTH_POINTS` points
the raw margin is used (there is too little data to smooth).

Uncertainty. Given per-item (or per-seed) samples, the whole detector is re-run on replicate margins, the span and
the robustness weights chosen afresh from each replicate's own margin (keeping them fixed would make the interval
conditional on the observed data's choices and too narrow at a dozen points). A replicate margin is the observed
one plus two independent parts:
- items: the eval items resampled with replacement (one draw shared by AR and MDLM, which answered the same items,
  and by every seed), as the mean over seeds of the resampled item means;
- seeds (two or more): the training noise of the margin curve, drawn from a multivariate t with n - 1 degrees of
  freedom and scale (the sample covariance of the per-seed margin curves) / n: the posterior of a mean of n normal
  draws. A seed's curve also varies by its own answers to the items (the item x seed interaction), which the item
  part already holds: the per-seed residuals are shrunk to their training-noise share by a two-way ANOVA per point
  (`_seed_residuals`). A percentile bootstrap over n seeds shrinks the spread to (n - 1)/n of the truth and gives
  it normal tails; with 3 seeds its 90% interval covered the truth about 76% of the time. AR and MDLM trials with
  the same seeds are paired (one draw for their margins' residuals); otherwise each objective's seeds get their own.
With one seed the interval holds item noise only: the training noise between seeds is not in it, and `ci_source`
says so.

The interval holds percentiles of the replicate crossovers, where a replicate that never crosses counts as +inf
(beyond the observation) and one where MDLM leads throughout as -inf (before it): an infinite bound says honestly
that the data cannot place the crossover inside the window on that side.

Status. The smoothed estimate alone gives `point_status`. `status` is what the evidence supports at the study's
confidence: "MDLM ends ahead" is a one-sided claim, so `crossed` (or `mdlm_always_ahead`, when the estimate leads
throughout) needs MDLM ahead at the end in at least `confidence` of the replicates (`p_ahead_at_end`; a tie at the
end then reads `crossed` at most about 1 - confidence of the time); `not_crossed` needs AR ahead at the end as
surely; otherwise `undetermined`, whatever the estimate says. (Deciding at the two-sided interval's upper bound
instead, one-sided 95% for a 90% study, halves the false claims on a tie but cost a third of the power on a real
crossing: bench/bench_crossover.py, docs/design.md.) Without samples there are no replicates and nothing backs a
claim: the status is `undetermined` (the estimate's own is still `point_status`) and `evidence` says why. The bench
measures false claims on a tie, power on a real crossing and the interval's coverage with 1, 3 and 5 seeds.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

Status = Literal["crossed", "not_crossed", "mdlm_always_ahead", "undetermined"]
CROSSED: Status = "crossed"
NOT_CROSSED: Status = "not_crossed"
ALWAYS_AHEAD: Status = "mdlm_always_ahead"
UNDETERMINED: Status = "undetermined"
STATUSES = (CROSSED, NOT_CROSSED, ALWAYS_AHEAD, UNDETERMINED)
INTERVAL, POINT_ESTIMATE = "interval", "point estimate"  # what decided a status

MIN_SMOOTH_POINTS = 6
GRID_POINTS = 200  # 0.5% of the log-x range per step, interpolated linearly within a step
SPANS = (0.15, 0.25, 0.35, 0.5, 0.7)
MIN_WINDOW = 4  # points in every local fit


@dataclass(frozen=True)
class Crossover:
    """The answer of `find_crossover`. `x` is on the compute axis given (tokens, FLOPs or epochs): the smoothed
    estimate's crossing whenever it crossed, even where the evidence leaves the status undetermined."""

    x: float | None
    status: Status
    ci: tuple[float, float] | None = None  # bounds may be -inf / +inf: see the module docstring
    confidence: float = 0.9
    ci_source: str | None = None  # what the interval resampled ("items, 1 seed"); None: no samples, no interval
    p_crossed: float | None = None  # share of replicates that cross inside the window
    p_ahead_at_end: float | None = None  # share of replicates with MDLM ahead at the end (crossed or always ahead)
    point_status: Status | None = None  # the smoothed estimate's own status
    evidence: str = POINT_ESTIMATE  # INTERVAL: the status is decided by the interval; POINT_ESTIMATE: no samples
    seeds: int = 1  # seeds per objective behind the interval (the fewer of the two)
    n_points: int = 0
    x_range: tuple[float, float] | None = None
    span: float | None = None  # LOWESS span used; None when the raw margin was used
    grid: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)  # x values of `margin`
    margin: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)  # smoothed MDLM advantage
    replicates: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)  # replicate crossovers (x, +-inf)

    def scaled(self, factor: float) -> Crossover:
        """The same crossover on another compute axis that is a constant multiple of this one
        (FLOPs = tokens x FLOPs-per-token; epochs = tokens / unique tokens)."""
        return replace(
            self,
            x=None if self.x is None else self.x * factor,
            ci=None if self.ci is None else (self.ci[0] * factor, self.ci[1] * factor),
            x_range=None if self.x_range is None else (self.x_range[0] * factor, self.x_range[1] * factor),
            grid=self.grid * factor,
            replicates=self.replicates * factor,
        )


def decide(point_status: Status, p_ahead_at_end: float | None, confidence: float) -> Status:
    """The status the evidence supports (module docstring): undetermined where there are no replicates."""
    if p_ahead_at_end is None:
        return UNDETERMINED
    if p_ahead_at_end >= confidence and point_status in (CROSSED, ALWAYS_AHEAD):
        return point_status
    if 1 - p_ahead_at_end >= confidence and point_status == NOT_CROSSED:
        return NOT_CROSSED
    return UNDETERMINED


def compare(a: Crossover, b: Crossover, confidence: float, comparisons: int = 1) -> int:
    """+1 where b's crossover surely comes after a's, -1 where surely before, 0 where the evidence cannot tell.

    Read on the replicates of both (paired through the item draw when they share their items: `find_crossover` draws
    the items first from the same seed), at the two-sided level `confidence` shared among `comparisons` (Bonferroni):
    b is later when b's replicate lies after a's in at least 1 - (1 - confidence) / (2 comparisons) of them. Two
    replicates beyond the end (or both before the start) are equal, not ordered."""
    ra, rb = a.replicates, b.replicates
    if ra.size == 0 or rb.size == 0:
        return 0
    n = min(ra.size, rb.size)
    ra, rb = ra[:n], rb[:n]
    need = 1 - (1 - confidence) / (2 * max(comparisons, 1))
    if np.mean(rb > ra) >= need:
        return 1
    if np.mean(rb < ra) >= need:
        return -1
    return 0


def convert_x(
    value: float | np.ndarray,
    frm: str,
    to: str,
    *,
    unique_tokens: float | None = None,
    flops_per_token: float | None = None,
) -> float | np.ndarray:
    """Convert between the compute axes `tokens`, `flops` and `epochs` (epochs = tokens / unique tokens;
    FLOPs = tokens x training FLOPs per token; AR and MDLM of one cell have the same FLOPs per token)."""
    factors = {"tokens": 1.0}
    if unique_tokens is not None:
        factors["epochs"] = 1.0 / unique_tokens
    if flops_per_token is not None:
        factors["flops"] = flops_per_token
    for axis in (frm, to):
        if axis not in ("tokens", "flops", "epochs"):
            raise ValueError(f"unknown compute axis {axis!r}; use tokens, flops or epochs")
        if axis not in factors:
            need = "unique_tokens" if axis == "epochs" else "flops_per_token"
            raise ValueError(f"converting to or from {axis} needs {need}")
    return value * (factors[to] / factors[frm])


# ---------------------------------------------------------------------------------------------------------------
# LOWESS as a linear smoother


def lowess_matrix(lx: np.ndarray, at: np.ndarray, span: float, robust: np.ndarray | None = None) -> np.ndarray:
    """Rows: the weights that map data values at `lx` to the local-linear LOWESS fit at each point of `at`.
    With robustness weights of shape (rows, len(lx)), one such matrix per row: (rows, len(at), len(lx))."""
    n = len(lx)
    k = min(n, max(MIN_WINDOW, math.ceil(span * n)))
    u = lx[None, :] - at[:, None]  # (m, n)
    dist = np.abs(u)
    h = np.partition(dist, k - 1, axis=1)[:, k - 1]
    h = np.maximum(h * 1.000001, 1e-12)
    w = np.clip(1 - (dist / h[:, None]) ** 3, 0, None) ** 3
    if robust is not None:
        w = w * robust[..., None, :]
    s0 = w.sum(axis=-1)[..., None]
    s1 = (w * u).sum(axis=-1)[..., None]
    s2 = (w * u * u).sum(axis=-1)[..., None]
    det = s0 * s2 - s1 * s1
    ok = det > 1e-12 * np.maximum(s0 * s2, 1e-300)
    local_linear = w * (s2 - s1 * u) / np.where(ok, det, 1.0)
    local_constant = w / np.maximum(s0, 1e-300)
    return np.where(ok, local_linear, local_constant)


def smoother_matrix(lx: np.ndarray, at: np.ndarray, span: float, robust: np.ndarray | None = None) -> np.ndarray:
    """LOWESS with Tukey's twicing: S y + S (y - S y). Smoothing the residuals once more and adding them back
    removes most of the curvature bias of a wide local-linear fit (which would shift a crossover by a few percent of
    the range) while keeping the variance of the wide span; the result is still a linear map of y (one per row of
    `robust` when it has rows)."""
    data = lowess_matrix(lx, lx, span, robust)
    return lowess_matrix(lx, at, span, robust) @ (2 * np.eye(len(lx)) - data)


def choose_span(lx: np.ndarray, y: np.ndarray) -> float:
    """The LOWESS span by leave-one-out cross-validation (exact for a linear smoother) with the one-standard-error
    rule: the widest span whose error is within one standard error of the best. Plain LOO picks spans that chase
    noise about as often as not, and wiggles near zero are exactly what would move a crossover."""
    return float(choose_spans(lx, y[None, :])[0])


def choose_spans(lx: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """`choose_span` for each row of `ys` (replicates x points) at once: the candidate smoothers do not depend on
    the data, only their errors do."""
    n = len(lx)
    spans = sorted({max(s, MIN_WINDOW / n) for s in SPANS})
    errors = []  # per span: (rows x points) squared leave-one-out errors
    for span in spans:
        s = smoother_matrix(lx, lx, span)
        leverage = np.clip(np.diag(s), None, 0.99)
        errors.append(((ys - ys @ s.T) / (1 - leverage)) ** 2)
    scores = np.stack([e.mean(axis=1) for e in errors], axis=1)  # (rows, spans)
    best = np.argmin(scores, axis=1)
    spread = np.stack([e.std(axis=1, ddof=1) for e in errors], axis=1)
    rows = np.arange(len(ys))
    limit = scores[rows, best] + spread[rows, best] / math.sqrt(n)
    within = scores <= limit[:, None]
    widest = len(spans) - 1 - np.argmax(within[:, ::-1], axis=1)  # spans are sorted: the last one within the limit
    return np.asarray(spans)[widest]


def robustness_weights(lx: np.ndarray, ys: np.ndarray, span: float, passes: int = 2) -> np.ndarray:
    """Cleveland's bisquare weights: points far off the local fit (broken evaluations) count less. `ys` is one
    margin (points,) or many (rows, points); a row whose fit is already exact keeps its weights."""
    robust = np.ones_like(ys)
    for _ in range(passes):
        resid = ys - np.einsum("...ij,...j->...i", smoother_matrix(lx, lx, span, robust), ys)
        scale = np.median(np.abs(resid), axis=-1, keepdims=True)
        exact = scale <= 1e-12 * np.maximum(1.0, np.max(np.abs(ys), axis=-1, keepdims=True))
        if np.all(exact):
            break
        update = np.clip(1 - (resid / (6 * np.where(exact, 1.0, scale))) ** 2, 0, None) ** 2
        robust = np.where(exact, robust, update)
    return robust


# ---------------------------------------------------------------------------------------------------------------
# Detection


def _crossings(grid: np.ndarray, margins: np.ndarray) -> np.ndarray:
    """Per row of `margins` (replicates x grid): the log-x crossover, +inf if MDLM is not ahead at the end, -inf if
    it is ahead everywhere."""
    ahead = margins > 0
    behind = ~ahead
    any_behind = behind.any(axis=1)
    # index of the last grid point where MDLM is not ahead
    last = margins.shape[1] - 1 - np.argmax(behind[:, ::-1], axis=1)
    out = np.full(margins.shape[0], np.nan)
    out[~any_behind] = -np.inf
    end_behind = behind[:, -1]
    out[end_behind] = np.inf
    rows = np.flatnonzero(any_behind & ~end_behind)
    if rows.size:
        j = last[rows]
        m0, m1 = margins[rows, j], margins[rows, j + 1]
        t = np.where(m1 - m0 > 0, -m0 / np.where(m1 - m0 > 0, m1 - m0, 1.0), 0.5)
        out[rows] = grid[j] + np.clip(t, 0, 1) * (grid[j + 1] - grid[j])
    return out


def _smooth(lx: np.ndarray, grid: np.ndarray, margins: np.ndarray, spans: np.ndarray | None) -> np.ndarray:
    """Each row of `margins` (rows, points) on `grid`: LOWESS with its row's span and its own robustness weights, or
    (spans None: too few points to smooth) the raw margins, which are then already on their grid."""
    if spans is None:
        return margins
    out = np.empty((len(margins), len(grid)))
    for span in np.unique(spans):  # rows that chose the same span are smoothed together
        rows = np.flatnonzero(spans == span)
        robust = robustness_weights(lx, margins[rows], span)
        out[rows] = np.einsum("bij,bj->bi", smoother_matrix(lx, grid, span, robust), margins[rows])
    return out


def _to_x(log_x: float) -> float:
    return float(np.exp(log_x)) if math.isfinite(log_x) else log_x


def _as_samples(samples: object, n: int, name: str, resample: str) -> np.ndarray:
    """Samples as (points, seeds, items): (points, items) are one seed's items, (points, seeds) seeds without items
    (`resample` says which a 2-D array holds)."""
    arr = np.asarray(samples, dtype=float)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim not in (2, 3) or arr.shape[0] != n:
        raise ValueError(
            f"{name} must have one row per x value ({n}): shape (points, samples) or (points, seeds, items); "
            f"got shape {arr.shape}"
        )
    if arr.ndim == 2:
        arr = arr[:, None, :] if resample == "items" else arr[:, :, None]
    return arr


def _item_part(samples: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(B, points): the item-resampled curve (mean over seeds of each seed's weighted item mean) minus the observed
    one."""
    finite = np.isfinite(samples)
    filled = np.where(finite, samples, 0.0)
    sums = np.einsum("bi,psi->bps", weights, filled)
    counts = np.einsum("bi,psi->bps", weights, finite.astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        per_seed = sums / counts  # (B, points, seeds)
        base = np.nanmean(np.where(finite, samples, np.nan), axis=2)  # (points, seeds)
    per_seed = np.where(counts > 0, per_seed, base[None])
    with np.errstate(invalid="ignore"):
        part = np.nanmean(per_seed, axis=2) - np.nanmean(base, axis=1)[None]
    return np.nan_to_num(part)


def _seed_curves(samples: np.ndarray) -> np.ndarray:
    """(points, seeds): each seed's item mean, a seed's missing point filled with the other seeds' mean (its
    residual there is then zero)."""
    with warnings.catch_warnings():  # a seed without a value at a point: filled below
        warnings.simplefilter("ignore", RuntimeWarning)
        per_seed = np.nanmean(samples, axis=2)
        mean = np.nanmean(per_seed, axis=1, keepdims=True)
    return np.where(np.isfinite(per_seed), per_seed, mean)


def seed_t_draws(rng: np.random.Generator, residuals: np.ndarray, n_boot: int) -> np.ndarray:
    """(B, points) draws of the seed-level deviation of a mean curve: multivariate t, n - 1 degrees of freedom,
    scale = the sample covariance of the n residual curves (points, n) / n. Zeros with fewer than two seeds."""
    points, n = residuals.shape
    if n < 2:
        return np.zeros((n_boot, points))
    normal = rng.standard_normal((n_boot, n)) @ residuals.T / math.sqrt(n * (n - 1))  # covariance S / n
    return normal / np.sqrt(rng.chisquare(n - 1, size=(n_boot, 1)) / (n - 1))


def _replicate_margins(
    rng: np.random.Generator,
    margin: np.ndarray,
    a_s: np.ndarray,
    d_s: np.ndarray,
    sign: float,
    paired: bool,
    n_boot: int,
) -> np.ndarray:
    """(B, points) replicate margins: the observed margin + the item part + the seed part (module docstring). The
    items are drawn first, so cells with as many items get the same item draws from the same seed (`compare`)."""
    ia, id_ = a_s.shape[2], d_s.shape[2]
    uniform = lambda k: rng.multinomial(k, np.full(k, 1 / k), size=n_boot).astype(float)  # noqa: E731
    wa = uniform(ia) if ia > 1 else None
    wd = (wa if (ia == id_) else uniform(id_)) if id_ > 1 else None
    items = np.zeros((n_boot, len(margin)))
    if wa is not None:
        items -= _item_part(a_s, wa)
    if wd is not None:
        items += _item_part(d_s, wd)
    if paired and a_s.shape[1] >= 2:
        seeds = seed_t_draws(rng, _seed_residuals(d_s - a_s), n_boot)
    else:
        seeds = seed_t_draws(rng, _seed_residuals(d_s), n_boot) - seed_t_draws(rng, _seed_residuals(a_s), n_boot)
    return margin[None, :] + sign * (items + seeds)


def _seed_residuals(samples: np.ndarray) -> np.ndarray:
    """(points, seeds): each seed's curve minus the mean curve, shrunk to the training-noise part of its spread.

    A seed's item mean varies with its training (sigma_s^2) and with its own answers to the items (the item x seed
    interaction, sigma_e^2 / items), and the item part of a replicate already holds the latter. Per point, the
    two-way ANOVA of (seeds x items) gives E[MS_seeds] = items sigma_s^2 + sigma_e^2 and E[MS_error] = sigma_e^2, so
    the residuals are scaled by sqrt(1 - MS_error / MS_seeds) (0 when no training noise shows): the seed part then
    adds sigma_s^2 / seeds, not the interaction a second time."""
    curves = _seed_curves(samples)
    residuals = curves - curves.mean(axis=1, keepdims=True)
    seeds, items = samples.shape[1:]
    if seeds < 2 or items < 2:
        return residuals
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        by_item = np.nanmean(samples, axis=1, keepdims=True)  # (points, 1, items)
        cells = samples - curves[:, :, None] - by_item + np.nanmean(by_item, axis=2, keepdims=True)
        ms_error = np.nansum(cells**2, axis=(1, 2)) / ((seeds - 1) * (items - 1))
        ms_seeds = items * np.sum(residuals**2, axis=1) / (seeds - 1)
        share = np.where(ms_seeds > 0, 1 - ms_error / np.where(ms_seeds > 0, ms_seeds, 1.0), 0.0)
    return residuals * np.sqrt(np.clip(share, 0.0, 1.0))[:, None]


def describe_samples(seeds: int, items: bool) -> str:
    """What an interval resampled, as the verdict prints it."""
    if seeds < 2:
        return "items, 1 seed (item noise only: training noise between seeds is not in it)"
    t = f"seeds as a t with {seeds - 1} df"
    return f"{t} and items, {seeds} seeds" if items else f"{t}, {seeds} seeds"


def find_crossover(
    x: Sequence[float] | np.ndarray,
    ar: Sequence[float] | np.ndarray,
    mdlm: Sequence[float] | np.ndarray,
    higher_is_better: bool = True,
    *,
    ar_samples: np.ndarray | None = None,
    mdlm_samples: np.ndarray | None = None,
    paired: bool | None = None,
    resample: Literal["items", "seeds"] = "items",
    confidence: float = 0.9,
    n_boot: int = 1000,
    span: float | None = None,
    seed: int = 0,
) -> Crossover:
    """The first x after which MDLM stays ahead of AR to the end of the observation, and the status the evidence
    supports (module docstring).

    `x`, `ar`, `mdlm`: equal-length sequences, x positive and increasing (tokens, FLOPs or epochs). Optional
    `ar_samples` / `mdlm_samples` whose mean is the curve: (len(x), items) per-item scores of one seed, (len(x),
    seeds) per-seed values without items (`resample="seeds"`), or (len(x), seeds, items) per-seed per-item scores;
    they give the interval `ci` at level `confidence` and the evidence-based status. AR and MDLM seeds are paired
    when both have the same shape, unless `paired=False`.
    """
    xs = np.asarray(x, dtype=float)
    a = np.asarray(ar, dtype=float)
    d = np.asarray(mdlm, dtype=float)
    if not (xs.ndim == a.ndim == d.ndim == 1) or not (len(xs) == len(a) == len(d)):
        raise ValueError(f"x, ar and mdlm must be 1-D and of equal length (got {len(xs)}, {len(a)}, {len(d)})")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if resample not in ("items", "seeds"):
        raise ValueError(f"resample must be 'items' or 'seeds', got {resample!r}")
    keep = np.isfinite(xs) & np.isfinite(a) & np.isfinite(d)
    if np.any(xs[keep] <= 0):
        raise ValueError("x must be positive: the crossover is located in log x")
    if np.any(np.diff(xs[keep]) <= 0):
        raise ValueError("x must be strictly increasing")
    a_s = d_s = None
    if (ar_samples is None) != (mdlm_samples is None):
        raise ValueError("give both ar_samples and mdlm_samples, or neither")
    if ar_samples is not None:
        a_s = _as_samples(ar_samples, len(xs), "ar_samples", resample)[keep]
        d_s = _as_samples(mdlm_samples, len(xs), "mdlm_samples", resample)[keep]
    xs, a, d = xs[keep], a[keep], d[keep]
    n = len(xs)
    if n == 0:
        raise ValueError("no finite points to compare")
    sign = 1.0 if higher_is_better else -1.0
    margin = sign * (d - a)
    lx = np.log(xs)
    x_range = (float(xs[0]), float(xs[-1]))

    smoothed = n >= MIN_SMOOTH_POINTS
    grid = np.linspace(lx[0], lx[-1], GRID_POINTS) if smoothed else lx
    used_span = (span if span is not None else choose_span(lx, margin)) if smoothed else None
    smooth = _smooth(lx, grid, margin[None, :], None if used_span is None else np.array([used_span]))[0]
    point = _crossings(grid, smooth[None, :])[0]
    status: Status = ALWAYS_AHEAD if point == -np.inf else NOT_CROSSED if point == np.inf else CROSSED
    result = Crossover(
        x=float(np.exp(point)) if status == CROSSED else None,
        status=decide(status, None, confidence),  # no replicates yet: no claim
        point_status=status,
        confidence=confidence,
        n_points=n,
        x_range=x_range,
        span=used_span,
        grid=np.exp(grid),
        margin=smooth,
    )
    if a_s is None or d_s is None:
        return result

    rng = np.random.default_rng(seed)
    ka, kd = a_s.shape[1:], d_s.shape[1:]
    pair = (ka == kd) if paired is None else paired
    if pair and ka != kd:
        raise ValueError(f"paired samples need the same number of items (and seeds) for AR and MDLM ({ka} vs {kd})")
    reps = _replicate_margins(rng, margin, a_s, d_s, sign, pair, n_boot)
    spans = None  # every replicate chooses its own span (unless one was given) and its robustness weights
    if smoothed:
        spans = np.full(n_boot, span) if span is not None else choose_spans(lx, reps)
    crossings = _crossings(grid, _smooth(lx, grid, reps, spans))
    alpha = (1 - confidence) / 2
    low = float(np.quantile(crossings, alpha, method="inverted_cdf"))
    high = float(np.quantile(crossings, 1 - alpha, method="inverted_cdf"))
    seeds = int(min(ka[0], kd[0]))
    p_ahead = float(np.mean(crossings < np.inf))
    return replace(
        result,
        status=decide(status, p_ahead, confidence),
        evidence=INTERVAL,
        ci=(_to_x(low), _to_x(high)),
        ci_source=describe_samples(seeds, items=min(ka[1], kd[1]) > 1),
        p_crossed=float(np.mean(np.isfinite(crossings))),
        p_ahead_at_end=p_ahead,
        seeds=seeds,
        replicates=np.exp(crossings),
    )
