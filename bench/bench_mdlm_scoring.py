"""MDLM scored on its own terms: rows at the trained window, and how many Monte Carlo samples K an answer needs.

Three tables on the held-out cloze (the shipped task: 48-token prefix, 16-token span, 4 choices, sharp items, PMI):

1. Row length. A cloze row is BOS + 48 + 16 = 65 tokens and its PMI prior row BOS + 16 = 17, but the models were
   trained on full windows (128 tokens in the CPU studies). `short`: rows as they are, padding hidden from attention
   (AR's view: causal, so the length changes nothing for it). `window`: MDLM rows filled to the trained window with
   attended, unscored [MASK] tokens (a valid marginalisation under MDLM: a masked position is an unknown token).
   AR is scored both ways too, to show it is unchanged.
2. K. MDLM with each row length at K = 4, 16, 64, 128 (stratified t; an item's choices share their masks): acc,
   acc_pmi, and how often two scorings with different Monte Carlo seeds give an item the same answer (on acc's argmin
   and on acc_pmi's), with the seconds one scoring of all items takes on this machine.
3. Left-to-right decoding (`eval.mdlm_steps`): MDLM's exact likelihood of decoding each choice in S blocks, read in
   order (no Monte Carlo, so two scorings always agree), at S = 4, 8, 16, with how often it picks the answer the
   highest-K ELBO picks.

Models: AR and MDLM trained on the smoke study's data (nano, U 150k, `--tokens` training tokens), or the final
checkpoints of a study given with `--checkpoint DIR` (repeatable; e.g. cpu_crossover's, under its Ray storage).

Run: .venv/bin/python bench/bench_mdlm_scoring.py [--tokens 600k] [--items 256] [--k-items N] [--ks 4,16,64,128]
     [--steps 4,8,16] [--checkpoint DIR ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from crossover.data import prepare
from crossover.evals.checkpoint import EvalModel, load_checkpoint
from crossover.evals.tasks import MCItem, choice_nlls, heldout_cloze_items, item_metrics
from crossover.specs import parse_tokens

KS = (4, 16, 64, 128)


def trained(tokens: int, folder: str) -> dict[str, EvalModel]:
    """AR and MDLM of the smoke study's 150k cell trained for `tokens` (bench_cloze's models, kept in `folder`)."""
    from bench_cloze import models  # bench/ is on the path when this script runs

    return {
        name.replace("trained", "U150k"): em for name, em in models(tokens, folder).items() if "untrained" not in name
    }


def answers(
    em: EvalModel, items: list[MCItem], k: int, seed: int, window: bool, steps: int | None = None
) -> tuple[list, list, float]:
    """Per item: the metrics of one scoring, the (acc, acc_pmi) answers, and the scoring's seconds; `steps`: MDLM
    decodes the choices left to right in that many steps instead of the K-sample ELBO."""
    started = time.perf_counter()
    nlls = choice_nlls(em, items, mc_samples=k, seed=seed, window=window, mdlm_steps=steps)
    priors = choice_nlls(em, [MCItem(i.id, i.context[:1], i.choices, i.gold) for i in items], mc_samples=k,
                         seed=seed, window=window, mdlm_steps=steps)  # fmt: skip
    seconds = time.perf_counter() - started
    metrics = [item_metrics(i, n, p) for i, n, p in zip(items, nlls, priors, strict=True)]
    picks = [
        (min(range(len(n)), key=n.__getitem__), min(range(len(n)), key=lambda j, n=n, p=p: n[j] - p[j]))
        for n, p in zip(nlls, priors, strict=True)
    ]
    return metrics, picks, seconds


def mean(metrics: list[dict], name: str) -> float:
    return sum(m[name] for m in metrics) / len(metrics)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", default="600k", help="training tokens of each smoke-data model")
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--checkpoint", action="append", default=[], help="a trained checkpoint folder (repeatable)")
    parser.add_argument("--ks", default=",".join(map(str, KS)))
    parser.add_argument("--k-items", type=int, help="items in the K table (default: all; K = 128 is slow on a CPU)")
    parser.add_argument("--models", help="a folder to keep the trained models in and reuse (default: temporary)")
    parser.add_argument("--rows", default="short,window", help="row lengths in the K table")
    parser.add_argument("--steps", default="4,8,16", help="left-to-right decoding steps in table 3 ('' for none)")
    parser.add_argument("--no-rows-table", action="store_true", help="skip table 1")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.models or scratch
        if args.checkpoint:
            models = {}
            for path in args.checkpoint:
                em = load_checkpoint(path)
                models[f"{em.objective} U{em.trial.unique_tokens:,} {path.rstrip('/').rsplit('/', 2)[-2][:24]}"] = em
        else:
            models = trained(parse_tokens(args.tokens), folder)
    first = next(iter(models.values()))
    data = prepare(first.trial.data)
    items = heldout_cloze_items(data, data.heldout_documents(), n_items=args.items, prefix_tokens=48, span_tokens=16)
    print(f"held-out cloze: {len(items)} items (48-token prefix, 16-token span, 4 choices, PMI), trained window "
          f"{first.window} tokens; models: {', '.join(models)}")  # fmt: skip

    print("\n1. row length (K = 16 for MDLM): accuracy")
    print(f"{'model':34s} {'rows':7s} {'acc':>6s} {'acc_norm':>8s} {'acc_pmi':>7s} {'delta_nll':>9s}")
    for name, em in models.items() if not args.no_rows_table else ():
        for window in (False, True):
            metrics, _, _ = answers(em, items, 16, 0, window)
            print(f"{name:34s} {'window' if window else 'short':7s} {mean(metrics, 'acc'):6.3f} "
                  f"{mean(metrics, 'acc_norm'):8.3f} {mean(metrics, 'acc_pmi'):7.3f} {mean(metrics, 'delta_nll'):9.2f}")  # fmt: skip

    ks = [int(k) for k in args.ks.split(",")]
    items = items[: args.k_items or len(items)]
    print(f"\n2. Monte Carlo samples K (MDLM, {len(items)} items): accuracy and seed agreement (seeds 0 and 1)")
    print(f"{'model':34s} {'rows':7s} {'K':>4s} {'acc':>6s} {'acc_pmi':>7s} {'agree acc':>9s} {'agree pmi':>9s} "
          f"{'s/scoring':>9s}")  # fmt: skip
    reference = {}  # model -> its answers at the highest K, short rows (table 3 compares with them)
    for name, em in models.items():
        if em.objective != "mdlm":
            continue
        for rows in args.rows.split(","):
            for k in ks:
                metrics, picks, seconds = answers(em, items, k, 0, rows == "window")
                if k == max(ks) and rows == "short":
                    reference[name] = picks
                _, again, _ = answers(em, items, k, 1, rows == "window")
                agree = [sum(a[j] == b[j] for a, b in zip(picks, again, strict=True)) / len(items) for j in (0, 1)]
                print(f"{name:34s} {rows:7s} {k:4d} {mean(metrics, 'acc'):6.3f} {mean(metrics, 'acc_pmi'):7.3f} "
                      f"{agree[0]:9.3f} {agree[1]:9.3f} {seconds:9.1f}", flush=True)  # fmt: skip

    steps = [int(s) for s in args.steps.split(",") if s]
    print(f"\n3. left-to-right decoding in S steps (MDLM, {len(items)} items, short rows): an exact likelihood, so two "
          f"scorings agree on every item; 'same as K' is how often it gives an item the answer the K = {max(ks)} "
          f"ELBO gives (acc, acc_pmi)")  # fmt: skip
    print(f"{'model':34s} {'S':>4s} {'acc':>6s} {'acc_pmi':>7s} {'same acc':>9s} {'same pmi':>9s} {'s/scoring':>9s}")
    for name, em in models.items() if steps else ():
        if em.objective != "mdlm":
            continue
        if name not in reference:
            _, reference[name], _ = answers(em, items, max(ks), 0, False)
        for s in steps:
            metrics, picks, seconds = answers(em, items, 1, 0, False, steps=s)
            same = [sum(a[j] == b[j] for a, b in zip(picks, reference[name], strict=True)) / len(items) for j in (0, 1)]
            print(f"{name:34s} {s:4d} {mean(metrics, 'acc'):6.3f} {mean(metrics, 'acc_pmi'):7.3f} {same[0]:9.3f} "
                  f"{same[1]:9.3f} {seconds:9.1f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
