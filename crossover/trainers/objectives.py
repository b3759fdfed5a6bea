"""The two training objectives as small pure functions (randomness is drawn by the caller and passed in).

Conventions
- logits [B, T, V] and targets [B, T] are aligned: logits[:, i] predicts targets[:, i].
  AR: the caller shifts, `inputs, targets = ar_inputs_targets(tokens)` (inputs = tokens[:, :-1],
  targets = tokens[:, 1:]); MDLM: no shift, targets are the clean tokens themselves.
- loss_mask [B, T] (bool, or 0/1) marks the target positions that count; None = all of them.
- Cross-entropy is computed in float32 whatever the logits' dtype.

AR step:   noisy = input_mask_noise(inputs, ratio, mask_id, g) (only on the input-noise axis; targets unchanged)
           loss = ar_loss(model(noisy).logits, targets)
MDLM step: t = sample_t(B, t_min, g); noisy, masked = mask_tokens(tokens, t, mask_id, g)
           loss = mdlm_loss(model(noisy).logits, tokens, masked, t)
Both:      loss = loss + out.aux_loss (MoE)

MDLM ("no shift", linear schedule alpha_t = 1 - t, weight 1/t): for t ~ U(t_min, 1] and each position masked with
probability t, E[mdlm_loss] = mean over positions of -log p(x_i | ...), an upper bound on the NLL per token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _draw_device(generator: torch.Generator | None, device: torch.device | str | None) -> torch.device | str | None:
    return generator.device if generator is not None else device


def ar_inputs_targets(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T+1] token windows -> (inputs [B, T], next-token targets [B, T])."""
    return tokens[:, :-1], tokens[:, 1:]


def _token_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-position cross-entropy [B, T] in float32."""
    B, T, V = logits.shape
    return F.cross_entropy(logits.reshape(B * T, V).float(), targets.reshape(B * T), reduction="none").view(B, T)


def ar_loss(logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions where loss_mask is set (targets already shifted)."""
    ce = _token_ce(logits, targets)
    if loss_mask is None:
        return ce.mean()
    weight = loss_mask.to(ce.dtype)
    return (ce * weight).sum() / weight.sum().clamp(min=1)


def sample_t(
    batch: int,
    t_min: float = 1e-3,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    stratified: bool = False,
) -> torch.Tensor:
    """Masking ratios t ~ U(t_min, 1], one per sequence, float32 [batch].

    stratified=True draws one t from each of `batch` equal strata of (t_min, 1] (MDLM's low-discrepancy sampler):
    still uniform per sequence, with lower variance of the batch mean. Drawn on the generator's device and returned
    on `device` (default: where it was drawn).
    """
    if not 0 <= t_min < 1:
        raise ValueError(f"t_min must be in [0, 1), got {t_min}")
    u = torch.rand(batch, generator=generator, device=_draw_device(generator, device))  # [0, 1)
    if stratified:
        u = (u + torch.arange(batch, device=u.device)) / batch
    t = 1.0 - (1.0 - t_min) * u  # (t_min, 1]
    return t if device is None else t.to(device)


def mask_tokens(
    tokens: torch.Tensor, t: torch.Tensor, mask_id: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace each position of row b independently with mask_id with probability t[b]. -> (noisy, masked).

    The uniforms are drawn on the generator's device (so a CPU generator can drive a CUDA batch) and moved."""
    u = torch.rand(tokens.shape, generator=generator, device=_draw_device(generator, tokens.device))
    u = u.to(tokens.device)
    masked = u < t.to(device=u.device, dtype=u.dtype).reshape(-1, *([1] * (tokens.dim() - 1)))
    return tokens.masked_fill(masked, mask_id), masked


def input_mask_noise(
    tokens: torch.Tensor, ratio: float, mask_id: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """AR input noise: each input token replaced by mask_id with probability `ratio` (the targets stay clean)."""
    if ratio <= 0:
        return tokens
    t = torch.full((tokens.shape[0],), float(ratio))
    return mask_tokens(tokens, t, mask_id, generator)[0]


def mdlm_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    masked: torch.Tensor,
    t: torch.Tensor,
    loss_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sum over masked (and loss_mask) positions of CE / t[b], divided by the number of loss positions (B*T if None)."""
    ce = _token_ce(logits, targets)
    weight = masked.to(ce.dtype)
    if loss_mask is not None:
        weight = weight * loss_mask.to(ce.dtype)
        positions = loss_mask.to(ce.dtype).sum().clamp(min=1)
    else:
        positions = ce.numel()
    return (ce * weight / t.to(device=ce.device, dtype=ce.dtype)[:, None]).sum() / positions
