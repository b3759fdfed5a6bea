"""Does a crossover verdict claim only what the evidence holds? False claims, power and coverage on simulated studies.

Each simulated study is shaped like the shipped CPU studies: 12 log-spaced eval points (cpu_crossover's `log:12` over
4M tokens), a 4-choice task whose 256 items AR and MDLM both answer at every point (item difficulties shared, each
answer drawn afresh), 1, 3, 5 or 10 seeds per objective with the training noise measured in cpu_crossover_seeds (the
standard deviation over seeds of AR's best accuracy, 0.024, and of MDLM's last, 0.073; each seed a constant skill
offset). Two truths (tests/analysis_support.py: sim_study):

- tie: AR rises to a plateau; MDLM approaches it from below and ends 0.01 short of it, never passing. Any
  `crossed` (or "MDLM always ahead") is a false claim. Goal: at most 10%. Beside it `touch`, the same meeting AR
  exactly at the end: the boundary between the answers, where a one-sided claim at 90% is wrong 10% of the time
  by construction (shown, not judged).
- ahead: AR peaks early and decays; MDLM passes it at 70% of the log range and ends 0.07 ahead in expected accuracy.
  Power = share of studies that read `crossed` (goal at least 70%); coverage = share whose 90% interval holds the
  planted crossover (goal at least 85%: 0.90 nominal). Beside the power, its ceiling at that seed count
  (`power_ceiling`): the most powerful 90% test of the seeds' mean end-of-run difference with unlimited items, the
  training noise known (z) or estimated from the seeds (t, as every real study must). A power goal the ceiling
  misses is out of reach of any rule that holds its level: more seeds or a larger lead are the only way there.

Rows with one seed are run twice: without training noise (what a one-seed interval assumes: items are the only
noise) and with it (what a one-seed study really faces: its interval holds item noise only, which the verdict says).
The status rule and the seed-level t draws are crossover.analysis.crossing's (see its docstring).

Run: .venv/bin/python bench/bench_crossover.py [--sims 300] [--boot 1000] [--items 256]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import zlib
from pathlib import Path
from statistics import NormalDist

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.analysis_support

SHAPES = ("tie", "touch", "ahead")


def measure(shape: str, seeds: int, noise: bool, items: int, sims: int, boot: int) -> dict[str, float]:
    from crossover.analysis.crossing import ALWAYS_AHEAD, CROSSED, NOT_CROSSED, find_crossover
    from tests.analysis_support import SHIPPED_X, draw_sim_study, sim_study

    study = sim_study(shape, noise)
    claims, covered, against = 0, 0, 0
    for sim in range(sims):
        rng = np.random.default_rng([zlib.crc32(shape.encode()), seeds, noise, sim])
        ar, mdlm = draw_sim_study(rng, study, items, seeds)
        samples = (ar[:, 0], mdlm[:, 0]) if seeds == 1 else (ar, mdlm)
        result = find_crossover(
            SHIPPED_X,
            ar.mean(axis=(1, 2)),
            mdlm.mean(axis=(1, 2)),
            ar_samples=samples[0],
            mdlm_samples=samples[1],
            n_boot=boot,
            seed=sim,
        )
        claims += result.status in (CROSSED, ALWAYS_AHEAD)
        against += result.status == NOT_CROSSED
        if study.truth is not None:
            covered += result.ci[0] <= study.truth <= result.ci[1]
    return {"claims": claims / sims, "coverage": covered / sims, "not_crossed": against / sims}


def power_ceiling(shape: str, seeds: int, noise: bool, draws: int = 200_000) -> tuple[float, float]:
    """What a study with unlimited items and eval points could reach at this seed count: the power of a one-sided 90%
    test on the seeds' mean end-of-run difference in expected accuracy (MDLM minus AR), with the training noise
    known (a z test) and estimated from the seeds (a t test). Against a normal shift they are the most powerful
    tests at their level (Neyman-Pearson; the t test among unbiased ones), so no rule that holds 90% beats them;
    every real study has item noise on top."""
    from scipy.stats import nct
    from scipy.stats import t as student_t

    from tests.analysis_support import ITEM_SPREAD, expected_accuracy, sim_study

    if not noise:
        return 1.0, 1.0
    study = sim_study(shape, noise)
    rng = np.random.default_rng(0)
    ends = [
        expected_accuracy(z[-1] + sd * rng.standard_normal(draws), ITEM_SPREAD)
        for z, sd in ((study.z_ar, study.sd_ar), (study.z_mdlm, study.sd_mdlm))
    ]
    per_seed = ends[1] - ends[0]
    shift = per_seed.mean() * math.sqrt(seeds) / per_seed.std()
    known = NormalDist().cdf(shift - NormalDist().inv_cdf(0.9))
    estimated = float(nct.sf(student_t.ppf(0.9, seeds - 1), seeds - 1, shift)) if seeds > 1 else float("nan")
    return known, estimated


def ceiling(seeds: int, noise: bool) -> str:
    known, estimated = power_ceiling("ahead", seeds, noise)
    return f"{known:.0%} / " + ("-" if math.isnan(estimated) else f"{estimated:.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sims", type=int, default=300, help="simulated studies per row (default 300)")
    parser.add_argument("--boot", type=int, default=1000, help="replicates per study (default 1000)")
    parser.add_argument("--items", type=int, default=256, help="items per eval point (default 256)")
    args = parser.parse_args()
    print(f"{args.sims} simulated studies per row, {args.boot} replicates, {args.items} items; 90% intervals")
    print(
        "| seeds | training noise | tie: false 'crossed' (goal <= 10%) | touch: 'crossed' | ahead 0.07: power "
        "(goal >= 70%) | ahead: power's ceiling, training noise known / estimated | ahead: 90% coverage "
        "(goal >= 85%) | ahead: 'not crossed' | s per study |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for seeds, noise in ((1, False), (1, True), (3, True), (5, True), (10, True)):
        start = time.perf_counter()
        tie, touch, ahead = (measure(s, seeds, noise, args.items, args.sims, args.boot) for s in SHAPES)
        per = (time.perf_counter() - start) / (len(SHAPES) * args.sims)
        print(
            f"| {seeds} | {'measured sds' if noise else 'none'} | {tie['claims']:.1%} | {touch['claims']:.1%} | "
            f"{ahead['claims']:.1%} | {ceiling(seeds, noise)} | {ahead['coverage']:.1%} | {ahead['not_crossed']:.1%} | {per:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
