"""A study that grows (crossover.platform.grow), with real Ray Tune, MLflow and checkpoints: a changed spec keeps
the finished trials it still has, scores added tasks on their checkpoints, and continues longer trials from their
stable phase; only what is new trains."""

from __future__ import annotations

import pytest
import yaml

from crossover.specs import parse_study
from crossover.tracking.names import TAG_EXTENDED_BY, TAG_OUT_OF_SPEC, TAG_TRIAL_ID
from crossover.tracking.store import mlflow_client
from crossover.trainers.launch import LocalReporter
from crossover.trainers.loop import train

from .test_platform import history_steps, run, runs

pytestmark = pytest.mark.xdist_group("ray")  # one worker runs every Ray test (tests/conftest.py)

SMALL = {"train": {"total_tokens": 4096, "warmup_tokens": 1024}, "eval": {"every": 2048}}


def snapshot(client, child) -> tuple:
    """What a kept trial's run must still be after the study grew: same run, same end, same curve."""
    return child.info.run_id, child.info.end_time, history_steps(client, child, "train/loss")


@pytest.mark.long  # `make test-long`: the suite's time (Makefile)
def test_a_grown_study_trains_only_its_new_trials_and_a_changed_trial_is_a_new_one(study):
    first = study["write"](**SMALL, grid={"objective": ["ar"], "unique_tokens": ["4k"]})
    assert run(study, first).returncode == 0
    client, _, (kept,) = runs(study["uri"])
    before = snapshot(client, kept)

    grown = study["write"](**SMALL, grid={"objective": ["ar"], "unique_tokens": ["4k", "2k"]}, seeds=[0, 1])
    result = run(study, grown)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 of 4 trials finished earlier and are kept; 3 to run" in result.stdout, result.stdout
    assert f"3 of 4 trials left (1 finished in {study['uri']})" in result.stdout, result.stdout  # its time estimate
    client, (parent,), children = runs(study["uri"])
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    (again,) = [c for c in children if c.info.run_id == kept.info.run_id]
    assert snapshot(client, again) == before  # untouched: not run again
    spec_files = {a.path for a in client.list_artifacts(parent.info.run_id, "spec/history")}
    assert len(spec_files) == 2  # each version of the spec that was run, named by when
    with open(client.download_artifacts(parent.info.run_id, "spec/study.yaml")) as f:
        assert yaml.safe_load(f)["seeds"] == [0, 1]  # the current version

    # A learning rate changes what every trial trains: none is kept, the old runs stay but are out of the spec.
    changed = study["write"](
        **{**SMALL, "train": {**SMALL["train"], "lr": 1e-3}},
        grid={"objective": ["ar"], "unique_tokens": ["4k", "2k"]},
        seeds=[0, 1],
    )
    result = run(study, changed)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 of 4 trials finished earlier and are kept; 4 to run" in result.stdout
    assert "4 finished trials are no longer in the spec" in result.stdout
    client, _, children = runs(study["uri"])
    ids = {t.trial_id for t in parse_study(yaml.safe_load(changed.read_text())).expand()}
    current = [c for c in children if TAG_OUT_OF_SPEC not in c.data.tags]
    assert len(children) == 8 and {c.data.tags[TAG_TRIAL_ID] for c in current} == ids

    from crossover.analysis import read_study

    assert set(read_study("tiny", study["uri"], items=False).trials["trial_id"]) == ids


@pytest.mark.long  # `make test-long`: the suite's time (Makefile)
def test_a_task_added_to_a_finished_study_is_scored_on_the_kept_checkpoints_without_training(study):
    spec = study["write"](
        train={"total_tokens": 8192, "keep_checkpoints": "all"},
        eval={"every": 2048},
        grid={"objective": ["mdlm"], "unique_tokens": ["4k"]},
    )
    assert run(study, spec).returncode == 0
    client, _, (child,) = runs(study["uri"])
    before = snapshot(client, child)
    eval_steps = history_steps(client, child, "eval/heldout_loss/loss")
    assert eval_steps == [2048, 4096, 6144, 8192]

    raw = yaml.safe_load(spec.read_text())
    raw["eval"]["tasks"] = ["heldout_loss", "heldout_cloze"]
    spec.write_text(yaml.safe_dump(raw))
    result = run(study, spec)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 of 1 trials finished earlier and are kept; 0 to run" in result.stdout
    assert "heldout_cloze to score on 1 kept trials' checkpoints" in result.stdout
    client, _, (after,) = runs(study["uri"])
    assert snapshot(client, after) == before  # not retrained: the same run, its training curve as it was
    assert history_steps(client, after, "eval/heldout_cloze/acc") == eval_steps
    scored = {a.path for a in client.list_artifacts(after.info.run_id, "items/heldout_cloze")}
    assert scored == {f"items/heldout_cloze/{step}.json" for step in eval_steps}
    assert "summary/acc_final" in after.data.metrics


@pytest.mark.long  # `make test-long`: the suite's time (Makefile)
def test_a_longer_trial_continues_the_shorter_one_from_its_stable_phase(study, tmp_path):
    """total_tokens doubled: the trial continues from the shorter one's branch checkpoint (wsd: where its decay
    began), equals the longer trial trained from scratch, and the study keeps one run for it whose curves hold
    the shared steps once and no point of the old decay."""
    blocks = {"eval": {"every": 2048}, "grid": {"objective": ["ar"], "unique_tokens": ["4k"]}}
    short = study["write"](train={"total_tokens": 8192, "warmup_tokens": 1024}, **blocks)
    assert run(study, short).returncode == 0
    client, _, (old,) = runs(study["uri"])
    branch = int(old.data.tags["crossover.branch_tokens"])
    assert branch == 7168  # decay begins after 0.8 x 8192 tokens: 7 steps of 1024 are shared with a longer trial

    longer = study["write"](train={"total_tokens": 16384, "warmup_tokens": 1024}, **blocks)
    result = run(study, longer)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 of them continue a shorter finished trial from its stable phase" in result.stdout, result.stdout
    client, _, children = runs(study["uri"])
    (new,) = children  # one run per trial: the shorter one's is in MLflow's trash, pointing at its successor
    deleted = mlflow_client(study["uri"]).get_run(old.info.run_id)
    assert deleted.info.lifecycle_stage == "deleted" and deleted.data.tags[TAG_EXTENDED_BY] == new.info.run_id
    for key in ("train/loss", "tokens", "eval/heldout_loss/loss"):
        steps = history_steps(client, new, key)
        assert steps == sorted(set(steps)), key  # each step once: no point of the old decay mixed in
    evals = {m.step: m.value for m in client.get_metric_history(new.info.run_id, "eval/heldout_loss/loss")}
    assert sorted(evals) == [2048 * k for k in range(1, 9)]
    old_evals = {m.step: m.value for m in client.get_metric_history(old.info.run_id, "eval/heldout_loss/loss")}
    assert all(evals[s] == old_evals[s] for s in old_evals if s <= branch)  # the shared steps, copied
    assert evals[8192] != old_evals[8192]  # the old decay's end is not in the new curve

    (trial,) = parse_study(yaml.safe_load(longer.read_text())).expand()
    scratch = LocalReporter(tmp_path / "scratch")
    train(trial, scratch)
    for point in scratch.history():
        assert evals[point["step"]] == pytest.approx(point["eval/heldout_loss/loss"], rel=1e-4, abs=1e-4)

    # A task added now: with the default train.keep_checkpoints (2) only the last two eval points can be scored,
    # and the run says so and how to keep them all.
    raw = yaml.safe_load(longer.read_text())
    raw["eval"]["tasks"] = ["heldout_loss", "heldout_cloze"]
    longer.write_text(yaml.safe_dump(raw))
    result = run(study, longer)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 of its 8 eval points' checkpoints are kept" in result.stdout, result.stdout
    assert "train.keep_checkpoints: all keeps one per eval point" in result.stdout
    client, _, (scored,) = runs(study["uri"])
    assert history_steps(client, scored, "eval/heldout_cloze/acc") == [14336, 16384]


def test_where_each_schedule_lets_a_longer_trial_branch_off(tiny_corpus):
    """wsd: the last step before the decay begins (a longer trial's stable phase runs through it); constant: the
    end; cosine: nowhere (each step's rate depends on the length). Only train.total_tokens may differ."""
    from crossover.trainers.schedules import branch_step, lr_at

    from .conftest import tiny_study

    def trial(**train):
        return parse_study(tiny_study(tiny_corpus, train=train)).expand()[0]

    short, long = trial(total_tokens=40960), trial(total_tokens=81920)
    step = branch_step(short)
    assert step == 32 and short.lineage_id == long.lineage_id
    shared = [lr_at(k * 1024, short.train) == lr_at(k * 1024, long.train) for k in range(40)]
    assert all(shared[:step]) and not all(shared[step:])  # step k+1 runs at lr_at(k * batch): the first `step` agree
    assert branch_step(trial(total_tokens=40960, schedule="constant")) == 40
    assert branch_step(trial(total_tokens=40960, schedule="cosine")) is None
    assert trial(total_tokens=81920, lr=1e-3).lineage_id != short.lineage_id


def test_timed_checkpoints_are_not_taken_for_eval_points(tiny_corpus, tmp_path):
    """A timed checkpoint (train.checkpoint_minutes) that Ray keeps beside the eval points' is no eval point: added
    tasks are not scored at it, nor does an anneal continue it."""
    import json

    from crossover.evals.checkpoint import TRIAL_FILE
    from crossover.platform.grow import kept_checkpoints
    from crossover.trainers.loop import CLIENT_STATE

    from .conftest import tiny_study

    spec = parse_study(tiny_study(tiny_corpus, eval={"every": "8k"}))  # eval points every 8 steps of 1k tokens
    trial = spec.expand()[0]
    for index, tokens in enumerate([8192, 12288, 16384]):  # 12288: a timed checkpoint between two eval points
        folder = tmp_path / spec.name / trial.name / f"checkpoint_{index:06d}"
        folder.mkdir(parents=True)
        (folder / TRIAL_FILE).write_text(trial.model_dump_json())
        (folder / f"rank0_{CLIENT_STATE}").write_text(json.dumps({"data": {"tokens_seen": tokens}}))
    assert [tokens for tokens, _ in kept_checkpoints(str(tmp_path), spec, trial)] == [8192, 16384]
