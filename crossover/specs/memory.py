"""Per-worker memory of a trial, estimated from its config (no torch): what `plan` prints and what validation
checks against `resources.gpu_memory_gb` before anything starts.

Model states, in bytes per parameter, as DeepSpeed holds them (mixed precision: 16-bit weights and gradients, fp32
master weights and Adam's two moments, and an fp32 copy of the gradients; fp32 training has no copies):

    weights 2 | 4          divided over the data-parallel workers with ZeRO-3
    gradients 2 | 4        with ZeRO-2 and 3
    optimizer 12 | 8       with ZeRO-1, 2 and 3 (fp32 master 4 + Adam 8)
    fp32 gradients 4 | 0   with ZeRO-1, 2 and 3, where they exist only during the optimizer step (after backward has
                           freed the activations); ZeRO-0's bf16 optimizer keeps them throughout

Activations kept for backward, per layer per token, measured for this backbone with torch's memory profiler
(tests/test_memory.py checks the formulas against it): with b bytes per element of the training dtype,

    none        b * (10 d + 4 f) + 4 * 4 d   (norm and rotary intermediates are float32)
    selective   b * (7 d + 2 f)              (matmul and attention outputs; the rest is recomputed)
    full        b * d                        (each block's input) plus one block's `none` amount while it recomputes

where f is the MLP width a token passes through (top_k experts of ffn each for MoE). The loss head never holds the
batch's logits (crossover.models.objectives.linear_cross_entropy): one chunk of float32 logits, the fp32 gradient
of the head weight and the gradient of the last hidden state.
"""

from __future__ import annotations

from pydantic import BaseModel

from crossover.specs.model import LOSS_CHUNK_LOGITS, ModelConfig, count_params

GIB = 2**30
OVERHEAD_BYTES = 2 * GIB  # CUDA context, kernel workspaces
FRAGMENTATION = 1.05  # the caching allocator never packs perfectly


class MemoryEstimate(BaseModel):
    """Bytes per worker (per GPU on a GPU trial); `total` is the peak, over backward and the optimizer step."""

    weights: float
    gradients: float  # the training dtype's, plus the fp32 copy where it persists (ZeRO-0)
    optimizer: float
    activations: float
    step_gradients: float  # the fp32 gradient partition that exists only during the optimizer step
    total: float

    def describe(self) -> str:
        parts = ("weights", "gradients", "optimizer", "activations")
        return ", ".join(f"{name} {getattr(self, name) / GIB:.1f}" for name in parts) + " GiB"


def activation_bytes_per_token_layer(cfg: ModelConfig, checkpointing: str, dtype_bytes: int) -> float:
    """Bytes kept for backward per token per layer (see the module docstring)."""
    d, f = cfg.d_model, cfg.ffn * (cfg.top_k if cfg.is_moe else 1)
    if checkpointing == "selective":
        return dtype_bytes * (7 * d + 2 * f)
    if checkpointing == "full":
        return dtype_bytes * d
    return dtype_bytes * (10 * d + 4 * f) + 4 * 4 * d


def estimate_memory(
    cfg: ModelConfig,
    *,
    precision: str,
    zero_stage: int,
    workers: int,
    micro_batch: int,
    seq_len: int,
    checkpointing: str = "none",
    gpu: bool = True,
) -> MemoryEstimate:
    """Peak bytes per worker while training (precision resolved: bf16, fp16 or fp32); `gpu` adds the CUDA
    context and workspaces."""
    params = count_params(cfg).total
    mixed = precision in ("bf16", "fp16")
    b = 2 if mixed else 4
    weights = b * params / (workers if zero_stage >= 3 else 1)
    gradients = b * params / (workers if zero_stage >= 2 else 1)
    optimizer = (12 if mixed else 8) * params / (workers if zero_stage >= 1 else 1)
    fp32_gradients = (4 if mixed else 0) * params / (workers if zero_stage >= 1 else 1)
    step_gradients = fp32_gradients if zero_stage >= 1 else 0.0
    gradients += fp32_gradients - step_gradients
    tokens = micro_batch * seq_len
    activations = cfg.layers * tokens * activation_bytes_per_token_layer(cfg, checkpointing, b)
    if checkpointing == "full":  # one block's activations exist again while it is recomputed
        activations += tokens * activation_bytes_per_token_layer(cfg, "none", b)
    d, V = cfg.d_model, cfg.vocab_size
    activations += 3 * b * tokens * d + 4 * V * d + 3 * 4 * min(LOSS_CHUNK_LOGITS, tokens * V)  # the loss head
    states = weights + gradients + optimizer
    peak = max(states + activations, states + step_gradients)
    total = peak * FRAGMENTATION + (OVERHEAD_BYTES if gpu else 0)
    return MemoryEstimate(
        weights=weights,
        gradients=gradients,
        optimizer=optimizer,
        activations=activations,
        step_gradients=step_gradients,
        total=total,
    )
