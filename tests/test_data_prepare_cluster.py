"""`crossover data prepare` on a Ray cluster, as k8s/README.md runs it on the prod overlay: submitted as a job
(`ray job submit --working-dir FOLDER -- crossover data prepare study.yaml`), its driver joins the cluster at the
address Ray gives a job (RAY_ADDRESS) and, asked for no number of workers, starts enough tokenizing workers that an
autoscaling cluster which starts with a head of no CPUs and no worker nodes (the KubeRay head's num-cpus 0, the CPU
group's minReplicas 0) grows CPU nodes for them. A dashboard address, which `ray job submit` takes but a Ray program
cannot join, is refused with what to do instead."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from typer.testing import CliRunner

from crossover.cli import app

from .conftest import tiny_study
from .services import (
    BIN,
    kill_processes_with_env,
    new_auth_token,
    ray_actors,
    ray_autoscaling_head,
    ray_job_submit,
    ray_nodes,
    with_token_auth,
)

pytestmark = pytest.mark.xdist_group("ray")  # one worker runs every Ray test (tests/conftest.py)

# One CPU node of two CPUs: two tokenizing workers at once. Not two nodes: the fake provider's nodes share the head's
# session folder, where a node's runtime-env agent, finding the job's working_dir unused on its own node, deletes the
# copy the other node's workers run in (a Kubernetes pod has a folder of its own).
MAX_NODES, NODE_CPUS = 1, 2


def store_study(corpus, store) -> dict:
    return tiny_study(corpus, data={"store": str(store)})


def test_a_dashboard_address_is_refused_with_what_to_do(tmp_path, tiny_corpus):
    spec = tmp_path / "study.yaml"
    spec.write_text(yaml.safe_dump(store_study(tiny_corpus, tmp_path / "store")))
    done = CliRunner().invoke(app, ["data", "prepare", str(spec), "--address", "http://localhost:8265"])
    assert done.exit_code == 2, done.output
    assert "is a Ray dashboard" in done.output and "ray job submit" in done.output, done.output
    assert not (tmp_path / "store").exists()


@pytest.fixture
def env(tmp_path, session_cache):
    """Token auth with this test's own token (the autoscaler's nodes inherit it), `crossover` on PATH for the job;
    afterwards every process started with it, the launched nodes included, is killed."""
    token = new_auth_token(tmp_path / "ray-auth")
    base = {**os.environ, "CROSSOVER_CACHE": str(session_cache), "PATH": f"{BIN}:{os.environ['PATH']}"}
    yield with_token_auth(base, token)
    kill_processes_with_env("RAY_AUTH_TOKEN_PATH", str(token))


def tokenizing_actors(dashboard: str, env: dict[str, str]) -> dict[str, str]:
    """{actor id: node} of every Ray Data map worker (class MapWorker(...)) placed on a node, alive or ended."""
    return {
        actor["actor_id"]: actor["node_id"]
        for actor in ray_actors(dashboard, env)
        if actor["class_name"].startswith("MapWorker") and actor.get("node_id")
    }


@pytest.mark.long
def test_prepare_as_a_job_grows_an_empty_cluster_for_its_workers(tmp_path, tiny_corpus, env):
    job_dir = tmp_path / "job"  # what `ray job submit --working-dir` uploads: the spec alone, as k8s/overlays/prod
    job_dir.mkdir()
    store = tmp_path / "store"  # a shared folder: every node of this cluster is on this machine
    (job_dir / "study.yaml").write_text(yaml.safe_dump(store_study(tiny_corpus, store)))
    with ray_autoscaling_head(env, tmp_path / "cluster", NODE_CPUS, MAX_NODES) as (_, dashboard):
        head = [node["node_id"] for node in ray_nodes(dashboard, env)]
        assert len(head) == 1, "the cluster starts with its head alone"
        job = ray_job_submit(
            dashboard, ["--working-dir", str(job_dir), "--", "crossover", "data", "prepare", "study.yaml"], env, 900
        )
        output = job.stdout + job.stderr
        assert job.returncode == 0 and "succeeded" in job.stdout, output[-5000:]
        actors = tokenizing_actors(dashboard, env)
    (manifest_file,) = store.glob("*/manifest.json")  # the store's folder: <data.store>/<key>
    manifest = json.loads(manifest_file.read_text())
    shards = len(manifest["shards"])
    # Asked for no number, the job starts a worker per shard here (fewer shards than the cluster default); the
    # cluster's CPUs at the start (none) would have given one, and one at work on the node.
    assert f"tokenized {shards} of {shards} shards" in output and f"with {shards} Ray worker(s)" in output, output
    assert len(actors) == NODE_CPUS, f"{len(actors)} tokenizing workers ran on the node the autoscaler started"
    assert head[0] not in actors.values(), "a tokenizing worker ran on the head, which has no CPUs"
