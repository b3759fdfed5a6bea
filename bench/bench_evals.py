"""Evaluation cost and Monte Carlo noise, on the local studies' own settings.

1. Cost: for each local study (smoke, cpu_crossover) and objective, the time of one eval point (every task of the
   spec, at the spec's max_items and mc_samples) against the training time between eval points, measured on the same
   Trainer in the same run, then as a fraction of the whole trial's training time:
       fraction = eval points x seconds per eval point / (total_tokens / training tokens per s). Goal: <= 10%.
2. Noise: the standard error of MDLM likelihood estimates against the number of Monte Carlo samples K, on the
   smoke study's cloze items after some training: per item (log-likelihood of one choice, over R repeated estimates
   with different seeds) and for the task's mean NLL per token.

Run: .venv/bin/python bench/bench_evals.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from crossover.evals.checkpoint import EvalModel
from crossover.evals.tasks import choice_nlls
from crossover.specs import load_study
from crossover.trainers.launch import LocalReporter
from crossover.trainers.loop import Trainer
from crossover.trainers.schedules import eval_steps

ROOT = Path(__file__).resolve().parents[1]
TRAIN_STEPS = 8


def trainer_for(spec_path: Path, objective: str, folder: str) -> Trainer:
    trial = next(t for t in load_study(spec_path).expand() if t.objective == objective)
    return Trainer(trial, LocalReporter(folder))


def cost(spec_name: str) -> None:
    for objective in ("ar", "mdlm"):
        with tempfile.TemporaryDirectory() as folder:
            trainer = trainer_for(ROOT / "study_specs" / spec_name, objective, folder)
            trial = trainer.trial
            trainer.eval_at = set()  # time training alone first
            started = time.perf_counter()
            trainer.run(stop_after_steps=TRAIN_STEPS)
            train_s = (time.perf_counter() - started) / TRAIN_STEPS
            started = time.perf_counter()
            metrics, _ = trainer.evaluate()
            eval_s = time.perf_counter() - started
            steps = trial.total_tokens // trial.train.global_batch_tokens
            points = len(eval_steps(trial))
            fraction = points * eval_s / (steps * train_s)
            print(
                f"{spec_name:18s} {objective:4s} tasks {','.join(trial.eval.tasks):28s} one eval point {eval_s:6.2f} s, "
                f"one train step {train_s:5.2f} s; {points} points over {steps} steps: eval = {fraction:.1%} of "
                f"training time"
            )


def mc_noise(repeats: int = 12) -> None:
    with tempfile.TemporaryDirectory() as folder:
        trainer = trainer_for(ROOT / "study_specs" / "smoke.yaml", "mdlm", folder)
        trainer.eval_at = set()
        trainer.run(stop_after_steps=40)
        em = EvalModel.from_data(trainer.engine.module, "mdlm", trainer.data, trainer.trial)
        from crossover.evals.tasks import build_items

        items = build_items("heldout_cloze", trainer.data, max_items=32, max_seq_len=trainer.trial.data.seq_len)
        gold_tokens = sum(len(i.choices[i.gold]) for i in items)
        print(f"\nMDLM likelihood noise against K (smoke, {len(items)} cloze items, {repeats} repeats per K)")
        print(f"{'K':>5s} {'per-item SE (nats)':>20s} {'task mean NLL/token SE':>24s} {'seconds':>8s}")
        for k in (1, 2, 4, 8, 16, 32, 64):
            started = time.perf_counter()
            runs = [choice_nlls(em, items, mc_samples=k, seed=seed, mdlm_block=None) for seed in range(repeats)]
            seconds = (time.perf_counter() - started) / repeats
            gold = [[run[i][item.gold] for i, item in enumerate(items)] for run in runs]  # [repeat][item]
            per_item = statistics.mean(statistics.stdev(r[i] for r in gold) for i in range(len(items)))
            task = statistics.stdev(sum(r) / gold_tokens for r in gold)
            print(f"{k:5d} {per_item:20.3f} {task:24.4f} {seconds:8.2f}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    for name in ("smoke.yaml", "cpu_crossover.yaml"):
        cost(name)
    mc_noise()
