"""What the machine at hand can do, for the settings a spec leaves to it: `train.precision: auto` and
`model.compile: auto`. Plain Python (it reads /proc/cpuinfo, as torch's own cpuinfo does), no torch, so `validate`
and `plan` can say what a study resolves to here; tests check it agrees with what torch reports.

Why bf16 only where the CPU has AMX: measured on one core, nano model forward + backward (tokens/s, bf16 vs fp32):
an AVX2-only AMD EPYC 508 vs 5,323 (bf16 10x slower); an Intel Xeon with AVX512-BF16 but no AMX 5,450 vs 9,156
(bf16 1.7x slower; a plain 2048 x 2048 matmul 83 vs 162 GFLOP/s). AMX's tile units do bf16 matmuls natively.

A study resolves once, on the driver (`resolve_runtime`), and every trial of it trains with that resolution, so the
AR and MDLM trials of a cell always use the same precision.
"""

from __future__ import annotations

import functools
import os
import platform
from typing import Literal

from pydantic import BaseModel

from crossover.specs.model import ModelConfig
from crossover.specs.study import ResourcesSpec, TrainSpec

Precision = Literal["bf16", "fp32", "fp16"]

# How much slower bf16 trains than fp32 on CPUs without AMX (measured; see the module docstring).
BF16_SLOWDOWN = {"AVX2": 10.5, "AVX512": 1.7}


class CpuInfo(BaseModel):
    model: str
    isa: Literal["AMX", "AVX512", "AVX2", "other"]  # the widest matrix path torch's kernels will use here
    avx512_bf16: bool  # the CPU flag (bf16 vector instructions), as torch.cpu._is_avx512_bf16_supported() reports

    @property
    def native_bf16(self) -> bool:
        """bf16 trains at least as fast as fp32: the CPU has AMX tiles."""
        return self.isa == "AMX"


@functools.cache
def cpu_info() -> CpuInfo:
    """This CPU's model and vector/matrix extensions, as torch's dispatch will see them (ATEN_CPU_CAPABILITY and
    ONEDNN_MAX_CPU_ISA lower them, as they lower torch's kernels)."""
    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
            key, _, value = line.partition(":")
            if key.strip() == "flags" and not flags:
                flags = set(value.split())
            elif key.strip() == "model name":
                model = value.strip()
    except OSError:  # not Linux: no flags to read; fp32 is the safe choice
        pass
    isa: Literal["AMX", "AVX512", "AVX2", "other"] = "other"
    if "avx2" in flags:
        isa = "AVX2"
    if "avx512f" in flags:
        isa = "AVX512"
    if {"amx_tile", "amx_bf16"} <= flags:
        isa = "AMX"
    aten = os.environ.get("ATEN_CPU_CAPABILITY", "").lower()
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if aten in ("default", "avx2") or onednn.startswith("AVX2"):
        isa = "AVX2" if "avx2" in flags else "other"
    elif isa == "AMX" and onednn and onednn != "ALL" and "AMX" not in onednn:
        isa = "AVX512"
    return CpuInfo(model=model, isa=isa, avx512_bf16="avx512_bf16" in flags)


class Runtime(BaseModel):
    """How a study's trials train on the machines at hand: the resolution of the spec's `auto` settings."""

    device: Literal["cpu", "cuda"]
    precision: Precision
    compile: bool
    why: str  # one line: how the precision (and a compile that `auto` left off on a GPU) was chosen
    warning: str | None = None  # an explicit choice that will run much slower than it could here


def resolve_runtime(
    train: TrainSpec, model: ModelConfig, resources: ResourcesSpec, cpu: CpuInfo | None = None
) -> Runtime:
    """Precision and compile for trials with these resources on this kind of machine.

    GPU trials: bf16 (compiled). CPU trials: bf16 where the CPU has AMX, else fp32 (eager: inductor's compile time
    outweighs its gain for the small models a CPU trains). ZeRO-3 trains eager: it gathers each block's parameters
    in module hooks that a compiled block recompiles for, past torch's limit of 8 per block (measured: 29 recompiles
    in a 10-step trial), so most of the model would run eager anyway, between graph breaks. Explicit settings are
    kept; bf16 on a CPU without AMX, and compile with ZeRO-3, get a warning.
    """
    gpu = resources.gpus_per_worker > 0
    device: Literal["cpu", "cuda"] = "cuda" if gpu else "cpu"
    compile_ = (gpu and train.zero_stage < 3) if model.compile == "auto" else bool(model.compile)
    if compile_ and train.zero_stage == 3:
        slow_compile = "model.compile with ZeRO-3 recompiles every block past torch's limit; use compile: auto"
    else:
        slow_compile = None
    if gpu:
        precision: Precision = "bf16" if train.precision == "auto" else train.precision
        why = "GPU trials" if train.precision == "auto" else "set in the spec"
        if model.compile == "auto" and not compile_:
            why += "; eager under ZeRO-3"
        return Runtime(device=device, precision=precision, compile=compile_, why=why, warning=slow_compile)
    cpu = cpu or cpu_info()
    if train.precision == "auto":
        precision = "bf16" if cpu.native_bf16 else "fp32"
        reason = "has AMX" if cpu.native_bf16 else f"has no AMX ({cpu.isa}): bf16 would be slower"
        return Runtime(device=device, precision=precision, compile=compile_, why=f"CPU {cpu.model} {reason}",
                       warning=slow_compile)  # fmt: skip
    warning = slow_compile
    if train.precision == "bf16" and not cpu.native_bf16:
        slower = BF16_SLOWDOWN.get(cpu.isa, BF16_SLOWDOWN["AVX2"])
        warning = "; ".join(filter(None, [
            f"train.precision bf16 on a CPU without AMX ({cpu.model}, {cpu.isa}) trains about {slower:g}x slower "
            f"than fp32; use precision: auto (or fp32)", slow_compile]))  # fmt: skip
    return Runtime(device=device, precision=train.precision, compile=compile_, why="set in the spec", warning=warning)
