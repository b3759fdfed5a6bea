"""The MLflow writer of the tracking contract (the contract in words: the docstring of crossover.tracking; the names:
crossover.tracking.names; the analysis reads what this writes).

One experiment per study; a parent run for the study (tag `crossover.role=study`, spec/study.yaml and
spec/trials.json as artifacts); one child run per trial (tag `mlflow.parentRunId`), named by the trial, holding the
flattened TrialSpec as params, the `crossover.*` tags and metrics keyed by tokens seen. Runs are found again by tag,
so a continued study continues its runs instead of duplicating them. Trials log from wherever they run (only the
URI travels). A tracking server that stops answering mid-run loses nothing: metrics wait in a buffer and are sent
when it answers again (retried with backoff when the trial ends).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crossover.platform.launch import Continuation, TrialLaunch
from crossover.platform.rates import smoothed_rate
from crossover.specs import StudySpec, TrialSpec
from crossover.specs.hardware import Runtime
from crossover.tracking.names import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    HEADLINE_ACCURACY,
    HELDOUT_LOSS,
    ITEMS_DIR,
    ROLE_STUDY,
    ROLE_SUPERSEDED,
    SEARCH_PARAM_PREFIX,
    SPEC_DIR,
    STATE_TAG,
    SUMMARY_COLUMNS,
    SUMMARY_PREFIX,
    SYSTEM_PREFIX,
    TAG_BRANCH,
    TAG_BRANCH_TOKENS,
    TAG_ERROR,
    TAG_EXTENDED_BY,
    TAG_ITEMS,
    TAG_OUT_OF_SPEC,
    TAG_PARENT,
    TAG_PRUNED_AT,
    TAG_ROLE,
    TAG_RUNTIME,
    TAG_SPEC_HASH,
    TAG_STUDY,
    TAG_TRIAL_ID,
    TAG_TRIALS_HASH,
    TAG_TUNE_EXPERIMENT,
    VIEW_TAG,
    items_path,
    items_payload,
    task_key,
    trial_params,
    trial_tags,
    view_state,
)
from crossover.tracking.store import TrackingError, mlflow_client, search_all_runs


def _experiment_id(client, uri: str, study: str, storage: str | None = None) -> str:
    """The study's experiment, created on its first run. A tracking server decides where artifacts go (its
    --artifacts-destination); an embedded store puts them in the study's storage when that is an object store
    (`<storage>/mlartifacts`: the nodes share no disk), else next to the database."""
    experiment = client.get_experiment_by_name(study)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:///") and storage and "://" in storage:
        artifact_location = f"{storage.rstrip('/')}/mlartifacts"
    elif uri.startswith("sqlite:///"):  # absolute, next to the database: trials run in other working directories
        artifact_location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    # A model-training experiment, with a saved view of the summary columns (the verdict's are added by analyze).
    tags = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, VIEW_TAG: view_state(SUMMARY_COLUMNS)}
    return client.create_experiment(study, artifact_location=artifact_location, tags=tags)


def _find_run(client, experiment_id: str, tags: dict[str, str]):
    """The run with these tags (the first found: a parent or trial run's tags name one run)."""
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client.search_runs([experiment_id], filter_string=query, max_results=1)
    return runs[0] if runs else None


def _parent_tags(study: str) -> dict[str, str]:
    """The tags of a study's current parent run (earlier ones that `--fresh` replaced are tagged superseded)."""
    return {TAG_ROLE: ROLE_STUDY, TAG_STUDY: study}


def start_study(
    spec: StudySpec,
    spec_text: str,
    uri: str,
    *,
    fresh: bool = False,
    trials_hash: str = "",
    tags: dict[str, str] | None = None,
    storage: str | None = None,
) -> str:
    """The study's parent run: found again when continuing a study (whose spec may have changed since: it grows,
    crossover.platform.grow), new for a first or `fresh` start. `tags` are set on it at every start (the
    provenance of the driver that runs it now, crossover.platform.provenance). `storage`: the study's Ray storage,
    where a new experiment of an embedded store keeps its artifacts when it is an object store.

    The parent run keeps the spec: spec/study.yaml and spec/trials.json as they are now, and each version that was
    run as spec/history/<UTC time>.yaml.
    """
    client = mlflow_client(uri)
    experiment_id = _experiment_id(client, uri, spec.name, storage)
    run = _find_run(client, experiment_id, _parent_tags(spec.name))
    if run is not None and fresh:
        client.set_tag(run.info.run_id, TAG_ROLE, ROLE_SUPERSEDED)
        run = None
    if run is None:
        run = client.create_run(experiment_id, tags=_parent_tags(spec.name), run_name=spec.name)
    elif run.info.status != "RUNNING":
        client.update_run(run.info.run_id, status="RUNNING")
    run_id, text_hash = run.info.run_id, hashlib.sha256(spec_text.encode()).hexdigest()[:16]
    if TAG_TUNE_EXPERIMENT not in run.data.tags:  # the study's first Tune experiment runs the trials it began with
        client.set_tag(run_id, TAG_TUNE_EXPERIMENT, f"{spec.name}@{run.data.tags.get(TAG_TRIALS_HASH, trials_hash)}")
    if run.data.tags.get(TAG_SPEC_HASH) != text_hash:  # a first run, or the spec file was edited since
        stamp = time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime())
        client.log_text(run_id, spec_text, f"{SPEC_DIR}/history/{stamp}.yaml")
        client.log_text(run_id, spec_text, f"{SPEC_DIR}/study.yaml")
        table = [t.model_dump(mode="json") for t in spec.expand()]
        client.log_text(run_id, json.dumps(table, indent=1), f"{SPEC_DIR}/trials.json")
        client.set_tag(run_id, TAG_SPEC_HASH, text_hash)
    client.set_tag(run_id, TAG_TRIALS_HASH, trials_hash)
    if tags:
        from mlflow.entities import RunTag  # lazy: as in TrialRun._open

        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    return run_id


def tune_experiment(uri: str, parent_run_id: str, study: str, trials_hash: str) -> tuple[str, bool]:
    """The Tune experiment that runs the study's trials now, and whether it is the study's first. The first is
    named after the study; a study that grew runs its new and unfinished trials in a new one named after its trials
    (a Tune grid cannot change), which a stopped run of the same spec continues."""
    client = mlflow_client(uri)
    name, made_for = _retrying(client.get_run, parent_run_id).data.tags[TAG_TUNE_EXPERIMENT].rsplit("@", 1)
    if made_for != trials_hash:
        name = f"{study}.grown-{trials_hash[:8]}"
    client.set_tag(parent_run_id, TAG_TUNE_EXPERIMENT, f"{name}@{trials_hash}")
    return name, name == study


def study_runtime(uri: str, parent_run_id: str, resolved: Runtime) -> Runtime:
    """The study's runtime (precision, compile): the one recorded on its parent run when it began, else `resolved`,
    which is then recorded. A study continued on another kind of machine keeps training as it began."""
    client = mlflow_client(uri)
    recorded = client.get_run(parent_run_id).data.tags.get(TAG_RUNTIME)
    if recorded:
        return Runtime.model_validate_json(recorded)
    client.set_tag(parent_run_id, TAG_RUNTIME, resolved.model_dump_json())
    return resolved


def finish_study(uri: str, parent_run_id: str, status: str = "FINISHED") -> None:
    """Close the study's parent run: FINISHED, FAILED (a trial failed) or KILLED (stopped; `crossover run` goes on)."""
    _retrying(mlflow_client(uri).set_terminated, parent_run_id, status=status)


def mark_study_stopped(uri: str, study: str) -> None:
    """The study's current parent run KILLED if it is running: for a stop that came while it was being made."""
    client = mlflow_client(uri)
    experiment = _retrying(client.get_experiment_by_name, study)
    run = _retrying(_find_run, client, experiment.experiment_id, _parent_tags(study)) if experiment else None
    if run is not None and run.info.status == "RUNNING":  # a trial writing to the same SQLite store can hold its lock
        _retrying(client.set_terminated, run.info.run_id, status="KILLED")


def mark_trials_stopped(uri: str, parent_run_id: str) -> None:
    """The trial runs under the parent run still RUNNING, KILLED: for a study that was stopped. A stopped trial's
    process marks its own run on its way out, but Tune ends that process without waiting for its training thread,
    which may be mid-step then (on a busy machine, seconds from its next report, where it learns of the stop)."""
    client = mlflow_client(uri)
    experiment_id = _retrying(client.get_run, parent_run_id).info.experiment_id
    for run in _retrying(_trial_runs, client, experiment_id, parent_run_id):
        if run.info.status == "RUNNING":
            _retrying(client.set_terminated, run.info.run_id, status="KILLED")


def trial_statuses(uri: str, parent_run_id: str) -> dict[str, str]:
    """Trial id -> MLflow status of each trial run under the parent run: MLflow is the record of what finished."""
    client = mlflow_client(uri)
    experiment_id = _retrying(client.get_run, parent_run_id).info.experiment_id
    runs = _retrying(_trial_runs, client, experiment_id, parent_run_id)
    return {r.data.tags[TAG_TRIAL_ID]: r.info.status for r in runs if TAG_TRIAL_ID in r.data.tags}


def _trial_runs(client, experiment_id: str, parent_run_id: str, order_by: list[str] | None = None) -> list:
    """The trial runs under a study's parent run."""
    return search_all_runs(client, [experiment_id], f"tags.`{TAG_PARENT}` = '{parent_run_id}'", order_by)


def trial_runs_of(uri: str, parent_run_id: str) -> list:
    """Every trial run under the parent run."""
    client = mlflow_client(uri)
    experiment_id = _retrying(client.get_run, parent_run_id).info.experiment_id
    return _retrying(_trial_runs, client, experiment_id, parent_run_id)


def find_trial_run(uri: str, parent_run_id: str, trial_id: str):
    """The run of trial `trial_id` under the parent run, or None where it has none yet."""
    client = mlflow_client(uri)
    experiment_id = _retrying(client.get_run, parent_run_id).info.experiment_id
    return _retrying(_find_run, client, experiment_id, {TAG_TRIAL_ID: trial_id, TAG_PARENT: parent_run_id})


def mark_out_of_spec(uri: str, finished: list, in_spec: set[str]) -> int:
    """Tag the finished trial runs the spec no longer has (the analysis leaves them out), untag those it has again;
    how many are out."""
    client = mlflow_client(uri)
    out = 0
    for run in finished:
        gone, tagged = run.data.tags[TAG_TRIAL_ID] not in in_spec, TAG_OUT_OF_SPEC in run.data.tags
        out += gone
        if gone and not tagged:
            client.set_tag(run.info.run_id, TAG_OUT_OF_SPEC, "true")
        elif tagged and not gone:
            client.delete_tag(run.info.run_id, TAG_OUT_OF_SPEC)
    return out


RETRY_WAITS_S = (2, 4, 8, 16, 32)  # about a minute: long enough for a tracking server to restart

# MLflow's system metrics (CPU, memory, disk, network; GPU where nvidia-ml-py finds one) are sampled every
# SYSTEM_SAMPLING_S and logged as the mean of SYSTEM_SAMPLES samples: one point a minute, where MLflow's default is a
# point every 10 s. Trials run for hours to days: a week-long one keeps ~10k points per metric, which the UI's charts
# and the server's tables hold easily, and each sample costs the server a run lookup (MLflow checks the run is open).
# MLflow's MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL and MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING override both.
SYSTEM_SAMPLING_S = 30
SYSTEM_SAMPLES = 2
_log = logging.getLogger(__name__)


def _retrying(call, *args, **kwargs):
    """`call(*args, **kwargs)`, tried again after each of RETRY_WAITS_S while it fails (a server restarting);
    the last failure is raised."""
    for wait_s in RETRY_WAITS_S:
        try:
            return call(*args, **kwargs)
        except Exception:  # noqa: BLE001 - any transport error; a persistent one is raised below
            time.sleep(wait_s)
    return call(*args, **kwargs)


class TrialRun:
    """The MLflow child run of one trial. Metrics and per-item results are buffered and retried, and opening and
    closing the run wait out a restart, so a tracking server that is down for a while mid-run loses nothing: what
    was logged meanwhile is sent when it answers again, at the latest when the trial ends."""

    def __init__(
        self,
        trial: TrialSpec,
        uri: str,
        parent_run_id: str,
        runtime: Runtime | None = None,
        continues: Continuation | None = None,
        tags: dict[str, str] | None = None,
        search: dict[str, Any] | None = None,
    ):
        """`continues`: the shorter trial this one continues from its branch checkpoint: its points up to there are this run's too; when it `replaces` it (the spec no longer has
        that trial), its run is deleted once this one finishes, so the study keeps one run per trial (an anneal
        trial continues a longer one's checkpoint the same way, replacing nothing). `tags`: set on the run as it is
        created, over the trial's own (an anneal run's role, crossover.platform.anneal, and the driver's provenance,
        crossover.platform.provenance), and again on an unfinished run that is continued: a study continued by a
        later `crossover run` records the code that trains it now."""
        self.continues, self.tags, self.search = continues, tags or {}, search or {}
        # A run is written from inside training: a down server must cost a failed call, not MLflow's minutes of
        # internal retries. This process retries itself (the buffers below), so turn MLflow's own retries off.
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "10"
        self.uri = uri
        self.client = mlflow_client(uri)
        run = _retrying(self._open, trial, parent_run_id, runtime)
        # A trial restarted from a checkpoint (or from scratch, when a crash came before its first checkpoint was
        # recorded) recomputes the same values up to where it had logged: they are not logged twice.
        self.logged_through = max(
            (m.step for m in _retrying(self.client.get_metric_history, run.info.run_id, "tokens")), default=-1
        )
        # MLflow is the record of which trials are done: Tune's own state may lag a crashed driver by a few seconds.
        self.already_finished = run.info.status == "FINISHED"
        self.run_id = run.info.run_id
        self._pending: list = []
        self._pending_items: list[tuple[str, int, list[str], dict[str, list[float]]]] = []

    @classmethod
    def of(cls, launch: TrialLaunch) -> TrialRun:
        """The run of a launched trial (built where it trains: trials log to MLflow from where they run)."""
        return cls(
            launch.trial,
            launch.tracking_uri,
            launch.parent_run_id,
            launch.runtime,
            launch.continues,
            launch.tags,
            launch.search,
        )

    def _open(self, trial: TrialSpec, parent_run_id: str, runtime: Runtime | None):
        """Find or create the trial's run, with its params, marked RUNNING unless it is done (safe to repeat)."""
        from mlflow.entities import Param, RunTag  # lazy: mlflow is slow and not in the planner install

        experiment_id = _experiment_id(self.client, self.uri, trial.study)
        run = _find_run(self.client, experiment_id, {TAG_TRIAL_ID: trial.trial_id, TAG_PARENT: parent_run_id})
        if run is None:
            tags = {**trial_tags(trial, parent_run_id), **self.tags}
            run = self.client.create_run(experiment_id, tags=tags, run_name=trial.name)
        elif self.tags and run.info.status != "FINISHED":
            self.client.log_batch(run.info.run_id, tags=[RunTag(k, v) for k, v in self.tags.items()])
        if not run.data.params and self.continues:  # before the params: their absence says the copy is not done
            self._copy_through(self.continues.run_id, run.info.run_id, self.continues.tokens)
        if not run.data.params:  # new, or created by an attempt that failed before its params were sent
            sampled = {f"{SEARCH_PARAM_PREFIX}{k}": str(v) for k, v in self.search.items()}
            params = [Param(k, v) for k, v in {**trial_params(trial, runtime), **sampled}.items()]
            for start in range(0, len(params), 100):  # MLflow accepts at most 100 params per batch
                self.client.log_batch(run.info.run_id, params=params[start : start + 100])
        if run.info.status not in ("RUNNING", "FINISHED"):
            self.client.update_run(run.info.run_id, status="RUNNING")
        return run

    def log(self, metrics: dict[str, float], step: int, flush: bool = True) -> None:
        """`flush=False` only buffers (sent in batches of 1,000 values, and by `flush`/`finish`): for bulk writers."""
        from mlflow.entities import Metric  # lazy: as in _open

        if step <= self.logged_through:
            return
        now = int(time.time() * 1000)
        self._pending += [Metric(key, float(value), now, step) for key, value in metrics.items()]
        if flush or len(self._pending) >= 1000:
            self.flush(wait=False)

    def log_added(self, metrics: dict[str, float], step: int, results: list) -> None:
        """Results of a task added to the study after this trial finished, scored on its checkpoint at `step`."""
        from mlflow.entities import Metric  # lazy: as in _open

        now = int(time.time() * 1000)
        self._pending += [Metric(key, float(value), now, step) for key, value in metrics.items()]
        self._pending_items += [(r.task, step, r.item_ids, r.item_metrics) for r in results if r.item_ids]
        if not self.flush():
            raise TrackingError(f"could not send the added tasks' results of run {self.run_id} to {self.uri}")

    def refresh_summary(self) -> None:
        """The summary columns again, after tasks were added to a finished trial."""
        _retrying(self._log_summary)

    def log_items(self, task: str, step: int, ids: list[str], metrics: dict[str, list[float]]) -> None:
        """Per-item results of one task at one eval point (artifact items/<task>/<step>.json), for the bootstrap:
        eval/<task>/<metric> is the mean of each list. Buffered like the metrics."""
        if step <= self.logged_through:
            return
        self._pending_items.append((task, step, ids, metrics))
        self.flush(wait=False)

    def flush(self, wait: bool = True) -> bool:
        """Send buffered metrics and item results, with `wait` waiting out a restarting server (about a minute);
        True when nothing is left pending."""
        try:
            _retrying(self._send_pending) if wait else self._send_pending()
            return True
        except Exception:  # noqa: BLE001 - any transport error: the buffers are kept for the next try
            return False

    def _send_pending(self) -> None:
        while self._pending:
            batch = self._pending[:1000]
            self.client.log_batch(self.run_id, metrics=batch)
            del self._pending[: len(batch)]
        while self._pending_items:
            self._send_items(*self._pending_items[0])
            del self._pending_items[0]

    def _send_items(self, task: str, step: int, ids: list[str], metrics: dict[str, list[float]]) -> None:
        self.client.log_text(self.run_id, json.dumps(items_payload(task, step, ids, metrics)), items_path(task, step))
        tasks = set(filter(None, self.client.get_run(self.run_id).data.tags.get(TAG_ITEMS, "").split(",")))
        if task_key(task) not in tasks:
            self.client.set_tag(self.run_id, TAG_ITEMS, ",".join(sorted(tasks | {task_key(task)})))

    def _copy_through(self, source: str, target: str, tokens: int) -> None:
        """The source run's metric points and per-item results up to `tokens` seen, into the target run: the steps
        a continued trial shares with the shorter one, kept once. "tokens" goes last: a copy cut short is redone."""
        from mlflow.entities import Metric  # lazy: as in _open

        done = max((m.step for m in self.client.get_metric_history(target, "tokens")), default=-1)
        if done >= tokens:
            return
        # System metrics stay with their run: their steps count samples, not tokens, so no cut at `tokens` applies.
        metrics = self.client.get_run(source).data.metrics
        keys = sorted(k for k in metrics if not k.startswith((SUMMARY_PREFIX, SYSTEM_PREFIX)))
        for key in sorted(keys, key=lambda k: k == "tokens"):
            points = [
                Metric(key, m.value, m.timestamp, m.step)
                for m in self.client.get_metric_history(source, key)
                if m.step <= tokens
            ]
            for start in range(0, len(points), 1000):
                self.client.log_batch(target, metrics=points[start : start + 1000])
        tasks = [f.path for f in self.client.list_artifacts(source, ITEMS_DIR) if f.is_dir]
        for folder in tasks:
            for item in self.client.list_artifacts(source, folder):
                if int(Path(item.path).stem) <= tokens:
                    text = Path(self.client.download_artifacts(source, item.path)).read_text()
                    self.client.log_text(target, text, item.path)
        if tasks:
            self.client.set_tag(target, TAG_ITEMS, self.client.get_run(source).data.tags.get(TAG_ITEMS, ""))

    def branch_kept(self, folder: str, tokens: int) -> None:
        """The trial's branch checkpoint is whole at `folder`: a longer trial of its lineage can continue it."""
        self.set_tags({TAG_BRANCH: folder, TAG_BRANCH_TOKENS: str(tokens)})

    @contextlib.contextmanager
    def system_metrics(self) -> Iterator[None]:
        """MLflow's system metrics on this run while the block trains (`system/cpu_utilization_percentage`,
        `system/gpu_0_utilization_percentage`, ...; their step counts samples and goes on where a restarted trial's
        stopped), stopped when it ends however it ends. Used where the trial trains: in its Tune trial's process, or
        in a multi-worker trial's rank 0 only (that node's metrics). Never fails the trial: a monitor that cannot
        start or stop is a warning, and MLflow's monitor thread ends itself, losing only the system metrics, on an
        error of its own or a run no longer RUNNING."""
        monitor = None
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor  # lazy: as in _open

            monitor = SystemMetricsMonitor(
                self.run_id,
                sampling_interval=SYSTEM_SAMPLING_S,
                samples_before_logging=SYSTEM_SAMPLES,
                resume_logging=True,
                tracking_uri=self.uri,
            )
            monitor.start()
        except Exception as exc:  # noqa: BLE001 - system metrics are a view of the trial, never a reason to fail it
            _log.warning("no system metrics for run %s: %s", self.run_id, exc)
        try:
            yield
        finally:
            if monitor is not None:
                try:
                    monitor.finish()  # the samples of an unfinished interval are dropped (MLflow's own behaviour)
                except Exception as exc:  # noqa: BLE001 - as above
                    _log.warning("system metrics of run %s not stopped: %s", self.run_id, exc)

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag  # lazy: as in _open

        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def finish(self, error: str | None = None, stopped: bool = False) -> None:
        """Send what is pending (retrying with backoff for about a minute), record the error or clear an earlier
        one, and close the run (KILLED when the trial was `stopped` with its study: it continues later). Metrics
        that still cannot be sent are saved next to the trial and named in the error, so nothing is lost silently."""
        if not self.flush():
            saved = Path.cwd() / f"unsent-metrics-{self.run_id}.jsonl"
            with open(saved, "w") as f:
                for m in self._pending:
                    f.write(
                        json.dumps({"key": m.key, "value": m.value, "step": m.step, "timestamp": m.timestamp}) + "\n"
                    )
                for task, step, ids, metrics in self._pending_items:
                    f.write(json.dumps({"items": items_payload(task, step, ids, metrics)}) + "\n")
            raise TrackingError(
                f"{len(self._pending)} metric values and {len(self._pending_items)} item results could not be sent "
                f"to {self.uri}; they are saved in {saved}"
            )
        _retrying(self._close, error, stopped)

    def _close(self, error: str | None, stopped: bool) -> None:
        # a search sample its group's pruner stopped (crossover.platform.search) is a finished sample, not a stop
        if stopped and TAG_PRUNED_AT in self.client.get_run(self.run_id).data.tags:
            stopped = False
        if stopped:
            self.client.set_terminated(self.run_id, status="KILLED")
            return
        if error:
            self.client.set_tag(self.run_id, TAG_ERROR, error[:5000])
        else:
            if TAG_ERROR in self.client.get_run(self.run_id).data.tags:  # an earlier attempt failed
                self.client.delete_tag(self.run_id, TAG_ERROR)
            self._log_summary()
        self.client.set_terminated(self.run_id, status="FAILED" if error else "FINISHED")
        replaced = self.continues.run_id if self.continues and self.continues.replaces else None
        if not error and replaced and self.client.get_run(replaced).info.lifecycle_stage == "active":
            self.client.set_tag(replaced, TAG_EXTENDED_BY, self.run_id)
            self.client.delete_run(replaced)  # MLflow's trash: `mlflow runs restore` brings it back

    def _log_summary(self) -> None:
        """summary/acc_final, acc_best (its headline accuracy: the cloze's PMI accuracy, else the first accuracy),
        heldout_loss_final and epochs: columns to sort and compare finished trials by in the runs table."""
        from mlflow.entities import Metric  # lazy: as in _open

        metrics = self.client.get_run(self.run_id).data.metrics
        accuracies = [k for k in HEADLINE_ACCURACY if k in metrics] or sorted(
            k for k in metrics if k.startswith("eval/") and k.endswith("/acc")
        )
        summary = {"epochs": metrics.get("epoch"), "heldout_loss_final": metrics.get(HELDOUT_LOSS)}
        if accuracies:
            history = self.client.get_metric_history(self.run_id, accuracies[0])
            summary.update(acc_final=max(history, key=lambda m: m.step).value, acc_best=max(m.value for m in history))
        now = int(time.time() * 1000)
        found = [Metric(f"{SUMMARY_PREFIX}{k}", float(v), now, 0) for k, v in summary.items() if v is not None]
        self.client.log_batch(self.run_id, metrics=found)


def _current_parent(client, study: str):
    """The study's current parent run, or None where the study has none (never run in this store)."""
    experiment = client.get_experiment_by_name(study)
    return experiment and _find_run(client, experiment.experiment_id, _parent_tags(study))


def current_parent_run_id(uri: str, study: str) -> str | None:
    """The id of the study's current parent run in `uri`, or None; reads only."""
    parent = _current_parent(mlflow_client(uri), study)
    return parent.info.run_id if parent else None


def study_status(study: str, uri: str) -> list[dict[str, Any]]:
    """Each trial of the study's current parent run: name, status, latest metrics (tokens, epoch, losses,
    tokens_per_s: trials log them at every log point), its total tokens and, while it runs, `rate`: its tokens/s
    over the last minute of its log points (crossover.platform.rates)."""
    client = mlflow_client(uri)
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        raise TrackingError(f"no study '{study}' in {uri}; `crossover run SPEC` creates it (check --tracking-uri)")
    parent = _find_run(client, experiment.experiment_id, _parent_tags(study))
    if parent is None:
        return []
    children = _trial_runs(client, experiment.experiment_id, parent.info.run_id, order_by=["attributes.run_name"])
    rows = []
    for run in children:
        row = {
            "name": run.info.run_name,
            "status": run.info.status,
            **run.data.metrics,
            "total_tokens": int(run.data.params.get("train.total_tokens", 0)),
        }
        if run.info.status == "RUNNING":
            history = client.get_metric_history(run.info.run_id, "tokens")
            row["rate"] = smoothed_rate([(m.timestamp / 1000, m.value) for m in history])
        rows.append(row)
    return rows


def study_states(study: str, uri: str) -> dict[str, str]:
    """The state of each cell's verdict (crossed, not_crossed, undetermined, mdlm_always_ahead) as the last analysis
    (or the provisional verdict at the end of `crossover run`) put it on the study's parent run; empty before."""
    parent = _current_parent(mlflow_client(uri), study)
    if not parent:
        return {}
    prefix = f"{STATE_TAG}."
    return {k.removeprefix(prefix): v for k, v in sorted(parent.data.tags.items()) if k.startswith(prefix)}
