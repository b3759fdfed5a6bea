"""Mixture-of-experts MLP: a drop-in replacement for the dense SwiGLU MLP.

Router: a bias-free linear layer to E logits, softmax in float32, top-k experts per token. Each chosen expert's output
is scaled by its router probability (not renormalised over the top k, as in Switch / OLMoE), so the router learns from
the language-model loss as well as from the auxiliary losses.

Dropless: every (token, expert) assignment is computed, however unbalanced the routing; the assignments are sorted
by expert and each expert runs once on its tokens (an expert that gets none runs on an empty batch, so its weights
still receive a zero gradient rather than none, which distributed data parallel wrappers expect).

Auxiliary losses (per layer, summed over layers by the model):
- load balancing (Switch Transformer): E * sum_i f_i * P_i, with f_i the fraction of assignments routed to expert i
  and P_i the mean router probability of expert i; 1 at uniform routing, E when every token goes to one expert;
- router z-loss (ST-MoE): mean over tokens of logsumexp(router logits)^2, keeps the router logits small.
The layer returns aux_coef * balance + z_coef * z together with the unweighted terms and the per-expert load f.
Every token position counts in these statistics, padding included (training batches are unpadded).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from crossover.models.layers import SwiGLU
from crossover.specs.model import ModelConfig


@dataclass
class MoEStats:
    aux_loss: torch.Tensor  # aux_coef * balance_loss + z_coef * z_loss, scalar, differentiable
    balance_loss: torch.Tensor  # unweighted load-balancing loss, scalar
    z_loss: torch.Tensor  # unweighted router z-loss, scalar
    load: torch.Tensor  # [E] fraction of this batch's token-expert assignments sent to each expert (sums to 1)


def load_balancing_loss(
    probs: torch.Tensor, expert_index: torch.Tensor, experts: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, load): probs [N, E] router probabilities, expert_index [N, k] chosen experts."""
    load = torch.bincount(expert_index.reshape(-1), minlength=experts).float() / expert_index.numel()
    importance = probs.mean(0)
    return experts * (load * importance).sum(), load


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(logits.float(), dim=-1).pow(2).mean()


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.experts_n, self.top_k = cfg.experts, cfg.top_k
        self.aux_coef, self.z_coef = cfg.moe_aux_coef, cfg.moe_z_coef
        self.router = nn.Linear(cfg.d_model, cfg.experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(cfg.d_model, cfg.ffn) for _ in range(cfg.experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, MoEStats]:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # [N, d]
        logits = self.router(x).float()  # [N, E]
        probs = logits.softmax(dim=-1)
        weight, expert_index = probs.topk(self.top_k, dim=-1)  # [N, k]

        # Dropless dispatch: sort the N*k assignments by expert, run each expert once on its tokens.
        flat_expert = expert_index.reshape(-1)
        order = flat_expert.argsort(stable=True)
        counts = torch.bincount(flat_expert, minlength=self.experts_n).tolist()
        token = (order // self.top_k).split(counts)
        gate = weight.reshape(-1)[order].split(counts)
        y = torch.zeros_like(x)
        for expert, tok, g in zip(self.experts, token, gate, strict=True):
            y.index_add_(0, tok, expert(x[tok]) * g[:, None].to(x.dtype))

        balance, load = load_balancing_loss(probs, expert_index, self.experts_n)
        z = router_z_loss(logits)
        aux = self.aux_coef * balance + self.z_coef * z
        return y.reshape(shape), MoEStats(aux, balance.detach(), z.detach(), load.detach())

    def reset_parameters(self, std: float, out_std: float) -> None:
        nn.init.normal_(self.router.weight, std=std)
        for expert in self.experts:
            expert.reset_parameters(std, out_std)
