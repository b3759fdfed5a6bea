"""`crossover analyze`: crossovers, efficiency, fits, plots and report from MLflow (logic in crossover.analysis)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crossover.cli.app import app, err, out
from crossover.cli.common import (
    load_spec,
    print_link,
    text_table,
)


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
    # lazy: the analysis imports pandas, scipy and matplotlib (seconds): every other command starts without them
    from crossover.analysis import (
        analyze_study,
        axis_verdicts,
        log_report,
        read_study,
        verdicts,
        write_report,
    )
    from crossover.analysis.formatting import interval, position
    from crossover.analysis.verdict import delta_nll_lines, loss_verdicts, tuning_lines

    name = load_spec(Path(study)).name if study.endswith((".yaml", ".yml")) and Path(study).is_file() else study
    data = read_study(name, tracking_uri)
    analysis = analyze_study(data, metric=metric, x=x, confidence=confidence)
    report = write_report(analysis, data, out_dir or Path("reports") / name)
    table = analysis.crossovers.table
    axis = analysis.x_axis

    rows = [
        [
            str(r["cell"]),
            str(r["status"]),
            position(r.get("x"), axis),
            interval(r.get("ci_low"), r.get("ci_high"), axis),
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
    if tuned := tuning_lines(analysis):  # a search study: each objective's search, winner and tuning gain
        print("tuned against tuned (each objective's winner, confirmed on fresh seeds, against its base settings):")
        for line in tuned[:50]:
            print(f"  {line}")
    if rising := delta_nll_lines(analysis):
        print("held-out loss rising after its minimum (the Delta NLL view):")
        for line in rising[:50]:
            print(f"  {line}")
    print()
    print(text_table(["cell", "status", f"crossover ({axis})", f"{confidence:.0%} CI"], rows))
    if len(table) > 50:
        print(f"... {len(table) - 50} more cells in the report")
    try:
        run_id = log_report(data, report.parent, [*study_lines, *lines])
    except Exception as exc:  # noqa: BLE001 - the report on disk is complete; MLflow logging is a copy
        err.print(f"[yellow]warning:[/] the report was not logged to MLflow: {exc}", highlight=False)
        run_id = None
    out.print(f"report: {report}" + (f" (also on MLflow run {run_id}, artifacts report/)" if run_id else ""))
    print_link(data.tracking_uri, data.experiment_id)
