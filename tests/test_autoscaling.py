"""A study on a cluster that starts empty grows it: `crossover run --address` on a Ray cluster whose autoscaler (Ray's
own, with its fake multi-node provider: real raylets on this machine) starts with a head that advertises no CPUs and
no worker nodes, as the prod KubeRay overlay does. The study's four two-worker trials queue as pending worker groups,
the autoscaler launches nodes for them, at least two train at once, no trial's process runs on the head, and once
the study is done the idle nodes are stopped again.

Evidence: MLflow's train/loss history of each trial (when its first and last steps were logged: the spans overlap);
Ray's state API (the nodes alive during and after the study, the node of each Tune trial actor)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .conftest import tiny_study
from .services import (
    kill_processes_with_env,
    new_auth_token,
    ray_actors,
    ray_autoscaling_head,
    ray_nodes,
    stop_group,
    with_token_auth,
)
from .test_platform import runs, wait_for

# One worker runs every Ray test (tests/conftest.py); minutes on 2 cores, so `make test-long`, not `make test`.
pytestmark = [pytest.mark.xdist_group("ray"), pytest.mark.long]

CROSSOVER = [sys.executable, "-m", "crossover.cli"]
MAX_NODES, NODE_CPUS = 3, 2


def growing_study(corpus: Path) -> dict:
    """Four two-worker trials of half a CPU per worker: a trial's worker group fits one 2-CPU node beside its own
    process's 0.01 CPU."""
    return tiny_study(
        corpus,
        train={"total_tokens": 16384},
        grid={"objective": ["ar", "mdlm"], "unique_tokens": ["4k", "8k"]},
        resources={"workers": 2, "cpus_per_worker": 0.5},
    )


def training_spans(uri: str) -> dict[str, tuple[float, float]]:
    """Each trial run's (first, last) train/loss timestamp, in seconds."""
    client, _, children = runs(uri)
    spans = {}
    for child in children:
        times = [m.timestamp / 1000 for m in client.get_metric_history(child.info.run_id, "train/loss")]
        spans[child.info.run_name] = (min(times), max(times))
    return spans


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of spans that overlap at one moment."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


def trial_actor_nodes(dashboard: str, env: dict[str, str]) -> list[str]:
    """The node of every Tune trial actor (function trainables: ImplicitFunc), alive or ended."""
    return [actor["node_id"] for actor in ray_actors(dashboard, env) if actor["class_name"] == "ImplicitFunc"]


@pytest.fixture
def env(tmp_path, session_cache):
    """Token auth with this test's own token (the autoscaler's nodes inherit it); afterwards every process started
    with it, the launched nodes included, is killed."""
    token = new_auth_token(tmp_path / "ray-auth")
    yield with_token_auth({**os.environ, "CROSSOVER_CACHE": str(session_cache)}, token)
    kill_processes_with_env("RAY_AUTH_TOKEN_PATH", str(token))


def test_a_study_grows_an_empty_cluster_and_it_shrinks_after(tmp_path, tiny_corpus, env):
    spec = tmp_path / "study.yaml"
    spec.write_text(yaml.safe_dump(growing_study(tiny_corpus)))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = tmp_path / "driver.log"  # a file, not a pipe: an unread pipe would block a chatty driver
    with ray_autoscaling_head(env, tmp_path / "cluster", NODE_CPUS, MAX_NODES) as (address, dashboard):
        head = [node["node_id"] for node in ray_nodes(dashboard, env)]
        assert len(head) == 1, "the cluster starts with its head alone"
        command = [*CROSSOVER, "run", str(spec), "--address", address, "--tracking-uri", uri, "--quiet"]
        command += ["--storage", str(tmp_path / "ray")]
        driver = subprocess.Popen(
            command, env=env, cwd=tmp_path, start_new_session=True, stdout=log.open("w"), stderr=subprocess.STDOUT
        )
        most_nodes = 1
        try:
            deadline = time.monotonic() + 900
            while driver.poll() is None and time.monotonic() < deadline:
                most_nodes = max(most_nodes, len(ray_nodes(dashboard, env)))
                time.sleep(2)
        finally:
            stop_group(driver)
        output = log.read_text()
        assert driver.returncode == 0 and "4 trials finished, 0 failed" in output, output[-5000:]
        on_nodes = trial_actor_nodes(dashboard, env)
        assert on_nodes and head[0] not in on_nodes, "a trial's process ran on the head, which has no CPUs"
        # Idle nodes go after idle_timeout_s (10 s) and the autoscaler's next pass.
        left = wait_for(lambda: ray_nodes(dashboard, env), lambda nodes: len(nodes) == 1, timeout_s=180)

    spans = training_spans(uri)
    assert len(spans) == 4
    assert most_nodes >= 3, f"the autoscaler launched {most_nodes - 1} nodes for four pending trials"
    assert most_at_once(list(spans.values())) >= 2, spans
    assert [node["node_id"] for node in left] == head, "the cluster did not shrink back to its head"
