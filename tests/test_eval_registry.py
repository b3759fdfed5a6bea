"""Evaluation tasks are components: a task added through the registry alone is validated, planned, scored at every
eval point of a real training run and by `crossover eval`, with no other file touched."""

import math

import pytest
import torch
import yaml
from typer.testing import CliRunner

from crossover.cli import app
from crossover.evals.registry import EvalTask, Ranks, register, trial_tasks, unregister
from crossover.evals.results import TaskResult
from crossover.specs import parse_study
from crossover.trainers.launch import LocalReporter
from crossover.trainers.loop import train
from crossover.trainers.schedules import eval_steps

from .conftest import tiny_study

TOY = "toy_first_token"


class FirstTokenEntropy(EvalTask):
    """A toy task: the entropy of the model's prediction of a document's first token (AR: after BOS; MDLM: the
    masked position after BOS), in nats."""

    metrics = ("entropy",)

    def __init__(self, name, settings, data):
        super().__init__(name, settings, data)
        self.position = None  # nothing to build; a real task builds its items here

    @torch.no_grad()
    def score(self, em, ranks: Ranks) -> list[TaskResult]:
        tokens = torch.tensor([[em.eod_id, em.mask_id]], device=em.device)
        logits = em.model(tokens).logits[0, 0 if em.objective == "ar" else 1].float()
        log_p = logits.log_softmax(-1)
        entropy = float(-(log_p.exp() * log_p).sum())
        return [TaskResult(self.name, {"entropy": entropy}, ["bos"], {"entropy": [entropy]})]

    @classmethod
    def cost(cls, name, trial) -> float:
        return 2.0  # one two-token row


@pytest.fixture
def toy_task():
    register(TOY, FirstTokenEntropy)
    yield TOY
    unregister(TOY)


@pytest.fixture(autouse=True)
def _cache(session_cache, monkeypatch):
    monkeypatch.setenv("CROSSOVER_CACHE", str(session_cache))


def _spec(corpus, tmp_path, tasks):
    raw = tiny_study(
        corpus,
        train={"total_tokens": 4096, "warmup_tokens": 0},
        eval={"every": "log:2", "tasks": tasks, "max_items": 4},
        grid={"objective": ["ar", "mdlm"], "unique_tokens": [4096]},
    )
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(raw))
    return raw, path


def test_an_unregistered_task_is_refused_at_its_line(tiny_corpus, tmp_path):
    _, path = _spec(tiny_corpus, tmp_path, ["heldout_loss", TOY])
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and f"unknown eval task '{TOY}'" in result.output and "eval.tasks" in result.output


@pytest.mark.parametrize("objective", ["ar", "mdlm"])
def test_a_task_added_through_the_registry_alone_is_validated_planned_trained_and_evaluated(
    tiny_corpus, tmp_path, toy_task, objective
):
    from crossover.evals.suite import evaluate_checkpoint
    from crossover.trainers.throughput import eval_tokens

    raw, path = _spec(tiny_corpus, tmp_path, ["heldout_loss", toy_task])
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output

    trial = next(t for t in parse_study(raw).expand() if t.objective == objective)
    assert trial_tasks(trial) == ["heldout_loss", toy_task]
    without = trial.model_copy(update={"eval": trial.eval.model_copy(update={"tasks": ["heldout_loss"]})})
    points = eval_steps(trial)
    assert eval_tokens(trial) - eval_tokens(without) == 2.0 * len(points)  # the plan counts its cost

    reporter = LocalReporter(tmp_path / "run")
    train(trial, reporter)
    history = reporter.history()
    assert [e["step"] // trial.train.global_batch_tokens for e in history] == points
    key = f"eval/{toy_task}/entropy"
    for e in history:
        assert 0.0 < e[key] <= math.log(trial.model.vocab_size) + 1e-4
        assert (tmp_path / "run" / "items" / toy_task / f"{e['step']}.json").is_file()

    last = reporter.checkpoints()[-1]
    (scored,) = evaluate_checkpoint(str(last), [toy_task])
    assert scored.task == toy_task and scored.metrics["entropy"] == pytest.approx(history[-1][key], rel=1e-4)
