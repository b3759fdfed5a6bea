"""The data-size check `crossover validate` and `crossover plan` run: does every unique budget fit its corpus/tier?

Cheap by design (no torch, no datasets, no tokenizing, nothing written): with a prepared store for the spec's data
settings the check is exact (the store's manifest has the training tokens of the corpus and of each tier);
without one it uses an upper bound from the corpus's bytes (a byte-level tokenizer emits at most one token per
byte), so it rejects only budgets that cannot fit, and says the exact check needs `crossover data prepare`.
A remote hub corpus has no cheap size: the check is skipped, saying so.
"""

from __future__ import annotations

from typing import Any

from crossover.data import corpus as corpora
from crossover.data.errors import DataError
from crossover.data.store import PreparedData, read_manifest, store_dir
from crossover.specs.errors import FieldPath, SpecError
from crossover.specs.loader import Source
from crossover.specs.study import StudySpec
from crossover.specs.tokens import format_tokens, parse_tokens


def check_study_data(spec: StudySpec) -> list[str]:
    """Notes on how the sizes were checked; raises SpecError (naming file, line and the available size) when a
    unique budget is larger than the training tokens of its corpus or quality tier."""
    source: Source = spec._source or Source(None)
    data = spec.data
    name = corpora.describe(data.corpus)
    try:
        manifest = read_manifest(store_dir(data))
    except DataError as exc:
        raise SpecError(source.file, [source.problem(("data", "corpus"), str(exc))]) from None

    pairs = sorted({(t.data.quality, t.unique_tokens) for t in spec.expand()}, key=lambda p: (p[1], p[0]))
    notes: list[str] = []
    available: dict[str, int] = {}
    how: dict[str, str] = {}
    if manifest is not None:
        train = manifest["train"]["tokens"]
        for quality in {q for q, _ in pairs}:
            available[quality] = train if quality == "all" else manifest["quality"]["tiers"][quality]["tokens"]
            how[quality] = (
                f"{format_tokens(manifest['tokens'])} tokens in {manifest['documents']:,} documents minus "
                f"{format_tokens(manifest['heldout']['tokens'])} held out"
                + ("" if quality == "all" else f", tier '{quality}' of {manifest['quality']['scorer']} scores")
            )
        exact = True
        notes.append(f"data: budgets checked exactly against the token store of {name}")
    else:
        if corpora.is_remote(data.corpus):
            return [f"data: size check skipped for remote corpus {name} (run `crossover data prepare` to check it)"]
        try:
            bound = corpora.size_bound(data.corpus)
        except DataError as exc:
            raise SpecError(source.file, [source.problem(("data", "corpus"), str(exc))]) from None
        if bound is None:
            return [
                f"data: size check skipped for {name}: no cheap bound for its format (run `crossover data prepare`)"
            ]
        total = max(0, bound.tokens - data.heldout_tokens)
        for quality in {q for q, _ in pairs}:
            # a tier is a token tercile: at most a third of the training tokens plus one document
            available[quality] = total if quality == "all" else min(total, total // 3 + bound.max_document)
            how[quality] = (
                f"an upper bound from its size: at most one token per byte, minus {format_tokens(data.heldout_tokens)} "
                "held out" + ("" if quality == "all" else f", a third of that plus one document for tier '{quality}'")
            )
        exact = False
        notes.append(
            f"data: budgets checked against an upper bound of {name}'s size; `crossover data prepare` builds the "
            "token store that makes the check exact"
        )

    problems = []
    for quality, unique in pairs:
        if unique <= available[quality]:
            continue
        scope = "" if quality == "all" else f" of quality tier '{quality}'"
        amount = format_tokens(available[quality]) if exact else f"at most {format_tokens(available[quality])}"
        message = (
            f"unique_tokens {format_tokens(unique)} exceeds the training tokens{scope} available in corpus {name}: "
            f"{amount} ({how[quality]}); lower the budget or use a larger corpus"
        )
        problem = source.problem(_budget_path(spec, unique), message)
        if problem not in problems:
            problems.append(problem)
    if problems:
        raise SpecError(source.file, problems)
    return notes


def _budget_path(spec: StudySpec, unique: int) -> FieldPath:
    for i, raw in enumerate(spec.grid.get("unique_tokens", [])):
        try:
            if parse_tokens(raw) == unique:
                return ("grid", "unique_tokens", i)
        except ValueError:
            continue
    return ("data", "unique_tokens")


def budget_fits(spec: StudySpec, data: PreparedData) -> list[dict[str, Any]]:
    """Each (quality tier, unique budget) pair of the study's grid against the prepared store, exactly."""
    rows = []
    pairs = sorted(
        {(t.data.quality, t.unique_tokens, t.total_tokens) for t in spec.expand()}, key=lambda p: (p[1], p[0], p[2])
    )
    for quality, unique, total in pairs:
        available = data.available_tokens(quality)
        rows.append(
            {
                "quality": quality,
                "unique_tokens": unique,
                "total_tokens": total,
                "epochs": total / unique,
                "available": available,
                "fits": unique <= available,
            }
        )
    return rows
