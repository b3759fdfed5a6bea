"""What every evaluation task returns: summary metrics for MLflow and per-item values for the analysis's bootstrap."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class TaskResult:
    task: str  # the spec's task name, e.g. "heldout_cloze", "humaneval_pass@k", "lm_eval:arc_easy"
    metrics: dict[str, float]  # logged as eval/<task>/<metric>; a mean's standard error as <metric>_stderr
    item_ids: list[str]  # stable across eval points, so curves can be bootstrapped item by item
    item_metrics: dict[str, list[float]]  # per item, aligned with item_ids


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (sample std / sqrt(n)); stderr is 0 for a single value, NaN for none."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)
