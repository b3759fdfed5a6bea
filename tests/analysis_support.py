"""Synthetic studies written into a real MLflow store through the platform's writer (crossover.platform.tracking),
for the analysis tests and bench/bench_analysis.py: the curves come from crossover.analysis.synthetic, the parent
run from `start_study` and each trial's run from `TrialRun`, exactly as `crossover run` writes them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import yaml

from crossover.analysis.synthetic import CLOZE, Truth, item_ids, trial_points
from crossover.platform.tracking import TrialRun, finish_study, start_study
from crossover.specs import StudySpec, TrialSpec, parse_study


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
    truth: Truth | None = None,
    seed: int = 0,
    items: bool = True,
    steps: Iterable[int] | None = None,
    train_points_per_eval: int = 0,
    fresh: bool = False,
) -> str:
    """Write a whole synthetic study (parent run plus one finished child run per trial); returns the parent run id."""
    spec, parent_run_id = start(raw, uri, fresh=fresh)
    truth = truth or Truth()
    rng = np.random.default_rng(seed)
    step_list = list(steps) if steps is not None else None
    for trial in spec.expand():
        write_trial(TrialRun(trial, uri, parent_run_id), trial, truth, rng, step_list, items, train_points_per_eval)
    finish_study(uri, parent_run_id)
    return parent_run_id
