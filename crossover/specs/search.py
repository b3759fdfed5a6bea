"""A search study in pure spec terms (spec block `search`; where it runs: crossover.platform.search).

Each (grid cell, objective) is one group, searched on its own: its samples are the group's grid trial with sampled
settings (`sampled_trial`), ranked on the metric's validation items only (AR by its best eval point, the early-stopped
model a practitioner keeps; MDLM by its last), so neither objective's score is read on another's scale and the
items that score the verdict never choose. Each group's winner is then retrained on `confirm_seeds` fresh seeds, and
the spec's base settings on the same seeds: the verdict compares the confirmed winners, and the base says how much
tuning moved each objective.
"""

from __future__ import annotations

from crossover.specs.anneal import headline_metric
from crossover.specs.expand import reseeded
from crossover.specs.study import OBJECTIVES, StudySpec, TrialSpec
from crossover.tracking.names import EVAL_PREFIX, HELDOUT_LOSS, higher_is_better, task_key, validation_key


def search_metric(spec: StudySpec) -> str | None:
    """The metric a search ranks samples by (eval/<task>/<metric>): the spec's, else the headline accuracy."""
    return (spec.search.metric or headline_metric(spec)) if spec.search else None


def search_key(spec: StudySpec) -> str:
    """The metric's validation half as trials report it (`eval/<task>/<metric>/validation`)."""
    _, task, name = search_metric(spec).split("/")
    return validation_key(task, name)


def search_higher(spec: StudySpec) -> bool:
    """Whether higher values of the search metric are better (the spec's `mode` where given)."""
    mode = spec.search.mode
    return mode == "max" if mode else higher_is_better(search_metric(spec))


def group_of(trial: TrialSpec, scope: str = "per_cell") -> str:
    """The Optuna study a trial's samples belong to: '<grid cell>/<objective>' (scope grid: the objective)."""
    return f"{trial.cell}/{trial.objective}" if scope == "per_cell" else trial.objective


def search_groups(spec: StudySpec, trials: list[TrialSpec]) -> dict[str, list[TrialSpec]]:
    """group -> its grid trials (one per group, per_cell; scope grid: every cell of the objective)."""
    groups: dict[str, list[TrialSpec]] = {}
    for trial in trials:
        groups.setdefault(group_of(trial, spec.search.scope), []).append(trial)
    return groups


def confirm_seeds(spec: StudySpec) -> list[int]:
    """The fresh seeds winners are retrained on: the `confirm_seeds` after the search's seed."""
    first = max(spec.seeds) + 1
    return list(range(first, first + spec.search.confirm_seeds))


def confirm_trials(grid_trial: TrialSpec, spec: StudySpec) -> list[TrialSpec]:
    """The base trials of a grid trial on the confirm seeds (a winner's are these with its sampled settings)."""
    return [reseeded(grid_trial, seed) for seed in confirm_seeds(spec)]


def search_problems(spec: StudySpec) -> list[tuple[tuple[str, ...], str]]:
    """(where, why) for each reason the spec's search cannot run as asked; empty for a study without one."""
    search = spec.search
    if search is None:
        return []
    problems = []
    tasks = [task_key(t) for t in spec.eval.tasks]
    metric = search_metric(spec)
    task = metric[len(EVAL_PREFIX) :].split("/")[0] if metric and metric.startswith(EVAL_PREFIX) else None
    with_items = [f"{EVAL_PREFIX}{t}/<metric>" for t in tasks if t != HELDOUT_LOSS.split("/")[1]]
    if metric is None:
        problems.append(
            (
                ("eval", "tasks"),
                "a search ranks samples on a task's validation items, and eval.tasks has none "
                "with items: add heldout_cloze",
            )
        )
    elif task not in tasks or metric.count("/") != 2 or metric.endswith("/"):
        names = ", ".join(with_items) or "a task with items (add heldout_cloze to eval.tasks)"
        problems.append((("search", "metric"), f"'{metric}' is not a metric the trials report: use {names}"))
    elif task == HELDOUT_LOSS.split("/")[1]:
        problems.append(
            (
                ("search", "metric"),
                f"{HELDOUT_LOSS} has no items to split into validation and test, and compares "
                f"AR's exact NLL with MDLM's bound: use {', '.join(with_items) or 'heldout_cloze'}",
            )
        )
    elif search.mode and (search.mode == "max") != higher_is_better(metric):
        better = "higher" if higher_is_better(metric) else "lower"
        problems.append(
            (("search", "mode"), f"mode {search.mode} contradicts {metric}, where {better} is better: leave mode out")
        )
    objectives = set(spec.grid.get("objective", [spec.objective]))
    if search.scope == "grid" and len(objectives) > 1:
        problems.append(
            (
                ("search", "scope"),
                "scope grid would rank AR and MDLM samples in one Optuna study on one scale, "
                "and the scores of two objectives are not one scale: use scope per_cell (each cell and objective "
                "searched on its own) or a study per objective",
            )
        )
    for objective in sorted(objectives & set(OBJECTIVES)):
        if not search.space_of(objective):
            problems.append(
                (
                    ("search", "space"),
                    f"the grid trains {objective} and search.space has no "
                    f"{objective} space: add search.space.{objective}, or give one space for both",
                )
            )
    for objective in OBJECTIVES:
        lr = search.space_of(objective).get("lr")
        low = None if lr is None else min(lr.choice) if lr.choice else (lr.uniform or lr.loguniform or lr.int)[0]
        if low is not None and low < spec.train.min_lr and "min_lr" not in search.space_of(objective):
            problems.append(
                (
                    ("search", "space", objective, "lr"),
                    f"its lowest learning rate {low:g} is below train.min_lr {spec.train.min_lr:g}, where the "
                    "schedule decays to: raise the bound, or lower train.min_lr",
                )
            )
    if "noise.input_mask" in search.space_of("mdlm"):
        problems.append(
            (
                ("search", "space", "mdlm"),
                "noise.input_mask is AR's regulariser (MDLM masks by its objective): search it in search.space.ar only",
            )
        )
    if len(spec.seeds) > 1 or "seed" in spec.grid:
        problems.append(
            (
                ("seeds",),
                "a search trains each sample on one seed (seeds: [0]); its winners are retrained on "
                "search.confirm_seeds fresh seeds",
            )
        )
    return problems


def planned_trials(spec: StudySpec) -> list[TrialSpec]:
    """The trials a study trains, for plans and estimates: its grid; for a search study, `num_samples` samples per
    group, each priced as its grid trial (pruning only shortens them), and per grid trial the winner and the base
    settings on each confirm seed."""
    trials = spec.expand()
    if spec.search is None:
        return trials
    samples = []
    for members in search_groups(spec, trials).values():
        for number in range(1, spec.search.num_samples + 1):
            trial = members[(number - 1) % len(members)]
            samples.append(_stand_in(trial, f"sample{number}"))
    return samples + compared_trials(spec)


def compared_trials(spec: StudySpec) -> list[TrialSpec]:
    """The trials a study's verdict compares (and whose AR the anneal phase anneals): its grid; for a search study,
    per grid trial the base settings and a stand-in for the winner on each confirm seed (the winner's settings are
    known only once the search has run; its cost is the base trial's)."""
    if spec.search is None:
        return spec.expand()
    return [
        trial
        for grid in spec.expand()
        for base in confirm_trials(grid, spec)
        for trial in (base, _stand_in(base, "winner"))
    ]


def _stand_in(trial: TrialSpec, what: str) -> TrialSpec:
    """`trial` as the cost of another trial of the same shape (a sample, a confirmed winner), named apart."""
    return trial.model_copy(update={"name": f"{trial.name}-{what}", "trial_id": f"{trial.trial_id}-{what}"})


def trials_phrase(spec: StudySpec) -> str:
    """'4 trials'; for a search study '2 grid trials searched: 16 samples, then 12 trials confirming the winners and
    the base settings on 3 fresh seeds'."""
    grid = len(spec.expand())
    if spec.search is None:
        return f"{grid} trials"
    samples = len(search_groups(spec, spec.expand())) * spec.search.num_samples
    confirming = grid * 2 * spec.search.confirm_seeds
    return (
        f"{grid} grid trials searched: {samples} samples, then {confirming} trials confirming the winners and the "
        f"base settings on {spec.search.confirm_seeds} fresh seeds"
    )
