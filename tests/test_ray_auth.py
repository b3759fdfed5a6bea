"""Ray token authentication on the `ray job submit` path, against a real loopback head started as k8s/README.md
(section 5) starts a local one: `ray get-auth-token --generate` writes ~/.ray/auth_token (HOME is this test's own
folder, never the user's), and the head and the client run with `RAY_AUTH_MODE=token`. A submission without that
mode (the client then sends no token, although one is in ~/.ray) or with a wrong token is refused; one with it runs,
and its driver connects to the cluster with the token it inherits from the head."""

from __future__ import annotations

import os
import subprocess

import pytest

from .services import BIN, new_auth_token, ray_head, ray_job_submit, with_token_auth

pytestmark = pytest.mark.xdist_group("ray")  # one worker runs every Ray test (tests/conftest.py)

DRIVER = "import os, ray; ray.init(); print('driver auth', os.environ['RAY_AUTH_MODE'], ray.cluster_resources()['CPU'])"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray-auth")
    home = folder / "home"  # this test's own ~/.ray/auth_token
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env |= {"PATH": f"{BIN}:{env['PATH']}", "HOME": str(home)}
    made = subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=env, capture_output=True, text=True)
    assert made.returncode == 0 and (home / ".ray" / "auth_token").read_text() == made.stdout, made.stderr
    with ray_head({**env, "RAY_AUTH_MODE": "token"}, num_cpus=1) as (_, dashboard):
        yield {"dashboard": dashboard, "env": env}


def test_submit_without_token_mode_is_refused(cluster):
    job = ray_job_submit(cluster["dashboard"], ["--", "python", "-c", "print(1)"], cluster["env"], timeout=120)
    assert job.returncode != 0
    assert "Authentication required" in job.stderr and "Missing authentication token" in job.stderr, job.stderr


def test_submit_with_a_wrong_token_is_refused(cluster, tmp_path):
    wrong = with_token_auth(cluster["env"], new_auth_token(tmp_path))
    job = ray_job_submit(cluster["dashboard"], ["--", "python", "-c", "print(1)"], wrong, timeout=120)
    assert job.returncode != 0
    assert "Invalid authentication token" in job.stderr, job.stderr


def test_submit_with_the_token_runs_and_its_driver_is_authenticated(cluster):
    env = {**cluster["env"], "RAY_AUTH_MODE": "token"}
    job = ray_job_submit(cluster["dashboard"], ["--", "python", "-c", DRIVER], env, timeout=300)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "driver auth token 1.0" in job.stdout and "succeeded" in job.stdout
