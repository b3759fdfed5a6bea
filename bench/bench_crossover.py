"""Coverage and bias of the crossover's bootstrap interval on simulated studies shaped like the shipped ones.

Each simulated study has 12 log-spaced eval points (cpu_crossover's `log:12` over 4M tokens) and a 4-choice task
answered by AR and MDLM on the same items: AR peaks a quarter of the way in and then decays, MDLM climbs and meets it
either between the last two eval points ("late": one point after the crossing) or mid-way ("mid"). For each shape
and item count, `find_crossover` runs on many independent draws; the table gives how often the 90% interval holds
the planted crossover (goal 0.87-0.95), the median estimate's error relative to the truth (goal within 10%; a draw
that does not cross counts as beyond the window), how often the estimate crosses at all, and the interval's median
width as a share of the log-x range.

Run: .venv/bin/python bench/bench_crossover.py [--sims 400] [--boot 1000] [--seeds 1]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.analysis_support


def measure(where: float, items: int, seeds: int, sims: int, boot: int) -> dict[str, float]:
    from crossover.analysis import find_crossover
    from tests.analysis_support import SHIPPED_X, draw_shipped_study, true_crossover

    truth = true_crossover(where)
    span = math.log(SHIPPED_X[-1] / SHIPPED_X[0])
    covered, estimates, widths = 0, [], []
    for sim in range(sims):
        rng = np.random.default_rng(1_000 + sim)
        ar, mdlm = draw_shipped_study(rng, where, items, seeds)
        samples = (ar[:, 0], mdlm[:, 0]) if seeds == 1 else (ar, mdlm)
        result = find_crossover(
            SHIPPED_X, ar.mean(axis=(1, 2)), mdlm.mean(axis=(1, 2)),
            ar_samples=samples[0], mdlm_samples=samples[1], n_boot=boot, seed=sim,
        )  # fmt: skip
        low, high = result.ci
        covered += low <= truth <= high
        estimates.append(result.x if result.x is not None else math.inf)
        lo, hi = (min(max(b, SHIPPED_X[0]), SHIPPED_X[-1]) for b in (low, high))
        widths.append(math.log(hi / lo) / span)
    median = float(np.median(estimates))
    return {
        "coverage": covered / sims,
        "bias": median / truth - 1 if math.isfinite(median) else math.inf,
        "crossed": float(np.mean(np.isfinite(estimates))),
        "width": float(np.median(widths)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sims", type=int, default=400, help="simulated studies per row (default 400)")
    parser.add_argument("--boot", type=int, default=1000, help="bootstrap replicates per study (default 1000)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per objective (2+: seed-then-item bootstrap)")
    args = parser.parse_args()
    from tests.analysis_support import SHAPES

    print(f"{args.sims} simulated studies per row, {args.boot} replicates, {args.seeds} seed(s); 90% intervals")
    print("| crossing | items | coverage | median bias | crossed | CI width (share of log range) | s per study |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for shape, where in SHAPES.items():
        for items in (256, 128):
            start = time.perf_counter()
            row = measure(where, items, args.seeds, args.sims, args.boot)
            per = (time.perf_counter() - start) / args.sims
            print(
                f"| {shape} | {items} | {row['coverage']:.3f} | {row['bias']:+.1%} | {row['crossed']:.2f} | "
                f"{row['width']:.2f} | {per:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
