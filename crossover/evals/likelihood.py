"""Per-example log-likelihood of continuations, for multiple-choice scoring and held-out NLL.

Inputs, shared by both estimators (a scorer packs (context, continuation) pairs into one padded batch):
- tokens [B, T]: context followed by continuation, right-padded (any pad id: padding is never attended to);
- continuation_mask [B, T] bool: True at the continuation tokens whose log-likelihood is summed;
- lengths [B] (optional): the number of real tokens per row; None = no padding.
Both return log p(continuation | context) per example, float32 [B] (0 for a row without continuation tokens).

`model` is anything called as model(tokens, attention_mask=...) that returns a `crossover.models.ModelOutput`
(or plain logits): the AR model for `ar_loglik`, the MDLM model for `mdlm_loglik`. The model is put in eval mode for
the call and restored afterwards; no gradients are recorded.

`ar_loglik` is exact: sum over continuation positions i of log p(x_i | x_<i).

`mdlm_ordered_loglik` is MDLM's exact counterpart, the default for multiple choice: the chain rule in reading order,
sum over i of log p(x_i | context, x_<i, the later continuation tokens masked), one forward per continuation token.
With `block` B > 1 it decodes B tokens per step, each from its marginal given what is revealed: a cheaper (ceil(L / B)
forwards), weaker sampler that ignores the dependencies between the tokens of a block (docs/results.md, "MDLM scorer
sensitivity", measures what it costs). Every continuation, whatever its length, is cut into blocks of the same size,
so the choices of one item are scored alike.

`mdlm_loglik` is the Monte Carlo ELBO (a lower bound in expectation), masking only continuation tokens. With L the
continuation length, the masked-diffusion bound
    E_{t ~ U(0,1]} E_{each token masked w.p. t} [ (1/t) * sum_{masked i} log p(x_i | noisy) ]
equals, because integral_0^1 (1/t) P(Binomial(L, t) = m) dt = 1/m, the same average over the number of masked tokens
m ~ U{1..L} with an exactly-m subset and weight L/m (the LLaDA form). This module samples that form: it has the same
expectation and finite variance (the Bernoulli form's 1/t weight gives unbounded variance as t -> 0). The K samples per
example use stratified t: t_j = (j + u_j) / K, j = 0..K-1, m_j = ceil(t_j * L); they run batched, as many rows per
forward as fit in `max_tokens` token positions (logits are [rows, T, V]: size it to the accelerator's memory).
The ELBO's expectation is the chain rule averaged over all orders of unmasking the continuation one token at a time
(reading order is one of them); K samples estimate it with Monte Carlo noise, where `mdlm_ordered_loglik` computes one
order exactly for the same L forwards per continuation as K = L samples.

Ids that are no real token (`exclude`: the mask, the pad; `EvalModel.excluded_ids`) never receive probability: every
scorer sets their logits to -inf before the log-softmax, so a continuation's log-probability is over real tokens
only. `continuation_loglik(em, ...)` is the one entry point the tasks and the lm-eval bridge call: it picks the scorer
by the model's objective and passes the model's excluded ids.

Common random numbers: with `row_keys`, each row draws its t and mask order from its own stream, seeded by the
generator's seed and the row's key, over its continuation tokens only. Rows with the same key and continuation length
(the choices of one multiple-choice item) then get the same masks, so their difference is the model's and not the
draw's, whatever else is in the batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@contextlib.contextmanager
def evaluating(model: Callable) -> Iterator[None]:
    """Eval mode and no gradients for the duration; a live trainer model goes back to training mode afterwards."""
    was_training = isinstance(model, nn.Module) and model.training
    if was_training:
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was_training:
            model.train()


def logits_of(out) -> torch.Tensor:
    """The logits of a forward: a `ModelOutput` or plain logits."""
    return out if isinstance(out, torch.Tensor) else out.logits


def _valid_and_continuation(
    tokens: torch.Tensor, continuation_mask: torch.Tensor, lengths: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor]:
    if tokens.shape != continuation_mask.shape:
        raise ValueError(f"tokens {tuple(tokens.shape)} and continuation_mask {tuple(continuation_mask.shape)} differ")
    if lengths is None:
        return None, continuation_mask.bool()
    valid = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < lengths.to(tokens.device)[:, None]
    return valid, continuation_mask.bool() & valid


def _summed_logp(
    logits: torch.Tensor, targets: torch.Tensor, select: torch.Tensor, exclude: Sequence[int] = ()
) -> torch.Tensor:
    """Per row, sum of log p(targets) over the selected positions, normalised over the vocabulary less the `exclude`
    ids (their logits set to -inf); float32 only at the selected positions [B]."""
    row = select.nonzero()[:, 0]
    scored = logits[select].float()  # a copy: advanced indexing
    if len(exclude):
        scored[:, list(exclude)] = float("-inf")
    logp = -F.cross_entropy(scored, targets[select], reduction="none")
    return torch.zeros(select.shape[0], device=logits.device).index_add_(0, row, logp)


def _rows_logp(
    model: Callable,
    noisy: torch.Tensor,
    targets: torch.Tensor,
    scored: torch.Tensor,
    valid: torch.Tensor | None,
    max_tokens: int,
    exclude: Sequence[int] = (),
) -> torch.Tensor:
    """Per row of `noisy` [R, T], the summed log p(targets) at its `scored` positions [R], in forwards of at most
    `max_tokens` token positions (logits are [rows, T, V]: size it to the accelerator's memory)."""
    logp = torch.empty(noisy.shape[0], device=noisy.device, dtype=torch.float32)
    max_rows = max(1, max_tokens // noisy.shape[1])
    with evaluating(model):
        for start in range(0, noisy.shape[0], max_rows):
            rows = slice(start, start + max_rows)
            attn = None if valid is None else valid[rows]
            logits = logits_of(model(noisy[rows], attention_mask=attn))
            logp[rows] = _summed_logp(logits, targets[rows], scored[rows], exclude)
    return logp


def ar_loglik(
    model: Callable,
    tokens: torch.Tensor,
    continuation_mask: torch.Tensor,
    lengths: torch.Tensor | None = None,
    *,
    exclude: Sequence[int] = (),
) -> torch.Tensor:
    """Exact log p(continuation | context) per example [B] under a causal model; the `exclude` ids get no
    probability."""
    valid, cont = _valid_and_continuation(tokens, continuation_mask, lengths)
    if cont[:, 0].any():
        raise ValueError("the first position cannot be a continuation token for AR scoring: start with a context (BOS)")
    with evaluating(model):
        logits = logits_of(model(tokens, attention_mask=valid))
    return _summed_logp(logits[:, :-1], tokens[:, 1:], cont[:, 1:], exclude)  # logits at i-1 predict the token at i


def mdlm_loglik(
    model: Callable,
    tokens: torch.Tensor,
    continuation_mask: torch.Tensor,
    lengths: torch.Tensor | None = None,
    *,
    mask_id: int,
    k: int = 128,
    generator: torch.Generator | None = None,
    max_tokens: int = 16384,
    row_keys: list[int] | None = None,
    exclude: Sequence[int] = (),
) -> torch.Tensor:
    """Monte Carlo ELBO of log p(continuation | context) per example [B] under a bidirectional model, K samples.
    `row_keys` (one int per row): common random numbers for rows that share a key (see the module docstring);
    the `exclude` ids get no probability."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    B, T = tokens.shape
    device = tokens.device
    valid, cont = _valid_and_continuation(tokens, continuation_mask, lengths)
    L = cont.sum(-1)  # continuation length per example [B]

    # Stratified t per example, then exactly m = ceil(t * L) masked continuation positions, chosen uniformly.
    if row_keys is None:
        draw = generator.device if generator is not None else device  # a CPU generator may drive a CUDA batch
        u = 1.0 - torch.rand(B, k, generator=generator, device=draw).to(device)  # (0, 1]
        keys = torch.rand(B * k, T, generator=generator, device=draw).to(device)
    else:
        u, keys = _keyed_draws(row_keys, cont, k, generator.initial_seed() if generator is not None else 0)
        u, keys = u.to(device), keys.to(device)
    t = (torch.arange(k, device=device) + u) / k  # (0, 1], stratum j = ((j)/K, (j+1)/K]
    m = torch.ceil(t * L[:, None]).clamp(min=1).long()  # [B, K], in 1..L (L >= 1)
    rows_tokens = tokens.repeat_interleave(k, 0)  # [B*K, T], sample j of example b at row b*K + j
    rows_cont = cont.repeat_interleave(k, 0)
    keys = keys.masked_fill(~rows_cont, 2.0)
    rank = keys.argsort(-1).argsort(-1)  # continuation positions come first, in random order
    masked = (rank < m.reshape(-1, 1)) & rows_cont
    noisy = rows_tokens.masked_fill(masked, mask_id)
    rows_valid = None if valid is None else valid.repeat_interleave(k, 0)
    estimates = _rows_logp(model, noisy, rows_tokens, masked, rows_valid, max_tokens, exclude)
    weight = L.repeat_interleave(k).float() / m.reshape(-1).float()
    return (estimates * weight).view(B, k).mean(-1) * (L > 0)


def _keyed_draws(row_keys: list[int], cont: torch.Tensor, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(u [B, K], mask-order keys [B*K, T]) with each row's values from a stream of its own (seed, key), drawn over
    its continuation positions in order: equal keys and continuation lengths give equal masks."""
    B, T = cont.shape
    positions = cont.cpu()
    u = torch.empty(B, k)
    keys = torch.full((B, k, T), 2.0)
    for b, key in enumerate(row_keys):
        g = torch.Generator().manual_seed((seed * 1_000_003 + int(key)) % (2**63))
        u[b] = 1.0 - torch.rand(k, generator=g)
        where = positions[b].nonzero()[:, 0]
        keys[b][:, where] = torch.rand(k, len(where), generator=g)
    return u, keys.view(B * k, T)


def mdlm_ordered_loglik(
    model: Callable,
    tokens: torch.Tensor,
    continuation_mask: torch.Tensor,
    lengths: torch.Tensor | None = None,
    *,
    mask_id: int,
    block: int = 1,
    max_tokens: int = 16384,
    exclude: Sequence[int] = (),
) -> torch.Tensor:
    """Log-likelihood per example [B] of the continuation under MDLM decoding it left to right, `block` tokens per
    step, with no Monte Carlo noise. `block` 1 (the default) is exact: the chain rule in reading order, each token
    predicted from the context and the continuation before it, with every later continuation token masked.

    Step s starts with continuation tokens s*block.. masked and the earlier ones revealed, and unmasks the next
    `block` of them, each drawn from the model's marginal at its position: the likelihood of that sampler is the sum
    over steps of the block's log-probabilities. Every continuation is cut into blocks of the same size whatever its
    length (the last block may be shorter), so ceil(L / block) rows per example; the `exclude` ids get no
    probability."""
    if block < 1:
        raise ValueError(f"block must be >= 1 token per step, got {block}")
    B = tokens.shape[0]
    valid, cont = _valid_and_continuation(tokens, continuation_mask, lengths)
    S = max(1, -(-int(cont.sum(-1).max()) // block))  # steps of the longest continuation
    index = cont.long().cumsum(-1) - 1  # a continuation token's place in reading order, 0..L-1
    step_of = torch.where(cont, index // block, S)  # the step that reveals it (S: never masked)
    step = torch.arange(S, device=tokens.device).repeat(B)  # row b*S + s decodes step s of example b
    row_step = step_of.repeat_interleave(S, 0)
    scored = row_step == step[:, None]
    rows = scored.any(-1).nonzero()[:, 0]  # a shorter continuation takes fewer steps
    targets = tokens.repeat_interleave(S, 0)[rows]
    masked = (row_step >= step[:, None])[rows] & cont.repeat_interleave(S, 0)[rows]
    rows_valid = None if valid is None else valid.repeat_interleave(S, 0)[rows]
    noisy = targets.masked_fill(masked, mask_id)
    estimates = _rows_logp(model, noisy, targets, scored[rows], rows_valid, max_tokens, exclude)
    return torch.zeros(B, device=tokens.device).index_add_(0, rows // S, estimates)


def continuation_loglik(
    em: Any,
    tokens: torch.Tensor,
    continuation_mask: torch.Tensor,
    lengths: torch.Tensor | None = None,
    *,
    block: int | None = 1,
    mc_samples: int = 32,
    generator: torch.Generator | None = None,
    row_keys: list[int] | None = None,
    max_tokens: int = 16384,
    model: Callable | None = None,
) -> torch.Tensor:
    """log p(continuation | context) per example [B] under the `EvalModel` `em`, as every crossover scorer computes
    it: AR exact (`ar_loglik`); MDLM decoded left to right `block` tokens per step (`mdlm_ordered_loglik`; 1 is the
    exact chain rule), or with `block` None its `mc_samples`-sample ELBO (`mdlm_loglik`, with `generator` and
    `row_keys`). `em.excluded_ids` (mask, pad) never receive probability. `model`: a callable to use in place of
    `em.model` (a wrapper around it)."""
    net = em.model if model is None else model
    exclude = em.excluded_ids
    if em.objective == "ar":
        return ar_loglik(net, tokens, continuation_mask, lengths, exclude=exclude)
    if em.objective != "mdlm":
        raise ValueError(f"unknown objective '{em.objective}' (expected 'ar' or 'mdlm')")
    if block is not None:
        return mdlm_ordered_loglik(
            net,
            tokens,
            continuation_mask,
            lengths,
            mask_id=em.mask_id,
            block=block,
            max_tokens=max_tokens,
            exclude=exclude,
        )
    return mdlm_loglik(
        net,
        tokens,
        continuation_mask,
        lengths,
        mask_id=em.mask_id,
        k=mc_samples,
        generator=generator,
        max_tokens=max_tokens,
        row_keys=row_keys,
        exclude=exclude,
    )
