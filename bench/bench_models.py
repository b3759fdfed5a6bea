"""Model throughput, measured side by side in one run (ratios are the result; absolute numbers depend on the machine).

CPU: training-step tokens/s (forward + backward + AdamW) for nano and micro, AR vs MDLM (same backbone, only the
attention mask and the loss differ, so the ratio should be near 1), and SDPA vs a plain matmul-softmax reference
attention. GPU (when CUDA is present): the 1b preset in bf16 at sequence 2048 with flash-attn (SDPA when flash-attn
is missing), tokens/s and MFU from the analytic FLOPs of crossover.specs.

Run: .venv/bin/python bench/bench_models.py [--rounds N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from crossover.models import build_model, flash_available
from crossover.models.objectives import ar_inputs_targets, ar_loss, mask_tokens, mdlm_loss, sample_t
from crossover.specs import PRESETS, ModelConfig, training_flops_per_token

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}  # dense


def make_step(cfg: ModelConfig, objective: str, batch: int, seq: int, device: str, dtype: torch.dtype, backend: str):
    torch.manual_seed(0)
    model = build_model(cfg, causal=objective == "ar", device=device).to(dtype).train()
    model.set_attention_backend(backend)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator(device=device).manual_seed(0)
    mask_id = cfg.vocab_size - 1
    tokens = torch.randint(0, mask_id, (batch, seq + 1), device=device, generator=g)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        if objective == "ar":
            inputs, targets = ar_inputs_targets(tokens)
            out = model(inputs)
            loss = ar_loss(out.logits, targets)
        else:
            clean = tokens[:, :seq]
            t = sample_t(batch, 1e-3, g)
            noisy, masked = mask_tokens(clean, t, mask_id, g)
            out = model(noisy)
            loss = mdlm_loss(out.logits, clean, masked, t)
        (loss + out.aux_loss).backward()
        optimizer.step()

    return step


def interleaved(steps_by_name: dict, tokens_per_step: int, rounds: int, sync=lambda: None) -> dict:
    """Median tokens/s of each variant, timing one step of each in turn `rounds` times (after one warm-up step
    each), so that load from elsewhere on the machine hits all variants alike."""
    for step in steps_by_name.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in steps_by_name}
    for _ in range(rounds):
        for name, step in steps_by_name.items():
            sync()
            start = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: tokens_per_step / statistics.median(v) for name, v in times.items()}


def cpu_part(rounds: int) -> None:
    batch, seq, vocab = 4, 256, 4096
    print(f"CPU: {torch.get_num_threads()} threads, batch {batch} x seq {seq}, vocab {vocab}, fp32, train step")
    print(
        f"{'preset':8s} {'AR tok/s':>10s} {'MDLM tok/s':>11s} {'MDLM/AR':>8s}   {'SDPA tok/s':>10s} {'ref tok/s':>10s} {'SDPA/ref':>8s}"
    )
    for preset in ("nano", "micro"):
        cfg = ModelConfig(preset=preset, vocab_size=vocab, **PRESETS[preset])
        variants = {
            "ar": make_step(cfg, "ar", batch, seq, "cpu", torch.float32, "sdpa"),
            "mdlm": make_step(cfg, "mdlm", batch, seq, "cpu", torch.float32, "sdpa"),
            "mdlm-ref": make_step(cfg, "mdlm", batch, seq, "cpu", torch.float32, "reference"),
        }
        r = interleaved(variants, batch * seq, rounds)
        print(
            f"{preset:8s} {r['ar']:10.0f} {r['mdlm']:11.0f} {r['mdlm'] / r['ar']:8.2f}   "
            f"{r['mdlm']:10.0f} {r['mdlm-ref']:10.0f} {r['mdlm'] / r['mdlm-ref']:8.2f}"
        )
    # The attention op alone at a longer sequence, where it dominates.
    from crossover.models.attention import reference_attention, sdpa_attention

    B, T, H, D = 4, 1024, 4, 64
    q, k, v = (torch.randn(B, T, H, D, requires_grad=True) for _ in range(3))
    for causal in (True, False):
        ops = {
            name: (lambda fn=fn, causal=causal: fn(q, k, v, causal, None, 0.0).sum().backward())
            for name, fn in (("sdpa", sdpa_attention), ("ref", reference_attention))
        }
        r = interleaved(ops, B * T, rounds)
        kind = "causal" if causal else "bidirectional"
        print(
            f"attention op alone, {kind:13s} B{B} T{T} H{H} D{D} fwd+bwd: SDPA/reference = {r['sdpa'] / r['ref']:.2f}"
        )


def gpu_part(rounds: int) -> None:
    if not torch.cuda.is_available():
        print(
            "GPU part skipped: no CUDA device here (torch.cuda.is_available() is False); 1b bf16 seq 2048 MFU needs one"
        )
        return
    name = torch.cuda.get_device_name()
    peak = next((v for key, v in PEAK_BF16_FLOPS.items() if key in name), None)
    backend = "flash" if flash_available() else "sdpa"
    if backend == "sdpa":
        print("flash-attn is not installed: the GPU part runs on SDPA (pip install 'crossover[gpu]' for flash)")
    batch, seq = 4, 2048
    cfg = ModelConfig(preset="1b", vocab_size=50304, **PRESETS["1b"])
    flops = training_flops_per_token(cfg, seq)
    print(f"GPU: {name}, 1b, bf16, batch {batch} x seq {seq}, attention {backend}")
    for objective in ("ar", "mdlm"):
        step = make_step(cfg, objective, batch, seq, "cuda", torch.bfloat16, backend)
        r = interleaved({objective: step}, batch * seq, rounds, torch.cuda.synchronize)[objective]
        mfu = f"MFU {flops * r / peak:.1%}" if peak else "MFU n/a (unknown peak for this GPU)"
        print(f"  {objective:5s} {r:10.0f} tok/s  {flops * r / 1e12:7.1f} TFLOP/s  {mfu}")
        del step
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per variant (the median is reported)")
    args = parser.parse_args()
    cpu_part(args.rounds)
    gpu_part(max(args.rounds, 10))


if __name__ == "__main__":
    main()
