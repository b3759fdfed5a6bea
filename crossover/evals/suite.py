"""The evaluation tasks of a trial, run the same way at a trainer's eval points and by `crossover eval CHECKPOINT`.

    EvalSuite(tasks, settings, data) -> each task (`crossover.evals.registry`) builds its items once (the same items
    at every eval point and for every trial of a study, so curves and matched pairs compare item by item)
    -> suite.run(em, ranks) -> [TaskResult], in the order of `tasks`

Budgets come from the spec's eval block (`EvalSettings`): `max_items` items per task, `mc_samples` Monte Carlo
samples per MDLM ELBO, and `mdlm_block` (MDLM's choices decoded left to right, that many tokens per step: 1, the
default, is its exact chain rule; None scores them with the ELBO instead). Per-item results are kept for the
analysis's bootstrap (`crossover.tracking.names.items_payload`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from crossover.data import prepare
from crossover.evals.checkpoint import EvalModel, load_checkpoint
from crossover.evals.registry import ITEM_SEED, ONE_RANK, EvalSettings, Ranks, check_tasks, resolve
from crossover.evals.results import TaskResult
from crossover.tracking.names import VALIDATION, eval_key, split_means, validation_key

if TYPE_CHECKING:
    from crossover.evals.registry import TaskData

__all__ = ["ITEM_SEED", "EvalSuite", "evaluate_checkpoint", "metrics_of"]


class EvalSuite:
    """`tasks` with their items built once."""

    def __init__(self, tasks: Sequence[str], settings: EvalSettings, data: TaskData):
        """`data`: a `crossover.data.PreparedData` (held-out documents and the tokenizer) or an EvalModel (tasks
        that need no held-out documents)."""
        check_tasks(tasks, settings=settings)
        self.settings = settings
        self.tasks = [resolve(name)(name, settings, data) for name in tasks]

    @property
    def items(self) -> dict[str, list]:
        """The multiple-choice items of the tasks that have them, by task name."""
        return {task.name: task.items for task in self.tasks if hasattr(task, "items")}

    def run(self, em: EvalModel, ranks: Ranks = ONE_RANK) -> list[TaskResult]:
        return [result for task in self.tasks for result in task.score(em, ranks)]


def metrics_of(results: Sequence[TaskResult]) -> dict[str, float]:
    """eval/<task>/<metric> for every result (the MLflow metric names of the tracking contract), and for a result
    with per-item values, each one's mean over the task's validation items (`eval/<task>/<metric>/validation`, see
    `crossover.tracking.names.item_split`): what the platform chooses AR's stopping point on, never the test items.
    The per-item results keep every item."""
    metrics = {eval_key(r.task, name): value for r in results for name, value in r.metrics.items()}
    for r in results:
        if r.item_ids:
            means = split_means(r.item_ids, r.item_metrics, VALIDATION)
            metrics.update({validation_key(r.task, name): value for name, value in means.items()})
    return metrics


def evaluate_checkpoint(
    path: str,
    tasks: Sequence[str],
    *,
    max_items: int | None = None,
    mc_samples: int | None = None,
    mdlm_block: int | None = None,
    device: str = "cpu",
    lm_eval_include: str | None = None,
) -> list[TaskResult]:
    """`crossover eval`: the tasks on a checkpoint, with the budgets of its trial's eval block unless given
    (`mdlm_block` can switch a trial scored by the ELBO to left-to-right decoding, not back).

    Held-out tasks read the trial's token store (built again from its corpus if this machine lacks it)."""
    check_tasks(tasks, unsafe_execution=True)  # unknown tasks now; the sandbox once the trial's spec is read
    em = load_checkpoint(path, device=device)
    trial = em.trial
    settings = EvalSettings.of(
        trial, max_items=max_items, mc_samples=mc_samples, mdlm_block=mdlm_block, lm_eval_include=lm_eval_include
    )
    data = em
    if any(resolve(task).needs_heldout for task in tasks):
        data = prepare(trial.data)
    return EvalSuite(tasks, settings, data).run(em)
