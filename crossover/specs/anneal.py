"""The early-stopped AR as a practitioner trains it (spec block `early_stopped_ar`), in pure spec terms.

An AR trial's stopping point is the eval point with the best value of a metric on its validation items
(`choose_stop`); the anneal trial (`anneal_trial`) is the same AR trial with `train.total_tokens` set to that stop,
so its schedule's decay ends there (same warmup, peak and final learning rate, decay fraction). It keeps the AR
trial's cell, axes and lineage (only its length differs: it can continue the AR trial's stable phase), and its id
names what it anneals, so it never equals a grid trial. Where it runs: crossover.platform.anneal.
"""

from __future__ import annotations

from collections.abc import Iterable

from crossover.specs.expand import trial_identity
from crossover.specs.study import StudySpec, TrialSpec
from crossover.specs.tokens import format_tokens
from crossover.tracking.names import EVAL_PREFIX, HEADLINE_ACCURACY, HELDOUT_LOSS, higher_is_better, task_key


def anneal_metric(spec: StudySpec) -> str | None:
    """The metric whose validation half chooses AR's stop: the spec's `early_stopped_ar.metric`, else the headline
    metric (`headline_metric`)."""
    return spec.early_stopped_ar.metric or headline_metric(spec)


def headline_metric(spec: StudySpec) -> str | None:
    """The headline accuracy (held-out cloze PMI accuracy) where the study runs heldout_cloze, else the accuracy of
    its first task with items (not the held-out loss, which has none); None when it runs no such task."""
    tasks, headline = [task_key(t) for t in spec.eval.tasks], HEADLINE_ACCURACY[0]
    if headline.split("/")[1] in tasks:
        return headline
    with_items = [t for t in tasks if t != HELDOUT_LOSS.split("/")[1]]
    return f"{EVAL_PREFIX}{with_items[0]}/acc" if with_items else None


def metric_problem(spec: StudySpec) -> str | None:
    """Why the spec's early-stopped AR cannot be chosen on validation items (None: it can)."""
    metric, tasks = spec.early_stopped_ar.metric, [task_key(t) for t in spec.eval.tasks]
    if metric is not None:
        task = metric[len(EVAL_PREFIX) :].split("/")[0] if metric.startswith(EVAL_PREFIX) else None
        if task not in tasks or metric.count("/") != 2 or metric.endswith("/"):
            names = ", ".join(f"{EVAL_PREFIX}{t}/<metric>" for t in tasks)
            return f"'{metric}' is not a metric the trials report: use {names} (a task in eval.tasks)"
        if metric == HELDOUT_LOSS:
            return f"{HELDOUT_LOSS} has no items to split into validation and test: name a multiple-choice metric"
        return None
    if spec.early_stopped_ar.anneal and anneal_metric(spec) is None:
        return (
            "the anneal chooses AR's stop on a task's validation items, and eval.tasks has no task with items: "
            "add heldout_cloze"
        )
    return None


def choose_stop(points: Iterable[tuple[int, float]], metric: str) -> int | None:
    """The tokens of the eval point with the best validation value of `metric` (the earliest among equals: the
    cheaper model); None without a finite value."""
    higher = higher_is_better(metric)
    found = [(tokens, value) for tokens, value in points if value == value and abs(value) != float("inf")]
    if not found:
        return None
    best = max(v for _, v in found) if higher else min(v for _, v in found)
    return min(tokens for tokens, value in found if value == best)


def anneal_trial(ar: TrialSpec, stop: int) -> TrialSpec:
    """`ar` trained for `stop` tokens (its decay ending there), named `<ar name>-anneal<stop>`."""
    content = ar.model_dump(mode="json", exclude={"trial_id", "name"})
    content["train"]["total_tokens"] = int(stop)
    return TrialSpec.model_validate(
        {
            **content,
            "trial_id": trial_identity({**content, "anneal_of": ar.trial_id}),
            "name": f"{ar.name}-anneal{format_tokens(stop)}",
        }
    )
