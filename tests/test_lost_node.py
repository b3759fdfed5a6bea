"""A study survives losing a Ray node: `crossover run --address` on a real three-node Ray cluster on loopback, with the
node both trials train on killed (SIGKILL) after their first checkpoint.

The cluster: a head with no CPUs (the GCS and the driver only: they must outlive the fault), node A with two CPUs,
and node B with two CPUs, started only once both trials run: Ray could place them nowhere but on A. Once both trials
are past their first checkpoint, A is lost as a machine is: its raylet is SIGKILLed, then every other process of the
node (agents, the trials' workers). Tune restarts both trials (`resources.max_failures`) on B, the one node left with
CPUs, from their last checkpoints, while the GCS declares A dead.

Evidence: at the kill, A's raylet is the parent of both trial processes and B's of none; Tune's `result.json` names
the process of each report (`pid`): after the restart a process on B, whose first report comes right after a
checkpoint, with Tune's iteration count carried on from it (a restart from scratch would report 1,024 tokens, iteration
1); Ray lists A as dead; MLflow has one finished run per trial, each eval point and train step logged once.

Everything is in object storage, as on a cluster whose nodes share no disk: one bucket on moto's S3 server holds the
corpus, the shared token store (`data.store`), Ray's storage and the artifacts of an `mlflow server`. The trials
resume on B from the bucket, and `crossover analyze` reads the study back through the server. (Resuming from local
storage after a lost trial process is test_platform's; the same study on local storage added 2 minutes to the suite
and nothing this case does not check.)
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import psutil
import pytest
import yaml

from crossover.trainers.storage import filesystem_of

from .conftest import bucket_keys, new_bucket, tiny_study
from .services import (
    kill_processes_with_env,
    kill_ray_processes,
    mlflow_server,
    new_auth_token,
    ray_head,
    ray_nodes,
    ray_worker_node,
    stop_group,
    with_token_auth,
)
from .test_platform import history_steps, poll_runs, runs, wait_for

# One worker runs every Ray test (tests/conftest.py); a three-node cluster and a fault take ~3 minutes of the suite's
# serial Ray group on 2 cores, so `make test-long` (with the autoscaling cluster's tests), not `make test`.
pytestmark = [pytest.mark.xdist_group("ray"), pytest.mark.long]

CROSSOVER = [sys.executable, "-m", "crossover.cli"]
TOTAL, EVERY, BATCH = 98304, 24576, 1024  # three quarters of a trial remain after its first checkpoint
NAMES = ["ar-U10k-nano-s0", "mdlm-U10k-nano-s0"]


def raylet(temp_dir: str) -> psutil.Process:
    """The raylet of the node started with `temp_dir`."""
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "raylet" and any(temp_dir in part for part in proc.info["cmdline"] or []):
            return proc
    raise LookupError(f"no raylet under {temp_dir}")


def trial_processes(temp_dir: str) -> set[int]:
    """The Tune trial processes (function trainables: `ray::ImplicitFunc`) the node runs now."""
    found = set()
    for proc in raylet(temp_dir).children(recursive=True):
        try:
            if proc.name().startswith("ray::ImplicitFunc"):
                found.add(proc.pid)
        except psutil.Error:  # a worker that just ended
            pass
    return found


def dead_nodes(dashboard: str, env: dict[str, str]) -> list[str]:
    """The IDs of the nodes Ray's state API lists as dead."""
    return [node["node_id"] for node in ray_nodes(dashboard, env, "DEAD")]


def reports(storage: str, trial: str) -> list[dict]:
    """What Tune recorded of a trial's reports. Tune writes them on the driver and copies them to storage now and
    then; a restarted trial continues from the stored copy, so the last reports before a failure may be missing."""
    filesystem, path = filesystem_of(f"{storage}/tiny/{trial}/result.json")
    with filesystem.open_input_stream(path) as stream:
        return [json.loads(line) for line in stream.read().decode().splitlines()]


def stored_checkpoints(storage: str, trial: str) -> list[str]:
    """The names of a trial's checkpoint folders in the study's storage (a local path or a URI)."""
    import pyarrow.fs

    filesystem, path = filesystem_of(f"{storage}/tiny/{trial}")
    found = filesystem.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    return sorted(f.base_name for f in found if f.base_name.startswith("checkpoint_"))


@pytest.fixture
def stores(s3, tmp_path, tiny_corpus) -> Iterator[tuple[str, str, dict]]:
    """(Ray storage, MLflow tracking URI, the spec's data block) of the study, as on a cluster whose nodes share no
    disk: one bucket on moto's S3 server (the `s3` fixture, before the cluster's environment is made) holding the
    checkpoints, the artifacts of an `mlflow server`, the corpus and the shared token store (`data.store`, built by
    the driver as a Ray Data job on the cluster)."""
    bucket = new_bucket("crossover-lost-node")
    boto3.client("s3").upload_file(str(tiny_corpus), bucket.removeprefix("s3://"), "corpus/tiny.jsonl")
    data = {"corpus": {"source": f"{bucket}/corpus/tiny.jsonl", "format": "jsonl"}, "store": f"{bucket}/stores"}
    with mlflow_server(tmp_path / "mlflow", artifacts=f"{bucket}/mlflow") as url:
        yield f"{bucket}/ray", url, data


@pytest.fixture
def env(tmp_path, session_cache, stores):
    """The environment of the cluster's processes and the driver: token auth as on a real cluster, with a token of
    this test's own; CROSSOVER_CACHE for the trials (a driver given --address forwards none of its environment, so
    the trials find the token store through their node's). Afterwards, every process started with it is killed,
    whatever step failed."""
    token = new_auth_token(tmp_path / "ray-auth")
    yield with_token_auth({**os.environ, "CROSSOVER_CACHE": str(session_cache)}, token)
    kill_processes_with_env("RAY_AUTH_TOKEN_PATH", str(token))


def test_a_study_survives_losing_the_node_its_trials_run_on(tmp_path, tiny_corpus, stores, env):
    spec = tmp_path / "study.yaml"
    storage, uri, data = stores
    blocks = {"data": data, "train": {"total_tokens": TOTAL}, "eval": {"every": EVERY}}
    spec.write_text(yaml.safe_dump(tiny_study(tiny_corpus, **blocks)))
    token = Path(env["RAY_AUTH_TOKEN_PATH"])
    log = tmp_path / "driver.log"  # a file, not a pipe: an unread pipe would block a chatty driver
    with ray_head(env, num_cpus=0, auth_token=token) as (address, dashboard), ray_worker_node(address, env, 2) as a:
        command = [
            *CROSSOVER,
            "run",
            str(spec),
            "--address",
            address,
            "--tracking-uri",
            uri,
            "--storage",
            storage,
            "--quiet",
        ]
        driver = subprocess.Popen(
            command, env=env, cwd=tmp_path, start_new_session=True, stdout=log.open("w"), stderr=subprocess.STDOUT
        )
        try:

            def logged(done) -> dict[str, list[int]]:
                """The tokens each trial has logged to MLflow, once both trials' satisfy `done` (or the driver has
                ended, or time is up)."""

                def tokens() -> dict[str, list[int]]:
                    client, _, children = poll_runs(uri)
                    return {c.info.run_name: history_steps(client, c, "tokens") for c in children}

                def ready(found: dict[str, list[int]]) -> bool:
                    return driver.poll() is not None or (len(found) == 2 and all(map(done, found.values())))

                return wait_for(tokens, ready, timeout_s=300)

            assert logged(lambda _: True), "no trial started:\n" + log.read_text()[-3000:]
            with ray_worker_node(address, env, 2) as b:  # only now: the trials could go nowhere but A
                # A trial past its first eval point has had that checkpoint taken by Tune: its report (with the
                # checkpoint) returns only once the driver holds it.
                at_kill = logged(lambda steps: max(steps, default=0) > EVERY)
                assert driver.poll() is None and len(at_kill) == 2, "no checkpoint:\n" + log.read_text()[-3000:]
                assert all(stored_checkpoints(storage, name) for name in NAMES)  # in the storage, for B to resume
                lost, on_a = raylet(a), trial_processes(a)
                lost_node = next(part.split("=", 1)[1] for part in lost.cmdline() if part.startswith("--node_id="))
                assert len(on_a) == 2 and not trial_processes(b)  # both trials train on A
                node = lost.children(recursive=True)  # its agents and the trials' workers
                lost.kill()  # SIGKILL: the raylet says no goodbye to the GCS ...
                for proc in node:  # ... and the rest of the node goes with it, as on a machine that is lost
                    with contextlib.suppress(psutil.Error):
                        proc.kill()
                kill_ray_processes(a)  # its log monitor too
                on_b: set[int] = set()  # the trial processes seen on B while the driver runs on
                deadline = time.monotonic() + 480
                while driver.poll() is None and time.monotonic() < deadline:
                    on_b |= trial_processes(b)
                    time.sleep(1)
                driver.wait(timeout=10)
                dead = wait_for(lambda: dead_nodes(dashboard, env), lambda found: lost_node in found)
                assert lost_node in dead, "Ray does not list node A as dead"
        finally:
            stop_group(driver)
    output = log.read_text()
    assert driver.returncode == 0 and "2 trials finished, 0 failed" in output, output[-5000:]

    for name in NAMES:
        rows = reports(storage, name)
        before = [row for row in rows if row["pid"] in on_a]  # what Tune had stored of the trial's time on A
        after = rows[len(before) :]
        assert after and {row["pid"] for row in after} <= on_b and len({row["pid"] for row in after}) == 1, (
            on_a,
            on_b,
            rows,
        )
        assert [row["tokens"] for row in before] == list(range(BATCH, BATCH * len(before) + 1, BATCH))
        resumed = after[0]  # the first report after the restart, from the process on B
        checkpoint = resumed["tokens"] - BATCH
        assert resumed["iterations_since_restore"] == 1 and resumed["training_iteration"] == resumed["tokens"] // BATCH
        assert checkpoint in range(EVERY, max(at_kill[name]) + 1, EVERY), (name, resumed, at_kill[name])
        assert [row["tokens"] for row in after] == list(range(resumed["tokens"], TOTAL + 1, BATCH))

    client, parents, children = runs(uri)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(c.info.run_name for c in children) == NAMES  # one run per trial: the restart continued it
    for child in children:
        assert child.info.status == "FINISHED"
        assert history_steps(client, child, "eval/heldout_loss/loss") == list(range(EVERY, TOTAL + 1, EVERY))
        assert history_steps(client, child, "train/loss") == list(range(BATCH, TOTAL + 1, BATCH))
    # MLflow's artifacts and the token store are in the bucket; the study reads back through the server
    bucket = storage.removesuffix("/ray")
    artifacts = bucket_keys(f"{bucket}/mlflow")
    assert any(key.endswith("/artifacts/spec/study.yaml") for key in artifacts), artifacts
    assert any(key.endswith("manifest.json") for key in bucket_keys(f"{bucket}/stores")), output[-3000:]
    report = subprocess.run(
        [*CROSSOVER, "analyze", "tiny", "--tracking-uri", uri, "--out", str(tmp_path / "report")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0 and (tmp_path / "report" / "report.html").is_file(), report.stderr[-3000:]
