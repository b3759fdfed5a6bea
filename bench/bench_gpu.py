"""Training speed where it matters, measured side by side in one run: the precision a CPU should train in, and on
a CUDA GPU the trainer against a compiled bare loop, per-block against whole-model compile, and packed small trials.

CPU (always): nano forward + backward tokens/s on one thread in fp32 and bf16, and what `precision: auto` picks here.
GPU (CUDA only; elsewhere it prints why it skipped):
  1. `Trainer` (DeepSpeed ZeRO-1, bf16, compiled blocks, fused loss head) against a bare loop of the same compiled
     model (bf16 weights, fused AdamW, no DeepSpeed), for 1b and 1.7b at seq 2048, micro 8, AR and MDLM:
     tokens/s, MFU, peak memory (and the plan's estimate), trainer/bare ratio. Goals: MFU >= 55%, ratio >= 0.95.
  2. Compile per block (the trainer's) against the whole model at once, bare loop: tokens/s and compile seconds.
  3. `mini` at seq 256 with 65,536-token batches: one trial alone against 4 at once on the same GPU (separate
     processes, as Tune packs trials with gpus_per_worker: 0.25): aggregate tokens/s. Goals: alone >= 25% MFU,
     4 packed >= 1.5x alone.

`--cpu-check` runs the GPU part's code on the CPU with nano in fp32 (no goals), to check the script itself.
Data: the stdlib corpus with a 32k BPE for 1b/1.7b (built once into the cache), repeated as needed.

Run: .venv/bin/python bench/bench_gpu.py [--steps N] [--parts 1,2,3] [--presets 1b,1.7b] [--cpu-check]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

from crossover.models import build_model
from crossover.models.objectives import ar_inputs_targets, ar_weights, mask_tokens, mdlm_weights, sample_t
from crossover.specs import PRESETS, ModelConfig, parse_study, training_flops_per_token
from crossover.specs.hardware import Runtime, cpu_info, resolve_runtime
from crossover.specs.memory import GIB, estimate_memory
from crossover.specs.study import ResourcesSpec, TrainSpec

# ---------------------------------------------------------------------------------------------------- CPU row


def cpu_row(rounds: int = 5) -> None:
    torch.set_num_threads(1)
    cfg = ModelConfig(preset="nano", vocab_size=1024, **PRESETS["nano"])
    batch, seq = 16, 128
    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = build_model(cfg, causal=True).to(dtype).train()
        tokens = torch.randint(0, cfg.vocab_size, (batch, seq + 1))
        inputs, targets = ar_inputs_targets(tokens)
        weights = ar_weights(targets)
        times = []
        for i in range(rounds + 1):
            start = time.perf_counter()
            model(inputs, targets=targets, loss_weights=weights).loss.backward()
            if i:  # the first is warm-up
                times.append(time.perf_counter() - start)
        rates[dtype] = batch * seq / sorted(times)[len(times) // 2]
    fp32, bf16 = rates[torch.float32], rates[torch.bfloat16]
    auto = resolve_runtime(TrainSpec(), cfg, ResourcesSpec(), measure=lambda: (fp32, bf16))  # these rates decide
    info = cpu_info()
    print(
        f"CPU {info.model} ({info.isa}, torch {torch.backends.cpu.get_cpu_capability()}), nano, one thread, "
        f"batch {batch} x {seq}, forward + backward"
    )
    print(
        f"  fp32 {fp32:8.0f} tok/s   bf16 {bf16:8.0f} tok/s   bf16/fp32 {bf16 / fp32:.2f}   "
        f"precision auto picks {auto.precision} ({auto.why})"
    )


# ---------------------------------------------------------------------------------------------------- GPU parts


def bench_trial(preset: str, objective: str, seq: int, micro: int, accum: int, vocab: int, steps: int, cpu: bool):
    """A one-trial study of `preset` on the stdlib corpus, sized for `steps` optimizer steps."""
    batch_tokens = micro * seq * accum
    total = batch_tokens * (steps + 2)
    spec = {
        "name": "bench-gpu",
        "objective": objective,
        "data": {
            "corpus": "stdlib-python",
            "tokenizer": {"bpe_vocab": vocab},
            "seq_len": seq,
            "heldout_tokens": "50k",
            "unique_tokens": min(total, 1_000_000),
        },
        "model": preset,
        "train": {
            "total_tokens": total,
            "global_batch_tokens": batch_tokens,
            "micro_batch": micro,
            "warmup_tokens": batch_tokens,
            "lr": 3e-4,
            "min_lr": 3e-5,
            "zero_stage": 1,
            **({"precision": "fp32"} if cpu else {}),
        },
        "eval": {"every": "log:1", "tasks": ["heldout_loss"], "max_items": 4, "mc_samples": 1},
        "resources": {"gpus_per_worker": 0 if cpu else 1},
    }
    return parse_study(spec).expand()[0]


class Collect:
    """A Reporter that keeps the logged metrics in memory (no checkpoints kept)."""

    def __init__(self):
        self.metrics: list[dict] = []

    def log(self, metrics, step):
        self.metrics.append({"step": step, **metrics})

    def checkpoint(self, metrics, step, checkpoint_dir, eval_point):
        pass

    def progress(self, metrics, step):
        pass

    def log_items(self, result, step):
        pass

    def latest_checkpoint(self):
        import contextlib

        return contextlib.nullcontext(None)


def trainer_rate(trial, steps: int, runtime: Runtime) -> tuple[float, float]:
    """(tokens/s after warm-up, peak GiB) of the platform's Trainer."""
    from crossover.trainers.loop import Trainer

    reporter = Collect()
    trainer = Trainer(trial, reporter, runtime)
    trainer.eval_at = set()  # training throughput only
    trainer.log_every = steps + 1  # one window: every step after the first
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.run(stop_after_steps=1)
    trainer.log_every = steps
    trainer.run(stop_after_steps=1 + steps)
    peak = torch.cuda.max_memory_allocated() / GIB if torch.cuda.is_available() else float("nan")
    rate = reporter.metrics[-1]["tokens_per_s"]
    del trainer
    _free()
    return rate, peak


def _free() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def bare_rate(trial, steps: int, device: str, dtype: torch.dtype, whole_model: bool) -> tuple[float, float, float]:
    """(tokens/s, compile seconds, peak GiB) of the same model in a plain loop: compiled, fused AdamW, one micro
    batch per step of the trial's micro size (the trainer accumulates; the bare loop does not need to)."""
    torch.manual_seed(0)
    model = build_model(trial.model, causal=trial.objective == "ar").to(device=device, dtype=dtype).train()
    if whole_model:
        model = torch.compile(model)
    else:
        model.compile_blocks()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    seq, micro, mask_id = trial.data.seq_len, trial.train.micro_batch, trial.model.vocab_size - 1
    g = torch.Generator(device=device).manual_seed(0)
    tokens = torch.randint(0, mask_id, (micro, seq + 1), device=device, generator=g)

    def step() -> None:
        if trial.objective == "ar":
            inputs, targets = ar_inputs_targets(tokens)
            weights = ar_weights(targets)
        else:
            targets = tokens[:, :seq]
            t = sample_t(micro, 1e-3, g)
            inputs, masked = mask_tokens(targets, t, mask_id, g)
            weights = mdlm_weights(masked, t)
        model(inputs, targets=targets, loss_weights=weights).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    step()
    sync()
    compile_s = time.perf_counter() - start
    step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    rate = steps * micro * seq / (time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / GIB if device == "cuda" else float("nan")
    return rate, compile_s, peak


def mfu(trial, rate: float) -> str:
    from crossover.trainers.loop import peak_flops

    if not torch.cuda.is_available():
        return "n/a"
    peak = peak_flops(torch.device("cuda"))
    return f"{training_flops_per_token(trial.model, trial.data.seq_len) * rate / peak:.1%}" if peak else "n/a"


def trainer_vs_bare(steps: int, cpu: bool, presets: list[str]) -> None:
    device, dtype = ("cpu", torch.float32) if cpu else ("cuda", torch.bfloat16)
    presets = ["nano"] if cpu else presets
    seq, micro, accum, vocab = (128, 8, 2, 1024) if cpu else (2048, 8, 4, 32000)
    print(f"\n1. trainer vs compiled bare loop: seq {seq}, micro {micro} x accum {accum}, vocab {vocab}, {dtype}")
    print(
        f"  {'trial':14s} {'trainer tok/s':>13s} {'MFU':>6s} {'peak GiB':>8s} {'plan GiB':>8s}   "
        f"{'bare tok/s':>10s} {'MFU':>6s}   {'ratio':>5s}"
    )
    for preset in presets:
        for objective in ("ar", "mdlm"):
            trial = bench_trial(preset, objective, seq, micro, accum, vocab, steps, cpu)
            runtime = resolve_runtime(trial.train, trial.model, trial.resources)
            try:
                rate, peak = trainer_rate(trial, steps, runtime)
            except torch.OutOfMemoryError:
                print(f"  {preset}-{objective}: out of memory in the trainer")
                _free()
                continue
            planned = (
                estimate_memory(
                    trial.model,
                    precision=runtime.precision,
                    zero_stage=1,
                    workers=1,
                    micro_batch=micro,
                    seq_len=seq,
                    gpu=not cpu,
                ).total
                / GIB
            )
            bare, _, _ = bare_rate(trial, steps, device, dtype, whole_model=False)
            _free()  # the bare loop's model and optimizer are gone with its frame
            print(
                f"  {preset + '-' + objective:14s} {rate:13.0f} {mfu(trial, rate):>6s} {peak:8.1f} {planned:8.1f}   "
                f"{bare:10.0f} {mfu(trial, bare):>6s}   {rate / bare:5.2f}"
            )


def compile_modes(steps: int, cpu: bool) -> None:
    device, dtype = ("cpu", torch.float32) if cpu else ("cuda", torch.bfloat16)
    preset, seq, micro, vocab = ("nano", 128, 8, 1024) if cpu else ("1b", 2048, 8, 32000)
    print(f"\n2. compile per block vs whole model: {preset}, bare loop, micro {micro} x seq {seq}")
    for objective in ("ar", "mdlm"):
        trial = bench_trial(preset, objective, seq, micro, 1, vocab, steps, cpu)
        torch._dynamo.reset()  # each mode compiles from scratch
        blocks, blocks_s, _ = bare_rate(trial, steps, device, dtype, whole_model=False)
        _free()
        torch._dynamo.reset()
        whole, whole_s, _ = bare_rate(trial, steps, device, dtype, whole_model=True)
        _free()
        print(
            f"  {objective:5s} per block {blocks:10.0f} tok/s (compile {blocks_s:5.1f} s)   whole model "
            f"{whole:10.0f} tok/s (compile {whole_s:5.1f} s)   whole/blocks {whole / blocks:.2f}"
        )


def packed(steps: int, cpu: bool) -> None:
    preset = "nano" if cpu else "mini"
    print(f"\n3. {preset} trials sharing one {'CPU' if cpu else 'GPU'}: seq 256, 65,536-token batches")
    results = {}
    for count in (1, 4):
        command = [sys.executable, __file__, "--worker", preset, "--steps", str(steps)] + (
            ["--cpu-check"] if cpu else []
        )
        procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(count)]
        rates = [json.loads(p.communicate()[0].strip().splitlines()[-1])["tokens_per_s"] for p in procs]
        results[count] = sum(rates)
        trial = bench_trial(preset, "ar", 256, 64 if not cpu else 16, 4 if not cpu else 1, 4096, steps, cpu)
        print(
            f"  {count} at once: {sum(rates):10.0f} tok/s in all ({', '.join(f'{r:.0f}' for r in rates)}), "
            f"MFU {mfu(trial, sum(rates))}"
        )
    print(f"  4 packed / 1 alone: {results[4] / results[1]:.2f}")


def worker(preset: str, steps: int, cpu: bool) -> None:
    """One packed trial (a subprocess of `packed`): prints its tokens/s as JSON."""
    trial = bench_trial(preset, "ar", 256, 64 if not cpu else 16, 4 if not cpu else 1, 4096, steps, cpu)
    rate, _ = trainer_rate(trial, steps, resolve_runtime(trial.train, trial.model, trial.resources))
    print(json.dumps({"tokens_per_s": rate}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per measurement")
    parser.add_argument("--cpu-check", action="store_true", help="run the GPU part on the CPU with nano (no goals)")
    parser.add_argument("--parts", default="1,2,3", help="which GPU parts to run, e.g. 1,3 (a short device lease)")
    parser.add_argument("--presets", default="1b,1.7b", help="part 1's model presets")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("CROSSOVER_CACHE", os.path.join(tempfile.gettempdir(), "crossover-bench-cache"))
    if args.worker:
        worker(args.worker, args.steps, args.cpu_check)
        return
    cpu_row()
    if not torch.cuda.is_available() and not args.cpu_check:
        print(
            "\nGPU part skipped: no CUDA device here (torch.cuda.is_available() is False); run it where one is "
            "(or --cpu-check to exercise the script on the CPU)"
        )
        return
    print(f"\n{'CPU check of the GPU part (nano, fp32)' if args.cpu_check else torch.cuda.get_device_name()}")
    parts = set(args.parts.split(","))
    if "1" in parts:
        trainer_vs_bare(args.steps, args.cpu_check, args.presets.split(","))
    if "2" in parts:
        compile_modes(args.steps, args.cpu_check)
    if "3" in parts:
        packed(args.steps, args.cpu_check)


if __name__ == "__main__":
    main()
