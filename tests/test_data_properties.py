"""Property tests (hypothesis) of budgets and the training stream, on the shared small store:

- budgets are nested, and never touch held-out documents;
- within each full epoch every unique training token is seen exactly once (the last epoch may be fractional);
- the same seed gives the same global batches on 1 and 2 workers (and for AR and MDLM);
- resuming from a saved state continues the exact sequence.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossover.data import Budget, seeded_order, train_stream
from crossover.data.quality import TIERS, assign_tiers
from crossover.data.stream import EpochOrder

from .test_data_support import make_trials

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
QUALITIES = st.sampled_from(["all", *TIERS])
SEEDS = st.integers(0, 2**31 - 1)


pytestmark = pytest.mark.usefixtures("default_cache")


def _stream_tokens(stream) -> np.ndarray:
    """The whole run's global batches, concatenated in order (numpy)."""
    return np.concatenate([stream.global_batch(s).ravel() for s in range(stream.num_steps)])


@SETTINGS
@given(seed=SEEDS, quality=QUALITIES, a=st.floats(0.0, 1.0), b=st.floats(0.0, 1.0))
def test_budgets_are_nested_and_never_touch_heldout_documents(small, seed, quality, a, b):
    available = small.available_tokens(quality)
    small_u, large_u = sorted((max(1, int(a * available)), max(1, int(b * available))))
    smaller, larger = Budget(small, small_u, seed, quality), Budget(small, large_u, seed, quality)
    assert len(smaller.tokens()) == small_u and len(larger.tokens()) == large_u  # exactly U tokens
    assert (larger.tokens()[:small_u] == smaller.tokens()).all(), "the smaller budget is a prefix of the larger"
    assert set(smaller.documents) <= set(larger.documents)
    assert list(larger.documents[: len(smaller.documents)]) == list(smaller.documents)
    # whole documents in the seeded order, only the last one cut
    order = seeded_order(small, seed, quality)
    assert list(larger.documents) == list(order[: len(larger.documents)])
    assert (larger.lengths[:-1] == small.document_lengths(larger.documents[:-1])).all()
    # never a held-out document, and only documents of the tier
    assert not small.heldout[larger.documents].any()
    if quality != "all":
        assert (small.tiers[larger.documents] == TIERS.index(quality)).all()
    heldout_digests = set(small.digests[small.heldout].tolist())
    assert heldout_digests.isdisjoint(small.digests[larger.documents].tolist())


@SETTINGS
@given(
    seed=SEEDS,
    quality=QUALITIES,
    share=st.floats(0.0005, 0.2),
    seq_len=st.sampled_from([8, 16, 32, 48]),
    sequences=st.sampled_from([2, 4, 8]),
    epochs=st.floats(1.0, 4.0),
)
def test_each_full_epoch_sees_every_unique_token_exactly_once(
    small, small_spec, seed, quality, share, seq_len, sequences, epochs
):
    unique = max(1, int(share * small.available_tokens(quality)))
    batch = seq_len * sequences
    total = max(batch, -(-int(unique * epochs) // batch) * batch)
    (trial, _) = make_trials(
        small_spec,
        unique,
        max(total, unique),
        seq_len=seq_len,
        sequences=sequences,
        micro_batch=1,
        seeds=(seed,),
        quality=quality,
    )
    stream = train_stream(trial, small, as_torch=False)
    tokens = _stream_tokens(stream)
    assert len(tokens) == stream.total_tokens == stream.num_steps * batch
    budget = stream.budget.tokens()
    full_epochs, rest = divmod(len(tokens), unique)
    for e in range(full_epochs):  # the same multiset of tokens each epoch ...
        assert (np.sort(tokens[e * unique : (e + 1) * unique]) == np.sort(budget)).all()
    # ... and exactly once by position: the same order, reading positions instead of token ids
    positions = np.empty(len(tokens), dtype=np.int64)
    EpochOrder(unique, seq_len, seed).read(_Positions(), 0, len(tokens), positions)
    assert (budget[positions] == tokens).all()
    for e in range(full_epochs):
        assert (np.sort(positions[e * unique : (e + 1) * unique]) == np.arange(unique)).all()
    tail = positions[full_epochs * unique :]
    assert len(tail) == rest and len(np.unique(tail)) == rest, "the fractional last epoch repeats nothing"
    if full_epochs >= 2 and unique >= 4 * seq_len:  # a fresh shuffle each epoch
        assert not (positions[:unique] == positions[unique : 2 * unique]).all()


class _Positions:
    """A budget whose unique stream is its own positions: makes exact coverage checkable."""

    def read(self, pos: int, count: int, out: np.ndarray) -> None:
        out[:] = np.arange(pos, pos + count)


@SETTINGS
@given(
    seed=SEEDS,
    quality=QUALITIES,
    share=st.floats(0.001, 0.3),
    micro_batch=st.sampled_from([1, 2]),
    per_worker=st.sampled_from([1, 2, 3]),
    steps=st.integers(1, 12),
)
def test_same_global_batches_on_one_and_two_workers_and_for_both_objectives(
    small, small_spec, seed, quality, share, micro_batch, per_worker, steps
):
    unique = max(1, int(share * small.available_tokens(quality)))
    sequences = micro_batch * 2 * per_worker
    total = max(unique, steps * sequences * 16)
    kw = dict(seq_len=16, sequences=sequences, micro_batch=micro_batch, seeds=(seed,), quality=quality)
    (ar1, mdlm1) = make_trials(small_spec, unique, total, workers=1, **kw)
    (ar2, mdlm2) = make_trials(small_spec, unique, total, workers=2, **kw)
    one = train_stream(ar1, small, as_torch=False)
    ranks = [train_stream(ar2, small, rank=r, as_torch=False) for r in range(2)]
    mdlm = train_stream(mdlm2, small, rank=1, as_torch=False)
    assert one.order_hash == ranks[0].order_hash == ranks[1].order_hash == mdlm.order_hash
    assert train_stream(mdlm1, small, as_torch=False).order_hash == one.order_hash
    assert ranks[0].grad_accum_steps * 2 == one.grad_accum_steps
    for step_1, step_r0, step_r1, step_m in zip(one, *ranks, mdlm, strict=True):
        whole = np.concatenate(step_1.micro_batches)
        halves = [np.concatenate(step_r0.micro_batches), np.concatenate(step_r1.micro_batches)]
        assert (np.concatenate(halves) == whole).all(), "rank slices tile the same global batch"
        assert (np.concatenate(step_m.micro_batches) == halves[1]).all(), "MDLM reads what AR reads"
        assert (whole == one.global_batch(step_1.step)).all()
        assert step_1.tokens_seen == step_r0.tokens_seen == step_r1.tokens_seen
        assert step_1.epoch == step_r1.epoch and step_1.unique_tokens_seen == step_r1.unique_tokens_seen
        assert all(mb.shape == (micro_batch, 16) for mb in step_r0.micro_batches)


@SETTINGS
@given(
    seed=SEEDS,
    share=st.floats(0.001, 0.1),
    workers=st.sampled_from([1, 2]),
    steps=st.integers(2, 30),
    cut=st.floats(0.0, 1.0),
)
def test_resuming_from_a_saved_state_continues_the_exact_sequence(small, small_spec, seed, share, workers, steps, cut):
    unique = max(1, int(share * small.available_tokens()))
    total = max(unique, steps * 128)
    (trial, _) = make_trials(
        small_spec, unique, total, seq_len=16, sequences=8, micro_batch=2, workers=workers, seeds=(seed,)
    )
    rank = workers - 1
    whole = [np.concatenate(s.micro_batches) for s in train_stream(trial, small, rank=rank, as_torch=False)]
    first = train_stream(trial, small, rank=rank, as_torch=False)
    k = int(cut * first.num_steps)
    before = [np.concatenate(s.micro_batches) for _, s in zip(range(k), first, strict=False)]
    state = json.loads(json.dumps(first.state()))  # survives a checkpoint round trip
    assert state["step"] == k and state["epoch"] * unique + state["position"] == k * trial.train.global_batch_tokens
    resumed = train_stream(trial, small, rank=rank, state=state, as_torch=False)
    after = [np.concatenate(s.micro_batches) for s in resumed]
    assert len(before) + len(after) == len(whole)
    assert all((a == b).all() for a, b in zip(before + after, whole, strict=True))
    # the (epoch, position) pair alone is enough
    bare = train_stream(trial, small, rank=rank, state={"epoch": state["epoch"], "position": state["position"]})
    assert bare.step == k


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 500), min_size=1, max_size=200),
    scores=st.lists(st.floats(-5, 5, allow_nan=False), min_size=200, max_size=200),
)
def test_tiers_are_token_terciles_of_the_score_order(lengths, scores):
    lengths_a = np.array(lengths, dtype=np.int64)
    scores_a = np.array(scores[: len(lengths)])
    digests = np.arange(len(lengths), dtype=np.uint64)
    tiers = assign_tiers(scores_a, lengths_a, digests)
    total = lengths_a.sum()
    for t in range(3):
        assert abs(lengths_a[tiers == t].sum() - total / 3) <= lengths_a.max()
        if t and (tiers == t).any() and (tiers == t - 1).any():
            assert scores_a[tiers == t].min() >= scores_a[tiers == t - 1].max()
