"""Data-constrained scaling-law fits (Muennighoff et al., 2023), per objective, and the critical compute.

    L(D, U) = E + B / D'^beta,   D' = min(D, U) + U * R_D* * (1 - exp(-R / R_D*)),   R = max(D / U - 1, 0)

D is the number of training tokens seen, U the unique tokens, R the repetitions beyond the first epoch, and R_D* the
repetition "half-life": how many repeats still carry value. The parameter term A/N^alpha of the full law is constant
within a model size, so fits are made per objective and model size (it is absorbed into E).

The fit minimises a robust loss (scipy's `least_squares`, soft-L1) on log-loss residuals, from several starts chosen
by a coarse grid search over (E, R_D*) where log(L - E) is linear in (log B, beta). It refuses -- raising
`InsufficientData` with the reason -- when there are too few points or no repeated data to identify R_D*.

The law only decreases, so each run is fitted up to its held-out loss minimum (an overfitting AR's later rise would
otherwise pull R_D* down). The standard error of R_D* comes from a bootstrap over runs (the points of one run are
correlated, so treating them as independent understates it); with fewer than 3 runs there is none. A fit is
`identified` only if it converged, no parameter sits at the edge of its range, the law fits (log RMSE <= 5%), and
R_D* is pinned within a factor of 3 and within 3x the repetitions observed; `problems` says what failed.

Critical compute: for a unique budget U, the smallest training compute C = FLOPs-per-token x D beyond which the MDLM
law predicts a lower loss than the AR law and keeps it (Prabhudesai et al. report C_crit(U) ~ 2.12e15 * U^2.174 FLOPs,
which gives the compute of their experiments when U is counted in millions of unique tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

MIN_POINTS = 8
MIN_RUNS = 3  # runs a block bootstrap of the standard errors needs
POOR_RMSE = 0.05  # log-loss residuals above this RMS: the law does not describe the data
RISE_TOLERANCE = 0.01  # a point more than 1% above its run's minimum, after it, is overfitting, not the law
BOOTSTRAP_FITS = 60
PRABHUDESAI_COEF = 2.12e15
PRABHUDESAI_EXP = 2.174


class InsufficientData(ValueError):
    """The data cannot support the fit; the message says why and what would."""


def effective_data(tokens: np.ndarray | float, unique: np.ndarray | float, r_star: float) -> np.ndarray:
    """D' = min(D, U) + U * R_D* * (1 - exp(-R / R_D*)) with R = max(D/U - 1, 0)."""
    d = np.asarray(tokens, dtype=float)
    u = np.asarray(unique, dtype=float)
    r = np.maximum(d / u - 1.0, 0.0)
    return np.minimum(d, u) + u * r_star * -np.expm1(-r / r_star)


def law(tokens: np.ndarray, unique: np.ndarray, e: float, b: float, beta: float, r_star: float) -> np.ndarray:
    return e + b * effective_data(tokens, unique, r_star) ** -beta


def prabhudesai_critical_compute(unique_tokens: float) -> float:
    """Their C_crit(U) = 2.12e15 * U^2.174 FLOPs, U in millions of unique tokens (our reading)."""
    return PRABHUDESAI_COEF * (unique_tokens / 1e6) ** PRABHUDESAI_EXP


@dataclass(frozen=True)
class ScalingFit:
    objective: str
    e: float
    b: float
    beta: float
    r_star: float
    r_star_factor: float  # multiplicative standard error of R_D* (exp of the s.e. of log R_D*); inf if unidentified
    n_points: int
    max_repetitions: float  # largest R in the data
    rmse: float  # of log-loss residuals
    label: str = ""
    converged: bool = True  # the optimiser reported success
    at_bounds: tuple[str, ...] = ()  # parameters that ended at a bound of their range (E, beta, R_D*)
    dropped_after_minimum: int = 0  # points left out: a run's loss rising after its minimum (overfitting)
    n_runs: int = 1  # runs (blocks) the standard error was bootstrapped over

    @property
    def poor(self) -> bool:
        """The law misses the data: log-loss residuals above 5% RMS."""
        return self.rmse > POOR_RMSE

    @property
    def problems(self) -> list[str]:
        """Why this fit cannot be trusted, in words (empty when it can)."""
        out = []
        if not self.converged:
            out.append("the optimiser did not converge")
        if self.at_bounds:
            out.append(f"{', '.join(self.at_bounds)} at the edge of the allowed range")
        if self.poor:
            out.append(f"a poor fit (log-loss RMSE {self.rmse:.3f})")
        if not math.isfinite(self.r_star_factor):
            out.append(
                "no standard error"
                + (f" (only {self.n_runs} run: a block bootstrap needs 3)" if self.n_runs < MIN_RUNS else "")
            )
        return out

    def predict(self, tokens: np.ndarray | float, unique: np.ndarray | float) -> np.ndarray:
        return law(np.asarray(tokens, float), np.asarray(unique, float), self.e, self.b, self.beta, self.r_star)

    @property
    def extrapolated(self) -> bool:
        """R_D* beyond the repetitions observed: the data only says that repeats had not lost their value yet."""
        return self.r_star > self.max_repetitions

    @property
    def identified(self) -> bool:
        """Whether the data pins R_D* down: within a few times the repetitions observed and a standard error below
        a factor of 3. Otherwise only "repeats had not lost much value by R = max_repetitions" is supported."""
        return (
            self.r_star < 3 * self.max_repetitions
            and self.r_star_factor < 3
            and self.converged
            and not self.at_bounds
            and not self.poor
        )


def up_to_minimum(tokens: np.ndarray, loss: np.ndarray, runs: np.ndarray) -> np.ndarray:
    """Which points the law can describe: per run, every point up to its loss minimum, and later ones only while
    within RISE_TOLERANCE of it (the law only decreases; a rise after the minimum is overfitting)."""
    keep = np.ones(len(loss), dtype=bool)
    for run in np.unique(runs):
        idx = np.flatnonzero(runs == run)
        idx = idx[np.argsort(tokens[idx], kind="stable")]
        low = int(np.argmin(loss[idx]))
        after = idx[low + 1 :]
        keep[after] = loss[after] <= loss[idx[low]] * (1 + RISE_TOLERANCE)
    return keep


def fit_data_constrained(
    tokens: np.ndarray,
    unique: np.ndarray,
    loss: np.ndarray,
    objective: str = "",
    label: str = "",
    runs: np.ndarray | None = None,
    seed: int = 0,
) -> ScalingFit:
    """Fit E, B, beta and R_D* to loss observations at (tokens seen, unique tokens), each run (default: each unique
    budget) up to its loss minimum; the standard error of R_D* from a bootstrap over runs (the points of one run are
    correlated), refitted from the fit's solution."""
    d = np.asarray(tokens, dtype=float)
    u = np.broadcast_to(np.asarray(unique, dtype=float), d.shape).copy()
    y = np.asarray(loss, dtype=float)
    runs = u.copy() if runs is None else np.asarray(runs)
    ok = np.isfinite(d) & np.isfinite(u) & np.isfinite(y) & (d > 0) & (u > 0) & (y > 0)
    d, u, y, runs = d[ok], u[ok], y[ok], runs[ok]
    keep = up_to_minimum(d, y, runs)
    dropped = int((~keep).sum())
    d, u, y, runs = d[keep], u[keep], y[keep], runs[keep]
    fit = _fit(d, u, y, objective, label)
    run_ids = np.unique(runs)
    factor = math.inf
    if len(run_ids) >= MIN_RUNS and "R_D*" not in fit.at_bounds:
        rng = np.random.default_rng(seed)
        logs = []
        for _ in range(BOOTSTRAP_FITS):
            pick = rng.choice(run_ids, size=len(run_ids))
            idx = np.concatenate([np.flatnonzero(runs == r) for r in pick])
            try:
                again = _fit(d[idx], u[idx], y[idx], objective, label, start=fit)
            except InsufficientData:
                continue
            logs.append(math.log(again.r_star))
        if len(logs) >= BOOTSTRAP_FITS // 2:
            se = float(np.std(logs, ddof=1))
            factor = math.exp(se) if se < 50 else math.inf
    return replace(fit, r_star_factor=factor, dropped_after_minimum=dropped, n_runs=len(run_ids))


def _fit(
    d: np.ndarray, u: np.ndarray, y: np.ndarray, objective: str, label: str, start: ScalingFit | None = None
) -> ScalingFit:
    """One robust least-squares fit (from a grid of starts, or from `start`)."""
    from scipy.optimize import least_squares  # lazy: scipy is slow to import

    name = f"{objective} {label}".strip() or "this objective"
    if len(y) < MIN_POINTS:
        raise InsufficientData(
            f"{name}: {len(y)} usable loss points; a data-constrained fit (4 parameters) needs at least {MIN_POINTS}"
        )
    reps = d / u - 1
    if reps.max() < 1:
        raise InsufficientData(
            f"{name}: the data never goes past two epochs (largest repetition count {max(reps.max(), 0):.2g}), so "
            f"the value of repeated tokens (R_D*) cannot be identified; train for more epochs"
        )
    if len(np.unique(np.round(np.log(d), 6))) < 4:
        raise InsufficientData(f"{name}: fewer than 4 distinct token counts; the curve's shape is undetermined")
    log_y = np.log(y)

    def linear_fit(e: float, r_star: float) -> tuple[float, float, float]:
        """For fixed (E, R_D*): log(L - E) = log B - beta log D' by least squares; returns (sse, log B, beta)."""
        target = np.log(np.maximum(y - e, 1e-12))
        x = np.log(effective_data(d, u, r_star))
        slope, intercept = np.polyfit(x, target, 1)
        beta = -slope
        with np.errstate(over="ignore", invalid="ignore"):  # a hopeless start overflows: its sse is inf, skipped
            pred = np.log(e + np.exp(intercept - beta * x)) if beta > 0 else np.full_like(y, np.nan)
        sse = float(np.sum((pred - log_y) ** 2)) if np.all(np.isfinite(pred)) else math.inf
        return sse, float(intercept), float(beta)

    y_min = float(y.min())
    starts = []
    if start is not None:
        starts.append((0.0, [min(start.e, 0.99 * y_min), math.log(start.b), start.beta, math.log(start.r_star)]))
    for e_frac in () if start is not None else (0.0, 0.3, 0.6, 0.8, 0.9, 0.95):
        for r_star in np.geomspace(0.5, 5000, 14):
            sse, log_b, beta = linear_fit(e_frac * y_min, r_star)
            if math.isfinite(sse) and 0.005 < beta < 3:
                starts.append((sse, [e_frac * y_min, log_b, beta, math.log(r_star)]))
    if not starts:
        starts = [(0.0, [0.5 * y_min, math.log(y_min), 0.3, math.log(10.0)])]
    starts.sort(key=lambda s: s[0])

    def residuals(theta: np.ndarray) -> np.ndarray:
        e, log_b, beta, log_r = theta
        pred = e + np.exp(log_b) * effective_data(d, u, math.exp(log_r)) ** -beta
        return np.log(np.maximum(pred, 1e-12)) - log_y

    reps_pos = np.maximum(reps, 0.0)

    def jacobian(theta: np.ndarray) -> np.ndarray:
        """Analytic derivatives of the log-loss residuals (4x cheaper than finite differences)."""
        e, log_b, beta, log_r = theta
        r_star = math.exp(log_r)
        d_eff = effective_data(d, u, r_star)
        term = np.exp(log_b) * d_eff**-beta
        pred = np.maximum(e + term, 1e-12)
        x = reps_pos / r_star
        # dD'/dlog R_D* = R_D* dD'/dR_D* = U R_D* (1 - e^-x - x e^-x)
        d_deff = u * r_star * (-np.expm1(-x) - x * np.exp(-x))
        return (
            np.column_stack([np.ones_like(pred), term, -term * np.log(d_eff), -beta * term / d_eff * d_deff])
            / pred[:, None]
        )

    lower = [0.0, -50.0, 0.005, math.log(0.05)]
    upper = [y_min * 0.999, 80.0, 3.0, math.log(1e6)]
    best = None
    for _, x0 in starts[:3]:
        x0 = np.clip(x0, np.array(lower) + 1e-9, np.array(upper) - 1e-9)
        scale = max(1e-4, 1.4826 * float(np.median(np.abs(residuals(x0)))))
        fit = least_squares(
            residuals, x0, jac=jacobian, bounds=(lower, upper), loss="soft_l1", f_scale=scale, x_scale="jac"
        )
        if best is None or fit.cost < best.cost:
            best = fit
    assert best is not None
    e, log_b, beta, log_r = best.x
    resid = residuals(best.x)
    names = ("E", "B", "beta", "R_D*")
    span = np.array(upper) - np.array(lower)
    edge = (best.x <= np.array(lower) + 1e-3 * span) | (best.x >= np.array(upper) - 1e-3 * span)
    return ScalingFit(
        objective=objective,
        e=float(e),
        b=float(math.exp(log_b)),
        beta=float(beta),
        r_star=float(math.exp(log_r)),
        r_star_factor=math.inf,  # set by fit_data_constrained's bootstrap over runs
        n_points=len(y),
        max_repetitions=float(reps.max()),
        rmse=float(math.sqrt(np.mean(resid**2))),
        label=label,
        converged=bool(best.success),
        at_bounds=tuple(n for n, hit in zip(names, edge, strict=True) if hit and n != "B"),
    )


def critical_tokens(ar: ScalingFit, mdlm: ScalingFit, unique: float, max_epochs: float = 1e4) -> float | None:
    """Smallest D (tokens) from which the MDLM law predicts a lower loss than the AR law up to `max_epochs`;
    None if MDLM never gets ahead in that range. Returns 0.0 when MDLM is ahead from the first token."""
    grid = np.geomspace(unique * 1e-3, unique * max_epochs, 4000)
    margin = ar.predict(grid, unique) - mdlm.predict(grid, unique)
    ahead = margin > 0
    if not ahead[-1]:
        return None
    if ahead.all():
        return 0.0
    j = len(ahead) - 1 - int(np.argmax(~ahead[::-1]))
    m0, m1 = margin[j], margin[j + 1]
    t = -m0 / (m1 - m0) if m1 > m0 else 0.5
    return float(math.exp(math.log(grid[j]) + t * (math.log(grid[j + 1]) - math.log(grid[j]))))
