"""crossover validate / plan: check a spec and say what it will cost (logic in crossover.specs)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from crossover.cli.app import USER_ERROR, app, err, out
from crossover.cli.common import (
    check_data,
    load_checked,
    load_spec,
    print_wall_time,
    runtime_line,
    runtime_of,
    significant,
    text_table,
    warn_runtime,
)
from crossover.specs import SpecError, format_tokens, plan_study
from crossover.specs.plan import cluster_wall_time
from crossover.specs.search import trials_phrase
from crossover.tracking.store import resolve_tracking_uri


@app.command()
def validate(specs: Annotated[list[Path], typer.Argument(help="Study spec YAML files.")]) -> None:
    """Check study specs; exit 2 if any cannot run."""
    failed = False
    for path in specs:
        try:
            spec = load_spec(path)
            notes = check_data(spec)
        except SpecError as exc:
            failed = True
            err.print(exc.render(), markup=False, highlight=False)
            continue
        out.print(f"[green]ok[/] {path}: study '{spec.name}', {trials_phrase(spec)}", highlight=False)
        for note in [*notes, runtime_line(spec, measure=False)]:  # torch-free: a cached measurement only
            out.print(f"  [dim]{note}[/]", highlight=False)
        warn_runtime(spec)
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
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            "--tracking-uri",
            help="MLflow tracking URI whose records say which trials already finished, so the time estimate counts "
            "only the rest (else MLFLOW_TRACKING_URI, else ./mlflow.db).",
        ),
    ] = None,
    cluster_gpus: Annotated[
        int | None,
        typer.Option(
            "--cluster-gpus",
            min=1,
            help="The GPUs of the cluster the study will run on, at its autoscaler's maximum (prod overlay: 8 pods x "
            "8): adds the study's training time there.",
        ),
    ] = None,
) -> None:
    """One row per trial: epochs, parameters, training FLOPs, estimated GPU-hours and memory per worker, and how
    long the study takes here (with --cluster-gpus, on the cluster); for a study that ran before (or grew), how long
    what is left takes."""
    # lazy: keeps the platform (~50 ms of imports) out of --help and validate
    from crossover.platform.anneal import anneal_cost
    from crossover.platform.grow import finished_in

    spec = load_checked(spec_path, quiet=as_json)
    study_plan = plan_study(spec, mfu=mfu, gpu_tflops=gpu_tflops, runtime=runtime_of(spec))
    anneal = anneal_cost(spec)  # the anneal phase (early_stopped_ar.anneal): its own line, an upper bound
    if as_json:
        bound = (
            {"trials": len(anneal.bound), "tokens": anneal.tokens, "flops": anneal.flops, "continued": anneal.continued}
            if anneal
            else None
        )
        print(json.dumps({**study_plan.model_dump(mode="json"), "anneal": bound}, indent=1))
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
            significant(row.gpu_hours),
            f"{row.memory_gib:.3g}",
        ]
        for row in study_plan.trials
    ]
    memory = "GiB/GPU" if study_plan.runtime.device == "cuda" else "GiB/worker"
    out.print(f"[bold]study {study_plan.study}[/]: {len(rows)} trials; {runtime_line(spec)}", highlight=False)
    warn_runtime(spec)
    print(text_table(["trial", *axes, "epochs", "params", "active", "FLOPs", "GPU-h", memory], rows))
    if anneal:
        out.print(anneal.line(), highlight=False)
    uri = resolve_tracking_uri(tracking_uri)
    # The embedded store not made yet (no --tracking-uri, no MLFLOW_TRACKING_URI): no study ran here, nothing to say.
    implicit = tracking_uri is None and not os.environ.get("MLFLOW_TRACKING_URI")
    never_made = uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists()
    print_wall_time(spec, finished=None if implicit and never_made else finished_in(spec, uri))
    if cluster_gpus is not None:
        try:
            out.print(cluster_wall_time(spec, study_plan, cluster_gpus).line(mfu, gpu_tflops), highlight=False)
        except ValueError as exc:
            err.print(f"[red]error:[/] --cluster-gpus {cluster_gpus}: {exc}", highlight=False)
            raise typer.Exit(USER_ERROR) from None
    out.print(
        f"total: {study_plan.total_flops:.3g} training FLOPs, {significant(study_plan.total_gpu_hours)} GPU-hours "
        f"at {mfu:.0%} MFU of {gpu_tflops:g} TFLOP/s (evaluation not included)"
    )
