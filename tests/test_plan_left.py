"""`crossover plan` on a study that ran before, or grew since: it reads the study's records in the tracking store
(real MLflow, SQLite, written by the platform's own writer without training) and estimates only what is left; a
store it cannot read is said, and the estimate is then the whole study's."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from crossover.cli import app
from crossover.platform.anneal import anneal_cost
from crossover.platform.grow import finished_in
from crossover.platform.tracking import TrialRun, finish_study
from crossover.specs import parse_study
from crossover.specs.anneal import anneal_trial
from crossover.tracking.names import ROLE_ANNEAL, TAG_ANNEAL_OF, TAG_ROLE

from .analysis_support import start, write_trial
from .conftest import tiny_study
from .services import free_port
from .synthetic import Truth
from .test_anneal import ANNEAL


def estimate(output: str) -> str:
    """The duration on the plan's wall-time line."""
    found = re.search(r"estimated (\S+) here: ", output)
    assert found, output
    return found.group(1)


def test_plan_of_a_grown_study_estimates_only_the_trials_left(tiny_corpus, tmp_path, default_cache):
    """The new user's case: 4 trials finished, the spec grew to 8, and the plan (like the run) estimated all 8."""
    first = tiny_study(tiny_corpus, **ANNEAL, seeds=[0, 1])  # 4 trials: AR and MDLM, two seeds
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec, parent = start(first, uri)
    rng = np.random.default_rng(0)
    for trial in spec.expand():  # finished, as `crossover run` records them (no training)
        write_trial(TrialRun(trial, uri, parent), trial, Truth(), rng, items=False)
    ar = next(t for t in spec.expand() if t.objective == "ar")
    annealed = anneal_trial(ar, 8192)  # one AR trial's anneal finished too
    run = TrialRun(annealed, uri, parent, tags={TAG_ROLE: ROLE_ANNEAL, TAG_ANNEAL_OF: ar.trial_id})
    write_trial(run, annealed, Truth(), rng, items=False)
    finish_study(uri, parent)

    grown = tmp_path / "grown.yaml"
    grown.write_text(yaml.safe_dump(tiny_study(tiny_corpus, **ANNEAL, seeds=[0, 1, 2, 3])))  # 8 trials
    store = (tmp_path / "mlflow.db").read_bytes()
    result = CliRunner().invoke(app, ["plan", str(grown), "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert f"here: 4 of 8 trials left (4 finished in {uri}), then up to 3 anneal trials," in result.output, (
        result.output
    )
    assert hashlib.sha256((tmp_path / "mlflow.db").read_bytes()).digest() == hashlib.sha256(store).digest(), (
        "the plan only reads the store"
    )

    finished = finished_in(parse_study(yaml.safe_load(grown.read_text())), uri)
    assert len(finished.trials) == 4 and finished.annealed == {ar.trial_id}
    assert len(anneal_cost(parse_study(yaml.safe_load(grown.read_text())), annealed=finished.annealed).bound) == 3

    # what is left takes as long as a study of only the new seeds (anneal off in both: an AR trial's anneal is the
    # grown study's to count); `early_stopped_ar` is no part of a trial's identity, so the same 4 trials are finished
    no_anneal = {"early_stopped_ar": {"anneal": False}}
    grown.write_text(yaml.safe_dump(tiny_study(tiny_corpus, **{**ANNEAL, **no_anneal}, seeds=[0, 1, 2, 3])))
    left = CliRunner().invoke(app, ["plan", str(grown), "--tracking-uri", uri])
    assert left.exit_code == 0 and f"here: 4 of 8 trials left (4 finished in {uri})," in left.output, left.output
    alone = tmp_path / "new_seeds.yaml"
    alone.write_text(yaml.safe_dump(tiny_study(tiny_corpus, **{**ANNEAL, **no_anneal}, seeds=[2, 3])))
    missing = tmp_path / "nothing-here.db"
    alone_plan = CliRunner().invoke(app, ["plan", str(alone), "--tracking-uri", f"sqlite:///{missing}"])
    assert alone_plan.exit_code == 0, alone_plan.output
    assert "here: 4 trials," in alone_plan.output, alone_plan.output
    assert estimate(left.output) == estimate(alone_plan.output)
    # a store that does not exist is said, and never created
    assert "its finished trials were not read (no MLflow store at" in alone_plan.output
    assert not missing.exists()

    # everything finished: nothing left to train
    done = tmp_path / "done.yaml"
    done.write_text(yaml.safe_dump({**first, "early_stopped_ar": {"anneal": False}}))
    result = CliRunner().invoke(app, ["plan", str(done), "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert f"nothing left to train here: all 4 trials finished in {uri}" in result.output, result.output


def test_plan_without_the_records_says_so_and_estimates_the_whole_study(tiny_corpus, tmp_path, default_cache):
    spec = tmp_path / "study.yaml"
    spec.write_text(yaml.safe_dump(tiny_study(tiny_corpus, seeds=[0, 1])))
    down = f"http://127.0.0.1:{free_port()}"  # no server there
    result = CliRunner().invoke(app, ["plan", str(spec), "--tracking-uri", down])
    assert result.exit_code == 0, result.output
    assert (
        "the estimate is the whole study's: its finished trials were not read (cannot reach the MLflow tracking "
        f"server at {down}" in result.output
    ), result.output
    assert "here: 4 trials," in result.output, result.output
    # the embedded store of a machine where no study ran yet (no option, no MLFLOW_TRACKING_URI): nothing said
    with pytest.MonkeyPatch.context() as env:
        env.chdir(tmp_path)
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        result = CliRunner().invoke(app, ["plan", str(spec)])
    assert result.exit_code == 0, result.output
    assert "here: 4 trials," in result.output and "not read" not in result.output, result.output
    assert not (tmp_path / "mlflow.db").exists()
    # a store that holds no run of the study: the whole study, nothing said
    other = f"sqlite:///{tmp_path / 'mlflow.db'}"
    start(tiny_study(tiny_corpus, name="another"), other)
    result = CliRunner().invoke(app, ["plan", str(spec), "--tracking-uri", other])
    assert result.exit_code == 0, result.output
    assert "here: 4 trials," in result.output and "not read" not in result.output, result.output
