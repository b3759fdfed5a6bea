"""Held-out loss per token: exact next-token NLL for AR, the Monte Carlo ELBO (an upper bound on the NLL) for MDLM.

The two are not comparable as numbers (one is a bound); the crossover is read from downstream tasks. The MDLM
estimate uses a fixed random stream, so every eval point of a trial scores the same masks (common random numbers)
and differences along the curve are not sampling noise.

`HeldoutLoss` is the `heldout_loss` task: `max_items` windows of the training length, split over the ranks, their
sums added up across them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from crossover.evals.registry import EvalSettings, EvalTask, Ranks
from crossover.evals.results import TaskResult
from crossover.models.objectives import ar_inputs_targets, ar_loss, mask_tokens, mdlm_loss, sample_t

if TYPE_CHECKING:
    from crossover.evals.checkpoint import EvalModel
    from crossover.evals.registry import TaskData
    from crossover.specs import TrialSpec


@torch.no_grad()
def heldout_loss(
    forward: Callable[[torch.Tensor], torch.Tensor],
    windows: np.ndarray,
    *,
    objective: str,
    mask_id: int,
    batch_size: int,
    mc_samples: int = 1,
    t_min: float = 1e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[float, int]:
    """(sum of per-token losses, number of tokens) over `windows` [N, T]; `forward(tokens) -> logits`.

    Sums rather than means so that ranks holding different shares of the windows can add theirs up.
    """
    generator = torch.Generator(device="cpu").manual_seed(10_007 * seed + 17)
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        tokens = torch.as_tensor(windows[start : start + batch_size], dtype=torch.long)
        if objective == "ar":
            inputs, targets = ar_inputs_targets(tokens.to(device))
            total += ar_loss(forward(inputs), targets).item() * targets.numel()
            count += targets.numel()
            continue
        for _ in range(mc_samples):
            t = sample_t(len(tokens), t_min, generator, stratified=True)
            noisy, masked = mask_tokens(tokens, t, mask_id, generator)
            loss = mdlm_loss(forward(noisy.to(device)), tokens.to(device), masked.to(device), t.to(device))
            total += loss.item() * tokens.numel() / mc_samples
        count += tokens.numel()
    return total, count


class HeldoutLoss(EvalTask):
    """`heldout_loss`: loss per token on `max_items` held-out windows (AR exact NLL, MDLM ELBO), logged as
    eval/heldout_loss/loss. Windows are split over the ranks, so the loss of a multi-worker trial costs no more."""

    needs_heldout = True
    metrics = ("loss",)

    def __init__(self, name: str, settings: EvalSettings, data: TaskData):
        super().__init__(name, settings, data)
        self.windows = data.heldout_windows(settings.seq_len, max_windows=settings.eval.max_items)

    def score(self, em: EvalModel, ranks: Ranks) -> list[TaskResult]:
        s = self.settings
        total, count = heldout_loss(
            lambda tokens: em.model(tokens).logits,
            self.windows[ranks.rank :: ranks.world],
            objective=em.objective,
            mask_id=em.mask_id,
            batch_size=s.batch_size,
            mc_samples=s.eval.mc_samples,
            t_min=s.mdlm_t_min,
            seed=s.seed * 7919 + ranks.rank,
            device=em.device,
        )
        total, count = ranks.sum_over_ranks([total, count])
        return [TaskResult(self.name, {"loss": total / max(count, 1)}, [], {})]

    @classmethod
    def cost(cls, name: str, trial: TrialSpec) -> float:
        ev = trial.eval
        return ev.max_items * trial.data.seq_len * (ev.mc_samples if trial.objective == "mdlm" else 1)
