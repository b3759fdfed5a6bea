"""Analysis of a real MLflow store (SQLite, written by the platform's writer, crossover.platform.tracking):
`load_curves`, the `crossover analyze` command and its report, opened in headless Chromium."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from crossover.analysis import load_curves, read_study
from crossover.cli import app
from crossover.platform.tracking import TrialRun, finish_study
from crossover.specs import format_tokens, parse_study
from crossover.tracking.names import REPORT_DIR, TAG_ITEMS, TAG_PARENT, TAG_ROLE, eval_key, task_key, trial_params

from .analysis_support import start, write_study
from .conftest import SPECS
from .services import assert_report_renders, free_port, mlflow_server
from .synthetic import Truth

runner = CliRunner()

# The smoke study's four trials (AR and MDLM x 50k and 200k unique tokens, 400k training tokens), evaluated at 12
# log-spaced points on the held-out loss and a 300-item cloze task. In this synthetic world AR's repeated tokens lose
# their value fast (R_D* = 1) and its validation loss rises after 4 epochs while its accuracy holds; MDLM learns half
# as much per token but keeps its value. The population accuracy curves cross at ~194k tokens (3.9 epochs) of the
# 50k budget (MDLM ahead by 8 points at the end) and not at all within the two epochs of the 200k budget.
SMOKE_TRUTH = Truth(
    r_star_ar=1.0,
    mdlm_data_factor=0.5,
    ar_overfit_epochs=4,
    ar_overfit_loss=0.08,
    ar_overfit_skill=0.0,
    midpoint_tokens=1e5,
    items=300,
)
PLANTED = 194_000


def smoke_spec(name: str = "smoke") -> dict:
    raw = yaml.safe_load((SPECS / "smoke.yaml").read_text())
    raw["name"] = name
    # the synthetic world below is planted on this shape, whatever size the shipped smoke study has
    raw["train"].update(total_tokens="400k", global_batch_tokens=4096)
    raw["grid"]["unique_tokens"] = ["50k", "200k"]
    raw["eval"] = {"every": "log:12", "tasks": ["heldout_loss", "heldout_cloze"], "mc_samples": 8, "max_items": 300}
    return raw


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    raw = smoke_spec()
    raw["eval"]["mdlm_block"] = None  # MDLM's choices by the K = 8 ELBO: the analysis notes its Monte Carlo handicap
    trials = parse_study(raw).expand()
    write_study(raw, uri, SMOKE_TRUTH)
    # a study whose only trial has started but not been evaluated yet
    waiting, parent_run_id = start(smoke_spec("waiting"), uri)
    TrialRun(waiting.expand()[0], uri, parent_run_id).log({"train/loss": 6.0, "tokens": 4096}, step=4096)
    return SimpleNamespace(uri=uri, root=root, trials=trials)


def test_load_curves_one_row_per_trial_and_eval_point(store):
    curves = load_curves("smoke", store.uri)
    assert len(curves) == 4 * 12
    assert sorted(curves["trial"].unique()) == sorted(t.name for t in store.trials)
    for column in (
        "cell",
        "objective",
        "seed",
        "unique_budget",
        "axes.unique_tokens",
        "tokens",
        "epoch",
        "flops",
        "train/loss",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "unique_tokens",
        "eval/heldout_loss/loss",
        "eval/heldout_cloze/acc",
        "eval/heldout_cloze/delta_nll",
        "items/heldout_cloze",
    ):
        assert column in curves, column
        assert curves[column].notna().all(), column
    ar50 = curves[curves["trial"] == "ar-U50k-nano-s0"]
    assert ar50["step"].is_monotonic_increasing and ar50["tokens"].iloc[-1] == 400_000
    assert ar50["epoch"].iloc[-1] == pytest.approx(8.0)
    assert set(curves["cell"]) == {"unique_tokens=50k", "unique_tokens=200k"}
    assert (curves["flops"] / curves["tokens"]).nunique() == 1  # same model: same FLOPs per token
    items = ar50["items/heldout_cloze"].iloc[-1]
    assert len(items["ids"]) == 300 and items["acc"].mean() == pytest.approx(ar50["eval/heldout_cloze/acc"].iloc[-1])


def test_bulk_sql_path_equals_the_public_client_path(store):
    fast = read_study("smoke", store.uri, items=False)
    slow = read_study("smoke", store.uri, items=False, bulk=False)
    cols = [c for c in fast.curves.columns if not c.startswith("items/")]
    assert fast.curves[cols].equals(slow.curves[cols])


def test_tracking_uri_from_the_environment(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    assert len(load_curves("smoke", items=False)) == 48


def test_the_cli_stays_light():
    """`crossover validate` must not pay for MLflow or matplotlib: `analyze` imports them inside the command."""
    import sys

    code = "import sys, crossover.cli; print([m for m in ('mlflow', 'matplotlib', 'crossover.analysis') if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


OPEN_WHEN_TOLD = """
import sys, time
from pathlib import Path
from crossover.tracking.store import mlflow_client
uri, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
while not go.exists():  # every process has imported mlflow: now they open the new store at once
    time.sleep(0.01)
mlflow_client(uri).search_experiments()
"""


def test_processes_opening_a_new_sqlite_store_at_once_leave_it_whole(tmp_path):
    # MLflow creates a new SQLite store's tables unlocked: two processes at once left it half-migrated in most tries
    # (a `crossover status` beside a starting `run`). crossover's one way of opening a store takes turns.
    from mlflow.store.db.utils import _all_tables_exist, create_sqlalchemy_engine_with_retry

    uri, go = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(3)]
    opening = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_WHEN_TOLD, uri, str(r), str(go)], stderr=subprocess.PIPE, text=True
        )
        for r in ready
    ]
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    errors = [p.communicate(timeout=120)[1] for p in opening]
    assert [p.returncode for p in opening] == [0, 0, 0], "\n".join(errors)[-3000:]
    assert _all_tables_exist(create_sqlalchemy_engine_with_retry(uri))


def test_params_follow_the_contract():
    trial = next(t for t in parse_study(smoke_spec()).expand() if t.name == "mdlm-U50k-nano-s0")
    params = trial_params(trial)
    assert params["data.unique_tokens"] == "50000" and params["train.total_tokens"] == "400000"
    assert params["axes.unique_tokens"] == "50k" and params["objective"] == "mdlm" and params["seed"] == "0"
    assert params["model.layers"] == "4" and params["train.betas"] == "[0.9, 0.95]"
    assert (
        task_key("humaneval_pass@k") == "humaneval_pass_at_k" and task_key("lm_eval:hellaswag") == "lm_eval:hellaswag"
    )
    assert eval_key("heldout_cloze", "acc") == "eval/heldout_cloze/acc"


def test_analyze_command_writes_the_report_and_logs_it_to_the_parent_run(store, tmp_path):
    out = tmp_path / "report"
    result = runner.invoke(app, ["analyze", "smoke", "--tracking-uri", store.uri, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "unique_tokens=50k" in result.output and "crossed" in result.output
    for name in (
        "report.html",
        "report.md",
        "crossovers.csv",
        "efficiency.csv",
        "scaling.csv",
        "summary.json",
        "figures/curves.png",
        "figures/curves.svg",
        "figures/crossover_vs_unique_tokens.png",
        "figures/efficiency.svg",
        "figures/scaling_fits.png",
        "figures/delta_nll.png",
    ):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "eval/heldout_cloze/acc" and summary["ci_source"].startswith(
        "items, 1 seed (item noise"
    )
    assert summary["states"] == "crossed 1, not crossed 1, undetermined 0 of 2 cells"
    assert any(n.startswith("No C_crit(U) power law: it needs") for n in summary["notes"])  # two budgets fit any line
    assert any("K = 8 Monte Carlo samples" in note for note in summary["notes"])  # MDLM's accuracy: a lower estimate
    cells = {row["cell"]: row for row in summary["crossovers"]}
    small, large = cells["unique_tokens=50k"], cells["unique_tokens=200k"]
    assert small["status"] == "crossed" and large["status"] == "not_crossed"
    # 300 items at 12 points are noisy: the estimate is near the planted crossover and the interval holds it
    high = float(small["ci_high"])  # "inf" when some replicates do not cross inside the window
    assert abs(np.log(small["x"] / PLANTED)) / np.log(400_000 / 8192) < 0.1
    assert small["ci_low"] <= PLANTED <= high
    assert small["crossover_epochs"] == pytest.approx(small["x"] / 50_000)
    markdown = (out / "report.md").read_text()
    assert "](figures/curves.png)" in markdown and "R_D*" in markdown
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5
    # the same report is on the study's parent run in MLflow
    from mlflow import MlflowClient

    data = read_study("smoke", store.uri, items=False)
    logged = {a.path for a in MlflowClient(store.uri).list_artifacts(data.parent_run_id, REPORT_DIR)}
    assert {f"{REPORT_DIR}/report.html", f"{REPORT_DIR}/report.md", f"{REPORT_DIR}/figures"} <= logged
    # the verdict: one line per cell, heading the output and the report, and on the parent run for the runs table
    verdicts = {v["cell"]: v for v in summary["verdicts"]}
    crossed, open_ = verdicts["unique_tokens=50k"]["line"], verdicts["unique_tokens=200k"]["line"]
    digits = small["sig_figs"]  # 12 points over 49x: 1.42x apart, so two significant figures
    assert digits == 2
    assert crossed.startswith(
        f"unique_tokens=50k: MDLM overtakes AR on heldout_cloze/acc at {format_tokens(small['crossover_tokens'], 2)} tokens ({small['crossover_epochs']:.2g} epochs) (90% CI "
    )
    assert "; P(crossed) " in crossed and "over items, 1 seed (item noise only" in crossed
    assert "at the end AR " in crossed and ", MDLM " in crossed
    assert open_.startswith("unique_tokens=200k: not crossed within 400k tokens (2 epochs): AR ahead at the end by ")
    assert [verdicts[c]["state"] for c in ("unique_tokens=50k", "unique_tokens=200k")] == ["crossed", "not_crossed"]
    assert result.output.index(crossed) < result.output.index("crossover (tokens)")  # before the table
    # the held-out loss has no per-item results: with one seed nothing backs a claim, and the line says why
    loss_lines = result.output.split("on the held-out loss (MDLM's is a bound):")[1]
    assert "unique_tokens=50k: undetermined within " in loss_lines, loss_lines
    assert "no interval: it needs per-item results or two or more seeds" in loss_lines
    assert markdown.index("## Verdict") < markdown.index("## Crossover per cell") and crossed in markdown
    parent = MlflowClient(store.uri).get_run(data.parent_run_id).data
    assert parent.tags["crossover.verdict.50k"] == crossed
    assert parent.tags["crossover.verdict.200k"] == open_
    assert parent.metrics["verdict/50k/crossed"] == 1.0 and parent.metrics["verdict/50k/state"] == 1.0
    assert parent.metrics["verdict/200k/crossed"] == 0.0 and parent.metrics["verdict/200k/state"] == -1.0
    assert parent.tags["crossover.state.50k"] == "crossed" and parent.tags["crossover.state.200k"] == "not_crossed"
    status = runner.invoke(app, ["status", "smoke", "--tracking-uri", store.uri])  # the states, as last analysed
    assert status.exit_code == 0, status.output
    assert "verdict of the last analysis: crossed 1, not crossed 1 of 2 cells" in status.output, status.output
    assert parent.metrics["verdict/50k/crossover_tokens"] == pytest.approx(small["crossover_tokens"])
    assert parent.metrics["verdict/200k/ar_lead_final"] > 0
    assert "verdict/200k/crossover_tokens" not in parent.metrics


@pytest.mark.parametrize(
    ("truth", "expected"),
    [
        (
            Truth(mdlm_data_factor=4.0, r_star_ar=1.0, midpoint_tokens=1e5),
            "MDLM ahead at every point from 8.19k tokens",
        ),
        (Truth(mdlm_data_factor=0.05, midpoint_tokens=1e5), "not crossed within 400k tokens"),
    ],
    ids=["mdlm-always-ahead", "ar-always-ahead"],
)
def test_verdict_when_the_curves_never_cross(tmp_path, truth, expected):
    from crossover.analysis import analyze_study, verdicts

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = smoke_spec("planted")
    raw["grid"]["unique_tokens"] = ["50k"]
    write_study(raw, uri, truth)
    lines = verdicts(analyze_study(read_study("planted", uri)))
    assert len(lines) == 1 and lines[0].line.startswith(f"unique_tokens=50k: {expected}"), lines[0].line
    assert lines[0].metrics["crossed"] == 0.0 and "crossover_tokens" not in lines[0].metrics
    lead = lines[0].metrics["ar_lead_final"]
    assert (lead < 0) if "MDLM ahead" in expected else (lead > 0)


def test_analyze_on_loss_and_flops_axis(store, tmp_path):
    out = tmp_path / "loss"
    result = runner.invoke(
        app,
        [
            "analyze",
            "smoke",
            "--tracking-uri",
            store.uri,
            "--out",
            str(out),
            "--metric",
            "eval/heldout_loss/loss",
            "--x",
            "flops",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["higher_is_better"] is False and summary["x_axis"] == "flops"
    fits = {row["objective"]: row for row in summary["scaling"]}
    assert set(fits) == {"ar", "mdlm"}
    assert fits["ar"]["r_star"] < fits["mdlm"]["r_star"]  # AR's repeats lose their value sooner


def test_analyze_reads_the_study_name_from_a_spec_file(store, tmp_path):
    spec = tmp_path / "smoke.yaml"
    spec.write_text(yaml.safe_dump(smoke_spec()))
    result = runner.invoke(app, ["analyze", str(spec), "--tracking-uri", store.uri, "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "report.html").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nosuchstudy"], "no study named 'nosuchstudy'"),
        (["smok"], "did you mean 'smoke'?"),
        (["waiting"], "no evaluation points yet"),
        (["smoke", "--metric", "eval/nope/acc"], "logged no metric 'eval/nope/acc'"),
        (["smoke", "--x", "steps"], "unknown compute axis 'steps'"),
    ],
)
def test_user_errors_exit_2_with_one_clear_message(store, tmp_path, args, message):
    result = runner.invoke(app, ["analyze", *args, "--tracking-uri", store.uri, "--out", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


def test_analysis_through_a_real_mlflow_server_matches_the_sqlite_store(store, tmp_path):
    """The cluster path: the same store served by `mlflow server` on loopback is read through the REST API (the
    public per-run client calls instead of the bulk SQL read) and gives the same curves and the same report."""
    with mlflow_server(tmp_path / "server", backend_uri=store.uri) as url:
        remote = read_study("smoke", url)
        local = read_study("smoke", store.uri)
        cols = [c for c in local.curves.columns if not c.startswith("items/")]
        assert remote.curves[cols].equals(local.curves[cols])
        assert remote.item_tasks == ["heldout_cloze"]
        result = runner.invoke(app, ["analyze", "smoke", "--tracking-uri", url, "--out", str(tmp_path / "r")])
        assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    cells = {row["cell"]: row for row in summary["crossovers"]}
    assert cells["unique_tokens=50k"]["status"] == "crossed"


def test_missing_store_and_unreachable_server_exit_2(tmp_path):
    missing = tmp_path / "nothing.db"
    result = runner.invoke(app, ["analyze", "smoke", "--tracking-uri", f"sqlite:///{missing}"])
    assert result.exit_code == 2 and "no MLflow store at" in result.output
    assert not missing.exists()  # MLflow would have created an empty database
    url = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(app, ["analyze", "smoke", "--tracking-uri", url])
    assert result.exit_code == 2 and "cannot reach the MLflow tracking server" in result.output


def _log_points(run: TrialRun, points: int, first: float = 5.0) -> None:
    for i in range(points):
        run.log({eval_key("heldout_loss", "loss"): first - i, "tokens": 4096 * (i + 1)}, step=4096 * (i + 1))


def test_a_retried_trial_counts_once(tmp_path):
    """A crashed trial that reruns continues its run (the platform finds it by trial id and parent); the steps it
    had logged are not logged again (a rerun recomputes them exactly): one run, one row per step."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec, parent_run_id = start(smoke_spec("retry"), uri)
    for trial in spec.expand():
        for points in (2, 3) if trial.objective == "ar" else (3,):  # AR crashed once after 2 evals, then reran
            run = TrialRun(trial, uri, parent_run_id)
            _log_points(run, points, first=5.0 if points == 3 else 9.0)
            run.finish(error="worker died" if points == 2 else None)
    data = read_study("retry", uri, items=False)
    assert len(data.trials) == 4 and set(data.trials["status"]) == {"FINISHED"}
    assert len(data.curves) == 4 * 3
    firsts = data.curves.groupby("trial")["eval/heldout_loss/loss"].first()
    assert all(v == (9.0 if name.startswith("ar-") else 5.0) for name, v in firsts.items())  # the first attempt's
    lasts = data.curves.groupby("trial")["eval/heldout_loss/loss"].last()
    assert (lasts == 3.0).all()  # AR's third point came from the rerun (5.0 - 2)


def test_only_the_current_parent_runs_are_read_after_a_fresh_start(tmp_path):
    """`crossover run --fresh` marks the old parent `superseded` and starts a new one: the analysis reads only the
    new parent's trial runs, even where the old ones went further. Without a current parent (a fresh start cut off
    between the two steps) it falls back to every trial run, one per trial id: the one with the most eval points."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = smoke_spec("again")
    old_parent = write_study(raw, uri, SMOKE_TRUTH, items=False)
    spec, new_parent = start(raw, uri, fresh=True)
    assert new_parent != old_parent
    for trial in spec.expand()[:2]:  # the fresh start has run two of its four trials so far, 3 eval points each
        run = TrialRun(trial, uri, new_parent)
        _log_points(run, 3)
        run.finish()
    finish_study(uri, new_parent)

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    assert client.get_run(old_parent).data.tags[TAG_ROLE] == "superseded"
    data = read_study("again", uri, items=False)
    assert data.parent_run_id == new_parent
    assert len(data.trials) == 2 and set(data.trials["parent_run_id"]) == {new_parent}
    assert len(load_curves("again", uri)) == 2 * 3
    assert set(data.curves["run_id"]) == set(data.trials["run_id"])

    client.set_tag(new_parent, TAG_ROLE, "superseded")  # no current parent: every trial run, deduplicated
    data = read_study("again", uri, items=False)
    assert len(data.trials) == 4 and data.trials["trial_id"].is_unique
    old_runs = {
        r.info.run_id for r in client.search_runs([data.experiment_id], f"tags.`{TAG_PARENT}` = '{old_parent}'")
    }
    assert set(data.trials["run_id"]) <= old_runs  # 12 eval points beat the new runs' 3
    assert len(data.curves) == 4 * 12


def test_items_tag_marks_the_runs_with_item_artifacts(store):
    data = read_study("smoke", store.uri)
    assert data.item_tasks == ["heldout_cloze"]
    assert set(data.trials["item_tasks"]) == {"heldout_cloze"}
    assert TAG_ITEMS == "crossover.items"
    first = data.curves["items/heldout_cloze"].iloc[0]
    assert set(first) == {"ids", "acc", "delta_nll", "nll"} and isinstance(first["acc"], np.ndarray)


def test_report_opens_in_headless_chromium_with_every_image_loaded(store, tmp_path):
    out = tmp_path / "report"
    result = runner.invoke(app, ["analyze", "smoke", "--tracking-uri", store.uri, "--out", str(out)])
    assert result.exit_code == 0, result.output
    shot = assert_report_renders(out / "report.html", tmp_path, min_images=5)
    keep = os.environ.get("CROSSOVER_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


def _markdown_tables(markdown: str) -> list[list[list[str]]]:
    """Each table of a Markdown report as rows of cells, its header first (the separator row left out)."""
    tables, rows = [], []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            if not line.startswith("|---"):
                rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
        elif rows:
            tables.append(rows)
            rows = []
    return tables


def test_report_has_no_empty_column_or_csv_file(store, tmp_path):
    out = tmp_path / "report"
    result = runner.invoke(app, ["analyze", "smoke", "--tracking-uri", store.uri, "--out", str(out)])
    assert result.exit_code == 0, result.output
    tables = _markdown_tables((out / "report.md").read_text())
    assert len(tables) >= 5
    for header, *rows in tables:
        for i, column in enumerate(header):
            assert any(row[i] for row in rows), f"the report's column '{column}' is empty"
    written = sorted(p.name for p in out.glob("*.csv"))
    assert written == ["critical_compute.csv", "crossovers.csv", "delta_nll.csv", "efficiency.csv", "scaling.csv"]
    assert all(len(pd.read_csv(out / name)) for name in written)
    assert json.loads((out / "summary.json").read_text())["not_written"] == {}

    # three eval points: too few for a scaling law, so no scaling.csv nor critical_compute.csv, and the report says why
    raw = smoke_spec("short")
    uri = f"sqlite:///{tmp_path / 'short.db'}"
    write_study(raw, uri, SMOKE_TRUTH, items=False, steps=[100_000, 200_000, 400_000])
    short = tmp_path / "short"
    result = runner.invoke(app, ["analyze", "short", "--tracking-uri", uri, "--out", str(short)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in short.glob("*.csv")) == ["crossovers.csv", "delta_nll.csv", "efficiency.csv"]
    assert all(len(pd.read_csv(p)) for p in short.glob("*.csv"))
    markdown = (short / "report.md").read_text()
    not_written = json.loads((short / "summary.json").read_text())["not_written"]
    assert set(not_written) == {"scaling.csv", "critical_compute.csv"}
    for name, why in not_written.items():
        assert f"- No {name}: {why}." in markdown
    assert "- Beside this report: crossovers.csv, efficiency.csv, delta_nll.csv and summary.json." in markdown
    for header, *rows in _markdown_tables(markdown):
        assert all(any(row[i] for row in rows) for i in range(len(header))), header


def test_figures_label_their_axes_and_draw_the_chance_line(store):
    import matplotlib

    matplotlib.use("Agg", force=True)
    from crossover.analysis import plots
    from crossover.analysis.analyze import analyze_study

    data = read_study("smoke", store.uri)
    analysis = analyze_study(data)
    assert analysis.metric.startswith("eval/heldout_cloze/acc")  # an accuracy of a four-way multiple choice
    figures = {
        "cells": plots.cell_curves(analysis, data),
        "axis": plots.crossover_vs_axis(analysis, "unique_tokens"),
        "efficiency": plots.efficiency_bars(analysis),
        "scaling": plots.scaling_fits(analysis, data),
        "delta": plots.delta_nll_view(analysis, data),
    }
    for name, fig in figures.items():
        shown = [ax for ax in fig.axes if ax.get_visible()]
        assert shown and all(ax.get_xlabel() for ax in shown), name
    (bars,) = figures["efficiency"].axes  # each ratio drawn with its interval, and the interval in its label
    with_interval = int(analysis.efficiency.table["ci_low"].notna().sum())
    assert with_interval and sum("90% CI " in text.get_text() for text in bars.texts) == with_interval

    def chance_lines(ax) -> list:
        return [line for line in ax.get_lines() if str(line.get_label()).startswith("chance")]

    cells = [ax for ax in figures["cells"].axes if ax.get_visible()]
    assert len(cells) == 2
    for ax in cells:
        (line,) = chance_lines(ax)
        assert list(line.get_ydata()) == [0.25, 0.25] and line.get_label() == "chance (0.25)"
        assert ax.get_xlabel() == "training tokens" and ax.get_ylabel() == analysis.metric.removeprefix("eval/")
    assert "chance (0.25)" in [t.get_text() for t in cells[0].get_legend().get_texts()]
    loss, accuracy, *delta = figures["delta"].axes  # the chance line on the accuracy only
    assert not chance_lines(loss) and len(chance_lines(accuracy)) == 1
    assert "chance" in [t.get_text() for t in accuracy.texts] and not loss.texts  # said on the panel itself
    assert not any(chance_lines(ax) for ax in delta)
    # no chance line where the metric is no accuracy
    on_loss = analyze_study(data, metric="eval/heldout_loss/loss")
    assert not any(chance_lines(ax) for ax in plots.cell_curves(on_loss, data).axes)
    assert plots.chance_level(data.curves, "eval/heldout_cloze/delta_nll") is None


def test_noise_study_compares_ar_noise_variants_with_the_clean_mdlm(tmp_path):
    """As in paper_noise.yaml: only AR gets input-mask or dropout noise; MDLM is the clean reference. Two seeds give
    seed-bootstrap intervals; the crossover is plotted against the categorical noise axis."""
    raw = smoke_spec("noise")
    raw["grid"] = {"objective": ["ar", "mdlm"], "noise": [{}, {"input_mask": 0.1}, {"dropout": 0.1}]}
    raw["data"]["unique_tokens"] = "50k"
    raw["eval"]["tasks"] = ["heldout_loss", "heldout_cloze"]
    raw["exclude"] = [{"objective": "mdlm", "noise": [{"input_mask": 0.1}, {"dropout": 0.1}]}]
    raw["seeds"] = [0, 1]
    trials = parse_study(raw).expand()
    assert len(trials) == 8
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    write_study(raw, uri, SMOKE_TRUTH, items=False)
    out = tmp_path / "report"
    result = runner.invoke(app, ["analyze", "noise", "--tracking-uri", uri, "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    rows = {row["noise"]: row for row in summary["crossovers"]}
    assert set(rows) == {"clean", "im0.1", "do0.1"}
    for noise in ("im0.1", "do0.1"):
        assert rows[noise]["reference"] == "MDLM from noise=clean"
        assert rows[noise]["status"] in ("crossed", "not_crossed", "mdlm_always_ahead")
        assert rows[noise]["ci_source"] == "seeds as a t with 1 df, 2 seeds"
    assert (out / "figures" / "crossover_vs_noise.png").is_file()
    assert "compared with" in (out / "report.md").read_text()


# AR peaks early and decays after 2 epochs (its accuracy too); MDLM learns at 0.35x per token and never reaches AR's
# best at the same budget, but at 50k and 100k its final is above AR's decayed final. Population values (best/final):
# 50k AR 0.598/0.355, MDLM 0.539; 100k AR 0.677/0.539, MDLM 0.600.
DECAYING_AR = Truth(
    r_star_ar=2.0,
    r_star_mdlm=2.0,
    mdlm_data_factor=0.35,
    ar_overfit_epochs=2,
    ar_overfit_skill=2.0,
    ar_overfit_loss=0.3,
    midpoint_tokens=1e5,
    items=300,
)


def test_efficiency_is_against_an_early_stopped_ar_and_says_when_mdlm_is_not_more_data_efficient(tmp_path):
    """The headline U'/U compares each trial's best value: MDLM below AR's best at its budget reads "not more
    data-efficient" (a ratio below 1), never the ratio above 1 that AR's decayed final gives; both carry an item
    bootstrap interval that says what it resamples."""
    from crossover.analysis import analyze_study, verdicts

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = smoke_spec("decaying")
    raw["grid"]["unique_tokens"] = ["25k", "50k", "100k", "200k"]
    raw["exclude"] = [{"objective": "mdlm", "unique_tokens": ["200k"]}]  # AR alone there, as in cpu_efficiency
    write_study(raw, uri, dataclasses.replace(DECAYING_AR, items=1200))  # about half of them test items
    analysis = analyze_study(read_study("decaying", uri), n_boot=300)
    table = analysis.efficiency.table.set_index("unique_tokens")
    for budget in (50_000, 100_000):
        row = table.loc[budget]
        assert row["ratio"] < 1 and row["ci_low"] <= row["ratio"] <= row["ci_high"], row  # against AR's best
        assert row["ratio_final"] > row["ratio"] and row["ci_source"] == "items, 1 seed"
        assert row["mdlm_best"] == row["mdlm_final"]  # MDLM's last on both bases
        # no anneal runs: AR's best is the eval point its validation items chose, read on the test items
        assert row["ar_best_source"] == "validation-chosen eval point (not annealed)"
        assert analysis.ar_best.by_cell[f"unique_tokens={budget // 1000}k"].value == pytest.approx(row["ar_best"])
    assert table.loc[100_000, "ci_high"] < 1
    assert table.loc[50_000, "ratio_final"] > 1.4 and table.loc[50_000, "ci_low_final"] > 1  # AR's decay, as a gain
    lines = {v.cell: v for v in verdicts(analysis)}
    assert lines["unique_tokens=200k"].line == (
        "unique_tokens=200k: AR only, no crossover: the study has no MDLM trial here (its AR runs count in the "
        "data-efficiency ratios)"
    )
    line = lines["unique_tokens=50k"].line
    assert "MDLM not more data-efficient than an early-stopped AR: data efficiency 0." in line, line
    assert "against AR's best" in line and "; final vs final " in line and "90% intervals over items, 1 seed" in line
    metrics = lines["unique_tokens=50k"].metrics
    assert metrics["efficiency"] < 1 < metrics["efficiency_final"]
    # below AR's best at every budget: at the smallest budget the ratio is bounded by 1 (U_min / U), not more efficient
    smallest = table.loc[25_000]
    assert smallest["status"] == "below_range" and smallest["bound"] == pytest.approx(1.0)
    assert (
        "MDLM not more data-efficient than an early-stopped AR: data efficiency < 1x" in lines["unique_tokens=25k"].line
    )


def test_an_efficiency_interval_over_seeds_at_some_budgets_says_how_many_each_had(tmp_path):
    """Seeds at the smallest budget only (as study_specs/cpu_efficiency.yaml): the interval resamples seeds where a
    budget has them and says the range, not "1 seed"."""
    from crossover.analysis import analyze_study

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = smoke_spec("some-seeds")
    raw["grid"]["unique_tokens"] = ["25k", "50k", "100k"]
    raw["seeds"] = [0, 1, 2]
    raw["exclude"] = [{"unique_tokens": ["50k", "100k"], "seed": [1, 2]}]
    write_study(raw, uri, SMOKE_TRUTH)
    table = analyze_study(read_study("some-seeds", uri), n_boot=100).efficiency.table
    assert set(table["ci_source"]) == {"seeds then items, 1 to 3 seeds by budget and objective"}


def test_three_seeds_give_a_seed_then_item_interval_and_the_spread_across_seeds(tmp_path):
    """A cell with three seeds (as study_specs/cpu_crossover_seeds.yaml): the crossover interval resamples seeds, then
    items, and says so; the verdict gives each seed pair's own crossover and the spread of AR's best and MDLM's last."""
    from crossover.analysis import analyze_study, verdicts

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = smoke_spec("seeds")
    raw["grid"]["unique_tokens"] = ["50k"]
    raw["seeds"] = [0, 1, 2]
    write_study(raw, uri, SMOKE_TRUTH)
    analysis = analyze_study(read_study("seeds", uri), n_boot=200)
    row = analysis.crossovers.table.set_index("cell").loc["unique_tokens=50k"]
    assert row["ci_source"] == "seeds as a t with 2 df and items, 3 seeds" and row["seeds_ar"] == row["seeds_mdlm"] == 3
    assert len(row["seed_crossover_tokens"]) == 3 and row["ar_best_sd"] > 0 and row["mdlm_final_sd"] > 0
    (verdict,) = verdicts(analysis)
    assert "across 3 seeds: crossover per seed " in verdict.line and "AR's best varies by" in verdict.line
    assert "90% CI" in verdict.line and 0 <= verdict.metrics["seeds_crossed"] <= 1
    out = tmp_path / "report"
    assert runner.invoke(app, ["analyze", "seeds", "--tracking-uri", uri, "--out", str(out)]).exit_code == 0
    summary = json.loads((out / "summary.json").read_text())
    (cell,) = summary["crossovers"]
    assert len(cell["seed_crossover_tokens"]) == 3 and "per seed" in (out / "report.md").read_text()
    # MDLM's choices decoded left to right (the default, no Monte Carlo): no note of a Monte Carlo handicap
    assert not any("Monte Carlo samples" in note for note in summary["notes"]), summary["notes"]


def test_the_delta_nll_view_claims_only_what_the_accuracy_shows(tmp_path):
    """Rising held-out loss reads "not worse answers" only where the paired change of the study's accuracy on the
    same items has its whole interval above -0.02, the equivalence margin (AR still gaining from repeats while its
    loss rises after 2 epochs); where it fell surely (AR decaying after 2 epochs) the line says so plainly, whatever
    Delta NLL did."""
    from crossover.analysis import analyze_study
    from crossover.analysis.verdict import delta_nll_lines

    uri = f"sqlite:///{tmp_path / 'holds.db'}"
    raw = smoke_spec("holds")
    raw["grid"]["unique_tokens"] = ["50k"]
    write_study(
        raw,
        uri,
        Truth(
            r_star_ar=15.0,
            ar_overfit_epochs=2,
            ar_overfit_loss=0.3,
            ar_overfit_skill=0.0,
            midpoint_tokens=1e5,
            items=300,
        ),
    )
    holds = analyze_study(read_study("holds", uri), n_boot=50)
    assert holds.delta_nll.accuracy == "eval/heldout_cloze/acc"  # the study's metric
    lines = [line for line in delta_nll_lines(holds) if line.startswith("ar-U50k")]
    assert len(lines) == 1 and "rising loss is not worse answers here" in lines[0], lines
    assert "; heldout_cloze/acc " in lines[0] and " held: change +" in lines[0], lines[0]
    assert "paired on the same items; items, 1 seed x 300 items" in lines[0]
    assert "lies above -0.02, the equivalence margin" in lines[0]
    row = holds.delta_nll.table.set_index("trial").loc["ar-U50k-nano-s0"]
    assert row["loss_rise"] > 0.05 and row["acc_change_ci"][0] > -0.02
    assert row["acc_change"] == pytest.approx(row["acc_final"] - row["acc_at_min"])

    uri = f"sqlite:///{tmp_path / 'falls.db'}"
    raw = smoke_spec("decaying")
    raw["grid"]["unique_tokens"] = ["50k"]
    write_study(raw, uri, DECAYING_AR)
    falls = analyze_study(read_study("decaying", uri), n_boot=50)
    lines = [line for line in delta_nll_lines(falls) if line.startswith("ar-U50k")]
    assert len(lines) == 1 and "here rising loss did come with worse answers" in lines[0], lines
    assert "not worse answers" not in lines[0]
    row = falls.delta_nll.table.set_index("trial").loc["ar-U50k-nano-s0"]
    assert row["acc_change_ci"][1] < 0 and " fell: change -" in lines[0]


def test_the_verdict_gives_every_scoring_side_by_side_and_says_where_it_holds(tmp_path):
    """acc, acc_norm and acc_pmi each get their crossover; where AR's PMI answers are much better, the PMI verdict
    differs and the headline says on how many scorings it holds."""
    from crossover.analysis import analyze_study, verdicts

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = smoke_spec("scorings")
    raw["grid"]["unique_tokens"] = ["50k"]
    write_study(raw, uri, dataclasses.replace(SMOKE_TRUTH, pmi_ar_shift=3.0, mdlm_data_factor=0.7))  # a clear crossing
    analysis = analyze_study(read_study("scorings", uri), metric="eval/heldout_cloze/acc", n_boot=100)
    assert set(analysis.scorings) == {"eval/heldout_cloze/acc_norm", "eval/heldout_cloze/acc_pmi"}
    assert analysis.scorings["eval/heldout_cloze/acc_pmi"].crossovers.table.iloc[0]["status"] == "not_crossed"
    (verdict,) = verdicts(analysis)
    assert verdict.line.startswith("unique_tokens=50k: MDLM overtakes AR on heldout_cloze/acc at "), verdict.line
    assert "; by scoring: acc crossed at " in verdict.line and ", acc_pmi not crossed (" in verdict.line
    assert "this verdict holds on 2 of 3 scorings" in verdict.line and verdict.metrics["scorings_agree"] == 2 / 3


def test_the_analysis_names_mdlm_scored_in_blocks_as_a_handicap():
    """MDLM's multiple choice scored in blocks of more than one token (eval.mdlm_block > 1: cheaper and weaker than its
    exact chain rule) gets a note, block 1 none; so do a small ELBO K and, for runs from before the block size, an
    eval.mdlm_steps below the cloze's 16-token spans. AR's settings never matter."""
    import pandas as pd

    from crossover.analysis.analyze import _monte_carlo_note
    from crossover.analysis.curves import StudyData

    def note(**params: str) -> str | None:
        trials = pd.DataFrame({"objective": ["ar", "mdlm"], **{key: [value] * 2 for key, value in params.items()}})
        data = StudyData(
            study="s",
            tracking_uri="sqlite://",
            experiment_id="0",
            parent_run_id=None,
            trials=trials,
            curves=pd.DataFrame(),
        )
        return _monte_carlo_note(data)

    k4 = {"eval.mc_samples": "4"}
    assert note(**k4, **{"eval.mdlm_block": "1"}) is None
    blocks = note(**k4, **{"eval.mdlm_block": "4"})
    assert blocks.startswith("MDLM scored in blocks of 4 tokens (eval.mdlm_block): a weaker, cheaper approximation")
    assert "its likelihoods are a lower estimate" in blocks and "Monte Carlo" not in blocks
    assert "K = 4 Monte Carlo samples" in note(**k4, **{"eval.mdlm_block": "None"})
    assert note(**{"eval.mc_samples": "32", "eval.mdlm_block": "None"}) is None
    assert "in 4 steps (eval.mdlm_steps" in note(**k4, **{"eval.mdlm_steps": "4"})
    assert note(**k4, **{"eval.mdlm_steps": "16"}) is None  # one token per step on the cloze's spans
    assert "K = 4 Monte Carlo samples" in note(**k4)  # a run from before either setting: the ELBO
