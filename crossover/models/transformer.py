"""The one transformer backbone for both objectives, built from a `crossover.specs.ModelConfig`.

    tokens [B, T]
      -> token embedding
      -> N x pre-norm block:  x += drop(attn(rmsnorm(x)))    multi-head attention, RoPE, optional QK-norm and GQA
                              x += drop(mlp(rmsnorm(x)))     SwiGLU MLP, or the MoE MLP when cfg.experts > 1
      -> final RMSNorm -> untied output head -> logits [B, T, V]

No biases anywhere. `causal` is the only difference between the AR model (True) and the MDLM model (False).
Dropout (cfg.dropout, the parameter-noise axis) acts on the attention probabilities and on each residual branch.

Forward contract (the training loop and the evaluators rely on it):

    out = model(tokens, attention_mask=None)   # tokens: LongTensor [B, T], T <= cfg.max_seq_len
                                               # attention_mask: optional [B, T] bool/int, True (1) at real tokens,
                                               #   False (0) at padding; padded keys are never attended to
    out.logits       # [B, T, V] in the parameters' dtype; logits[:, i] predicts targets[:, i] (the objective decides
                     #   what the target is: the next token for AR, the token at position i itself for MDLM)

    out = model(tokens, targets=targets, loss_weights=weights)   # training: the objective's loss, no logits
    out.loss         # float32 scalar sum_i weights_i * CE(logits_i, targets_i) (see crossover.models.objectives),
                     #   computed by the head chunk by chunk; out.logits is None
    out.aux_loss     # scalar: sum over MoE layers of moe_aux_coef * balance + moe_z_coef * z (0.0 for a dense model);
                     #   add it to the objective's loss before backward
    out.expert_load  # [moe_layers, E] fraction of token-expert assignments per expert (detached), or None when dense
    out.balance_loss, out.z_loss  # unweighted MoE terms averaged over layers (detached) for logging, or None

Building: `build_model(cfg, causal=..., device=...)` (or `Transformer(cfg, causal)`). On the meta device nothing is
allocated (parameter counts of the 8B presets); to materialise a meta model call `model.to_empty(device=...)` and then
`model.init_weights()`, which also recomputes the RoPE tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from crossover.models.attention import Attention, attention_mask_matrix, rope_tables
from crossover.models.layers import RMSNorm, SwiGLU
from crossover.models.moe import MoE, MoEStats
from crossover.models.objectives import linear_cross_entropy
from crossover.specs.model import ModelConfig

CHECKPOINTING = ("none", "full", "selective")


def _selective_policy():
    """Selective activation checkpointing (as torchtitan's op-level policy): keep the outputs of matmuls and of
    attention, recompute everything else (norms, rotary, activations: cheap, memory-bound ops) in backward."""
    aten = torch.ops.aten
    keep = {aten.mm.default, aten.bmm.default, aten.addmm.default}
    for name in (
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
    ):
        if hasattr(aten, name):
            keep.add(getattr(aten, name).default)

    def policy(ctx, op, *args, **kwargs):  # noqa: ANN001 - torch's policy signature
        return CheckpointPolicy.MUST_SAVE if op in keep else CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


@dataclass
class ModelOutput:
    logits: torch.Tensor | None
    aux_loss: torch.Tensor
    loss: torch.Tensor | None = None
    expert_load: torch.Tensor | None = None
    balance_loss: torch.Tensor | None = None
    z_loss: torch.Tensor | None = None


class OutputHead(nn.Linear):
    """The untied output projection. Given targets and per-position loss weights it returns the objective's loss
    (`linear_cross_entropy`: never the whole batch's logits) instead of the logits. The loss is computed inside
    this module's own forward so that sharded parameters (DeepSpeed ZeRO-3) are gathered for it."""

    def __init__(self, d_model: int, vocab_size: int):
        super().__init__(d_model, vocab_size, bias=False)

    def forward(
        self, x: torch.Tensor, targets: torch.Tensor | None = None, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        if targets is None:
            return super().forward(x)
        if weights is None:
            raise ValueError("a loss needs loss_weights (crossover.models.objectives.ar_weights / mdlm_weights)")
        return linear_cross_entropy(x, self.weight, targets, weights)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, causal: bool):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, causal)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MoE(cfg) if cfg.is_moe else SwiGLU(cfg.d_model, cfg.ffn)
        self.drop = nn.Dropout(cfg.dropout)
        self.checkpointing = "none"  # activation checkpointing: none | full | selective (set by the trainer)

    def forward(
        self, x: torch.Tensor, rope: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, MoEStats | None]:
        if self.checkpointing == "none" or not (self.training and torch.is_grad_enabled()):
            return self._forward(x, rope, mask)
        # Inside forward, so a compiled block compiles the checkpointed region as one (torchtitan's order).
        context = {"context_fn": _selective_policy} if self.checkpointing == "selective" else {}
        return checkpoint(self._forward, x, rope, mask, use_reentrant=False, **context)

    def _forward(
        self, x: torch.Tensor, rope: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, MoEStats | None]:
        x = x + self.drop(self.attn(self.attn_norm(x), rope, mask))
        h = self.mlp(self.mlp_norm(x))
        h, stats = h if isinstance(h, tuple) else (h, None)
        return x + self.drop(h), stats


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, causal: bool):
        super().__init__()
        self.cfg, self.causal = cfg, causal
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, causal) for _ in range(cfg.layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.head = OutputHead(cfg.d_model, cfg.vocab_size)
        self.register_buffer("rope", torch.empty(2, cfg.max_seq_len, cfg.head_dim // 2), persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """Normal(0, std) weights; residual output projections scaled by 1/sqrt(2 * layers) (GPT-2); norms to 1."""
        cfg = self.cfg
        self.rope.copy_(rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_base, device=self.rope.device))
        out_std = std / math.sqrt(2 * cfg.layers)
        nn.init.normal_(self.embed.weight, std=std)
        nn.init.normal_(self.head.weight, std=std)
        self.norm.reset_parameters()
        for block in self.blocks:
            block.attn_norm.reset_parameters()
            block.mlp_norm.reset_parameters()
            block.attn.reset_parameters(std, out_std)
            block.mlp.reset_parameters(std, out_std)

    def forward(
        self,
        tokens: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        loss_weights: torch.Tensor | None = None,
    ) -> ModelOutput:
        B, T = tokens.shape
        if T > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds the model's max_seq_len {self.cfg.max_seq_len}")
        mask = None if attention_mask is None else attention_mask_matrix(attention_mask, self.causal)
        rope = self.rope[:, :T]
        x = self.embed(tokens)
        stats: list[MoEStats] = []
        for block in self.blocks:
            x, s = block(x, rope, mask)
            if s is not None:
                stats.append(s)
        head = self.head(self.norm(x), targets, loss_weights)
        logits, loss = (None, head) if targets is not None else (head, None)
        if not stats:
            return ModelOutput(logits=logits, loss=loss, aux_loss=x.new_zeros((), dtype=torch.float32))
        return ModelOutput(
            logits=logits,
            loss=loss,
            aux_loss=torch.stack([s.aux_loss for s in stats]).sum(),
            expert_load=torch.stack([s.load for s in stats]),
            balance_loss=torch.stack([s.balance_loss for s in stats]).mean(),
            z_loss=torch.stack([s.z_loss for s in stats]).mean(),
        )

    # ------------------------------------------------------------------------------------------ helpers

    def num_params(self, active: bool = False) -> int:
        """Parameters of the instantiated modules; with active=True only top_k of the E experts count per layer."""
        total = sum(p.numel() for p in self.parameters())
        if not active or not self.cfg.is_moe:
            return total
        unused = 0
        for block in self.blocks:
            per_expert = sum(p.numel() for p in block.mlp.experts[0].parameters())
            unused += (self.cfg.experts - self.cfg.top_k) * per_expert
        return total - unused

    def set_attention_backend(self, backend: str) -> None:
        """Override cfg.attention on every layer: 'auto', 'sdpa', 'flash' or 'reference' (benchmarks, tests)."""
        for block in self.blocks:
            block.attn.backend = backend

    def set_activation_checkpointing(self, mode: str) -> None:
        """Recompute activations in backward instead of keeping them: 'none', 'full' (every block keeps only its
        input) or 'selective' (blocks keep matmul and attention outputs, recompute the rest)."""
        if mode not in CHECKPOINTING:
            raise ValueError(f"unknown activation checkpointing '{mode}'; choose one of {', '.join(CHECKPOINTING)}")
        for block in self.blocks:
            block.checkpointing = mode

    def compile_blocks(self) -> None:
        """torch.compile each block in place (torchtitan style). MoE blocks compile only their attention: the
        dropless dispatch has data-dependent shapes, which compile would split into many graphs."""
        for block in self.blocks:
            if self.cfg.is_moe:
                block.attn.compile()
            else:
                block.compile()


def build_model(cfg: ModelConfig, *, causal: bool, device: torch.device | str | None = None) -> Transformer:
    """The backbone for one objective: causal=True for AR, False for MDLM. device='meta' allocates nothing.

    Compiling (`compile_blocks`) and activation checkpointing are the trainer's choice (crossover.trainers.loop),
    made for the device it trains on.
    """
    with torch.device(device if device is not None else "cpu"):
        return Transformer(cfg, causal)
