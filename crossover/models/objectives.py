"""The two training objectives as small pure functions (randomness is drawn by the caller and passed in).

They live beside the model, one floor below both the trainers and the evaluators, which use the same math.

Conventions
- logits [B, T, V] and targets [B, T] are aligned: logits[:, i] predicts targets[:, i].
  AR: the caller shifts, `inputs, targets = ar_inputs_targets(tokens)` (inputs = tokens[:, :-1],
  targets = tokens[:, 1:]); MDLM: no shift, targets are the clean tokens themselves.
- loss_mask [B, T] (bool, or 0/1) marks the target positions that count; None = all of them.
- Cross-entropy is computed in float32 whatever the logits' dtype.
- Both losses are a weighted sum of per-position cross-entropy, sum_i w_i * CE_i, with the weights of
  `ar_weights` / `mdlm_weights`. That is what lets the training step compute them without the logits: the model's
  head evaluates `linear_cross_entropy(hidden, head_weight, targets, weights)`, chunk by chunk, and never holds the
  [B, T, V] logits (nor their float32 copy) of the whole batch.

AR step:   noisy = input_mask_noise(inputs, ratio, mask_id, g) (only on the input-noise axis; targets unchanged)
           loss = ar_loss(model(noisy).logits, targets)
                = model(noisy, targets=targets, loss_weights=ar_weights(targets)).loss
MDLM step: t = sample_t(B, t_min, g); noisy, masked = mask_tokens(tokens, t, mask_id, g)
           loss = mdlm_loss(model(noisy).logits, tokens, masked, t)
                = model(noisy, targets=tokens, loss_weights=mdlm_weights(masked, t)).loss
Both:      loss = loss + out.aux_loss (MoE)

MDLM ("no shift", linear schedule alpha_t = 1 - t, weight 1/t): for t ~ U(t_min, 1] and each position masked with
probability t, E[mdlm_loss] = mean over positions of -log p(x_i | ...), an upper bound on the NLL per token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crossover.specs.model import LOSS_CHUNK_LOGITS

# Logits computed at once by `linear_cross_entropy`: ~32M float32 values (128 MiB) per chunk.
CHUNK_LOGITS = LOSS_CHUNK_LOGITS


def _draw_device(generator: torch.Generator | None, device: torch.device | str | None) -> torch.device | str | None:
    return generator.device if generator is not None else device


def ar_inputs_targets(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T+1] token windows -> (inputs [B, T], next-token targets [B, T])."""
    return tokens[:, :-1], tokens[:, 1:]


def token_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-position cross-entropy [...] in float32 for logits [..., V] and targets [...]."""
    V = logits.shape[-1]
    ce = F.cross_entropy(logits.reshape(-1, V).float(), targets.reshape(-1), reduction="none")
    return ce.view(targets.shape)


def ar_weights(targets: torch.Tensor, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-position weights of the AR loss: 1/(positions that count) where loss_mask is set, else 0."""
    if loss_mask is None:
        return torch.full(targets.shape, 1.0 / targets.numel(), device=targets.device)
    weight = loss_mask.to(torch.float32)
    return weight / weight.sum().clamp(min=1)


def mdlm_weights(masked: torch.Tensor, t: torch.Tensor, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-position weights of the MDLM loss: 1/t[b] at masked (and loss_mask) positions, over the loss positions."""
    weight = masked.to(torch.float32)
    if loss_mask is not None:
        weight = weight * loss_mask.to(torch.float32)
        positions = loss_mask.to(torch.float32).sum().clamp(min=1)
    else:
        positions = masked.numel()
    return weight / t.to(device=weight.device, dtype=torch.float32)[:, None] / positions


def ar_loss(logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions where loss_mask is set (targets already shifted)."""
    return (token_ce(logits, targets) * ar_weights(targets, loss_mask)).sum()


def mdlm_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    masked: torch.Tensor,
    t: torch.Tensor,
    loss_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sum over masked (and loss_mask) positions of CE / t[b], divided by the number of loss positions (B*T if None)."""
    return (token_ce(logits, targets) * mdlm_weights(masked, t, loss_mask)).sum()


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_i w_i * CE(hidden_i @ weight^T, target_i), a chunk of rows at a time.

    The gradients are computed in the forward pass, chunk by chunk (softmax minus one-hot, scaled by w), and kept;
    backward only scales them. So neither the logits nor their gradient ever exist for the whole batch: memory is
    one chunk of float32 logits plus gradients the size of `hidden` and `weight`.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, weights, chunk_rows: int):  # noqa: ANN001 - autograd signature
        grad_needed = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if grad_needed else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if grad_needed else None
        for start in range(0, hidden.shape[0], chunk_rows):
            h, y, w = (x[start : start + chunk_rows] for x in (hidden, targets, weights))
            logits = (h @ weight.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            loss += ((lse - logits.gather(1, y[:, None]).squeeze(1)) * w).sum()
            if grad_needed:
                grad = (logits - lse[:, None]).exp_()  # softmax
                grad.scatter_add_(1, y[:, None], torch.full_like(w[:, None], -1.0))
                grad = (grad * w[:, None]).to(hidden.dtype)
                grad_hidden[start : start + chunk_rows] = grad @ weight
                grad_weight += (grad.t() @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):  # noqa: ANN001 - autograd signature
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_h = grad_hidden * grad_loss.to(grad_hidden.dtype) if ctx.needs_input_grad[0] else None
        grad_w = (grad_weight * grad_loss).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        return grad_h, grad_w, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """sum_i weights_i * CE(hidden_i @ weight^T, targets_i) without the logits of the whole batch.

    hidden [..., d], weight [V, d] (the output head), targets and weights [...] (weights float32, e.g. from
    `ar_weights` or `mdlm_weights`). Equals `(token_ce(hidden @ weight.T, targets) * weights).sum()`, gradients
    included; `chunk_rows` defaults to ~CHUNK_LOGITS logits per chunk.
    """
    d = hidden.shape[-1]
    rows = chunk_rows or max(1, CHUNK_LOGITS // weight.shape[0])
    return _LinearCrossEntropy.apply(
        hidden.reshape(-1, d), weight, targets.reshape(-1), weights.reshape(-1).to(torch.float32), rows
    )


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
