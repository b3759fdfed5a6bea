"""Unique-token budgets and the training stream: exact, seeded, identical for AR and MDLM, any worker count.

Budget. The training documents of the tier are put in a seeded order (a hash of seed and document content, so the
order never depends on the objective and is stable when unrelated documents change); the budget is the shortest
prefix holding U tokens, its last document cut so the unique stream has exactly U tokens (each document followed
by end-of-document). Budgets of one seed and tier are nested: the 50k stream is a prefix of the 200k stream. The seed
is the trial's unless `data.budget_seed` is set: then every seed of a study trains on the same documents, each in its
own order.

Epochs. The unique stream is cut into C = ceil(U / seq_len) chunks (the last one shorter when seq_len does not
divide U). Epoch e is the C chunks in a fresh seeded order (seed, e); the training stream is epoch 0, epoch 1, ...
concatenated and cut at `num_steps * global_batch_tokens`, so the last epoch may be fractional. Every unique token
appears exactly once per epoch. Window k of the run is tokens [k*seq_len, (k+1)*seq_len) of that stream (when
seq_len does not divide U, a window may join the end of one chunk to the start of the next).

Batches. Global batch g is windows [g*S, (g+1)*S) with S = global_batch_tokens / seq_len. Rank r of W reads rows
[r*S/W, (r+1)*S/W) of it, as S/(W*micro_batch) micro-batches in order: the global batches are the same for any
worker count. Everything is random access, so resuming from a state is exact.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from crossover.data.errors import DataError
from crossover.data.store import PreparedData, prepare
from crossover.specs.study import TrialSpec
from crossover.specs.tokens import format_tokens

STATE_VERSION = 1
_M1, _M2, _GOLDEN = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a fast, well-mixed bijection on uint64 (vectorised)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def seeded_order(data: PreparedData, seed: int, quality: str = "all") -> np.ndarray:
    """The training documents of a tier in the seeded order budgets take them in."""
    docs = data.training_documents(quality)
    seed_word = mix64(np.array([seed], dtype=np.uint64) + _GOLDEN)
    keys = mix64(data.digests[docs] ^ seed_word)
    return docs[np.argsort(keys, kind="stable")]


class Budget:
    """A unique-token budget: the first documents of the seeded order, trimmed to exactly `unique_tokens`."""

    def __init__(self, data: PreparedData, unique_tokens: int, seed: int, quality: str = "all"):
        self.data, self.unique_tokens, self.seed, self.quality = data, int(unique_tokens), int(seed), quality
        order = seeded_order(data, seed, quality)
        lengths = data.document_lengths(order)
        cum = np.cumsum(lengths)
        available = int(cum[-1]) if len(cum) else 0
        if self.unique_tokens > available:
            tier = "" if quality == "all" else f" of quality tier '{quality}'"
            raise DataError(
                f"unique_tokens {format_tokens(self.unique_tokens)} ({self.unique_tokens:,}) exceeds the "
                f"{format_tokens(available)} ({available:,}) training tokens{tier} in the store {data.root}; "
                "lower the budget or use a larger corpus"
            )
        n = int(np.searchsorted(cum, self.unique_tokens, side="left")) + 1
        self.documents = order[:n]  # store indices, in stream order
        data.fetch_documents(self.documents)  # a copy of a shared store fetches the shards holding them
        self.starts = data.offsets[self.documents].astype(np.int64)
        self.stream_starts = np.concatenate([[0], cum[: n - 1]]).astype(np.int64)
        self.lengths = lengths[:n].astype(np.int64)
        self.lengths[-1] = self.unique_tokens - self.stream_starts[-1]

    def read(self, pos: int, count: int, out: np.ndarray) -> None:
        """Unique-stream tokens [pos, pos+count) into `out`."""
        i = int(np.searchsorted(self.stream_starts, pos, side="right")) - 1
        tokens, done = self.data.tokens, 0
        while done < count:
            within = pos + done - int(self.stream_starts[i])
            take = min(count - done, int(self.lengths[i]) - within)
            start = int(self.starts[i]) + within
            out[done : done + take] = tokens[start : start + take]
            done += take
            i += 1

    def tokens(self) -> np.ndarray:
        """The whole unique stream (int64): for tests and small budgets."""
        out = np.empty(self.unique_tokens, dtype=np.int64)
        self.read(0, self.unique_tokens, out)
        return out


class EpochOrder:
    """Which unique-stream chunk fills each stretch of the training stream, epoch by epoch."""

    def __init__(self, unique_tokens: int, seq_len: int, seed: int):
        self.U, self.L, self.seed = unique_tokens, seq_len, seed
        self.chunks = -(-unique_tokens // seq_len)
        self.short = unique_tokens - (self.chunks - 1) * seq_len  # length of the last chunk (== L if it divides)
        self._cache: OrderedDict[int, tuple[np.ndarray, int]] = OrderedDict()

    def permutation(self, epoch: int) -> tuple[np.ndarray, int]:
        """(chunk order of the epoch, slot of the short chunk)."""
        if epoch not in self._cache:
            rng = np.random.Generator(np.random.PCG64([self.seed, epoch, 0x63726F73]))
            perm = rng.permutation(self.chunks)
            slot = int(np.flatnonzero(perm == self.chunks - 1)[0])
            self._cache[epoch] = (perm, slot)
            while len(self._cache) > 3:
                self._cache.popitem(last=False)
        return self._cache[epoch]

    def locate(self, offset: int, epoch: int) -> tuple[int, int]:
        """(chunk, offset in chunk) at token `offset` of an epoch."""
        perm, s = self.permutation(epoch)
        L = self.L
        if self.short == L or offset < s * L:
            slot, within = divmod(offset, L)
        elif offset < s * L + self.short:
            slot, within = s, offset - s * L
        else:
            rest = offset - s * L - self.short
            slot, within = s + 1 + rest // L, rest % L
        return int(perm[slot]), within

    def read(self, budget: Budget, pos: int, count: int, out: np.ndarray) -> None:
        """Training-stream tokens [pos, pos+count) into `out`."""
        done = 0
        while done < count:
            epoch, offset = divmod(pos + done, self.U)
            chunk, within = self.locate(offset, epoch)
            chunk_len = self.short if chunk == self.chunks - 1 else self.L
            take = min(count - done, chunk_len - within)
            budget.read(chunk * self.L + within, take, out[done : done + take])
            done += take


@dataclass(frozen=True)
class StepBatch:
    """One optimizer step for one rank, with the accounting of the whole global batch after the step."""

    step: int  # 0-based index of this optimizer step
    micro_batches: list[Any]  # grad_accum_steps arrays or tensors [micro_batch, seq_len] int64
    tokens_seen: int  # training tokens of all ranks after this step: (step + 1) * global_batch_tokens
    epoch: float  # tokens_seen / unique_tokens
    unique_tokens_seen: int  # distinct positions of the unique stream seen so far: min(tokens_seen, U)


class TrainStream:
    """This rank's micro-batches for each global batch, in order, with exact accounting, a state and a hash."""

    def __init__(
        self,
        trial: TrialSpec,
        data: PreparedData,
        rank: int = 0,
        world_size: int | None = None,
        state: dict[str, Any] | None = None,
        as_torch: bool = True,
    ):
        self.trial, self.data = trial, data
        if trial.model.vocab_size < data.vocab_size:
            raise DataError(
                f"the model's embedding has {trial.model.vocab_size} rows but the tokenizer has {data.vocab_size} "
                "tokens; the trial's data.tokenizer settings do not match the prepared data"
            )
        self.world_size = trial.resources.workers if world_size is None else world_size
        self.rank = rank
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside world size {self.world_size}")
        self.seq_len = trial.data.seq_len
        self.micro_batch = trial.train.micro_batch
        self.global_batch_tokens = trial.train.global_batch_tokens
        if self.global_batch_tokens % self.seq_len:
            raise DataError(
                f"global_batch_tokens {self.global_batch_tokens} is not a multiple of seq_len {self.seq_len}"
            )
        self.sequences_per_step = self.global_batch_tokens // self.seq_len
        per_micro_step = self.micro_batch * self.world_size
        if self.sequences_per_step % per_micro_step:
            raise DataError(
                f"the global batch of {self.sequences_per_step} sequences cannot be split into micro batches of "
                f"{self.micro_batch} on {self.world_size} worker(s)"
            )
        self.grad_accum_steps = self.sequences_per_step // per_micro_step
        self.rows_per_rank = self.sequences_per_step // self.world_size
        self.unique_tokens = trial.unique_tokens
        self.num_steps = trial.total_tokens // self.global_batch_tokens
        self.total_tokens = self.num_steps * self.global_batch_tokens  # <= trial.total_tokens: whole batches only
        self.quality = trial.data.quality
        self.seed = trial.seed
        # the documents of the budget: the trial's seed chooses them unless data.budget_seed holds them fixed
        self.budget_seed = self.seed if trial.data.budget_seed is None else trial.data.budget_seed
        self.budget = Budget(data, self.unique_tokens, self.budget_seed, self.quality)
        self.epochs = EpochOrder(self.unique_tokens, self.seq_len, self.seed)
        self.as_torch = as_torch
        self.order_hash = self._order_hash()
        self.prefix_hash = self._order_hash(prefix=True)
        self.step = 0
        if state is not None:
            self.load_state(state)

    # ---- reading
    def global_batch(self, step: int) -> np.ndarray:
        """Every rank's rows of global batch `step`: [S, seq_len] int64."""
        return self._rows(step, 0, self.sequences_per_step)

    def _rows(self, step: int, first_row: int, rows: int) -> np.ndarray:
        if not 0 <= step < self.num_steps:
            raise IndexError(f"step {step} is outside 0..{self.num_steps - 1}")
        out = np.empty(rows * self.seq_len, dtype=np.int64)
        start = (step * self.sequences_per_step + first_row) * self.seq_len
        self.epochs.read(self.budget, start, rows * self.seq_len, out)
        return out.reshape(rows, self.seq_len)

    def rank_batch(self, step: int) -> list[np.ndarray]:
        """This rank's micro-batches of global batch `step` (numpy)."""
        mine = self._rows(step, self.rank * self.rows_per_rank, self.rows_per_rank)
        return [mine[i : i + self.micro_batch] for i in range(0, self.rows_per_rank, self.micro_batch)]

    def accounting(self, step: int) -> tuple[int, float, int]:
        """(tokens seen, epoch, unique tokens seen) after global step `step`."""
        seen = (step + 1) * self.global_batch_tokens
        return seen, seen / self.unique_tokens, min(seen, self.unique_tokens)

    def __iter__(self) -> Iterator[StepBatch]:
        while self.step < self.num_steps:
            step = self.step
            micro = self.rank_batch(step)
            if self.as_torch:
                import torch  # lazy: the data package imports no torch (crossover validate)

                micro = [torch.from_numpy(m) for m in micro]
            seen, epoch, unique = self.accounting(step)
            self.step = step + 1  # state() after a yielded step resumes at the next one
            yield StepBatch(step, micro, seen, epoch, unique)

    def __len__(self) -> int:
        return self.num_steps - self.step

    @property
    def steps_per_epoch(self) -> float:
        return self.unique_tokens / self.global_batch_tokens

    # ---- state
    def state(self) -> dict[str, Any]:
        """Where the stream stands: the next step, as (epoch, position in the epoch) and as tokens seen."""
        seen = self.step * self.global_batch_tokens
        epoch, position = divmod(seen, self.unique_tokens)
        return {
            "version": STATE_VERSION,
            "order_hash": self.order_hash,
            "prefix_hash": self.prefix_hash,
            "step": self.step,
            "tokens_seen": seen,
            "epoch": epoch,
            "position": position,
        }

    def load_state(self, state: dict[str, Any], longer: bool = False) -> None:
        """Continue from a saved state: the same data order, resumed at (epoch, position). `longer`: the state is
        another trial's that this one extends (the same order, fewer steps): their order prefixes must agree."""
        if longer and state.get("prefix_hash") != self.prefix_hash:
            raise DataError(
                f"the saved data state is not a prefix of this trial's data order ({state.get('prefix_hash')}, this "
                f"trial's is {self.prefix_hash}): only train.total_tokens may differ for a trial to continue another"
            )
        if not longer and state.get("order_hash") not in (None, self.order_hash):
            raise DataError(
                f"the saved data state belongs to another data order ({state.get('order_hash')}, this trial's is "
                f"{self.order_hash}): the corpus, tokenizer, budget, seed or batch settings changed since it was saved"
            )
        seen = int(state["epoch"]) * self.unique_tokens + int(state["position"])
        step, rest = divmod(seen, self.global_batch_tokens)
        if rest or not 0 <= step <= self.num_steps or state.get("step", step) != step:
            raise DataError(f"the saved data state {state} is not at a global-batch boundary of this trial")
        self.step = step

    # ---- identity
    def _order_hash(self, prefix: bool = False) -> str:
        """Names the sequence of global batches: equal for the AR and MDLM trials of a cell, any worker count.
        `prefix`: without the run's length, so equal for every length of the same order (each is a prefix of the
        longer ones)."""
        h = hashlib.sha256()
        params = {
            "store": self.data.tokens_sha256,
            "quality": self.quality,
            "seed": self.seed,
            "unique_tokens": self.unique_tokens,
            "seq_len": self.seq_len,
            "global_batch_tokens": self.global_batch_tokens,
            "num_steps": None if prefix else self.num_steps,
            "version": STATE_VERSION,
        }
        h.update(json.dumps(params, sort_keys=True).encode())
        for step in [0] if prefix else sorted({0, self.num_steps - 1}):
            if self.num_steps:
                h.update(self.global_batch(step).tobytes())
        h.update(self.budget.documents.tobytes())
        return h.hexdigest()[:16]


def train_stream(
    trial: TrialSpec,
    data: PreparedData | None = None,
    *,
    rank: int = 0,
    world_size: int | None = None,
    state: dict[str, Any] | None = None,
    as_torch: bool = True,
) -> TrainStream:
    """The training stream of one trial for one rank (see the module docstring); prepares the data if not given."""
    if data is None:
        data = prepare(trial.data)
    return TrainStream(trial, data, rank=rank, world_size=world_size, state=state, as_torch=as_torch)
