"""The MLflow server of k8s/base/mlflow.yaml, started for real from the rendered Deployment.

The test plays kubelet: it builds the server's environment from the Deployment (fake Secret values, the rendered
ConfigMap, `$(VAR)` expansion), runs the init container's script that writes the basic-auth config, and starts the
container's command and arguments as they are, with only what a laptop cannot have substituted: SQLite instead of
PostgreSQL (backend and user store), a temporary directory as the artifacts destination, and loopback with a free
port instead of 0.0.0.0:5000. Then a run is logged with credentials, and a request without them is refused.
"""

from __future__ import annotations

import base64
import configparser
import importlib.util
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .services import POSTGRES
from .test_k8s import one, overlay

STARTUP_LIMIT_S = 120  # a bound on waiting for /health, never an assertion on speed


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in env values, command and args (an unknown $(VAR) stays as written)."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def _container_env(container: dict[str, Any], objects: tuple, secret_values: dict[tuple[str, str], str]) -> dict:
    """The environment kubelet gives a container: envFrom first, then env in order, each value expanded."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(one(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            assert source["secretRef"].get("optional"), f"unexpected required Secret {source['secretRef']['name']}"
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = _expand(var["value"], env)
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secret_values.setdefault((ref["name"], ref["key"]), secrets.token_hex(16))
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _substitute(args: list[str], replacements: dict[str, str]) -> list[str]:
    """Replace the value after each flag named in replacements; every flag must be present."""
    out = list(args)
    for flag, value in replacements.items():
        assert flag in out, f"the Deployment's server arguments have no {flag}"
        out[out.index(flag) + 1] = value
    return out


_LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy


def _request(url: str, auth: tuple[str, str] | None = None) -> int:
    """The HTTP status of a GET (0 while nothing listens)."""
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with _LOOPBACK.open(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except urllib.error.URLError:
        return 0


def _run_init_container(
    init: dict[str, Any], objects: tuple, secret_values: dict[tuple[str, str], str], auth_db_uri: str, tmp_path: Path
) -> Path:
    """Run the init container's script as written, with the user-store URI and the config path substituted."""
    env = _container_env(init, objects, secret_values)
    uri = env["MLFLOW_AUTH_DATABASE_URI"]
    assert uri.startswith(POSTGRES) and "$(" not in uri, uri  # credentials expanded from the Secret
    auth_ini = tmp_path / "auth" / "basic_auth.ini"
    auth_ini.parent.mkdir(exist_ok=True)
    env |= {"MLFLOW_AUTH_DATABASE_URI": auth_db_uri, "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini)}
    done = subprocess.run([*init["command"], *init["args"]], env={"PATH": os.environ["PATH"], **env}, timeout=30)
    assert done.returncode == 0 and auth_ini.exists()
    assert auth_ini.stat().st_mode & 0o077 == 0, "the auth config holds a database password: mode 600"
    config = configparser.ConfigParser()  # as mlflow.server.auth.config reads it
    config.read(auth_ini)
    assert config["mlflow"]["database_uri"] == auth_db_uri
    return auth_ini


def test_auth_config_keeps_a_url_encoded_password(tmp_path):
    objects = overlay("dev")
    (init,) = one(objects, "Deployment", "crossover-mlflow")["spec"]["template"]["spec"]["initContainers"]
    _run_init_container(
        init, objects, {}, f"{POSTGRES}mlflow:p%40ss%25w0rd@crossover-postgres:5432/mlflow_auth", tmp_path
    )


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    if importlib.util.find_spec("flask_wtf") is None:
        pytest.fail("mlflow's basic-auth app needs Flask-WTF: pip install 'mlflow[auth]' (the dev extra has it)")
    objects = overlay("dev")
    pod = one(objects, "Deployment", "crossover-mlflow")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    (server,) = pod["containers"]
    secret_values: dict[tuple[str, str], str] = {}

    # The init container writes the auth config; its user-store URI becomes SQLite, its path a temporary file.
    auth_config_path = _container_env(init, objects, secret_values)["MLFLOW_AUTH_CONFIG_PATH"]
    auth_ini = _run_init_container(init, objects, secret_values, f"sqlite:///{tmp_path / 'auth.db'}", tmp_path)

    env = _container_env(server, objects, secret_values)
    postgres = one(objects, "Service", "crossover-postgres")
    (database,) = [
        v["value"]
        for v in one(objects, "StatefulSet", "crossover-postgres")["spec"]["template"]["spec"]["containers"][0]["env"]
        if v["name"] == "POSTGRES_DB"
    ]
    user, password = (secret_values[("crossover-postgres", k)] for k in ("username", "password"))
    host = f"{postgres['metadata']['name']}:{postgres['spec']['ports'][0]['port']}"
    assert env["MLFLOW_BACKEND_STORE_URI"] == f"{POSTGRES}{user}:{password}@{host}/{database}"
    # The artifacts destination defaults to the PVC mounted in the container.
    mounts = {m["name"]: m["mountPath"] for m in server["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    (pvc_mount,) = [path for name, path in mounts.items() if "persistentVolumeClaim" in volumes[name]]
    assert env["MLFLOW_ARTIFACTS_DESTINATION"] == pvc_mount
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == auth_config_path, "the server must read the file the init container writes"
    artifacts = tmp_path / "artifacts"
    env |= {
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "MLFLOW_ARTIFACTS_DESTINATION": str(artifacts),
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini),
    }
    port = _free_port()
    args = _substitute([_expand(a, env) for a in server["args"]], {"--host": "127.0.0.1", "--port": str(port)})
    assert "$(" not in " ".join(args), args
    (program,) = server["command"]
    command = [str(Path(sys.executable).with_name(program)), *args]

    base_env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, env=base_env | env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP_LIMIT_S
        while _request(f"{url}/health") != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not come up (exit {proc.poll()}):\n{log.read_text()[-4000:]}")
            time.sleep(0.25)
        yield {
            "url": url,
            "admin": (env["MLFLOW_AUTH_ADMIN_USERNAME"], env["MLFLOW_AUTH_ADMIN_PASSWORD"]),
            "artifacts": artifacts,
            "args": args,
        }
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_manifest_server_logs_a_run_with_credentials_and_refuses_anonymous_requests(mlflow_server, monkeypatch):
    url, (user, password) = mlflow_server["url"], mlflow_server["admin"]
    args = mlflow_server["args"]
    assert args[args.index("--app-name") + 1] == "basic-auth"

    search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _request(search) == 401
    assert _request(search, (user, password + "x")) == 401
    assert _request(search, (user, password)) == 200

    import mlflow
    from mlflow.exceptions import MlflowException

    from crossover.platform.tracking import TrialRun, start_study
    from crossover.specs import parse_study
    from crossover.tracking.store import TrackingError, check_reachable

    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    # The platform's own path: the start-up check, the study's parent run, a trial's child run.
    check_reachable(url, write=True)
    spec = parse_study(
        {
            "name": "k8s-manifest-check",
            "objective": "ar",
            "data": {"unique_tokens": "50k"},
            "train": {"total_tokens": "1M"},
        }
    )
    parent = start_study(spec, "name: k8s-manifest-check\n", url)
    trial_run = TrialRun(spec.expand()[0], url, parent)
    trial_run.log({"train/loss": 3.25}, 4096)
    trial_run.finish()
    client = mlflow.MlflowClient(tracking_uri=url)
    logged = client.get_run(trial_run.run_id)
    assert logged.data.params["objective"] == "ar" and logged.data.params["data.unique_tokens"] == "50000"
    assert logged.data.metrics == {"train/loss": 3.25}
    assert logged.info.status == "FINISHED"
    # Artifacts went through the server's proxy to --artifacts-destination.
    assert [p.name for p in mlflow_server["artifacts"].rglob("study.yaml")] == ["study.yaml"]

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-password-123")
    with pytest.raises(TrackingError, match="refused the credentials"):
        check_reachable(url, write=True)
    with pytest.raises(MlflowException, match="401|Unauthorized|credentials"):
        mlflow.MlflowClient(tracking_uri=url).get_run(trial_run.run_id)
