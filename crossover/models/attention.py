"""Multi-head attention with RoPE, optional QK-norm and grouped-query attention, and its backends.

Backends (ModelConfig.attention, resolved per call from the tensors' device and dtype):
- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` (CPU and GPU; picks its own fused kernel).
- ``flash``: ``flash_attn.flash_attn_func`` (CUDA, fp16/bf16, flash-attn installed). Padded batches (an attention mask)
  go to SDPA instead: flash's padded path needs unpadding, and padding only occurs in evaluation.
- ``auto``: flash when it can run here, else SDPA.
- ``reference``: plain matmul-softmax-matmul, for tests and the benchmark (not selectable from a spec).

The attention function takes q, k, v as [batch, seq, heads, head_dim] (flash-attn's layout) and an optional boolean
mask [batch, 1, seq, seq] (True = may attend) that already includes causality; without a mask, ``causal`` decides.
"""

from __future__ import annotations

import importlib.util
import math

import torch
import torch.nn.functional as F
from torch import nn

from crossover.models.layers import RMSNorm
from crossover.specs.model import ModelConfig

BACKENDS = ("auto", "sdpa", "flash", "reference")


_FLASH_INSTALLED = importlib.util.find_spec("flash_attn") is not None


def flash_available() -> bool:
    """flash-attn is installed and a CUDA device is present."""
    return _FLASH_INSTALLED and torch.cuda.is_available()


def resolve_backend(requested: str, device: torch.device, dtype: torch.dtype, masked: bool) -> str:
    """The backend that actually runs for these tensors: 'sdpa', 'flash' or 'reference'."""
    if requested not in BACKENDS:
        raise ValueError(f"unknown attention backend '{requested}'; choose one of {', '.join(BACKENDS)}")
    if requested in ("sdpa", "reference"):
        return requested
    flash_ok = _FLASH_INSTALLED and device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)
    if requested == "flash" and not flash_ok:
        why = (
            "flash-attn is not installed (pip install 'crossover[gpu]')"
            if not _FLASH_INSTALLED
            else f"it needs a CUDA device and fp16/bf16 tensors, got {device.type} {dtype}"
        )
        raise RuntimeError(f"attention: flash was requested but cannot run: {why}; use attention: auto or sdpa")
    return "flash" if flash_ok and not masked else "sdpa"


# ---------------------------------------------------------------------------------------------------- RoPE


def rope_tables(head_dim: int, seq_len: int, base: float, device: torch.device | None = None) -> torch.Tensor:
    """cos and sin of every (position, frequency) pair, stacked: [2, seq_len, head_dim // 2], float32."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    return torch.stack([angles.cos(), angles.sin()])


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of each head vector (GPT-NeoX / LLaMA convention). x: [B, T, H, D]; rope: [2, T, D/2]."""
    cos, sin = rope[0][:, None, :], rope[1][:, None, :]  # broadcast over heads
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


# ---------------------------------------------------------------------------------------------------- backends


def attention_mask_matrix(attention_mask: torch.Tensor, causal: bool) -> torch.Tensor:
    """[B, T] padding mask (True at real tokens) -> [B, 1, T, T] boolean 'may attend' matrix.

    Queries never see padded keys. Each position may always attend to itself, so a padded query row is never empty
    (an all-masked row would give NaN); padded outputs are ignored by every loss and likelihood.
    """
    keep = attention_mask.bool()
    T = keep.shape[1]
    eye = torch.eye(T, dtype=torch.bool, device=keep.device)
    allowed = keep[:, None, None, :] | eye
    if causal:
        allowed = allowed & torch.ones(T, T, dtype=torch.bool, device=keep.device).tril()
    return allowed


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    return x if groups == 1 else x.repeat_interleave(groups, dim=2)


def sdpa_attention(q, k, v, causal: bool, mask: torch.Tensor | None, dropout_p: float) -> torch.Tensor:
    groups = q.shape[2] // k.shape[2]
    q, k, v = (t.transpose(1, 2) for t in (q, _repeat_kv(k, groups), _repeat_kv(v, groups)))  # [B, H, T, D]
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal and mask is None)
    return y.transpose(1, 2)


def reference_attention(q, k, v, causal: bool, mask: torch.Tensor | None, dropout_p: float) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v written out, in float32."""
    groups = q.shape[2] // k.shape[2]
    q, k, v = (t.transpose(1, 2).float() for t in (q, _repeat_kv(k, groups), _repeat_kv(v, groups)))
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    T = q.shape[2]
    if mask is None and causal:
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = F.dropout(scores.softmax(-1), p=dropout_p)
    return (probs @ v).transpose(1, 2).type_as(k)


def flash_attention(q, k, v, causal: bool, mask: torch.Tensor | None, dropout_p: float) -> torch.Tensor:
    from flash_attn import flash_attn_func  # lazy: optional (the gpu extra), only imported on CUDA with flash-attn

    assert mask is None, "padded batches run on SDPA (resolve_backend)"
    return flash_attn_func(q, k, v, dropout_p=dropout_p, causal=causal)  # grouped-query attention is native


_KERNELS = {"sdpa": sdpa_attention, "reference": reference_attention, "flash": flash_attention}


# ---------------------------------------------------------------------------------------------------- module


class Attention(nn.Module):
    """q, k, v projections; QK-norm (RMSNorm over each head vector, shared by heads); RoPE; attention; output projection."""

    def __init__(self, cfg: ModelConfig, causal: bool):
        super().__init__()
        self.causal = causal
        self.heads, self.kv_heads, self.head_dim = cfg.heads, cfg.kv_heads, cfg.head_dim
        self.dropout = cfg.dropout
        self.backend = cfg.attention
        self.wq = nn.Linear(cfg.d_model, cfg.heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.heads * cfg.head_dim, cfg.d_model, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None

    def forward(self, x: torch.Tensor, rope: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.heads, self.head_dim)
        k = self.wk(x).view(B, T, self.kv_heads, self.head_dim)
        v = self.wv(x).view(B, T, self.kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        backend = resolve_backend(self.backend, x.device, x.dtype, mask is not None)
        y = _KERNELS[backend](q, k, v, self.causal, mask, self.dropout if self.training else 0.0)
        return self.wo(y.reshape(B, T, self.heads * self.head_dim))

    def reset_parameters(self, std: float, out_std: float) -> None:
        for w in (self.wq, self.wk, self.wv):
            nn.init.normal_(w.weight, std=std)
        nn.init.normal_(self.wo.weight, std=out_std)
        for norm in (self.q_norm, self.k_norm):
            if norm is not None:
                norm.reset_parameters()
