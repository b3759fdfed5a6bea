"""Progress a user sees while a study runs: the driver's display (live table or --quiet lines) and `crossover status`
from another terminal, both from every log point of every trial."""

import io
from types import SimpleNamespace

from rich.console import Console
from typer.testing import CliRunner

from crossover.cli import app
from crossover.platform.progress import QUIET_EVERY_S, ProgressCallback, StudyProgress
from crossover.platform.tracking import TrialRun, start_study
from crossover.specs import format_seconds, format_tokens, parse_study

from .conftest import tiny_study


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tune_trial(name: str) -> SimpleNamespace:
    return SimpleNamespace(config={"trial": {"name": name}}, trial_id="t0")


def log_point(tokens: int, rate: float, **metrics: float) -> dict:
    return {"tokens": tokens, "epoch": tokens / 10240, "tokens_per_s": rate, "train/loss": 5.0, **metrics}


def test_quiet_progress_prints_a_trial_at_most_every_30_s_and_every_change_of_status(tiny_corpus):
    trials = parse_study(tiny_study(tiny_corpus)).expand()
    ar, mdlm = (tune_trial(t.name) for t in trials)
    console, clock = Console(file=io.StringIO(), width=200), Clock()
    with StudyProgress("tiny", trials, console, quiet=True, clock=clock):
        callback = ProgressCallback("tiny")  # what Tune calls: it finds the display by the study's name
        callback.on_trial_start(0, [], ar)
        for second in range(0, 95, 5):  # a log point every 5 s for 95 s
            clock.now = 1000.0 + second
            callback.on_trial_result(0, [], ar, log_point(1024 * (second + 1), 2048.0))
        callback.on_trial_result(0, [], mdlm, log_point(1024, 1024.0, **{"eval/heldout_loss/loss": 6.5}))
        clock.now += 1
        callback.on_trial_complete(0, [], ar)
    lines = console.file.getvalue().splitlines()
    ar_lines = [line for line in lines if line.startswith(ar.config["trial"]["name"])]
    # started (a change), then 30, 60 and 90 s later, then finished (a change): never two within 30 s otherwise
    assert QUIET_EVERY_S == 30
    assert [line.split(":")[1].split()[0] for line in ar_lines] == ["running"] * 4 + ["finished"]
    running_at_90 = ar_lines[-2]
    assert f"{format_tokens(91 * 1024)} tokens" in running_at_90 and "2,048 tok/s" in running_at_90
    total = trials[0].total_tokens
    assert f"ETA {format_seconds((total - 91 * 1024) / 2048.0)}" in running_at_90
    assert "ETA" not in ar_lines[-1]  # a finished trial has none
    (mdlm_line,) = [line for line in lines if line.startswith(mdlm.config["trial"]["name"])]
    assert "eval/heldout_loss/loss 6.5" in mdlm_line and "1,024 tok/s" in mdlm_line


def test_live_table_keeps_the_last_eval_metrics_between_eval_points(tiny_corpus):
    trials = parse_study(tiny_study(tiny_corpus)).expand()
    name = trials[0].name
    console = Console(file=io.StringIO(), width=200, force_terminal=True)
    display = StudyProgress("tiny", trials, console)
    display.event(tune_trial(name), "running", tokens=4096, rate=512.0,
                  metrics={"train/loss": 5.5, "eval/heldout_loss/loss": 6.25})  # fmt: skip
    display.event(tune_trial(name), "running", tokens=8192, rate=512.0, metrics={"train/loss": 5.0})
    row = display.rows[name]
    assert row["metrics"] == {"train/loss": 5.0, "eval/heldout_loss/loss": 6.25}
    rendered = Console(file=io.StringIO(), width=200)
    rendered.print(display.render())
    text = rendered.file.getvalue()
    assert "5.0000" in text and "6.2500" in text and format_seconds((trials[0].total_tokens - 8192) / 512) in text


def test_status_shows_a_running_trials_tokens_per_second_and_eta_from_mlflow(tmp_path, tiny_corpus):
    spec = parse_study(tiny_study(tiny_corpus))
    trial = spec.expand()[0]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = start_study(spec, "name: tiny\n", uri)
    run = TrialRun(trial, uri, parent)
    run.log({"train/loss": 5.25, "tokens": 10240, "epoch": 1.0, "tokens_per_s": 1024.0}, 10240)  # not finished
    result = CliRunner().invoke(app, ["status", "tiny", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith(trial.name)]
    assert "RUNNING" in line and "5.2500" in line and "1,024" in line
    assert format_seconds((trial.total_tokens - 10240) / 1024.0) in line
