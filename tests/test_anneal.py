"""The early-stopped AR a practitioner would train (spec block `early_stopped_ar`): the eval items split by document
into validation and test halves, AR's stop chosen on the validation half, one AR trial per AR trial annealed to
that stop by `crossover run` (real Ray Tune, DeepSpeed and MLflow), kept out of the AR curves and read by the
analysis as AR's best on the test items; `crossover plan` counts it. The study runs on object storage (moto's S3 server),
as on a cluster: the anneal continues a checkpoint kept in the bucket and `--resume` restores Tune's state from it
(local storage's kept checkpoints are continued in test_grow)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from crossover.cli import app
from crossover.evals.results import TaskResult
from crossover.evals.suite import metrics_of
from crossover.specs import parse_study
from crossover.specs.anneal import anneal_trial, choose_stop
from crossover.tracking.names import (
    ROLE_ANNEAL,
    TAG_ANNEAL_OF,
    TAG_ANNEAL_STOP,
    TAG_AR_STOP,
    TAG_ROLE,
    TAG_TRIAL_ID,
    TEST,
    VALIDATION,
    item_split,
    validation_key,
)

from .conftest import bucket_keys, new_bucket, tiny_study
from .test_platform import run, runs

ANNEAL = {
    "data": {"heldout_tokens": "64k"},  # enough held-out documents for both halves of the cloze items
    # half of each run a decay, so that every eval point but the last is a stop with steps to anneal
    "train": {
        "total_tokens": 16384,
        "global_batch_tokens": 512,
        "warmup_tokens": 1024,
        "decay_fraction": 0.5,
        "keep_checkpoints": "all",
    },
    "eval": {"every": 2048, "tasks": ["heldout_cloze"], "max_items": 32},
    "grid": {"objective": ["ar", "mdlm"], "unique_tokens": ["4k"]},  # one cell: the suite's time (the efficiency
    # table's reading of anneal runs is tested on planted studies in test_analysis_mlflow)
    # the gold span's NLL: AR on 2k-4k unique tokens overfits within the run, so its best point is before the end
    "early_stopped_ar": {"anneal": True, "metric": "eval/heldout_cloze/nll"},
}


def test_items_split_into_validation_and_test_by_document_alike_everywhere():
    ids = [f"{doc}@{offset}" for doc in range(60) for offset in (48, 112, 176)]
    halves = {}
    for item_id in ids:
        halves.setdefault(item_id.split("@")[0], set()).add(item_split(item_id))
    assert all(len(h) == 1 for h in halves.values())  # a document's items are all in one half
    validation = sum(h == {VALIDATION} for h in halves.values())
    assert 20 <= validation <= 40  # about half the documents each
    # a hash of the document id, the same in every process and release (pinned)
    assert [item_split(f"{doc}@48") for doc in ("0", "2", "18", "72")] == [VALIDATION, TEST, VALIDATION, TEST]
    assert (item_split("HumanEval/0"), item_split("HumanEval/1")) == (TEST, VALIDATION)  # no offset: the id

    # the trainer's metrics: every item's mean, and the validation half's as its own metric; per-item results keep all
    result = TaskResult(
        "heldout_cloze", {"acc": 0.5}, ["0@48", "0@112", "2@48", "18@48"], {"acc": [1.0, 0.0, 1.0, 1.0]}
    )
    metrics = metrics_of([result])
    assert metrics["eval/heldout_cloze/acc"] == 0.5
    assert metrics[validation_key("heldout_cloze", "acc")] == pytest.approx(2 / 3)  # documents 0 and 18
    assert choose_stop([(2048, 0.4), (4096, 0.6), (6144, 0.6), (8192, 0.5)], "eval/x/acc") == 4096
    assert choose_stop([(2048, 3.0), (4096, 2.5), (6144, 2.7)], "eval/x/nll") == 4096  # lower is better


def test_the_spec_refuses_a_stop_metric_without_validation_items(tiny_corpus):
    from crossover.specs import SpecError

    with pytest.raises(SpecError, match="early_stopped_ar.anneal.*add heldout_cloze"):
        parse_study(tiny_study(tiny_corpus, early_stopped_ar={"anneal": True})).expand()  # heldout_loss only
    with pytest.raises(SpecError, match="early_stopped_ar.metric.*not a metric the trials report"):
        parse_study(
            tiny_study(tiny_corpus, **{**ANNEAL, "early_stopped_ar": {"metric": "eval/hellaswag/acc"}})
        ).expand()
    default = parse_study(tiny_study(tiny_corpus, **{**ANNEAL, "early_stopped_ar": {"anneal": True}}))
    from crossover.specs.anneal import anneal_metric

    assert anneal_metric(default) == "eval/heldout_cloze/acc_pmi" and len(default.expand()) == 2


def test_plan_counts_the_anneal_trials_on_their_own_line(tiny_corpus, tmp_path):
    spec = tmp_path / "study.yaml"
    spec.write_text(yaml.safe_dump(tiny_study(tiny_corpus, **ANNEAL)))
    result = CliRunner().invoke(app, ["plan", str(spec)])
    assert result.exit_code == 0, result.output
    # 1 AR trial, eval every 2048 of 16384 in batches of 512: the costliest stop (14336, its decay from 7168 on)
    # continues the checkpoint at 6144: 8192 tokens at most
    assert "anneal: up to 1 more AR trial, each annealed to its validation-chosen stop: at most 8.19k tokens" in (
        result.output
    ), result.output
    assert "then up to 1 anneal trials" in result.output
    off = tmp_path / "off.yaml"
    off.write_text(yaml.safe_dump(tiny_study(tiny_corpus, **{**ANNEAL, "early_stopped_ar": {"anneal": False}})))
    assert "anneal:" not in CliRunner().invoke(app, ["plan", str(off)]).output


def test_a_stop_at_the_last_eval_point_is_not_annealed_when_the_budget_is_not_whole_batches(tiny_corpus, tmp_path):
    """A budget that is not a whole number of batches ends at its last eval point (16,384 of 16,500 tokens): a stop
    there is the trial's own end, annealed by its own schedule; one before it is annealed."""
    from crossover.platform.anneal import plan_anneals
    from crossover.platform.tracking import TrialRun, finish_study
    from crossover.trainers.schedules import eval_steps

    from .analysis_support import start

    raw = tiny_study(tiny_corpus, **{**ANNEAL, "train": {**ANNEAL["train"], "total_tokens": 16500}})
    raw["grid"] = {"objective": ["ar"], "unique_tokens": ["4k", "8k"]}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec, parent = start(raw, uri)
    for trial in spec.expand():
        points = [step * trial.train.global_batch_tokens for step in eval_steps(trial)]
        assert points[-1] == 16384
        best = points[-1] if trial.unique_tokens == 4000 else points[3]  # the 8k trial peaks mid-run
        run = TrialRun(trial, uri, parent)
        for tokens in points:
            run.log({"tokens": tokens, validation_key("heldout_cloze", "nll"): 1 + abs(tokens - best) / 1e4}, tokens)
        run.finish()
    finish_study(uri, parent)
    plan = plan_anneals(spec, uri, parent, str(tmp_path / "storage"))
    assert [(a.of.unique_tokens, a.stop) for a in plan.anneals] == [(8000, 8192)]
    assert "not annealed (best at the end: the AR trial is its own anneal): ar-U4k" in "; ".join(plan.notes)


@pytest.mark.xdist_group("ray")
def test_run_anneals_each_ar_trial_to_its_validation_chosen_stop_and_the_analysis_reads_it(study, s3, tmp_path):
    from crossover.analysis import analyze_study, read_study
    from crossover.specs.hardware import Runtime
    from crossover.trainers.launch import LocalReporter
    from crossover.trainers.loop import train
    from crossover.trainers.schedules import lr_at

    spec = study["write"](**ANNEAL)
    on_s3 = {**study, "storage": new_bucket("crossover-anneal") + "/ray"}
    result = run(on_s3, spec, timeout=900)  # 2 trials and 1 anneal on 2 cores: about 2 minutes
    assert result.returncode == 0, result.stdout + result.stderr
    assert "annealing AR to its validation-chosen stop at " in result.stdout, result.stdout
    # the kept checkpoint found in the bucket, not trained from scratch
    assert "1 continue a kept checkpoint" in result.stdout and "not annealed (" not in result.stdout, result.stdout
    keys = bucket_keys(on_s3["storage"])
    trials_kept = {key.split("/")[1] for key in keys if key.startswith("tiny/") and "/checkpoint_" in key}
    assert trials_kept == {"ar-U4k-nano-s0", "mdlm-U4k-nano-s0"}, keys  # keep_checkpoints: all
    assert any(key.startswith("tiny/ar-U4k-nano-s0/checkpoint_") and key.endswith("_optim_states.pt") for key in keys)
    assert any(key.startswith("tiny.branches/") and key.endswith("rank0_crossover_state.json") for key in keys)
    assert any(key.startswith("tiny.anneal-") and key.endswith("/result.json") for key in keys)  # its own experiment
    assert not Path(study["storage"]).exists()  # nothing local but the driver's log
    # the embedded store's artifacts (each run's spec) beside the checkpoints, not in a local mlartifacts
    assert any(key.startswith("mlartifacts/") and key.endswith("/artifacts/spec/study.yaml") for key in keys), keys
    client, _, children = runs(study["uri"])
    trials = {t.trial_id: t for t in parse_study(yaml.safe_load(spec.read_text())).expand()}
    anneals = [c for c in children if c.data.tags.get(TAG_ROLE) == ROLE_ANNEAL]
    ar_runs = [
        c
        for c in children
        if c.data.tags[TAG_TRIAL_ID] in trials and trials[c.data.tags[TAG_TRIAL_ID]].objective == "ar"
    ]
    assert len(children) == 3 and len(anneals) == len(ar_runs) == 1  # one anneal per AR trial
    for ar_run in ar_runs:
        ar = trials[ar_run.data.tags[TAG_TRIAL_ID]]
        history = client.get_metric_history(ar_run.info.run_id, validation_key("heldout_cloze", "nll"))
        stop = choose_stop([(m.step, m.value) for m in history], "eval/heldout_cloze/nll")
        assert ar_run.data.tags[TAG_AR_STOP] == str(stop) and stop < ar.total_tokens
        (anneal,) = [a for a in anneals if a.data.tags[TAG_ANNEAL_OF] == ar.trial_id]
        assert anneal.info.status == "FINISHED" and anneal.data.tags[TAG_ANNEAL_STOP] == str(stop)
        assert anneal.data.params["train.total_tokens"] == str(stop)  # its schedule ends at the stop
        expected = anneal_trial(ar, stop)
        assert anneal.data.tags[TAG_TRIAL_ID] == expected.trial_id and anneal.info.run_name == expected.name
        lrs = sorted((m.step, m.value) for m in client.get_metric_history(anneal.info.run_id, "lr"))
        assert lrs[-1][0] == stop
        assert lrs[-1][1] == pytest.approx(lr_at(stop - 512, expected.train)) and lrs[-1][1] < ar.train.lr  # decayed

    # The anneal continued the AR trial's kept checkpoint: it equals the same trial trained from scratch.
    anneal = max(anneals, key=lambda a: int(a.data.tags[TAG_ANNEAL_STOP]))
    assert int(anneal.data.tags[TAG_ANNEAL_STOP]) >= 4096  # its decay begins after the first kept checkpoint
    expected = anneal_trial(trials[anneal.data.tags[TAG_ANNEAL_OF]], int(anneal.data.tags[TAG_ANNEAL_STOP]))
    scratch = LocalReporter(tmp_path / "scratch")
    # with the precision and compile the study resolved for its trials (recorded on the run): on an AVX512 CPU
    # `precision: auto` is a measurement, which a second one here may resolve the other way
    params = anneal.data.params
    runtime = Runtime(
        device="cpu",
        precision=params["runtime.precision"],
        compile=params["runtime.compile"] == "True",
        why="as the study's trials ran",
    )
    train(expected, scratch, runtime=runtime)
    logged = {m.step: m.value for m in client.get_metric_history(anneal.info.run_id, "eval/heldout_cloze/nll")}
    last = scratch.history()[-1]
    assert last["step"] == expected.total_tokens
    assert logged[last["step"]] == pytest.approx(last["eval/heldout_cloze/nll"], rel=1e-4, abs=1e-4)

    data = read_study("tiny", study["uri"])
    anneal_ids = {a.data.tags[TAG_TRIAL_ID] for a in anneals}
    assert not anneal_ids & set(data.trials["trial_id"]) and not anneal_ids & set(data.curves["trial_id"])
    assert set(data.anneals["trial_id"]) == anneal_ids and len(data.anneal_curves)
    analysis = analyze_study(data, n_boot=50)
    best = analysis.ar_best.by_cell["unique_tokens=4k"]
    assert best.source.startswith("annealed at ") and best.annealed and best.test_items and best.mdlm_last is not None
    assert best.seeds[0].run_id in {a.info.run_id for a in anneals}
    assert best.difference is not None and best.difference.seeds == 1  # MDLM's last against it, on the test items

    again = run(on_s3, spec, "--resume", timeout=900)  # Tune's state restored from the bucket: nothing to train
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 AR anneal(s) finished earlier and are kept" in again.stdout, again.stdout
    assert len(runs(study["uri"])[2]) == 3
