"""Shared corpora, specs and fixtures for the data-layer tests (no tests here).

Small local corpora only (a few hundred documents), real tokenizers and real `datasets`; every cache goes to a
temporary directory.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is unreachable: fail fast instead of retrying
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from crossover.data import PreparedData, prepare  # noqa: E402
from crossover.specs import TrialSpec, parse_study  # noqa: E402
from crossover.specs.study import DataSpec  # noqa: E402

WORDS = (
    "the model data token budget epoch repeat shuffle window batch loss mask diffusion order seed corpus "
    "document quality tier held out train learn value sample river stone light quiet early late small large"
).split()


def make_documents(n: int = 300, seed: int = 0) -> list[dict[str, Any]]:
    """Deterministic documents: half prose, half Python-like code, lengths from a few words to a few KB.

    Each has an `id`, `text` and a `quality_score` (a number unrelated to the heuristics)."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        if i % 2 == 0:
            sentences = []
            for _ in range(rng.randint(1, 40)):
                words = [rng.choice(WORDS) for _ in range(rng.randint(4, 16))]
                sentences.append(" ".join(words).capitalize() + rng.choice(".!?"))
            text = " ".join(sentences)
        else:
            funcs = []
            for j in range(rng.randint(1, 12)):
                doc = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10)))
                body = "\n".join(f"    x = x * {rng.randint(1, 99)} + {j}" for _ in range(rng.randint(1, 6)))
                funcs.append(f'def f_{i}_{j}(x):\n    """{doc}."""\n{body}\n    return x\n')
            text = "\n\n".join(funcs)
        docs.append({"id": f"doc-{i:04d}", "text": text, "quality_score": rng.random()})
    return docs


def write_jsonl(path: Path, docs: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for doc in docs:
            f.write(json.dumps(doc) + "\n")
    return path


def data_spec(source: Path | str, cache: Path, **overrides: Any) -> DataSpec:
    """A small data spec: a 512-token BPE and 5k held-out tokens."""
    values: dict[str, Any] = {
        "corpus": {"source": str(source)},
        "tokenizer": {"bpe_vocab": 512},
        "seq_len": 32,
        "heldout_tokens": 5000,
        "cache_dir": str(cache),
    }
    values.update(overrides)
    return DataSpec.model_validate(values)


def make_trials(
    data: DataSpec,
    unique: int,
    total: int,
    *,
    seq_len: int = 32,
    sequences: int = 8,
    micro_batch: int = 2,
    workers: int = 1,
    seeds: tuple[int, ...] = (0,),
    quality: str = "all",
) -> list[TrialSpec]:
    """The AR and MDLM trials (per seed) of one cell, through the real spec loader and grid expansion."""
    spec = parse_study(
        {
            "name": "data-test",
            "data": {**data.model_dump(mode="json"), "seq_len": seq_len, "quality": quality, "unique_tokens": unique},
            "model": "nano",
            "train": {
                "total_tokens": total,
                "global_batch_tokens": sequences * seq_len,
                "micro_batch": micro_batch,
                "warmup_tokens": 0,
            },
            "resources": {"workers": workers},
            "grid": {"objective": ["ar", "mdlm"]},
            "seeds": list(seeds),
        }
    )
    return spec.expand()


_SHARED: dict[str, Any] = {}


def shared_corpus(factory: pytest.TempPathFactory) -> Path:
    """One small jsonl corpus (300 documents) per test session, shared by the data test modules."""
    if "corpus" not in _SHARED:
        _SHARED["corpus"] = write_jsonl(factory.mktemp("corpus") / "docs.jsonl", make_documents())
    return _SHARED["corpus"]


def shared_spec(factory: pytest.TempPathFactory) -> DataSpec:
    if "spec" not in _SHARED:
        _SHARED["spec"] = data_spec(shared_corpus(factory), factory.mktemp("cache"))
    return _SHARED["spec"]


def shared_store(factory: pytest.TempPathFactory) -> PreparedData:
    """The prepared store of the shared corpus, for the tests that only read it."""
    if "store" not in _SHARED:
        _SHARED["store"] = prepare(shared_spec(factory))
    return _SHARED["store"]
