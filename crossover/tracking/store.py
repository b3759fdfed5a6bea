"""The one way to the tracking store: which store (`resolve_tracking_uri`), whether it can be used
(`check_reachable`), the client (`mlflow_client`) and the searches that read every page (`search_all_runs`).
Both the platform's writer and the analysis' reader go through here; mlflow is imported only inside functions."""

from __future__ import annotations

import fcntl
import os
import urllib.parse
from pathlib import Path
from typing import Any

from crossover.errors import UserError
from crossover.tracking.names import DEFAULT_TRACKING_URI

PAGE = 5000  # runs per search page (an MLflow server's own cap is higher; SQLite has none)


class TrackingError(UserError):
    """The tracking store cannot be used (a user error: wrong URI, server down, bad credentials)."""

    title = "tracking store unusable"  # how the command line heads its message


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The flag, else MLFLOW_TRACKING_URI, else the embedded SQLite store `./mlflow.db` (made absolute, because Ray
    runs trials in other working directories)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    return uri


def redact(uri: str) -> str:
    """The URI without a password, for messages and reports."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.password:
        netloc = f"{parsed.username}:***@{parsed.hostname}" + (f":{parsed.port}" if parsed.port else "")
        return urllib.parse.urlunsplit(parsed._replace(netloc=netloc))
    return uri


def check_reachable(uri: str, *, write: bool, timeout_s: float = 5.0) -> None:
    """Fail fast, with one clear message, before MLflow would retry for minutes or create an empty database: a
    server must answer and take the credentials (MLFLOW_TRACKING_USERNAME / _PASSWORD); a SQLite store must exist to
    be read (`write=False`), its folder be writable to be written; a file store must exist."""
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    if scheme in ("http", "https"):
        _check_server(uri, timeout_s)
    elif scheme.startswith("sqlite"):
        path = uri.split(":///", 1)[1].split("?", 1)[0] if ":///" in uri else ""
        if not path or path == ":memory:":
            return
        if write:
            folder = Path(path).parent
            if not folder.is_dir() or not os.access(folder, os.W_OK):
                raise TrackingError(
                    f"cannot write the SQLite tracking store in {folder}; choose a writable --tracking-uri"
                )
        elif not Path(path).is_file():
            raise TrackingError(
                f"no MLflow store at {path} (tracking URI {uri}); run a study first, or point "
                "--tracking-uri or MLFLOW_TRACKING_URI at the store that holds it"
            )
    elif scheme in ("", "file") and not write:
        path = urllib.parse.urlsplit(uri).path if scheme == "file" else uri
        if not Path(path).is_dir():
            raise TrackingError(f"no MLflow file store at {path}; pass --tracking-uri with the store's location")


def _check_server(uri: str, timeout_s: float) -> None:
    import requests  # lazy: not in the planner install (plan imports this module)

    auth = None
    if os.environ.get("MLFLOW_TRACKING_USERNAME"):
        auth = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search"
    try:
        response = requests.get(url, params={"max_results": 1}, auth=auth, timeout=timeout_s)
    except requests.RequestException as exc:
        raise TrackingError(
            f"cannot reach the MLflow tracking server at {redact(uri)} ({type(exc).__name__}): it is unreachable; "
            f"start it (or the port-forward to the cluster's server), fix --tracking-uri or MLFLOW_TRACKING_URI, "
            f"or unset it to use the local SQLite store"
        ) from None
    if response.status_code in (401, 403):
        raise TrackingError(
            f"MLflow tracking server {redact(uri)} refused the credentials (HTTP {response.status_code}); "
            f"set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    if response.status_code >= 400:
        raise TrackingError(
            f"MLflow tracking server {redact(uri)} answered HTTP {response.status_code}: {response.text[:200]}"
        )


def mlflow_client(uri: str):
    """An MlflowClient on `uri` whose store is ready to use.

    MLflow creates a new SQLite store's tables on first open without a lock, and two processes opening the same new
    store at once (`crossover status` in a second terminal while `run` starts) leave it half-migrated for good. So a
    SQLite store is opened holding a lock on the folder that holds it; other stores need none.
    """
    from mlflow.tracking import MlflowClient  # lazy: mlflow is slow and not in the planner install

    if not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri)
    folder = os.open(Path(uri.removeprefix("sqlite:///")).parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)  # released when the descriptor closes
        return MlflowClient(tracking_uri=uri)  # the client opens its store (creating the tables) here
    finally:
        os.close(folder)


def find_experiment_id(client: Any, name: str) -> str | None:
    """The id of the active experiment named `name` (a study's), or None."""
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment is not None and experiment.lifecycle_stage == "active" else None


def search_all_runs(
    client: Any, experiment_ids: list[str], filter_string: str = "", order_by: list[str] | None = None
) -> list:
    """Every run matching the search, page after page (one search returns at most a page)."""
    runs: list = []
    token = None
    while True:
        page = client.search_runs(
            experiment_ids, filter_string=filter_string, order_by=order_by, max_results=PAGE, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs
