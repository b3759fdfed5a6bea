"""The lm-eval bridge: real lm-eval runs local tasks on the tiny trained checkpoints, and its numbers are crossover's.

The tasks (tests/data/lm_eval/) read local JSON lines with `dataset_path: json`; their relative `data_files` resolve
against the working directory, so the end-to-end tests run from that folder, with datasets' cache in a temporary one.
"""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may download: fail fast instead
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import datasets  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model, model_registry  # noqa: E402
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # noqa: E402

from crossover.evals.checkpoint import load_checkpoint  # noqa: E402
from crossover.evals.likelihood import ar_loglik  # noqa: E402
from crossover.evals.lm_eval_bridge import CrossoverLM, run_lm_eval  # noqa: E402

TASKS = Path(__file__).parent / "data" / "lm_eval"
DOCS = [json.loads(line) for line in (TASKS / "pyfacts.jsonl").read_text().splitlines()]


@pytest.fixture
def local_tasks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.chdir(TASKS)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # in case datasets was imported before the env was set
    return TASKS


@pytest.fixture(scope="module")
def ar(tiny_checkpoints):
    return load_checkpoint(tiny_checkpoints["ar"])


@pytest.fixture(scope="module")
def mdlm(tiny_checkpoints):
    return load_checkpoint(tiny_checkpoints["mdlm"])


def ll_requests(pairs: list[tuple[str, str]]) -> list[Instance]:
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


def direct_ar(em, context: str, continuation: str) -> float:
    """log p(continuation | eod + context) on one unpadded row, context and continuation tokenized separately."""
    ctx, cont = [em.eod_id, *em.encode(context)], em.encode(continuation)
    tokens = torch.tensor([ctx + cont])
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[0, len(ctx) :] = True
    return float(ar_loglik(em.model, tokens, mask, exclude=em.excluded_ids)[0])


def real_logits(em, logits: torch.Tensor) -> torch.Tensor:
    """The logits with the ids that are no real token (mask, pad, padded rows) at -inf, as every scorer has them."""
    logits[..., list(em.excluded_ids)] = float("-inf")
    return logits


def text_ar(em, text: str) -> float:
    """log p(text | eod), exact."""
    return direct_ar(em, "", text)


def test_ar_multiple_choice_end_to_end(ar, local_tasks, one_thread):
    torch_state, python_state = torch.random.get_rng_state(), random.getstate()
    results = run_lm_eval(ar, ["crossover_pyfacts"], include_path=local_tasks, include_defaults=False, batch_size=8)
    # lm-eval seeds the global generators; a training loop calling this gets its own streams back
    assert torch.equal(torch.random.get_rng_state(), torch_state) and random.getstate() == python_state
    assert list(results) == ["lm_eval:crossover_pyfacts"]
    result = results["lm_eval:crossover_pyfacts"]
    assert result.task == "lm_eval:crossover_pyfacts"
    assert {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"} <= result.metrics.keys()
    assert 0.0 <= result.metrics["acc"] <= 1.0 and result.metrics["acc_stderr"] > 0.0
    assert result.item_ids == [str(i) for i in range(len(DOCS))]
    assert set(result.item_metrics) == {"acc", "acc_norm"}
    assert math.isclose(sum(result.item_metrics["acc"]) / len(DOCS), result.metrics["acc"])
    # every item's accuracy is what exact direct scoring says: lm-eval joins context and choice by " ", and the
    # context's tokens are the same for every choice, so the whole text's probability ranks the choices
    for doc, acc in zip(DOCS, result.item_metrics["acc"], strict=True):
        scores = [text_ar(ar, doc["context"] + " " + choice) for choice in doc["choices"]]
        assert acc == float(max(range(len(scores)), key=scores.__getitem__) == doc["label"])


def test_ar_loglikelihood_is_exact_and_batched(ar, one_thread):
    pairs = [
        ("import os\nimport", " sys"),
        ("def f(x):\n    return", " x + 1"),
        ("", "import re"),
        ("for i in ", "range(10):"),
        ("x = [1, 2,", " 3]"),
    ]
    lm = CrossoverLM(ar, batch_size=2)
    ar.model.train()  # a live model from the trainer: scored in eval mode, then handed back in training mode
    try:
        scores = lm.loglikelihood(ll_requests(pairs))
        assert ar.model.training
    finally:
        ar.model.eval()
    for (context, continuation), (logp, _) in zip(pairs, scores, strict=True):
        # clean token boundaries: the context's trailing space joins the continuation, as in lm-eval's HF model
        stripped = context.rstrip(" ")
        assert logp == pytest.approx(direct_ar(ar, stripped, context[len(stripped) :] + continuation), abs=1e-4)
        assert logp < 0.0
    # a token merging across the boundary ("\n" + "    " -> one token) is scored with the continuation (chain rule)
    context, continuation = "class A:\n    ", "def __init__(self):"
    whole = ar.encode(context + continuation)
    assert whole[:3] == ar.encode("class A:") and whole[3] != ar.encode("class A:\n")[3]
    (merged, _), *_ = lm.loglikelihood(ll_requests([(context, continuation)]))
    assert merged == pytest.approx(text_ar(ar, context + continuation) - text_ar(ar, "class A:"), abs=1e-4)

    # is_greedy: the continuation made of the model's own argmax tokens is greedy; a changed last token is not
    ctx = [ar.eod_id, *ar.encode("import os\n")]
    with torch.no_grad():
        tokens = list(ctx)
        for _ in range(3):
            tokens.append(int(ar.model(torch.tensor([tokens])).logits[0, -1].argmax()))
    greedy_text = ar.decode(tokens[len(ctx) :])
    assert ar.encode("import os\n" + greedy_text) == tokens[1:]  # the text tokenizes back to the same tokens
    other = ar.decode([*tokens[len(ctx) : -1], (tokens[-1] + 1) % len(ar.tokenizer.get_vocab())])
    flags = [g for _, g in lm.loglikelihood(ll_requests([("import os\n", greedy_text), ("import os\n", other)]))]
    assert flags == [True, False]


def test_ar_rolling_is_the_summed_cross_entropy(ar, one_thread):
    text = "def add(a, b):\n    return a + b\n\n\nclass Point:\n    def __init__(self, x, y):\n        self.x = x\n"
    ids = ar.encode(text)
    tokens = torch.tensor([[ar.eod_id, *ids]])
    with torch.no_grad():
        direct = -F.cross_entropy(real_logits(ar, ar.model(tokens[:, :-1]).logits[0]), tokens[0, 1:], reduction="sum")
        direct = direct.item()
    request = [Instance("loglikelihood_rolling", {}, (text,), 0)]
    assert CrossoverLM(ar).loglikelihood_rolling(request)[0] == pytest.approx(direct, abs=1e-3)

    # windowed (16-token sequences): lm-eval's disjoint windows, each scored directly, add up to the bridge's total
    assert len(ids) > 40
    windowed = 0.0
    with torch.no_grad():
        for window in get_rolling_token_windows(ids, ar.eod_id, 15, context_len=1):
            context, continuation = make_disjoint_window(window)
            seq = torch.tensor([context + continuation])
            logits = real_logits(ar, ar.model(seq[:, :-1]).logits[0, len(context) - 1 :])
            windowed -= F.cross_entropy(logits, seq[0, len(context) :], reduction="sum").item()
    rolled = CrossoverLM(ar, max_length=16, batch_size=3).loglikelihood_rolling(request)[0]
    assert rolled == pytest.approx(windowed, abs=1e-3)
    assert abs(rolled - direct) > 1e-2  # short windows see less context: a different number


def test_mdlm_end_to_end_and_reproducible(mdlm, local_tasks, one_thread):
    results = run_lm_eval(
        mdlm, ["crossover_pyfacts_group"], include_path=local_tasks, include_defaults=False, limit=12, mc_samples=4
    )
    assert set(results) == {"lm_eval:crossover_pyfacts_group", "lm_eval:crossover_pyfacts"}
    result = results["lm_eval:crossover_pyfacts"]
    assert 0.0 <= result.metrics["acc"] <= 1.0 and 0.0 <= result.metrics["acc_norm"] <= 1.0
    assert result.item_ids == [str(i) for i in range(12)]
    assert all(v in (0.0, 1.0) for v in result.item_metrics["acc"])
    # a group's items are its tasks' documents, and its score their mean
    group = results["lm_eval:crossover_pyfacts_group"]
    assert group.item_ids == [f"crossover_pyfacts/{i}" for i in range(12)]
    assert group.item_metrics["acc"] == result.item_metrics["acc"]
    assert group.metrics["acc"] == pytest.approx(result.metrics["acc"])

    pairs = [("import os\nimport", " sys"), ("def f(x):\n    return", " x + 1"), ("", "import re")]
    elbo = {"mc_samples": 8, "mdlm_block": None}
    first = CrossoverLM(mdlm, seed=3, **elbo).loglikelihood(ll_requests(pairs))
    again = CrossoverLM(mdlm, seed=3, **elbo).loglikelihood(ll_requests(pairs[::-1]))[::-1]
    other = CrossoverLM(mdlm, seed=4, **elbo).loglikelihood(ll_requests(pairs))
    assert first == again  # same seed: the same draws, whatever order the requests come in
    assert [s for s, _ in first] != [s for s, _ in other]
    # decoded left to right (the default, one token per step; a string when it comes from --model_args): exact, no
    # seed; in blocks of 2 tokens per step: another number
    ordered = [
        CrossoverLM(mdlm, seed=seed, **kw).loglikelihood(ll_requests(pairs))
        for seed, kw in ((3, {}), (4, {"mdlm_block": "1"}), (3, {"mdlm_block": 2}))
    ]
    assert ordered[0] == ordered[1] and [s for s, _ in ordered[0]] != [s for s, _ in first]
    assert [s for s, _ in ordered[2]] != [s for s, _ in ordered[0]]
    assert [g for _, g in ordered[0]] == [g for _, g in first]  # is_greedy does not depend on the scorer
    assert all(s < 0.0 and math.isfinite(s) for s, _ in first)
    # is_greedy for MDLM: all continuation positions masked at once, their argmax fill is the continuation
    ctx = [mdlm.eod_id, *mdlm.encode("import os\n")]
    with torch.no_grad():
        logits = mdlm.model(torch.tensor([ctx + [mdlm.mask_id] * 2])).logits[0, len(ctx) :]
    fill = logits.argmax(-1).tolist()
    runner_up = [fill[0], int(logits[1].topk(2).indices[1])]  # the second position's second choice: not greedy
    for ids in (fill, runner_up):  # the texts tokenize back to these tokens
        assert mdlm.encode("import os\n" + mdlm.decode(ids)) == ctx[1:] + ids
    requests = ll_requests([("import os\n", mdlm.decode(fill)), ("import os\n", mdlm.decode(runner_up))])
    assert [g for _, g in CrossoverLM(mdlm, mc_samples=2).loglikelihood(requests)] == [True, False]

    rolling = CrossoverLM(mdlm, mc_samples=4, max_length=16).loglikelihood_rolling(
        [Instance("loglikelihood_rolling", {}, ("import os\nimport sys\n" * 4,), 0)]
    )
    assert rolling[0] < 0.0 and math.isfinite(rolling[0])


def test_the_choices_of_an_mdlm_item_share_their_masks(mdlm, one_thread):
    """Requests with one context (an item's choices) get the same masks, batched together or apart, so the choice
    that wins is the model's answer and not the draw's; another context gets masks of its own."""
    pairs = [("import os\nimport", " sys"), ("def f(x):\n    return", " sys"), ("import os\nimport", " sys")]
    for batch_size in (1, 3):
        scores = [
            s
            for s, _ in CrossoverLM(mdlm, mc_samples=4, mdlm_block=None, seed=0, batch_size=batch_size).loglikelihood(
                ll_requests(pairs)
            )
        ]
        assert scores[0] == scores[2] and scores[0] != scores[1]


def test_generate_until_follows_the_sampler(ar, mdlm, local_tasks, one_thread):
    sampling = pytest.importorskip("crossover.evals.sampling")
    for em in (ar, mdlm):
        results = run_lm_eval(em, ["crossover_pyfacts_gen"], include_path=local_tasks, include_defaults=False, limit=6)
        result = results["lm_eval:crossover_pyfacts_gen"]
        assert 0.0 <= result.metrics["exact_match_strip"] <= 1.0
        assert result.item_ids == [str(i) for i in range(6)] and list(result.item_metrics) == ["exact_match_strip"]

    # greedy AR: the bridge returns the sampler's tokens, decoded and cut at the first stop string
    lm = CrossoverLM(ar)
    requests = [
        Instance("generate_until", {}, (doc["context"], {"until": ["\n"], "max_gen_toks": 5}), i)
        for i, doc in enumerate(DOCS[:4])
    ]
    texts = lm.generate_until(requests)
    for doc, text in zip(DOCS[:4], texts, strict=True):
        new = sampling.generate(ar, [[ar.eod_id, *ar.encode(doc["context"])]], 5, stop_ids=[ar.eod_id])[0]
        assert text == ar.decode(new).split("\n")[0]
        assert len(ar.encode(text)) <= 5


def test_registered_as_crossover(tiny_checkpoints, one_thread):
    cls = get_model("crossover")
    assert cls is CrossoverLM and "hf" in model_registry  # lm-eval's own models stay reachable
    lm = cls.create_from_arg_string(f"pretrained={tiny_checkpoints['mdlm']},mc_samples=4,batch_size=2,device=cpu")
    assert (lm.mc_samples, lm.mdlm_block, lm.batch_size, lm.em.objective, str(lm.device)) == (4, 1, 2, "mdlm", "cpu")
    (score, greedy), *_ = lm.loglikelihood(ll_requests([("import os\nimport", " sys")]))
    assert score < 0.0 and isinstance(greedy, bool)
