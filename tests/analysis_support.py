"""Synthetic studies written into a real MLflow store through the platform's writer (crossover.platform.tracking),
for the analysis tests and bench/bench_analysis.py: the curves come from tests/synthetic.py, the parent
run from `start_study` and each trial's run from `TrialRun`, exactly as `crossover run` writes them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import yaml

from crossover.platform.tracking import TrialRun, finish_study, start_study
from crossover.specs import StudySpec, TrialSpec, parse_study
from crossover.tracking.names import SEARCH_PARAM_PREFIX, eval_key

from .synthetic import CLOZE, Truth, eval_steps, item_ids, trial_points


def write_trial(
    run: TrialRun,
    trial: TrialSpec,
    truth: Truth,
    rng: np.random.Generator,
    steps: Iterable[int] | None = None,
    items: bool = True,
    train_points_per_eval: int = 0,
    error: str | None = None,
) -> None:
    """Log one synthetic trial into its run (per-item cloze artifacts unless `items=False`) and finish the run
    (failed, with `error`). Metrics are buffered and sent in batches of 1,000 values."""
    ids = item_ids(truth)
    for point in trial_points(trial, truth, rng, steps, train_points_per_eval):
        if items and point.items is not None:
            run.log_items(CLOZE, point.step, ids, {k: list(v) for k, v in point.items.items()})
        run.log(point.metrics, point.step, flush=False)
    run.finish(error)


def write_search_run(
    uri: str,
    parent_run_id: str,
    trial: TrialSpec,
    truth: Truth,
    rng: np.random.Generator,
    tags: dict[str, str],
    values: dict[str, Any] | None = None,
    steps: Iterable[int] | None = None,
    error: str | None = None,
) -> str:
    """One run of a search study (a sample, a confirm or a base run), as crossover.platform.search writes it: the
    trial's run with `tags` over its own (its role, the grid cell, its search group, ...) and each sampled value of
    `values` as a `search.<name>` param; finished, or failed with `error`. Returns the run id."""
    run = TrialRun(trial, uri, parent_run_id, tags=tags)
    for name, value in (values or {}).items():
        run.client.log_param(run.run_id, f"{SEARCH_PARAM_PREFIX}{name}", str(value))
    write_trial(run, trial, truth, rng, steps, error=error)
    return run.run_id


def start(raw: dict[str, Any], uri: str, fresh: bool = False) -> tuple[StudySpec, str]:
    """The study's parent run, as `crossover run` starts it from the spec `raw` (as written): (spec, run id)."""
    spec = parse_study(raw)
    return spec, start_study(spec, yaml.safe_dump(raw, sort_keys=False), uri, fresh=fresh)


def write_study(
    raw: dict[str, Any],
    uri: str,
    truth: Truth | Callable[[TrialSpec], Truth] | None = None,
    seed: int = 0,
    items: bool = True,
    steps: Iterable[int] | None = None,
    train_points_per_eval: int = 0,
    fresh: bool = False,
) -> str:
    """Write a whole synthetic study (parent run plus one finished child run per trial); returns the parent run id.
    `truth` may depend on the trial (a function of it): a planted effect of quality, model size or noise."""
    spec, parent_run_id = start(raw, uri, fresh=fresh)
    fixed = truth if isinstance(truth, Truth) else Truth()
    truth_of = truth if callable(truth) else (lambda _: fixed)
    rng = np.random.default_rng(seed)
    step_list = list(steps) if steps is not None else None
    for trial in spec.expand():
        run = TrialRun(trial, uri, parent_run_id)
        write_trial(run, trial, truth_of(trial), rng, step_list, items, train_points_per_eval)
    finish_study(uri, parent_run_id)
    return parent_run_id


# ---------------------------------------------------------------------------------------------------------------
# Simulated crossover studies shaped like the shipped ones (bench/bench_crossover.py and the coverage tests)

SHIPPED_X = np.geomspace(40e3, 4e6, 12)  # cpu_crossover: 12 log-spaced eval points over 4M training tokens
SHAPES = {  # where the population curves cross, as a fraction of the log-x range
    "late": 10.5 / 11,  # between the last two eval points: one point after the crossing
    "mid": 0.5,
}
ITEM_SPREAD = 1.5  # item difficulty, logits
# The training noise measured in cpu_crossover_seeds (3 seeds at 50k): the standard deviation over seeds of AR's
# best accuracy and of MDLM's last (docs/results.md).
TRAINING_NOISE = {"ar": 0.024, "mdlm": 0.073}
AHEAD_AT_END = 0.07  # the real crossing the bench must detect: MDLM ends this far ahead in expected accuracy
TIE_BELOW = 0.01  # the tie: MDLM approaches AR's plateau and ends this far below it, never passing


def shipped_skills(t: np.ndarray, where: float) -> tuple[np.ndarray, np.ndarray]:
    """Logit skills at log-x fraction `t`: AR peaks a quarter of the way in and then decays (it overfits repeated
    data); MDLM climbs steadily and meets AR at `where`."""
    z_ar = 0.9 - 4.0 * (t - 0.25) ** 2
    z_at = 0.9 - 4.0 * (where - 0.25) ** 2
    return z_ar, z_at + 2.0 * (t - where)


def expected_accuracy(z: np.ndarray | float, spread: float = ITEM_SPREAD) -> np.ndarray:
    """The population accuracy at skill z: 4-choice items, difficulty ~ N(0, spread^2) (and any per-seed skill
    offset folded into `spread`), by Gauss-Hermite quadrature."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    u = np.asarray(z, dtype=float)[..., None] - spread * nodes
    return (0.25 + 0.75 / (1 + np.exp(-u))) @ weights / weights.sum()


def offset_sd(objective: str, z: float) -> float:
    """The per-seed skill offset (logits) whose accuracy spread at skill z is the measured training noise."""
    slope = (expected_accuracy(z + 1e-3) - expected_accuracy(z - 1e-3)) / 2e-3
    return TRAINING_NOISE[objective] / float(slope)


@dataclass(frozen=True)
class SimStudy:
    """A simulated study's truth: the logit skills of AR and MDLM at each eval point, the per-seed offset sds
    (training noise; 0: none) and the planted crossover (None: a tie that never crosses)."""

    z_ar: np.ndarray
    z_mdlm: np.ndarray
    sd_ar: float
    sd_mdlm: float
    truth: float | None


def sim_study(shape: str, noise: bool, x: np.ndarray = SHIPPED_X) -> SimStudy:
    """`tie`: AR rises to a plateau and MDLM approaches it from below, never passing: TIE_BELOW short of it at the
    end (in expected accuracy); `touch`: the same, meeting it exactly at the end (the boundary between the two
    answers, where a one-sided claim at level c is wrong 1 - c of the time by construction); `ahead`: AR peaks a
    quarter of the way in and decays, MDLM passes it at 70% of the log range and ends AHEAD_AT_END ahead. `noise`:
    per-seed offsets with the measured training noise."""
    from scipy.optimize import brentq

    t = np.linspace(0, 1, len(x))
    if shape in ("tie", "touch"):
        z_ar = 0.9 - 6.0 * np.maximum(0.3 - t, 0) ** 2
        z_end = z_ar[-1]
    else:
        z_ar = 0.9 - 4.0 * (t - 0.25) ** 2
        z_end = float(z_ar[int(np.argmax(z_ar))])
    sd_ar = offset_sd("ar", z_end) if noise else 0.0
    acc_ar = lambda z: expected_accuracy(z, math.hypot(ITEM_SPREAD, sd_ar))  # noqa: E731
    if shape in ("tie", "touch"):
        sd_mdlm = offset_sd("mdlm", z_end) if noise else 0.0
        acc_mdlm = lambda z: expected_accuracy(z, math.hypot(ITEM_SPREAD, sd_mdlm))  # noqa: E731
        short = TIE_BELOW if shape == "tie" else 0.0
        top = brentq(lambda z: acc_mdlm(z) - acc_ar(z_ar[-1]) + short, -5, 5)  # MDLM's expected accuracy at the end
        return SimStudy(z_ar, top - 2.0 * (1 - t) ** 2, sd_ar, sd_mdlm, None)
    where = 0.7
    target = acc_ar(z_ar[-1]) + AHEAD_AT_END
    z_last = brentq(lambda z: expected_accuracy(z) - target, -5, 5)
    sd_mdlm = offset_sd("mdlm", z_last) if noise else 0.0
    acc_mdlm = lambda z: expected_accuracy(z, math.hypot(ITEM_SPREAD, sd_mdlm))  # noqa: E731
    z_last = brentq(lambda z: acc_mdlm(z) - target, -5, 5)
    z_at = 0.9 - 4.0 * (where - 0.25) ** 2
    z_mdlm = z_at + (z_last - z_at) * (t - where) / (1 - where)
    fine = np.linspace(0.5, 1, 2001)  # the crossing of the expected accuracy curves
    gap = acc_mdlm(z_at + (z_last - z_at) * (fine - where) / (1 - where)) - acc_ar(0.9 - 4.0 * (fine - 0.25) ** 2)
    cross = float(np.interp(0.0, gap, fine))
    return SimStudy(z_ar, z_mdlm, sd_ar, sd_mdlm, float(x[0] * (x[-1] / x[0]) ** cross))


def draw_sim_study(rng: np.random.Generator, study: SimStudy, items: int, seeds: int) -> tuple[np.ndarray, np.ndarray]:
    """(points, seeds, items) 0/1 answers of AR and MDLM on the same items: item difficulties shared by both
    objectives and every seed, a per-seed skill offset per objective (training noise), each answer drawn afresh at
    every eval point."""
    difficulty = ITEM_SPREAD * rng.standard_normal(items)
    out = []
    for z, sd in ((study.z_ar, study.sd_ar), (study.z_mdlm, study.sd_mdlm)):
        offset = sd * rng.standard_normal(seeds)
        logit = z[:, None, None] + offset[None, :, None] - difficulty[None, None, :]
        p = 0.25 + 0.75 / (1 + np.exp(-logit))
        out.append((rng.random(p.shape) < p).astype(float))
    return out[0], out[1]


def write_sim_study(raw: dict[str, Any], uri: str, study: SimStudy, items: int = 256, seed: int = 0) -> str:
    """A simulated study (`sim_study`) written through the platform's writer as `crossover run` would: the spec `raw`
    (one cell, AR and MDLM, its `seeds`, 12 eval points) with each trial's per-item cloze answers at every eval point
    and their mean as eval/heldout_cloze/acc. Returns the parent run id."""
    spec, parent_run_id = start(raw, uri)
    trials = spec.expand()
    seeds = sorted({t.seed for t in trials})
    ar, mdlm = draw_sim_study(np.random.default_rng(seed), study, items, len(seeds))
    ids = [f"doc{i}@48" for i in range(items)]
    for trial in trials:
        answers = (ar if trial.objective == "ar" else mdlm)[:, seeds.index(trial.seed)]
        steps = eval_steps(trial)
        if len(steps) != len(answers):
            raise ValueError(f"the spec gives {len(steps)} eval points; a simulated study has {len(answers)}")
        run = TrialRun(trial, uri, parent_run_id)
        for step, correct in zip(steps, answers, strict=True):
            run.log_items(CLOZE, step, ids, {"acc": list(correct)})
            run.log(
                {"tokens": step, "epoch": step / trial.unique_tokens, eval_key(CLOZE, "acc"): correct.mean()},
                step,
                flush=False,
            )
        run.finish()
    finish_study(uri, parent_run_id)
    return parent_run_id


def draw_shipped_study(
    rng: np.random.Generator, where: float, items: int, seeds: int = 1, x: np.ndarray = SHIPPED_X
) -> tuple[np.ndarray, np.ndarray]:
    """(points, seeds, items) 0/1 answers of AR and MDLM on the same 4-choice items: item difficulties shared by
    both objectives, a per-seed skill offset (training noise, 0.1 logits), each answer drawn afresh at every eval
    point. The population accuracy curves (chance 0.25) cross at exactly `true_crossover(where)`."""
    t = np.linspace(0, 1, len(x))
    z_ar, z_mdlm = shipped_skills(t, where)
    difficulty = ITEM_SPREAD * rng.standard_normal(items)
    out = []
    for z in (z_ar, z_mdlm):
        offset = 0.1 * rng.standard_normal(seeds) if seeds > 1 else np.zeros(1)
        logit = z[:, None, None] + offset[None, :, None] - difficulty[None, None, :]
        p = 0.25 + 0.75 / (1 + np.exp(-logit))
        out.append((rng.random(p.shape) < p).astype(float))
    return out[0], out[1]


def true_crossover(where: float, x: np.ndarray = SHIPPED_X) -> float:
    return float(x[0] * (x[-1] / x[0]) ** where)
