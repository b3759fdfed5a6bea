"""Per-worker training: objectives (this package's `objectives` module); the loop, schedules and checkpoints."""

from crossover.trainers.objectives import (
    ar_inputs_targets,
    ar_loss,
    input_mask_noise,
    mask_tokens,
    mdlm_loss,
    sample_t,
)

__all__ = ["ar_inputs_targets", "ar_loss", "input_mask_noise", "mask_tokens", "mdlm_loss", "sample_t"]
