"""How long a study will take on this machine: a few seconds of measured training throughput per model size (cached),
the trials' tokens and evaluations, and how many trials run at once.

`crossover plan` prints it for studies this machine can run (CPU trials here, or GPU trials where a GPU is present),
and `crossover run` at its start. The measurement is a training step of the trial's model (forward, backward through
the fused loss head, AdamW) at its micro batch and sequence length, in the precision the study resolves to, on as many
threads as a worker gets; it is cached under the crossover cache root by machine, torch version and shape, so a
second plan takes no measurement, with the machine's load when it was taken: a rate measured while other work shared
the cores (load above BUSY_LOAD per core) is said so on the line and measured again by the first plan on a quiet
machine. Evaluation is counted over the token positions each eval point scores, at
`EVAL_COST` of a training token each; each trial adds its start-up and the study Ray's. Trials start longest first
and each goes to the slot that frees first, as Ray Tune places them. It is an estimate: contention between trials
sharing a machine's memory bandwidth (measured: up to ~15% slower training beside a larger model) and GPU packing
(four trials on one GPU each ran at ~0.6x their rate alone on an H200) are not in it. A model whose measurement
(the whole model in one process: no sharding) would not fit the free memory is not measured: its rate is estimated
from its FLOPs per token (a GPU at ASSUMED_MFU of its peak, a CPU at the reference preset's measured rate), and the
line says so.

`precision: auto` on an AVX512 CPU without AMX is decided here (`runtime_here`): a training step of the study's
longest trial measured as above in fp32 and in bf16, the faster chosen. The decision is cached in the same file
under a key that needs no torch (the CPU as `cpu_info` reads it, the kernel caps, torch's installed version and the
shape), so it is made once per machine and `validate`, which imports no torch, reads it too.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from crossover.specs import (
    PRESETS,
    ModelConfig,
    StudySpec,
    TrialSpec,
    fill_slots,
    format_seconds,
    longest_first,
    training_flops_per_token,
)
from crossover.specs.expand import resolve_model
from crossover.specs.hardware import CAP_VARS, CpuInfo, NotMeasured, Runtime, cpu_info, resolve_runtime
from crossover.specs.memory import estimate_memory
from crossover.specs.plan import PACKED_MEASURED, packed_share
from crossover.specs.study import ModelSpec, SparsitySpec
from crossover.trainers.schedules import eval_steps

# torch, psutil, crossover.data, the models and the eval tasks are imported inside the functions that measure or
# cost: `crossover validate` reads this module's cache without torch, and `plan` prints its table before it measures.

MEASURE_SECONDS = 2.0  # per model shape, after one warm-up step
# Evaluation's cost per scored token position, as a share of a training token's: a forward pass is a third of a
# training step, but evaluation's short rows run less efficiently; the laptop studies of 2026-12-04 (nano and micro,
# AR and MDLM) spent 1.07-1.41x what a third predicted, 1.25x on average.
EVAL_COST = 0.42
# A machine whose 1-minute load average per core is above this is busy: a rate measured then is low (a 2-core EPYC
# loaded by test suites measured micro at a third of its idle rate, and the plan ran 2.2x long).
BUSY_LOAD = 0.75
TRIAL_START_S = 20.0  # a trial's process start, imports and data loading before its first step (measured 7-30 s)
STUDY_START_S = 15.0  # the driver's MLflow parent run and Ray's start before the first trial
CACHE_FILE = "throughput.json"


ASSUMED_MFU = 0.4  # a GPU model too large to measure here trains at this share of the GPU's peak (the plan's GPU-hours)
REFERENCE_PRESET = "nano"  # a CPU model too large to measure here: this preset's rate, scaled by FLOPs per token


@dataclass
class WallTime:
    seconds: float  # the whole study, trials packed onto the slots
    slots: int  # trials at once
    rates: dict[str, float]  # tokens/s per model label, measured or cached
    per_trial: dict[str, float]  # seconds, by trial name
    estimated: dict[str, str] = field(default_factory=dict)  # label -> why its rate is estimated, not measured
    after: dict[str, float] = field(default_factory=dict)  # seconds of the trials of a second phase (the anneal)
    per_gpu: int = 1  # trials packed on one GPU at once (1: none)
    share: float = 1.0  # each packed trial's rate against its rate alone (specs.plan.packed_share)
    load: float = 0.0  # the highest load per core any of its measured rates was taken at (BUSY_LOAD: busy)


def available_memory(runtime: Runtime) -> int:
    """Bytes a measurement may use: the GPU's free memory, else this machine's available memory."""
    if runtime.device == "cuda":
        import torch  # lazy: torch (see the note above the imports)

        return torch.cuda.mem_get_info()[0]
    import psutil  # lazy: measuring only (see the note above the imports)

    return psutil.virtual_memory().available


def measurement_memory(trial: TrialSpec, runtime: Runtime) -> int:
    """Peak bytes of the measurement: the whole model in one process (no sharding), with the trial's own activation
    checkpointing and micro batch."""
    return estimate_memory(
        trial.model,
        precision=runtime.precision,
        zero_stage=0,
        workers=1,
        micro_batch=trial.train.micro_batch,
        seq_len=trial.data.seq_len,
        checkpointing=trial.train.activation_checkpointing,
        gpu=runtime.device == "cuda",
    ).total


def estimated_rate(trial: TrialSpec, runtime: Runtime, memory: int | None = None) -> float:
    """Training tokens/s of a model too large to measure here, from FLOPs per token: a GPU at ASSUMED_MFU of its
    peak, a CPU at the rate measured for REFERENCE_PRESET scaled by the two models' FLOPs per token."""
    flops = training_flops_per_token(trial.model, trial.data.seq_len)
    if runtime.device == "cuda":
        import torch  # lazy: torch (see the note above the imports)

        from crossover.trainers.loop import PEAK_BF16_FLOPS  # lazy: torch

        name = torch.cuda.get_device_name()
        peak = next((p for key, p in PEAK_BF16_FLOPS.items() if key in name), min(PEAK_BF16_FLOPS.values()))
        return ASSUMED_MFU * peak / flops
    model = resolve_model(ModelSpec(preset=REFERENCE_PRESET), SparsitySpec(), 0.0, trial.model.vocab_size)
    reference = trial.model_copy(update={"model": model})
    rate = measure_rate(reference, runtime, memory)
    return rate * training_flops_per_token(reference.model, trial.data.seq_len) / flops


def _device_name(runtime: Runtime) -> str:
    import torch  # lazy: torch (see the note above the imports)

    if runtime.device == "cuda":
        return torch.cuda.get_device_name()
    info = cpu_info()  # the ISA after the caps; torch's own ATen capability beside it (both key the cache)
    return f"{info.model} ({info.isa}, torch {torch.backends.cpu.get_cpu_capability()})"


def measure_rate(trial: TrialSpec, runtime: Runtime, memory: int | None = None) -> float:
    """Training tokens/s of one worker of `trial` here (measured for MEASURE_SECONDS, or read from the cache).
    `memory`: the bytes the measurement may use (default: what is free here); a model that needs more is refused
    with MemoryError before anything is allocated. A rate cached while the machine was busy is measured again once
    it is quiet (the busy one is low: every later plan would run long)."""
    key = _rate_key(trial, runtime)
    rate, load = cached_rate(key)
    if rate is not None and (load <= BUSY_LOAD or machine_load() > BUSY_LOAD):
        return rate
    need, free = measurement_memory(trial, runtime), memory if memory is not None else available_memory(runtime)
    if need > free:
        raise MemoryError(f"measuring it needs ~{need / 2**30:.1f} GiB unsharded, {free / 2**30:.1f} GiB free here")
    load = machine_load()  # the minute before the measurement: other work sharing the cores
    rate = _measure(trial, runtime, max(1, int(trial.resources.cpus_per_worker)))
    _cache_put(key, {"rate": rate, "load": load})
    return rate


def _rate_key(trial: TrialSpec, runtime: Runtime) -> str:
    import torch  # lazy: torch (see the note above the imports)

    return json.dumps(
        [
            _device_name(runtime),
            torch.__version__,
            runtime.precision,
            max(1, int(trial.resources.cpus_per_worker)),
            trial.data.seq_len,
            trial.train.micro_batch,
            trial.model.model_dump(exclude={"preset", "compile", "attention"}),
        ],
        sort_keys=True,
    )


def cached_rate(key: str) -> tuple[float | None, float]:
    """A cached rate and the machine's load per core when it was measured (0: unknown, a rate cached before loads
    were kept); (None, 0) where none is cached."""
    entry = _read_cache().get(key)
    if isinstance(entry, (int, float)):
        return float(entry), 0.0
    if isinstance(entry, dict) and isinstance(entry.get("rate"), (int, float)):
        return float(entry["rate"]), float(entry.get("load", 0.0))
    return None, 0.0


def machine_load() -> float:
    """This machine's 1-minute load average per core (0 where the OS keeps none)."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:
        return 0.0


def _read_cache() -> dict:
    """The throughput cache (measured rates, precision decisions); empty where there is none or it is unreadable."""
    from crossover.data.cache import cache_root  # lazy: crossover.data imports torch

    path = cache_root() / CACHE_FILE
    try:
        cache = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):  # a torn or foreign file: measure again and write it whole
        return {}
    return cache if isinstance(cache, dict) else {}


def _cache_put(key: str, value: object) -> None:
    """One entry into the throughput cache, the file rewritten whole (re-read first: other entries are kept)."""
    from crossover.data.cache import cache_root  # lazy: crossover.data imports torch

    path = cache_root() / CACHE_FILE
    cache = {**_read_cache(), key: value}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cache, indent=1))
    tmp.replace(path)  # whole or not at all


def precision_key(trial: TrialSpec, cpu: CpuInfo) -> str | None:
    """The cache key of `precision: auto`'s decision for `trial` on `cpu`, read without importing torch (torch's
    version from its installed metadata); None where torch is not installed."""
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None
    return json.dumps(
        [
            "precision: auto",
            cpu.model_dump(),
            {var: os.environ.get(var, "") for var in CAP_VARS},
            torch_version,
            max(1, int(trial.resources.cpus_per_worker)),
            trial.data.seq_len,
            trial.train.micro_batch,
            trial.model.model_dump(exclude={"preset", "compile", "attention"}),
        ],
        sort_keys=True,
    )


RATES = ("fp32", "bf16")  # what `precision: auto` measures against each other, in a decision's cache entry


def precision_rates(
    trial: TrialSpec, cpu: CpuInfo | None = None, measure: bool = True, memory: int | None = None
) -> tuple[float, float]:
    """Tokens/s of a training step of `trial` here in fp32 and in bf16 (`measure_rate`, on this CPU), for
    `precision: auto`'s choice on `cpu` (default: this CPU as read): the decision cached under `precision_key`, else
    measured and cached. `measure=False` (validate, torch-free) only reads the cache. Raises NotMeasured, saying why,
    where it cannot (`memory`: as in `measure_rate`, a model too large for it is not built)."""
    cpu = cpu or cpu_info()
    key = precision_key(trial, cpu)
    if key is None:
        raise NotMeasured(f"torch is not installed in {sys.prefix}")
    cached = _read_cache().get(key)
    if isinstance(cached, dict) and all(isinstance(cached.get(p), (int, float)) and cached[p] > 0 for p in RATES):
        return cached["fp32"], cached["bf16"]
    if not measure:
        raise NotMeasured("`crossover plan` measures them, once per machine")
    rates = {}
    for precision in RATES:
        runtime = Runtime(device="cpu", precision=precision, compile=False, why="measuring precision: auto")
        try:
            rates[precision] = measure_rate(trial, runtime, memory)
        except Exception as exc:  # a failed measurement decides nothing; the line says why
            raise NotMeasured(why_not_measured(exc, runtime)) from exc
    _cache_put(key, rates)
    return rates["fp32"], rates["bf16"]


def runtime_here(
    trial: TrialSpec, *, measure: bool = True, cpu: CpuInfo | None = None, memory: int | None = None
) -> Runtime:
    """How `trial` trains on this machine: `resolve_runtime`, with `precision: auto` on an AVX512 CPU without AMX
    decided by `precision_rates` (measured once per machine and cached; `measure=False` reads only the cache). `cpu`:
    the CPU the rule reads (default this one); the measurement always runs here, within `memory` (`measure_rate`)."""
    return resolve_runtime(
        trial.train, trial.model, trial.resources, cpu, lambda: precision_rates(trial, cpu, measure, memory)
    )


def study_runtime_here(
    spec: StudySpec, *, measure: bool = True, cpu: CpuInfo | None = None, memory: int | None = None
) -> Runtime:
    """How the study's trials train on this machine (`runtime_here`), decided on its longest trial (the one the
    plan measures first, whose time dominates): one resolution for every trial, so a matched pair trains alike."""
    return runtime_here(longest_first(spec.expand())[0], measure=measure, cpu=cpu, memory=memory)


def _measure(trial: TrialSpec, runtime: Runtime, threads: int) -> float:
    import torch  # lazy: torch (see the note above the imports)

    from crossover.models import build_model  # lazy: torch
    from crossover.models.objectives import ar_inputs_targets, ar_weights

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        device = "cuda" if runtime.device == "cuda" else "cpu"
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(runtime.precision, torch.float32)
        torch.manual_seed(0)
        model = build_model(trial.model, causal=True).to(device=device, dtype=dtype).train()
        model.set_activation_checkpointing(trial.train.activation_checkpointing)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        tokens = torch.randint(
            0, trial.model.vocab_size, (trial.train.micro_batch, trial.data.seq_len + 1), device=device
        )
        inputs, targets = ar_inputs_targets(tokens)
        weights = ar_weights(targets)

        def step() -> None:
            model(inputs, targets=targets, loss_weights=weights).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device == "cuda":
                torch.cuda.synchronize()

        step()  # warm-up
        steps, started = 0, time.perf_counter()
        while time.perf_counter() - started < MEASURE_SECONDS or steps < 2:
            step()
            steps += 1
        return steps * inputs.numel() / (time.perf_counter() - started)
    finally:
        torch.set_num_threads(previous)


def eval_tokens(trial: TrialSpec) -> float:
    """Forward token positions of all the trial's evaluations: each task's cost per eval point (`EvalTask.cost`:
    the held-out loss, the cloze and HumanEval's likelihood ranking; lm-eval tasks and pass@k count 0)."""
    from crossover.evals.registry import eval_cost  # lazy: the eval tasks import torch

    return eval_cost(trial) * len(eval_steps(trial))


def _model_label(model: ModelConfig) -> str:
    """The preset's name where the model is the preset, else its shape (`L4d128f2048`, `nano-e4k1` for a preset made
    a mixture of experts): models of one label train at one rate."""
    shape = ("layers", "d_model", "heads", "kv_heads", "ffn")
    preset = PRESETS.get(model.preset or "")
    moe = f"-e{model.experts}k{model.top_k}" if model.experts > 1 else ""
    if preset and all(getattr(model, k) == preset[k] for k in shape) and model.experts == preset.get("experts", 1):
        return model.preset
    if preset and all(getattr(model, k) == preset[k] for k in shape):
        return f"{model.preset}{moe}"
    return f"L{model.layers}d{model.d_model}f{model.ffn}{moe}"


def estimate_wall_time(
    spec: StudySpec,
    runtime: Runtime,
    slots: int,
    memory: int | None = None,
    after: Sequence[tuple[TrialSpec, int]] = (),
) -> WallTime:
    """The study's duration here with `slots` trials at once, from measured rates (see the module docstring); a
    model too large to measure in `memory` (default: what is free here) gets an estimated rate, said so. `after`:
    trials of a second phase that starts once the grid is done, each (trial, tokens it trains) (the anneal,
    crossover.platform.anneal.anneal_cost)."""
    rates: dict[str, float] = {}
    per_trial: dict[str, float] = {}
    estimated: dict[str, str] = {}
    load = 0.0
    # Trials packed on a GPU (gpus_per_worker 1/k) each train slower than alone: the measured rate is a lone trial's.
    gpus_per_worker = spec.resources.gpus_per_worker
    per_gpu = min(round(1 / gpus_per_worker), max(1, slots)) if runtime.device == "cuda" and gpus_per_worker < 1 else 1
    share = packed_share(per_gpu)
    for trial in longest_first(spec.expand()):  # the order `crossover run` starts them in
        label = _model_label(trial.model)
        if label not in rates:
            try:
                rates[label] = measure_rate(trial, runtime, memory)
                load = max(load, cached_rate(_rate_key(trial, runtime))[1])
            except MemoryError as exc:
                rates[label] = estimated_rate(trial, runtime, memory)
                how = f"{ASSUMED_MFU:.0%} MFU" if runtime.device == "cuda" else f"{REFERENCE_PRESET}'s rate"
                estimated[label] = f"{exc}; estimated from FLOPs per token at {how}"
        rate = rates[label] * trial.resources.workers * share
        per_trial[trial.name] = TRIAL_START_S + (trial.total_tokens + EVAL_COST * eval_tokens(trial)) / rate
    loads = fill_slots(per_trial.values(), [0.0] * max(1, slots))
    phase: dict[str, float] = {}
    for trial, tokens in after:
        rate = (rates.get(_model_label(trial.model)) or measure_rate(trial, runtime, memory)) * share
        trained = tokens / trial.total_tokens  # its eval points after the checkpoint it continues
        phase[trial.name] = TRIAL_START_S + (tokens + EVAL_COST * eval_tokens(trial) * trained) / rate
    if phase:
        loads = fill_slots(sorted(phase.values(), reverse=True), [max(loads)] * len(loads))
    return WallTime(STUDY_START_S + max(loads), len(loads), rates, per_trial, estimated, phase, per_gpu, share, load)


def local_slots(spec: StudySpec, max_concurrent: int | None = None) -> int:
    """Trials at once on this machine: its cores over a trial's (or the GPUs), capped by max_concurrent."""
    res = spec.resources
    if res.gpus_per_worker > 0:
        import torch  # lazy: torch (see the note above the imports)

        fits = int(torch.cuda.device_count() / (res.gpus_per_worker * res.workers)) if torch.cuda.is_available() else 0
    else:
        fits = int((os.cpu_count() or 1) // (res.cpus_per_worker * res.workers))
    cap = max_concurrent or res.max_concurrent
    return max(1, min(fits, cap) if cap else fits)


def describe(wall: WallTime, runtime: Runtime, trials: str | None = None) -> str:
    """`trials`: how to count the study's trials (default "N trials"; a grown study's "4 of 8 trials left (...)")."""
    rates = ", ".join(
        f"{label} {rate:,.0f} tok/s" + (" (estimated)" if label in wall.estimated else "")
        for label, rate in wall.rates.items()
    )
    notes = "".join(f"; {label} not measured: {why}" for label, why in wall.estimated.items())
    if wall.load > BUSY_LOAD:
        notes += (
            f"; measured while this machine was busy (load {wall.load:.1f} per core): the estimate runs long, and a "
            "plan on a quiet machine measures again"
        )
    after = f" then up to {len(wall.after)} anneal trials," if wall.after else ""
    packed = (
        f"; {wall.per_gpu} share each GPU, each at {wall.share:.2f}x its rate alone (the packing rate measured on an "
        f"H200: {PACKED_MEASURED[0]} trials trained {PACKED_MEASURED[1]}x the tokens of one)"
        if wall.per_gpu > 1
        else ""
    )
    return (
        f"estimated {format_seconds(wall.seconds)} here: {trials or f'{len(wall.per_trial)} trials'},{after} "
        f"{wall.slots} at a time, "
        f"{rates} per worker measured in {runtime.precision} on {_device_name(runtime)} (evaluation and start-up "
        f"included){packed}{notes}"
    )


def wall_time_line(
    spec: StudySpec,
    max_concurrent: int | None = None,
    memory: int | None = None,
    after: Sequence[tuple[TrialSpec, int]] = (),
    trials: str | None = None,
) -> str | None:
    """One line for `plan` and `run`, or None where this machine cannot run the study's trials (GPU trials, no GPU).
    A measurement that fails (a kernel torch cannot run here, too little memory) never ends the plan: the line says
    the estimate was not measured, and why. `after`: a second phase's trials, as in `estimate_wall_time`; `trials`:
    how the line counts them (`describe`)."""
    runtime = study_runtime_here(spec, memory=memory)  # a model too large for `memory` is never built, even to decide
    if runtime.device == "cuda":
        import torch  # lazy: torch (see the note above the imports)

        if not torch.cuda.is_available():
            return None
    try:
        wall = estimate_wall_time(spec, runtime, local_slots(spec, max_concurrent), memory, after)
    except Exception as exc:  # any failure of the measurement is reported, never raised
        return f"wall time not measured here: {why_not_measured(exc, runtime)}"
    return describe(wall, runtime, trials)


def why_not_measured(exc: Exception, runtime: Runtime) -> str:
    """What failed, for the plan's line: a module the measurement imports that this environment lacks (an install's
    gap, named with its fix), else the error of training a step here."""
    reason = (str(exc).strip().splitlines() or [""])[0][:300]
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return (
            f"the throughput measurement imports {exc.name}, which is not installed in {sys.prefix} "
            f"(`pip install -e .` or `make setup` installs all of crossover's dependencies)"
        )
    if isinstance(exc, ImportError):
        return (
            f"the throughput measurement's imports failed: {type(exc).__name__}: {reason} "
            f"(`pip install -e .` or `make setup` installs all of crossover's dependencies)"
        )
    return f"{type(exc).__name__}: {reason} (training a step in {runtime.precision} on {_device_name(runtime)} failed)"
