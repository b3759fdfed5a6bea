"""Checkpoints load into an EvalModel that computes what the trained network computed."""

import pytest
import torch

from crossover.evals.checkpoint import CheckpointError, load_checkpoint


@pytest.mark.parametrize("objective", ["ar", "mdlm"])
def test_checkpoint_loads_the_trained_model(tiny_checkpoints, objective):
    em = load_checkpoint(tiny_checkpoints[objective])
    assert em.objective == objective and em.trial.objective == objective
    assert em.model.causal == (objective == "ar") and not em.model.training
    ids = em.encode("def f(x):\n    return x\n")
    assert em.decode(ids) == "def f(x):\n    return x\n"
    assert em.mask_id != em.eod_id
    tokens = torch.tensor([ids])
    if objective == "mdlm":  # an MDLM predicts masked positions only
        tokens[:, 1::2] = em.mask_id
    logits = em.model(tokens).logits
    assert torch.isfinite(logits).all()
    # trained, not random: the next-token distribution is far from uniform
    entropy = -(logits.log_softmax(-1).exp() * logits.log_softmax(-1)).sum(-1).mean()
    assert entropy < torch.log(torch.tensor(float(logits.shape[-1]))) - 0.5  # random init: log V within 0.05


def test_a_directory_that_is_no_checkpoint_names_what_is_missing(tmp_path):
    with pytest.raises(CheckpointError, match="trial.json, tokenizer.json missing"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
