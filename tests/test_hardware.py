"""`precision: auto` and `compile: auto`: how they resolve for each kind of machine, that the CPU detection agrees
with what torch reports, and what `validate` and `plan` say about it."""

import json
import os
import subprocess
import sys

import torch

from crossover.specs import ModelConfig, parse_study
from crossover.specs.hardware import CpuInfo, cpu_info, resolve_runtime
from crossover.specs.study import ResourcesSpec, TrainSpec

MODEL = ModelConfig(layers=1, d_model=64, heads=1, kv_heads=1, ffn=64, vocab_size=64, max_seq_len=64)
AMX = CpuInfo(model="Xeon AMX", isa="AMX", avx512_bf16=True)
AVX512_BF16 = CpuInfo(model="Xeon", isa="AVX512", avx512_bf16=True)
AVX2 = CpuInfo(model="EPYC", isa="AVX2", avx512_bf16=False)
CPU, GPU = ResourcesSpec(), ResourcesSpec(gpus_per_worker=1)


def test_auto_is_bf16_on_gpus_and_amx_cpus_and_fp32_elsewhere():
    auto = TrainSpec()
    assert auto.precision == "auto" and MODEL.compile == "auto"
    assert resolve_runtime(auto, MODEL, GPU, AVX2).model_dump(include={"precision", "compile", "device"}) == {
        "device": "cuda", "precision": "bf16", "compile": True}  # fmt: skip
    assert resolve_runtime(auto, MODEL, ResourcesSpec(gpus_per_worker=0.25), AVX2).precision == "bf16"
    assert (resolve_runtime(auto, MODEL, CPU, AMX).precision, resolve_runtime(auto, MODEL, CPU, AMX).compile) == (
        "bf16", False)  # fmt: skip
    for cpu in (AVX512_BF16, AVX2):
        runtime = resolve_runtime(auto, MODEL, CPU, cpu)
        assert runtime.precision == "fp32" and not runtime.compile and runtime.warning is None
        assert f"no AMX ({cpu.isa})" in runtime.why


def test_explicit_settings_are_kept_and_slow_bf16_is_named():
    bf16 = TrainSpec(precision="bf16")
    slow = resolve_runtime(bf16, MODEL, CPU, AVX2)
    assert slow.precision == "bf16" and "about 10.5x slower than fp32" in slow.warning and "EPYC" in slow.warning
    assert "about 1.7x slower" in resolve_runtime(bf16, MODEL, CPU, AVX512_BF16).warning
    assert resolve_runtime(bf16, MODEL, CPU, AMX).warning is None
    assert resolve_runtime(TrainSpec(precision="fp32"), MODEL, GPU, AVX2).precision == "fp32"
    assert resolve_runtime(TrainSpec(), MODEL.model_copy(update={"compile": True}), CPU, AVX2).compile is True
    assert resolve_runtime(TrainSpec(), MODEL.model_copy(update={"compile": False}), GPU, AVX2).compile is False


def test_zero_3_trains_eager_unless_compile_is_pinned():
    """ZeRO-3's parameter hooks make compiled blocks recompile past torch's limit: `auto` leaves them eager, and a
    pinned `compile: true` is kept with a warning saying so."""
    zero3 = TrainSpec(zero_stage=3)
    eager = resolve_runtime(zero3, MODEL, GPU, AVX2)
    assert eager.compile is False and eager.why == "GPU trials; eager under ZeRO-3"
    assert resolve_runtime(TrainSpec(zero_stage=2), MODEL, GPU, AVX2).compile is True
    pinned = resolve_runtime(zero3, MODEL.model_copy(update={"compile": True}), GPU, AVX2)
    assert pinned.compile is True and "ZeRO-3 recompiles every block" in pinned.warning
    both = resolve_runtime(TrainSpec(zero_stage=3, precision="bf16"), MODEL.model_copy(update={"compile": True}), CPU,
                           AVX2)  # fmt: skip
    assert "10.5x slower" in both.warning and "ZeRO-3" in both.warning


def test_cpu_detection_agrees_with_torch():
    info = cpu_info()
    assert (info.isa == "AMX") == torch.cpu._is_amx_tile_supported()
    assert info.avx512_bf16 == torch.cpu._is_avx512_bf16_supported()
    assert (info.isa in ("AMX", "AVX512")) == torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def test_lowering_torch_to_avx2_lowers_the_detection_too(monkeypatch):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    info = cpu_info.__wrapped__()
    assert info.isa in ("AVX2", "other") and not info.native_bf16


def test_a_matched_pair_resolves_alike():
    spec = parse_study({"name": "pair", "train": {"total_tokens": "1M"},
                        "grid": {"objective": ["ar", "mdlm"], "unique_tokens": ["100k"]}})  # fmt: skip
    ar, mdlm = spec.expand()
    assert resolve_runtime(ar.train, ar.model, ar.resources) == resolve_runtime(mdlm.train, mdlm.model, mdlm.resources)


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crossover.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)  # fmt: skip


def test_validate_and_plan_say_how_a_study_trains_here(tmp_path):
    from .conftest import SPECS

    smoke = str(SPECS / "smoke.yaml")
    expected = resolve_runtime(TrainSpec(), MODEL, CPU).precision
    validated = run_cli("validate", smoke)
    assert validated.returncode == 0 and f"trains here in {expected} (CPU " in validated.stdout
    plan = json.loads(run_cli("plan", smoke, "--json").stdout)
    assert plan["runtime"]["precision"] == expected and plan["runtime"]["device"] == "cpu"
    assert all(row["memory_gib"] > 0 for row in plan["trials"])
    pinned = tmp_path / "bf16.yaml"
    pinned.write_text(open(smoke).read().replace("precision: auto", "precision: bf16"))
    as_if_avx2 = run_cli("plan", str(pinned), ATEN_CPU_CAPABILITY="avx2")
    assert as_if_avx2.returncode == 0
    assert "warning: train.precision bf16 on a CPU without AMX" in as_if_avx2.stderr
    assert "about 10.5x slower than fp32; use precision: auto" in as_if_avx2.stderr
    gpu_plan = run_cli("plan", str(SPECS / "paper_data_budget.yaml"))
    assert "trains here in bf16 (GPU trials), compiled on CUDA" in gpu_plan.stdout and "GiB/GPU" in gpu_plan.stdout
