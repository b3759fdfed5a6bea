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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossover.errors import UserError
from crossover.platform.anneal import AnnealPlan, plan_anneals
from crossover.platform.grow import Growth, plan_growth, score_added_tasks
from crossover.platform.launch import LAUNCH, TrialLaunch, config_name, launch_of
from crossover.platform.local_ray import (
    clean_up,
    init_local_instance,
    record_local_instance,
    running_driver,
    state_file,
)
from crossover.platform.provenance import provenance_tags
from crossover.platform.tracking import (
    TrialRun,
    finish_study,
    mark_study_stopped,
    mark_trials_stopped,
    start_study,
    study_runtime,
    trial_statuses,
    tune_experiment,
)
from crossover.specs import StudySpec, TrialSpec, longest_first
from crossover.specs.study import ResourcesSpec
from crossover.tracking.names import TAG_DATA_HASH
from crossover.trainers.storage import check_storage, filesystem_of
from crossover.trainers.throughput import study_runtime_here

if TYPE_CHECKING:
    from crossover.platform.search import SearchPlan

# Environment the trials need that a local Ray instance would not otherwise pass on.
WORKER_GROUP_WAIT_S = 30 * 60  # how long a trial's worker group waits for resources before asking again (run_trial)
TRIAL_DRIVER_CPU = 0.01  # a multi-worker trial's own process on a cluster: it waits on its workers (trial_resources)
FORWARDED_ENV = ("CROSSOVER_CACHE", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "TOKENIZERS_PARALLELISM")


@dataclass
class StudyOutcome:
    finished: list[str]
    failed: dict[str, str]  # trial name -> error
    stopped: list[str]  # trials the study was stopped before they ended (Ctrl-C, `crossover stop`)
    parent_run_id: str
    experiment_path: str


@dataclass(frozen=True)
class RunOptions:
    """What `crossover run` asks of the platform, its options resolved: the one object the command line hands over."""

    spec: StudySpec
    spec_text: str  # as written, kept on the study's MLflow parent run
    tracking_uri: str
    storage: str  # Ray storage: an absolute path or a URI (`storage_path`)
    address: str | None = None  # a Ray cluster to join; None: a local instance
    fresh: bool = False  # start over: new MLflow parent run, old Tune state removed
    max_concurrent: int | None = None


@dataclass(frozen=True)
class StudyEvents:
    """What the caller hears while the study runs: Tune's callbacks (the progress display), what a study that ran
    before keeps and runs (`on_growth`) and the anneal phase's plan (`on_anneal`), each before anything trains."""

    callbacks: list = field(default_factory=list)
    on_growth: Callable[[Growth], None] | None = None
    on_anneal: Callable[[AnnealPlan], None] | None = None
    on_search: Callable[[str], None] | None = None  # a search study's plan, then its confirmation's, one line each


def run_trial(config: dict[str, Any]) -> None:
    """The Tune trainable: train one trial and keep its MLflow child run in step with it."""
    launch = launch_of(config)
    trial = launch.trial
    branch = launch.continues and launch.continues.branch
    run = TrialRun.of(launch)
    if run.already_finished:  # finished before a driver crash that Tune's state did not see: never train twice
        return
    try:
        if trial.resources.workers == 1:
            # lazy: torch and DeepSpeed, for the process that trains (`crossover stop` reads this module's paths)
            from crossover.trainers.launch import RayReporter
            from crossover.trainers.loop import train

            with run.system_metrics():
                result = train(trial, RayReporter("tune", run, launch.storage, branch), runtime=launch.runtime)
            run.set_tags({TAG_DATA_HASH: result["data_hash"]})
        else:
            from ray.tune.integration.ray_train import TuneReportCallback  # lazy: as above, and Ray's seconds

            from crossover.trainers.launch import run_workers

            # A worker group that cannot start yet waits for the cluster to grow: its pending placement group is the
            # demand the autoscaler sees, and a new GPU node can take minutes to come up. Ray Train's 60 s would give
            # up and ask again and again (it retries without limit), so the request keeps dropping from the
            # autoscaler's view; Ray Train passes the setting from this process to the trial's controller.
            os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", str(WORKER_GROUP_WAIT_S))
            outcome = run_workers(
                trial,
                launch.storage,
                name=f"{trial.study}-{trial.trial_id}",
                run_factory=functools.partial(_tracked_run, launch.model_dump(mode="json")),
                callbacks=[TuneReportCallback()],
                max_failures=trial.resources.max_failures,
                runtime=launch.runtime,
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


def _tracked_run(launch_json: dict[str, Any]) -> TrialRun:
    """Built inside the Ray Train worker that logs (rank 0): trials log to MLflow from where they run."""
    return TrialRun.of(TrialLaunch.model_validate(launch_json))


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


def _study_folders(spec: StudySpec, storage: str) -> tuple[Any, list[str]]:
    """(filesystem, paths) of what earlier runs of the study left under `storage` (a local path or a URI): its Tune
    experiments (its own, a search's <study>.search-<hash> and <study>.confirm-<hash>, the anneal phase's
    <study>.anneal-<hash>) and its branch checkpoints (<study>.branches)."""
    import pyarrow.fs  # lazy: a second to import; `crossover stop` uses this module without it

    filesystem, root = filesystem_of(storage)
    found = filesystem.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    ours = [
        f.path
        for f in found
        if f.type == pyarrow.fs.FileType.Directory
        and (f.base_name == spec.name or f.base_name.startswith(f"{spec.name}."))
    ]
    return filesystem, ours


def has_tune_state(spec: StudySpec, storage: str) -> bool:
    """Whether an earlier `crossover run` of the study left state under `storage` for a later one to continue (a
    search study has no <study> experiment of its own: only its phases')."""
    return bool(_study_folders(spec, storage)[1])


def remove_tune_state(spec: StudySpec, storage: str) -> None:
    """Remove what earlier runs of the study left under `storage` (`_study_folders`), for `--fresh`."""
    filesystem, paths = _study_folders(spec, storage)
    for path in paths:
        filesystem.delete_dir(path)


class StartError(UserError):
    """A study that cannot start as asked (nothing to continue, contradictory options, already running)."""

    title = "cannot start the study"  # how the command line heads its message


def check_start(spec: StudySpec, spec_path: str, storage: str, *, resume: bool, fresh: bool) -> None:
    """Refuse, before anything is written, a start that contradicts itself, object storage that cannot be used
    (crossover.trainers.storage.check_storage), or a --resume with nothing to resume."""
    if resume and fresh:
        raise StartError("--resume and --fresh contradict each other: choose one")
    check_storage(storage)
    if resume and not has_tune_state(spec, storage):
        raise StartError(
            f"nothing to continue: study {spec.name} has no earlier run under {storage} (never run "
            f"there, or --storage differs); `crossover run {spec_path}` without --resume starts it"
        )


@contextmanager
def started_or_removed(folder: Path) -> Iterator[None]:
    """The topmost folder a start creates for `folder` (the driver's log) is removed again if the start fails
    within: nothing half-written."""
    created = next((p for p in reversed([folder, *folder.parents]) if not p.exists()), None)
    try:
        yield
    except BaseException:
        if created:
            shutil.rmtree(created, ignore_errors=True)
        raise


def clean_up_after_a_crash(folder: Path, study: str) -> int:
    """Stop the Ray processes an earlier driver of this study left running when it was killed (how many); refuse to
    start beside a driver of the same study that is still running (they would share its Tune state)."""
    record = state_file(folder, study)
    if driver := running_driver(record):
        raise StartError(
            f"study {study} is already running (driver pid {driver.pid}); `crossover stop` stops it, "
            f"`crossover status {study}` shows it"
        )
    return clean_up(record)


def run_study(options: RunOptions, events: StudyEvents | None = None) -> StudyOutcome:
    """Run (or continue) every trial of the study; returns which finished and which failed.

    An existing Tune experiment of the same study at the same storage is continued: finished trials are not run
    again, unfinished ones restart from their last checkpoint, and their MLflow runs are continued. A spec that
    changed since makes the study grow (crossover.platform.grow; `events.on_growth` hears what is kept and what runs
    before anything does). `options.fresh` starts over instead (new MLflow parent run, old Tune state removed).
    With `early_stopped_ar.anneal`, a last phase then anneals each finished AR trial the verdict compares (a search
    study's confirm and base runs) to its validation-chosen stop (crossover.platform.anneal; `events.on_anneal` hears
    the plan before it trains).
    """
    events = events or StudyEvents()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our progress table replaces Tune's console output
    spec, uri, storage = options.spec, options.tracking_uri, options.storage
    trials = spec.expand()
    experiment = f"{storage.rstrip('/')}/{spec.name}"
    if options.fresh:
        remove_tune_state(spec, storage)
        if spec.search is not None:
            from crossover.platform.search import forget_search  # lazy: Optuna, for a search study only

            forget_search(spec, driver_folder(storage))
    try:
        with interrupts_kept() as interrupted:
            trials_hash = _trials_hash(trials)
            provenance = provenance_tags()  # here, once: trials may run on machines without the source's git
            parent_run_id = start_study(
                spec,
                options.spec_text,
                uri,
                fresh=options.fresh,
                trials_hash=trials_hash,
                tags=provenance,
                storage=storage,
            )
            # Once per study, so every trial (the AR and MDLM of each cell) trains alike; a continued study keeps the
            # resolution it began with.
            runtime = study_runtime(uri, parent_run_id, study_runtime_here(spec))
            launch = functools.partial(
                TrialLaunch,
                runtime=runtime,
                tracking_uri=uri,
                parent_run_id=parent_run_id,
                storage=storage,
                tags=provenance,
            )
            phase = Phase(spec.name, [launch(trial=t) for t in trials])
            compared = trials  # what the verdict compares, and the anneal phase anneals the AR of
            if spec.search is not None:  # samples side by side, then each winner confirmed on fresh seeds
                results, compared = _run_search(options, phase.launches, parent_run_id, events, interrupted)
            else:  # a grid study can grow
                growth = plan_growth(spec, uri, parent_run_id)
                if events.on_growth:
                    events.on_growth(growth)
                score_added_tasks(spec, growth, uri, parent_run_id, storage)
                tune_name, first = tune_experiment(uri, parent_run_id, spec.name, trials_hash)
                to_run = trials if first else growth.to_run
                launches = [launch(trial=t, continues=growth.continues.get(t.trial_id)) for t in to_run]
                phase = Phase(tune_name, launches, as_saved=not first)
                experiment = f"{storage.rstrip('/')}/{tune_name}"
                results = _fit(options, phase, events.callbacks, interrupted) if phase.launches else []
            stopped = _sorted_out(results, trial_statuses(uri, parent_run_id))[2]
            if spec.early_stopped_ar.anneal and not stopped:
                plan = plan_anneals(spec, uri, parent_run_id, storage, compared)
                if events.on_anneal:
                    events.on_anneal(plan)
                if plan.to_run:
                    name = f"{spec.name}.anneal-{_trials_hash([a.trial for a in plan.to_run])[:8]}"
                    launches = [
                        launch(trial=a.trial, continues=a.continues, tags={**provenance, **a.tags}) for a in plan.to_run
                    ]
                    results += _fit(options, Phase(name, launches), events.callbacks, interrupted)
    except KeyboardInterrupt:  # Ctrl-C before Tune took it over (the parent run being made, Ray starting)
        mark_study_stopped(uri, spec.name)
        raise
    finished, failed, stopped = _sorted_out(results, trial_statuses(uri, parent_run_id))
    if stopped:
        mark_trials_stopped(uri, parent_run_id)
    finish_study(uri, parent_run_id, "KILLED" if stopped else "FAILED" if failed else "FINISHED")
    return StudyOutcome(finished, failed, stopped, parent_run_id, experiment)


@dataclass(frozen=True)
class Phase:
    """One Tune experiment of a study: its name under the Ray storage and the trials it runs. `as_saved`: an
    experiment a grown study made earlier, continued with the trials it was made with (fewer are left to run now).
    `search`: the launches are a search's grid trials, whose samples the plan's searcher asks for."""

    experiment: str
    launches: list[TrialLaunch]
    as_saved: bool = False
    search: SearchPlan | None = None


def _run_search(
    options: RunOptions, grid: list[TrialLaunch], parent_run_id: str, events: StudyEvents, interrupted
) -> tuple[list, list[TrialSpec]]:
    """A search study's two phases: every group's samples side by side (crossover.platform.search), then, unless
    stopped, each group's winner and the base settings on the fresh seeds. Returns Tune's results and the confirm
    and base trials (what the verdict compares; none when stopped)."""
    from ray import tune  # lazy: as in _fit

    # lazy: Ray's searcher and scheduler classes and Optuna, for a search study's driver only
    from crossover.platform.search import abandon_running, plan_confirmations, plan_search

    spec, storage, uri = options.spec, options.storage, options.tracking_uri
    plan = plan_search(spec, grid, driver_folder(storage))
    say = events.on_search or (lambda line: None)
    say(plan.summary())
    results = []
    if plan.left:
        name = f"{spec.name}.search-{plan.experiment_suffix}"
        if not tune.Tuner.can_restore(f"{storage.rstrip('/')}/{name}"):  # a new Tune run: none continues them
            abandon_running(plan)
        results = _fit(options, Phase(name, grid, search=plan), events.callbacks, interrupted)
    if _sorted_out(results, trial_statuses(uri, parent_run_id))[2]:
        return results, []  # stopped: the next `crossover run` continues the search
    confirmations = plan_confirmations(spec, plan, uri, parent_run_id)
    say(confirmations.summary())
    confirming = [launch.trial for launch in confirmations.launches]
    if confirming:
        name = f"{spec.name}.confirm-{_trials_hash(confirming)[:8]}"
        results += _fit(options, Phase(name, confirmations.launches), events.callbacks, interrupted)
    return results, confirming


@contextmanager
def interrupts_kept() -> Iterator[Callable[[], None]]:
    """Ctrl-C while a study starts, made sure to stop it. Python raises KeyboardInterrupt wherever the main thread
    is, and where that is a callback whose exceptions are printed and dropped (logging's at-fork lock release, run
    each time Ray's start-up forks a process) the study went on as if never stopped. The handler still raises at
    once, and remembers the signal: the check it yields raises it again at the next safe point if it was dropped.
    Tune's `fit` puts its own handler in place while trials run and restores this one after.

    SIGTERM (`ray job stop`, Kubernetes, `kill`) stops the study as Ctrl-C does: its handler calls whichever SIGINT
    handler is in place, this one or Tune's (called, not sent: a `ray job submit` driver has SIGINT blocked).
    `ray.init` replaces it with one that exits at once, leaving the trials' runs RUNNING: that exit, while Ray
    starts, becomes a KeyboardInterrupt here, and the check puts this handler back once Ray has started."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield lambda: None
        return
    seen = threading.Event()

    def on_sigint(signum, frame) -> None:
        seen.set()
        raise KeyboardInterrupt

    def on_sigterm(signum, frame) -> None:
        signal.getsignal(signal.SIGINT)(signal.SIGINT, frame)

    def check() -> None:
        signal.signal(signal.SIGTERM, on_sigterm)
        if seen.is_set():
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint), signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield check
    except SystemExit as exc:
        if exc.code != signal.SIGTERM:
            raise
        raise KeyboardInterrupt from None  # ray.init's SIGTERM handler, in place while Ray starts
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


def _fit(options: RunOptions, phase: Phase, callbacks: list, interrupted: Callable[[], None]) -> list:
    """Start or join Ray and run the phase's Tuner (continued where an earlier run left its state); its Results.
    `interrupted()` raises KeyboardInterrupt if a Ctrl-C came and was lost on the way (see `interrupts_kept`)."""
    # lazy: Ray (seconds) and the trainers (torch), for the driver only; `crossover stop` uses this module without
    import ray
    from ray import tune

    from crossover.trainers.launch import checkpoint_retention

    spec, storage = options.spec, options.storage
    resources = spec.resources
    if not ray.is_initialized():
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        if options.address:
            ray.init(address=options.address, log_to_driver=False)
            keep_train_coordinator_here()
        else:  # the embedded default: a local instance with this machine's cores
            init_local_instance(runtime_env={"env_vars": env} if env else None)
            record_local_instance(state_file(driver_folder(storage), spec.name))  # so a crash leaves nothing behind

    interrupted()
    joined = options.address is not None  # a cluster of its own (KubeRay, `ray start`), perhaps autoscaled
    trainable = tune.with_resources(run_trial, trial_resources(resources, joined))
    # On a cluster, multi-worker trials queue unbounded: their worker groups' pending requests are what its autoscaler
    # grows for, up to its maximum, so its size at start says nothing; max_concurrent caps them where asked.
    fits_here = None if joined else worker_groups_that_fit(spec, ray.cluster_resources())
    concurrent = options.max_concurrent or resources.max_concurrent or fits_here
    tune_config, space = _tune_config(phase, concurrent)
    path = f"{storage.rstrip('/')}/{phase.experiment}"
    if tune.Tuner.can_restore(path):
        tuner = _restored(path, trainable, None if phase.as_saved or phase.search else space)
    else:
        run_config = tune.RunConfig(
            name=phase.experiment,
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=resources.max_failures),
            checkpoint_config=tune.CheckpointConfig(
                **checkpoint_retention(spec.train.keep_checkpoints, [launch.trial for launch in phase.launches])
            ),
            callbacks=list(callbacks),  # Tune adds its loggers to the list: no phase's may reach the next's state
            verbose=0,
        )
        tuner = tune.Tuner(trainable, param_space=space, tune_config=tune_config, run_config=run_config)
    interrupted()
    return list(tuner.fit())


def keep_train_coordinator_here() -> None:
    """Start Ray Train's AutoscalingCoordinator on this node (the head, where a job's driver runs). Each Ray Train
    run passes its worker group's resources to the autoscaler through that one detached actor, which the first run to
    need it starts on its own node and which never ends: started by a trial on a worker node, it keeps that node (on
    KubeRay, a GPU pod) busy in the autoscaler's eyes after the study, so the cluster never shrinks to its head
    (measured in tests/test_autoscaling.py). Ray's private API: a Ray without it skips this."""
    try:  # lazy: Ray Data's module, for a driver that joins a cluster only
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )
    except ImportError:
        return
    get_or_create_autoscaling_coordinator()


def _restored(path: str, trainable: Any, space: dict | None):
    """The Tuner saved at `path`, to continue; one saved by a crossover before trials crossed Ray as a TrialLaunch
    cannot be (its trials' configs have another shape): the error says how to start over."""
    from ray import tune  # lazy: as in _fit

    # A state saved before each phase had its own callbacks holds an earlier phase's Tune trials (in Tune's loggers),
    # whose unpickling looks their trainable up by name before `restore` registers it: a driver that restores before
    # it fits anything (a finished search study run again) failed with "Unknown trainable".
    tune.register_trainable(run_trial.__name__, trainable, warn=False)
    try:
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True, param_space=space)
    except ValueError as exc:
        if "Invalid `param_space`" not in str(exc):
            raise
        raise StartError(
            f"the Tune state at {path} was written by an earlier version of crossover, in a form this one cannot "
            "continue; `crossover run --fresh` starts the study over (its finished MLflow runs stay in the store)"
        ) from None


def _sorted_out(results: list, statuses: dict[str, str]) -> tuple[list[str], dict[str, str], list[str]]:
    """(finished, failed: name -> error, stopped) trial names. A trial without an error that MLflow does not record
    as FINISHED was cut short by a stop (Ctrl-C, `crossover stop`), or never started. Not Tune's view: after a stop
    it calls such trials TERMINATED, and its `done` flag was seen missing on a finished trial."""
    finished, failed, stopped = [], {}, []
    for result in results:
        trial = launch_of(result.config).trial
        if result.error is not None:
            failed[trial.name] = f"{type(result.error).__name__}: {result.error}"
        elif statuses.get(trial.trial_id) == "FINISHED":
            finished.append(trial.name)
        else:
            stopped.append(trial.name)
    return finished, failed, stopped


def trial_resources(resources: ResourcesSpec, joined: bool = False) -> dict[str, float]:
    """What one Tune trial asks Ray for. A one-worker trial trains in its own process and holds the worker's CPUs
    and GPUs; a fraction of a GPU (gpus_per_worker 0.25) lets Ray place that many trials on one GPU at once.

    A multi-worker trial only waits on its Ray Train worker group, which reserves the workers' resources itself. On a
    cluster it `joined`, the trial asks for a hundredth of a CPU: never placed on a head that advertises no CPUs (the
    KubeRay head's num-cpus 0), where it would import torch, it lands beside some node's workers (a prod GPU node
    keeps 16 of its 80 CPUs free). On the local instance, one machine that is its own head, it asks for one byte of
    memory, as any CPU it held would be missing from the worker group (on a 2-CPU machine a 0.01-CPU trial leaves
    1.99 CPUs for two 1-CPU workers: no start)."""
    if resources.workers == 1:
        return {"cpu": resources.cpus_per_worker, "gpu": resources.gpus_per_worker}
    return {"cpu": TRIAL_DRIVER_CPU} if joined else {"cpu": 0, "memory": 1}


def worker_groups_that_fit(spec: StudySpec, cluster: dict[str, float]) -> int | None:
    """How many multi-worker trials can run at once on the local instance (`cluster`: Ray's resource totals); None
    for one-worker trials, whose own requests let Tune fill it. Set up front on one machine, whose size is fixed:
    more trials at once would only start more drivers that wait."""
    res = spec.resources
    if res.workers == 1:
        return None
    need = {"CPU": res.workers * res.cpus_per_worker, "GPU": res.workers * res.gpus_per_worker}
    fits = [int(cluster.get(key, 0.0) // amount) for key, amount in need.items() if amount > 0]
    return max(1, min(fits))


def _tune_config(phase: Phase, max_concurrent: int | None):
    """The phase's TuneConfig and parameter space. A grid of launches: one Tune trial each, longest first. A search's
    grid trials: Tune asks `GroupSearch` for each sample (every (cell, objective) its own Optuna study, side by side)
    and `GroupPruning` stops a sample only against its own group."""
    from ray import tune  # lazy: as in _fit

    def name_of(t) -> str:
        return config_name(t.config, t.trial_id)

    # Reusing a finished trial's process for the next saves its imports (torch, DeepSpeed: seconds per trial).
    names = {"trial_name_creator": name_of, "trial_dirname_creator": name_of, "reuse_actors": True}
    if phase.search is None:
        by_name = {launch.trial.name: launch.model_dump(mode="json") for launch in phase.launches}
        ordered = longest_first([launch.trial for launch in phase.launches])
        space = {LAUNCH: tune.grid_search([by_name[t.name] for t in ordered])}
        return tune.TuneConfig(max_concurrent_trials=max_concurrent, **names), space
    # Tune would refuse the progress reports between eval points for lacking the metric.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    from crossover.platform.search import GroupPruning, GroupSearch  # lazy: as in _run_search

    parent = phase.launches[0]
    search = GroupSearch(phase.search, parent.tracking_uri, parent.parent_run_id)
    scheduler = GroupPruning(search) if any(g.grace_tokens is not None for g in phase.search.groups.values()) else None
    config = tune.TuneConfig(
        search_alg=search,
        scheduler=scheduler,
        num_samples=phase.search.left,
        max_concurrent_trials=max_concurrent,
        **names,
    )
    return config, {}
