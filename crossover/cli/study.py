"""`crossover run / stop / status / ui`: studies on Ray Tune, tracked in MLflow (logic in crossover.platform)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crossover.cli.app import STOPPED, app, err, out
from crossover.cli.common import (
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
from crossover.evals.registry import check_spec_tasks
from crossover.specs import format_seconds, format_tokens
from crossover.tracking.names import PROGRESS_METRICS


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
    import os

    from crossover.platform.driver import check_start, check_tracking, driver_folder, storage_path
    from crossover.tracking.store import resolve_tracking_uri

    spec = load_checked(spec_path)
    ray_storage = storage_path(spec, storage)
    check_start(spec, str(spec_path), ray_storage, resume=resume, fresh=fresh)
    check_spec_tasks(spec)  # what this installation cannot run (lm-eval without its extra, no sandbox)
    log_dir = driver_folder(ray_storage)
    # The topmost folder the log creates, removed again if the study cannot start: nothing half-written.
    created = next((p for p in reversed([log_dir, *log_dir.parents]) if not p.exists()), None)
    library_notices_to(log_dir / f"{spec.name}.log", verbose, ("mlflow", "ray"))
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking(uri, created)
    prepare_data(spec)  # once, on the driver, so trials never race to build the token store
    spec = load_checked(spec_path, quiet=True)  # exact budget check now that the store exists

    from crossover.platform.driver import clean_up_after_a_crash, run_study
    from crossover.platform.progress import StudyProgress

    address = address or os.environ.get("RAY_ADDRESS")
    out.print(f"study [bold]{spec.name}[/]: {len(spec.expand())} trials; MLflow {uri}", highlight=False)
    out.print(f"[dim]{runtime_line(spec)}[/]", highlight=False)
    warn_runtime(spec)
    if not address:  # on a cluster the trials do not run on this machine
        if stopped := clean_up_after_a_crash(log_dir, spec.name):
            out.print(f"stopped {stopped} Ray processes left running by an earlier driver of this study")
        print_wall_time(spec, max_concurrent)
    progress = StudyProgress(spec.name, spec.expand(), out, quiet=quiet or not out.is_terminal)

    def on_growth(growth) -> None:  # a study that ran before: what it keeps and what runs now
        if growth.kept or growth.out_of_spec or growth.notes:
            out.print(growth.summary(), highlight=False)
        progress.kept([t.name for t in growth.kept])

    def on_anneal(plan) -> None:  # the second phase: AR annealed to its validation-chosen stop
        out.print(plan.summary(), highlight=False)
        progress.add([a.trial for a in plan.to_run])

    try:
        with progress:
            outcome = run_study(
                spec, spec_path.read_text(), uri, address=address, fresh=fresh, max_concurrent=max_concurrent,
                storage=storage, callbacks=[progress.callback()], on_growth=on_growth, on_anneal=on_anneal,
            )  # fmt: skip
    except KeyboardInterrupt:  # before the trials started (Ray starting); once they run, Tune stops them
        err.print(f"study stopped before its trials started: `crossover run {spec_path}` starts it again")
        raise typer.Exit(STOPPED) from None
    stopped = f", {len(outcome.stopped)} stopped" if outcome.stopped else ""
    out.print(
        f"{len(outcome.finished)} trials finished, {len(outcome.failed)} failed{stopped}; MLflow: {uri} "
        f"(parent run {outcome.parent_run_id}); Ray: {outcome.experiment_path}",
        highlight=False,
    )
    for name, error in outcome.failed.items():
        err.print(f"[red]{name}[/]: {error}", highlight=False)
    if outcome.stopped:
        out.print(f"study stopped: `crossover run {spec_path}` continues it from the trials' last checkpoints")
        raise typer.Exit(STOPPED)
    _provisional_verdict(spec.name, uri)
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
    from collections import Counter

    from crossover.analysis.crossing import STATUSES
    from crossover.platform.tracking import study_states, study_status
    from crossover.tracking.store import check_reachable, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    check_reachable(uri, write=False)
    rows = study_status(study, uri)

    def eta(r: dict) -> str:
        if r["status"] != "RUNNING" or not r.get("tokens_per_s") or not r.get("total_tokens"):
            return ""
        return format_seconds((r["total_tokens"] - r.get("tokens", 0)) / r["tokens_per_s"])

    headers = ["trial", "status", "tokens", "epoch", *PROGRESS_METRICS, "tok/s", "ETA"]
    table = [
        [r["name"], r["status"], format_tokens(r.get("tokens", 0)), f"{r.get('epoch', 0):.2f}",
         *[f"{r[m]:.4f}" if m in r else "" for m in headers[4:6]],
         f"{r['tokens_per_s']:,.0f}" if r.get("tokens_per_s") else "", eta(r)]
        for r in rows
    ]  # fmt: skip
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
    """Start the MLflow UI on the study store (the local SQLite store by default)."""
    import os
    import sys

    from crossover.tracking.store import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    server = uri if uri.startswith(("http://", "https://")) else f"http://{host}:{port}"
    _print_studies(uri, server)
    if uri.startswith(("http://", "https://")):
        out.print(f"the tracking server already serves its UI: open {uri}")
        return
    out.print(f"MLflow UI for {uri} on {server} (Ctrl-C stops it)", highlight=False)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    os.execv(sys.executable, command)


def _print_studies(uri: str, server: str) -> None:
    """The training-view link of every study in the store (nothing when it cannot be read: the UI will say why)."""
    from crossover.tracking.names import training_view_url
    from crossover.tracking.store import mlflow_client

    try:
        experiments = mlflow_client(uri).search_experiments(max_results=200)
    except Exception:  # noqa: BLE001 - an empty or unreachable store: the UI itself reports it
        return
    for experiment in experiments:
        if experiment.name != "Default":
            print(f"{experiment.name}: {training_view_url(server, experiment.experiment_id)}")
