"""What a study will cost: per-trial epochs, parameters, training FLOPs, GPU-hours and memory per worker, from the
analytic counts, and how its `auto` settings resolve on this machine."""

from __future__ import annotations

import heapq
from collections.abc import Iterable

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
    from crossover.specs.search import planned_trials  # lazy: import cycle (specs.search imports expand, this package)

    trials = planned_trials(spec)
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


# Trials packed on one GPU (gpus_per_worker 1/k) share it: measured on one H200 with the compiled trainer (2026-12-04,
# docs/results.md), four `mini` trials at once trained 2.31x the tokens of one alone, each at 0.58x its solo rate.
# Between one and four per GPU the gain is taken as linear; past four, no more.
PACKED_MEASURED = (4, 2.31)


def packed_share(per_gpu: int) -> float:
    """Each of `per_gpu` trials packed on one GPU trains at this share of its rate alone on it."""
    measured_k, measured_gain = PACKED_MEASURED
    gain = 1 + (measured_gain - 1) * (min(per_gpu, measured_k) - 1) / (measured_k - 1)
    return gain / per_gpu


class ClusterWallTime(BaseModel):
    gpus: int  # the cluster's GPUs at its autoscaler's maximum
    at_once: int  # trials that fit it at once
    gpus_per_trial: float
    per_gpu: int  # trials packed on one GPU (1: none)
    share: float  # each packed trial's rate against its rate alone (1.0: not packed)
    hours: float  # training only, at the plan's MFU

    def line(self, mfu: float, gpu_tflops: float) -> str:
        packing = (
            f", {self.per_gpu} per GPU each at {self.share:.2f}x its rate alone (measured on an H200: "
            f"{PACKED_MEASURED[0]} packed trials trained {PACKED_MEASURED[1]}x the tokens of one)"
            if self.per_gpu > 1
            else f", {self.gpus_per_trial:g} GPUs each"
        )
        return (
            f"on a cluster of {self.gpus} GPU{'s' if self.gpus > 1 else ''} at its maximum: {self.at_once} trials at once{packing}; "
            f"about {self.hours:,.3g} hours of training at {mfu:.0%} MFU of {gpu_tflops:g} TFLOP/s "
            "(evaluation and start-up not included)"
        )


def fill_slots(durations: Iterable[float], loads: list[float]) -> list[float]:
    """Each duration, in order, onto the slot that frees first (as Ray Tune places waiting trials); `loads` are the
    slots' busy times so far. Returns the slots' busy times after."""
    loads = list(loads)
    heapq.heapify(loads)
    for seconds in durations:
        heapq.heapreplace(loads, loads[0] + seconds)
    return loads


def cluster_wall_time(spec: StudySpec, plan: Plan, gpus: int) -> ClusterWallTime:
    """The study's training time on a cluster grown to `gpus` GPUs: as many trials at once as fit (`crossover run`
    queues them all; the autoscaler grows for them), longest first, each onto the slot that frees first, each taking
    its GPU-hours over its GPUs (a packed trial: over its share of the GPU's measured packed rate)."""
    res = spec.resources
    per_trial = res.workers * res.gpus_per_worker
    if per_trial <= 0:
        raise ValueError("the study's trials use no GPUs: a cluster's GPUs do not bound them")
    per_gpu = round(1 / res.gpus_per_worker) if res.gpus_per_worker < 1 else 1
    share = packed_share(per_gpu)  # 1.0 for one trial per GPU
    at_once = int(gpus // per_trial)
    if at_once < 1:
        raise ValueError(f"a trial needs {per_trial:g} GPUs, more than the cluster's {gpus}")
    if res.max_concurrent:
        at_once = min(at_once, res.max_concurrent)
    # A trial alone on its GPUs takes gpu_hours over their count (a packed trial: the GPU-hours of a whole GPU,
    # slowed to its share while its neighbours run).
    hours = [row.gpu_hours / max(per_trial, 1) / share for row in sorted(plan.trials, key=lambda r: -r.flops)]
    loads = fill_slots(hours, [0.0] * at_once)
    return ClusterWallTime(
        gpus=gpus, at_once=at_once, gpus_per_trial=per_trial, per_gpu=per_gpu, share=share, hours=max(loads)
    )
