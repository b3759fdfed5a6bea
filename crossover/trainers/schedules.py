"""Learning-rate and evaluation schedules, defined in tokens (not steps) so they mean the same for any batch size."""

from __future__ import annotations

import math

from crossover.specs import TrialSpec
from crossover.specs.study import TrainSpec


def lr_at(tokens: int, train: TrainSpec) -> float:
    """Learning rate after `tokens` training tokens: linear warmup, then the spec's schedule down to min_lr.

    wsd (warmup-stable-decay, the paper's): constant at lr, then an exponential decay to min_lr over the last
    `decay_fraction` of training (linear instead when min_lr is 0, which an exponential cannot reach).
    """
    total = train.total_tokens or 1
    if tokens < train.warmup_tokens:
        return train.lr * (tokens + 1) / train.warmup_tokens
    if train.schedule == "constant":
        return train.lr
    if train.schedule == "cosine":
        progress = min(1.0, (tokens - train.warmup_tokens) / max(1, total - train.warmup_tokens))
        return train.min_lr + 0.5 * (train.lr - train.min_lr) * (1 + math.cos(math.pi * progress))
    decay_start = total * (1 - train.decay_fraction)
    if tokens < decay_start:
        return train.lr
    progress = min(1.0, (tokens - decay_start) / max(1.0, total - decay_start))
    if train.min_lr == 0:
        return train.lr * (1 - progress)
    return train.lr * (train.min_lr / train.lr) ** progress


def total_steps(trial: TrialSpec) -> int:
    """Optimizer steps in a trial: whole global batches that fit in total_tokens."""
    return trial.total_tokens // trial.train.global_batch_tokens


def trained_tokens(trial: TrialSpec) -> int:
    """Tokens a trial trains: its whole global batches, which end at its last eval point (<= train.total_tokens)."""
    return total_steps(trial) * trial.train.global_batch_tokens


def branch_step(trial: TrialSpec) -> int | None:
    """The last optimizer step that every longer trial of the same lineage (only train.total_tokens larger) takes
    exactly as this one does: their states agree there, so a longer trial can continue from this one's checkpoint.

    wsd: the last step before the decay begins (the stable phase's LR does not depend on the length). constant: the
    last step (nothing depends on the length). cosine: None (every step's LR depends on the length; a longer trial
    shares only the warmup, which is not worth a checkpoint).
    """
    train, batch, steps = trial.train, trial.train.global_batch_tokens, total_steps(trial)
    if train.schedule == "constant":
        return steps
    if train.schedule == "wsd":  # step k runs at lr_at((k - 1) * batch): stable while that is below decay_start
        return min(steps, math.ceil(trial.total_tokens * (1 - train.decay_fraction) / batch))
    return None


def eval_steps(trial: TrialSpec) -> list[int]:
    """Optimizer steps after which to evaluate, always including the last one.

    `every: epoch` evaluates each time another `unique_tokens` have been seen (the paper), a token count every that
    many tokens, and `log:K` at K points spaced evenly in log(tokens) from the first step to the end.
    """
    steps = total_steps(trial)
    batch = trial.train.global_batch_tokens
    every = trial.eval.every
    if every == "epoch" or isinstance(every, int):
        interval = trial.unique_tokens if every == "epoch" else every
        points = {math.ceil(k * interval / batch) for k in range(1, trial.total_tokens // interval + 1)}
    else:
        count = int(str(every).removeprefix("log:"))
        if count == 1:
            points = set()
        else:
            points = {round(math.exp(math.log(steps) * i / (count - 1))) for i in range(count)}
    return sorted({min(max(p, 1), steps) for p in points} | {steps})
