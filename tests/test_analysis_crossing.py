"""find_crossover on synthetic curves with a known crossover and realistic evaluation noise.

The noise model is the one of a multiple-choice benchmark: items of varying difficulty, each answered correctly with
probability chance + (1 - chance) * sigmoid(skill - difficulty), independently at every eval point. AR and MDLM
answer the same items. The population curves cross exactly where the two skills are equal.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from crossover.analysis import Crossover, convert_x, find_crossover
from crossover.analysis.crossing import (
    ALWAYS_AHEAD,
    CROSSED,
    INTERVAL,
    NOT_CROSSED,
    UNDETERMINED,
    compare,
    decide,
    seed_t_draws,
)

from .analysis_support import SHAPES, SHIPPED_X, draw_shipped_study, draw_sim_study, sim_study, true_crossover

X = np.geomspace(1e6, 1e9, 40)  # 40 log-spaced eval points over three decades of training tokens
SPAN = math.log(X[-1] / X[0])


def skills(lx: np.ndarray, kind: str, where: float) -> tuple[np.ndarray, np.ndarray]:
    """AR saturates (tanh); MDLM = AR + a margin that is negative before `where` and positive after it."""
    z_ar = 2.5 * np.tanh(3 * lx) - 1
    if kind == "cross":
        return z_ar, z_ar + 2.0 * (lx - where)
    if kind == "never":
        return z_ar, z_ar - 0.4
    return z_ar, z_ar + 0.4


def draw_items(
    rng: np.random.Generator, kind: str = "cross", where: float = 0.5, items: int = 500, x: np.ndarray = X
) -> tuple[np.ndarray, np.ndarray]:
    """(points x items) 0/1 outcomes for AR and MDLM on the same items."""
    lx = np.linspace(0, 1, len(x))
    z_ar, z_mdlm = skills(lx, kind, where)
    difficulty = 1.5 * rng.standard_normal(items)
    p_ar = 0.25 + 0.75 / (1 + np.exp(-(z_ar[:, None] - difficulty)))
    p_mdlm = 0.25 + 0.75 / (1 + np.exp(-(z_mdlm[:, None] - difficulty)))
    return (rng.random(p_ar.shape) < p_ar).astype(float), (rng.random(p_mdlm.shape) < p_mdlm).astype(float)


def true_x(where: float, x: np.ndarray = X) -> float:
    return float(x[0] * math.exp(where * math.log(x[-1] / x[0])))


@pytest.mark.parametrize("where", [0.2, 0.35, 0.5, 0.65, 0.8])
def test_recovers_a_planted_crossover_within_5_percent_of_the_log_range(where):
    """2,000 items per eval point (the paper's specs' max_items): per-point accuracy noise of about 1 point."""
    for seed in range(3):
        ar, mdlm = draw_items(np.random.default_rng(seed), where=where, items=2000)
        result = find_crossover(X, ar.mean(1), mdlm.mean(1))
        assert result.point_status == "crossed"
        error = abs(math.log(result.x / true_x(where))) / SPAN
        assert error < 0.05, (where, seed, error)


def test_recovery_is_unbiased_over_many_draws_at_500_items():
    errors = []
    for seed in range(60):
        rng = np.random.default_rng(100 + seed)
        where = rng.uniform(0.25, 0.75)
        ar, mdlm = draw_items(rng, where=where, items=500)
        result = find_crossover(X, ar.mean(1), mdlm.mean(1))
        errors.append(math.log(result.x / true_x(where)) / SPAN)
    errors = np.array(errors)
    assert abs(np.median(errors)) < 0.02
    assert np.mean(np.abs(errors) < 0.05) >= 0.85


def test_lower_is_better_metrics_flip_the_sign():
    """Losses: MDLM ahead means MDLM lower."""
    ar, mdlm = draw_items(np.random.default_rng(7), where=0.4, items=2000)
    up = find_crossover(X, ar.mean(1), mdlm.mean(1))
    down = find_crossover(X, -ar.mean(1), -mdlm.mean(1), higher_is_better=False)
    assert up.point_status == down.point_status == "crossed"
    assert down.x == pytest.approx(up.x)


@pytest.mark.parametrize(("kind", "status"), [("never", "not_crossed"), ("ahead", "mdlm_always_ahead")])
def test_never_crossing_and_always_ahead(kind, status):
    for seed in range(20):
        ar, mdlm = draw_items(np.random.default_rng(seed), kind=kind, items=500)
        result = find_crossover(X, ar.mean(1), mdlm.mean(1), ar_samples=ar, mdlm_samples=mdlm, n_boot=300)
        assert result.status == result.point_status == status, seed
        assert result.x is None
        assert result.p_crossed is not None and result.p_crossed < 0.5


def test_mdlm_approaching_but_not_passing_is_not_crossed():
    """The margin shrinks towards zero but AR is still ahead at the end: no crossover may be claimed."""
    lx = np.linspace(0, 1, 30)
    x = np.geomspace(1e6, 1e8, 30)
    ar = 0.6 + 0.1 * lx
    mdlm = ar - 0.05 * (1 - lx) - 0.01
    assert find_crossover(x, ar, mdlm).point_status == "not_crossed"


def test_dip_after_crossing_moves_the_crossover_to_the_last_passage():
    """'Stays ahead to the end': an early lead that is lost again does not count."""
    x = np.geomspace(1, 1000, 60)
    lx = np.log10(x)
    margin = np.where(lx < 1, 0.05, np.where(lx < 2, -0.05, 0.05)) + 0.0 * lx
    result = find_crossover(x, np.zeros(60), margin)
    assert result.point_status == "crossed"
    assert 50 < result.x < 200  # the second passage, near x = 100


def test_a_single_broken_evaluation_does_not_move_the_crossover():
    ar, mdlm = draw_items(np.random.default_rng(3), where=0.5, items=2000)
    a, d = ar.mean(1), mdlm.mean(1)
    clean = find_crossover(X, a, d)
    broken = d.copy()
    broken[-5] = 0.0  # a failed eval logged as zero accuracy near the end
    robust = find_crossover(X, a, broken)
    assert robust.point_status == "crossed"
    assert abs(math.log(robust.x / clean.x)) / SPAN < 0.03


@pytest.mark.parametrize("points", [2, 3, 5])
def test_few_points_use_the_raw_margin(points):
    x = np.geomspace(10, 1000, points)
    ar = np.linspace(0.5, 0.6, points)
    mdlm = np.linspace(0.4, 0.7, points)
    result = find_crossover(x, ar, mdlm)
    assert result.span is None
    assert result.point_status == "crossed"
    # raw margin -0.1 -> +0.1 linearly in log x: zero crossing exactly at the geometric middle
    assert result.x == pytest.approx(100, rel=1e-6)


def test_single_point():
    assert find_crossover([5.0], [0.5], [0.6]).point_status == "mdlm_always_ahead"
    assert find_crossover([5.0], [0.6], [0.5]).point_status == "not_crossed"
    assert find_crossover([5.0], [0.5], [0.6]).status == "undetermined"  # no samples: nothing backs a claim


@pytest.mark.parametrize("shape", ["late", "mid"])
def test_confidence_interval_covers_the_truth_about_90_percent_of_the_time(shape):
    """Studies shaped like the shipped ones (tests.analysis_support): 12 log-spaced points, AR peaking early then
    decaying, MDLM crossing between the last two points or mid-way; 256 and 128 items in turn. The span and the
    robustness weights are chosen afresh in every replicate (bench/bench_crossover.py measures it at length)."""
    reps, covered = 80, 0
    where = SHAPES[shape]
    for sim in range(reps):
        ar, mdlm = draw_shipped_study(np.random.default_rng(10_000 + sim), where, items=(256, 128)[sim % 2])
        ar, mdlm = ar[:, 0], mdlm[:, 0]
        result = find_crossover(
            SHIPPED_X, ar.mean(1), mdlm.mean(1), ar_samples=ar, mdlm_samples=mdlm, n_boot=200, seed=sim
        )
        assert result.ci is not None and result.ci[0] <= result.ci[1]
        assert result.ci_source.startswith("items, 1 seed (item noise only") and result.seeds == 1
        covered += result.ci[0] <= true_crossover(where) <= result.ci[1]
    assert 0.8 <= covered / reps <= 0.99, covered / reps


def test_a_tie_does_not_read_crossed():
    """MDLM approaches AR's plateau from below and ends 0.01 short of it, never passing: the smoothed estimate
    crosses in many studies (noise at the end), the evidence-based status seldom (bench goal: <= 10%)."""
    study = sim_study("tie", noise=False)
    point_crossed = claimed = 0
    sims = 100
    for sim in range(sims):
        ar, mdlm = draw_sim_study(np.random.default_rng(20_000 + sim), study, items=256, seeds=1)
        result = find_crossover(
            SHIPPED_X,
            ar.mean(axis=(1, 2)),
            mdlm.mean(axis=(1, 2)),
            ar_samples=ar[:, 0],
            mdlm_samples=mdlm[:, 0],
            n_boot=300,
            seed=sim,
        )
        point_crossed += result.point_status == CROSSED
        claimed += result.status in (CROSSED, ALWAYS_AHEAD)
        if result.point_status == CROSSED and result.status != CROSSED:
            assert result.status == UNDETERMINED and result.p_ahead_at_end < 0.9 and result.x is not None
    assert point_crossed >= 0.3 * sims, point_crossed  # the point estimate alone would claim a crossing
    assert claimed <= 0.12 * sims, claimed


def test_three_seeds_interval_uses_the_seeds_as_a_t():
    """A 3-seed study with the measured training noise: the interval resamples the seeds (t, 2 df) on top of the
    items, is much wider than the items-only interval of the seed-averaged curves, and covers the planted
    crossover at about its level where the items-only one does not."""
    study = sim_study("ahead", noise=True)
    covered = {"seeds": 0, "items": 0}
    widths = {"seeds": [], "items": []}
    sims = 40
    for sim in range(sims):
        ar, mdlm = draw_sim_study(np.random.default_rng(30_000 + sim), study, items=256, seeds=3)
        curves = (ar.mean(axis=(1, 2)), mdlm.mean(axis=(1, 2)))
        with_seeds = find_crossover(SHIPPED_X, *curves, ar_samples=ar, mdlm_samples=mdlm, n_boot=300, seed=sim)
        items_only = find_crossover(
            SHIPPED_X, *curves, ar_samples=ar.mean(1), mdlm_samples=mdlm.mean(1), n_boot=300, seed=sim
        )
        assert with_seeds.ci_source == "seeds as a t with 2 df and items, 3 seeds" and with_seeds.seeds == 3
        assert with_seeds.x == items_only.x
        for name, r in (("seeds", with_seeds), ("items", items_only)):
            covered[name] += r.ci[0] <= study.truth <= r.ci[1]
            low, high = (min(max(b, SHIPPED_X[0]), SHIPPED_X[-1]) for b in r.ci)
            widths[name].append(math.log(high / low))
    assert covered["seeds"] >= 0.8 * sims, covered
    assert covered["items"] < covered["seeds"], covered
    assert np.median(widths["seeds"]) > 1.2 * np.median(widths["items"]), widths
    with pytest.raises(ValueError, match="same number of items"):
        find_crossover(SHIPPED_X, *curves, ar_samples=ar, mdlm_samples=mdlm[:, :2], paired=True)


def test_seed_t_draws_have_the_t_spread():
    """The seed part of a replicate: with n seeds, a t with n - 1 df scaled by the sample sd over sqrt(n)."""
    rng = np.random.default_rng(0)
    residuals = np.array([[-1.0, 0.0, 1.0]])  # one point, 3 seeds: sample sd 1
    draws = seed_t_draws(rng, residuals, 200_000)[:, 0]
    expected = 2.919986 / math.sqrt(3)  # t(2) 95th percentile x sd / sqrt(n)
    assert np.quantile(draws, 0.95) == pytest.approx(expected, rel=0.03)
    assert not seed_t_draws(rng, residuals[:, :1], 10).any()  # one seed: no seed part


def test_the_status_is_decided_by_the_evidence_at_the_study_confidence():
    assert decide(CROSSED, None, 0.9) == decide(NOT_CROSSED, None, 0.9) == UNDETERMINED  # no samples: no claim
    assert decide(CROSSED, 0.95, 0.9) == CROSSED
    assert decide(CROSSED, 0.9, 0.9) == CROSSED
    assert decide(CROSSED, 0.89, 0.9) == UNDETERMINED
    assert decide(ALWAYS_AHEAD, 1.0, 0.9) == ALWAYS_AHEAD
    assert decide(NOT_CROSSED, 0.02, 0.9) == NOT_CROSSED
    assert decide(NOT_CROSSED, 0.2, 0.9) == UNDETERMINED
    assert decide(NOT_CROSSED, 0.97, 0.9) == UNDETERMINED  # the replicates say MDLM ahead, the estimate not


def test_never_crossing_and_clearly_crossing_cells_are_decided():
    """Where the evidence is clear the state says so, and a crossing far later than another is surely later."""
    early, late = (draw_items(np.random.default_rng(9), where=w, items=500) for w in (0.3, 0.7))
    found = [
        find_crossover(X, a.mean(1), d.mean(1), ar_samples=a, mdlm_samples=d, n_boot=300) for a, d in (early, late)
    ]
    assert [r.status for r in found] == [CROSSED, CROSSED]
    assert all(r.evidence == INTERVAL and r.p_ahead_at_end >= 0.9 and r.ci[1] < math.inf for r in found)
    assert compare(found[0], found[1], 0.9, comparisons=3) == 1
    assert compare(found[1], found[0], 0.9) == -1
    assert compare(found[0], found[0], 0.9) == 0  # equal replicates: not ordered


def test_seed_samples_unpaired_and_missing_values():
    rng = np.random.default_rng(0)
    lx = np.linspace(0, 1, 20)
    x = np.geomspace(1e5, 1e7, 20)
    ar = 0.5 + 0.2 * lx + 0.01 * rng.standard_normal((3, 20))
    mdlm = 0.4 + 0.4 * lx + 0.01 * rng.standard_normal((4, 20))
    ar[1, 4] = np.nan  # one seed missed one eval
    result = find_crossover(
        x, np.nanmean(ar, 0), mdlm.mean(0), ar_samples=ar.T, mdlm_samples=mdlm.T, resample="seeds", n_boot=200
    )
    assert result.status == "crossed" and result.ci_source == "seeds as a t with 2 df, 3 seeds"
    assert result.ci[0] <= result.x <= result.ci[1]
    # truth: 0.5 + 0.2 t = 0.4 + 0.4 t at t = 0.5, the geometric middle of the x range
    assert abs(math.log(result.x / 1e6)) / math.log(100) < 0.1


def test_input_validation():
    with pytest.raises(ValueError, match="equal length"):
        find_crossover([1, 2, 3], [1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="increasing"):
        find_crossover([1, 3, 2], [1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError, match="positive"):
        find_crossover([0, 1, 2], [1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError, match="both"):
        find_crossover([1, 2, 3], [1, 2, 3], [1, 2, 3], ar_samples=np.ones((3, 2)))
    with pytest.raises(ValueError, match="one row per x"):
        find_crossover([1, 2, 3], [1, 2, 3], [1, 2, 3], ar_samples=np.ones((2, 2)), mdlm_samples=np.ones((2, 2)))
    nan_points = find_crossover([1, 2, 3, 4], [0.5, np.nan, 0.5, 0.5], [0.4, 0.6, 0.6, 0.6])
    assert nan_points.n_points == 3 and nan_points.point_status == "crossed"


def test_conversions_between_tokens_flops_and_epochs():
    assert convert_x(3e6, "tokens", "epochs", unique_tokens=1e6) == pytest.approx(3.0)
    assert convert_x(2.0, "epochs", "flops", unique_tokens=1e6, flops_per_token=6e8) == pytest.approx(1.2e15)
    assert convert_x(1.2e15, "flops", "tokens", flops_per_token=6e8) == pytest.approx(2e6)
    with pytest.raises(ValueError, match="needs unique_tokens"):
        convert_x(1.0, "tokens", "epochs")
    with pytest.raises(ValueError, match="unknown compute axis"):
        convert_x(1.0, "tokens", "steps")
    ar, mdlm = draw_items(np.random.default_rng(1), where=0.5, items=2000)
    tokens = find_crossover(X, ar.mean(1), mdlm.mean(1))
    flops = find_crossover(X * 6e8, ar.mean(1), mdlm.mean(1))
    assert isinstance(tokens, Crossover)
    assert flops.x == pytest.approx(tokens.scaled(6e8).x, rel=1e-9)  # the detector is scale-free in log x
    epochs = tokens.scaled(1 / 1e6)
    assert epochs.x == pytest.approx(tokens.x / 1e6) and epochs.x_range[1] == pytest.approx(1000)
