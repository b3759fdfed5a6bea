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

from crossover.models.attention import Attention, attention_mask_matrix, rope_tables
from crossover.models.layers import RMSNorm, SwiGLU
from crossover.models.moe import MoE, MoEStats
from crossover.specs.model import ModelConfig


@dataclass
class ModelOutput:
    logits: torch.Tensor
    aux_loss: torch.Tensor
    expert_load: torch.Tensor | None = None
    balance_loss: torch.Tensor | None = None
    z_loss: torch.Tensor | None = None


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, causal: bool):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, causal)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MoE(cfg) if cfg.is_moe else SwiGLU(cfg.d_model, cfg.ffn)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, rope: torch.Tensor, mask: torch.Tensor | None = None
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
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
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

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> ModelOutput:
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
        logits = self.head(self.norm(x))
        if not stats:
            return ModelOutput(logits=logits, aux_loss=logits.new_zeros((), dtype=torch.float32))
        return ModelOutput(
            logits=logits,
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

    With cfg.compile the blocks are compiled with torch.compile (not on the meta device).
    """
    with torch.device(device if device is not None else "cpu"):
        model = Transformer(cfg, causal)
    if cfg.compile and str(device) != "meta":
        model.compile_blocks()
    return model
