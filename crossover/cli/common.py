"""What the commands share: loading and checking a spec, the runtime line, the wall-time estimate, the token
store's preparation with a progress bar, plain tables."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from pathlib import Path

from rich.markup import escape

from crossover.cli.app import err, out
from crossover.evals.registry import check_spec_tasks
from crossover.specs import StudySpec, load_study
from crossover.tracking.names import training_view_url, ui_server
from crossover.tracking.store import redact


def load_spec(path: Path) -> StudySpec:
    """Load a spec; a SpecError (exit 2) names every problem it has, each with file, line, column and field. Its
    eval tasks are names in the task registry (read without importing a task or torch)."""
    spec = load_study(path)
    check_spec_tasks(spec, installed=False)
    return spec


def check_data(spec: StudySpec) -> list[str]:
    """Every unique budget fits its corpus or quality tier (exact with a token store, else a size bound); raises
    SpecError naming the available size. Imports no torch."""
    from crossover.data.check import check_study_data  # lazy: keeps the data package (numpy) out of --help

    return check_study_data(spec)


def load_checked(path: Path, quiet: bool = False) -> StudySpec:
    """`load_spec`, then the data-size check; exit 2 naming the available size when a budget cannot fit. The notes
    (how the sizes were checked) go to stderr unless `quiet`."""
    spec = load_spec(path)
    notes = check_data(spec)
    for note in [] if quiet else notes:
        err.print(f"[dim]{note}[/]", highlight=False)
    return spec


# Loggers of the libraries whose routine notices (accelerator detection, database migrations, a local Ray instance
# starting, Tune's state files) would fill the first screen; Python warnings go the same way.
LIBRARY_LOGGERS = (
    "ray",
    "ray.data",
    "mlflow",
    "alembic",
    "DeepSpeed",
    "deepspeed",
    "torch",
    "datasets",
    "urllib3",
    "py.warnings",
)


def library_notices_to(log_file: Path, verbose: bool, libraries: tuple[str, ...]) -> None:
    """Other libraries' notices go to `log_file` instead of the terminal (unless `verbose`); ours stay visible.
    Their errors still reach the user through the exceptions and messages crossover prints. `libraries` are
    imported here first, into the file: some print when imported, and attach terminal handlers of their own."""
    if verbose:
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        for name in libraries:
            importlib.import_module(name)
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.captureWarnings(True)
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.propagate = False
    err.print(f"[dim]library notices: {log_file} (--verbose shows them here)[/]", highlight=False)


def runtime_of(spec: StudySpec, measure: bool = True):  # -> crossover.specs.hardware.Runtime
    """How the study trains here: `precision: auto` on an AVX512 CPU without AMX measured (once per machine, cached);
    measure=False reads only a cached measurement (`validate` imports no torch)."""
    from crossover.trainers.throughput import study_runtime_here  # lazy: the trainers stay out of --help

    return study_runtime_here(spec, measure=measure)


def runtime_line(spec: StudySpec, measure: bool = True) -> str:
    """How the study's `auto` settings resolve on this machine, in one line."""
    runtime = runtime_of(spec, measure)
    return (
        f"trains here in {runtime.precision} ({runtime.why}), "
        f"{'compiled' if runtime.compile else 'eager'} on {runtime.device.upper()}"
    )


def warn_runtime(spec: StudySpec) -> None:
    """A setting the spec pins that runs much slower here than it could: one line on stderr."""
    if warning := runtime_of(spec, measure=False).warning:  # warnings concern explicit settings: nothing to measure
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)


def print_wall_time(spec: StudySpec, max_concurrent: int | None = None, finished=None) -> None:
    """How long the study takes on this machine (measures a few seconds per model size the first time). With
    `finished` (crossover.platform.grow.Finished: what the study's records hold as done), how long what is left
    takes: "estimated 9m40s here: 4 of 8 trials left (4 finished in <uri>), ..."."""
    # lazy: keeps the platform (~50 ms of imports) out of --help and validate, which never estimate
    from crossover.platform.anneal import anneal_cost
    from crossover.platform.grow import remaining_study
    from crossover.specs.search import planned_trials
    from crossover.trainers.throughput import wall_time_line

    if finished is not None and finished.unread:
        out.print(
            f"[dim]the estimate is the whole study's: its finished trials were not read ({escape(finished.unread)})[/]",
            highlight=False,
        )
    done = finished.trials if finished is not None else frozenset()
    # the study's second phase, where it anneals AR to its validation-chosen stop
    anneal = anneal_cost(spec, annealed=finished.annealed if finished is not None else ())
    if spec.search is not None:  # samples are drawn as it runs: the search's whole cost, samples and confirmation
        finished = None
        done = frozenset()
    planned = planned_trials(spec)
    total, left = len(planned), finished.left(spec) if finished is not None else planned
    where = f"finished in {escape(redact(finished.uri))}" if done else ""
    if not left:
        rest = (
            f"; the anneal of up to {len(anneal.bound)} AR trials is not estimated" if anneal and anneal.bound else ""
        )
        out.print(f"nothing left to train here: all {total} trials {where}{rest}", highlight=False)
        return
    said = f"{len(left)} of {total} trials left ({len(done)} {where})" if done else None
    after = anneal.bound if anneal else ()
    line = wall_time_line(remaining_study(spec, left), max_concurrent, after=after, trials=said)
    if line is None:
        line = "[dim]no wall-time estimate here: the trials need GPUs and this machine has none[/]"
        line += f" ({said})" if said else ""
    out.print(line, highlight=False)


def significant(value: float) -> str:
    """Three significant digits without exponents where they read easily: 12,984 / 41.3 / 0.00663."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain aligned table: fast for 10,000-trial plans (rich tables take ~0.5 ms a row) and easy to grep."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def _progress_bar():  # -> (rich Progress, the progress(stage, done, total) callback that feeds it)
    # lazy: rich.progress (~0.1 s) stays out of --help
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("{task.description:<20}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    tasks: dict[str, int] = {}

    def progress(stage: str, done: int, total: int | None, rate: str = "") -> None:
        if stage not in tasks:
            for task in tasks.values():
                bar.update(task, completed=bar.tasks[task].total or 1, total=bar.tasks[task].total or 1)
            tasks[stage] = bar.add_task(stage, total=total, rate="")
        bar.update(tasks[stage], completed=done, total=total, rate=rate)

    return bar, progress


def _notify(message: str) -> None:
    err.print(f"[yellow]{escape(message)}[/]", highlight=False)


def prepare_data(
    spec: StudySpec, rebuild: bool = False, verify: bool = False, address: str | None = None
):  # -> crossover.data.PreparedData
    """prepare() with a rich progress bar; DataError exits 2 with its message. With `data.store` set and the shared
    store not built yet, it is built first as a Ray Data job (`build_shared_store`, on the cluster at `address`)."""
    from crossover.data import prepare  # lazy: the data package (numpy) stays out of --help

    if spec.data.store:
        from crossover.data.shards import StoreLocation, location_uri  # lazy: as above

        if rebuild or StoreLocation(location_uri(spec.data)).read_json("manifest.json") is None:
            build_shared_store(spec, address=address, rebuild=rebuild)
        rebuild = False
    bar, progress = _progress_bar()
    with bar:
        return prepare(spec.data, progress=progress, notify=_notify, rebuild=rebuild, full_verify=verify)


def build_shared_store(
    spec: StudySpec,
    *,
    address: str | None = None,
    workers: int | None = None,
    shard_bytes: int | None = None,
    rebuild: bool = False,
):  # -> crossover.platform.data_job.PrepareReport
    """Build the study's shared token store (`data.store`) as a Ray Data job on the cluster at `address` (else
    RAY_ADDRESS, else a local Ray instance), `workers` tokenizing, with a progress bar of shards and tokens per second;
    prints what it did and the throughput of each worker. Default workers: on a cluster, the CPUs of its nodes without
    GPUs and at least CLUSTER_WORKERS (an autoscaling cluster grows for them); locally, one per CPU."""
    import ray  # lazy: Ray only for the commands that use it

    from crossover.platform.data_job import build_shared_store as build
    from crossover.platform.data_job import default_cluster_workers, ray_instance

    address = address or os.environ.get("RAY_ADDRESS")
    started = ray_instance(address, workers or os.cpu_count() or 1)
    try:
        if not workers and address:
            workers = default_cluster_workers(ray.nodes())
        workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        bar, progress = _progress_bar()

        def shards(done: int, total: int, tokens: int, seconds: float) -> None:
            rate = f"{tokens / seconds:,.0f} tokens/s" if seconds > 0 and tokens else ""
            progress("tokenizing shards", done, total, rate)

        with bar:
            report = build(
                spec.data,
                workers=workers,
                shard_bytes=shard_bytes,
                rebuild=rebuild,
                progress=progress,
                shard_progress=shards,
                notify=_notify,
            )
    finally:
        if started:
            ray.shutdown()
    print_prepare_report(report)
    return report


def print_prepare_report(report) -> None:  # noqa: ANN001 - a crossover.platform.data_job.PrepareReport
    if report.complete_before:
        out.print(f"shared store {escape(report.store)} is complete ({report.shards} shards)", highlight=False)
        return
    before = report.shards - report.tokenized
    out.print(
        f"[green]built[/] shared store {escape(report.store)}: tokenized {report.tokenized} of {report.shards} shards"
        + (f" ({before} finished before)" if before else "")
        + f", {report.tokens:,} tokens in {report.seconds:.1f}s ({report.tokens_per_s:,.0f} tokens/s) "
        f"with {report.workers} Ray worker(s)",
        highlight=False,
    )
    if report.per_worker:
        rows = [
            [name, str(w.shards), f"{w.tokens:,}", f"{w.seconds:.2f}", f"{w.tokens_per_s:,.0f}"]
            for name, w in sorted(report.per_worker.items())
        ]
        print(text_table(["worker", "shards", "tokens", "busy s", "tokens/s"], rows))


def print_link(uri: str, experiment_id: str) -> None:
    where = "" if uri.startswith(("http://", "https://")) else " (after `crossover ui`)"
    out.print(f"MLflow training view{where}: {training_view_url(ui_server(uri), experiment_id)}", highlight=False)
