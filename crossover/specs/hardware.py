"""What the machine at hand can do, for the settings a spec leaves to it: `train.precision: auto` and
`model.compile: auto`. Plain Python (it reads /proc/cpuinfo, as torch's own cpuinfo does), no torch, so `validate`
and `plan` can say what a study resolves to here; tests check it agrees with what torch reports.

`precision: auto` on a CPU: bf16 where the CPU has AMX, fp32 where it has no AVX512, and on an AVX512 CPU without
AMX the faster of the two as measured. Measured on one core, nano model forward + backward (tokens/s, bf16 vs fp32):
an AVX2-only AMD EPYC 508 vs 5,323 (bf16 10x slower, so it is never measured there); an Intel Xeon with AVX512-BF16
but no AMX 5,450 vs 9,156 (bf16 1.7x slower; a plain 2048 x 2048 matmul 83 vs 162 GFLOP/s), while an AMD EPYC
Zen 4, also AVX512-BF16 without AMX, trains bf16 1.28x faster (9,060 vs 7,079): the flags cannot tell these two
apart, a measurement can. AMX's tile units do bf16 matmuls natively. The measurement is `resolve_runtime`'s
`measure` callable, which the trainers' layer supplies (`crossover.trainers.throughput.runtime_here`: a training step
of the study's model in each precision, cached per machine beside the plan's throughput); without one the rule
falls back to fp32 and says so.

A study resolves once, on the driver, and every trial of it trains with that resolution (recorded on the study's
parent run and reused when it continues), so the AR and MDLM trials of a cell always use the same precision.
"""

from __future__ import annotations

import functools
import os
import platform
from collections.abc import Callable, Mapping
from typing import Literal

from pydantic import BaseModel

from crossover.specs.model import ModelConfig
from crossover.specs.study import ResourcesSpec, TrainSpec

Precision = Literal["bf16", "fp32", "fp16"]

# How much slower bf16 trains than fp32 on CPUs without AMX (measured; see the module docstring).
BF16_SLOWDOWN = {"AVX2": 10.5, "AVX512": 1.7}


Isa = Literal["AMX", "AVX512", "AVX2", "other"]
ISA_ORDER: tuple[Isa, ...] = ("other", "AVX2", "AVX512", "AMX")

# Torch's CPU kernels come from two libraries, each capped by its own variable: ATen's vectorised kernels by
# ATEN_CPU_CAPABILITY, oneDNN's (matmuls, and the brgemm packing inside ATen's bf16 attention) by ONEDNN_MAX_CPU_ISA.
# Capping one alone mixes levels: on an AMX CPU, ATen's AVX2 attention kernel asks oneDNN whether to pack for AMX, is
# told yes, and fails ("pack_vnni2 is only supported when avx512 is supported"). So a CPU is emulated with both.
CAP_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")
CAP_ENV: dict[Isa, dict[str, str]] = {  # an AMX CPU is emulated by nothing capped: only an AMX CPU is one
    "AVX2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "AVX512": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},  # AVX512, no AMX
}


class CannotEmulate(ValueError):
    """The CPU at hand lacks what the emulated one has: a cap can only lower what torch uses."""


class CpuInfo(BaseModel):
    model: str
    isa: Isa  # the widest matrix path torch's kernels will use here (after ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA)
    avx512_bf16: bool  # the CPU flag (bf16 vector instructions), as torch.cpu._is_avx512_bf16_supported() reports
    hardware_isa: Isa | None = None  # what the CPU itself has, before any cap (None: the same as isa)
    mixed_caps: str | None = None  # a cap on one of torch's kernel libraries but not the other, where that breaks

    @property
    def native_bf16(self) -> bool:
        """bf16 trains at least as fast as fp32: the CPU has AMX tiles."""
        return self.isa == "AMX"


def _aten_cap(value: str) -> Isa:
    """The ISA ATEN_CPU_CAPABILITY lets ATen's kernels use (torch ignores values it does not know)."""
    return {"default": "other", "avx2": "AVX2"}.get(value.lower(), "AMX")


def _onednn_cap(value: str) -> Isa:
    """The ISA ONEDNN_MAX_CPU_ISA lets oneDNN use: AVX2, AVX2_VNNI..., AVX512_CORE..., ..._AMX..., ALL, DEFAULT."""
    value = value.upper()
    if not value or value in ("ALL", "DEFAULT") or "AMX" in value:
        return "AMX"
    if value.startswith(("AVX512", "AVX10")):
        return "AVX512"
    return "AVX2" if value.startswith("AVX2") else "other"


def _lowest(*isas: Isa) -> Isa:
    return min(isas, key=ISA_ORDER.index)


@functools.cache
def cpu_info() -> CpuInfo:
    """This CPU's model and vector/matrix extensions, as torch's dispatch will see them: the hardware's, lowered by
    ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA as they lower torch's kernels."""
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
    hardware: Isa = "other"
    if "avx2" in flags:
        hardware = "AVX2"
    if "avx512f" in flags:
        hardware = "AVX512"
    if {"amx_tile", "amx_bf16"} <= flags:
        hardware = "AMX"
    aten, onednn = (os.environ.get(var, "") for var in CAP_VARS)
    mixed = None
    if hardware == "AMX" and _aten_cap(aten) in ("other", "AVX2") and _onednn_cap(onednn) == "AMX":
        mixed = (
            f"ATEN_CPU_CAPABILITY={aten} without ONEDNN_MAX_CPU_ISA=AVX2: torch's bf16 attention fails on this "
            f"AMX CPU (pack_vnni2); set both, or neither"
        )
    return CpuInfo(
        model=model,
        isa=_lowest(hardware, _aten_cap(aten), _onednn_cap(onednn)),
        avx512_bf16="avx512_bf16" in flags,
        hardware_isa=hardware,
        mixed_caps=mixed,
    )


def capped_env(isa: Isa, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment (a copy of `base`, default os.environ) under which torch on this CPU behaves as on a CPU whose
    widest path is `isa`: both kernel libraries capped together, or both uncapped for the CPU's own ISA. It takes
    effect in a new process (torch reads the caps once). Raises CannotEmulate when this CPU lacks `isa`."""
    have = cpu_info.__wrapped__().hardware_isa
    if ISA_ORDER.index(isa) > ISA_ORDER.index(have):
        raise CannotEmulate(
            f"this CPU cannot act as one with {isa}: its widest path is {have}, and a cap only lowers it"
        )
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in CAP_VARS}
    return {**env, **(CAP_ENV[isa] if isa != have else {})}


class Runtime(BaseModel):
    """How a study's trials train on the machines at hand: the resolution of the spec's `auto` settings."""

    device: Literal["cpu", "cuda"]
    precision: Precision
    compile: bool
    why: str  # one line: how the precision (and a compile that `auto` left off on a GPU) was chosen
    warning: str | None = None  # an explicit choice that will run much slower than it could here


class NotMeasured(Exception):
    """A `measure` callable could not measure fp32 against bf16 here; its message says why (one line)."""


# Tokens/s of one training step of the study's model here, (fp32, bf16); raises NotMeasured where it cannot.
MeasureRates = Callable[[], tuple[float, float]]


def measures_precision(cpu: CpuInfo) -> bool:
    """Whether `precision: auto` on this CPU is decided by measuring: AVX512 without AMX, where bf16 is faster on
    some CPUs (AMD Zen 4) and slower on others (Intel Xeons before AMX). AMX: bf16; AVX2 or less: fp32 (bf16 ~10x
    slower), unmeasured."""
    return cpu.isa == "AVX512"


def _measured_precision(cpu: CpuInfo, capped: str, measure: MeasureRates | None) -> tuple[Precision, str]:
    """fp32 or bf16 on an AVX512 CPU without AMX, whichever trains faster by `measure`, and the line saying so."""
    head = f"CPU {cpu.model} ({cpu.isa}, no AMX{capped})"
    try:
        if measure is None:
            raise NotMeasured("nothing measured them here")
        fp32, bf16 = measure()
    except NotMeasured as exc:
        return "fp32", f"{head}: fp32, bf16 not measured against it ({exc}); bf16 is faster on some such CPUs"
    precision: Precision = "bf16" if bf16 > fp32 else "fp32"
    return (
        precision,
        f"{head}: bf16 measured {bf16 / fp32:.2f}x fp32 ({bf16:,.0f} vs {fp32:,.0f} tok/s), so {precision}",
    )


def resolve_runtime(
    train: TrainSpec,
    model: ModelConfig,
    resources: ResourcesSpec,
    cpu: CpuInfo | None = None,
    measure: MeasureRates | None = None,
) -> Runtime:
    """Precision and compile for trials with these resources on this kind of machine.

    GPU trials: bf16 (compiled). CPU trials: bf16 where the CPU has AMX, fp32 where it has no AVX512, and on an
    AVX512 CPU without AMX whichever of the two `measure` finds faster (fp32 where nothing measures; see the module
    docstring); eager: inductor's compile time outweighs its gain for the small models a CPU trains. ZeRO-3 trains
    eager: it gathers each block's parameters in module hooks that a compiled block recompiles for, past torch's
    limit of 8 per block (measured: 29 recompiles in a 10-step trial), so most of the model would run eager anyway,
    between graph breaks. Explicit settings are kept; bf16 on a CPU without AMX, and compile with ZeRO-3, get a
    warning. `measure` is called only where the decision needs it.
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
        capped = f", capped from {cpu.hardware_isa}" if cpu.hardware_isa not in (None, cpu.isa) else ""
        if measures_precision(cpu):
            precision, why = _measured_precision(cpu, capped, measure)
        elif cpu.native_bf16:
            precision, why = "bf16", f"CPU {cpu.model} has AMX"
        else:
            slower = f"bf16 trains about {BF16_SLOWDOWN['AVX2']:g}x slower than fp32 without AVX512"
            precision, why = "fp32", f"CPU {cpu.model} uses no AMX ({cpu.isa}{capped}): {slower}"
        return Runtime(device=device, precision=precision, compile=compile_, why=why, warning=slow_compile)
    warning = slow_compile
    if train.precision == "bf16" and not cpu.native_bf16:
        slower = BF16_SLOWDOWN.get(cpu.isa, BF16_SLOWDOWN["AVX2"])
        warning = "; ".join(
            filter(
                None,
                [
                    f"train.precision bf16 on a CPU without AMX ({cpu.model}, {cpu.isa}) trains about {slower:g}x slower "
                    f"than fp32; use precision: auto (or fp32)",
                    slow_compile,
                ],
            )
        )
    if train.precision == "bf16" and cpu.mixed_caps:
        warning = "; ".join(filter(None, [warning, cpu.mixed_caps]))
    return Runtime(device=device, precision=train.precision, compile=compile_, why="set in the spec", warning=warning)
