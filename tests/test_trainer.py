"""The training loop with real DeepSpeed on CPU: matched pairs, exact resume, ZeRO stages, NaN, workers."""

import math

import pytest

from crossover.specs import parse_study
from crossover.specs.hardware import Runtime
from crossover.trainers.launch import LocalReporter
from crossover.trainers.loop import NonFiniteLoss, Trainer, train
from crossover.trainers.schedules import eval_steps

from .conftest import tiny_study


@pytest.fixture(autouse=True)
def _cache(session_cache, monkeypatch):
    monkeypatch.setenv("CROSSOVER_CACHE", str(session_cache))


def trials(corpus, **blocks):
    return {t.objective: t for t in parse_study(tiny_study(corpus, **blocks)).expand()}


def test_matched_pair_sees_identical_data_and_settings(tiny_corpus, tmp_path):
    pair = trials(tiny_corpus)
    results = {obj: train(t, LocalReporter(tmp_path / obj)) for obj, t in pair.items()}
    assert results["ar"]["data_hash"] == results["mdlm"]["data_hash"]
    assert pair["ar"].train == pair["mdlm"].train and pair["ar"].cell == pair["mdlm"].cell
    for obj, t in pair.items():
        evals = LocalReporter(tmp_path / obj).history()
        assert [e["step"] // 1024 for e in evals] == eval_steps(t)
        assert results[obj]["tokens"] == 40 * 1024 and results[obj]["steps"] == 40
        assert all(math.isfinite(e["eval/heldout_loss/loss"]) for e in evals)
        losses = [m["train/loss"] for m in LocalReporter(tmp_path / obj).history("metrics")]
        assert losses[-1] < losses[0] - 1.0  # it learns


def test_budget_seed_fixes_the_documents_and_the_seed_still_sets_initialisation_and_order(tiny_corpus, tmp_path):
    import torch

    grid = {"objective": ["ar"], "unique_tokens": ["10k"]}
    spec = tiny_study(tiny_corpus, data={"budget_seed": 3}, grid=grid, seeds=[0, 1])
    first, second = (Trainer(t, LocalReporter(tmp_path / str(t.seed))) for t in parse_study(spec).expand())
    assert (first.trial.seed, second.trial.seed) == (0, 1)
    assert list(first.stream.budget.documents) == list(second.stream.budget.documents)  # the same documents
    assert (first.stream.budget.tokens() == second.stream.budget.tokens()).all()
    assert first.stream.order_hash != second.stream.order_hash  # in each seed's own order
    weights = [next(iter(trainer.engine.module.parameters())).detach() for trainer in (first, second)]
    assert weights[0].shape == weights[1].shape and not torch.equal(weights[0], weights[1])  # and its own weights


@pytest.mark.parametrize("objective", ["ar", "mdlm"])
def test_resume_continues_exactly(tiny_corpus, tmp_path, objective):
    trial = trials(tiny_corpus, eval={"every": "8k"})[objective]  # eval and checkpoint every 8 steps
    whole = train(trial, LocalReporter(tmp_path / "whole"))
    interrupted = LocalReporter(tmp_path / "split", keep=1)
    train(trial, interrupted, stop_after_steps=19)  # stops between checkpoints (16 and 24)
    assert [p.name for p in interrupted.checkpoints()] == ["checkpoint_000000000016384"]
    resumed = train(trial, LocalReporter(tmp_path / "split", keep=1))
    assert resumed["tokens"] == whole["tokens"] == 40 * 1024
    assert resumed["data_hash"] == whole["data_hash"]
    assert resumed["train/loss"] == pytest.approx(whole["train/loss"], rel=1e-4, abs=1e-4)
    evals_whole = LocalReporter(tmp_path / "whole").history()
    evals_split = LocalReporter(tmp_path / "split").history()
    assert [e["step"] for e in evals_split] == [e["step"] for e in evals_whole]  # none duplicated or missing
    for a, b in zip(evals_whole, evals_split, strict=True):
        assert b["eval/heldout_loss/loss"] == pytest.approx(a["eval/heldout_loss/loss"], rel=1e-4, abs=1e-4)


def test_timed_checkpoints_between_eval_points_are_resumed_from(tiny_corpus, tmp_path):
    # A checkpoint due every 60 ns: every step that is not an eval point takes a timed one, whatever the machine.
    trial = trials(tiny_corpus, train={"checkpoint_minutes": 1e-9}, eval={"every": "8k"})["ar"]  # evals every 8 steps
    whole = train(trial, LocalReporter(tmp_path / "whole"))
    interrupted = LocalReporter(tmp_path / "split", keep=1)
    train(trial, interrupted, stop_after_steps=19)
    # The timed checkpoint at step 19 is kept beside the last eval point's; the ones before it were superseded.
    names = [p.name for p in interrupted.checkpoints()]
    assert names == ["checkpoint_000000000016384", "checkpoint_000000000019456_timed"]
    assert [e["step"] // 1024 for e in interrupted.history()] == [8, 16]  # no timed one taken for an eval point
    resumed = Trainer(trial, LocalReporter(tmp_path / "split", keep=1))
    assert resumed.stream.step == 19  # from the timed checkpoint, not the eval point at 16
    result = resumed.run()
    assert result["data_hash"] == whole["data_hash"]
    assert result["train/loss"] == pytest.approx(whole["train/loss"], rel=1e-4, abs=1e-4)
    assert [p.name for p in interrupted.checkpoints()] == ["checkpoint_000000000040960"]  # the end is an eval point
    evals_whole = LocalReporter(tmp_path / "whole").history()
    assert [e["step"] for e in interrupted.history()] == [e["step"] for e in evals_whole]


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_stages_train_on_cpu(tiny_corpus, tmp_path, stage):
    trial = trials(tiny_corpus, train={"zero_stage": stage, "total_tokens": 16384}, eval={"every": "log:2"})["ar"]
    reporter = LocalReporter(tmp_path)
    result = train(trial, reporter)
    losses = [m["train/loss"] for m in reporter.history("metrics")]
    assert result["steps"] == 16 and losses[-1] < losses[0]


def test_bf16_trains_on_cpu_through_deepspeed(tiny_corpus, tmp_path):
    trial = trials(
        tiny_corpus,
        train={"precision": "bf16", "total_tokens": 6144, "warmup_tokens": 1024},
        grid={"objective": ["ar"], "unique_tokens": [6144]},
        eval={"every": "log:1"},
    )["ar"]
    reporter = LocalReporter(tmp_path)
    train(trial, reporter)
    losses = [m["train/loss"] for m in reporter.history("metrics")]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.5  # it learns in bf16


@pytest.mark.parametrize(("objective", "stage"), [("ar", 0), ("mdlm", 1), ("ar", 2), ("mdlm", 3)])
def test_compiled_training_matches_eager_through_every_zero_stage(tiny_corpus, tmp_path, objective, stage):
    """Compiled blocks (what `compile: auto` does on CUDA) train through the one DeepSpeed path, with the same losses
    as eager training; inductor runs on CPU, so this checks it here."""
    trial = trials(tiny_corpus, train={"zero_stage": stage, "total_tokens": 10240}, eval={"every": "log:2"})[objective]
    losses = {}
    for compiled in (False, True):
        runtime = Runtime(device="cpu", precision="fp32", compile=compiled, why="test")
        reporter = LocalReporter(tmp_path / str(compiled))
        train(trial, reporter, runtime=runtime)
        losses[compiled] = [m["train/loss"] for m in reporter.history("metrics")]
        heldout = reporter.history()[-1]["eval/heldout_loss/loss"]
        losses[compiled].append(heldout)  # evaluation runs eager either way
    assert len(losses[True]) == 11 and losses[True][-2] < losses[True][0] - 1.0
    assert losses[True] == pytest.approx(losses[False], rel=1e-2, abs=1e-2)  # bf16's tolerance; fp32 is far closer


def test_nan_loss_stops_the_trial_naming_step_and_tokens(tiny_corpus, tmp_path):
    trial = trials(tiny_corpus, train={"lr": 1e6, "min_lr": 1.0, "grad_clip": 0.0, "precision": "fp32"})["ar"]
    with pytest.raises(NonFiniteLoss, match=r"at step \d+ after [\d,]+ tokens"):
        train(trial, LocalReporter(tmp_path))


class PoisonedTrainer(Trainer):
    """A trainer whose loss becomes NaN in one micro-batch of one step: the step the error must name."""

    poison_step = 7

    def _loss(self, tokens):
        loss, out = super()._loss(tokens)
        if self.stream.step == self.poison_step:  # the stream is one past the step it handed out: steps count from 1
            loss = loss * float("nan")
        return loss, out


def test_a_nan_between_log_points_is_reported_at_its_exact_step(tiny_corpus, tmp_path):
    """The loop synchronises only at log points; the losses of every step in between are checked there."""
    trial = trials(tiny_corpus, train={"precision": "fp32"})["ar"]
    trainer = PoisonedTrainer(trial, LocalReporter(tmp_path))
    trainer.log_every = 5  # log points at steps 5, 10, ... and the eval points 1, 6, 40: step 7 lies between two
    with pytest.raises(NonFiniteLoss, match=r"the training loss became nan at step 7 after 7,168 tokens"):
        trainer.run()
    assert [m["step"] // 1024 for m in LocalReporter(tmp_path).history("metrics")] == [1, 5, 6]  # raised at 10


class SlowFirstStep(Trainer):
    """The first step of a process pays compilation and warm-up: on the loop's clock, each micro-batch of the first
    step takes 3.5 s, every later one 0.5 s."""

    clock = 0.0

    def _loss(self, tokens):
        SlowFirstStep.clock += 3.5 if self.stream.step == 1 else 0.5  # the first step handed out is slow
        return super()._loss(tokens)


def test_tokens_per_second_leaves_out_the_first_steps_warm_up(tiny_corpus, tmp_path, monkeypatch):
    import types

    from crossover.trainers import loop

    # The loop's own clock, so the rate is exact (no wall time): 1,024 tokens in the second step's 0.5 s.
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: SlowFirstStep.clock))
    trial = trials(tiny_corpus, train={"precision": "fp32"}, eval={"every": "log:1"})["ar"]  # evaluate at the end only
    trainer = SlowFirstStep(trial, LocalReporter(tmp_path))
    trainer.log_every = 2
    trainer.run(stop_after_steps=2)
    first = LocalReporter(tmp_path).history("metrics")[0]
    assert first["step"] == 2048
    # 1,024 tokens in the second step's micro-batches (0.5 s each); with the first step's in the window, far fewer
    assert trial.grad_accum_steps == 2 and first["tokens_per_s"] == 1024 / (2 * 0.5)


def test_train_command_runs_one_trial_and_keeps_earlier_runs(tiny_corpus, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from crossover.cli import app

    spec = tmp_path / "tiny.yaml"
    spec.write_text(
        yaml.safe_dump(
            tiny_study(tiny_corpus, train={"total_tokens": 4096}, grid={"objective": ["mdlm"], "unique_tokens": ["4k"]})
        )
    )
    out = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(spec), "--trial", "mdlm-U4k-nano-s0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "done mdlm-U4k-nano-s0" in result.output
    assert [p.name for p in LocalReporter(out).checkpoints()][-1] == "checkpoint_000000000004096"
    again = runner.invoke(app, ["train", str(spec), "--trial", "0", "--out", str(out)])
    assert again.exit_code == 2 and "--resume" in again.output
    assert runner.invoke(app, ["train", str(spec), "--trial", "0", "--out", str(out), "--resume"]).exit_code == 0
    unknown = runner.invoke(app, ["train", str(spec), "--trial", "ar-U9k", "--out", str(tmp_path / "x")])
    assert unknown.exit_code == 2 and "0: mdlm-U4k-nano-s0" in unknown.output


def test_eval_tasks_run_at_eval_points_with_per_item_results(tiny_corpus, tmp_path):
    import json

    trial = trials(
        tiny_corpus,
        train={"total_tokens": 4096},
        eval={"every": "log:2", "tasks": ["heldout_loss", "heldout_cloze"], "max_items": 12},
        grid={"objective": ["mdlm"], "unique_tokens": [4096]},
    )["mdlm"]
    reporter = LocalReporter(tmp_path)
    train(trial, reporter)
    evals = reporter.history()
    assert [e["step"] for e in evals] == [1024, 4096]  # log:2 of 4 steps
    for e in evals:
        assert 0.0 <= e["eval/heldout_cloze/acc"] <= 1.0 and math.isfinite(e["eval/heldout_cloze/delta_nll"])
        assert e["eval_seconds"] > 0
        items = json.loads((tmp_path / "items" / "heldout_cloze" / f"{e['step']}.json").read_text())
        assert items["task"] == "heldout_cloze" and len(items["ids"]) == len(items["metrics"]["acc"]) > 0
        assert sum(items["metrics"]["acc"]) / len(items["ids"]) == pytest.approx(e["eval/heldout_cloze/acc"])
    first, last = (json.loads((tmp_path / "items" / "heldout_cloze" / f"{s}.json").read_text()) for s in (1024, 4096))
    assert first["ids"] == last["ids"]  # the same items at every eval point


def test_a_trial_started_from_a_process_that_trained_in_process_gets_its_own_port(tiny_corpus, tmp_path):
    """A one-process trial never reuses the MASTER_PORT it inherits: the parent (a test session, a notebook that
    trained in-process) may still hold it, as here."""
    import os
    import socket
    import subprocess
    import sys

    import yaml

    spec = tmp_path / "tiny.yaml"
    spec.write_text(
        yaml.safe_dump(
            tiny_study(
                tiny_corpus,
                train={"total_tokens": 2048, "warmup_tokens": 0},
                grid={"objective": ["ar"], "unique_tokens": [2048]},
            )
        )
    )
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        env = {
            **os.environ,
            "RANK": "0",
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(held.getsockname()[1]),
        }
        result = subprocess.run(
            [sys.executable, "-m", "crossover.cli", "train", str(spec), "--trial", "0", "--out", str(tmp_path / "run")],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


@pytest.mark.parametrize("objective", ["ar", "mdlm"])
def test_a_longer_trial_continued_from_the_branch_equals_one_trained_from_scratch(tiny_corpus, tmp_path, objective):
    """wsd: a trial keeps its state where the decay begins; a trial of twice the length continued from it matches,
    step for step after that point, the same longer trial trained from scratch (data order, RNG, optimizer)."""
    from crossover.trainers.schedules import branch_step

    short = trials(tiny_corpus, eval={"every": "8k"})[objective]  # 40 steps, decay from step 32
    long = trials(tiny_corpus, eval={"every": "8k"}, train={"total_tokens": 81920})[objective]
    assert long.lineage_id == short.lineage_id and long.trial_id != short.trial_id
    assert branch_step(short) == 32 and branch_step(long) == 64
    train(short, LocalReporter(tmp_path / "short"))
    assert (tmp_path / "short" / "branch" / "trial.json").exists()
    continued = train(long, LocalReporter(tmp_path / "continued", continues=str(tmp_path / "short" / "branch")))
    scratch = train(long, LocalReporter(tmp_path / "scratch"))
    assert continued["data_hash"] == scratch["data_hash"] and continued["tokens"] == scratch["tokens"] == 81920
    evals = {name: LocalReporter(tmp_path / name).history() for name in ("continued", "scratch")}
    assert [e["step"] for e in evals["continued"]] == [e["step"] for e in evals["scratch"] if e["step"] > 32 * 1024]
    by_step = {e["step"]: e for e in evals["scratch"]}
    for e in evals["continued"]:
        assert e["eval/heldout_loss/loss"] == pytest.approx(by_step[e["step"]]["eval/heldout_loss/loss"], rel=1e-4)
        assert e["train/loss"] == pytest.approx(by_step[e["step"]]["train/loss"], rel=1e-4, abs=1e-4)


def test_a_trial_cannot_continue_one_of_another_lineage(tiny_corpus, tmp_path):
    short = trials(tiny_corpus, eval={"every": "8k"})["ar"]
    other = trials(tiny_corpus, eval={"every": "8k"}, train={"total_tokens": 81920, "lr": 1e-3})["ar"]
    train(short, LocalReporter(tmp_path / "short"), stop_after_steps=33)
    with pytest.raises(ValueError, match="cannot continue"):
        train(other, LocalReporter(tmp_path / "other", continues=str(tmp_path / "short" / "branch")))


def test_a_checkpoint_of_another_version_says_start_over(tiny_corpus, tmp_path):
    """A kept checkpoint whose trial.json no longer validates (eval.mdlm_steps was renamed eval.mdlm_block) is a
    clear error asking for --fresh, not a pydantic traceback."""
    import json

    short = trials(tiny_corpus, eval={"every": "8k"})["ar"]
    train(short, LocalReporter(tmp_path / "short"), stop_after_steps=33)
    saved = tmp_path / "short" / "branch" / "trial.json"
    old = json.loads(saved.read_text())
    old["eval"]["mdlm_steps"] = old["eval"].pop("mdlm_block")
    saved.write_text(json.dumps(old))
    with pytest.raises(ValueError, match=r"another version of crossover.*`crossover run --fresh`"):
        train(short, LocalReporter(tmp_path / "again", continues=str(saved.parent)))
