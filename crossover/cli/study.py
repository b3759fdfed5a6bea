"""`crossover run / stop / status / ui`: studies on Ray Tune, tracked in MLflow (logic in crossover.platform)."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from crossover.cli.app import STOPPED, app, err, out
from crossover.cli.common import (
    check_data,
    library_notices_to,
    load_checked,
    load_spec,
    prepare_data,
    print_link,
    print_wall_time,
    runtime_line,
    text_table,
    warn_runtime,
)
from crossover.errors import UserError
from crossover.evals.registry import check_spec_tasks
from crossover.platform.rates import eta_seconds
from crossover.specs import format_seconds, format_tokens
from crossover.specs.search import trials_phrase
from crossover.tracking.names import PROGRESS_METRICS, training_view_url
from crossover.tracking.store import check_reachable, mlflow_client, resolve_tracking_uri

if TYPE_CHECKING:  # the platform (Ray, MLflow) is imported only by the commands that run it
    from crossover.platform.driver import RunOptions, StudyOutcome


@app.command()
def run(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="Study spec YAML file.")],
    address: Annotated[
        str | None, typer.Option("--address", help="Ray cluster address (else RAY_ADDRESS, else a local instance).")
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option("--tracking-uri", help="MLflow tracking URI (else MLFLOW_TRACKING_URI, else ./mlflow.db)."),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue a stopped study, refusing if there is none to continue (without it, `run` continues one "
            "that exists and starts one otherwise).",
        ),
    ] = False,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Start the study over: new MLflow parent run, old Tune state removed.")
    ] = False,
    max_concurrent: Annotated[
        int | None,
        typer.Option("--max-concurrent", min=1, help="Trials at once (default: the spec's, else fill the cluster)."),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage", help="Ray storage path or URI (default: the spec's resources.storage, else ~/ray_results)."
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", help="Progress lines (one per trial per 30 s) instead of a live table.")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Show Ray's, MLflow's and DeepSpeed's own notices here too.")
    ] = False,
) -> None:
    """Run every trial of a study on Ray Tune, recording it in MLflow. Run again, it continues a study that was
    interrupted, and grows one whose spec changed: finished trials are kept, added eval tasks are scored on their
    checkpoints, longer trials continue shorter ones, and only what is new trains."""
    # lazy: the platform (MLflow, Ray Tune at run time) is for the commands that run a study, not --help or validate
    from crossover.platform.driver import RunOptions, check_start, driver_folder, started_or_removed, storage_path

    spec = load_checked(spec_path)
    options = RunOptions(
        spec=spec,
        spec_text=spec_path.read_text(),
        tracking_uri=resolve_tracking_uri(tracking_uri),
        storage=storage_path(spec, storage),
        address=address or os.environ.get("RAY_ADDRESS"),
        fresh=fresh,
        max_concurrent=max_concurrent,
    )
    check_start(spec, str(spec_path), options.storage, resume=resume, fresh=fresh)
    check_spec_tasks(spec)  # what this installation cannot run (lm-eval without its extra, no sandbox)
    log_dir = driver_folder(options.storage)
    with started_or_removed(log_dir):  # an unreachable store leaves no log folder behind
        # Ray Data (which builds a shared token store) configures its own loggers when imported: first, into the log
        libraries = ("mlflow", "ray", "ray.data") if spec.data.store else ("mlflow", "ray")
        library_notices_to(log_dir / f"{spec.name}.log", verbose, libraries)
        check_reachable(options.tracking_uri, write=True)
    # once, before the trials, so they never race to build the token store: on the driver, or with data.store set as a
    # Ray Data job on the cluster the study runs on (the trials then fetch the shards their budgets need)
    prepare_data(spec, address=options.address)
    check_data(spec)  # exact now that the token store exists

    from crossover.platform.driver import StudyEvents, clean_up_after_a_crash, run_study  # lazy: as above
    from crossover.platform.grow import finished_in
    from crossover.platform.progress import StudyProgress

    uri = options.tracking_uri
    out.print(f"study [bold]{spec.name}[/]: {trials_phrase(spec)}; MLflow {uri}", highlight=False)
    out.print(f"[dim]{runtime_line(spec)}[/]", highlight=False)
    warn_runtime(spec)
    if not options.address:  # on a cluster the trials do not run on this machine
        if stopped := clean_up_after_a_crash(log_dir, spec.name):
            out.print(f"stopped {stopped} Ray processes left running by an earlier driver of this study")
        # what is left: the trials an earlier run finished are kept (a store not made yet holds none)
        finished = None if fresh else finished_in(spec, uri)
        print_wall_time(spec, max_concurrent, finished if finished and not finished.unread else None)
    # a search's samples are added as Tune asks for them
    progress = StudyProgress(spec.name, [] if spec.search else spec.expand(), out, quiet=quiet or not out.is_terminal)

    def on_growth(growth) -> None:  # a study that ran before: what it keeps and what runs now
        if growth.kept or growth.out_of_spec or growth.notes:
            out.print(growth.summary(), highlight=False)
        progress.kept([t.name for t in growth.kept])

    def on_anneal(plan) -> None:  # the second phase: AR annealed to its validation-chosen stop
        out.print(plan.summary(), highlight=False)
        progress.add([a.trial for a in plan.to_run])

    def on_search(line: str) -> None:  # a search study: its Optuna studies, then its winners' confirmation
        out.print(line, highlight=False)

    try:
        with progress:
            outcome = run_study(options, StudyEvents([progress.callback()], on_growth, on_anneal, on_search))
    except KeyboardInterrupt:  # before the trials started (Ray starting); once they run, Tune stops them
        err.print(f"study stopped before its trials started: `crossover run {spec_path}` starts it again")
        raise typer.Exit(STOPPED) from None
    _report(outcome, spec_path, options)


def _report(outcome: StudyOutcome, spec_path: Path, options: RunOptions) -> None:
    """What the study's run ended with, its exit status, and the verdict as it stands."""
    stopped = f", {len(outcome.stopped)} stopped" if outcome.stopped else ""
    out.print(
        f"{len(outcome.finished)} trials finished, {len(outcome.failed)} failed{stopped}; MLflow: "
        f"{options.tracking_uri} (parent run {outcome.parent_run_id}); Ray: {outcome.experiment_path}",
        highlight=False,
    )
    for name, error in outcome.failed.items():
        err.print(f"[red]{name}[/]: {error}", highlight=False)
    if outcome.stopped:
        out.print(f"study stopped: `crossover run {spec_path}` continues it from the trials' last checkpoints")
        raise typer.Exit(STOPPED)
    _provisional_verdict(options.spec.name, options.tracking_uri)
    if outcome.failed:
        raise typer.Exit(1)


@app.command()
def stop(
    spec_path: Annotated[Path, typer.Argument(help="Study spec YAML (names the study and its storage).")],
    storage: Annotated[
        str | None, typer.Option("--storage", help="Ray storage path, if `crossover run` was given one.")
    ] = None,
) -> None:
    """Stop a study running on this machine (as Ctrl-C would: it resumes later with `crossover run`), and the
    local Ray processes a killed driver of it left behind."""
    # lazy: the platform is for the commands that run or stop a study, not --help or validate
    from crossover.platform.driver import driver_folder, storage_path
    from crossover.platform.local_ray import clean_up, state_file, stop_driver

    spec = load_spec(spec_path)
    record = state_file(driver_folder(storage_path(spec, storage)), spec.name)
    stopped_driver = stop_driver(record)
    leftovers = clean_up(record)
    driver_note = "stopped its driver" if stopped_driver else "no driver running"
    out.print(f"study {spec.name}: {driver_note}; {leftovers} leftover Ray processes stopped", highlight=False)


def _provisional_verdict(study: str, uri: str) -> None:
    """The verdict per cell as the study stands, printed and put on its parent run (`crossover analyze` replaces it
    with the full analysis and report), and the link to the study in the MLflow UI."""
    # lazy: the analysis (pandas, scipy, MLflow) runs only when a study ends
    from crossover.analysis import AnalysisError, analyze_study, log_verdicts, read_study, verdicts

    try:
        data = read_study(study, uri, items=False)
        lines = verdicts(analyze_study(data))  # no per-item results read: no intervals, seconds at most
        log_verdicts(data, lines)
    except AnalysisError as exc:
        err.print(f"[yellow]no verdict yet:[/] {exc}", highlight=False)
        return
    out.print("[bold]verdict[/] (provisional: `crossover analyze` adds intervals, efficiency and the report)")
    for verdict in lines[:50]:
        print(verdict.line)
    print_link(uri, data.experiment_id)


@app.command()
def status(
    study: Annotated[str, typer.Argument(help="Study name (the MLflow experiment).")],
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI.")] = None,
) -> None:
    """Per-trial progress of a study, read from MLflow."""
    # lazy: the analysis and the MLflow records are for this command, not --help or validate
    from crossover.analysis.crossing import STATUSES
    from crossover.platform.tracking import study_states, study_status

    uri = resolve_tracking_uri(tracking_uri)
    check_reachable(uri, write=False)
    rows = study_status(study, uri)

    def eta(r: dict) -> str:  # the rate: over the trial's last minute (crossover.platform.rates), as `run` shows it
        seconds = eta_seconds(r.get("total_tokens"), r.get("tokens", 0), r.get("rate"))
        return format_seconds(seconds) if r["status"] == "RUNNING" and seconds is not None else ""

    headers = ["trial", "status", "tokens", "epoch", *PROGRESS_METRICS, "tok/s", "ETA"]
    table = [
        [
            r["name"],
            r["status"],
            format_tokens(r.get("tokens", 0)),
            f"{r.get('epoch', 0):.2f}",
            *[f"{r[m]:.4f}" if m in r else "" for m in headers[4:6]],
            f"{r['rate']:,.0f}" if r.get("rate") else "",
            eta(r),
        ]
        for r in rows
    ]
    out.print(f"[bold]study {study}[/]: {len(rows)} trials in {uri}", highlight=False)
    print(text_table(headers, table))
    if states := study_states(study, uri):
        found = Counter(states.values())
        counts = ", ".join(f"{s.replace('_', ' ')} {found[s]}" for s in STATUSES if s in found)
        out.print(f"[bold]verdict[/] of the last analysis: {counts} of {len(states)} cells", highlight=False)
        print(text_table(["cell", "state"], [[cell, state.replace("_", " ")] for cell, state in states.items()]))


@app.command()
def ui(
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI.")] = None,
    port: Annotated[int, typer.Option("--port", help="Port of the MLflow UI.")] = 5000,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
) -> None:
    """Start the MLflow UI on the study store (the local SQLite store by default); its links are printed once it
    answers."""
    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        _print_studies(_study_links(uri, uri))
        out.print(f"the tracking server already serves its UI: open {uri}")
        return
    server = f"http://{host}:{port}"
    _check_port_free(host, port)  # else the link would open whatever answers there now
    links = _study_links(uri, server)  # read before the server opens the store: never two first opens at once
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    out.print(f"[dim]starting the MLflow UI for {uri} on {server}...[/]", highlight=False)
    server_process = subprocess.Popen(command)  # its own messages go to this terminal, as `mlflow ui`'s would
    try:
        problem = wait_until_answers(f"{_reachable(host, port)}/health", UI_START_LIMIT_S, server_process.poll)
        if problem is not None:
            _stop(server_process, signal.SIGTERM)
            err.print(
                f"[red]the MLflow UI did not answer on {server}:[/] {escape(problem)}; its own messages above say why",
                highlight=False,
            )
            raise typer.Exit(1)
        _print_studies(links)
        out.print(f"MLflow UI for {uri}: open {server} (Ctrl-C stops it)", highlight=False)
        if status := server_process.wait():
            raise typer.Exit(status if status > 0 else 1)
    except KeyboardInterrupt:  # the terminal's Ctrl-C reaches the server too, a signal to this process alone not
        _stop(server_process, signal.SIGINT)


class UiError(UserError):
    title = "cannot start the MLflow UI"


def _check_port_free(host: str, port: int) -> None:
    """Refuse a port something already listens on (an earlier `crossover ui`, most often), naming the fix."""

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: a closed one's port is free
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UiError(
                    f"port {port} on {host} is taken: another `crossover ui` or server listens there; "
                    "open it, stop it, or choose another port with --port"
                ) from None
            raise UiError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): check --host and --port") from None


UI_START_LIMIT_S = 120.0  # a busy laptop's `mlflow ui` answers in 5-30 s (a new store's tables are made first)


def wait_until_answers(url: str, limit_s: float, exited=lambda: None) -> str | None:
    """Poll `url` until the server behind it answers (any HTTP status), `exited()` gives its process's exit status,
    or `limit_s` pass: None once it answered, else why it did not (its last connection error named)."""
    import urllib.error  # lazy: urllib.request pulls in http and ssl (~20 ms), for `crossover ui` only
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a loopback address: never a proxy
    deadline, cause = time.monotonic() + limit_s, "no answer"
    while True:
        try:
            with opener.open(url, timeout=2):
                return None
        except urllib.error.HTTPError:
            return None  # an HTTP answer, whatever its status: the server is up
        except OSError as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            cause = f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) else str(reason)
        if (status := exited()) is not None:
            return f"it exited with status {status} before answering (last: {cause})"
        if time.monotonic() >= deadline:
            return f"no answer within {limit_s:g} s (last: {cause})"
        time.sleep(0.25)


def _reachable(host: str, port: int) -> str:
    """Where this machine reaches a server listening on `host`: an any-address through loopback."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _stop(process, signum: int) -> None:
    """Signal a server and the processes it started (`mlflow ui` runs its web server as a child) and wait for them
    to exit; SIGKILL for any left after 15 s."""
    import psutil  # lazy: ~30 ms, for `crossover ui` only

    try:
        tree = [psutil.Process(process.pid)]
        tree += tree[0].children(recursive=True)
    except psutil.Error:  # it exited already
        tree = []
    for member in tree:
        with contextlib.suppress(psutil.Error):
            member.send_signal(signum)
    for member in psutil.wait_procs(tree, timeout=15)[1]:
        with contextlib.suppress(psutil.Error):
            member.kill()
    process.wait()


def _study_links(uri: str, server: str) -> list[str]:
    """The training-view link of every study in the store (none when it cannot be read: the UI will say why)."""

    try:
        experiments = mlflow_client(uri).search_experiments(max_results=200)
    except Exception:  # noqa: BLE001 - an empty or unreachable store: the UI itself reports it
        return []
    return [f"{e.name}: {training_view_url(server, e.experiment_id)}" for e in experiments if e.name != "Default"]


def _print_studies(links: list[str]) -> None:
    for link in links:
        print(link, flush=True)  # now, also into a pipe: the server runs on
