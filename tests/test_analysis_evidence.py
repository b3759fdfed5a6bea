"""Verdicts that claim only what the evidence holds, on simulated studies written through the platform's MLflow
writer (tests/analysis_support.py: write_sim_study): a tie that must not read "crossed", a three-seed study whose
interval uses the seeds, and the paired differences behind "MDLM's last minus AR's best" and the Delta NLL view."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crossover.analysis import analyze_study, read_study, verdicts
from crossover.analysis.paired import paired_difference

from .analysis_support import sim_study, write_sim_study
from .test_analysis_mlflow import smoke_spec


def _one_cell(name: str, seeds: int) -> dict:
    raw = smoke_spec(name)
    raw["grid"]["unique_tokens"] = ["50k"]
    raw["eval"]["max_items"] = 256
    if seeds > 1:
        raw["seeds"] = list(range(seeds))
    return raw


def test_a_planted_tie_reads_undetermined_where_its_point_estimate_crosses(tmp_path):
    """MDLM approaches AR's plateau and ends 0.01 short of it. In this draw the smoothed estimate crosses (the old
    status would have printed "MDLM overtakes AR"); the evidence does not carry it: the state is undetermined, the
    estimate is quoted as such beside P(crossed) and both objectives' final values."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    write_sim_study(_one_cell("tie", 1), uri, sim_study("tie", noise=False), seed=TIE_DRAW)
    analysis = analyze_study(read_study("tie", uri))
    row = analysis.crossovers.table.iloc[0]
    assert row["point_status"] == "crossed" and row["status"] == "undetermined", row
    assert row["p_ahead_at_end"] < 0.9
    (verdict,) = verdicts(analysis)
    assert verdict.state == "undetermined" and verdict.metrics["state"] == 0.0 and verdict.metrics["crossed"] == 0.0
    assert verdict.line.startswith(
        "unique_tokens=50k: undetermined within 400k tokens (8 epochs): the evidence "
        "cannot tell whether MDLM ends ahead (the point estimate crosses at "
    ), verdict.line
    assert "P(crossed) " in verdict.line and "item noise only" in verdict.line
    assert "at the end AR " in verdict.line and "overtakes" not in verdict.line


TIE_DRAW = 4  # a draw of the tie whose smoothed estimate crosses (about half of them do)


def test_a_three_seed_study_uses_its_seeds_in_the_interval(tmp_path):
    """Three seeds with the training noise measured in cpu_crossover_seeds: the interval adds the seeds as a t with
    2 degrees of freedom to the items, the line says so, and it is wider than the items alone would make it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    write_sim_study(_one_cell("three", 3), uri, sim_study("ahead", noise=True), seed=1)
    data = read_study("three", uri)
    analysis = analyze_study(data)
    row = analysis.crossovers.table.iloc[0]
    assert row["ci_source"] == "seeds as a t with 2 df and items, 3 seeds" and row["seeds_ar"] == 3
    result = analysis.crossovers.results["unique_tokens=50k"]
    assert result.seeds == 3 and result.replicates.size == 1000
    (verdict,) = verdicts(analysis)
    assert "over seeds as a t with 2 df and items, 3 seeds" in verdict.line
    assert "across 3 seeds: crossover per seed " in verdict.line
    # MDLM's last against AR's best (chosen on the validation items, scored on the test items), paired by seed
    best = analysis.ar_best.by_cell["unique_tokens=50k"]
    d = best.difference
    assert best.source == "validation-chosen eval point (not annealed)" and best.test_items
    assert d.seeds == 3 and 100 < d.items < 156 and "3 seeds x" in d.source  # the test half of 256 items
    assert d.value == pytest.approx(best.mdlm_last - best.value)
    assert d.low < d.value < d.high
    assert f"MDLM's last minus AR's best {d.text(3)}" in verdict.line
    assert "(validation-chosen eval point (not annealed), on the test items)" in verdict.line
    assert verdict.metrics["last_minus_best"] == pytest.approx(d.value)
    # the same answers with the seeds pooled as if they were one seed's items: a narrower interval
    curves = data.curves.sort_values("step")
    pooled = {
        o: np.stack(
            [
                np.concatenate([r["items/heldout_cloze"]["acc"] for _, r in at.iterrows()])
                for _, at in curves[curves["objective"] == o].groupby("step")
            ]
        )
        for o in ("ar", "mdlm")
    }
    from crossover.analysis import find_crossover

    x = curves.groupby("step")["tokens"].first().to_numpy()
    items_only = find_crossover(
        x, pooled["ar"].mean(1), pooled["mdlm"].mean(1), ar_samples=pooled["ar"], mdlm_samples=pooled["mdlm"]
    )

    def width(ci):
        low, high = (min(max(b, x[0]), x[-1]) for b in ci)
        return math.log(high / low)

    assert width(result.ci) > width(items_only.ci), (result.ci, items_only.ci)


def test_paired_difference_uses_seeds_and_items_with_t_tails():
    rng = np.random.default_rng(0)
    items = 256
    difficulty = rng.standard_normal(items)
    offsets = np.array([0.05, -0.04, 0.08])  # training noise: each seed's own lead
    a = (rng.random((3, items)) < 0.5 + 0.1 * np.tanh(difficulty)).astype(float)
    b = (rng.random((3, items)) < (0.55 + offsets[:, None] + 0.1 * np.tanh(difficulty))).astype(float)
    found = paired_difference(a, b, confidence=0.9)
    assert found.value == pytest.approx((b - a).mean())
    assert found.seeds == 3 and found.items == items and "3 seeds x 256 items" in found.source
    one = paired_difference(a[0], b[0])
    assert one.seeds == 1 and "item noise only" in one.source
    # the seed spread enters: wider than one seed's item-only interval scaled to three seeds' items
    assert found.high - found.low > (one.high - one.low) / math.sqrt(3)
    assert not found.within(0.01) and found.text().startswith(f"{found.value:+.2f} (90% CI ")
    with pytest.raises(ValueError, match="same"):
        paired_difference(a, b[:2])


def test_paired_difference_covers_at_its_level_with_three_seeds():
    """Seeds whose leads vary (sd 0.07, as MDLM's last in cpu_crossover_seeds) around a true difference of 0.03:
    the 90% interval holds the truth about 90% of the time (a normal interval over 3 seeds would hold ~76%)."""
    rng = np.random.default_rng(1)
    covered, sims = 0, 300
    for _ in range(sims):
        p = 0.5 + 0.03 + 0.07 * rng.standard_normal((3, 1))
        a = (rng.random((3, 256)) < 0.5).astype(float)
        b = (rng.random((3, 256)) < np.clip(p, 0, 1)).astype(float)
        found = paired_difference(a, b)
        covered += found.low <= 0.03 <= found.high
    assert 0.85 <= covered / sims <= 0.97, covered / sims
