"""Text generation for both objectives: left-to-right sampling (AR) and iterative unmasking (MDLM).

Both samplers take token-id prompts and return only the new tokens, one list per prompt:

- `ar_generate`: the nanoGPT loop without a KV cache (the evaluated models are small; recomputing the whole window each
  step keeps the one forward contract). Prompts of different lengths are left-padded into one batch and the padding is
  hidden with `attention_mask`; RoPE depends only on relative positions, so a left-padded row computes what it would
  alone. Greedy at temperature 0, else temperature + nucleus (top-p) sampling. A row stops at its first stop id (cut,
  not returned); the loop ends early once every row has stopped.
- `mdlm_generate`: the LLaDA sampler (Nie et al. 2025, `generate.py`). The prompt is followed by `length` mask tokens;
  each step predicts every masked position at once, commits a scheduled number of them and leaves the rest masked.
  `remasking="low_confidence"` commits the positions whose chosen token is most probable, `"random"` random ones (the
  MDLM / ancestral order). With `block_length` the canvas is split into blocks unmasked left to right (semi-
  autoregressive), the steps split evenly across blocks and each block's tokens evenly across its steps (earlier
  steps take the remainder, as LLaDA's `get_num_transfer_tokens`). Steps that would commit nothing are skipped.
  The mask token can never be an output: its logit is -inf before choosing.
- `generate(em, ...)`: dispatches on the `EvalModel`'s objective, suppresses ids the model must never emit (mask, pad,
  the embedding rows past the tokenizer's vocabulary) and, for MDLM, cuts at the first stop id afterwards.

Randomness comes only from the optional `torch.Generator` (on the model's device), so a seeded run is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from crossover.evals.likelihood import evaluating

REMASKING = ("low_confidence", "random")


def _left_pad(prompts: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[B, T] tokens with the prompts right-aligned, and the attention mask (None when no row is padded)."""
    width = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
    real = torch.zeros(len(prompts), width, dtype=torch.bool, device=device)
    for row, prompt in enumerate(prompts):
        if prompt:
            tokens[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long, device=device)
            real[row, width - len(prompt) :] = True
    return tokens, (None if bool(real.all()) else real)


def _check_room(max_seq_len: int, new_tokens: int) -> int:
    """Prompt tokens that fit beside `new_tokens` new ones; the rest of a long prompt is cut from the left."""
    if new_tokens <= 0:
        raise ValueError(f"the number of new tokens must be positive, got {new_tokens}")
    if new_tokens >= max_seq_len:
        raise ValueError(f"{new_tokens} new tokens leave no room for a prompt in the model's max_seq_len {max_seq_len}")
    return max_seq_len - new_tokens


def _suppress(logits: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
    if ids:
        logits[..., list(ids)] = float("-inf")
    return logits


def _sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of logits [..., V]: argmax at temperature 0, else temperature + nucleus sampling."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        # keep the smallest set of most probable tokens whose mass reaches top_p (always at least the top one)
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


def _cut(ids: list[int], stop_ids: Sequence[int]) -> list[int]:
    """`ids` up to (not including) the first stop id."""
    for i, token in enumerate(ids):
        if token in stop_ids:
            return ids[:i]
    return ids


def ar_generate(
    model: nn.Module,
    prompts: list[list[int]],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop_ids: Sequence[int] = (),
    suppress_ids: Sequence[int] = (),
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """New tokens for each prompt from a causal model, cut at the first stop id. Prompts need at least one token."""
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not prompts:
        return []
    if any(len(p) == 0 for p in prompts):
        raise ValueError("AR generation needs at least one prompt token per prompt (e.g. the end-of-document id)")
    room = _check_room(model.cfg.max_seq_len, max_new_tokens)
    device = next(model.parameters()).device
    tokens, real = _left_pad([p[-room:] for p in prompts], 0, device)
    width = tokens.shape[1]
    stopped = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    stops = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
    with evaluating(model):
        for _ in range(max_new_tokens):
            logits = model(tokens, attention_mask=real).logits[:, -1].float()
            next_token = _sample(_suppress(logits, suppress_ids), temperature, top_p, generator)
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
            if real is not None:
                real = torch.cat([real, real.new_ones(len(prompts), 1)], dim=1)
            stopped |= torch.isin(next_token, stops)
            if bool(stopped.all()):
                break
    return [_cut(row, stop_ids) for row in tokens[:, width:].tolist()]


def _split(total: int, parts: int) -> list[int]:
    """`total` split into `parts` near-equal integers, the larger ones first."""
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


def mdlm_generate(
    model: nn.Module,
    prompts: list[list[int]],
    length: int,
    *,
    mask_id: int,
    steps: int,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    block_length: int | None = None,
    suppress_ids: Sequence[int] = (),
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Exactly `length` new tokens (never the mask id) for each prompt by iterative unmasking (LLaDA).

    Every block gets at least one step (so fewer steps than blocks means one step per block), and a block never takes
    more steps than it has tokens. Prompts may be empty (unconditional generation).
    """
    if remasking not in REMASKING:
        raise ValueError(f"unknown remasking '{remasking}'; choose one of {', '.join(REMASKING)}")
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    if not prompts:
        return []
    room = _check_room(model.cfg.max_seq_len, length)
    device = next(model.parameters()).device
    prompt, real = _left_pad([p[-room:] for p in prompts], 0, device)
    if real is not None:  # the canvas is always attended to
        real = torch.cat([real, real.new_ones(len(prompts), length)], dim=1)
    start = prompt.shape[1]
    x = torch.cat([prompt, torch.full((len(prompts), length), mask_id, dtype=torch.long, device=device)], dim=1)
    never = sorted({mask_id, *suppress_ids})

    block_length = length if block_length is None else min(block_length, length)
    if block_length <= 0:
        raise ValueError(f"block_length must be positive, got {block_length}")
    block_starts = list(range(start, start + length, block_length))
    steps_per_block = _split(max(steps, len(block_starts)), len(block_starts))  # at least one step per block
    with evaluating(model):
        for b0, block_steps in zip(block_starts, steps_per_block, strict=True):
            b1 = min(b0 + block_length, start + length)
            for count in _split(b1 - b0, block_steps):
                if count == 0:
                    continue
                logits = _suppress(model(x, attention_mask=real).logits.float(), never)
                chosen = _sample(logits, temperature, 1.0, generator)
                if remasking == "low_confidence":  # probability of the chosen token under the untempered model
                    confidence = torch.softmax(logits, dim=-1).gather(-1, chosen[..., None])[..., 0]
                else:
                    confidence = torch.rand(x.shape, device=device, generator=generator)
                # only still-masked positions of the current block compete for the `count` commits
                candidate = x == mask_id
                candidate[:, :b0] = False
                candidate[:, b1:] = False
                confidence = confidence.masked_fill(~candidate, float("-inf"))
                commit = confidence.topk(count, dim=-1).indices
                x.scatter_(1, commit, chosen.gather(1, commit))
    return x[:, start:].tolist()


def generate(em: Any, prompts: list[list[int]], max_new_tokens: int, **options: Any) -> list[list[int]]:
    """New tokens for each prompt from an `EvalModel`, by its objective's sampler.

    options: AR: temperature, top_p, stop_ids, generator. MDLM: temperature, steps (default max_new_tokens),
    remasking, block_length, stop_ids (the canvas is cut at the first one afterwards), generator.
    Ids the tokenizer does not have (padded embedding rows), the mask and the pad id are never generated.
    """
    suppress = list(em.excluded_ids)
    if em.objective == "ar":
        return ar_generate(em.model, prompts, max_new_tokens, suppress_ids=suppress, **options)
    if em.objective == "mdlm":
        stop_ids = options.pop("stop_ids", ())
        options.setdefault("steps", max_new_tokens)
        out = mdlm_generate(em.model, prompts, max_new_tokens, mask_id=em.mask_id, suppress_ids=suppress, **options)
        return [_cut(row, stop_ids) for row in out]
    raise ValueError(f"unknown objective '{em.objective}'; expected 'ar' or 'mdlm'")
