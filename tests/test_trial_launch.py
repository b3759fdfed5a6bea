"""One typed trial through Tune: a `TrialLaunch` is all a Tune trial receives, and a search sample is its grid trial
with the sampled values applied, identified exactly as the grid would identify it, without expanding the study."""

from __future__ import annotations

import json

import pytest

from crossover.platform.launch import (
    HPARAMS,
    LAUNCH,
    LAUNCHES,
    POINT,
    Continuation,
    TrialLaunch,
    config_name,
    launch_of,
)
from crossover.specs import SpecError, parse_study
from crossover.specs.expand import sampled_trial
from crossover.specs.hardware import Runtime

STUDY = {
    "name": "searched",
    "data": {"corpus": "stdlib", "seq_len": 64},
    "train": {"total_tokens": "64k", "global_batch_tokens": 1024, "micro_batch": 4, "warmup_tokens": 2048},
    "grid": {
        "objective": ["ar", "mdlm"],
        "unique_tokens": ["8k", "16k"],
        # a model whose label holds dashes (nano-L2d64), and a preset
        "model": [{"preset": "nano", "layers": 2, "d_model": 64}, "micro"],
        "sparsity": [{"experts": 1}, {"experts": 2, "top_k": 1}],
    },
    "eval": {"tasks": ["heldout_loss", "heldout_cloze"]},  # a search ranks samples on a task's validation items
    "seeds": [0],  # a search trains on one seed (its winners are confirmed on others)
    "search": {"space": {"lr": {"loguniform": [1e-4, 1e-2]}, "warmup_tokens": {"int": [1024, 4096]}}},
}
SAMPLES = [{"lr": 3.3e-3, "warmup_tokens": 2048}, {"lr": 1e-4, "warmup_tokens": 4095}]


def re_expanded(study: dict, point: str, hparams: dict):
    """The oracle: the whole study expanded again with each sample as a one-value grid axis (what the platform did
    before, for every sample)."""
    base = next(t for t in parse_study(study).expand() if t.name == point)
    grid = {**study["grid"], **{name: [value] for name, value in hparams.items()}}
    return next(
        t
        for t in parse_study({**study, "grid": grid}).expand()
        if t.objective == base.objective and t.seed == base.seed and base.axes.items() <= t.axes.items()
    )


@pytest.mark.parametrize("hparams", SAMPLES)
def test_a_sample_is_its_grid_trial_with_the_values_applied_named_and_identified_as_the_grid_would(hparams):
    trials = parse_study(STUDY).expand()
    assert any("-L2d64" in t.name for t in trials), "the case of a model label with dashes is covered"
    for trial in trials:
        sampled = sampled_trial(trial, hparams)
        assert sampled == re_expanded(STUDY, trial.name, hparams)
        assert sampled.train.lr == hparams["lr"] and sampled.train.warmup_tokens == hparams["warmup_tokens"]
        assert sampled.trial_id != trial.trial_id and sampled.cell != trial.cell


def test_a_sample_the_grid_would_refuse_fails_with_the_spec_error_naming_the_sample():
    trial = parse_study(STUDY).expand()[0]
    with pytest.raises(SpecError) as caught:
        sampled_trial(trial, {"lr": 1e-5, "warmup_tokens": 2048})  # min_lr 1e-4 now exceeds lr
    (problem,) = caught.value.problems
    assert problem.field == "search.space.min_lr" or "min_lr" in problem.message, problem
    assert "lr=1e-05" in problem.message and "exceeds lr" in problem.message
    with pytest.raises(SpecError, match=r"search\.space\.warmup_tokens"):
        sampled_trial(trial, {"lr": 1e-3, "warmup_tokens": "many"})


def launch(trial, **extra) -> TrialLaunch:
    runtime = Runtime(device="cpu", precision="fp32", compile=False, why="set in the spec")
    return TrialLaunch(
        trial=trial, runtime=runtime, tracking_uri="sqlite:///m.db", parent_run_id="p1", storage="/s", **extra
    )


def through_tune(config: dict) -> dict:
    """What reaches the trainable: Tune keeps configs as plain data (JSON here, as its saved state is)."""
    return json.loads(json.dumps(config))


def test_a_grid_trials_launch_crosses_tune_whole_and_typed():
    trial = parse_study(STUDY).expand()[3]
    continued = launch(
        trial, continues=Continuation(run_id="r0", branch="/s/branch", tokens=4096), tags={"crossover.role": "x"}
    )
    config = through_tune({LAUNCH: continued.model_dump(mode="json")})
    assert launch_of(config) == continued
    assert config_name(config, "abc") == trial.name
    with pytest.raises(ValueError, match="extra"):  # a misspelt key is refused, not ignored
        TrialLaunch.model_validate({**config[LAUNCH], "parent_run": "p1"})


def test_a_search_samples_launch_is_its_grid_trials_with_the_sample_applied():
    trials = parse_study(STUDY).expand()
    launches = {t.name: launch(t).model_dump(mode="json") for t in trials[:4]}
    point, hparams = trials[2].name, SAMPLES[0]
    config = through_tune({POINT: point, HPARAMS: hparams, LAUNCHES: launches})
    resolved = launch_of(config)
    assert resolved.trial == sampled_trial(trials[2], hparams)
    assert resolved.search == hparams  # logged as the run's search.<name> params
    assert resolved.model_copy(update={"trial": trials[2], "search": {}}) == launch(trials[2])
    assert config_name(config, "t7") == f"{point}-t7"
