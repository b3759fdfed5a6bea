"""Torch modules built from a `crossover.specs.ModelConfig`: one transformer backbone, causal (AR) or bidirectional
(MDLM), dense or MoE. See `crossover.models.transformer` for the forward contract."""

from crossover.models.attention import BACKENDS, Attention, flash_available, resolve_backend
from crossover.models.layers import RMSNorm, SwiGLU
from crossover.models.moe import MoE, MoEStats
from crossover.models.transformer import Block, ModelOutput, Transformer, build_model

__all__ = [
    "BACKENDS",
    "Attention",
    "Block",
    "MoE",
    "MoEStats",
    "ModelOutput",
    "RMSNorm",
    "SwiGLU",
    "Transformer",
    "build_model",
    "flash_available",
    "resolve_backend",
]
