"""`crossover eval`: a checkpoint on the platform's tasks (logic in crossover.evals); `crossover train`: one trial on
this machine, for debugging (logic in crossover.trainers)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from crossover.cli.app import USER_ERROR, app, err, out
from crossover.cli.common import (
    library_notices_to,
    load_checked,
    text_table,
)
from crossover.evals.registry import check_spec_tasks
from crossover.specs import StudySpec, TrialSpec, format_tokens
from crossover.specs.hardware import Runtime
from crossover.tracking.names import PROGRESS_METRICS


@app.command("eval")
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint directory (checkpoint_* of a trial).")],
    tasks: Annotated[
        str,
        typer.Option(
            "--tasks",
            help="Comma-separated task names of crossover.evals.registry: heldout_loss, heldout_cloze, "
            "humaneval_likelihood, humaneval_pass@k, lm_eval:<task>.",
        ),
    ] = "heldout_loss",
    max_items: Annotated[int | None, typer.Option(help="Items per task (default: the trial's eval.max_items).")] = None,
    mc_samples: Annotated[int | None, typer.Option(help="Monte Carlo samples per MDLM ELBO.")] = None,
    mdlm_block: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Score MDLM's choices by decoding them left to right, this many tokens per step (1: exact, the "
            "chain rule; larger: cheaper and weaker). Default: the trial's eval.mdlm_block.",
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
    lm_eval_include: Annotated[Path | None, typer.Option(help="A folder of lm-eval task YAMLs.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write metrics and per-item results here.")] = None,
) -> None:
    """Evaluate a checkpoint on the platform's tasks (the same code the trainer runs at its eval points)."""
    from crossover.evals.suite import evaluate_checkpoint  # lazy: torch (seconds) stays out of the other commands

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    include = str(lm_eval_include) if lm_eval_include else None
    results = evaluate_checkpoint(
        str(checkpoint),
        names,
        max_items=max_items,
        mc_samples=mc_samples,
        mdlm_block=mdlm_block,
        device=device,
        lm_eval_include=include,
    )
    rows = []
    for result in results:
        for metric, value in result.metrics.items():
            if metric.endswith("_stderr"):
                continue
            stderr = result.metrics.get(f"{metric}_stderr")
            rows.append([result.task, metric, f"{value:.4f}", "" if stderr is None else f"± {stderr:.4f}"])
    out.print(text_table(["task", "metric", "value", "stderr"], rows), markup=False, highlight=False)
    if json_out:
        json_out.write_text(json.dumps([asdict(r) for r in results], indent=1))
        out.print(f"results: {json_out}", highlight=False)


RUNTIME_FILE = "runtime.json"  # in a `crossover train` folder: how the trial trains, reused by --resume


def _trial_runtime(trial: TrialSpec, folder: Path, resume: bool):  # -> crossover.specs.hardware.Runtime
    """How the trial trains: on --resume as it began (recorded in its folder), else resolved here once (`precision:
    auto` on an AVX512 CPU without AMX from the cached measurement) and recorded: a resume never changes precision."""
    from crossover.trainers.throughput import runtime_here  # lazy: the trainers stay out of --help

    record = folder / RUNTIME_FILE
    if resume:
        try:
            return Runtime.model_validate_json(record.read_text())
        except (OSError, ValueError):  # a folder from before the record, or a torn one: resolve as it first did
            pass
    runtime = runtime_here(trial)
    folder.mkdir(parents=True, exist_ok=True)
    record.write_text(runtime.model_dump_json())
    return runtime


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
    # lazy: torch (seconds) and rich.progress (~0.1 s) stay out of the other commands
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from crossover.trainers.launch import LocalReporter, run_workers
    from crossover.trainers.loop import train as train_trial

    spec = load_checked(spec_path)
    check_spec_tasks(spec)  # what this installation cannot run (lm-eval without its extra, no sandbox)
    trial = _pick_trial(spec, which)
    folder = out_dir or Path(".crossover") / "train" / spec.name / trial.name
    if folder.exists() and any(folder.iterdir()) and not resume:
        err.print(f"[bold red]{folder} already holds a run[/]: pass --resume to continue it, or --out for a new folder")
        raise typer.Exit(USER_ERROR)
    library_notices_to(folder / "train.log", verbose, ("deepspeed",))
    runtime = _trial_runtime(trial, folder, resume)
    with Progress(
        TextColumn(f"{trial.name}"),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeRemainingColumn(),
        console=out,
    ) as bar:
        task = bar.add_task("train", total=trial.total_tokens, status="starting")

        def show(metrics: dict[str, float], step: int) -> None:
            fields = [f"{format_tokens(step)} tokens", f"epoch {metrics.get('epoch', 0):.2f}"]
            fields += [f"{k} {v:.4g}" for k, v in metrics.items() if k in PROGRESS_METRICS]
            bar.update(task, completed=step, status="  ".join(fields))

        if trial.resources.workers > 1:
            result = run_workers(trial, folder.resolve() / "ray", name=trial.name, runtime=runtime)
            if result.error:
                raise result.error
        else:
            train_trial(trial, LocalReporter(folder, keep=trial.train.keep_checkpoints, sink=show), runtime=runtime)
    out.print(f"[green]done[/] {trial.name}: checkpoints and metrics in {folder}", highlight=False)


if __name__ == "__main__":
    app()
