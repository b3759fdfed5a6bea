"""DeepSpeed engine from a TrialSpec: one code path on CPU (gloo) and GPU (nccl)."""

from __future__ import annotations

import os
import socket
from typing import Any

import torch

from crossover.specs import TrialSpec


def deepspeed_config(trial: TrialSpec, precision: str) -> dict[str, Any]:
    """ZeRO stage, precision (resolved: bf16, fp16 or fp32), clipping and batch geometry; the global batch in tokens
    is fixed by the spec, so gradient accumulation absorbs the worker count."""
    train = trial.train
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": train.micro_batch,
        "gradient_accumulation_steps": trial.grad_accum_steps,
        "train_batch_size": train.micro_batch * trial.grad_accum_steps * trial.resources.workers,
        "zero_optimization": {"stage": train.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},  # dynamic loss scaling
        "steps_per_print": 10**12,
        "wall_clock_breakdown": False,
    }
    if train.grad_clip > 0:
        config["gradient_clipping"] = train.grad_clip
    return config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> None:
    """Join the worker group Ray Train set up, or make a one-process group for a trial run in the calling process."""
    # lazy: deepspeed takes seconds, is not in the planner install (plan imports crossover.trainers.loop, and this
    # module, on a GPU), and prints notices on import: `crossover train` first sends those to its log file
    import deepspeed

    # DeepSpeed's shared-memory all-reduce serves only its inference all-reduce (tensor-parallel serving); training
    # reduces through the process group. Left on, every CPU worker compiles it (C++, ~50 s of both cores on a fresh
    # 2-core machine, again after any change of virtualenv path) before its first step, in
    # deepspeed.initialize when Ray Train has already made the process group.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        # One process: always a fresh port. Variables inherited from a parent that trained in-process (a test
        # session, a notebook) name a port that parent still holds.
        os.environ.update(
            RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port())
        )
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", verbose=False)


def build_optimizer(model: torch.nn.Module, trial: TrialSpec) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not norms), as in the paper's recipe."""
    train = trial.train
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=train.lr, betas=train.betas, eps=train.eps, fused=torch.cuda.is_available())


def build_engine(model: torch.nn.Module, trial: TrialSpec, precision: str):
    """Wrap the model in a DeepSpeed engine with the spec's optimizer; the LR is set per step by the loop."""
    import deepspeed  # lazy: as in init_distributed

    init_distributed()
    if precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise RuntimeError(
            f"{torch.cuda.get_device_name()} has no bf16: set train.precision to fp16 (or fp32) for these GPUs"
        )
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=build_optimizer(model, trial), config=deepspeed_config(trial, precision)
    )
    return engine
