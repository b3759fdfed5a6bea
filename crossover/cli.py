"""The `crossover` command: a thin typer shell over the packages. User errors exit with status 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from typer.core import TyperGroup

from crossover import __version__
from crossover.errors import UserError
from crossover.specs import SpecError, StudySpec, format_seconds, format_tokens, load_study, plan_study
from crossover.tracking.names import PROGRESS_METRICS

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

USER_ERROR = 2
STOPPED = 130  # the study was stopped (Ctrl-C, `crossover stop`): the shell's status for SIGINT


class _UserErrorsExit2(TyperGroup):
    """The one handler of user errors, for every command: a `UserError` (bad spec, data, tracking store,
    checkpoint, diverged loss...) is printed, what went wrong and how to fix it, and the command exits with status 2.
    Anything else is a bug and keeps its traceback."""

    def invoke(self, ctx):  # noqa: ANN001, ANN201 - click's signature
        try:
            return super().invoke(ctx)
        except UserError as exc:
            err.print(f"[bold red]{getattr(exc, 'title', 'error')}:[/] ", end="", highlight=False)
            err.print(str(exc), markup=False, highlight=False)
            raise typer.Exit(USER_ERROR) from None


app = typer.Typer(no_args_is_help=True, add_completion=False, cls=_UserErrorsExit2,
                  help="Data-constrained AR vs masked-diffusion studies.")  # fmt: skip


def _version(value: bool) -> None:
    if value:
        out.print(f"crossover {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Plan, run and analyse AR vs MDLM studies written as YAML specs."""


def _load(path: Path) -> StudySpec:
    """Load a spec; a SpecError (exit 2) names every problem it has, each with file, line, column and field."""
    return load_study(path)


def _check_data(spec: StudySpec) -> list[str]:
    """Every unique budget fits its corpus or quality tier (exact with a token store, else a size bound); raises
    SpecError naming the available size. Imports no torch."""
    from crossover.data.check import check_study_data

    return check_study_data(spec)


def _load_checked(path: Path, quiet: bool = False) -> StudySpec:
    """`_load`, then the data-size check; exit 2 naming the available size when a budget cannot fit. The notes
    (how the sizes were checked) go to stderr unless `quiet`."""
    spec = _load(path)
    notes = _check_data(spec)
    for note in [] if quiet else notes:
        err.print(f"[dim]{note}[/]", highlight=False)
    return spec


def _check_tasks(spec: StudySpec) -> None:
    """Exit 2 before anything starts when the spec asks for an eval task this version cannot run yet."""
    from crossover.evals import check_tasks

    try:
        check_tasks(spec.eval.tasks, unsafe_execution=spec.eval.unsafe_execution)
    except ValueError as exc:
        err.print(f"[bold red]cannot run this spec:[/] {exc}", highlight=False)
        raise typer.Exit(USER_ERROR) from None


# Loggers of the libraries whose routine notices (accelerator detection, database migrations, a local Ray instance
# starting, Tune's state files) would fill the first screen; Python warnings go the same way.
LIBRARY_LOGGERS = ("ray", "mlflow", "alembic", "DeepSpeed", "deepspeed", "torch", "datasets", "urllib3", "py.warnings")


def _library_notices_to(log_file: Path, verbose: bool, libraries: tuple[str, ...]) -> None:
    """Other libraries' notices go to `log_file` instead of the terminal (unless `verbose`); ours stay visible.
    Their errors still reach the user through the exceptions and messages crossover prints. `libraries` are
    imported here first, into the file: some print when imported, and attach terminal handlers of their own."""
    if verbose:
        return
    import contextlib
    import importlib
    import logging
    import os

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


def _runtime(spec: StudySpec):  # -> crossover.specs.hardware.Runtime
    from crossover.specs.hardware import resolve_runtime

    return resolve_runtime(spec.train, spec.expand()[0].model, spec.resources)


def _runtime_line(spec: StudySpec) -> str:
    """How the study's `auto` settings resolve on this machine, in one line."""
    runtime = _runtime(spec)
    return (
        f"trains here in {runtime.precision} ({runtime.why}), "
        f"{'compiled' if runtime.compile else 'eager'} on {runtime.device.upper()}"
    )


def _warn_runtime(spec: StudySpec) -> None:
    """A setting the spec pins that runs much slower here than it could: one line on stderr."""
    if warning := _runtime(spec).warning:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)


def _print_wall_time(spec: StudySpec, max_concurrent: int | None = None) -> None:
    """How long the study takes on this machine (measures a few seconds per model size the first time)."""
    from crossover.trainers.throughput import wall_time_line

    line = wall_time_line(spec, max_concurrent)
    if line is None:
        out.print("[dim]no wall-time estimate here: the trials need GPUs and this machine has none[/]", highlight=False)
    else:
        out.print(line, highlight=False)


def _significant(value: float) -> str:
    """Three significant digits without exponents where they read easily: 12,984 / 41.3 / 0.00663."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _text_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain aligned table: fast for 10,000-trial plans (rich tables take ~0.5 ms a row) and easy to grep."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


@app.command()
def validate(specs: Annotated[list[Path], typer.Argument(help="Study spec YAML files.")]) -> None:
    """Check study specs; exit 2 if any cannot run."""
    failed = False
    for path in specs:
        try:
            spec = load_study(path)
            notes = _check_data(spec)
        except SpecError as exc:
            failed = True
            err.print(exc.render(), markup=False, highlight=False)
            continue
        out.print(f"[green]ok[/] {path}: study '{spec.name}', {len(spec.expand())} trials", highlight=False)
        for note in [*notes, _runtime_line(spec)]:
            out.print(f"  [dim]{note}[/]", highlight=False)
        _warn_runtime(spec)
    if failed:
        raise typer.Exit(USER_ERROR)


@app.command()
def plan(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="Study spec YAML file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
    mfu: Annotated[float, typer.Option(min=0.001, max=1.0, help="Assumed model FLOPs utilisation.")] = 0.4,
    gpu_tflops: Annotated[
        float, typer.Option(min=0.001, help="Peak dense bf16 TFLOP/s per GPU (H100 SXM: 989).")
    ] = 989.0,
) -> None:
    """One row per trial: epochs, parameters, training FLOPs, estimated GPU-hours and memory per worker."""
    spec = _load_checked(spec_path, quiet=as_json)
    study_plan = plan_study(spec, mfu=mfu, gpu_tflops=gpu_tflops)
    if as_json:
        print(json.dumps(study_plan.model_dump(mode="json"), indent=1))
        return
    axes = [a for a in (study_plan.trials[0].axes if study_plan.trials else {}) if a not in ("objective", "seed")]
    rows = [
        [
            row.name,
            *[row.axes[a] for a in axes],
            f"{row.epochs:.3g}",
            format_tokens(row.params_total),
            format_tokens(row.params_active),
            f"{row.flops:.3g}",
            _significant(row.gpu_hours),
            f"{row.memory_gib:.3g}",
        ]
        for row in study_plan.trials
    ]
    memory = "GiB/GPU" if study_plan.runtime.device == "cuda" else "GiB/worker"
    out.print(f"[bold]study {study_plan.study}[/]: {len(rows)} trials; {_runtime_line(spec)}", highlight=False)
    _warn_runtime(spec)
    print(_text_table(["trial", *axes, "epochs", "params", "active", "FLOPs", "GPU-h", memory], rows))
    _print_wall_time(spec)
    out.print(
        f"total: {study_plan.total_flops:.3g} training FLOPs, {_significant(study_plan.total_gpu_hours)} GPU-hours "
        f"at {mfu:.0%} MFU of {gpu_tflops:g} TFLOP/s (evaluation not included)"
    )


# ---- crossover data: build and inspect token stores (logic in crossover.data; this is only the shell)

data_app = typer.Typer(no_args_is_help=True, help="Build and inspect the token store of a study's data settings.")
app.add_typer(data_app, name="data")


def _prepare(spec: StudySpec, rebuild: bool = False, verify: bool = False):  # -> crossover.data.PreparedData
    """prepare() with a rich progress bar; DataError exits 2 with its message."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from crossover.data import prepare

    with Progress(
        TextColumn("{task.description:<20}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, transient=True,
    ) as bar:  # fmt: skip
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int | None) -> None:
            if stage not in tasks:
                for task in tasks.values():
                    bar.update(task, completed=bar.tasks[task].total or 1, total=bar.tasks[task].total or 1)
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        return prepare(
            spec.data,
            progress=progress,
            notify=lambda m: err.print(f"[yellow]{m}[/]", highlight=False),
            rebuild=rebuild,
            full_verify=verify,
        )


def _budget_lines(spec: StudySpec, prepared) -> tuple[list[list[str]], int]:
    from crossover.data.check import budget_fits

    rows = budget_fits(spec, prepared)
    table = [
        [r["quality"], format_tokens(r["unique_tokens"]), format_tokens(r["total_tokens"]), f"{r['epochs']:.3g}",
         format_tokens(r["available"]), "yes" if r["fits"] else "NO"]
        for r in rows
    ]  # fmt: skip
    return table, sum(not r["fits"] for r in rows)


@data_app.command("prepare")
def data_prepare(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="Study spec YAML file.")],
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Rebuild even when a valid store is cached.")] = False,
    verify: Annotated[bool, typer.Option("--verify", help="Hash every file of a cached store.")] = False,
) -> None:
    """Build (or load from the cache and verify) the tokenizer and token store of a study's data settings."""
    import time

    spec = _load(spec_path)
    started = time.perf_counter()
    prepared = _prepare(spec, rebuild=rebuild, verify=verify)
    seconds = time.perf_counter() - started
    m = prepared.manifest
    verb = "built" if prepared.built else "cached"
    out.print(
        f"[green]{verb}[/] {prepared.root} in {seconds:.2f}s: {m['documents']:,} documents, "
        f"{format_tokens(m['tokens'])} tokens ({m['dtype']}), tokenizer {m['tokenizer']['name']} "
        f"({m['tokenizer']['size']} tokens), {format_tokens(m['heldout']['tokens'])} held out",
        highlight=False,
    )
    _, too_big = _budget_lines(spec, prepared)
    if too_big:
        out.print(
            f"[red]{too_big} budget(s) do not fit[/]: `crossover data stats {spec_path}` lists them; "
            "`crossover validate` rejects this spec",
            highlight=False,
        )


@data_app.command("stats")
def data_stats(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="Study spec YAML file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the statistics as JSON.")] = False,
) -> None:
    """Documents, tokens, held-out size, quality tiers, and whether each unique budget of the grid fits (builds the
    token store first when it is not cached)."""
    from crossover.data.check import budget_fits

    spec = _load(spec_path)
    prepared = _prepare(spec)
    stats = prepared.stats()
    if as_json:
        print(json.dumps({**stats, "budgets": budget_fits(spec, prepared)}, indent=1))
        return
    tok, held, train = stats["tokenizer"], stats["heldout"], stats["train"]
    out.print(f"[bold]store[/] {stats['store']}", highlight=False)
    print(
        f"corpus      {stats['corpus']}: {stats['documents']:,} documents ({stats['duplicates_dropped']} duplicates, "
        f"{stats['empty_dropped']} empty dropped), {stats['tokens']:,} tokens ({stats['dtype']})\n"
        f"tokenizer   {tok['name']}: {tok['size']} tokens, embedding rows {tok['padded_vocab']}, "
        f"eod {tok['eod_id']}, mask {tok['mask_id']}, pad {tok['pad_id']}\n"
        f"held out    {held['documents']:,} documents, {held['tokens']:,} tokens (requested {held['requested']:,})\n"
        f"training    {train['documents']:,} documents, {train['tokens']:,} tokens"
    )
    tiers = stats["quality"]["tiers"]
    print(f"\nquality tiers ({stats['quality']['scorer']} scores, token terciles)")
    print(
        _text_table(
            ["tier", "documents", "tokens", "scores"],
            [
                [
                    name,
                    f"{t['documents']:,}",
                    f"{t['tokens']:,}",
                    "-" if t["score_min"] is None else f"{t['score_min']:.3g}..{t['score_max']:.3g}",
                ]
                for name, t in tiers.items()
            ],
        )
    )
    table, too_big = _budget_lines(spec, prepared)
    print("\nbudgets of the grid")
    print(_text_table(["quality", "unique", "total", "epochs", "available", "fits"], table))
    if too_big:
        out.print(f"[red]{too_big} budget(s) do not fit[/]", highlight=False)


# ---- crossover analyze: crossovers, efficiency, fits, plots and report from MLflow (logic in crossover.analysis)


@app.command()
def analyze(
    study: Annotated[str, typer.Argument(metavar="STUDY", help="Study name (its MLflow experiment) or its spec YAML.")],
    metric: Annotated[
        str | None,
        typer.Option(help="Eval metric to compare, e.g. eval/heldout_loss/loss (default: cloze accuracy, else loss)."),
    ] = None,
    x: Annotated[str, typer.Option("--x", help="Compute axis: tokens, flops or epochs.")] = "tokens",
    out_dir: Annotated[Path | None, typer.Option("--out", help="Report directory (default: reports/<study>).")] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).")
    ] = None,
    confidence: Annotated[float, typer.Option(min=0.5, max=0.999, help="Level of the bootstrap intervals.")] = 0.9,
) -> None:
    """Crossovers, data efficiency, scaling-law fits and a report (HTML + Markdown) from a study's MLflow records."""
    from crossover.analysis import (
        analyze_study,
        axis_verdicts,
        log_report,
        read_study,
        verdicts,
        write_report,
    )
    from crossover.analysis.verdict import delta_nll_lines, loss_verdicts

    name = _load(Path(study)).name if study.endswith((".yaml", ".yml")) and Path(study).is_file() else study
    data = read_study(name, tracking_uri)
    analysis = analyze_study(data, metric=metric, x=x, confidence=confidence)
    report = write_report(analysis, data, out_dir or Path("reports") / name)
    table = analysis.crossovers
    axis = analysis.x_axis

    def number(value: object) -> str:
        if not isinstance(value, float) or value != value:
            return ""
        if value in (float("inf"), float("-inf")):
            return "beyond the end" if value > 0 else "before the start"
        return format_tokens(value) if axis == "tokens" else f"{value:.4g}"

    rows = [
        [
            str(r["cell"]),
            str(r["status"]),
            number(r.get("x")),
            f"[{number(r['ci_low'])}, {number(r['ci_high'])}]" if number(r.get("ci_low")) else "",
        ]
        for r in table.head(50).to_dict("records")
    ]
    out.print(f"[bold]study {name}[/]: {analysis.metric} against {axis}", highlight=False)
    study_lines = axis_verdicts(analysis)
    for verdict in study_lines:
        print(verdict.line)
    lines = verdicts(analysis)
    for verdict in lines[:50]:
        print(verdict.line)
    if secondary := loss_verdicts(analysis):
        print("on the held-out loss (MDLM's is a bound):")
        for verdict in secondary[:50]:
            print(f"  {verdict.line}")
    if rising := delta_nll_lines(analysis):
        print("held-out loss rising after its minimum (the Delta NLL view):")
        for line in rising[:50]:
            print(f"  {line}")
    print()
    print(_text_table(["cell", "status", f"crossover ({axis})", f"{confidence:.0%} CI"], rows))
    if len(table) > 50:
        print(f"... {len(table) - 50} more cells in the report")
    try:
        run_id = log_report(data, report.parent, [*study_lines, *lines])
    except Exception as exc:  # noqa: BLE001 - the report on disk is complete; MLflow logging is a copy
        err.print(f"[yellow]warning:[/] the report was not logged to MLflow: {exc}", highlight=False)
        run_id = None
    out.print(f"report: {report}" + (f" (also on MLflow run {run_id}, artifacts report/)" if run_id else ""))
    _print_link(data.tracking_uri, data.experiment_id)


# ---- crossover run / status / ui: studies on Ray Tune, tracked in MLflow (logic in crossover.platform)


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

    from crossover.platform.driver import driver_folder, has_tune_state, storage_path
    from crossover.tracking.store import TrackingError, check_reachable, resolve_tracking_uri

    if resume and fresh:
        err.print("[bold red]--resume and --fresh contradict each other[/]: choose one")
        raise typer.Exit(USER_ERROR)
    spec = _load_checked(spec_path)
    ray_storage = storage_path(spec, storage)
    if resume and not has_tune_state(spec, ray_storage):
        err.print(f"[bold red]nothing to continue:[/] study {spec.name} has no earlier run under {ray_storage} "
                  f"(never run there, or --storage differs); `crossover run {spec_path}` without --resume starts it",
                  highlight=False)  # fmt: skip
        raise typer.Exit(USER_ERROR)
    _check_tasks(spec)
    log_dir = driver_folder(ray_storage)
    # The topmost folder the log creates, removed again if the study cannot start: nothing half-written.
    created = next((p for p in reversed([log_dir, *log_dir.parents]) if not p.exists()), None)
    _library_notices_to(log_dir / f"{spec.name}.log", verbose, ("mlflow", "ray"))
    uri = resolve_tracking_uri(tracking_uri)
    try:
        check_reachable(uri, write=True)
    except TrackingError as exc:
        if created:
            shutil.rmtree(created, ignore_errors=True)
        err.print(f"[bold red]tracking store unusable:[/] {exc}", highlight=False)
        raise typer.Exit(USER_ERROR) from None
    _prepare(spec)  # once, on the driver, so trials never race to build the token store
    spec = _load_checked(spec_path, quiet=True)  # exact budget check now that the store exists

    from crossover.platform.driver import run_study
    from crossover.platform.progress import StudyProgress

    address = address or os.environ.get("RAY_ADDRESS")
    out.print(f"study [bold]{spec.name}[/]: {len(spec.expand())} trials; MLflow {uri}", highlight=False)
    out.print(f"[dim]{_runtime_line(spec)}[/]", highlight=False)
    _warn_runtime(spec)
    if not address:  # on a cluster the trials do not run on this machine
        _clean_up_after_a_crash(log_dir, spec.name)
        _print_wall_time(spec, max_concurrent)
    progress = StudyProgress(spec.name, spec.expand(), out, quiet=quiet or not out.is_terminal)

    def on_growth(growth) -> None:  # a study that ran before: what it keeps and what runs now
        if growth.kept or growth.out_of_spec or growth.notes:
            out.print(growth.summary(), highlight=False)
        progress.kept([t.name for t in growth.kept])

    try:
        with progress:
            outcome = run_study(
                spec, spec_path.read_text(), uri, address=address, fresh=fresh, max_concurrent=max_concurrent,
                storage=storage, callbacks=[progress.callback()], on_growth=on_growth,
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


def _clean_up_after_a_crash(folder: Path, study: str) -> None:
    """Stop the Ray processes an earlier driver of this study left running when it was killed; refuse to start
    beside a driver of the same study that is still running (they would share its Tune state)."""
    from crossover.platform.local_ray import clean_up, running_driver, state_file

    record = state_file(folder, study)
    if driver := running_driver(record):
        err.print(f"[bold red]study {study} is already running[/] (driver pid {driver.pid}); "
                  f"`crossover stop` stops it, `crossover status {study}` shows it", highlight=False)  # fmt: skip
        raise typer.Exit(USER_ERROR)
    if stopped := clean_up(record):
        out.print(f"stopped {stopped} Ray processes left running by an earlier driver of this study", highlight=False)


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

    spec = _load(spec_path)
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
    _print_link(uri, data.experiment_id)


def _print_link(uri: str, experiment_id: str) -> None:
    from crossover.tracking.names import training_view_url, ui_server

    where = "" if uri.startswith(("http://", "https://")) else " (after `crossover ui`)"
    out.print(f"MLflow training view{where}: {training_view_url(ui_server(uri), experiment_id)}", highlight=False)


@app.command()
def status(
    study: Annotated[str, typer.Argument(help="Study name (the MLflow experiment).")],
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI.")] = None,
) -> None:
    """Per-trial progress of a study, read from MLflow."""
    from crossover.platform.tracking import study_status
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
    print(_text_table(headers, table))


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


# ---- crossover eval: a checkpoint on the platform's tasks (logic in crossover.evals)


@app.command("eval")
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint directory (checkpoint_* of a trial).")],
    tasks: Annotated[
        str,
        typer.Option(
            "--tasks",
            help="Comma-separated: heldout_loss, heldout_cloze, "
            "humaneval_likelihood, humaneval_pass@k, lm_eval:<task>.",
        ),
    ] = "heldout_loss",
    max_items: Annotated[int | None, typer.Option(help="Items per task (default: the trial's eval.max_items).")] = None,
    mc_samples: Annotated[int | None, typer.Option(help="Monte Carlo samples per MDLM ELBO.")] = None,
    mdlm_steps: Annotated[
        int | None, typer.Option(help="Score MDLM's choices by decoding them left to right in this many steps.")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
    lm_eval_include: Annotated[Path | None, typer.Option(help="A folder of lm-eval task YAMLs.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write metrics and per-item results here.")] = None,
) -> None:
    """Evaluate a checkpoint on the platform's tasks (the same code the trainer runs at its eval points)."""
    from crossover.data import DataError
    from crossover.evals.checkpoint import CheckpointError
    from crossover.evals.suite import evaluate_checkpoint

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    try:
        results = evaluate_checkpoint(str(checkpoint), names, max_items=max_items, mc_samples=mc_samples,
                                      mdlm_steps=mdlm_steps, device=device, lm_eval_include=str(lm_eval_include) if lm_eval_include else None)  # fmt: skip
    except (CheckpointError, DataError, ValueError, KeyError) as exc:  # KeyError: lm-eval's unknown task
        err.print(f"[bold red]cannot evaluate {checkpoint}:[/] {exc}", highlight=False)
        raise typer.Exit(USER_ERROR) from None
    rows = []
    for result in results:
        for metric, value in result.metrics.items():
            if metric.endswith("_stderr"):
                continue
            stderr = result.metrics.get(f"{metric}_stderr")
            rows.append([result.task, metric, f"{value:.4f}", "" if stderr is None else f"± {stderr:.4f}"])
    out.print(_text_table(["task", "metric", "value", "stderr"], rows), markup=False, highlight=False)
    if json_out:
        from dataclasses import asdict

        json_out.write_text(json.dumps([asdict(r) for r in results], indent=1))
        out.print(f"results: {json_out}", highlight=False)


# ---- crossover train: one trial on this machine, for debugging (logic in crossover.trainers)


def _pick_trial(spec: StudySpec, which: str):
    """A trial by index, name or trial_id (prefix); exit 2 listing the names otherwise."""
    trials = spec.expand()
    if which.isdigit() and int(which) < len(trials):
        return trials[int(which)]
    found = [t for t in trials if which in (t.name, t.trial_id) or t.trial_id.startswith(which)]
    if len(found) == 1:
        return found[0]
    names = ", ".join(f"{i}: {t.name}" for i, t in enumerate(trials))
    err.print(f"[bold red]no single trial[/] matches '{which}'; trials are {names}", highlight=False)
    raise typer.Exit(USER_ERROR)


@app.command()
def train(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="Study spec YAML file.")],
    which: Annotated[str, typer.Option("--trial", help="Trial index, name or trial_id.")],
    out_dir: Annotated[Path | None, typer.Option("--out", help="Checkpoints and metrics folder.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the folder's latest checkpoint.")] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Show DeepSpeed's and torch's own notices here too.")
    ] = False,
) -> None:
    """Train one trial locally, printing progress (no MLflow): for debugging a spec or the loop."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from crossover.trainers.launch import LocalReporter, run_workers
    from crossover.trainers.loop import train as train_trial

    spec = _load_checked(spec_path)
    _check_tasks(spec)
    trial = _pick_trial(spec, which)
    folder = out_dir or Path(".crossover") / "train" / spec.name / trial.name
    if folder.exists() and any(folder.iterdir()) and not resume:
        err.print(f"[bold red]{folder} already holds a run[/]: pass --resume to continue it, or --out for a new folder")
        raise typer.Exit(USER_ERROR)
    _library_notices_to(folder / "train.log", verbose, ("deepspeed",))
    with Progress(
        TextColumn(f"{trial.name}"), BarColumn(), TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
        console=out,
    ) as bar:  # fmt: skip
        task = bar.add_task("train", total=trial.total_tokens, status="starting")

        def show(metrics: dict[str, float], step: int) -> None:
            fields = [f"{format_tokens(step)} tokens", f"epoch {metrics.get('epoch', 0):.2f}"]
            fields += [f"{k} {v:.4g}" for k, v in metrics.items() if k in PROGRESS_METRICS]
            bar.update(task, completed=step, status="  ".join(fields))

        if trial.resources.workers > 1:
            result = run_workers(trial, folder.resolve() / "ray", name=trial.name)
            if result.error:
                raise result.error
        else:
            train_trial(trial, LocalReporter(folder, keep=trial.train.keep_checkpoints, sink=show))
    out.print(f"[green]done[/] {trial.name}: checkpoints and metrics in {folder}", highlight=False)


if __name__ == "__main__":
    app()
