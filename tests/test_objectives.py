"""Objectives: the AR and MDLM losses against direct computations, the masking process, and the MDLM bound."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from crossover.models.objectives import (
    ar_inputs_targets,
    ar_loss,
    input_mask_noise,
    mask_tokens,
    mdlm_loss,
    sample_t,
)

MASK = 31


pytestmark = pytest.mark.usefixtures("one_thread")


def random_batch(seed: int, B: int = 3, T: int = 7, V: int = 32):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g) * 3
    targets = torch.randint(0, V - 1, (B, T), generator=g)
    return g, logits, targets


def test_ar_loss_equals_cross_entropy():
    g, logits, targets = random_batch(0)
    expected = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    torch.testing.assert_close(ar_loss(logits, targets), expected)
    loss_mask = torch.rand(targets.shape, generator=g) < 0.5
    expected = F.cross_entropy(logits[loss_mask], targets[loss_mask])
    torch.testing.assert_close(ar_loss(logits, targets, loss_mask), expected)
    torch.testing.assert_close(
        ar_loss(logits.bfloat16(), targets), F.cross_entropy(logits.bfloat16().float().flatten(0, 1), targets.flatten())
    )
    assert ar_loss(logits, targets, torch.zeros_like(loss_mask)).item() == 0.0


def test_ar_targets_are_the_next_tokens():
    tokens = torch.arange(10).view(2, 5)
    inputs, targets = ar_inputs_targets(tokens)
    assert inputs.tolist() == [[0, 1, 2, 3], [5, 6, 7, 8]] and targets.tolist() == [[1, 2, 3, 4], [6, 7, 8, 9]]


def mdlm_loss_loop(logits, targets, masked, t, loss_mask=None):
    B, T, _ = logits.shape
    total, positions = 0.0, 0
    for b in range(B):
        for i in range(T):
            if loss_mask is not None and not loss_mask[b, i]:
                continue
            positions += 1
            if masked[b, i]:
                total += -torch.log_softmax(logits[b, i].double(), -1)[targets[b, i]].item() / t[b].item()
    return total / max(positions, 1)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), B=st.integers(1, 4), T=st.integers(1, 9), with_loss_mask=st.booleans())
def test_mdlm_loss_equals_a_per_position_loop(seed, B, T, with_loss_mask):
    g, logits, targets = random_batch(seed, B, T)
    t = sample_t(B, 1e-3, g)
    _, masked = mask_tokens(targets, t, MASK, g)
    loss_mask = torch.rand(B, T, generator=g) < 0.7 if with_loss_mask else None
    assert mdlm_loss(logits, targets, masked, t, loss_mask).item() == pytest.approx(
        mdlm_loss_loop(logits, targets, masked, t, loss_mask), rel=1e-5, abs=1e-6
    )


def test_mask_tokens_masks_at_rate_t():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, MASK, (5, 20000), generator=g)
    t = torch.tensor([0.01, 0.1, 0.5, 0.9, 1.0])
    noisy, masked = mask_tokens(tokens, t, MASK, g)
    n = tokens.shape[1]
    for b in range(5):
        rate, p = masked[b].float().mean().item(), t[b].item()
        assert abs(rate - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-9, (rate, p)  # 5 standard errors
    assert (noisy[masked] == MASK).all() and torch.equal(noisy[~masked], tokens[~masked])
    again = mask_tokens(tokens, t, MASK, torch.Generator().manual_seed(7))[1]
    assert torch.equal(again, mask_tokens(tokens, t, MASK, torch.Generator().manual_seed(7))[1])  # reproducible


def test_sample_t_is_uniform_on_the_open_closed_interval():
    g = torch.Generator().manual_seed(0)
    t = sample_t(100000, 0.1, g)
    assert t.min() > 0.1 and t.max() <= 1.0
    assert t.mean().item() == pytest.approx(0.55, abs=5 * 0.26 / math.sqrt(1e5))
    strata = sample_t(8, 0.0, g, stratified=True)  # one draw in each eighth of (0, 1]
    assert sorted(((1 - strata) * 8).floor().long().tolist()) == list(range(8))
    with pytest.raises(ValueError, match="t_min"):
        sample_t(4, 1.0)


def test_input_mask_noise_replaces_a_fraction_of_inputs():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, MASK, (4, 10000), generator=g)
    noisy = input_mask_noise(tokens, 0.1, MASK, g)
    changed = noisy != tokens
    assert abs(changed.float().mean().item() - 0.1) < 5 * math.sqrt(0.09 / 40000)
    assert (noisy[changed] == MASK).all()
    assert input_mask_noise(tokens, 0.0, MASK, g) is tokens


def test_mdlm_loss_is_the_nll_in_expectation():
    """Tokens i.i.d. from p and a model that outputs p everywhere: E_{t, mask}[mdlm_loss] = -mean log p(x_i)."""
    g = torch.Generator().manual_seed(0)
    V, B, T = 8, 64, 64
    p = torch.softmax(torch.randn(V, generator=g) * 1.5, 0)
    tokens = torch.multinomial(p, B * T, replacement=True, generator=g).view(B, T)
    logits = p.log().expand(B, T, V)
    exact = -p.log()[tokens].mean().item()
    draws = []
    for _ in range(400):
        t = sample_t(B, 1e-3, g)
        _, masked = mask_tokens(tokens, t, V, g)
        draws.append(mdlm_loss(logits, tokens, masked, t).item())
    draws = torch.tensor(draws)
    stderr = draws.std().item() / math.sqrt(len(draws))
    assert abs(draws.mean().item() - exact) < 4 * stderr + 1e-3, (draws.mean().item(), exact, stderr)
    # With a loss_mask, the same holds for the mean over the loss positions.
    loss_mask = torch.arange(T)[None, :] < torch.randint(1, T, (B, 1), generator=g)
    exact = -(p.log()[tokens] * loss_mask).sum().item() / loss_mask.sum().item()
    draws = []
    for _ in range(400):
        t = sample_t(B, 1e-3, g)
        _, masked = mask_tokens(tokens, t, V, g)
        draws.append(mdlm_loss(logits, tokens, masked, t, loss_mask).item())
    draws = torch.tensor(draws)
    stderr = draws.std().item() / math.sqrt(len(draws))
    assert abs(draws.mean().item() - exact) < 4 * stderr + 1e-3
