"""Where a trial's loop runs, kept apart from the loop itself (as torchtitan keeps launch code apart from models).

- One worker: the loop runs in the calling process (a Tune trial, `crossover train`, a test): no worker group to
  start, which is most of the cost of a small trial.
- Several workers: a Ray Train `TorchTrainer` runs the same loop in each worker; Ray Train sets up the process group
  (gloo on CPU, nccl on GPU) and merges each worker's checkpoint files into one checkpoint.

Reporters decide where metrics and checkpoints go; `LocalReporter` keeps them in a folder on this machine.
"""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from crossover.errors import UserError
from crossover.evals.results import TaskResult
from crossover.specs import TrialSpec
from crossover.specs.hardware import Runtime
from crossover.tracking.names import items_path, items_payload
from crossover.trainers.loop import train
from crossover.trainers.schedules import eval_steps
from crossover.trainers.storage import copy_into, is_uri, local_folder, rank_copy
from crossover.trainers.throughput import runtime_here

MetricSink = Callable[[dict[str, float], int], None]


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


CHECKPOINT_HEADROOM = 1.1  # a checkpoint takes its size, plus room for the run's own small files beside it
FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class CheckpointSpaceError(OSError, UserError):
    """No room for a checkpoint where it goes. Raised before anything is copied where possible (and the copy
    removed otherwise), so the previous checkpoint stays the latest, whole, and a rerun resumes from it."""

    title = "no room for a checkpoint"  # how the command line heads its message


def _size(folder: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def _no_space(destination: str | Path, needed: int, free: int | None) -> CheckpointSpaceError:
    mib = 1 << 20
    free_note = f", {free / mib:,.0f} MiB free there" if free is not None else ""
    return CheckpointSpaceError(
        errno.ENOSPC,
        f"no space for a checkpoint in {destination}: it needs {needed * CHECKPOINT_HEADROOM / mib:,.0f} MiB"
        f"{free_note}; free space there (or set resources.storage to a larger disk) and run the study again: "
        "the trial resumes from its last checkpoint",
    )


def check_checkpoint_space(folder: str | Path, destination: str | Path) -> None:
    """Refuse a checkpoint (the files in `folder`) that would not fit on the disk of `destination`, a local path;
    object storage (a URI) has no disk to fill."""
    if is_uri(str(destination)):
        return
    target = Path(destination)
    while not target.exists() and target != target.parent:
        target = target.parent
    needed, free = _size(folder), shutil.disk_usage(target).free
    if free < needed * CHECKPOINT_HEADROOM:
        raise _no_space(destination, needed, free)


@contextlib.contextmanager
def space_errors_named(folder: str | Path, destination: str | Path) -> Iterator[None]:
    """A disk that fills up during the copy (another writer) gets the same error as the check before it."""
    try:
        yield
    except OSError as exc:
        if exc.errno in FULL_DISK or "No space left" in str(exc):
            raise _no_space(destination, _size(folder), None) from exc
        raise


EVAL_POINT_TOKENS = "eval_point_tokens"  # reported with a checkpoint to Ray: its eval point's tokens; -1 if timed


def checkpoint_retention(keep: int | str, trials: list[TrialSpec]) -> dict[str, Any]:
    """Ray's CheckpointConfig for train.keep_checkpoints, as keyword arguments (Tune's and Ray Train's are two
    classes). Ray keeps a trial's latest checkpoint and its `num_to_keep` best by EVAL_POINT_TOKENS: the latest eval
    points', ranked above every timed checkpoint (train.checkpoint_minutes), so a timed one never displaces an eval
    point's and goes once it is neither the latest nor needed to fill `keep`. "all" keeps as many as the most eval
    points any of `trials` has, not every checkpoint: a number, so that superseded timed ones go too."""
    return {
        "num_to_keep": max(len(eval_steps(t)) for t in trials) if keep == "all" else int(keep),
        "checkpoint_score_attribute": EVAL_POINT_TOKENS,
        "checkpoint_score_order": "max",
    }


def branch_folder(storage: str, trial: TrialSpec) -> str:
    """Where a trial run by `crossover run` keeps its branch checkpoint (see `schedules.branch_step`): beside the
    study's Tune state, so `--fresh` removes it with the rest."""
    return f"{str(storage).rstrip('/')}/{trial.study}.branches/{trial.trial_id}"


TIMED = "_timed"  # LocalReporter's name ending for a timed checkpoint (train.checkpoint_minutes)


class LocalReporter:
    """Metrics in `folder/metrics.jsonl`, eval points' checkpoints in `folder/checkpoint_<tokens>` (the last `keep`
    kept, or "all") with their eval metrics in `folder/evals.jsonl`, a timed checkpoint in
    `folder/checkpoint_<tokens>_timed` until the next checkpoint, the branch checkpoint in `folder/branch`.
    `continues`: a shorter trial's branch checkpoint to start from. Used by `crossover train` and the tests."""

    def __init__(
        self, folder: str | Path, keep: int | str = 2, sink: MetricSink | None = None, continues: str | None = None
    ):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.keep, self.sink, self.continues = keep, sink, continues

    def log(self, metrics: dict[str, float], step: int) -> None:
        append_jsonl(self.folder / "metrics.jsonl", {"step": step, **metrics})
        if self.sink:
            self.sink(metrics, step)

    def checkpoint(self, metrics: dict[str, float], step: int, checkpoint_dir: str, eval_point: bool) -> None:
        target = self.folder / f"checkpoint_{step:015d}{'' if eval_point else TIMED}"
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        check_checkpoint_space(checkpoint_dir, self.folder)
        try:
            with space_errors_named(checkpoint_dir, self.folder):
                shutil.copytree(checkpoint_dir, partial, dirs_exist_ok=True)
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        partial.rename(target)  # a checkpoint appears whole or not at all
        if eval_point:
            append_jsonl(self.folder / "evals.jsonl", {"step": step, **metrics})
        found = self.checkpoints()
        superseded = [p for p in found[:-1] if p.name.endswith(TIMED)]  # the latest stays, to resume from
        at_eval_points = [p for p in found if not p.name.endswith(TIMED)]
        for old in superseded + (at_eval_points[: -self.keep] if self.keep != "all" else []):
            shutil.rmtree(old)

    def keep_branch(self, checkpoint_dir: str, trial: TrialSpec, step: int) -> None:
        copy_into(checkpoint_dir, str(self.folder / "branch"))

    def branch_kept(self, trial: TrialSpec, step: int) -> None:
        """Nothing to record: the folder is the record."""

    def progress(self, metrics: dict[str, float], step: int) -> None:
        """Nothing more to do: `log` has the same metrics (and calls the sink)."""

    def log_items(self, result: TaskResult, step: int) -> None:
        path = self.folder / items_path(result.task, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(items_payload(result.task, step, result.item_ids, result.item_metrics)))

    def checkpoints(self) -> list[Path]:
        return sorted(p for p in self.folder.glob("checkpoint_*") if not p.name.endswith(".partial"))

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[str | None]:
        found = self.checkpoints()
        yield str(found[-1]) if found else self.continues

    def history(self, name: str = "evals") -> list[dict[str, Any]]:
        path = self.folder / f"{name}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class TrackedRun(Protocol):
    """Where a Ray trial's metrics and per-item results go: a `crossover.platform.tracking.TrialRun` (MLflow)."""

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def log_items(self, task: str, step: int, ids: list[str], metrics: dict[str, list[float]]) -> None: ...

    def branch_kept(self, folder: str, tokens: int) -> None: ...

    def system_metrics(self) -> contextlib.AbstractContextManager[None]: ...  # the machine's, while a block trains


class RayReporter:
    """Inside a Ray Tune trial (`api="tune"`, one worker in the trial's process) or a Ray Train worker
    (`api="train"`): checkpoints go to Ray's storage, metrics and per-item results to the tracked run (MLflow)."""

    def __init__(
        self, api: str, run: TrackedRun | None = None, storage: str | None = None, continues: str | None = None
    ):
        self.api, self.run, self.storage = api, run, storage  # storage: the study's Ray storage path or URI
        self.continues = continues  # a shorter trial's branch checkpoint (path or URI) this trial starts from

    def _ray(self):
        # lazy: ray takes seconds; `crossover train` runs a one-process trial (LocalReporter) without it
        import ray.train
        import ray.tune

        return ray.tune if self.api == "tune" else ray.train

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.run:
            self.run.log(metrics, step)

    def log_items(self, result: TaskResult, step: int) -> None:
        if self.run:
            self.run.log_items(result.task, step, result.item_ids, result.item_metrics)

    def checkpoint(self, metrics: dict[str, float], step: int, checkpoint_dir: str, eval_point: bool) -> None:
        """Ray ranks the checkpoints to keep by EVAL_POINT_TOKENS (checkpoint_retention). A timed checkpoint's report
        carries no eval metric: the Optuna search hears only reports that have its metric (crossover.platform.search.GroupSearch)."""
        ray = self._ray()
        if self.storage:
            check_checkpoint_space(checkpoint_dir, self.storage)
        ranked = {**metrics, EVAL_POINT_TOKENS: step if eval_point else -1}
        with space_errors_named(checkpoint_dir, self.storage or "Ray's storage"):
            ray.report(ranked, checkpoint=ray.Checkpoint.from_directory(checkpoint_dir))

    def progress(self, metrics: dict[str, float], step: int) -> None:
        """A report without a checkpoint: the driver's progress display learns of every log point, not only of eval
        points (Ray Train's report is collective, so every worker makes it)."""
        self._ray().report(metrics)

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[str | None]:
        """Read in place from local storage; from object storage, only the files this rank loads are downloaded
        (crossover.trainers.storage.rank_copy), not Ray's `as_directory` copy of every rank's."""
        ray = self._ray()
        rank = ray.get_context().get_world_rank() if self.api == "train" else 0
        checkpoint = ray.get_checkpoint()
        if checkpoint is not None:
            with rank_copy(checkpoint.filesystem, checkpoint.path, rank) as folder:
                yield folder
        elif self.continues:
            with local_folder(self.continues, rank) as folder:
                yield folder
        else:
            yield None

    def keep_branch(self, checkpoint_dir: str, trial: TrialSpec, step: int) -> None:
        if self.storage:
            with space_errors_named(checkpoint_dir, self.storage):
                copy_into(checkpoint_dir, branch_folder(self.storage, trial))

    def branch_kept(self, trial: TrialSpec, step: int) -> None:
        if self.run and self.storage:
            self.run.branch_kept(branch_folder(self.storage, trial), step)


def _train_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker entry point: the same loop, reporting through Ray Train."""
    import ray.train  # lazy: as in RayReporter._ray

    trial = TrialSpec.model_validate(config["trial"])
    run_factory = config.get("run_factory")
    run = run_factory() if run_factory and ray.train.get_context().get_world_rank() == 0 else None
    runtime = Runtime.model_validate(config["runtime"]) if config.get("runtime") else None
    reporter = RayReporter("train", run, config.get("storage"), config.get("continues"))
    with run.system_metrics() if run else contextlib.nullcontext():  # rank 0's node only: the one that logs
        train(trial, reporter, config.get("stop_after_steps"), runtime)


def run_workers(
    trial: TrialSpec,
    storage: str | Path,
    *,
    name: str | None = None,
    run_factory: Callable[[], TrackedRun] | None = None,
    callbacks: list | None = None,
    max_failures: int = 0,
    stop_after_steps: int | None = None,
    runtime: Runtime | None = None,
    continues: str | None = None,
):
    """Run a trial as a Ray Train `TorchTrainer` with `trial.resources.workers` workers; returns the Ray Result.

    Re-running with the same storage and name resumes from the latest checkpoint (Ray Train restores the run).
    """
    # lazy: as in RayReporter._ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    runtime = runtime or runtime_here(trial)  # here, once: ranks resolving apart could measure apart and disagree
    resources = trial.resources
    use_gpu = resources.gpus_per_worker > 0
    worker_resources = {"CPU": resources.cpus_per_worker, **({"GPU": resources.gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={
            "trial": trial.model_dump(mode="json"),
            "run_factory": run_factory,
            "storage": str(storage),
            "stop_after_steps": stop_after_steps,
            "runtime": runtime.model_dump(),
            "continues": continues,
        },
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.workers, use_gpu=use_gpu, resources_per_worker=worker_resources
        ),
        run_config=ray.train.RunConfig(
            name=name or trial.name,
            storage_path=str(storage),
            checkpoint_config=ray.train.CheckpointConfig(**checkpoint_retention(trial.train.keep_checkpoints, [trial])),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            callbacks=callbacks,
        ),
    )
    return trainer.fit()
