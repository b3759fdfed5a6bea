"""Synthetic studies with a known truth: realistic AR and MDLM curves, as the metrics a trial would log.

A fixture of the tests and the benchmark (bench/bench_analysis.py), not part of the package: they write these into
real MLflow stores through the platform's writer (tests/analysis_support.py), and the truth model is simple enough to know where the curves cross. It follows the
paper's picture: repeated tokens lose value with a repetition half-life R_D* (Muennighoff et al.), short for AR and
long for MDLM; MDLM learns less per token early; AR overfits after many epochs (validation loss rises while its
accuracy only stalls). Pure numbers: nothing here touches MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from crossover.analysis.scaling import effective_data
from crossover.specs import TrialSpec, training_flops_per_token
from crossover.tracking.names import eval_key

CLOZE = "heldout_cloze"  # the multiple-choice task whose per-item results are synthesised


@dataclass(frozen=True)
class Truth:
    """Parameters of the synthetic world. `midpoint_tokens` is where accuracy reaches half its range."""

    r_star_ar: float = 15.0
    r_star_mdlm: float = 500.0
    mdlm_data_factor: float = 0.25  # MDLM gets this share of AR's value out of each effective token
    ar_overfit_epochs: float = 30.0  # AR validation loss starts to rise after this many epochs
    ar_overfit_loss: float = 0.02  # how fast it rises
    ar_overfit_skill: float = 0.3  # how much accuracy AR loses meanwhile (0: none, loss rises but accuracy holds)
    midpoint_tokens: float = 1e6
    slope: float = 2.0  # accuracy logit per decade of effective data
    chance: float = 0.25  # four-way multiple choice
    loss_floor: float = 1.8
    loss_scale: float = 9.0
    loss_exponent: float = 0.12
    mdlm_loss_offset: float = 0.25  # the MDLM ELBO sits above the AR NLL
    eval_noise: float = 0.004  # relative noise of held-out loss evaluations
    pmi_ar_shift: float | None = None  # also log acc_norm and acc_pmi; AR's PMI answers this much better (logits)
    items: int = 200  # multiple-choice items per eval point
    item_spread: float = 1.5  # spread of item difficulty (logits)


def effective_tokens(truth: Truth, objective: str, tokens: np.ndarray, unique: float) -> np.ndarray:
    r_star = truth.r_star_ar if objective == "ar" else truth.r_star_mdlm
    factor = 1.0 if objective == "ar" else truth.mdlm_data_factor
    return factor * effective_data(tokens, unique, r_star)


def skill(truth: Truth, objective: str, tokens: np.ndarray, unique: float) -> np.ndarray:
    """Accuracy logit of the average item; AR loses a little after it starts to overfit."""
    d_eff = effective_tokens(truth, objective, tokens, unique)
    z = truth.slope * (np.log10(d_eff) - math.log10(truth.midpoint_tokens))
    if objective == "ar":
        epochs = np.asarray(tokens, dtype=float) / unique
        z = z - truth.ar_overfit_skill * np.log1p(
            np.maximum(epochs - truth.ar_overfit_epochs, 0) / truth.ar_overfit_epochs
        )
    return z


def expected_loss(truth: Truth, objective: str, tokens: np.ndarray, unique: float) -> np.ndarray:
    d_eff = effective_tokens(truth, objective, tokens, unique)
    loss = truth.loss_floor + truth.loss_scale * d_eff**-truth.loss_exponent
    if objective == "ar":
        epochs = np.asarray(tokens, dtype=float) / unique
        loss = loss + truth.ar_overfit_loss * np.maximum(epochs - truth.ar_overfit_epochs, 0) ** 0.8
    else:
        loss = loss + truth.mdlm_loss_offset
    return loss


def eval_steps(trial: TrialSpec) -> list[int]:
    """Eval points in tokens, following the spec's `eval.every` the simple way (the platform decides its own)."""
    total, unique, batch = trial.total_tokens, trial.unique_tokens, trial.train.global_batch_tokens
    every = trial.eval.every
    if every == "epoch":
        points = np.arange(1, math.floor(total / unique) + 1) * unique
    elif isinstance(every, str) and every.startswith("log:"):
        points = np.geomspace(total / 50, total, int(every[4:]))
    else:
        points = np.arange(1, total // int(every) + 1) * int(every)
    steps = sorted({max(batch, int(round(p / batch)) * batch) for p in points} | {total})
    return [s for s in steps if s <= total]


@dataclass(frozen=True)
class Point:
    """What a trial logs at one step: metrics, and at eval points of a trial with the cloze task its per-item
    results (`acc`, `delta_nll`, `nll`: one value per item of `item_ids`, their means in the metrics)."""

    step: int
    metrics: dict[str, float]
    items: dict[str, np.ndarray] | None = None


def item_ids(truth: Truth) -> list[str]:
    """The cloze items' stable ids (the same items for every trial of a study)."""
    return [f"cloze-{i}" for i in range(truth.items)]


def trial_points(
    trial: TrialSpec,
    truth: Truth,
    rng: np.random.Generator,
    steps: Iterable[int] | None = None,
    train_points_per_eval: int = 0,
) -> list[Point]:
    """One trial's train and eval metrics in logging order (per-item cloze results where its tasks include
    heldout_cloze); `train_points_per_eval` adds denser train-loss points before the eval points."""
    steps = np.asarray(list(steps) if steps is not None else eval_steps(trial), dtype=float)
    unique = float(trial.unique_tokens)
    fpt = training_flops_per_token(trial.model, trial.data.seq_len)
    objective = trial.objective
    loss = expected_loss(truth, objective, steps, unique) * (1 + truth.eval_noise * rng.standard_normal(len(steps)))
    z = skill(truth, objective, steps, unique)
    cloze = CLOZE in trial.eval.tasks
    if cloze:
        item_rng = np.random.default_rng(1234)  # the same items for every trial of the study: paired comparisons
        difficulty = truth.item_spread * item_rng.standard_normal(truth.items)
    points: list[Point] = []
    if train_points_per_eval:  # denser train logging between eval points
        train_steps = np.unique(np.linspace(steps[0] / 2, steps[-1], len(steps) * train_points_per_eval).astype(int))
        train_loss = expected_loss(truth, objective, train_steps, unique) - 0.05
        for step, value in zip(train_steps, train_loss, strict=True):
            points.append(Point(int(step), {"train/loss": float(value), "tokens": float(step)}))
    for i, step in enumerate(steps):
        epochs = step / unique
        metrics = {
            "tokens": step,
            "epoch": epochs,
            "unique_tokens": min(step, unique),
            "flops": fpt * step,
            "tokens_per_s": 5e4 * (1 + 0.02 * rng.standard_normal()),
            "lr": trial.train.lr * (1.0 if step < 0.8 * steps[-1] else 0.3),
            "grad_norm": 0.5 + 0.05 * abs(rng.standard_normal()),
            "train/loss": loss[i] - 0.05 - 0.02 * math.log1p(epochs),
            eval_key("heldout_loss", "loss"): loss[i],
        }
        items = None
        if cloze:
            logits = z[i] - difficulty
            p = truth.chance + (1 - truth.chance) / (1 + np.exp(-logits))
            correct = (rng.random(truth.items) < p).astype(float)
            delta = 0.4 * logits + 0.3 * rng.standard_normal(truth.items)
            nll = 3.0 + 0.1 * math.log1p(epochs) - 0.05 * logits
            metrics |= {
                eval_key(CLOZE, "acc"): correct.mean(),
                eval_key(CLOZE, "acc_stderr"): correct.std(ddof=1) / math.sqrt(truth.items),
                eval_key(CLOZE, "delta_nll"): delta.mean(),
                eval_key(CLOZE, "nll"): float(np.mean(nll)),
                eval_key(CLOZE, "chance"): truth.chance,  # as the task logs it: the mean of 1 / choices per item
            }
            items = {"acc": correct, "delta_nll": delta, "nll": nll}
            if truth.pmi_ar_shift is not None:  # the other scorings: per character alike, PMI shifted for AR
                shift = truth.pmi_ar_shift if objective == "ar" else 0.0
                p_pmi = truth.chance + (1 - truth.chance) / (1 + np.exp(-(logits + shift)))
                items["acc_norm"] = (rng.random(truth.items) < p).astype(float)
                items["acc_pmi"] = (rng.random(truth.items) < p_pmi).astype(float)
                metrics |= {eval_key(CLOZE, k): items[k].mean() for k in ("acc_norm", "acc_pmi")}
        points.append(Point(int(step), {k: float(v) for k, v in metrics.items()}, items))
    return points
