"""`lm_eval:<task>`: any lm-evaluation-harness task, `max_items` documents of it, through `crossover.evals.lm_eval_bridge`.

Kept apart from the bridge, which imports lm-eval: the registry resolves the name, and `check` says how to install
the harness, on an installation without the `eval` extra."""

from __future__ import annotations

import functools
import importlib.util
from typing import TYPE_CHECKING, Any

from crossover.evals.registry import ITEM_SEED, EvalSettings, EvalTask, Ranks, TaskError
from crossover.evals.results import TaskResult

if TYPE_CHECKING:
    from crossover.evals.checkpoint import EvalModel

PREFIX = "lm_eval:"


@functools.cache
def _task_manager(include_path: str | None) -> Any:
    """lm-eval's index of task files (seconds to build): once per process and include folder."""
    from lm_eval.tasks import TaskManager  # lazy: lm-eval is the optional `eval` extra (see the docstring)

    return TaskManager(include_path=include_path)


class LmEvalTask(EvalTask):
    """The lm-eval task after the prefix; its metrics are lm-eval's (acc, acc_norm, ... and their stderr)."""

    def score(self, em: EvalModel, ranks: Ranks) -> list[TaskResult]:
        from crossover.evals.lm_eval_bridge import run_lm_eval  # lazy: the bridge imports lm-eval (optional)

        ev, task = self.settings.eval, self.name.removeprefix(PREFIX)
        try:
            found = run_lm_eval(
                em,
                [task],
                limit=ev.max_items,
                mc_samples=ev.mc_samples,
                mdlm_block=ev.mdlm_block,
                seed=ITEM_SEED,
                task_manager=_task_manager(ev.lm_eval_include),
            )
        except KeyError as exc:  # lm-eval's way of saying it has no such task
            raise TaskError(
                f"{self.name}: lm-eval has no task {exc}; eval.lm_eval_include names a folder of local task YAMLs"
            ) from None
        return list(found.values())

    @classmethod
    def check(cls, name: str, settings: EvalSettings) -> None:
        if importlib.util.find_spec("lm_eval") is None:
            raise TaskError(f"{name} needs the lm-eval harness: pip install 'crossover[eval]'")
