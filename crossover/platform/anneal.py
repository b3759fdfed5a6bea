"""The early-stopped AR a practitioner would train: the second phase of `crossover run` (spec `early_stopped_ar`).

Once a study's AR trials are done, each AR trial's stopping point is chosen on its validation items only (the eval
point with the best `eval/<task>/<metric>/validation`, crossover.specs.anneal.choose_stop) and recorded on its run
(`crossover.ar_stop`). With `anneal: true` the study then trains, per AR trial, one anneal trial: the same trial with
`train.total_tokens` at that stop, so its WSD decay ends there. WSD's stable phase does not depend on the length, so
the anneal trial continues the AR trial's latest kept checkpoint at or before its own decay start where one is kept
(train.keep_checkpoints: all keeps one per eval point; only the decay and the stable steps after that checkpoint
train, and the AR run's points up to it are copied into the anneal run), else it trains from scratch. Its run is
tagged `crossover.role=anneal`, `crossover.anneal_of=<AR trial id>`, `crossover.anneal_stop` and the metric, so the
analysis keeps it out of the AR curves and reads it as AR's best (crossover.analysis.curves.read_study).

No anneal where it would change nothing or cannot be made: an AR trial whose best point is its end (it is its own
anneal), a stop inside the warmup, a constant schedule (no decay to anneal), or no validation values (a task
without items); each is said in the notes, and the analysis then reads the validation-chosen eval point.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from crossover.platform.grow import finished_runs, kept_checkpoints
from crossover.platform.launch import Continuation
from crossover.specs import StudySpec, TrialSpec, format_tokens, training_flops
from crossover.specs.anneal import anneal_metric, anneal_trial, choose_stop
from crossover.specs.search import compared_trials
from crossover.tracking.names import (
    ITEMS_DIR,
    ROLE_ANNEAL,
    TAG_ANNEAL_METRIC,
    TAG_ANNEAL_OF,
    TAG_ANNEAL_STOP,
    TAG_AR_STOP,
    TAG_CELL,
    TAG_ROLE,
    TAG_TRIAL_ID,
    VALIDATION,
    split_means,
    validation_key,
)
from crossover.tracking.store import mlflow_client
from crossover.trainers.schedules import branch_step, eval_steps, total_steps, trained_tokens


@dataclass(frozen=True)
class Anneal:
    """One AR trial's anneal: the trial to train, and what it anneals."""

    trial: TrialSpec  # the AR trial with train.total_tokens = stop
    of: TrialSpec  # the AR trial
    stop: int  # tokens: the eval point its validation items chose
    metric: str
    continues: Continuation | None  # the AR trial's kept checkpoint it starts from
    cell: str  # the AR run's cell: a search's confirm run names its grid cell, not its sampled settings

    @property
    def tags(self) -> dict[str, str]:
        return {
            TAG_CELL: self.cell,
            TAG_ROLE: ROLE_ANNEAL,
            TAG_ANNEAL_OF: self.of.trial_id,
            TAG_ANNEAL_STOP: str(self.stop),
            TAG_ANNEAL_METRIC: self.metric,
        }

    @property
    def trained_tokens(self) -> int:
        return self.stop - (self.continues.tokens if self.continues else 0)


@dataclass
class AnnealPlan:
    metric: str | None
    anneals: list[Anneal] = field(default_factory=list)  # every anneal the study has, finished or not
    finished: set[str] = field(default_factory=set)  # anneal trial ids whose runs finished earlier
    notes: list[str] = field(default_factory=list)

    @property
    def to_run(self) -> list[Anneal]:
        return [a for a in self.anneals if a.trial.trial_id not in self.finished]

    def summary(self) -> str:
        """What `crossover run` says before the anneal phase: "annealing AR to its validation-chosen stop at 380k
        tokens for 3 cells (2 continue a kept checkpoint: 240k tokens to train)"."""
        todo = self.to_run
        if not todo:
            done = f"{len(self.finished)} AR anneal(s) finished earlier and are kept" if self.finished else ""
            return "; ".join(filter(None, [done, *self.notes])) or "no AR trial to anneal"
        stops = sorted({a.stop for a in todo})
        at = f"at {format_tokens(stops[0])}" if len(stops) == 1 else f"at {', '.join(map(format_tokens, stops))}"
        cells = len({a.of.cell for a in todo})
        per = f"{cells} cell{'s' if cells != 1 else ''}" + (f" ({len(todo)} trials)" if len(todo) != cells else "")
        continued = [a for a in todo if a.continues]
        how = f"{len(continued)} continue a kept checkpoint" if continued else "each trained from scratch"
        line = (
            f"annealing AR to its validation-chosen stop {at} tokens for {per} ({how}: "
            f"{format_tokens(sum(a.trained_tokens for a in todo))} tokens to train)"
        )
        return "; ".join([line, *self.notes])


def validation_points(client, run, metric: str) -> list[tuple[int, float]]:
    """(tokens, validation value) of `metric` at each eval point of a run: the logged validation metric, else
    computed from the run's per-item results (runs from before the validation metrics were logged)."""
    _, task, name = metric.split("/")
    logged = client.get_metric_history(run.info.run_id, validation_key(task, name))
    if logged:
        return sorted((int(m.step), float(m.value)) for m in logged)
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = Path(client.download_artifacts(run.info.run_id, f"{ITEMS_DIR}/{task}", tmp))
        except Exception:  # noqa: BLE001 - no per-item results for this task
            return []
        for path in sorted(local.glob("*.json")):
            payload = json.loads(path.read_text())
            means = split_means(payload["ids"], payload["metrics"], VALIDATION)
            if name in means:
                points.append((int(payload["step"]), means[name]))
    return sorted(points)


def _kept_checkpoint(
    spec: StudySpec, storage: str, ar: TrialSpec, trial: TrialSpec, run_id: str
) -> Continuation | None:
    """The AR trial's latest kept checkpoint at or before the anneal trial's decay start; None: the anneal trains
    from scratch."""
    step = branch_step(trial)
    if step is None:
        return None
    reach = step * trial.train.global_batch_tokens
    found = [(tokens, folder) for tokens, folder in kept_checkpoints(storage, spec, ar) if tokens <= reach]
    if not found:
        return None
    tokens, folder = found[-1]
    return Continuation(run_id=run_id, branch=folder, tokens=tokens)


def _no_decay_step(trial: TrialSpec) -> bool:
    """Whether every step of `trial` runs before its decay begins (a decay shorter than a global batch): it would
    equal its AR trial at that point, with nothing annealed."""
    step = branch_step(trial)
    return step is not None and step >= total_steps(trial)


def plan_anneals(
    spec: StudySpec, uri: str, parent_run_id: str, storage: str, compared: Collection[TrialSpec] | None = None
) -> AnnealPlan:
    """Choose each finished AR trial's stop on its validation items (recorded on its run), and the anneal trial of
    each where `early_stopped_ar.anneal` is on. `compared`: the trials the verdict compares, the grid's by default;
    a search study's are its confirm and base runs (crossover.platform.search.Confirmations), never its samples."""
    metric = anneal_metric(spec)
    plan = AnnealPlan(metric)
    if metric is None:
        plan.notes.append("no AR stop chosen: the study runs no task with validation items")
        return plan
    client = mlflow_client(uri)
    grid, anneals = finished_runs(uri, parent_run_id)
    by_id = {r.data.tags[TAG_TRIAL_ID]: r for r in grid}
    anneal_runs = {r.data.tags[TAG_TRIAL_ID] for r in anneals}
    skipped: dict[str, list[str]] = {}
    trials = spec.expand() if compared is None else compared
    for ar in {t.trial_id: t for t in trials if t.objective == "ar"}.values():  # a winner may be the base settings
        run = by_id.get(ar.trial_id)
        if run is None:
            skipped.setdefault("not finished", []).append(ar.name)
            continue
        stop = choose_stop(validation_points(client, run, metric), metric)
        if stop is None:
            skipped.setdefault(f"no validation values of {metric}", []).append(ar.name)
            continue
        if run.data.tags.get(TAG_AR_STOP) != str(stop):
            client.set_tag(run.info.run_id, TAG_AR_STOP, str(stop))
            client.set_tag(run.info.run_id, TAG_ANNEAL_METRIC, metric)
        if not spec.early_stopped_ar.anneal:
            continue
        if stop >= trained_tokens(ar):  # its last eval point
            skipped.setdefault("best at the end: the AR trial is its own anneal", []).append(ar.name)
        elif stop <= ar.train.warmup_tokens:
            skipped.setdefault("best inside the warmup", []).append(ar.name)
        elif ar.train.schedule == "constant":
            skipped.setdefault("a constant schedule has no decay", []).append(ar.name)
        elif _no_decay_step(anneal_trial(ar, stop)):
            skipped.setdefault("its decay would be shorter than a batch", []).append(ar.name)
        else:
            trial = anneal_trial(ar, stop)
            continues = _kept_checkpoint(spec, storage, ar, trial, run.info.run_id)
            plan.anneals.append(Anneal(trial, ar, stop, metric, continues, run.data.tags.get(TAG_CELL, ar.cell)))
            if trial.trial_id in anneal_runs:
                plan.finished.add(trial.trial_id)
    for why, names in skipped.items():
        plan.notes.append(f"not annealed ({why}): {', '.join(names)}")
    return plan


@dataclass(frozen=True)
class AnnealCost:
    """The plan's upper bound on the anneal phase: one anneal per AR trial, each training at most its decay (and
    the stable stretch back to the checkpoint before it) when it can continue a kept checkpoint, else at most the
    AR trial's whole budget (up to the AR trial's last eval point but one: a stop at its end needs no anneal)."""

    bound: tuple[tuple[TrialSpec, int], ...]  # per AR trial: its costliest anneal trial and the tokens it trains
    continued: bool  # whether the bound assumes kept checkpoints (train.keep_checkpoints: all)

    @property
    def tokens(self) -> int:
        return sum(tokens for _, tokens in self.bound)

    @property
    def flops(self) -> float:
        return sum(training_flops(trial) * tokens / trial.total_tokens for trial, tokens in self.bound)

    def line(self) -> str:
        how = (
            "only the decay after the kept checkpoint before it (train.keep_checkpoints: all)"
            if self.continued
            else "from scratch (no kept checkpoints: train.keep_checkpoints: all keeps them)"
        )
        return (
            f"anneal: up to {len(self.bound)} more AR trial{'s' if len(self.bound) != 1 else ''}, each annealed to its validation-chosen stop: at most "
            f"{format_tokens(self.tokens)} tokens, {self.flops:.3g} training FLOPs in all, each {how}"
        )


def anneal_cost(spec: StudySpec, annealed: Collection[str] = ()) -> AnnealCost | None:
    """The anneal phase's cost bound (None when the spec does not anneal): one anneal per AR trial the verdict compares
    (a search study's confirm and base runs). A stop is one of the AR trial's eval points; the anneal continues the
    checkpoint of the latest eval point at or before its decay start. `annealed`: AR trial ids whose anneal finished
    earlier (crossover.platform.grow.finished_in), left out."""
    if not spec.early_stopped_ar.anneal:
        return None
    continued = spec.train.keep_checkpoints == "all"
    bound = []
    for ar in [t for t in compared_trials(spec) if t.objective == "ar" and t.trial_id not in annealed]:
        batch = ar.train.global_batch_tokens
        points = [s * batch for s in eval_steps(ar)]
        worst, need = None, 0
        for stop in points[:-1]:  # a stop at the end needs no anneal
            trial, trains = anneal_trial(ar, stop), stop
            if _no_decay_step(trial):
                continue
            if continued and (step := branch_step(trial)) is not None:
                trains = stop - max([p for p in points if p <= step * batch], default=0)
            if trains >= need:
                worst, need = trial, trains
        if worst is not None:
            bound.append((worst, need))
    return AnnealCost(tuple(bound), continued)
