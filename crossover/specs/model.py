"""Model configuration, size presets, and analytic parameter and FLOP counts.

Pure arithmetic, no torch: `crossover validate` and `crossover plan` use it on a laptop, and the models package
builds its torch modules from the same `ModelConfig`, so the counts here are the counts of the real network
(tests check that exactly).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# The loss head computes at most this many float32 logits at a time (crossover.models.objectives), whatever the
# batch: the memory estimate (crossover.specs.memory) counts on it.
LOSS_CHUNK_LOGITS = 2**25


class ModelConfig(BaseModel):
    """Every dimension of the one transformer backbone. `causal` is not here: the objective decides it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: str | None = None  # the preset this was built from, for display; None for explicit dims
    layers: int = Field(gt=0)
    d_model: int = Field(gt=0)
    heads: int = Field(gt=0)
    kv_heads: int = Field(gt=0)  # grouped-query attention when < heads
    ffn: int = Field(gt=0)  # SwiGLU hidden size (per expert when experts > 1)
    vocab_size: int = Field(gt=0)
    max_seq_len: int = Field(gt=0)
    qk_norm: bool = True
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    experts: int = Field(default=1, gt=0)  # 1 = dense MLP
    top_k: int = Field(default=1, gt=0)
    moe_aux_coef: float = Field(default=0.01, ge=0)  # load-balancing loss weight
    moe_z_coef: float = Field(default=0.001, ge=0)  # router z-loss weight
    dropout: float = Field(default=0.0, ge=0, lt=1)  # attention and hidden dropout (the parameter-noise axis)
    attention: Literal["auto", "sdpa", "flash"] = "auto"
    compile: bool | Literal["auto"] = "auto"  # torch.compile per block; auto: on CUDA, not on CPU (where it costs more)

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelConfig:
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be divisible by kv_heads ({self.kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head dimension d_model/heads = {self.head_dim} must be even for RoPE")
        if self.top_k > self.experts:
            raise ValueError(f"MoE top_k ({self.top_k}) cannot exceed experts ({self.experts})")
        return self

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    @property
    def is_moe(self) -> bool:
        return self.experts > 1


# Dimensions of each named size. CPU sizes are named by non-embedding parameters (nano ~1M, micro ~5M, mini ~20M);
# `1.7b` is exactly the paper's recipe; `8b-a1b` is a fine-grained MoE with ~8B total and ~1B active parameters.
PRESETS: dict[str, dict] = {
    "nano": dict(layers=4, d_model=128, heads=4, kv_heads=4, ffn=512, max_seq_len=1024),
    "micro": dict(layers=6, d_model=256, heads=4, kv_heads=4, ffn=768, max_seq_len=1024),
    "mini": dict(layers=10, d_model=384, heads=6, kv_heads=6, ffn=1152, max_seq_len=1024),
    "100m": dict(layers=12, d_model=768, heads=12, kv_heads=12, ffn=2048, max_seq_len=4096),
    "1b": dict(layers=16, d_model=2048, heads=16, kv_heads=16, ffn=5632, max_seq_len=4096),
    "1.7b": dict(layers=28, d_model=2048, heads=16, kv_heads=16, ffn=6144, max_seq_len=4096),
    "2b": dict(layers=24, d_model=2560, heads=20, kv_heads=20, ffn=6912, max_seq_len=4096),
    "4b": dict(layers=32, d_model=3072, heads=24, kv_heads=24, ffn=8192, max_seq_len=4096),
    "8b": dict(layers=32, d_model=4096, heads=32, kv_heads=32, ffn=14336, max_seq_len=4096),
    "8b-a1b": dict(layers=16, d_model=2048, heads=16, kv_heads=16, ffn=1408, experts=56, top_k=4, max_seq_len=4096),
}


class ParamCounts(BaseModel):
    total: int  # every parameter of the network
    active: int  # parameters used per token (MoE: only top_k experts)
    embedding: int  # input embedding table plus the untied output head
    non_embedding: int  # total minus embedding


def _layer_parts(cfg: ModelConfig) -> tuple[int, int, int, int]:
    """(attention matmul params, one expert's MLP params, router params, norm params) for one block."""
    d, hd = cfg.d_model, cfg.head_dim
    attention = d * cfg.heads * hd * 2 + d * cfg.kv_heads * hd * 2  # q and o, k and v
    expert = 3 * d * cfg.ffn  # SwiGLU: gate, up, down
    router = d * cfg.experts if cfg.is_moe else 0
    norms = 2 * d + (2 * hd if cfg.qk_norm else 0)
    return attention, expert, router, norms


def count_params(cfg: ModelConfig) -> ParamCounts:
    attention, expert, router, norms = _layer_parts(cfg)
    embedding = 2 * cfg.vocab_size * cfg.d_model
    per_layer_total = attention + cfg.experts * expert + router + norms
    per_layer_active = attention + cfg.top_k * expert + router + norms
    total = embedding + cfg.layers * per_layer_total + cfg.d_model  # + final norm
    active = embedding + cfg.layers * per_layer_active + cfg.d_model
    return ParamCounts(total=total, active=active, embedding=embedding, non_embedding=total - embedding)


def matmul_params(cfg: ModelConfig) -> int:
    """Parameters that take part in a matrix multiply per token: active weights minus embedding lookup and norms."""
    attention, expert, router, _ = _layer_parts(cfg)
    return cfg.layers * (attention + cfg.top_k * expert + router) + cfg.vocab_size * cfg.d_model  # + output head


def forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward FLOPs per token: 2 per matmul weight, plus attention scores and values over the full sequence.

    Attention is counted without a causal discount (QK^T and AV over all seq_len keys), as FLOP counters and
    most MFU conventions do, so AR and MDLM trials of one cell have the same count.
    """
    attention_scores = 2 * 2 * cfg.layers * seq_len * cfg.heads * cfg.head_dim
    return 2.0 * matmul_params(cfg) + attention_scores


def training_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward plus backward (the backward pass costs twice the forward): the 6·N plus attention rule."""
    return 3.0 * forward_flops_per_token(cfg, seq_len)
