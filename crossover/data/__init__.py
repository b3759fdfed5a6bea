"""The data layer: corpora, tokenizers, the token store, unique-token budgets, repeated epochs and quality tiers.

The studies vary how many unique tokens a model sees and how often it repeats them. This package makes that exact
(budgets of exactly U tokens, every unique token once per epoch), reproducible (everything follows from the data
settings and the trial seed) and identical for the AR and MDLM trials of a cell (the objective is never an input).
It imports only `crossover.specs` types from this project; torch, datasets and tokenizers are imported lazily.

The interface a trainer uses
----------------------------

    from crossover.data import prepare, train_stream

    data = prepare(trial.data)                # PreparedData: built once, then loaded from the cache and verified
    data.eod_id, data.mask_id, data.pad_id    # special token ids
    data.vocab_size                           # the tokenizer's real size (largest id + 1)
    data.padded_vocab                         # the model's embedding rows: specs.padded_vocab(tokenizer size)

    stream = train_stream(trial, data, rank=rank, world_size=world, state=saved_state_or_None)
    stream.order_hash                         # log it: equal for the AR and MDLM trials of a cell, any world size
    stream.num_steps, stream.grad_accum_steps # optimizer steps; micro-batches per rank per step
    for step in stream:                       # StepBatch, one per optimizer step, in order
        for tokens in step.micro_batches:     # torch int64 [micro_batch, seq_len] (as_torch=False: numpy)
            ...                               # forward / backward
        optimizer_step()
        log(step=step.tokens_seen, epoch=step.epoch, unique_tokens=step.unique_tokens_seen)
        checkpoint(data_state=stream.state()) # {'epoch', 'position', 'step', 'tokens_seen', 'order_hash', ...}

    data.heldout_windows(seq_len, max_windows=None)  # np.int64 [N, seq_len]: held-out loss
    data.heldout_documents(limit=None)               # [{'id', 'text'}]: cloze-style tasks

Windows are exactly `seq_len` tokens for both objectives, so AR and MDLM see the same inputs: the AR objective
shifts inside the window (positions 1..seq_len-1 are its targets; the first token is context only), MDLM predicts
masked positions in place. Windows are packed (documents joined by end-of-document, no padding), so no loss mask
is needed.

Accounting after step g: `tokens_seen = (g+1) * global_batch_tokens` over all ranks, `epoch = tokens_seen / U`
(a float; the last epoch may be fractional), `unique_tokens_seen = min(tokens_seen, U)`. The run has
`total_tokens // global_batch_tokens` steps (whole global batches only).

Shared stores. With `data.store` set (a folder on a shared volume, `s3://` or `gs://`), the store lives there in
shards of whole documents, built by `crossover data prepare` as a Ray Data job over the cluster's CPU workers
(`crossover.platform.data_job`; a re-run tokenizes only the shards it lacks). The shards concatenate to exactly the
local store's tokens. `prepare(trial.data)` then copies the manifest, document table, tokenizer and held-out files
(held-out tokens included, so evaluation needs no shard) into the local cache, and a trial's budget fetches only the
shards holding its documents (`Budget` calls `PreparedData.fetch_documents`), checking each against its sha256.

How each part works: `corpus` (sources), `tokenizer`, `store` (token store, held-out split, caching and
verification), `shards` (shared stores: shard files, records, building a shard, fetching), `stream` (budgets,
epochs, sharding, state), `quality` (scorers and tiers), `check` (the size check of `crossover validate` and
`crossover plan`). Cache root: `DataSpec.cache_dir`, else `$CROSSOVER_CACHE`, else
`~/.cache/crossover`.
"""

from crossover.data.cache import cache_root
from crossover.data.check import check_study_data
from crossover.data.corpus import load_corpus
from crossover.data.errors import DataError
from crossover.data.quality import (
    TIERS,
    CodeQualityScorer,
    ProseQualityScorer,
    QualityScorer,
    assign_tiers,
)
from crossover.data.store import PreparedData, prepare, store_dir, verify_store
from crossover.data.stream import Budget, StepBatch, TrainStream, seeded_order, train_stream

__all__ = [
    "TIERS",
    "Budget",
    "CodeQualityScorer",
    "DataError",
    "PreparedData",
    "ProseQualityScorer",
    "QualityScorer",
    "StepBatch",
    "TrainStream",
    "assign_tiers",
    "cache_root",
    "check_study_data",
    "load_corpus",
    "prepare",
    "seeded_order",
    "store_dir",
    "train_stream",
    "verify_store",
]
