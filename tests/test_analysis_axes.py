"""The study-level verdict along each axis (crossover.analysis.axes) on planted studies written through the
platform's MLflow writer: quality, model size, sparsity and noise, each planted to agree with the paper, to
disagree with it, and to leave it undecided; and the line's way into the report, summary.json and the parent run."""

from __future__ import annotations

import dataclasses
import json

import pytest
from matplotlib.collections import PathCollection
from typer.testing import CliRunner

from crossover.analysis import analyze_study, axis_verdicts, plots, read_study, verdicts
from crossover.analysis.axes import AGREES, CANNOT_TELL, DISAGREES, NEEDS_SEEDS
from crossover.cli import app
from crossover.tracking.names import VERDICT_TAG
from crossover.tracking.store import mlflow_client

from .analysis_support import write_study
from .test_analysis_mlflow import SMOKE_TRUTH, smoke_spec

runner = CliRunner()

# How fast MDLM learns per token (SMOKE_TRUTH's world, 50k unique tokens, 400k training tokens, 300 items): at 0.9 it
# overtakes AR at ~90k tokens, at 0.5 at ~290k (interval inside the window), at 0.3 maybe at the end (its interval
# runs past the window), at 0.05 never (AR surely ahead).
EARLY, MID, LATE, NEVER = 0.9, 0.5, 0.3, 0.05


def _study(tmp_path, name: str, grid: dict, truth_of, exclude: list | None = None, seeds: int = 1):
    """A planted study with `seeds` seeds per objective. The synthetic world has no training noise, so most tests
    judge its one-seed lines with `axis_verdicts(analysis, min_seeds=1)` (a real study needs 3 seeds; see
    test_an_axis_from_one_seed_needs_seeds and the three-seed case of the quality test)."""
    raw = smoke_spec(name)
    raw["grid"] = {"objective": ["ar", "mdlm"], **grid}
    if seeds > 1:
        raw["seeds"] = list(range(seeds))
    if "unique_tokens" not in grid:
        raw["data"]["unique_tokens"] = "50k"
    if exclude:
        raw["exclude"] = exclude
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    write_study(raw, uri, truth_of)
    analysis = analyze_study(read_study(name, uri), n_boot=200)
    return analysis, uri


def _mdlm_factor(factors: dict, key) -> object:
    """A truth whose MDLM learns at `factors[key(trial)]` per token; AR is the same everywhere."""
    return lambda trial: dataclasses.replace(SMOKE_TRUTH, mdlm_data_factor=factors[key(trial)])


@pytest.mark.parametrize(
    "factors, expected, seeds",
    [
        ({"low": EARLY, "medium": MID, "high": LATE}, AGREES, 1),  # later as quality rises, as the paper found
        ({"low": EARLY, "medium": MID, "high": LATE}, AGREES, 3),  # judged as a real study is: three seeds
        ({"low": LATE, "medium": MID, "high": EARLY}, DISAGREES, 1),
        ({"low": MID, "medium": MID, "high": MID}, CANNOT_TELL, 1),  # one world: no pair is surely ordered
    ],
)
def test_quality_axis_reads_the_crossover_against_quality(tmp_path, factors, expected, seeds):
    analysis, _ = _study(
        tmp_path,
        "quality",
        {"quality": ["high", "low", "medium"]},
        _mdlm_factor(factors, lambda t: t.data.quality),
        seeds=seeds,
    )
    (verdict,) = axis_verdicts(analysis, min_seeds=seeds)
    assert verdict.axis == "quality" and verdict.agreement == expected, verdict.line
    assert verdict.line.startswith("quality: ")
    assert verdict.line.index(": low ") < verdict.line.index(", medium ") < verdict.line.index(", high "), verdict.line
    assert "the paper: the crossover comes somewhat later with higher-quality data" in verdict.line
    assert f"this study {expected} (" in verdict.line
    if expected == AGREES:
        assert "later as quality rises: low " in verdict.line
    assert verdict.metrics["agreement"] == {AGREES: 1, DISAGREES: -1, CANNOT_TELL: 0}[expected]


def test_an_axis_from_one_seed_needs_seeds(tmp_path):
    """The planted 'agrees' world of the quality test with one seed per objective: its intervals hold item noise
    only, so the line gives the crossovers and what it would have read, and its judgement is 'needs seeds'."""
    factors = {"low": EARLY, "medium": MID, "high": LATE}
    analysis, _ = _study(
        tmp_path,
        "quality1",
        {"quality": ["high", "low", "medium"]},
        _mdlm_factor(factors, lambda t: t.data.quality),
        seeds=1,
    )
    (verdict,) = axis_verdicts(analysis)
    assert verdict.axis == "quality" and verdict.agreement == NEEDS_SEEDS, verdict.line
    assert "needs seeds: 3 of 3 values have fewer than 3 seeds" in verdict.line
    assert verdict.metrics["agreement"] == 0.0


@pytest.mark.parametrize(
    "factors, expected", [({"nano": LATE, "micro": EARLY}, AGREES), ({"nano": EARLY, "micro": LATE}, DISAGREES)]
)
def test_model_size_axis_orders_models_by_parameters_and_gives_ar_saturation(tmp_path, factors, expected):
    analysis, _ = _study(
        tmp_path, "size", {"model": ["micro", "nano"]}, _mdlm_factor(factors, lambda t: t.model.preset)
    )
    (verdict,) = axis_verdicts(analysis, min_seeds=1)
    assert verdict.axis == "model" and verdict.agreement == expected, verdict.line
    assert verdict.line.index(": nano ") < verdict.line.index(", micro "), "smaller model first"
    if expected == AGREES:
        assert "earlier as the model grows" in verdict.line
    assert (
        "AR's peak eval point -> last (on every item, a description): nano " in verdict.line
        and "MDLM's last is its best in " in verdict.line
    )


WIDE = {"preset": "nano", "ffn": 2048}  # a dense nano with about the MoE's total parameters
MOE = {"experts": 4, "top_k": 1}


@pytest.mark.parametrize(
    "factors, expected",
    [
        ({"dense": EARLY, "moe4x1": EARLY, "wide": EARLY}, AGREES),
        ({"dense": EARLY, "moe4x1": EARLY, "wide": NEVER}, DISAGREES),  # AR surely ahead of the wide dense model
        ({"dense": EARLY, "moe4x1": LATE, "wide": EARLY}, CANNOT_TELL),  # the MoE's crossover may lie past the end
    ],
)
def test_sparsity_line_covers_every_configuration_and_places_the_moe(tmp_path, factors, expected):
    def config(trial) -> str:
        return "moe4x1" if trial.model.experts > 1 else ("wide" if trial.model.ffn == 2048 else "dense")

    analysis, _ = _study(
        tmp_path,
        "sparsity",
        {"model": ["nano", WIDE], "sparsity": ["dense", MOE]},
        _mdlm_factor(factors, config),
        exclude=[{"model": WIDE, "sparsity": MOE}],
    )
    (verdict,) = axis_verdicts(analysis, min_seeds=1)  # one line over model x sparsity, none per axis
    assert verdict.axis == "sparsity" and verdict.agreement == expected, verdict.line
    assert "MDLM surely ahead at the end in " in verdict.line and "of 3 configurations" in verdict.line
    assert (
        "on the point values (a description, no interval), MDLM's nano/moe4x1 (" in verdict.line
        and "its compute-matched nano/dense" in verdict.line
        and "nano-L4d128f2048/dense" in verdict.line
    ), verdict.line
    assert "more total parameters " in verdict.line
    paired = [b for b in analysis.ar_best.by_cell.values() if b.mdlm_last is not None]
    assert paired and all(  # AR's best and MDLM's last side by side on the same (test) items
        f"AR's best {b.value:.3g}, MDLM's last {b.mdlm_last:.3g}" in verdict.line for b in paired
    ), verdict.line
    crossed = [v.line for v in verdicts(analysis) if " overtakes AR on " in v.line]
    assert crossed or expected != AGREES
    for line in crossed:  # each crossover quoted as its cell's own verdict quotes it (the eval grid's figures)
        at = line.split(" at ", 1)[1].split(" tokens", 1)[0]
        assert f"): {at} (CI " in verdict.line, (at, verdict.line)
    # the plot against sparsity shows every configuration: nano/dense and the wide dense model share the "dense"
    # category and are drawn side by side, not on top of each other
    ax = plots.crossover_vs_axis(analysis, "sparsity").axes[0]
    xs = [x for line in ax.lines for x in line.get_xdata()] + [
        x for c in ax.collections if isinstance(c, PathCollection) for x, _ in c.get_offsets()
    ]
    assert len({round(float(x), 6) for x in xs}) == 3, xs


def _noise_truth(ar_r_star: dict, mdlm_factor: float = EARLY):
    def truth(trial):
        if trial.objective == "mdlm":
            return dataclasses.replace(SMOKE_TRUTH, mdlm_data_factor=mdlm_factor)
        return dataclasses.replace(SMOKE_TRUTH, r_star_ar=ar_r_star[trial.noise.label])

    return truth


@pytest.mark.parametrize(
    "ar_r_star, mdlm_factor, expected",
    [
        ({"clean": 1.0, "im0.1": 1.5, "do0.1": 1.3}, EARLY, AGREES),  # noise helps AR a little; MDLM still wins
        ({"clean": 1.0, "im0.1": 60.0, "do0.1": 1.3}, MID, DISAGREES),  # input masking makes AR win: the gap closed
        ({"clean": 1.0, "im0.1": 1.5, "do0.1": 1.3}, LATE, CANNOT_TELL),  # not even the clean AR is surely overtaken
    ],
)
def test_noise_line_says_whether_noised_ar_closed_the_gap(tmp_path, ar_r_star, mdlm_factor, expected):
    analysis, _ = _study(
        tmp_path,
        "noise",
        {"noise": [{}, {"input_mask": 0.1}, {"dropout": 0.1}]},
        _noise_truth(ar_r_star, mdlm_factor),
        exclude=[{"objective": "mdlm", "noise": [{"input_mask": 0.1}, {"dropout": 0.1}]}],
    )
    (verdict,) = axis_verdicts(analysis, min_seeds=1)
    assert verdict.axis == "noise" and verdict.agreement == expected, verdict.line
    assert verdict.line.startswith("noise: clean AR: ") and "im0.1: " in verdict.line
    assert "noise surely raised AR's best in " in verdict.line and "MDLM still ahead at the end of " in verdict.line
    assert "paired on the test items (items, 1 seed x " in verdict.line  # AR's best changes carry intervals
    noised = [best for cell, best in analysis.ar_best.by_cell.items() if "clean" not in cell]
    assert noised and all(f"AR's best {b.value:.3g} (" in verdict.line for b in noised)  # early-stopped, test items
    if expected == DISAGREES:  # input masking that makes AR win raised its early-stopped best beyond doubt
        assert "im0.1 closed the gap" in verdict.line and "noise surely raised AR's best in 1 of 2" in verdict.line
    else:  # the small gains (r* 1.5 and 1.3) are within the Bonferroni-corrected intervals
        assert "noise surely raised AR's best in 0 of 2 variants and surely lowered it in 0" in verdict.line


def test_the_study_verdict_heads_the_report_and_goes_to_summary_and_the_parent_run(tmp_path):
    """`crossover analyze` prints the axis line first, puts it at the head of the report and in summary.json, and
    tags the parent run with it (a metric `agreement` beside it); a study varying only the budget has none."""
    factors = {"low": EARLY, "medium": MID, "high": LATE}
    _, uri = _study(
        tmp_path, "quality", {"quality": ["low", "medium", "high"]}, _mdlm_factor(factors, lambda t: t.data.quality)
    )
    out = tmp_path / "report"
    result = runner.invoke(app, ["analyze", "quality", "--tracking-uri", uri, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1].startswith("quality: later as quality rises"), result.output
    summary = json.loads((out / "summary.json").read_text())
    (line,) = summary["axis_verdicts"]
    # one seed per cell: the command judges nothing ("needs seeds"), and says what it would have read
    assert line["axis"] == "quality" and line["agreement"] == NEEDS_SEEDS and line["line"].startswith("quality: ")
    assert line["line"].endswith("(it would have read: agrees)")
    report = (out / "report.md").read_text()
    assert report.index("Study verdict") < report.index("## Verdict") and line["line"] in report
    data = read_study("quality", uri)
    parent = mlflow_client(uri).get_run(data.parent_run_id)
    assert parent.data.tags[f"{VERDICT_TAG}.axis_quality"] == line["line"]
    assert parent.data.metrics["verdict/axis_quality/agreement"] == 0.0
    budget_only, _ = _study(tmp_path, "budget", {"unique_tokens": ["50k", "200k"]}, SMOKE_TRUTH)
    assert axis_verdicts(budget_only) == []


def test_the_trend_compares_crossovers_beyond_the_window_as_equal():
    """Two values not crossed within the window (+inf) are equal, not undefined: not crossed, not crossed, then a
    crossover reads as earlier (cpu_model_size's first run read "no monotone trend" from inf - inf)."""
    import math

    from crossover.analysis.axes import _Point, _trend

    def at(*positions: float) -> list[_Point]:
        return [_Point(f"v{i}", f"c{i}", None, x, None, None, "", None) for i, x in enumerate(positions)]

    assert _trend(at(math.inf, math.inf, 9e5), "as the model grows") == "earlier as the model grows"
    assert _trend(at(-math.inf, 1e5, math.inf), "as quality rises") == "later as quality rises"
    assert _trend(at(math.inf, math.inf), "as x rises") == "the same at every value"
    assert _trend(at(2e5, 1e5, 3e5), "as x rises") == "no monotone trend as x rises"
