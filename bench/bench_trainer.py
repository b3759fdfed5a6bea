"""Trainer tokens/s on CPU (DeepSpeed engine, data stream, objective, logging) against a plain PyTorch loop of the
same model, batch, precision and optimizer, measured in the same run. Goal: ratio >= 0.9.

Both train in the precision `auto` resolves to here (or the spec's). The plain loop does what DeepSpeed does: in
bf16, bf16 weights and activations with fp32 master weights in AdamW; in fp32, AdamW on the weights; gradient
accumulation and clipping either way, and the same fused loss head. Steps alternate between the two in blocks so
machine load hits both alike.

Run: .venv/bin/python bench/bench_trainer.py [spec] (default study_specs/smoke.yaml, its first AR and MDLM trials)
"""

from __future__ import annotations

import sys
import time

import torch

from crossover.data import prepare, train_stream
from crossover.models import build_model
from crossover.models.objectives import ar_inputs_targets, ar_weights, mask_tokens, mdlm_weights, sample_t
from crossover.specs import load_study
from crossover.specs.hardware import resolve_runtime
from crossover.trainers.launch import LocalReporter
from crossover.trainers.loop import Trainer

STEPS, BLOCKS = 6, 3


class PlainLoop:
    """The same training step written directly in PyTorch, no DeepSpeed."""

    def __init__(self, trial, data, precision: str):
        torch.manual_seed(trial.seed)
        self.trial, self.mask_id = trial, data.mask_id
        self.model = build_model(trial.model, causal=trial.objective == "ar")
        if precision == "bf16":
            self.model.to(torch.bfloat16)
            self.master = [p.detach().float().clone().requires_grad_(True) for p in self.model.parameters()]
        else:
            self.master = list(self.model.parameters())
        t = trial.train
        self.opt = torch.optim.AdamW(self.master, lr=t.lr, betas=t.betas, eps=t.eps, weight_decay=t.weight_decay)
        self.stream = train_stream(trial, data)
        self.batches = iter(self.stream)
        self.generator = torch.Generator().manual_seed(0)

    def step(self) -> None:
        batch = next(self.batches)
        for tokens in batch.micro_batches:
            if self.trial.objective == "ar":
                inputs, targets = ar_inputs_targets(tokens)
                loss = self.model(inputs, targets=targets, loss_weights=ar_weights(targets)).loss
            else:
                t = sample_t(len(tokens), self.trial.train.mdlm_t_min, self.generator, stratified=True)
                noisy, masked = mask_tokens(tokens, t, self.mask_id, self.generator)
                loss = self.model(noisy, targets=tokens, loss_weights=mdlm_weights(masked, t)).loss
            (loss / len(batch.micro_batches)).backward()
        mixed = self.master[0] is not next(self.model.parameters())
        if mixed:
            for master, p in zip(self.master, self.model.parameters(), strict=True):
                master.grad = p.grad.float()
                p.grad = None
        torch.nn.utils.clip_grad_norm_(self.master, self.trial.train.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if mixed:
            with torch.no_grad():
                for master, p in zip(self.master, self.model.parameters(), strict=True):
                    p.copy_(master)


def main() -> None:
    spec = load_study(sys.argv[1] if len(sys.argv) > 1 else "study_specs/smoke.yaml")
    seen = set()
    for trial in spec.expand():
        if trial.objective in seen:
            continue
        seen.add(trial.objective)
        data = prepare(trial.data)
        runtime = resolve_runtime(trial.train, trial.model, trial.resources)
        trainer = Trainer(trial, LocalReporter(f"/tmp/bench-trainer-{trial.name}"), runtime)
        trainer.eval_at = set()  # training throughput only: the plain loop evaluates nothing either
        plain = PlainLoop(trial, data, runtime.precision)
        tokens_per_step = trial.train.global_batch_tokens
        trainer.run(stop_after_steps=1)  # warm both up
        plain.step()
        times = {"trainer": 0.0, "plain": 0.0}
        done = 1
        for _ in range(BLOCKS):
            start = time.perf_counter()
            trainer.run(stop_after_steps=done + STEPS)
            times["trainer"] += time.perf_counter() - start
            done += STEPS
            start = time.perf_counter()
            for _ in range(STEPS):
                plain.step()
            times["plain"] += time.perf_counter() - start
        tokens = BLOCKS * STEPS * tokens_per_step
        rate = {k: tokens / v for k, v in times.items()}
        print(
            f"{trial.name:24s} trainer {rate['trainer']:8.0f} tok/s   plain PyTorch {rate['plain']:8.0f} tok/s   "
            f"ratio {rate['trainer'] / rate['plain']:.3f}  ({trial.model.preset}, {runtime.precision}, "
            f"micro {trial.train.micro_batch} x accum {trial.grad_accum_steps}, seq {trial.data.seq_len}, "
            f"zero {trial.train.zero_stage}, {torch.get_num_threads()} thread(s))"
        )


if __name__ == "__main__":
    main()
