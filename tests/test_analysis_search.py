"""A search study read back (issue "Tuned against tuned"): a planted one written into a real MLflow SQLite store
with the platform's writer. One cell, AR and MDLM, each tuned by four samples on the search seed (one pruned; one of
MDLM's failed); each winner retrained on seeds 1-3 beside the base settings on the same seeds. AR's winner is
planted clearly better than AR's base, MDLM's winner equal to MDLM's base; an earlier MDLM winner's confirm run,
superseded, is planted far better, so reading it would show."""

from __future__ import annotations

import copy
import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest

from crossover.analysis import analyze_study, read_study, verdicts, write_report
from crossover.analysis.verdict import tuning_lines
from crossover.platform.tracking import finish_study
from crossover.specs import parse_study
from crossover.specs.expand import sampled_trial
from crossover.tracking.names import (
    ROLE_BASE,
    ROLE_CONFIRM,
    ROLE_SEARCH,
    ROLE_SUPERSEDED,
    TAG_CELL,
    TAG_CONFIRMS,
    TAG_PRUNED_AT,
    TAG_ROLE,
    TAG_SEARCH_GROUP,
    TAG_SEARCH_VALUE,
)

from .analysis_support import start, write_search_run
from .synthetic import eval_steps
from .test_analysis_mlflow import SMOKE_TRUTH, smoke_spec

CELL = "unique_tokens=50k"
RAW = smoke_spec("searched")  # the smoke study's shape and its synthetic world (test_analysis_mlflow)
RAW["grid"]["unique_tokens"] = ["50k"]
RAW["eval"]["every"] = "log:6"
RAW["seeds"] = [0]  # the search seed
RAW["search"] = {
    "metric": "eval/heldout_cloze/acc_pmi",
    "mode": "max",
    "num_samples": 4,
    "space": {"lr": {"loguniform": [3e-4, 1e-2]}},  # a space both objectives share (above train.min_lr)
}
# acc_pmi logged, per item too: the search's metric and the analysis' default
BASE = dataclasses.replace(SMOKE_TRUTH, pmi_ar_shift=0.0)
TUNED_AR = dataclasses.replace(BASE, midpoint_tokens=2.5e4)  # +1.2 logits of skill: ~+0.15 accuracy
FAR_BETTER = dataclasses.replace(BASE, midpoint_tokens=5e3)
# (lr, value Optuna was told, how it ended) per sample; the highest value wins
SAMPLES = {
    "ar": [(3e-4, 0.45, "finished"), (3e-3, 0.62, "finished"), (1e-3, 0.50, "finished"), (5e-3, None, "pruned")],
    "mdlm": [(2e-3, 0.52, "finished"), (6e-4, 0.48, "finished"), (8e-3, None, "pruned"), (4e-4, None, "failed")],
}
WINNER = {"ar": 3e-3, "mdlm": 2e-3}
EARLIER_WINNER = 6e-4  # MDLM's winner before the search found 2e-3: its confirm run is superseded


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    spec, parent = start(RAW, uri)
    rng = np.random.default_rng(7)
    ids: dict[str, list[str]] = {ROLE_SEARCH: [], ROLE_CONFIRM: [], ROLE_BASE: []}
    sample_of: dict[tuple[str, float], str] = {}
    for trial in spec.expand():
        group = {TAG_CELL: CELL, TAG_SEARCH_GROUP: f"{CELL}/{trial.objective}"}
        for lr, value, ending in SAMPLES[trial.objective]:
            tags = {**group, TAG_ROLE: ROLE_SEARCH}
            steps = eval_steps(trial)
            if value is not None:
                tags[TAG_SEARCH_VALUE] = str(value)
            if ending == "pruned":
                steps = steps[:2]
                tags[TAG_PRUNED_AT] = str(steps[-1])
            truth = TUNED_AR if (trial.objective, lr) == ("ar", WINNER["ar"]) else BASE
            sample = sampled_trial(trial, {"lr": lr})
            error = "loss diverged" if ending == "failed" else None
            run_id = write_search_run(uri, parent, sample, truth, rng, tags, {"lr": lr}, steps, error)
            ids[ROLE_SEARCH].append(run_id)
            sample_of[(trial.objective, lr)] = run_id
    confirm_raw = copy.deepcopy(RAW)
    del confirm_raw["search"]
    confirm_raw["seeds"] = [1, 2, 3]  # the fresh seeds: the same grid trials on other seeds
    for trial in parse_study(confirm_raw).expand():
        group = {TAG_CELL: CELL, TAG_SEARCH_GROUP: f"{CELL}/{trial.objective}"}
        winner = WINNER[trial.objective]
        confirms = {**group, TAG_ROLE: ROLE_CONFIRM, TAG_CONFIRMS: sample_of[(trial.objective, winner)]}
        truth = TUNED_AR if trial.objective == "ar" else BASE
        confirm = sampled_trial(trial, {"lr": winner})
        ids[ROLE_CONFIRM].append(write_search_run(uri, parent, confirm, truth, rng, confirms, {"lr": winner}))
        ids[ROLE_BASE].append(write_search_run(uri, parent, trial, BASE, rng, {**group, TAG_ROLE: ROLE_BASE}))
        if trial.objective == "mdlm" and trial.seed == 1:
            earlier = {**confirms, TAG_ROLE: ROLE_SUPERSEDED, TAG_CONFIRMS: sample_of[("mdlm", EARLIER_WINNER)]}
            old = sampled_trial(trial, {"lr": EARLIER_WINNER})
            superseded = write_search_run(uri, parent, old, FAR_BETTER, rng, earlier, {"lr": EARLIER_WINNER})
    finish_study(uri, parent)
    data = read_study("searched", uri)
    analysis = analyze_study(data, n_boot=200)
    return SimpleNamespace(uri=uri, ids=ids, superseded=superseded, data=data, analysis=analysis)


def test_the_trials_are_the_confirm_runs_and_samples_and_base_runs_are_kept_apart(study):
    data = study.data
    assert data.searched
    assert sorted(data.trials["run_id"]) == sorted(study.ids[ROLE_CONFIRM])
    assert sorted(data.search_samples["run_id"]) == sorted(study.ids[ROLE_SEARCH])
    assert sorted(data.base_trials["run_id"]) == sorted(study.ids[ROLE_BASE])
    assert set(data.curves["run_id"]) == set(study.ids[ROLE_CONFIRM])
    assert set(data.base_curves["run_id"]) == set(study.ids[ROLE_BASE])
    assert set(data.search_curves["run_id"]) == set(study.ids[ROLE_SEARCH])
    assert sorted(data.trials["seed"].unique()) == [1, 2, 3]
    # the grid's axes only: the sampled lr is a `search.lr` param, not an axis or a cell
    assert data.axes == ["unique_tokens"]
    assert set(data.trials["cell"]) == {CELL}
    assert set(data.trials["search.lr"].astype(float)) == set(WINNER.values())


def test_a_superseded_confirm_run_is_ignored(study):
    data = study.data
    for table in (data.trials, data.search_samples, data.base_trials, data.anneals):
        assert study.superseded not in set(table.get("run_id", []))
    mdlm = study.analysis.tuning.by_group[(CELL, "mdlm")]
    assert float(mdlm.settings["lr"]) == WINNER["mdlm"]
    assert mdlm.seeds == (1, 2, 3)


def test_the_verdict_compares_the_two_winners_on_their_confirm_seeds(study):
    analysis = study.analysis
    row = analysis.crossovers.table.set_index("cell").loc[CELL]
    assert (row["seeds_ar"], row["seeds_mdlm"]) == (3, 3)
    best = analysis.ar_best.by_cell[CELL]
    confirm_ar = set(study.data.trials.loc[study.data.trials["objective"] == "ar", "run_id"])
    assert {s.seed for s in best.seeds} == {1, 2, 3}
    assert {s.run_id for s in best.seeds} <= confirm_ar
    assert best.difference is not None and best.difference.seeds == 3  # MDLM's last minus AR's best: winners, paired
    ar, mdlm = (analysis.tuning.by_group[(CELL, o)] for o in ("ar", "mdlm"))
    assert best.value == pytest.approx(ar.confirmed)
    assert best.mdlm_last == pytest.approx(mdlm.confirmed)
    (verdict,) = verdicts(analysis)
    assert "tuned against tuned" in verdict.line
    assert "AR lr=0.003 (search of 4 samples: 3 finished, 1 pruned, 0 failed), selection score 0.62 on " in verdict.line
    assert "MDLM lr=0.002 (search of 4 samples: 2 finished, 1 pruned, 1 failed), selection score 0.52" in verdict.line
    assert verdict.metrics["tuning_gain_ar_low"] > 0


def test_tuning_gain_reads_a_planted_gain_as_a_gain_and_a_planted_tie_as_cannot_tell(study):
    ar, mdlm = (study.analysis.tuning.by_group[(CELL, o)] for o in ("ar", "mdlm"))
    assert ar.gain.low > 0.03 and ar.gain.value > 0.08  # planted ~+0.15
    assert ar.gain.seeds == 3 and "3 seeds x" in ar.gain.source
    assert mdlm.gain.low < 0 < mdlm.gain.high
    assert ar.confirmed > ar.base
    (verdict,) = verdicts(study.analysis)
    assert f"AR's best {ar.confirmed:.3g} against the base's {ar.base:.3g}: {ar.gain.text(3)}: tuning helped" in (
        verdict.line
    )
    assert f"MDLM's last {mdlm.confirmed:.3g} against the base's {mdlm.base:.3g}: {mdlm.gain.text(3)}: cannot tell" in (
        verdict.line
    )
    (line,) = tuning_lines(study.analysis)
    for group, reading in ((ar, "tuning helped"), (mdlm, "cannot tell")):
        assert f"base settings' {group.base:.3g} (same seeds and test items, positive: better): " in line
        assert f"{group.gain.text(3)}: {reading}" in line
    # the gap the tuned verdict is read against: the base settings' MDLM's last minus AR's best, with its interval
    untuned = study.analysis.tuning.untuned[CELL]
    assert untuned.seeds == 3 and untuned.value == pytest.approx(mdlm.base - ar.base)
    assert untuned.low > 0  # the smoke world's MDLM ends ahead of its early-stopped AR
    assert line.endswith(
        f"Untuned, the base settings on the same seeds: MDLM's last minus AR's best {untuned.text(3)}: "
        "MDLM's last surely ahead of an early-stopped AR"
    )


def test_tuning_lines_say_the_search_the_winner_and_its_selection_bias(study):
    (line,) = tuning_lines(study.analysis)
    assert line.startswith(f"{CELL}: AR: search of 4 samples: 3 finished, 1 pruned, 0 failed; winner lr=0.003")
    assert "MDLM: search of 4 samples: 2 finished, 1 pruned, 1 failed; winner lr=0.002" in line
    # named as what it is: the search metric's value on the validation items, biased its way by the choice
    assert (study.data.search_metric, study.data.search_higher) == ("eval/heldout_cloze/acc_pmi", True)
    assert (
        "selection score 0.62 on heldout_cloze/acc_pmi's validation items (its value in the search: the best of the "
        "samples, biased upwards by that choice, the winner's curse)"
    ) in line
    assert "selection score 0.52 on heldout_cloze/acc_pmi's validation items" in line
    assert line.count("winner's curse") == 2
    assert "on the test items over confirm seeds 1, 2, 3 (90% CI" in line
    ar = study.analysis.tuning.by_group[(CELL, "ar")]
    assert ar.winner_run in study.ids[ROLE_SEARCH]
    assert ar.score.low < ar.confirmed < ar.score.high


def test_the_report_and_summary_carry_the_tuning(study, tmp_path):
    html = write_report(study.analysis, study.data, tmp_path / "report")
    summary = json.loads((html.parent / "summary.json").read_text())
    assert summary["tuning"] == tuning_lines(study.analysis)
    groups = {g["objective"]: g for g in summary["tuning_groups"]}
    assert groups["ar"]["gain_reads"] == "tuning helped" and groups["mdlm"]["gain_reads"] == "cannot tell"
    assert float(groups["ar"]["search.lr"]) == WINNER["ar"]
    assert (groups["mdlm"]["samples"], groups["mdlm"]["pruned"], groups["mdlm"]["failed"]) == (4, 1, 1)
    assert (html.parent / "tuning.csv").exists()
    markdown = (html.parent / "report.md").read_text()
    assert "## Tuning: tuned against tuned" in markdown
    assert (
        "6 confirm runs (each search winner on fresh seeds; besides them 8 search samples and 6 base runs" in markdown
    )
