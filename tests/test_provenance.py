"""Every run records what ran it: the source's git commit (and whether the tree was dirty), the versions of torch,
ray, deepspeed, mlflow and crossover, the image where set (crossover.platform.provenance), and MLflow's system
metrics while a trial trains. Real MLflow (a SQLite store), no Ray: a trial's run is exercised through TrialRun."""

from __future__ import annotations

import subprocess
import threading
import time
from importlib.metadata import version

import pytest

from crossover.analysis.curves import read_study
from crossover.platform.launch import LAUNCH, Continuation, TrialLaunch, launch_of
from crossover.platform.provenance import IMAGE_ENV, PACKAGES, UNKNOWN, provenance_tags
from crossover.platform.tracking import TrialRun, start_study
from crossover.specs import parse_study
from crossover.specs.hardware import Runtime
from crossover.tracking.names import (
    HELDOUT_LOSS,
    SYSTEM_PREFIX,
    TAG_GIT_COMMIT,
    TAG_GIT_DIRTY,
    TAG_IMAGE,
    TAG_MLFLOW_GIT_COMMIT,
    VERSION_TAG,
)
from crossover.tracking.store import mlflow_client

from .conftest import ROOT, tiny_study


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_the_parent_and_every_trial_run_record_the_commit_versions_and_image(tmp_path, tiny_corpus, monkeypatch):
    monkeypatch.setenv(IMAGE_ENV, "registry.example/crossover:0.1.0-gpu")
    spec = parse_study(tiny_study(tiny_corpus))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    provenance = provenance_tags()  # as the driver resolves it, once
    dirty = "true" if _git("status", "--porcelain", "--untracked-files=no") else "false"
    parent = start_study(spec, "name: tiny\n", uri, tags=provenance)
    runtime = Runtime(device="cpu", precision="fp32", compile=False, why="test")
    launch = TrialLaunch(
        trial=spec.expand()[0],
        runtime=runtime,
        tracking_uri=uri,
        parent_run_id=parent,
        storage=str(tmp_path),
        tags=provenance,
    )
    # what crosses Ray to the trial: its launch as JSON
    run = TrialRun.of(launch_of({LAUNCH: launch.model_dump(mode="json")}))
    client = mlflow_client(uri)
    for run_id in (parent, run.run_id):
        tags = client.get_run(run_id).data.tags
        assert tags[TAG_GIT_COMMIT] == tags[TAG_MLFLOW_GIT_COMMIT] == _git("rev-parse", "HEAD")
        assert tags[TAG_GIT_DIRTY] == dirty
        assert {p: tags[f"{VERSION_TAG}.{p}"] for p in PACKAGES} == {p: version(p) for p in PACKAGES}
        assert tags[TAG_IMAGE] == "registry.example/crossover:0.1.0-gpu"


def test_a_source_that_is_no_git_checkout_records_unknown_and_fails_nothing(tmp_path, tiny_corpus, monkeypatch):
    monkeypatch.delenv(IMAGE_ENV, raising=False)
    unpacked = tmp_path / "app"  # an image's copy of the source: no .git
    unpacked.mkdir()
    project = tmp_path / "project"  # a wheel installed in a virtual environment inside some other repository
    installed = project / ".venv" / "site-packages"
    installed.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    for source in (unpacked, installed):
        tags = provenance_tags(source)
        assert tags[TAG_GIT_COMMIT] == tags[TAG_GIT_DIRTY] == UNKNOWN, source
        assert TAG_MLFLOW_GIT_COMMIT not in tags and TAG_IMAGE not in tags

    spec = parse_study(tiny_study(tiny_corpus))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = start_study(spec, "name: tiny\n", uri, tags=provenance_tags(unpacked))
    run = TrialRun(spec.expand()[0], uri, parent, tags=provenance_tags(unpacked))
    client = mlflow_client(uri)
    assert client.get_run(parent).data.tags[TAG_GIT_COMMIT] == UNKNOWN
    assert client.get_run(run.run_id).data.tags[TAG_GIT_COMMIT] == UNKNOWN
    # continued by a later driver from a checkout: the run records the code that trains it now
    again = TrialRun(spec.expand()[0], uri, parent, tags=provenance_tags())
    assert again.run_id == run.run_id
    assert client.get_run(run.run_id).data.tags[TAG_GIT_COMMIT] == _git("rev-parse", "HEAD")


def _monitors() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor"]


def test_a_trial_run_holds_mlflow_system_metrics_and_stops_them_however_it_ends(tmp_path, tiny_corpus, monkeypatch):
    # MLflow's own knobs, over the trial's minute: samples every 0.1 s, each logged
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    spec = parse_study(tiny_study(tiny_corpus))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = start_study(spec, "name: tiny\n", uri)
    ar, mdlm = spec.expand()
    run = TrialRun(ar, uri, parent)
    client = mlflow_client(uri)
    with run.system_metrics():  # a short trial: it logs until the first system metrics are in
        deadline, step = time.monotonic() + 120, 0
        while step == 0 or not any(k.startswith(SYSTEM_PREFIX) for k in client.get_run(run.run_id).data.metrics):
            assert time.monotonic() < deadline, "no system metrics were logged"
            step += 1024
            run.log({"train/loss": 5.0, "tokens": step, HELDOUT_LOSS: 5.5}, step)
            time.sleep(0.1)
    assert not _monitors()
    run.finish()
    metrics = client.get_run(run.run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics and "system/system_memory_usage_megabytes" in metrics
    for bulk in (True, False):  # the analysis reads the curves without them, from SQL and through the client
        curves = read_study("tiny", uri, items=False, bulk=bulk).curves
        assert len(curves) == step // 1024 and not [c for c in curves.columns if c.startswith(SYSTEM_PREFIX)]

    # a trial continued from this one's branch takes over its curves' points, not its machine's system metrics
    branch = Continuation(run_id=run.run_id, branch=str(tmp_path), tokens=step)
    failing = TrialRun(mdlm, uri, parent, continues=branch)
    copied = client.get_run(failing.run_id).data.metrics
    assert HELDOUT_LOSS in copied and not [k for k in copied if k.startswith(SYSTEM_PREFIX)]
    # a trial that fails: the error is its own, the monitor stopped
    with pytest.raises(RuntimeError, match="NaN loss"):
        with failing.system_metrics():
            raise RuntimeError("NaN loss")
    assert not _monitors()
    failing.finish(error="RuntimeError: NaN loss")
    assert client.get_run(failing.run_id).info.status == "FAILED"
