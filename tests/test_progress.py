"""Progress a user sees while a study runs: the driver's display (live table or --quiet lines) and `crossover status`
from another terminal, both from every log point of every trial, with one rate (crossover.platform.rates)."""

import io
from types import SimpleNamespace

import pytest
from rich.console import Console
from typer.testing import CliRunner

from crossover.cli import app
from crossover.platform.launch import LAUNCH
from crossover.platform.progress import QUIET_EVERY_S, ProgressCallback, StudyProgress
from crossover.platform.rates import RATE_WINDOW_S, eta_seconds, recent_points, smoothed_rate
from crossover.platform.tracking import TrialRun, start_study
from crossover.specs import format_seconds, format_tokens, parse_study

from .conftest import tiny_study


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tune_trial(name: str) -> SimpleNamespace:
    return SimpleNamespace(config={LAUNCH: {"trial": {"name": name}}}, trial_id="t0")


def log_point(tokens: int, rate: float, **metrics: float) -> dict:
    return {"tokens": tokens, "epoch": tokens / 10240, "tokens_per_s": rate, "train/loss": 5.0, **metrics}


def test_quiet_progress_prints_a_trial_at_most_every_30_s_and_every_change_of_status(tiny_corpus):
    trials = parse_study(tiny_study(tiny_corpus)).expand()
    ar, mdlm = (tune_trial(t.name) for t in trials)
    console, clock = Console(file=io.StringIO(), width=200), Clock()
    with StudyProgress("tiny", trials, console, quiet=True, clock=clock):
        callback = ProgressCallback("tiny")  # what Tune calls: it finds the display by the study's name
        callback.on_trial_start(0, [], ar)
        for second in range(0, 95, 5):  # a log point every 5 s for 95 s: 1,024 tokens/s
            clock.now = 1000.0 + second
            callback.on_trial_result(0, [], ar, log_point(1024 * (second + 1), 599.0))  # its last step's own rate
        callback.on_trial_result(0, [], mdlm, log_point(1024, 1024.0, **{"eval/heldout_loss/loss": 6.5}))
        clock.now += 1
        callback.on_trial_complete(0, [], ar)
    lines = console.file.getvalue().splitlines()
    ar_lines = [line for line in lines if line.startswith(ar.config[LAUNCH]["trial"]["name"])]
    # started (a change), then 30, 60 and 90 s later, then finished (a change): never two within 30 s otherwise
    assert QUIET_EVERY_S == 30
    assert [line.split(":")[1].split()[0] for line in ar_lines] == ["running"] * 4 + ["finished"]
    running_at_90 = ar_lines[-2]
    # the rate over the last minute of reports, not the last step's (an eval point's is a tenth of it)
    assert f"{format_tokens(91 * 1024)} tokens" in running_at_90 and "1,024 tok/s" in running_at_90
    assert "599" not in running_at_90
    total = trials[0].total_tokens
    assert f"ETA {format_seconds((total - 91 * 1024) / 1024.0)}" in running_at_90
    assert "ETA" not in ar_lines[-1]  # a finished trial has none
    (mdlm_line,) = [line for line in lines if line.startswith(mdlm.config[LAUNCH]["trial"]["name"])]
    assert "eval/heldout_loss/loss 6.5" in mdlm_line and "tok/s" not in mdlm_line  # one report: no rate yet


def test_live_table_keeps_the_last_eval_metrics_between_eval_points(tiny_corpus):
    trials = parse_study(tiny_study(tiny_corpus)).expand()
    name = trials[0].name
    console, clock = Console(file=io.StringIO(), width=200, force_terminal=True), Clock()
    display = StudyProgress("tiny", trials, console, clock=clock)
    display.event(tune_trial(name), "running", tokens=4096, metrics={"train/loss": 5.5, "eval/heldout_loss/loss": 6.25})
    clock.now += 8  # 4,096 tokens in 8 s
    display.event(tune_trial(name), "running", tokens=8192, metrics={"train/loss": 5.0})
    row = display.rows[name]
    assert row["metrics"] == {"train/loss": 5.0, "eval/heldout_loss/loss": 6.25}
    rendered = Console(file=io.StringIO(), width=200)
    rendered.print(display.render())
    text = rendered.file.getvalue()
    assert "5.0000" in text and "6.2500" in text and format_seconds((trials[0].total_tokens - 8192) / 512) in text


def eval_dip_history(seconds: float = 300.0) -> list[tuple[float, int, float]]:
    """A trial's log points as its trainer reports them: (wall time, tokens seen, its last step's own tokens/s). A
    step of 10,240 tokens every 2 s (5,120 tokens/s), and every 10th step also evaluates for 15 s, so its own rate
    dips to ~600 there; the history ends on such a step, as the new user's did."""
    points, now, tokens, step = [], 0.0, 0, 0
    while now < seconds or step % 10:
        step += 1
        took = 2.0 + (15.0 if step % 10 == 0 else 0.0)
        now, tokens = now + took, tokens + 10240
        points.append((now, tokens, 10240 / took))
    return points


def test_the_rate_is_tokens_over_time_across_the_last_minute_of_log_points():
    history = eval_dip_history()
    assert history[-1][2] < 610  # the last step's own rate: an eval point's
    points = [(when, tokens) for when, tokens, _ in history]
    recent = recent_points(points)
    # from the last point at or before a minute before the end, to the end
    assert recent[0][0] <= points[-1][0] - RATE_WINDOW_S < recent[1][0] and recent[-1] == points[-1]
    rate = smoothed_rate(points)
    assert rate == (recent[-1][1] - recent[0][1]) / (recent[-1][0] - recent[0][0])
    # at every log point after the first minute, eval dips included, the rate stays within 15% of the study's
    # pace (10 steps per 35 s), never near a dip's 602 tok/s, and below the rate between evaluations
    pace = 10 * 10240 / 35
    for end in range(len(points)):
        if points[end][0] >= RATE_WINDOW_S:
            assert 0.85 * pace <= smoothed_rate(points[: end + 1]) <= min(1.15 * pace, 5120), end
    # shorter than a minute: the whole history; one point or no time: no rate
    assert smoothed_rate(points[:3]) == (points[2][1] - points[0][1]) / (points[2][0] - points[0][0])
    assert smoothed_rate(points[:1]) is None and smoothed_rate([(5.0, 10), (5.0, 20)]) is None
    # a trial restarted from a checkpoint: only its current attempt counts
    restarted = [*points[:20], (points[19][0] + 30, 40960), (points[19][0] + 34, 61440)]
    assert smoothed_rate(restarted) == 20480 / 4
    assert eta_seconds(100_000, 60_000, 400.0) == 100.0 and eta_seconds(None, 0, 400.0) is None
    assert eta_seconds(100_000, 0, None) is None


def test_status_and_the_run_show_the_same_rate_over_the_last_minute_not_the_last_steps(tmp_path, tiny_corpus):
    """The new user's case: `crossover status` showed a trial's last step's own rate, an eval point's dip (599
    tok/s where it trains at ~5,000), and an ETA ten times too long. Both now show the rate over the last minute."""
    from mlflow.entities import Metric

    spec = parse_study(tiny_study(tiny_corpus, train={"total_tokens": "4M"}))
    trial = spec.expand()[0]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = start_study(spec, "name: tiny\n", uri)
    run = TrialRun(trial, uri, parent)
    history = eval_dip_history()
    start_ms = 1_700_000_000_000
    for when, tokens, own_rate in history:  # logged as the trainer logs them, at these wall times
        stamp = start_ms + int(when * 1000)
        values = {"tokens": tokens, "epoch": tokens / 10240, "tokens_per_s": own_rate, "train/loss": 5.25}
        run.client.log_batch(run.run_id, metrics=[Metric(k, float(v), stamp, tokens) for k, v in values.items()])
    result = CliRunner().invoke(app, ["status", "tiny", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith(trial.name)]
    expected = smoothed_rate([(start_ms / 1000 + when, tokens) for when, tokens, _ in history])
    tokens = history[-1][1]
    cells = line.split()
    assert "RUNNING" in cells and f"{expected:,.0f}" in cells and f"{history[-1][2]:,.0f}" not in cells, line
    assert format_seconds((trial.total_tokens - tokens) / expected) in line

    # the run's display, hearing the same reports at the same times, shows the same rate and ETA
    clock = Clock()
    display = StudyProgress("tiny", [trial], Console(file=io.StringIO(), width=200), quiet=True, clock=clock)
    callback = ProgressCallback("tiny")
    with display:
        for when, tokens_seen, own_rate in history:
            clock.now = start_ms / 1000 + when
            callback.on_trial_result(0, [], tune_trial(trial.name), log_point(tokens_seen, own_rate))
    assert display.rows[trial.name]["rate"] == pytest.approx(expected)
    assert display._eta(trial.name, display.rows[trial.name]) == format_seconds(
        (trial.total_tokens - tokens) / expected
    )
