"""One way to print values, positions and intervals (crossover.analysis.formatting), and verdict lines that name
their metric in every state."""

from __future__ import annotations

import math

import pytest

from crossover.analysis import analyze_study, read_study, verdicts
from crossover.analysis.formatting import BEFORE_START, PAST_END, interval, number, position, ratio, significant

from .analysis_support import write_study
from .synthetic import Truth
from .test_analysis_mlflow import smoke_spec


def test_positions_and_intervals_read_in_words():
    assert significant(29.7, 1) == "30" and significant(47.92, 3) == "47.9" and significant(0.02371, 2) == "0.024"
    assert position(1.5e6, "tokens") == "1.5M" and position(2.34567, "epochs", unit=True) == "2.35 epochs"
    assert position(math.inf, "tokens") == PAST_END == "past the end"
    assert position(-math.inf, "flops") == BEFORE_START and position(float("nan"), "tokens") == ""
    assert interval(1.2e6, math.inf, "tokens") == "1.2M to past the end"
    assert interval(math.inf, math.inf, "tokens") == "entirely past the end"  # not "[beyond the end, beyond the end]"
    assert interval(-math.inf, -math.inf, "tokens") == "entirely before the first point"
    assert interval(None, 2.0, "tokens") == "" and number(None) == "" and number(0.123456) == "0.123"


def test_efficiency_bounds_read_as_inequalities_against_the_ar_budgets():
    assert ratio(0.0, below=0.5, above=4.0) == "< 0.5x" and ratio(math.inf, below=0.5, above=4.0) == "> 4x"
    assert ratio(1.23) == "1.2x" and ratio(0.0) == "below the AR budgets"


@pytest.mark.parametrize(
    "truth",
    [
        Truth(mdlm_data_factor=4.0, r_star_ar=1.0, midpoint_tokens=1e5),
        Truth(mdlm_data_factor=0.05, midpoint_tokens=1e5),
        Truth(),
    ],
    ids=["mdlm-always-ahead", "ar-always-ahead", "default"],
)
def test_every_verdict_line_names_its_metric(tmp_path, truth):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = smoke_spec("planted")
    write_study(raw, uri, truth)
    analysis = analyze_study(read_study("planted", uri))
    metric = analysis.metric.removeprefix("eval/")
    for verdict in verdicts(analysis):
        assert f" on {metric}" in verdict.line, verdict.line
        assert "beyond the end" not in verdict.line and "before the start" not in verdict.line
