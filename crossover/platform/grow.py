"""A study that grows: what a `crossover run` of a study that ran before keeps, continues and runs.

A trial is known by its id, a hash of what decides its training and scoring (crossover.specs.expand.trial_identity),
so a spec that changed since the last run keeps every finished trial whose id it still has:

- new grid values, seeds or `exclude` rules: only the trials that are new are run;
- an eval task added: the kept trials are scored on it at their kept checkpoints (train.keep_checkpoints: all keeps
  one per eval point) and the results logged into their runs at those steps; nothing is retrained;
- a longer train.total_tokens: a new trial of the same lineage continues the shorter finished one from its branch
  checkpoint (crossover.trainers.schedules.branch_step), with the shorter run's points up to there copied into its
  run; the shorter run is deleted (MLflow's trash) once the longer one finishes, so no curve mixes two schedules;
- anything else that changes a finished trial's content makes it a new trial; the old run stays in MLflow, tagged
  out of spec, and the analysis leaves it out.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field

from crossover.platform.launch import Continuation
from crossover.platform.tracking import TrialRun, current_parent_run_id, mark_out_of_spec, trial_runs_of
from crossover.specs import StudySpec, TrialSpec
from crossover.tracking.names import (
    EVAL_PREFIX,
    ROLE_ANNEAL,
    TAG_ANNEAL_OF,
    TAG_BRANCH,
    TAG_BRANCH_TOKENS,
    TAG_LINEAGE,
    TAG_ROLE,
    TAG_TRIAL_ID,
    task_key,
)
from crossover.tracking.store import TrackingError, check_reachable
from crossover.trainers.schedules import branch_step, eval_steps
from crossover.trainers.storage import filesystem_of, local_folder

COSINE_NOTE = (
    "longer trials of a cosine schedule train from scratch: every step's learning rate depends on train.total_tokens, "
    "so a longer trial shares only its warmup with a shorter one (wsd, the paper's, continues from the stable phase; "
    "constant from the end)"
)


@dataclass
class Growth:
    kept: list[TrialSpec] = field(default_factory=list)  # finished earlier and unchanged: not run again
    to_run: list[TrialSpec] = field(default_factory=list)
    # trial id -> the shorter finished trial it continues
    continues: dict[str, Continuation] = field(default_factory=dict)
    added_tasks: dict[str, list[str]] = field(default_factory=dict)  # kept trial id -> tasks it has no results for
    out_of_spec: int = 0  # finished trials the spec no longer has
    notes: list[str] = field(default_factory=list)  # what could not be done as asked, and why

    def summary(self) -> str:
        """The line `crossover run` prints before it starts ("6 of 10 trials finished earlier and are kept; ...")."""
        total = len(self.kept) + len(self.to_run)
        parts = [f"{len(self.kept)} of {total} trials finished earlier and are kept; {len(self.to_run)} to run"]
        if self.continues:
            parts.append(f"{len(self.continues)} of them continue a shorter finished trial from its stable phase")
        if self.added_tasks:
            tasks = sorted({t for ts in self.added_tasks.values() for t in ts})
            parts.append(f"{', '.join(tasks)} to score on {len(self.added_tasks)} kept trials' checkpoints")
        if self.out_of_spec:
            parts.append(f"{self.out_of_spec} finished trials are no longer in the spec (kept in MLflow, left out)")
        return "; ".join(parts + self.notes)


def finished_runs(uri: str, parent_run_id: str) -> tuple[list, list]:
    """The finished trial runs under the study's parent run (MLflow is the record of what finished): (grid trials'
    runs, anneal runs). An anneal run (crossover.platform.anneal) is no grid trial: never kept, continued or marked
    out of spec by the growth."""
    runs = [r for r in trial_runs_of(uri, parent_run_id) if r.info.status == "FINISHED"]
    anneals = [r for r in runs if r.data.tags.get(TAG_ROLE) == ROLE_ANNEAL]
    return [r for r in runs if r.data.tags.get(TAG_ROLE) != ROLE_ANNEAL], anneals


@dataclass(frozen=True)
class Finished:
    """What a study's records say is done, as `crossover run` would keep it: what `plan` and `run` estimate is the
    rest (`left`)."""

    uri: str
    trials: frozenset[str] = frozenset()  # ids of the spec's trials whose runs finished
    annealed: frozenset[str] = frozenset()  # ids of the AR trials whose anneal run finished
    unread: str | None = None  # why the records could not be read (the estimate is then the whole study's)

    def left(self, spec: StudySpec) -> list[TrialSpec]:
        return [t for t in spec.expand() if t.trial_id not in self.trials]


def finished_in(spec: StudySpec, uri: str) -> Finished:
    """Which of the spec's trials (and AR anneals) the study's records in `uri` hold as finished: those a
    `crossover run` of it keeps (see plan_growth). Reads only; never raises: a store that cannot be read is said in
    `unread`. A search study's trials are samples, not the grid's: none is matched."""
    if spec.search is not None:
        return Finished(uri)
    try:
        check_reachable(uri, write=False)  # never creates a store, and a server that is down fails in seconds
        parent_run_id = current_parent_run_id(uri, spec.name)
        grid, anneals = finished_runs(uri, parent_run_id) if parent_run_id else ([], [])
    except TrackingError as exc:
        return Finished(uri, unread=str(exc))
    except Exception as exc:  # noqa: BLE001 - any failure to read is reported, never raised: the plan goes on
        return Finished(uri, unread=f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}")
    in_spec = {t.trial_id for t in spec.expand()}
    return Finished(
        uri,
        frozenset(r.data.tags[TAG_TRIAL_ID] for r in grid) & in_spec,
        frozenset(r.data.tags[TAG_ANNEAL_OF] for r in anneals if TAG_ANNEAL_OF in r.data.tags),
    )


def remaining_study(spec: StudySpec, trials: list[TrialSpec]) -> StudySpec:
    """The study with only `trials` (its expansion set to them): what the wall-time estimate reads as the study."""
    left = spec.model_copy(update={"search": None})  # a search's samples and confirmations are among `trials`
    left._trials = list(trials)
    return left


def plan_growth(spec: StudySpec, uri: str, parent_run_id: str) -> Growth:
    """Compare the spec's trials with the finished trial runs under the study's parent run (MLflow is the record)."""
    trials = spec.expand()
    finished = finished_runs(uri, parent_run_id)[0]
    by_id = {r.data.tags[TAG_TRIAL_ID]: r for r in finished}
    in_spec = {t.trial_id for t in trials}
    growth = Growth(out_of_spec=mark_out_of_spec(uri, finished, in_spec))
    for trial in trials:
        (growth.kept if trial.trial_id in by_id else growth.to_run).append(trial)
    for trial in growth.kept:
        logged = {key[len(EVAL_PREFIX) :].split("/")[0] for key in by_id[trial.trial_id].data.metrics}
        if missing := [task for task in spec.eval.tasks if task_key(task) not in logged]:
            growth.added_tasks[trial.trial_id] = missing
    replaced: set[str] = set()
    for trial in growth.to_run:
        shorter = [
            r
            for r in finished
            if r.data.tags.get(TAG_LINEAGE) == trial.lineage_id
            and int(r.data.params.get("train.total_tokens", 0)) < trial.total_tokens
        ]
        step = branch_step(trial)
        if step is None:
            if shorter and COSINE_NOTE not in growth.notes:
                growth.notes.append(COSINE_NOTE)
            continue
        reach = step * trial.train.global_batch_tokens
        sources = [r for r in shorter if TAG_BRANCH in r.data.tags and int(r.data.tags[TAG_BRANCH_TOKENS]) <= reach]
        if not sources:
            continue
        source = max(sources, key=lambda r: int(r.data.tags[TAG_BRANCH_TOKENS]))
        source_id = source.data.tags[TAG_TRIAL_ID]
        replaces = source_id not in in_spec and source_id not in replaced
        replaced |= {source_id} if replaces else set()
        growth.continues[trial.trial_id] = Continuation(
            run_id=source.info.run_id,
            branch=source.data.tags[TAG_BRANCH],
            tokens=int(source.data.tags[TAG_BRANCH_TOKENS]),
            replaces=replaces,
        )
    return growth


def kept_checkpoints(storage: str, spec: StudySpec, trial: TrialSpec) -> list[tuple[int, str]]:
    """(tokens seen, folder path or URI) of every eval point's checkpoint of `trial` still kept under `storage` (a
    local path or a storage URI), in order; not the timed ones (train.checkpoint_minutes) Ray may keep beside them."""
    # lazy: both modules import torch, which crossover plan (before it measures) and the study's driver do without
    from crossover.evals.checkpoint import TRIAL_FILE
    from crossover.trainers.loop import CLIENT_STATE

    eval_points = {step * trial.train.global_batch_tokens for step in eval_steps(trial)}
    filesystem, root = filesystem_of(storage)
    found = {}
    # Tune trials' checkpoints (<study>*/<trial>/checkpoint_*) and Ray Train runs' (<study>-<trial id>/checkpoint_*)
    for levels in ([f"{spec.name}*", "*", "checkpoint_*"], [f"{spec.name}*", "checkpoint_*"]):
        for folder in _matching(filesystem, root.rstrip("/"), levels):
            try:
                if json.loads(_read(filesystem, f"{folder}/{TRIAL_FILE}"))["trial_id"] != trial.trial_id:
                    continue
                state = json.loads(_read(filesystem, f"{folder}/rank0_{CLIENT_STATE}"))
            except (OSError, ValueError, KeyError):
                continue  # a checkpoint being written or removed, or a folder that is none
            found[int(state["data"]["tokens_seen"])] = f"{storage.rstrip('/')}{folder[len(root.rstrip('/')) :]}"
    return sorted((tokens, folder) for tokens, folder in found.items() if tokens in eval_points)


def _matching(filesystem, root: str, levels: list[str]) -> list[str]:
    """The folders under `root` whose path below it matches `levels`, one glob pattern per level: listed one level
    at a time, so object storage lists only the folders on the way, never every checkpoint file under it."""
    import pyarrow.fs  # lazy: as in crossover.trainers.storage

    folders = [root]
    for pattern in levels:
        folders = [
            info.path
            for folder in folders
            for info in filesystem.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True))
            if info.type == pyarrow.fs.FileType.Directory and fnmatch.fnmatchcase(info.base_name, pattern)
        ]
    return folders


def _read(filesystem, path: str) -> str:
    with filesystem.open_input_stream(path) as stream:
        return stream.read().decode()


def score_added_tasks(spec: StudySpec, growth: Growth, uri: str, parent_run_id: str, storage: str, say=print) -> None:
    """Score each kept trial on the tasks added to the spec, at each of its kept checkpoints, into its run."""
    from crossover.evals.suite import evaluate_checkpoint, metrics_of  # lazy: torch, as in kept_checkpoints

    if not growth.added_tasks:
        return
    trials = {t.trial_id: t for t in growth.kept}
    for trial_id, tasks in growth.added_tasks.items():
        trial = trials[trial_id]
        checkpoints = kept_checkpoints(storage, spec, trial)
        points = len(eval_steps(trial))
        if not checkpoints:
            say(f"{trial.name}: no kept checkpoint under {storage}; {', '.join(tasks)} not scored for it")
            continue
        if len(checkpoints) < points:
            say(
                f"{trial.name}: {len(checkpoints)} of its {points} eval points' checkpoints are kept "
                f"(train.keep_checkpoints: {trial.train.keep_checkpoints}): {', '.join(tasks)} scored at those; "
                "train.keep_checkpoints: all keeps one per eval point"
            )
        run = TrialRun(trial, uri, parent_run_id)
        for tokens, folder in checkpoints:
            with local_folder(folder) as local:  # downloaded from object storage, read in place otherwise
                results = evaluate_checkpoint(local, tasks)
            run.log_added(metrics_of(results), tokens, results)
        run.refresh_summary()
