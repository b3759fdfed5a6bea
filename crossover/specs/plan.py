"""What a study will cost: per-trial epochs, parameters, training FLOPs, GPU-hours and memory per worker, from the
analytic counts, and how its `auto` settings resolve on this machine."""

from __future__ import annotations

from pydantic import BaseModel

from crossover.specs.hardware import Runtime, resolve_runtime
from crossover.specs.memory import GIB, estimate_memory
from crossover.specs.model import count_params, training_flops_per_token
from crossover.specs.study import StudySpec, TrialSpec


class PlanRow(BaseModel):
    name: str
    trial_id: str
    cell: str
    objective: str
    axes: dict[str, str]
    unique_tokens: int
    total_tokens: int
    epochs: float
    params_total: int
    params_active: int
    flops: float  # training FLOPs (forward + backward), evaluation not included
    gpu_hours: float
    memory_gib: float  # estimated peak per worker (per GPU on GPU trials), crossover.specs.memory


class Plan(BaseModel):
    study: str
    mfu: float
    gpu_tflops: float
    runtime: Runtime  # precision and compile as the trials will train on this kind of machine
    trials: list[PlanRow]
    total_flops: float
    total_gpu_hours: float


def training_flops(trial: TrialSpec) -> float:
    """The trial's training FLOPs (forward + backward over its total tokens), evaluation not included."""
    return training_flops_per_token(trial.model, trial.data.seq_len) * trial.total_tokens


def longest_first(trials: list[TrialSpec]) -> list[TrialSpec]:
    """The order trials are started in: most training FLOPs first (grid order among equals), so that no long trial
    starts last and runs alone while the other slots idle. The plan's wall time assumes this order."""
    return sorted(trials, key=training_flops, reverse=True)


def plan_study(spec: StudySpec, mfu: float = 0.4, gpu_tflops: float = 989.0, runtime: Runtime | None = None) -> Plan:
    """GPU-hours = FLOPs / (MFU x peak FLOP/s); the defaults are an H100's dense bf16 peak at 40% utilisation.
    `runtime`: how the trials train here (`crossover plan` passes the measured one,
    crossover.trainers.throughput.study_runtime_here); default: the rule without measuring."""
    trials = spec.expand()
    runtime = runtime or resolve_runtime(spec.train, trials[0].model, spec.resources)
    rows = []
    for trial in trials:
        counts = count_params(trial.model)
        flops = training_flops(trial)
        rows.append(
            PlanRow(
                name=trial.name,
                trial_id=trial.trial_id,
                cell=trial.cell,
                objective=trial.objective,
                axes=trial.axes,
                unique_tokens=trial.unique_tokens,
                total_tokens=trial.total_tokens,
                epochs=trial.epochs,
                params_total=counts.total,
                params_active=counts.active,
                flops=flops,
                gpu_hours=flops / (mfu * gpu_tflops * 1e12) / 3600,
                memory_gib=estimate_memory(
                    trial.model,
                    precision=runtime.precision,
                    zero_stage=trial.train.zero_stage,
                    workers=trial.resources.workers,
                    micro_batch=trial.train.micro_batch,
                    seq_len=trial.data.seq_len,
                    checkpointing=trial.train.activation_checkpointing,
                    gpu=runtime.device == "cuda",
                ).total
                / GIB,
            )
        )
    return Plan(
        study=spec.name,
        mfu=mfu,
        gpu_tflops=gpu_tflops,
        runtime=runtime,
        trials=rows,
        total_flops=sum(r.flops for r in rows),
        total_gpu_hours=sum(r.gpu_hours for r in rows),
    )
