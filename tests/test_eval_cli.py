"""`crossover eval CHECKPOINT --tasks ...`: the trainer's evaluation code on a saved checkpoint."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from crossover.cli import app

LM_EVAL_TASKS = __import__("pathlib").Path(__file__).parent / "data" / "lm_eval"


@pytest.fixture(autouse=True)
def _cache(session_cache, monkeypatch):
    monkeypatch.setenv("CROSSOVER_CACHE", str(session_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.mark.parametrize("objective", ["ar", "mdlm"])
def test_eval_prints_and_writes_every_task(tiny_checkpoints, tmp_path, monkeypatch, objective):
    monkeypatch.chdir(LM_EVAL_TASKS)  # the local lm-eval task names its data files relative to here
    out = tmp_path / "results.json"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            str(tiny_checkpoints[objective]),
            "--tasks",
            "heldout_loss,heldout_cloze,lm_eval:crossover_pyfacts",
            "--max-items",
            "8",
            "--mc-samples",
            "2",
            "--mdlm-block",
            "4",
            "--lm-eval-include",
            str(LM_EVAL_TASKS),
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    saved = {r["task"]: r for r in json.loads(out.read_text())}
    assert set(saved) == {"heldout_loss", "heldout_cloze", "lm_eval:crossover_pyfacts"}
    assert 3.0 < saved["heldout_loss"]["metrics"]["loss"] < 8.0
    for task in ("heldout_cloze", "lm_eval:crossover_pyfacts"):
        assert 0.0 <= saved[task]["metrics"]["acc"] <= 1.0
        assert len(saved[task]["item_ids"]) == len(saved[task]["item_metrics"]["acc"]) == 8
        assert task in result.output


def test_eval_of_a_folder_that_is_no_checkpoint_exits_2(tmp_path):
    result = CliRunner().invoke(app, ["eval", str(tmp_path), "--tasks", "heldout_loss"])
    assert result.exit_code == 2 and "trial.json" in result.output
    result = CliRunner().invoke(app, ["eval", str(tmp_path), "--tasks", "heldout_los"])
    assert result.exit_code == 2 and "unknown eval task" in result.output


def test_a_checkpoint_from_before_the_block_size_still_loads(tiny_checkpoints, tmp_path):
    """A checkpoint whose trial.json has the retired eval.mdlm_steps loads, scored with the default block (exact)."""
    from crossover.evals.checkpoint import TRIAL_FILE, load_checkpoint

    old = tmp_path / "old"
    shutil.copytree(tiny_checkpoints["mdlm"], old)
    trial = json.loads((old / TRIAL_FILE).read_text())
    del trial["eval"]["mdlm_block"]
    trial["eval"]["mdlm_steps"] = 4
    (old / TRIAL_FILE).write_text(json.dumps(trial))
    assert load_checkpoint(old).trial.eval.mdlm_block == 1
