"""Synthetic studies written into a real MLflow store through the platform's writer (crossover.platform.tracking),
for the analysis tests and bench/bench_analysis.py: the curves come from tests/synthetic.py, the parent
run from `start_study` and each trial's run from `TrialRun`, exactly as `crossover run` writes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import yaml

from crossover.platform.tracking import TrialRun, finish_study, start_study
from crossover.specs import StudySpec, TrialSpec, parse_study

from .synthetic import CLOZE, Truth, item_ids, trial_points


def write_trial(
    run: TrialRun,
    trial: TrialSpec,
    truth: Truth,
    rng: np.random.Generator,
    steps: Iterable[int] | None = None,
    items: bool = True,
    train_points_per_eval: int = 0,
) -> None:
    """Log one synthetic trial into its run (per-item cloze artifacts unless `items=False`) and finish the run.
    Metrics are buffered and sent in batches of 1,000 values."""
    ids = item_ids(truth)
    for point in trial_points(trial, truth, rng, steps, train_points_per_eval):
        if items and point.items is not None:
            run.log_items(CLOZE, point.step, ids, {k: list(v) for k, v in point.items.items()})
        run.log(point.metrics, point.step, flush=False)
    run.finish()


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
# Simulated crossover studies shaped like the shipped ones (bench/bench_crossover.py and the coverage test)

SHIPPED_X = np.geomspace(40e3, 4e6, 12)  # cpu_crossover: 12 log-spaced eval points over 4M training tokens
SHAPES = {  # where the population curves cross, as a fraction of the log-x range
    "late": 10.5 / 11,  # between the last two eval points: one point after the crossing
    "mid": 0.5,
}


def shipped_skills(t: np.ndarray, where: float) -> tuple[np.ndarray, np.ndarray]:
    """Logit skills at log-x fraction `t`: AR peaks a quarter of the way in and then decays (it overfits repeated
    data); MDLM climbs steadily and meets AR at `where`."""
    z_ar = 0.9 - 4.0 * (t - 0.25) ** 2
    z_at = 0.9 - 4.0 * (where - 0.25) ** 2
    return z_ar, z_at + 2.0 * (t - where)


def draw_shipped_study(
    rng: np.random.Generator, where: float, items: int, seeds: int = 1, x: np.ndarray = SHIPPED_X
) -> tuple[np.ndarray, np.ndarray]:
    """(points, seeds, items) 0/1 answers of AR and MDLM on the same 4-choice items: item difficulties shared by
    both objectives, a per-seed skill offset (training noise, 0.1 logits), each answer drawn afresh at every eval
    point. The population accuracy curves (chance 0.25) cross at exactly `true_crossover(where)`."""
    t = np.linspace(0, 1, len(x))
    z_ar, z_mdlm = shipped_skills(t, where)
    difficulty = 1.5 * rng.standard_normal(items)
    out = []
    for z in (z_ar, z_mdlm):
        offset = 0.1 * rng.standard_normal(seeds) if seeds > 1 else np.zeros(1)
        logit = z[:, None, None] + offset[None, :, None] - difficulty[None, None, :]
        p = 0.25 + 0.75 / (1 + np.exp(-logit))
        out.append((rng.random(p.shape) < p).astype(float))
    return out[0], out[1]


def true_crossover(where: float, x: np.ndarray = SHIPPED_X) -> float:
    return float(x[0] * (x[-1] / x[0]) ** where)
