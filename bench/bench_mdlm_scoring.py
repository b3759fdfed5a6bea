"""MDLM's multiple-choice scorers side by side on the SAME trained checkpoints: a paired sensitivity table.

The held-out cloze as the task scores it (48-token prefix, 16-token span, 4 choices, sharp items, acc and acc_pmi),
every scorer on the same items of the same models, so each difference is paired item by item:

- AR: its exact likelihood (the one AR scorer), for scale.
- MDLM per token (`eval.mdlm_block: 1`, the default): the chain rule in reading order, one forward per choice token;
  the reference every other MDLM row is compared with.
- MDLM in blocks of B tokens per step (`eval.mdlm_block: B`; B = 4 and 8: 4 and 2 steps for a 16-token span): each
  block's tokens predicted independently given what is revealed, a cheaper, weaker approximation.
- MDLM's Monte Carlo ELBO with K samples (`eval.mdlm_block: null`, `eval.mc_samples: K`; K = 16 costs what per token
  costs on 16-token spans; an item's choices share their masks).

Per row: acc and acc_pmi with their item standard errors, the paired difference against MDLM per token (mean of the
per-item differences, and its standard error: the standard deviation of those differences over sqrt(items)), the gold
choice's NLL per token (`nll`: how much likelihood the scorer gives the true span, lower is better) with its paired
difference, and the seconds one scoring of all items takes (choices after the context and after BOS alone, as the
task scores them).

Models: AR and MDLM trained on the smoke study's data (nano, U 150k, `--tokens` training tokens; bench_cloze's models,
kept in `--models DIR` and reused from there), or the checkpoints given with `--checkpoint DIR` (repeatable).

Run: .venv/bin/python bench/bench_mdlm_scoring.py [--tokens 600k] [--items 256] [--blocks 4,8] [--ks 16,64]
     [--models DIR] [--checkpoint DIR ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from crossover.data import prepare
from crossover.evals.checkpoint import EvalModel, load_checkpoint
from crossover.evals.results import mean_and_stderr
from crossover.evals.tasks import MCItem, heldout_cloze_items, score_multiple_choice
from crossover.specs import parse_tokens

METRICS = ("acc", "acc_pmi", "nll")
SPAN = 16  # the cloze's span: steps per choice = ceil(SPAN / block)


def trained(tokens: int, folder: str) -> dict[str, EvalModel]:
    """AR and MDLM of the smoke study's 150k cell trained for `tokens` (bench_cloze's models, kept in `folder`)."""
    from bench_cloze import models  # bench/ is on the path when this script runs

    return {name.split()[0]: em for name, em in models(tokens, folder).items() if "untrained" not in name}


def scored(em: EvalModel, items: list[MCItem], **scorer) -> tuple[dict[str, list[float]], float]:
    """Per-item acc, acc_pmi and gold NLL per token of one scoring of the cloze items, and its seconds."""
    started = time.perf_counter()
    result = score_multiple_choice("heldout_cloze", em, items, pmi=True, seed=0, **scorer)
    seconds = time.perf_counter() - started
    return {name: result.item_metrics[name] for name in METRICS}, seconds


def cell(values: list[float]) -> str:
    mean, stderr = mean_and_stderr(values)
    return f"{mean:.3f} ± {stderr:.3f}"


def paired(values: list[float], reference: list[float]) -> str:
    mean, stderr = mean_and_stderr([a - b for a, b in zip(values, reference, strict=True)])
    return f"{mean:+.3f} ± {stderr:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", default="600k", help="training tokens of each smoke-data model")
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--blocks", default="4,8", help="MDLM block sizes besides 1 (tokens per step)")
    parser.add_argument("--ks", default="16,64", help="ELBO sample counts")
    parser.add_argument("--models", help="a folder to keep the trained models in and reuse (default: temporary)")
    parser.add_argument("--checkpoint", action="append", default=[], help="a trained checkpoint folder (repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as scratch:
        if args.checkpoint:
            models = {f"{em.objective} {path}": em for path in args.checkpoint for em in [load_checkpoint(path)]}
        else:
            models = trained(parse_tokens(args.tokens), args.models or scratch)
    torch.set_num_threads(2)  # training set its own
    first = next(iter(models.values()))
    data = prepare(first.trial.data)
    items = heldout_cloze_items(data, data.heldout_documents(), n_items=args.items, prefix_tokens=48, span_tokens=SPAN)
    print(
        f"held-out cloze: {len(items)} items (48-token prefix, {SPAN}-token span, 4 choices, sharp, PMI); models: "
        f"{', '.join(models)} ({args.tokens} training tokens unless checkpoints); {torch.get_num_threads()} threads"
    )
    scorers = [("per token (block 1)", f"{SPAN}", {"mdlm_block": 1})]
    scorers += [(f"block {b}", f"{-(-SPAN // b)}", {"mdlm_block": b}) for b in map(int, args.blocks.split(",")) if b]
    scorers += [
        (f"ELBO K = {k}", f"{k} samples", {"mdlm_block": None, "mc_samples": k})
        for k in map(int, args.ks.split(","))
        if k
    ]
    print(
        "\n| model | scorer | forwards per choice | acc | acc vs per token (paired) | acc_pmi | "
        "acc_pmi vs per token (paired) | gold nll / token | nll vs per token (paired) | s / scoring |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, em in models.items():
        if em.objective == "ar":
            values, seconds = scored(em, items)
            print(
                f"| {name} | exact | 1 | {cell(values['acc'])} | | {cell(values['acc_pmi'])} | | "
                f"{cell(values['nll'])} | | {seconds:.1f} |",
                flush=True,
            )
            continue
        reference = None
        for label, forwards, scorer in scorers:
            values, seconds = scored(em, items, **scorer)
            reference = reference or values
            diffs = ["" if values is reference else paired(values[m], reference[m]) for m in METRICS]
            print(
                f"| {name} | {label} | {forwards} | {cell(values['acc'])} | {diffs[0]} | {cell(values['acc_pmi'])} "
                f"| {diffs[1]} | {cell(values['nll'])} | {diffs[2]} | {seconds:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
