"""The held-out cloze, plain against sharp: how far chance, AR and MDLM separate, and at what cost.

plain: every span on the slot grid, raw-likelihood accuracy, each MDLM choice scored with masks of its own (the task
before it was sharpened).
sharp: informative spans only (no whitespace runs, no text another document has at the same place), the choices of an
item sharing their MDLM masks, and acc_pmi (NLL given the context minus NLL given BOS alone; crossover.evals.tasks).
Both use the same number of items, prefix and span lengths and Monte Carlo samples; sharp also scores each choice after
BOS alone, which the table counts as token positions scored.

Models: random-init AR and MDLM (they must score at chance) and AR and MDLM trained on the smoke study's data
(nano, U = 150k, `--tokens` training tokens; the smoke study's own trials). Per model and task: accuracy, its
standard error, z = (acc - chance) / stderr, Delta NLL, and for MDLM how often two scorings with different Monte Carlo
seeds agree on an item's answer (scoring noise).

Run: .venv/bin/python bench/bench_cloze.py [--tokens 600k] [--items 256] [--mc-samples 4]
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from crossover.data import prepare
from crossover.evals.checkpoint import EvalModel, load_checkpoint
from crossover.evals.tasks import choice_nlls, heldout_cloze_items, item_metrics, score_multiple_choice
from crossover.models import build_model
from crossover.specs import load_study, parse_tokens
from crossover.trainers.launch import LocalReporter
from crossover.trainers.loop import train


def models(tokens: int, folder: str) -> dict[str, EvalModel]:
    """Random-init and trained AR and MDLM of the smoke study's 150k cell (`tokens` training tokens), the trained
    ones kept in `folder` and reused from there when present."""
    spec = load_study("study_specs/smoke.yaml")
    found = {}
    for trial in spec.expand():
        if trial.unique_tokens != 150_000:
            continue
        trial = trial.model_copy(update={"train": trial.train.model_copy(update={"total_tokens": tokens})})
        data = prepare(trial.data)
        torch.manual_seed(0)
        untrained = build_model(trial.model, causal=trial.objective == "ar").eval()
        found[f"{trial.objective} untrained"] = EvalModel.from_data(untrained, trial.objective, data, trial)
        reporter = LocalReporter(f"{folder}/{trial.objective}-{tokens}", keep=1)
        if not reporter.checkpoints():
            train(trial, reporter)
        found[f"{trial.objective} trained"] = load_checkpoint(reporter.checkpoints()[-1])
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", default="600k", help="training tokens of each trained model")
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--mc-samples", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as folder:
        found = models(parse_tokens(args.tokens), folder)
    data = prepare(load_study("study_specs/smoke.yaml").data)
    docs = data.heldout_documents()
    tasks = {
        "plain": (
            heldout_cloze_items(data, docs, n_items=args.items, prefix_tokens=48, span_tokens=16, sharp=False),
            False,
        ),
        "sharp": (heldout_cloze_items(data, docs, n_items=args.items, prefix_tokens=48, span_tokens=16), True),
    }
    print(
        f"held-out cloze, {args.items} items (48-token prefix, 16-token span, 4 choices), MDLM K={args.mc_samples}; "
        f"trained models: smoke study data, U 150k, {args.tokens} tokens"
    )
    for name, (items, sharp) in tasks.items():
        positions = sum(len(i.context) + len(c) for i in items for c in i.choices)
        positions += sum(1 + len(c) for i in items for c in i.choices) if sharp else 0
        print(f"{name}: {positions:,} token positions per AR scoring (x K for MDLM)")
    print(
        f"{'task':6s} {'model':15s} {'metric':8s} {'acc':>6s} {'±se':>6s} {'z':>6s} {'delta_nll':>10s} {'±se':>6s} "
        f"{'agree':>6s}"
    )
    for name, (items, sharp) in tasks.items():
        for model_name, em in found.items():
            # MDLM by its ELBO (mdlm_block None), the scorer this bench measured
            m = score_multiple_choice(
                "heldout_cloze", em, items, mc_samples=args.mc_samples, paired=sharp, pmi=sharp, mdlm_block=None
            ).metrics
            metric = "acc_pmi" if sharp else "acc"
            agree = ""
            if em.objective == "mdlm":  # the same items scored with another seed: does the raw answer change?
                again = choice_nlls(em, items, mc_samples=args.mc_samples, seed=1, paired=sharp, mdlm_block=None)
                first = choice_nlls(em, items, mc_samples=args.mc_samples, seed=0, paired=sharp, mdlm_block=None)
                same = [
                    item_metrics(i, a)["acc"] == item_metrics(i, b)["acc"]
                    for i, a, b in zip(items, first, again, strict=True)
                ]
                agree = f"{sum(same) / len(same):.2f}"
            z = (m[metric] - m["chance"]) / max(m[f"{metric}_stderr"], 1e-9)
            print(
                f"{name:6s} {model_name:15s} {metric:8s} {m[metric]:6.3f} {m[f'{metric}_stderr']:6.3f} {z:6.1f} "
                f"{m['delta_nll']:10.2f} {m['delta_nll_stderr']:6.2f} {agree:>6s}"
            )


if __name__ == "__main__":
    main()
