"""Evaluation tasks as components: every task the spec's `eval.tasks` can name is an `EvalTask`, found here by name.

    resolve("heldout_cloze") -> the task's class; Task(name, settings, data) builds its items once;
    task.score(em, ranks) -> [TaskResult] at each eval point; Task.cost(name, trial) -> token positions per point

A task declares what it needs (`needs_heldout`: the study's held-out documents, so the token store must exist),
builds its items once per trial (the same items at every eval point and for every trial of a study, so curves and
matched pairs compare item by item), scores AR and MDLM alike (`score`), says what one scoring costs (`cost`: the
plan and the throughput estimate add it up) and which metrics it logs (`metrics`, as `eval/<task>/<metric>`), and
refuses up front what this installation cannot run (`check`). The tasks shipped:

    heldout_loss           crossover.evals.heldout     held-out loss per token; every training eval point scores it
    heldout_cloze          crossover.evals.tasks       likelihood multiple choice over held-out spans (with acc_pmi)
    humaneval_likelihood   crossover.evals.tasks       the canonical HumanEval solution among others
    humaneval_pass@k       crossover.evals.humaneval   greedy completions, executed in the sandbox
    lm_eval:<task>         crossover.evals.lm_eval_task  any lm-eval harness task (a prefix: one class, many names)

Adding a task is one module with its class plus one `register` line below (or a `register` call before the study
starts); docs/design.md walks through it with the held-out cloze as the example. Names are registered as import paths,
so that reading the names (`crossover validate`) imports neither torch nor the task modules.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from crossover.errors import UserError
from crossover.specs.errors import Problem, SpecError
from crossover.specs.study import EvalSpec, TrialSpec, closest

if TYPE_CHECKING:  # torch-free at run time: `crossover validate` reads task names through this module
    from crossover.data import PreparedData
    from crossover.evals.checkpoint import EvalModel
    from crossover.evals.results import TaskResult

    TaskData = PreparedData | EvalModel  # what a task builds its items from

HELDOUT_LOSS = "heldout_loss"
ALWAYS_SCORED = (HELDOUT_LOSS,)  # the loss curve: progress, early stopping and the analysis read it at every point
ITEM_SEED = 0  # every trial of a study scores the same items: matched pairs and seeds compare item by item


class TaskError(UserError, ValueError):
    """A task that cannot be evaluated as asked: an unknown name, a missing extra or sandbox, no item that fits."""

    title = "cannot evaluate"  # how the command line heads its message


@dataclass(frozen=True)
class EvalSettings:
    """What a task is built and scored with, read from the trial once: its eval block as it is (`crossover eval`
    may override budgets in it), the window it trained on, and what the held-out loss batches and draws with (the
    trial's micro batch, MDLM's t_min and its seed). Tasks read these, never the trial."""

    eval: EvalSpec = field(default_factory=EvalSpec)
    seq_len: int = 256  # the training window: every item fits it (a model is scored at the lengths it was trained on)
    batch_size: int = 8  # held-out windows per forward
    mdlm_t_min: float = 1e-3  # the smallest mask ratio MDLM's ELBO draws (as in training)
    seed: int = 0  # the trial's: its held-out ELBO's masks

    @classmethod
    def of(cls, trial: TrialSpec, **overrides: Any) -> EvalSettings:
        """A trial's settings; an override (a field of its eval block) of None keeps the trial's value."""
        block = trial.eval.model_copy(update={k: v for k, v in overrides.items() if v is not None})
        return cls(block, trial.data.seq_len, trial.train.micro_batch, trial.train.mdlm_t_min, trial.seed)


@dataclass(frozen=True)
class Ranks:
    """Where a task is scored: this rank of `world`, and how to add up what the ranks computed. A task either splits
    its items over the ranks and sums (the held-out loss) or scores them all on every rank (ZeRO-3 gathers parameters
    in every forward, so every rank must run the same forwards)."""

    rank: int = 0
    world: int = 1
    sum_over_ranks: Callable[[list[float]], list[float]] = list


ONE_RANK = Ranks()  # a single process: `crossover eval`, a one-worker trial


class EvalTask:
    """One evaluation task. Subclasses set the class attributes, build their items in `__init__` and score in
    `score`; `cost` and `check` are class methods so the plan and the CLI can ask before anything is built."""

    needs_heldout: ClassVar[bool] = False  # reads the study's held-out split (the token store is prepared for it)
    metrics: ClassVar[tuple[str, ...]] = ()  # what `score` logs, as eval/<task>/<metric>

    def __init__(self, name: str, settings: EvalSettings, data: TaskData):
        """`data`: a `crossover.data.PreparedData` (held-out documents and the tokenizer) or, for tasks that need no
        held-out data, an `EvalModel` (its tokenizer)."""
        self.name, self.settings = name, settings

    def score(self, em: EvalModel, ranks: Ranks) -> list[TaskResult]:
        """[TaskResult] for the model `em` (an `EvalModel`)."""
        raise NotImplementedError

    @classmethod
    def cost(cls, name: str, trial: TrialSpec) -> float:
        """Forward token positions of one scoring at an eval point (0: not counted by the plan)."""
        return 0.0

    @classmethod
    def check(cls, name: str, settings: EvalSettings) -> None:
        """Raise TaskError (or ValueError), naming the fix, when this installation cannot run the task."""


# name -> "module:Class"; prefix -> "module:Class" for families of names
_TASKS: dict[str, str | type[EvalTask]] = {}
_PREFIXES: dict[str, str | type[EvalTask]] = {}


def register(name: str, task: str | type[EvalTask], *, prefix: bool = False) -> None:
    """Make `name` (or every name starting with it, with `prefix`) resolve to `task`, a class or its "module:Class"."""
    (_PREFIXES if prefix else _TASKS)[name] = task


def unregister(name: str) -> None:
    _TASKS.pop(name, None)
    _PREFIXES.pop(name, None)


register(HELDOUT_LOSS, "crossover.evals.heldout:HeldoutLoss")
register("heldout_cloze", "crossover.evals.tasks:HeldoutCloze")
register("humaneval_likelihood", "crossover.evals.tasks:HumanEvalLikelihood")
register("humaneval_pass@k", "crossover.evals.humaneval:HumanEvalPassAtK")
register("lm_eval:", "crossover.evals.lm_eval_task:LmEvalTask", prefix=True)


def task_names() -> list[str]:
    """The names a spec can use, prefixes as `<prefix><task>`."""
    return [*_TASKS, *(f"{p}<task>" for p in _PREFIXES)]


def _entry(name: str) -> str | type[EvalTask] | None:
    if name in _TASKS:
        return _TASKS[name]
    return next((task for prefix, task in _PREFIXES.items() if name.startswith(prefix) and name != prefix), None)


def check_names(tasks: Sequence[str]) -> None:
    """Refuse a name that is no registered task, with the closest one. Imports no task module."""
    for name in tasks:
        if _entry(name) is None:
            raise TaskError(
                f"unknown eval task '{name}'{closest(name, list(_TASKS))}; tasks: {', '.join(task_names())}"
            )


def resolve(name: str) -> type[EvalTask]:
    """The class of the task `name` (imported on first use)."""
    check_names([name])
    entry = _entry(name)
    if isinstance(entry, str):
        module, cls = entry.split(":")
        entry = getattr(importlib.import_module(module), cls)
    return entry


def check_tasks(tasks: Sequence[str], *, unsafe_execution: bool = False, settings: EvalSettings | None = None) -> None:
    """Refuse, before any training, a task that is unknown or that this installation cannot run (TaskError)."""
    check_names(tasks)
    settings = settings or EvalSettings(EvalSpec(unsafe_execution=unsafe_execution))
    for task in tasks:
        try:
            resolve(task).check(task, settings)
        except TaskError:
            raise
        except ValueError as exc:
            raise TaskError(str(exc)) from None


def check_spec_tasks(spec: Any, *, installed: bool = True) -> None:
    """A spec's eval.tasks, refused as a `SpecError` at the line of `eval.tasks` in its file: unknown names always
    (no task module imported), and with `installed` what this installation cannot run."""
    source = getattr(spec, "_source", None)
    try:
        if installed:
            check_tasks(spec.eval.tasks, unsafe_execution=spec.eval.unsafe_execution)
        else:
            check_names(spec.eval.tasks)
    except ValueError as exc:
        problem = source.problem(("eval", "tasks"), str(exc)) if source else Problem("eval.tasks", str(exc))
        raise SpecError(source.file if source else None, [problem]) from None


def trial_tasks(trial: Any) -> list[str]:
    """The tasks a trial scores at each eval point: the held-out loss always, then the spec's in its order."""
    return [*ALWAYS_SCORED, *(t for t in trial.eval.tasks if t not in ALWAYS_SCORED)]


def eval_cost(trial: Any) -> float:
    """Forward token positions of one eval point of `trial`: the sum of its tasks' costs."""
    return sum(resolve(task).cost(task, trial) for task in trial_tasks(trial))
