"""Data-constrained scaling-law fits (Muennighoff et al., 2023), per objective, and the critical compute.

    L(D, U) = E + B / D'^beta,   D' = min(D, U) + U * R_D* * (1 - exp(-R / R_D*)),   R = max(D / U - 1, 0)

D is the number of training tokens seen, U the unique tokens, R the repetitions beyond the first epoch, and R_D* the
repetition "half-life": how many repeats still carry value. The parameter term A/N^alpha of the full law is constant
within a model size, so fits are made per objective and model size (it is absorbed into E).

The fit minimises a robust loss (scipy's `least_squares`, soft-L1) on log-loss residuals, from several starts chosen
by a coarse grid search over (E, R_D*) where log(L - E) is linear in (log B, beta). It refuses -- raising
`InsufficientData` with the reason -- when there are too few points or no repeated data to identify R_D*.

Critical compute: for a unique budget U, the smallest training compute C = FLOPs-per-token x D beyond which the MDLM
law predicts a lower loss than the AR law and keeps it (Prabhudesai et al. report C_crit(U) ~ 2.12e15 * U^2.174 FLOPs,
which gives the compute of their experiments when U is counted in millions of unique tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MIN_POINTS = 8
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
        return self.r_star < 3 * self.max_repetitions and self.r_star_factor < 3


def fit_data_constrained(
    tokens: np.ndarray, unique: np.ndarray, loss: np.ndarray, objective: str = "", label: str = ""
) -> ScalingFit:
    """Fit E, B, beta and R_D* to loss observations at (tokens seen, unique tokens)."""
    from scipy.optimize import least_squares

    d = np.asarray(tokens, dtype=float)
    u = np.broadcast_to(np.asarray(unique, dtype=float), d.shape).copy()
    y = np.asarray(loss, dtype=float)
    ok = np.isfinite(d) & np.isfinite(u) & np.isfinite(y) & (d > 0) & (u > 0) & (y > 0)
    d, u, y = d[ok], u[ok], y[ok]
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
        pred = np.log(e + np.exp(intercept) * np.exp(x) ** -beta) if beta > 0 else np.full_like(y, np.nan)
        sse = float(np.sum((pred - log_y) ** 2)) if np.all(np.isfinite(pred)) else math.inf
        return sse, float(intercept), float(beta)

    y_min = float(y.min())
    starts = []
    for e_frac in (0.0, 0.3, 0.6, 0.8, 0.9, 0.95):
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
    dof = max(len(y) - 4, 1)
    sigma2 = float(np.sum(resid**2)) / dof
    at_bound = log_r >= upper[3] - 1e-3 or log_r <= lower[3] + 1e-3
    try:
        cov = np.linalg.pinv(best.jac.T @ best.jac) * sigma2
        se_log_r = math.inf if at_bound else math.sqrt(max(cov[3, 3], 0.0))
    except np.linalg.LinAlgError:  # pragma: no cover - pinv rarely fails
        se_log_r = math.inf
    return ScalingFit(
        objective=objective,
        e=float(e),
        b=float(math.exp(log_b)),
        beta=float(beta),
        r_star=float(math.exp(log_r)),
        r_star_factor=float(math.exp(se_log_r)) if se_log_r < 50 else math.inf,
        n_points=len(y),
        max_repetitions=float(reps.max()),
        rmse=float(math.sqrt(np.mean(resid**2))),
        label=label,
    )


def critical_tokens(ar: ScalingFit, dlm: ScalingFit, unique: float, max_epochs: float = 1e4) -> float | None:
    """Smallest D (tokens) from which the MDLM law predicts a lower loss than the AR law up to `max_epochs`;
    None if MDLM never gets ahead in that range. Returns 0.0 when MDLM is ahead from the first token."""
    grid = np.geomspace(unique * 1e-3, unique * max_epochs, 4000)
    margin = ar.predict(grid, unique) - dlm.predict(grid, unique)
    ahead = margin > 0
    if not ahead[-1]:
        return None
    if ahead.all():
        return 0.0
    j = len(ahead) - 1 - int(np.argmax(~ahead[::-1]))
    m0, m1 = margin[j], margin[j + 1]
    t = -m0 / (m1 - m0) if m1 > m0 else 0.5
    return float(math.exp(math.log(grid[j]) + t * (math.log(grid[j + 1]) - math.log(grid[j]))))
