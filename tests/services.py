"""Real services for integration tests, on loopback only, always stopped: an MLflow server, a PostgreSQL server (its
backend store), an S3 server (moto), a Ray head and more Ray nodes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _up(url: str, any_answer: bool = False) -> bool:
    """The URL answers 200 (or, with `any_answer`, answers at all: Ray's dashboard wants its auth token)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except urllib.error.HTTPError:
        return any_answer
    except OSError:
        return False


def stop_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def mlflow_server(
    folder: Path, port: int | None = None, backend_uri: str | None = None, artifacts: str | None = None
) -> Iterator[str]:
    """`mlflow server` in its own process group with a SQLite backend (in `folder`, or `backend_uri`), serving the
    artifacts it keeps in `folder`/artifacts or `artifacts` (an s3:// URI: the server reads the `s3_env` variables
    from this process's environment, as the `s3` fixture sets them); yields its URL."""
    port = port or free_port()
    folder.mkdir(parents=True, exist_ok=True)
    backend_uri = backend_uri or f"sqlite:///{folder / 'mlflow.db'}"
    command = [
        str(BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        artifacts or str(folder / "artifacts"),
        "--workers",
        "1",
    ]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(folder / f"server-{port}.log", "ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while not _up(f"{url}/health"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"mlflow server did not start: {(folder / f'server-{port}.log').read_text()[-3000:]}"
                )
            time.sleep(0.3)
        yield url
    finally:
        stop_group(proc)


# MLflow's PostgreSQL URIs name their driver, psycopg2 (the dev extra's and the MLflow image's): SQLAlchemy 2.1 reads a
# bare postgresql:// as psycopg 3, which neither installs, and the server would not start.
POSTGRES = "postgresql+psycopg2://"


def _postgres_bin() -> Path:
    """The folder of Debian's PostgreSQL server binaries (initdb, pg_ctl), the newest if several; skips the test
    without them, or fails it where CROSSOVER_REQUIRE_POSTGRES=1 (CI installs them)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    reason = "the PostgreSQL backend test needs Debian's `postgresql` package (apt-get install -y postgresql)"
    if os.environ.get("CROSSOVER_REQUIRE_POSTGRES") == "1":
        pytest.fail(reason + "; CROSSOVER_REQUIRE_POSTGRES=1 requires it")
    pytest.skip(reason)


@contextlib.contextmanager
def postgres_server(port: int | None = None) -> Iterator[str]:
    """A PostgreSQL server of its own on loopback, its data and unix socket in a new folder under /tmp (removed after);
    yields its URI (postgresql+psycopg2://postgres@127.0.0.1:PORT/postgres, no password: trust on loopback). PostgreSQL refuses
    to run as root, so as root (CI) it runs as the `postgres` user Debian's package creates, owning that folder: the
    folder sits in /tmp, not under pytest's tmp_path, which that user cannot enter. Always stopped at once
    (`pg_ctl stop -m immediate`: the data is thrown away)."""
    bin_dir, port = _postgres_bin(), port or free_port()
    folder = Path(tempfile.mkdtemp(prefix="crossover-pg-", dir="/tmp"))
    as_owner: list[str] = []
    if os.geteuid() == 0:
        import pwd

        owner = pwd.getpwnam("postgres")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        as_owner = ["runuser", "-u", "postgres", "--"]
    data, log = folder / "data", folder / "server.log"

    def pg(*command: str) -> None:
        done = subprocess.run([*as_owner, *command], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            server_log = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{command[0]} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}{server_log}")

    try:
        pg(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off"
        pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "120", "start")
        yield f"{POSTGRES}postgres@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [*as_owner, str(bin_dir / "pg_ctl"), "-D", str(data), "stop", "-m", "immediate", "-w"],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(folder, ignore_errors=True)


S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def s3_server(folder: Path, port: int | None = None) -> Iterator[str]:
    """moto's standalone S3 server (a real HTTP S3 API, state in memory) in its own process group; yields its endpoint
    URL. Clients find it through `s3_env(endpoint)`."""
    port = port or free_port()
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / f"moto-{port}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **S3_KEYS},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _up(f"{url}/moto-api/"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not start: {log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        stop_group(proc)


def s3_env(endpoint: str) -> dict[str, str]:
    """The environment that points boto3, pyarrow, MLflow and Ray at an S3 endpoint on loopback."""
    return {
        **S3_KEYS,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ENDPOINT_URL_S3": endpoint,
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
    }


def ray_temp_dir() -> str:
    """A short private temp dir for a Ray instance (unix socket paths must stay under 108 characters)."""
    return tempfile.mkdtemp(prefix="rt", dir="/tmp")


def kill_ray_processes(temp_dir: str, gcs_port: int | None = None) -> None:
    """Stop every process of one Ray instance: those naming its temp dir or its GCS address on their command line,
    and their children (agents, workers); nothing else."""
    import psutil

    doomed: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            cmdline = proc.info["cmdline"] or []
            mine = any(temp_dir in part or (gcs_port and part.endswith(f":{gcs_port}")) for part in cmdline)
            if proc.pid != os.getpid() and mine:
                doomed[proc.pid] = proc
                doomed.update((child.pid, child) for child in proc.children(recursive=True))
    for proc in doomed.values():
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(list(doomed.values()), timeout=10)


def kill_processes_with_env(name: str, value: str) -> None:
    """Kill every process whose environment has `name`=`value`. With a value unique to one test (its own Ray auth
    token file), that is every process the test started and every process those started (Ray's, however renamed),
    even the ones a helper left when it failed half-way through starting them."""
    import psutil

    doomed = []
    for proc in psutil.process_iter(["environ"]):
        with contextlib.suppress(psutil.Error):
            if proc.pid != os.getpid() and (proc.info["environ"] or {}).get(name) == value:
                doomed.append(proc)
    for proc in doomed:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(doomed, timeout=10)


def new_auth_token(folder: Path) -> Path:
    """A fresh Ray auth token in `folder`/auth_token, readable by its owner only: 256 random bits in hex, as
    `ray get-auth-token --generate` makes (that command writes ~/.ray/auth_token, which tests must not touch)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "auth_token"
    path.touch(mode=0o600)
    path.write_text(secrets.token_hex(32))
    return path


def with_token_auth(env: dict[str, str], token: Path) -> dict[str, str]:
    """`env` with Ray's token auth on and the token read from the file `token`: RAY_AUTH_MODE=token and
    RAY_AUTH_TOKEN_PATH. Ray takes RAY_AUTH_TOKEN first, so an inherited one is dropped; with RAY_AUTH_TOKEN_PATH set,
    ~/.ray/auth_token is never read (an unreadable path is an error, not a fall-back). Every Ray process started with
    this environment (the head, its job drivers and their workers) and every client run with it uses this token."""
    env = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
    return {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


def ray_job_submit(
    dashboard: str, args: list[str], env: dict[str, str], timeout: float = 1200, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """`ray job submit --address DASHBOARD ARGS...` with `env` (in `cwd`), tried again while the head's job agent is
    starting."""
    command = [str(BIN / "ray"), "job", "submit", "--address", dashboard, *args]
    for _ in range(30):  # the head's job agent starts a few seconds after the dashboard answers
        job = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        if "No available agent" not in job.stderr:
            break
        time.sleep(3)
    return job


def ray_start(options: Callable[[str], list[str]], env: dict[str, str], gcs_port: int | None = None) -> str:
    """`ray start OPTIONS` with `options(temp_dir)` for a fresh temp dir (returned), tried a second time if it fails.

    Why: on a busy 2-core machine a node can fail to start. Its raylet waits a fixed 15 s for the dashboard agent to
    write its HTTP port to a file (NodeManager::WaitForDashboardAgentPorts; Ray passes the raylet no
    --dashboard-agent-listen-port, and RAY_agent_register_timeout_ms does not lengthen that wait) and aborts when the
    agent, still importing its modules, is later (raylet.err: "Timed out waiting for file
    .../dashboard_agent_listen_port_..."). `ray start` then exits 1 after its own fixed 30 s wait for the node to
    register (ray/_private/node.py: "The current node timed out during startup"). A failed start's processes are
    killed by its temp dir (and `gcs_port`, for a head), never with `ray stop`, which would stop the cluster's head
    too; the second try gets a new temp dir. A second failure is a real one, reported with both tries' output."""
    failures = []
    for _ in range(2):
        temp_dir = ray_temp_dir()
        command = [str(BIN / "ray"), "start", *options(temp_dir)]
        try:
            started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
        except subprocess.TimeoutExpired:
            kill_ray_processes(temp_dir, gcs_port)
            raise
        if started.returncode == 0:
            if failures:
                warnings.warn(f"`ray start` succeeded only on its second try; the first:\n{failures[0]}", stacklevel=2)
            return temp_dir
        kill_ray_processes(temp_dir, gcs_port)
        failures.append(f"exit {started.returncode}, logs in {temp_dir}/session_latest/logs:\n{started.stderr[-2000:]}")
    raise RuntimeError(f"`ray start` failed twice: {command}\n" + "\n".join(failures))


@contextlib.contextmanager
def ray_head(
    env: dict[str, str],
    num_cpus: int = 2,
    auth_token: Path | None = None,
    more_options: tuple[str, ...] = (),
    port: int | None = None,
) -> Iterator[tuple[str, str]]:
    """`ray start --head` on loopback (`ray_start`); yields (cluster address, dashboard URL for `ray job submit`). With
    `auth_token` (a token file, `new_auth_token`), the cluster requires that token (`with_token_auth`)."""
    if auth_token is not None:
        env = with_token_auth(env, auth_token)
    port, dashboard = port or free_port(), free_port()

    def options(temp_dir: str) -> list[str]:  # the agents' ports new at each try
        return [
            "--head",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(port),
            "--num-cpus",
            str(num_cpus),
            "--num-gpus",
            "0",
            "--include-dashboard",
            "true",
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(dashboard),
            "--temp-dir",
            temp_dir,
            "--disable-usage-stats",
            # free ports, not Ray's fixed defaults: a stale agent elsewhere on the machine must not block this one
            "--dashboard-agent-listen-port",
            str(free_port()),
            "--dashboard-agent-grpc-port",
            str(free_port()),
            "--runtime-env-agent-port",
            str(free_port()),
            "--metrics-export-port",
            str(free_port()),
            "--ray-client-server-port",
            str(free_port()),
            *more_options,
        ]

    temp_dir = ray_start(options, env, gcs_port=port)
    try:
        url = f"http://127.0.0.1:{dashboard}"
        deadline = time.monotonic() + 60
        while not _up(f"{url}/api/version", any_answer=True):
            if time.monotonic() > deadline:
                raise RuntimeError("the Ray dashboard did not come up")
            time.sleep(0.5)
        yield f"127.0.0.1:{port}", url
    finally:
        kill_ray_processes(temp_dir, port)


@contextlib.contextmanager
def ray_autoscaling_head(
    env: dict[str, str], folder: Path, node_cpus: int = 2, max_nodes: int = 3, idle_timeout_s: float = 10
) -> Iterator[tuple[str, str]]:
    """A Ray cluster that starts with a head and no worker nodes, and grows as a KubeRay cluster does: Ray's own
    autoscaler (v1, the monitor `ray start --head --autoscaling-config` runs) with its fake multi-node provider, which
    starts a real raylet on this machine for each node it launches. The head advertises no CPUs (as the KubeRay
    head's num-cpus 0); the one node type `cpu` has `node_cpus` CPUs, 0 to `max_nodes` of them, each stopped after
    `idle_timeout_s` idle. Yields (cluster address, dashboard URL); `env` must carry the cluster's auth settings
    (`with_token_auth`): its processes (the launched nodes too) inherit it, so `kill_processes_with_env` stops them.
    Not `ray.cluster_utils.AutoscalingCluster`: it reads an example config the wheel lacks, and its shutdown runs
    `ray stop --force`, which would stop every other Ray instance on the machine."""
    port = free_port()  # the GCS port: the config names it before the head starts
    config = {
        "cluster_name": "fake",
        "max_workers": max_nodes,
        "upscaling_speed": float(max_nodes),
        "idle_timeout_minutes": idle_timeout_s / 60,
        "provider": {
            "type": "fake_multinode",
            "gcs_address": f"127.0.0.1:{port}",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "available_node_types": {
            "ray.head.default": {"resources": {}, "node_config": {}, "max_workers": 0},
            "cpu": {"resources": {"CPU": node_cpus}, "node_config": {}, "min_workers": 0, "max_workers": max_nodes},
        },
        "head_node_type": "ray.head.default",
        **{key: [] for key in ("cluster_synced_files", "initialization_commands", "setup_commands")},
        **{key: [] for key in ("head_setup_commands", "worker_setup_commands")},
        **{key: [] for key in ("head_start_ray_commands", "worker_start_ray_commands")},
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
        "auth": {},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "autoscaler.yaml").write_text(json.dumps(config))  # JSON is YAML

    config_option = f"--autoscaling-config={folder / 'autoscaler.yaml'}"
    with ray_head({**env, "RAY_FAKE_CLUSTER": "1"}, num_cpus=0, more_options=(config_option,), port=port) as head:
        yield head


def ray_nodes(dashboard: str, env: dict[str, str], state: str = "ALIVE") -> list[dict]:
    """The nodes Ray's state API lists in `state` (ALIVE, DEAD), each a dict with node_id, is_head_node and more;
    none if the API does not answer."""
    listed = subprocess.run(
        [str(BIN / "ray"), "list", "nodes", "--address", dashboard, "--format", "json", "--filter", f"state={state}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return json.loads(listed.stdout) if listed.returncode == 0 else []


def ray_actors(dashboard: str, env: dict[str, str]) -> list[dict]:
    """Every actor Ray's state API lists (alive or ended), each a dict with actor_id, class_name, node_id and more."""
    listed = subprocess.run(
        [str(BIN / "ray"), "list", "actors", "--address", dashboard, "--format", "json", "--detail", "--limit", "1000"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    return json.loads(listed.stdout)


@contextlib.contextmanager
def ray_worker_node(address: str, env: dict[str, str], num_cpus: int = 1) -> Iterator[str]:
    """`ray start --address ADDRESS` on loopback (`ray_start`): one more node of a `ray_head` cluster on this machine,
    with its own temp dir (yielded: it names the node's processes) and free ports; every process of the node is killed
    on exit. `env` carries the cluster's auth settings (`with_token_auth`) and what the node's workers need."""

    def options(temp_dir: str) -> list[str]:  # new free ports at each try
        return [
            "--address",
            address,
            "--node-ip-address",
            "127.0.0.1",
            "--num-cpus",
            str(num_cpus),
            "--num-gpus",
            "0",
            "--temp-dir",
            temp_dir,
            "--disable-usage-stats",
            # free ports, as `ray_head`'s; workers on OS-chosen ports, as ray.cluster_utils does for nodes on one host
            "--dashboard-agent-listen-port",
            str(free_port()),
            "--dashboard-agent-grpc-port",
            str(free_port()),
            "--runtime-env-agent-port",
            str(free_port()),
            "--metrics-export-port",
            str(free_port()),
            "--min-worker-port",
            "0",
            "--max-worker-port",
            "0",
        ]

    temp_dir = ray_start(options, env)
    try:
        yield temp_dir
    finally:
        kill_ray_processes(temp_dir)


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    reason = "headless report check needs Debian's `chromium` package (apt-get install -y chromium)"
    if os.environ.get("CROSSOVER_REQUIRE_CHROMIUM") == "1":
        pytest.fail(reason + "; CROSSOVER_REQUIRE_CHROMIUM=1 requires it")
    pytest.skip(reason)


def assert_report_renders(report: Path, tmp_path: Path, min_images: int) -> Path:
    """Open an analysis report in headless Chromium: at least `min_images` images, every one loaded, every table
    within the page at 1280 px (none cut off or scrolling sideways), the page not blank. Returns the screenshot."""
    chromium = _chromium()
    page = report.resolve().as_uri()

    def run(*args: str) -> subprocess.CompletedProcess:
        profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
        command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    dom = run("--window-size=1280,2400", "--virtual-time-budget=10000", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    marker = re.search(r'data-images="(\d+)/(\d+)"', dom.stdout)
    assert marker, "the report's image check did not run: " + dom.stdout[:500]
    loaded, total = map(int, marker.groups())
    assert total >= min_images and loaded == total, f"{loaded} of {total} images loaded"
    wide = re.search(r'data-wide-tables="([^"]*)"', dom.stdout)  # tables wider than their box, " page" if it is
    assert wide and wide.group(1) == "0", f"tables wider than the page at 1280 px: {wide and wide.group(1)}"
    assert "Some figures failed to load" in dom.stdout  # the warning exists ...
    assert 'id="image-warning" style="display: block' not in dom.stdout  # ... and stays hidden

    shot = tmp_path / "report.png"
    screenshot = run("--window-size=1280,2400", "--hide-scrollbars", f"--screenshot={shot}")
    assert screenshot.returncode == 0 and shot.is_file(), screenshot.stderr[-2000:]
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[0] >= 2000 and pixels.shape[1] >= 1200
    assert pixels[..., :3].std() > 0.05  # not a blank page: text and figures rendered
    return shot
