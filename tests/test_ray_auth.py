"""Ray token authentication on the `ray job submit` path, against a real loopback cluster started as a real one is
(`RAY_AUTH_MODE=token`, the token from a file named by `RAY_AUTH_TOKEN_PATH`; a token of this test's own, never
~/.ray/auth_token): a submission without the token or with a wrong one is refused, one with it runs, and its driver
connects to the cluster with the token the head hands it."""

from __future__ import annotations

import os

import pytest

from .services import BIN, new_auth_token, ray_head, ray_job_submit, with_token_auth

pytestmark = pytest.mark.xdist_group("ray")  # one worker runs every Ray test (tests/conftest.py)

DRIVER = "import os, ray; ray.init(); print('driver auth', os.environ['RAY_AUTH_MODE'], ray.cluster_resources()['CPU'])"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray-auth")
    home = folder / "home"  # a HOME without ~/.ray/auth_token, for the clients that must have no token
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env |= {"PATH": f"{BIN}:{env['PATH']}", "HOME": str(home)}
    token = new_auth_token(folder)
    with ray_head(env, num_cpus=1, auth_token=token) as (_, dashboard):
        yield {"dashboard": dashboard, "env": env, "token": token}


def test_submit_without_the_token_is_refused(cluster):
    job = ray_job_submit(cluster["dashboard"], ["--", "python", "-c", "print(1)"], cluster["env"], timeout=120)
    assert job.returncode != 0
    assert "Authentication required" in job.stderr and "Missing authentication token" in job.stderr, job.stderr


def test_submit_with_a_wrong_token_is_refused(cluster, tmp_path):
    wrong = with_token_auth(cluster["env"], new_auth_token(tmp_path))
    job = ray_job_submit(cluster["dashboard"], ["--", "python", "-c", "print(1)"], wrong, timeout=120)
    assert job.returncode != 0
    assert "Invalid authentication token" in job.stderr, job.stderr


def test_submit_with_the_token_runs_and_its_driver_is_authenticated(cluster):
    env = with_token_auth(cluster["env"], cluster["token"])
    job = ray_job_submit(cluster["dashboard"], ["--", "python", "-c", DRIVER], env, timeout=300)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "driver auth token 1.0" in job.stdout and "succeeded" in job.stdout
