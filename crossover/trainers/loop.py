"""The one training loop, for AR and MDLM alike, run by every worker of a trial.

    data (crossover.data) -> model (crossover.models) in a DeepSpeed engine -> objective (the only difference
    between matched trials) -> LR set per step from tokens seen -> metrics, eval and checkpoints at eval points, and
    a checkpoint between them every train.checkpoint_minutes

Where the loop runs (in the calling process or in Ray Train workers) and where metrics go (Ray, MLflow, the
console) is the `Reporter`'s business: see crossover.trainers.launch. Resume restores the model, the optimizer, the
data position and every random stream, so an interrupted trial continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import torch
from pydantic import ValidationError

from crossover.data import prepare, train_stream
from crossover.errors import UserError
from crossover.evals.checkpoint import TRIAL_FILE, EvalModel, write_checkpoint_extras
from crossover.evals.registry import EvalSettings, Ranks, trial_tasks
from crossover.evals.results import TaskResult
from crossover.evals.suite import EvalSuite, metrics_of
from crossover.models import build_model
from crossover.models.objectives import (
    ar_inputs_targets,
    ar_weights,
    input_mask_noise,
    mask_tokens,
    mdlm_weights,
    sample_t,
)
from crossover.specs import TrialSpec, training_flops_per_token
from crossover.specs.hardware import Runtime
from crossover.tracking.names import TRAIN_LOSS
from crossover.trainers.engine import build_engine
from crossover.trainers.schedules import branch_step, eval_steps, lr_at
from crossover.trainers.throughput import runtime_here

CLIENT_STATE = "crossover_state.json"
LOG_POINTS = 200  # train metrics are logged about this many times per trial, and at every eval point


class NonFiniteLoss(RuntimeError, UserError):
    """The loss became NaN or infinite: the trial stops instead of training on garbage."""

    title = "training stopped"  # how the command line heads its message


class Reporter(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None:
        """Train metrics, and eval metrics at eval points (rank 0 only); step = tokens seen."""

    def checkpoint(self, metrics: dict[str, float], step: int, checkpoint_dir: str, eval_point: bool) -> None:
        """A checkpoint (every rank; the directory is deleted after): at an eval point, with that point's metrics, or
        timed (train.checkpoint_minutes), with only tokens and epoch: a point to resume from, superseded by later
        checkpoints and never taken for an eval point's."""

    def progress(self, metrics: dict[str, float], step: int) -> None:
        """The train metrics of a log point that is not an eval point, for live progress (every rank)."""

    def latest_checkpoint(self) -> AbstractContextManager[str | None]:
        """The directory of the checkpoint to resume from (the trial's own, else the branch checkpoint of a shorter
        trial it continues), or None for a fresh start."""

    def keep_branch(self, checkpoint_dir: str, trial: TrialSpec, step: int) -> None:
        """Keep the checkpoint at the trial's branch step (every rank), for longer trials to continue from."""

    def branch_kept(self, trial: TrialSpec, step: int) -> None:
        """Every rank's branch files are kept (rank 0 only, after they all are)."""

    def log_items(self, result: TaskResult, step: int) -> None:
        """Per-item results of one eval task at an eval point (rank 0 only), for the analysis's bootstrap."""


# Peak dense bf16 FLOP/s per GPU, for MFU. Unknown devices report no MFU rather than a wrong one.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _chain_hash(previous: str, batch: torch.Tensor) -> str:
    return hashlib.sha256(previous.encode() + batch.numpy().tobytes()).hexdigest()


def _all_reduce_sum(values: list[float] | torch.Tensor, device: torch.device) -> list[float]:
    tensor = torch.as_tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Trainer:
    """One trial on one worker. `run()` trains to the end (or `stop_after_steps`) and returns the final metrics."""

    def __init__(self, trial: TrialSpec, reporter: Reporter, runtime: Runtime | None = None):
        self.trial, self.reporter = trial, reporter
        # `crossover run` resolves precision and compile once for the whole study; alone, a trial resolves here (an
        # AVX512 CPU's `precision: auto` from the cached measurement of this trial's shape, measured once if none).
        self.runtime = runtime or runtime_here(trial)
        if self.runtime.warning:
            print(f"warning: {self.runtime.warning}", file=sys.stderr)
        torch.set_num_threads(max(1, int(trial.resources.cpus_per_worker)))
        self.data = prepare(trial.data)  # every rank: built once, then a verified cache hit
        torch.manual_seed(trial.seed)  # same seed, same shapes: the AR and MDLM models of a cell start identical
        model = build_model(trial.model, causal=trial.objective == "ar")
        model.set_activation_checkpointing(trial.train.activation_checkpointing)
        if self.runtime.compile:
            model.compile_blocks()
        self.engine = build_engine(model, trial, self.runtime.precision)
        self.rank, self.world = _rank_and_world()
        self.device = self.engine.device
        self.generator = torch.Generator(device=self.device).manual_seed(1_000_003 * trial.seed + self.rank + 1)
        self.stream = train_stream(trial, self.data, rank=self.rank, world_size=self.world)
        self.data_hash = self.stream.prefix_hash  # equal for every length: an extended trial's is a from-scratch one's
        self.eval_at = eval_steps(trial)
        minutes = trial.train.checkpoint_minutes
        self.checkpoint_seconds = minutes * 60 if minutes else None
        self.steps_per_checkpoint: int | None = None  # timed checkpoints: set at log points (_set_steps_per_checkpoint)
        self.branch_at = branch_step(trial)
        self.flops_per_token = training_flops_per_token(trial.model, trial.data.seq_len)
        self.log_every = max(1, self.stream.num_steps // LOG_POINTS)
        self.suite = EvalSuite(trial_tasks(trial), EvalSettings.of(trial), self.data)
        self.peak = peak_flops(self.device)
        with reporter.latest_checkpoint() as resume_dir:
            if resume_dir:
                self._restore(resume_dir)
        self.checkpoint_step = self.stream.step  # the step of the latest checkpoint (0: none yet)

    # ---- one step
    def _loss(self, tokens: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """The objective's loss (plus MoE aux) of one micro-batch; the head computes it without whole-batch logits."""
        trial, mask_id = self.trial, self.data.mask_id
        tokens = tokens.to(self.device)
        if trial.objective == "ar":
            inputs, targets = ar_inputs_targets(tokens)
            inputs = input_mask_noise(inputs, trial.noise.input_mask, mask_id, self.generator)
            out = self.engine(inputs, targets=targets, loss_weights=ar_weights(targets))
        else:
            t = sample_t(len(tokens), trial.train.mdlm_t_min, self.generator, stratified=True)  # low-variance draw
            noisy, masked = mask_tokens(tokens, t, mask_id, self.generator)
            out = self.engine(noisy, targets=tokens, loss_weights=mdlm_weights(masked, t))
        return out.loss + out.aux_loss, out

    def _set_lr(self, tokens_before: int) -> float:
        lr = lr_at(tokens_before, self.trial.train)
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _check_finite(self, pending: list[tuple[int, int, torch.Tensor, Any]]) -> tuple[float, float]:
        """Every step since the last check, in one host synchronisation: the loss (averaged over ranks, so every
        rank decides alike) and gradient norm of each must be finite; raises naming the first step that was not.
        Returns the last step's (loss, grad norm); the norm is NaN where DeepSpeed computes none."""
        losses = _all_reduce_sum(torch.stack([loss for _, _, loss, _ in pending]), self.device)
        for (step, tokens, _, norm), loss in zip(pending, losses, strict=True):
            # DeepSpeed silently skips steps whose gradients are not finite: a diverged trial all the same.
            checks = {
                "training loss": loss / self.world,
                **({"gradient norm": float(norm)} if norm is not None else {}),
            }
            for what, value in checks.items():
                if not math.isfinite(value):
                    raise NonFiniteLoss(
                        f"trial {self.trial.name}: the {what} became {value} at step {step} after {tokens:,} tokens; "
                        f"lower train.lr, keep train.grad_clip on, or use fp32 precision"
                    )
        last_norm = pending[-1][3]
        return losses[-1] / self.world, float(last_norm) if last_norm is not None else float("nan")

    # ---- the loop
    def run(self, stop_after_steps: int | None = None) -> dict[str, Any]:
        """Train to the end (or `stop_after_steps`). The device is synchronised only at log points (about
        LOG_POINTS per trial) and checkpoints: losses stay on the device until then, and are all checked there."""
        engine, stream = self.engine, self.stream
        engine.train()
        started, window_start, window_tokens = time.perf_counter(), time.perf_counter(), 0
        metrics: dict[str, float] = {}
        pending: list[tuple[int, int, torch.Tensor, Any]] = []  # (step, tokens, loss, grad norm) not yet checked
        warm = False
        for batch in stream:
            lr = self._set_lr(batch.tokens_seen - self.trial.train.global_batch_tokens)
            loss_sum, out = torch.zeros((), device=self.device), None
            for tokens in batch.micro_batches:
                self.data_hash = _chain_hash(self.data_hash, tokens)
                loss, out = self._loss(tokens)
                engine.backward(loss)
                engine.step()
                loss_sum += loss.detach().float()
            done = batch.step + 1
            pending.append(
                (done, batch.tokens_seen, loss_sum / len(batch.micro_batches), engine.get_global_grad_norm())
            )
            window_tokens += self.trial.train.global_batch_tokens
            if done % self.log_every == 0 or done in self.eval_at:
                loss_value, grad_norm = self._check_finite(pending)
                pending = []
                elapsed = time.perf_counter() - window_start
                metrics = {
                    TRAIN_LOSS: loss_value,
                    "tokens": batch.tokens_seen,
                    "epoch": batch.epoch,
                    "unique_tokens": batch.unique_tokens_seen,
                    "flops": self.flops_per_token * batch.tokens_seen,
                    "tokens_per_s": window_tokens / max(elapsed, 1e-9),
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "loop_seconds": time.perf_counter() - started,  # training and eval so far: overhead is the rest
                    **self._moe_metrics(out),
                }
                if self.peak:
                    metrics["mfu"] = metrics["tokens_per_s"] * self.flops_per_token / (self.peak * self.world)
                results: list[TaskResult] = []
                if done in self.eval_at:
                    eval_started = time.perf_counter()
                    eval_metrics, results = self.evaluate()
                    metrics.update(eval_metrics, eval_seconds=time.perf_counter() - eval_started)
                if self.rank == 0:
                    self.reporter.log(metrics, batch.tokens_seen)
                    for result in results:
                        self.reporter.log_items(result, batch.tokens_seen)
                if done in self.eval_at:
                    self._checkpoint(metrics, batch.tokens_seen, eval_point=True)
                    engine.train()
                else:
                    self.reporter.progress(metrics, batch.tokens_seen)
                self._set_steps_per_checkpoint(metrics["tokens_per_s"])
                window_start, window_tokens = time.perf_counter(), 0  # evaluation time is not training throughput
            elif not warm:
                # The first step of a process (compilation, allocator and kernel warm-up) is not throughput either.
                _synchronize(self.device)
                window_start, window_tokens = time.perf_counter(), 0
            warm = True
            if self.steps_per_checkpoint and done - self.checkpoint_step >= self.steps_per_checkpoint:
                if pending:  # a checkpoint holds only steps whose loss was checked: no diverged state to resume
                    self._check_finite(pending)
                    pending = []
                self._checkpoint({"epoch": batch.epoch}, batch.tokens_seen, eval_point=False)
                window_start, window_tokens = time.perf_counter(), 0  # nor is writing a checkpoint
            if done == self.branch_at:
                self._keep_branch(batch.tokens_seen)
            if stop_after_steps is not None and done >= stop_after_steps:
                break
        if pending:  # stopped between log points: those steps are checked all the same
            self._check_finite(pending)
        return {**metrics, "data_hash": self.data_hash, "steps": stream.step, "seconds": time.perf_counter() - started}

    def _moe_metrics(self, out: Any) -> dict[str, float]:
        if out is None or out.expert_load is None:
            return {}
        load = out.expert_load.float()
        return {
            "moe/load_max": float(load.max() * load.shape[-1]),  # 1.0 = perfectly balanced
            "moe/load_min": float(load.min() * load.shape[-1]),
            "moe/balance_loss": float(out.balance_loss),
            "moe/z_loss": float(out.z_loss),
        }

    @torch.no_grad()
    def evaluate(self) -> tuple[dict[str, float], list[TaskResult]]:
        """Held-out loss per token (AR exact NLL, MDLM ELBO), each rank scoring its share of the windows; then the
        spec's other tasks. Every rank runs those in full (same items, same random streams), so the forward passes
        match across ranks, as ZeRO-3's gathered parameters require; rank 0 reports them."""
        # Evaluation batches vary in shape: compiled blocks would recompile for each, so evaluation runs eager.
        with torch.compiler.set_stance("force_eager") if self.runtime.compile else contextlib.nullcontext():
            return self._evaluate()

    def _evaluate(self) -> tuple[dict[str, float], list[TaskResult]]:
        self.engine.eval()
        ranks = Ranks(self.rank, self.world, lambda values: _all_reduce_sum(values, self.device))
        results = self.suite.run(
            EvalModel.from_data(self.engine.module, self.trial.objective, self.data, self.trial), ranks
        )
        return metrics_of(results), [r for r in results if r.item_ids]  # the held-out loss has no per-item file

    # ---- checkpoints
    def _checkpoint(self, metrics: dict[str, float], tokens: int, eval_point: bool) -> None:
        """Every rank writes its own files (DeepSpeed names them by rank) into a local directory and hands it to the
        reporter, which merges the ranks' files into one checkpoint (Ray Train does this for its workers)."""
        with self._saved(tokens) as folder:
            self.reporter.checkpoint({**metrics, "tokens": tokens}, tokens, str(folder), eval_point)
        self.checkpoint_step = self.stream.step

    def _set_steps_per_checkpoint(self, tokens_per_s: float) -> None:
        """How many steps make train.checkpoint_minutes, from the throughput since the last log point. Saving is
        collective, so every rank must choose the same step: asking rank 0's clock at each step would synchronise
        the device each step (the loop does only at log points), and each rank reading its own clock could fall on
        either side of a step. So the interval becomes a step count here, where the device is synchronised anyway,
        from the throughput averaged over the ranks: one value, so one count, on every rank."""
        if self.checkpoint_seconds is None:
            return
        rate = _all_reduce_sum([tokens_per_s], self.device)[0] / self.world
        step_seconds = self.trial.train.global_batch_tokens / rate
        self.steps_per_checkpoint = max(1, int(self.checkpoint_seconds / step_seconds))

    def _keep_branch(self, tokens: int) -> None:
        with self._saved(tokens) as folder:
            self.reporter.keep_branch(str(folder), self.trial, tokens)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
        if self.rank == 0:
            self.reporter.branch_kept(self.trial, tokens)

    @contextlib.contextmanager
    def _saved(self, tokens: int):
        """This rank's checkpoint files in a temporary directory (removed after)."""
        folder = Path(tempfile.mkdtemp(prefix="crossover-ckpt-"))
        state = {
            "tokens": tokens,
            "data": self.stream.state(),
            "data_hash": self.data_hash,
            "torch_rng": torch.get_rng_state().tolist(),
            "generator": self.generator.get_state().tolist(),
        }
        self.engine.save_checkpoint(str(folder), tag="model", client_state={"crossover": state})
        (folder / f"rank{self.rank}_{CLIENT_STATE}").write_text(json.dumps(state))
        if self.rank == 0:
            write_checkpoint_extras(folder, self.trial, self.data.root / "tokenizer.json")
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _restore(self, folder: str) -> None:
        """Resume from the trial's own checkpoint, or continue a shorter trial of its lineage from its branch."""
        path = Path(folder) / f"rank{self.rank}_{CLIENT_STATE}"
        if not path.exists():
            raise FileNotFoundError(
                f"checkpoint {folder} has no state for rank {self.rank} (was the worker count changed?)"
            )
        try:
            saved = TrialSpec.model_validate_json((Path(folder) / TRIAL_FILE).read_text())
        except ValidationError as exc:  # written by another version of crossover (a key renamed or retired since)
            raise ValueError(
                f"checkpoint {folder} was written by another version of crossover and its trial no "
                f"longer validates ({exc.error_count()} problems, first: {exc.errors()[0]['msg']}): "
                "start the study over with `crossover run --fresh`"
            ) from None
        state = json.loads(path.read_text())
        longer = saved.trial_id != self.trial.trial_id
        if longer and not _shared(saved, self.trial, int(state["tokens"])):
            raise ValueError(
                f"checkpoint {folder} is trial {saved.name}'s, which trial {self.trial.name} cannot "
                "continue (only train.total_tokens may differ, and the checkpoint must be one both "
                "trials pass through alike: a shorter trial's branch, or a point of both stable "
                "phases)"
            )
        self.engine.load_checkpoint(folder, tag="model")
        self.stream.load_state(state["data"], longer=longer)
        self.data_hash = state["data_hash"]
        torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
        self.generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))


def _shared(saved: TrialSpec, trial: TrialSpec, tokens: int) -> bool:
    """Whether `trial` may continue `saved`'s checkpoint at `tokens`: the same lineage, and either `saved` is the
    shorter (its branch checkpoint: a longer trial grows) or the point lies in both trials' stable phase (a shorter
    trial annealed early, crossover.specs.anneal): both trained alike up to it."""
    if saved.lineage_id != trial.lineage_id:
        return False
    if saved.total_tokens <= trial.total_tokens:
        return True
    steps = [branch_step(t) for t in (saved, trial)]
    return all(s is not None and tokens <= s * trial.train.global_batch_tokens for s in steps)


def train(
    trial: TrialSpec, reporter: Reporter, stop_after_steps: int | None = None, runtime: Runtime | None = None
) -> dict[str, Any]:
    """Train one trial on this worker (see `Trainer`)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return Trainer(trial, reporter, runtime).run(stop_after_steps)
