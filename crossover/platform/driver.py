"""Run a study on Ray Tune: one Tune trial per TrialSpec, tracked in MLflow, resumable after a crash.

    spec -> data prepared once on the driver -> MLflow parent run -> Tuner (grid, or Optuna when the spec has a
    `search` block) -> per trial: the training loop in the trial's own process (one worker) or a Ray Train worker
    group (several workers) -> MLflow child run -> parent run FINISHED, FAILED or KILLED (stopped)

The same command runs on a laptop (a local Ray instance, SQLite MLflow store) and on a cluster (`--address`, or as
the entrypoint of `ray job submit`, with an MLflow server).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import signal
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossover.errors import UserError
from crossover.platform.anneal import AnnealPlan, plan_anneals
from crossover.platform.grow import Growth, plan_growth, score_added_tasks
from crossover.platform.local_ray import init_local_instance, record_local_instance, state_file
from crossover.platform.tracking import (
    TrialRun,
    finish_study,
    mark_study_stopped,
    start_study,
    study_runtime,
    trial_statuses,
    tune_experiment,
)
from crossover.specs import StudySpec, TrialSpec, longest_first
from crossover.specs.hardware import Runtime, resolve_runtime
from crossover.specs.study import ResourcesSpec
from crossover.tracking.names import TAG_DATA_HASH

# Environment the trials need that a local Ray instance would not otherwise pass on.
FORWARDED_ENV = ("CROSSOVER_CACHE", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "TOKENIZERS_PARALLELISM")


@dataclass
class StudyOutcome:
    finished: list[str]
    failed: dict[str, str]  # trial name -> error
    stopped: list[str]  # trials the study was stopped before they ended (Ctrl-C, `crossover stop`)
    parent_run_id: str
    experiment_path: str


def _tracked_run(
    trial_json: dict[str, Any],
    uri: str,
    parent_run_id: str,
    runtime: Runtime,
    continues: dict[str, Any] | None,
    tags: dict[str, str] | None,
) -> TrialRun:
    """Built inside the process that trains (rank 0): trials log to MLflow from where they run."""
    return TrialRun(TrialSpec.model_validate(trial_json), uri, parent_run_id, runtime, continues, tags)


def run_trial(config: dict[str, Any]) -> None:
    """The Tune trainable: train one trial and keep its MLflow child run in step with it."""
    trial = trial_of(config)
    runtime = Runtime.model_validate(config["runtime"])  # resolved once for the study, on the driver
    continues = config.get("continues", {}).get(trial.trial_id)  # a shorter trial this one continues (grow.py)
    branch = continues and continues["branch"]
    tags = config.get("run_tags", {}).get(trial.trial_id)  # an anneal trial's role (anneal.py)
    run = TrialRun(trial, config["tracking_uri"], config["parent_run_id"], runtime, continues, tags)
    if run.already_finished:  # finished before a driver crash that Tune's state did not see: never train twice
        return
    try:
        if trial.resources.workers == 1:
            from crossover.trainers.launch import RayReporter
            from crossover.trainers.loop import train

            result = train(trial, RayReporter("tune", run, config["storage"], branch), runtime=runtime)
            run.set_tags({TAG_DATA_HASH: result["data_hash"]})
        else:
            from ray.tune.integration.ray_train import TuneReportCallback

            from crossover.trainers.launch import run_workers

            tracked = functools.partial(
                _tracked_run,
                trial.model_dump(mode="json"),
                config["tracking_uri"],
                config["parent_run_id"],
                runtime,
                continues,
                tags,
            )
            outcome = run_workers(
                trial,
                config["storage"],
                name=f"{trial.study}-{trial.trial_id}",
                run_factory=tracked,
                callbacks=[TuneReportCallback()],
                max_failures=trial.resources.max_failures,
                runtime=runtime,
                continues=branch,
            )
            if outcome.error is not None:
                raise outcome.error
    except (SystemExit, KeyboardInterrupt):  # Tune stopped the trial with its study: not a failure, it continues
        run.finish(stopped=True)
        raise
    except BaseException as exc:
        run.finish(error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}")
        raise
    run.finish()


def trial_of(config: dict[str, Any]) -> TrialSpec:
    """The trial a Tune config stands for: a grid trial, or a search sample (its grid point with the sampled
    hyper-parameters)."""
    if "point" in config:
        return searched_trial(config["study"], config["point"], config["hparams"])
    return TrialSpec.model_validate(config["trial"])


def _trials_hash(trials: list[TrialSpec]) -> str:
    return hashlib.sha256(",".join(sorted(t.trial_id for t in trials)).encode()).hexdigest()[:16]


def storage_path(spec: StudySpec, override: str | None = None) -> str:
    """Ray storage for Tune state and checkpoints: the override (--storage), the spec's URI or path, else
    ~/ray_results. Local paths are made absolute (Ray requires it)."""
    storage = override or spec.resources.storage or str(Path.home() / "ray_results")
    return storage if "://" in storage else str(Path(storage).expanduser().resolve())


def driver_folder(storage: str) -> Path:
    """Where the driver keeps its log and its local Ray instance's record: beside the study's Ray state, or under
    .crossover/ here when the storage is a remote URI."""
    return Path(storage) if "://" not in storage else Path(".crossover") / "logs"


def _local_tune_folders(spec: StudySpec, storage: str) -> list[Path]:
    """The study's Tune experiment folders under a local `storage`: its own, and one per trial for a per-cell search
    (<study>.<trial>)."""
    return [Path(storage) / spec.name, *Path(storage).glob(f"{spec.name}.*")]


def has_tune_state(spec: StudySpec, storage: str) -> bool:
    """Whether an earlier `crossover run` of the study left Tune state under `storage` for a later one to continue."""
    if "://" in storage:
        from ray import tune

        return tune.Tuner.can_restore(f"{storage.rstrip('/')}/{spec.name}")
    return any(path.is_dir() for path in _local_tune_folders(spec, storage))


class StartError(UserError):
    """A study that cannot start as asked (nothing to continue, contradictory options, already running)."""

    title = "cannot start the study"  # how the command line heads its message


def check_start(spec: StudySpec, spec_path: str, storage: str, *, resume: bool, fresh: bool) -> None:
    """Refuse, before anything is written, a start that contradicts itself or a --resume with nothing to resume."""
    if resume and fresh:
        raise StartError("--resume and --fresh contradict each other: choose one")
    if resume and not has_tune_state(spec, storage):
        raise StartError(
            f"nothing to continue: study {spec.name} has no earlier run under {storage} (never run "
            f"there, or --storage differs); `crossover run {spec_path}` without --resume starts it"
        )


def check_tracking(uri: str, created: Path | None) -> None:
    """The tracking store can be written; else the folder this start created (`created`, the driver log's topmost
    new folder) is removed again before the error goes up: nothing half-written."""
    from crossover.tracking.store import TrackingError, check_reachable

    try:
        check_reachable(uri, write=True)
    except TrackingError:
        if created:
            shutil.rmtree(created, ignore_errors=True)
        raise


def clean_up_after_a_crash(folder: Path, study: str) -> int:
    """Stop the Ray processes an earlier driver of this study left running when it was killed (how many); refuse to
    start beside a driver of the same study that is still running (they would share its Tune state)."""
    from crossover.platform.local_ray import clean_up, running_driver

    record = state_file(folder, study)
    if driver := running_driver(record):
        raise StartError(
            f"study {study} is already running (driver pid {driver.pid}); `crossover stop` stops it, "
            f"`crossover status {study}` shows it"
        )
    return clean_up(record)


def run_study(
    spec: StudySpec,
    spec_text: str,
    tracking_uri: str,
    *,
    address: str | None = None,
    fresh: bool = False,
    max_concurrent: int | None = None,
    storage: str | None = None,
    callbacks: list | None = None,
    on_growth: Callable[[Growth], None] | None = None,
    on_anneal: Callable[[AnnealPlan], None] | None = None,
) -> StudyOutcome:
    """Run (or continue) every trial of the study; returns which finished and which failed.

    An existing Tune experiment of the same study at the same storage is continued: finished trials are not run
    again, unfinished ones restart from their last checkpoint, and their MLflow runs are continued. A spec that
    changed since makes the study grow (crossover.platform.grow; `on_growth` hears what is kept and what runs
    before anything does). `fresh` starts over instead (new MLflow parent run, old Tune state removed).
    With `early_stopped_ar.anneal`, a second phase then anneals each finished AR trial to its validation-chosen stop
    (crossover.platform.anneal; `on_anneal` hears the plan before it trains).
    """
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our progress table replaces Tune's console output
    trials, resources = spec.expand(), spec.resources
    storage = storage_path(spec, storage)
    experiment = f"{storage.rstrip('/')}/{spec.name}"
    if fresh and "://" not in storage:
        for path in _local_tune_folders(spec, storage):
            shutil.rmtree(path, ignore_errors=True)
    try:
        with interrupts_kept() as interrupted:
            trials_hash = _trials_hash(trials)
            parent_run_id = start_study(spec, spec_text, tracking_uri, fresh=fresh, trials_hash=trials_hash)
            # Once per study, so every trial (the AR and MDLM of each cell) trains alike; a continued study keeps the
            # resolution it began with.
            runtime = study_runtime(
                tracking_uri, parent_run_id, resolve_runtime(spec.train, trials[0].model, resources)
            )
            common = {
                "tracking_uri": tracking_uri,
                "parent_run_id": parent_run_id,
                "storage": storage,
                "runtime": runtime.model_dump(),
            }
            tune_name, first = spec.name, True
            if spec.search is None:  # a grid study can grow; a search study's trials are samples
                growth = plan_growth(spec, tracking_uri, parent_run_id)
                if on_growth:
                    on_growth(growth)
                score_added_tasks(spec, growth, tracking_uri, parent_run_id, storage)
                tune_name, first = tune_experiment(tracking_uri, parent_run_id, spec.name, trials_hash)
                common["continues"] = growth.continues
                trials = trials if first else growth.to_run
                experiment = f"{storage.rstrip('/')}/{tune_name}"
            results = (
                _fit(spec, trials, storage, address, max_concurrent, callbacks, common, interrupted, tune_name, first)
                if trials
                else []
            )
            stopped = _sorted_out(results, trial_statuses(tracking_uri, parent_run_id))[2]
            if spec.early_stopped_ar.anneal and spec.search is None and not stopped:
                plan = plan_anneals(spec, tracking_uri, parent_run_id, storage)
                if on_anneal:
                    on_anneal(plan)
                if todo := [a.trial for a in plan.to_run]:
                    phase = {
                        **common,
                        "continues": {a.trial.trial_id: a.continues for a in plan.to_run if a.continues},
                        "run_tags": {a.trial.trial_id: a.tags for a in plan.to_run},
                    }
                    results += _fit(
                        spec,
                        todo,
                        storage,
                        address,
                        max_concurrent,
                        callbacks,
                        phase,
                        interrupted,
                        f"{spec.name}.anneal-{_trials_hash(todo)[:8]}",
                        True,
                    )
    except KeyboardInterrupt:  # Ctrl-C before Tune took it over (the parent run being made, Ray starting)
        mark_study_stopped(tracking_uri, spec.name)
        raise
    finished, failed, stopped = _sorted_out(results, trial_statuses(tracking_uri, parent_run_id))
    finish_study(tracking_uri, parent_run_id, "KILLED" if stopped else "FAILED" if failed else "FINISHED")
    return StudyOutcome(finished, failed, stopped, parent_run_id, experiment)


@contextmanager
def interrupts_kept() -> Iterator[Callable[[], None]]:
    """Ctrl-C while a study starts, made sure to stop it. Python raises KeyboardInterrupt wherever the main thread
    is, and where that is a callback whose exceptions are printed and dropped (logging's at-fork lock release, run
    each time Ray's start-up forks a process) the study went on as if never stopped. The handler still raises at
    once, and remembers the signal: the check it yields raises it again at the next safe point if it was dropped.
    Tune's `fit` puts its own handler in place while trials run and restores this one after."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield lambda: None
        return
    seen = threading.Event()

    def on_sigint(signum, frame) -> None:
        seen.set()
        raise KeyboardInterrupt

    def check() -> None:
        if seen.is_set():
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield check
    finally:
        signal.signal(signal.SIGINT, previous)


def _fit(
    spec: StudySpec,
    trials: list[TrialSpec],
    storage: str,
    address: str | None,
    max_concurrent: int | None,
    callbacks: list | None,
    common: dict[str, Any],
    interrupted: Callable[[], None],
    experiment: str,
    first: bool,
) -> list:
    """Start or join Ray and run the study's Tuners; their Results. A stopped Tuner (Ctrl-C: some of its trials
    did not finish) ends the study's run there: the Tuners after it wait for the next `crossover run`.
    `interrupted()` raises KeyboardInterrupt if a Ctrl-C came and was lost on the way (see `interrupts_kept`).
    `experiment`: the grid's Tune experiment; not the `first` (a grown study's) is continued as it was made."""
    import ray
    from ray import tune

    from crossover.trainers.launch import checkpoints_to_keep

    resources = spec.resources
    if not ray.is_initialized():
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        if address:
            ray.init(address=address, log_to_driver=False)
        else:  # the embedded default: a local instance with this machine's cores
            init_local_instance(runtime_env={"env_vars": env} if env else None)
            record_local_instance(state_file(driver_folder(storage), spec.name))  # so a crash leaves nothing behind

    interrupted()
    trainable = tune.with_resources(run_trial, trial_resources(resources))
    concurrent = max_concurrent or resources.max_concurrent or worker_groups_that_fit(spec, ray.cluster_resources())
    results, tuners = [], _tuners(spec, trials, concurrent, experiment)
    for index, (name, tune_config, space) in enumerate(tuners):
        path = f"{storage.rstrip('/')}/{name}"
        if tune.Tuner.can_restore(path):
            # A grown study's experiment has the trials it was made with (fewer are left to run now): as saved.
            space = {**space, **common} if first else None
            tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True, param_space=space)
        else:
            run_config = tune.RunConfig(
                name=name,
                storage_path=storage,
                failure_config=tune.FailureConfig(max_failures=resources.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=checkpoints_to_keep(spec.train.keep_checkpoints)),
                callbacks=callbacks,
                verbose=0,
            )
            tuner = tune.Tuner(
                trainable, param_space={**space, **common}, tune_config=tune_config, run_config=run_config
            )
        interrupted()
        fitted = list(tuner.fit())
        results.extend(fitted)
        more_to_come = index + 1 < len(tuners)
        if more_to_come and _sorted_out(fitted, trial_statuses(common["tracking_uri"], common["parent_run_id"]))[2]:
            break
    return results


def _sorted_out(results: list, statuses: dict[str, str]) -> tuple[list[str], dict[str, str], list[str]]:
    """(finished, failed: name -> error, stopped) trial names. A trial without an error that MLflow does not record
    as FINISHED was cut short by a stop (Ctrl-C, `crossover stop`), or never started. Not Tune's view: after a stop
    it calls such trials TERMINATED, and its `done` flag was seen missing on a finished trial."""
    finished, failed, stopped = [], {}, []
    for result in results:
        trial = trial_of(result.config)
        if result.error is not None:
            failed[trial.name] = f"{type(result.error).__name__}: {result.error}"
        elif statuses.get(trial.trial_id) == "FINISHED":
            finished.append(trial.name)
        else:
            stopped.append(trial.name)
    return finished, failed, stopped


def trial_resources(resources: ResourcesSpec) -> dict[str, float]:
    """What one Tune trial asks Ray for. A one-worker trial trains in its own process and holds the worker's CPUs
    and GPUs; a fraction of a GPU (gpus_per_worker 0.25) lets Ray place that many trials on one GPU at once."""
    if resources.workers == 1:
        return {"cpu": resources.cpus_per_worker, "gpu": resources.gpus_per_worker}
    # The trial only waits on its Ray Train worker group, which reserves the workers' resources itself. Tune needs a
    # non-empty request: one byte of memory, as any CPU the trial held would be missing from the worker group (on a
    # 2-CPU machine a 0.01-CPU trial leaves 1.99 CPUs for two 1-CPU workers: no start).
    return {"cpu": 0, "memory": 1}


def worker_groups_that_fit(spec: StudySpec, cluster: dict[str, float]) -> int | None:
    """How many multi-worker trials can run at once on `cluster` (Ray's resource totals); None for one-worker
    trials, whose own requests let Tune fill the cluster. A trial whose worker group must wait for another's to
    finish would time out starting it, so the limit is set up front (an autoscaling cluster: set max_concurrent)."""
    res = spec.resources
    if res.workers == 1:
        return None
    need = {"CPU": res.workers * res.cpus_per_worker, "GPU": res.workers * res.gpus_per_worker}
    fits = [int(cluster.get(key, 0.0) // amount) for key, amount in need.items() if amount > 0]
    return max(1, min(fits))


def _tuners(spec: StudySpec, trials: list[TrialSpec], max_concurrent: int | None, experiment: str):
    """(experiment name, TuneConfig, parameter space) of each Tuner the study needs.

    No search: one Tuner over every trial of the grid. Search scope `grid`: one Optuna study whose dimensions are
    the grid point (categorical over the grid's trials) and the hyper-parameters. Scope `per_cell`: one Optuna study
    per grid trial over the hyper-parameters (each cell's AR and MDLM tuned alone), `num_samples` each.
    """
    from ray import tune

    def name_of(t) -> str:
        config = t.config
        return config["trial"]["name"] if "trial" in config else f"{config['point']}-{t.trial_id}"

    # Reusing a finished trial's process for the next saves its imports (torch, DeepSpeed: seconds per trial).
    names = {"trial_name_creator": name_of, "trial_dirname_creator": name_of, "reuse_actors": True}
    if spec.search is None:
        space = {"trial": tune.grid_search([t.model_dump(mode="json") for t in longest_first(trials)])}
        return [(experiment, tune.TuneConfig(max_concurrent_trials=max_concurrent, **names), space)]

    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    class EvalPointOptunaSearch(OptunaSearch):
        """Optuna hears a trial's metric at its eval points; the progress reports between them carry none."""

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if self.metric in result:
                super().on_trial_result(trial_id, result)

    # Tune would refuse those progress reports for lacking the metric; `expand` checks the name a trial reports.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    search = spec.search
    hparams = {name: _distribution(dist) for name, dist in search.space.items()}
    study = spec.model_dump(mode="json")

    def tuner(points: list[str]) -> tuple[tune.TuneConfig, dict]:
        algorithm = EvalPointOptunaSearch(metric=search.metric, mode=search.mode, seed=0)
        if max_concurrent:
            algorithm = ConcurrencyLimiter(algorithm, max_concurrent=max_concurrent)
        space = {"point": tune.choice(points), "hparams": hparams, "study": study}
        return tune.TuneConfig(search_alg=algorithm, num_samples=search.num_samples, **names), space

    if search.scope == "grid":
        return [(spec.name, *tuner([t.name for t in trials]))]
    return [(f"{spec.name}.{t.name}", *tuner([t.name])) for t in trials]


def _distribution(dist):
    from ray import tune

    if dist.uniform is not None:
        return tune.uniform(*dist.uniform)
    if dist.loguniform is not None:
        return tune.loguniform(*dist.loguniform)
    if dist.int is not None:
        return tune.randint(dist.int[0], dist.int[1] + 1)
    return tune.choice(dist.choice)


def searched_trial(study: dict[str, Any], point: str, hparams: dict[str, Any]) -> TrialSpec:
    """The grid trial `point` with the sampled hyper-parameters, validated and identified like any other trial
    (the samples become single-value grid axes, so a bad sample fails with the usual spec error)."""
    from crossover.specs import parse_study

    base = next(t for t in parse_study(study).expand() if t.name == point)
    grid = {**study.get("grid", {}), **{name: [value] for name, value in hparams.items()}}
    candidates = parse_study({**study, "grid": grid}).expand()
    return next(
        t
        for t in candidates
        if t.objective == base.objective and t.seed == base.seed and base.axes.items() <= t.axes.items()
    )
