"""The memory estimate behind `plan` and the GPU-memory check: its activation formulas against what torch's memory
profiler measures for the real backbone, and its model states against DeepSpeed's bytes per parameter."""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from crossover.models import build_model
from crossover.models.objectives import ar_inputs_targets, ar_weights
from crossover.specs import ModelConfig, count_params
from crossover.specs.memory import GIB, activation_bytes_per_token_layer, estimate_memory

pytestmark = pytest.mark.usefixtures("one_thread")

B, T = 4, 64


def kept_for_backward(cfg: ModelConfig, mode: str, dtype: torch.dtype) -> float:
    """Bytes a training forward leaves allocated (what backward will use), by the CPU allocator's own records."""
    torch.manual_seed(0)
    model = build_model(cfg, causal=True).to(dtype).train()
    model.set_activation_checkpointing(mode)
    inputs, targets = ar_inputs_targets(torch.randint(0, cfg.vocab_size, (B, T + 1)))
    weights = ar_weights(targets)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss = model(inputs, targets=targets, loss_weights=weights).loss
    kept = sum(event.self_cpu_memory_usage for event in prof.events())
    loss.backward()
    return kept


@pytest.mark.parametrize("mode", ["none", "selective", "full"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("d", "ffn", "heads"), [(128, 512, 4), (256, 256, 8)])
def test_activation_formula_matches_the_profiler(mode, dtype, d, ffn, heads):
    one = ModelConfig(layers=1, d_model=d, heads=heads, kv_heads=heads, ffn=ffn, vocab_size=256, max_seq_len=128)
    three = one.model_copy(update={"layers": 3})
    # Two layers' worth: the difference cancels the embedding and the head.
    measured = (kept_for_backward(three, mode, dtype) - kept_for_backward(one, mode, dtype)) / 2 / (B * T)
    estimated = activation_bytes_per_token_layer(one, mode, 2 if dtype == torch.bfloat16 else 4)
    assert estimated == pytest.approx(measured, rel=0.1)


def test_model_states_follow_zero_stages_and_precision():
    cfg = ModelConfig(layers=16, d_model=2048, heads=16, kv_heads=16, ffn=5632, vocab_size=50304, max_seq_len=4096)
    params = count_params(cfg).total

    def states(precision: str, stage: int, workers: int) -> tuple[float, float]:
        e = estimate_memory(cfg, precision=precision, zero_stage=stage, workers=workers, micro_batch=1, seq_len=128)
        return (e.weights + e.gradients + e.optimizer) / params, e.step_gradients / params

    # bf16 weights and gradients, fp32 master and Adam's moments; the fp32 gradients only during the step
    assert states("bf16", 1, 1) == (16, 4)
    assert states("bf16", 0, 1) == (20, 0)  # ZeRO-0's bf16 optimizer keeps its fp32 gradients
    assert states("fp32", 0, 8) == (16, 0)
    assert states("bf16", 1, 8) == pytest.approx((2 + 2 + 12 / 8, 4 / 8))
    assert states("bf16", 2, 8) == pytest.approx((2 + (2 + 12) / 8, 4 / 8))
    assert states("bf16", 3, 8) == pytest.approx((16 / 8, 4 / 8))


def test_checkpointing_is_what_lets_large_presets_fit_one_80_gib_gpu():
    """1.7b, 2b and 4b at seq 2048 on one GPU: selective or full checkpointing makes room for a useful micro batch."""
    from crossover.specs import PRESETS, padded_vocab

    for preset, micro in (("1.7b", 8), ("2b", 8), ("4b", 4)):
        cfg = ModelConfig(preset=preset, vocab_size=padded_vocab(50278), **PRESETS[preset])

        def need(mode: str, micro: int = micro, cfg: ModelConfig = cfg) -> float:
            return (
                estimate_memory(
                    cfg, precision="bf16", zero_stage=1, workers=1, micro_batch=micro, seq_len=2048, checkpointing=mode
                ).total
                / GIB
            )

        assert need("none") > 80, preset
        assert need("full") < 80, preset
        assert need("full") < need("selective") < need("none")
