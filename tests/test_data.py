"""The data layer: corpus sources, tokenizers, the token store (caching, corruption, kills), held-out split, quality
tiers, the trainer-facing stream, and the `crossover data` / `validate` / `plan` commands. Real tokenizers and
real `datasets` on small local corpora; the full stdlib corpus is only listed (never tokenized) here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from typer.testing import CliRunner

from crossover.cli import app
from crossover.data import (
    TIERS,
    Budget,
    CodeQualityScorer,
    DataError,
    ProseQualityScorer,
    QualityScorer,
    load_corpus,
    prepare,
    store_dir,
    train_stream,
)
from crossover.data.corpus import fingerprint, size_bound, stdlib_files
from crossover.specs import padded_vocab
from crossover.specs.study import CorpusSpec, DataSpec

from .conftest import ROOT
from .test_data_support import (
    data_spec,
    make_documents,
    make_trials,
    shared_corpus,
    write_jsonl,
)

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("default_cache")


@pytest.fixture
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_corpus(tmp_path_factory)


# ------------------------------------------------------------------------------------------------------ corpora


def test_stdlib_corpus_is_the_interpreters_own_py_files_in_sorted_order():
    ds = load_corpus(CorpusSpec())
    root, files = stdlib_files()
    assert ds.column_names == ["id", "text", "path"]
    assert len(ds) == len(files) > 500
    ids = ds["id"]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(i.endswith(".py") for i in ids)
    assert not any(part in ("site-packages", "dist-packages") for i in ids for part in i.split("/"))
    assert "json/decoder.py" in ids
    row = ds[ids.index("json/decoder.py")]
    assert row["path"] == str(root / "json" / "decoder.py")
    assert row["text"] == Path(row["path"]).read_text()
    # the cheap parts validate uses: a fingerprint and a size bound without reading files
    assert fingerprint(CorpusSpec()) == fingerprint(CorpusSpec())
    bound = size_bound(CorpusSpec())
    assert bound is not None and bound.documents == len(files)
    assert bound.tokens >= sum(len(t.encode()) for t in ds["text"])


def fake_site_packages(root: Path) -> list[dict]:
    """A small site-packages tree: packages of .py files, one file a copy of another, one empty, and files that are
    not documents (compiled caches, hidden folders, other extensions)."""
    docs = [d for d in make_documents(120, seed=5) if d["text"].startswith("def ")]
    for i, doc in enumerate(docs):
        path = root / f"pkg_{i % 4}" / ("sub" if i % 3 else "") / f"mod_{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(doc["text"])
    (root / "pkg_0" / "copy_of_mod_1.py").write_text(docs[1]["text"])
    (root / "pkg_1" / "empty.py").write_text("")
    for skipped in ("pkg_2/__pycache__/mod_2.py", ".hidden/x.py", "pkg_3/data.txt"):
        (root / skipped).parent.mkdir(parents=True, exist_ok=True)
        (root / skipped).write_text("print('not a document')\n")
    return docs


def test_python_packages_corpus_is_the_environments_site_packages(tmp_path, monkeypatch):
    import sysconfig

    site = tmp_path / "site-packages"
    docs = fake_site_packages(site)
    paths = sysconfig.get_paths()
    monkeypatch.setattr(sysconfig, "get_paths", lambda *a, **k: {**paths, "purelib": str(site), "platlib": str(site)})
    corpus = CorpusSpec(source="python-packages")
    ds = load_corpus(corpus)
    ids = ds["id"]
    assert len(ids) == len(docs) + 2 and ids == sorted(ids)  # the copy and the empty file are still documents here
    assert "pkg_0/copy_of_mod_1.py" in ids and not any("__pycache__" in i or "hidden" in i for i in ids)
    bound = size_bound(corpus)
    assert bound.documents == len(ids) and bound.tokens >= sum(len(t.encode()) for t in ds["text"])
    # the store drops the copy and the empty file, and holds out documents by content hash
    spec = DataSpec(
        corpus=corpus, tokenizer={"bpe_vocab": 300}, seq_len=32, heldout_tokens=2000, cache_dir=str(tmp_path / "cache")
    )
    data = prepare(spec)
    assert data.manifest["documents"] == len(docs)
    assert data.manifest["duplicates_dropped"] == 1 and data.manifest["empty_dropped"] == 1
    held = np.flatnonzero(data.heldout)
    order = np.argsort(data.digests, kind="stable")
    assert set(order[: len(held)]) == set(held) and 0 < len(held) < len(docs)
    stats = runner.invoke(app, ["data", "stats", str(_packages_spec(tmp_path, "1k"))])
    assert stats.exit_code == 0, stats.output
    assert f"corpus      python-packages: {len(docs)} documents (1 duplicates, 1 empty dropped)" in stats.output
    # a budget beyond the corpus is refused at validate, naming the size available
    too_big = runner.invoke(app, ["validate", str(_packages_spec(tmp_path, "10M"))])
    assert (
        too_big.exit_code == 2 and "exceeds the training tokens available in corpus python-packages" in too_big.output
    )


def _packages_spec(tmp_path: Path, unique: str) -> Path:
    path = tmp_path / f"packages-{unique}.yaml"
    path.write_text(
        "name: packages\n"
        f"data: {{corpus: python-packages, tokenizer: {{bpe_vocab: 300}}, seq_len: 32, heldout_tokens: 2000, "
        f"cache_dir: {tmp_path / 'cache'}}}\n"
        f"train: {{total_tokens: 20M, global_batch_tokens: 1024, micro_batch: 8, warmup_tokens: 1k}}\n"
        f"grid: {{objective: [ar, mdlm], unique_tokens: [{unique}]}}\n"
    )
    return path


def _write_formats(base: Path, docs: list[dict]) -> dict[str, Path | str]:
    """The same documents as jsonl, json, parquet, csv, a directory of txt files and a glob of .py files."""
    out: dict[str, Path | str] = {}
    out["jsonl"] = write_jsonl(base / "a.jsonl", docs)
    (base / "b.json").write_text(json.dumps(docs))
    out["json"] = base / "b.json"
    pq.write_table(pa.Table.from_pylist(docs), base / "c.parquet")
    out["parquet"] = base / "c.parquet"
    import csv

    with open(base / "d.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "text", "quality_score"])
        writer.writeheader()
        writer.writerows(docs)
    out["csv"] = base / "d.csv"
    (base / "txt").mkdir()
    (base / "code").mkdir()
    for doc in docs:
        (base / "txt" / f"{doc['id']}.txt").write_text(doc["text"])
        (base / "code" / f"{doc['id']}.py").write_text(doc["text"])
    out["txt"] = base / "txt"
    out["glob"] = str(base / "code" / "*.py")
    return out


def test_local_formats_give_the_same_documents(tmp_path):
    docs = make_documents(24, seed=3)
    texts = [d["text"] for d in docs]
    for name, source in _write_formats(tmp_path, docs).items():
        ds = load_corpus(CorpusSpec(source=str(source)), cache_dir=tmp_path / "hf")
        assert {"id", "text"} <= set(ds.column_names), name
        assert ds["text"] == texts, name
        assert ds.features["id"].dtype == "string"
    # a configurable text field, ids made when missing, and a clear error for a missing field
    renamed = [{"content": d["text"]} for d in docs]
    write_jsonl(tmp_path / "r" / "r.jsonl", renamed)
    ds = load_corpus(CorpusSpec(source=str(tmp_path / "r"), text_field="content"), cache_dir=tmp_path / "hf")
    assert ds["text"] == texts and ds["id"] == [str(i) for i in range(len(docs))]
    with pytest.raises(DataError, match="no text field 'body'.*content"):
        load_corpus(CorpusSpec(source=str(tmp_path / "r"), text_field="body"), cache_dir=tmp_path / "hf")
    with pytest.raises(DataError, match="does not exist"):
        load_corpus(CorpusSpec(source=str(tmp_path / "missing.jsonl")))


def test_hf_source_loads_a_dataset_directory_streaming_or_not(tmp_path):
    """`hf:<name>` goes through datasets.load_dataset; the hub is unreachable here, so it reads a local dataset
    directory in the hub's layout (data/train-*.jsonl), which load_dataset resolves the same way."""
    docs = make_documents(30, seed=5)
    rows = [{"content": d["text"], "quality_score": d["quality_score"], "extra": 1} for d in docs]
    write_jsonl(tmp_path / "ds" / "data" / "train-00000-of-00001.jsonl", rows)
    loaded = []
    for streaming in (False, True):
        corpus = CorpusSpec(source=f"hf:{tmp_path / 'ds'}", text_field="content", streaming=streaming)
        ds = load_corpus(corpus, cache_dir=tmp_path / "hf", columns=["quality_score"])
        assert sorted(ds.column_names) == ["id", "quality_score", "text"]
        loaded.append((ds["text"], ds["quality_score"]))
    assert loaded[0] == loaded[1] and loaded[0][0] == [d["text"] for d in docs]
    with pytest.raises(DataError, match="cannot load Hugging Face dataset"):
        load_corpus(CorpusSpec(source=f"hf:{tmp_path / 'ds'}", split="nope"), cache_dir=tmp_path / "hf")


def test_hf_store_and_tiers_from_a_score_column(tmp_path):
    docs = make_documents(120, seed=9)
    write_jsonl(tmp_path / "ds" / "data" / "train.jsonl", docs)
    spec = data_spec(f"hf:{tmp_path / 'ds'}", tmp_path / "cache", heldout_tokens=2000, quality_scorer="quality_score")
    data = prepare(spec)
    assert data.manifest["quality"]["scorer"] == "quality_score"
    by_tier = [data.scores[data.tiers == t] for t in range(3)]
    assert by_tier[0].max() <= by_tier[1].min() and by_tier[1].max() <= by_tier[2].min()
    with pytest.raises(DataError, match="no column 'stars'; its columns are id, text, quality_score"):
        prepare(data_spec(f"hf:{tmp_path / 'ds'}", tmp_path / "cache", quality_scorer="stars"))


# ---------------------------------------------------------------------------------------------------- tokenizers


def test_bpe_has_special_tokens_fits_its_vocab_and_round_trips(small):
    assert (small.eod_id, small.mask_id, small.pad_id) == (0, 1, 2)
    assert small.vocab_size <= 512 == small.padded_vocab == padded_vocab(512)
    assert small.dtype == np.uint16
    assert int(small.tokens.max()) < small.vocab_size
    for doc in small.heldout_documents(limit=3):
        ids = small.encode(doc["text"])
        assert small.decode(ids) == doc["text"]  # byte-level BPE is lossless
    # a literal special token inside a document is text, never a separator
    assert small.eod_id not in small.encode("x <|endoftext|> <|mask|> y")
    tokenizers = list((Path(small.root).parents[1] / "tokenizers").glob("*.json"))
    assert len(tokenizers) == 1, "the tokenizer is cached by a hash of corpus and settings"


def _pretrained_file(tmp_path: Path, texts: list[str]) -> tuple[Path, int]:
    """A byte-level BPE tokenizer.json with an end-of-document token but no mask token, like GPT-NeoX's."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer=trainer)
    path = tmp_path / "pretrained" / "tokenizer.json"
    path.parent.mkdir()
    tok.save(str(path))
    return path, tok.get_vocab_size(with_added_tokens=True)


def test_pretrained_tokenizer_gets_a_mask_token_and_its_stated_size_is_checked(tmp_path, corpus_file):
    path, size = _pretrained_file(tmp_path, [d["text"] for d in make_documents(60)])
    good = data_spec(corpus_file, tmp_path / "cache", tokenizer={"pretrained": str(path.parent), "vocab_size": size})
    with pytest.raises(DataError, match=rf"has {size + 1} tokens \(mask token included\).*vocab_size: {size + 1}"):
        prepare(good)  # the stated size forgot the mask token
    good = good.model_copy(update={"tokenizer": good.tokenizer.model_copy(update={"vocab_size": size + 1})})
    messages: list[str] = []
    data = prepare(good, notify=messages.append)
    assert data.mask_id == size and data.vocab_size == size + 1
    assert data.pad_id == data.eod_id == Tokenizer.from_file(str(path)).token_to_id("<|endoftext|>")
    assert any("added <|mask|>" in m for m in messages)
    assert data.padded_vocab == padded_vocab(size + 1) >= data.vocab_size


def test_a_large_vocabulary_is_stored_as_uint32(tmp_path, corpus_file):
    vocab = {"[UNK]": 0, "<|endoftext|>": 1, **{w: i + 2 for i, w in enumerate(make_words())}}
    for i in range(len(vocab), 70_000):
        vocab[f"w{i}"] = i
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "big.json"))
    spec = data_spec(
        corpus_file, tmp_path / "cache", tokenizer={"pretrained": str(tmp_path / "big.json"), "vocab_size": 70_001}
    )
    data = prepare(spec)
    assert data.dtype == np.uint32 and data.mask_id == 70_000
    assert data.padded_vocab == padded_vocab(70_001) == 70_016


def make_words() -> list[str]:
    from .test_data_support import WORDS

    return sorted(set(WORDS) | {w.capitalize() for w in WORDS} | set('.!?=+*():"_,0123456789'))


# ------------------------------------------------------------------------------------------------- store, caching


def test_store_layout_manifest_and_cache_hit(small, small_spec):
    m = small.manifest
    assert set(m["files"]) == {"tokens.bin", "docs.npz", "heldout.jsonl", "tokenizer.json"}
    assert small.tokens.dtype == np.uint16 and len(small.tokens) == m["tokens"] == small.num_tokens
    ends = small.offsets[1:] - 1
    assert (small.tokens[ends] == small.eod_id).all(), "each document ends with end-of-document"
    again = prepare(small_spec)
    assert not again.built and again.root == small.root
    assert store_dir(small_spec) == small.root
    # budget, seq_len, quality tier and objective never change the store
    assert (
        store_dir(small_spec.model_copy(update={"seq_len": 64, "quality": "high", "unique_tokens": 10})) == small.root
    )


def test_builds_are_deterministic(tmp_path, corpus_file, small):
    other = prepare(data_spec(corpus_file, tmp_path / "cache"))
    assert other.root != small.root
    for name in ("tokens.bin", "docs.npz", "tokenizer.json", "heldout.jsonl"):
        assert other.manifest["files"][name]["sha256"] == small.manifest["files"][name]["sha256"], name


def _tamper(kind: str, root: Path) -> None:
    tokens = root / "tokens.bin"
    if kind == "truncate":
        with open(tokens, "r+b") as f:
            f.truncate(tokens.stat().st_size // 2)
    elif kind == "flip bytes":
        with open(tokens, "r+b") as f:
            f.seek(100)
            byte = f.read(1)
            f.seek(100)
            f.write(bytes([byte[0] ^ 0xFF]))
    elif kind == "no manifest":
        (root / "manifest.json").unlink()
    elif kind == "bad manifest":
        (root / "manifest.json").write_text("{not json")
    elif kind == "missing docs":
        (root / "docs.npz").unlink()


@pytest.mark.parametrize("kind", ["truncate", "flip bytes", "no manifest", "bad manifest", "missing docs"])
def test_a_damaged_store_is_detected_and_rebuilt(tmp_path, corpus_file, kind):
    spec = data_spec(corpus_file, tmp_path / "cache")
    first = prepare(spec)
    digest = first.manifest["files"]["tokens.bin"]["sha256"]
    del first
    _tamper(kind, store_dir(spec))
    messages: list[str] = []
    again = prepare(spec, notify=messages.append)
    assert again.built, "the damaged store was used"
    assert len(messages) == 1 and "rebuilding" in messages[0] and str(store_dir(spec)) in messages[0]
    assert ("corrupted" in messages[0]) == (kind in ("truncate", "flip bytes"))
    assert again.manifest["files"]["tokens.bin"]["sha256"] == digest
    assert not prepare(spec).built


def test_a_corrupted_cached_tokenizer_is_retrained(tmp_path, corpus_file):
    spec = data_spec(corpus_file, tmp_path / "cache")
    first = prepare(spec)
    (tok_file,) = (tmp_path / "cache" / "tokenizers").glob("*.json")
    tok_file.write_text("{garbage")
    other = spec.model_copy(update={"quality_scorer": "prose"})  # a new store, same tokenizer key
    messages: list[str] = []
    data = prepare(other, notify=messages.append)
    assert any("unreadable" in m for m in messages)
    assert data.manifest["files"]["tokenizer.json"]["sha256"] == first.manifest["files"]["tokenizer.json"]["sha256"]


KILLER = """
import os, signal, sys
from crossover.data import prepare
from crossover.specs.study import DataSpec

spec = DataSpec.model_validate_json(sys.argv[1])
stage_to_die_in = sys.argv[2]

def progress(stage, done, total):
    if stage == stage_to_die_in:
        os.kill(os.getpid(), signal.SIGKILL)

prepare(spec, progress=progress)
"""


@pytest.mark.parametrize("stage", ["training tokenizer", "tokenizing", "writing store"])
def test_a_build_killed_halfway_leaves_nothing_a_later_run_uses(tmp_path, corpus_file, stage):
    spec = data_spec(corpus_file, tmp_path / "cache")
    result = subprocess.run(
        [sys.executable, "-c", KILLER, spec.model_dump_json(), stage], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    stores = tmp_path / "cache" / "stores"
    assert not store_dir(spec).exists()
    leftovers = [p for p in stores.iterdir() if p.name.startswith(".tmp-")]
    if stage != "training tokenizer":
        assert leftovers and not (leftovers[0] / "manifest.json").exists()
    assert [p.name for p in (tmp_path / "cache").glob("tokenizers/*") if not p.name.endswith(".json")] == []
    data = prepare(spec)
    assert data.built and data.manifest["documents"] == 300
    assert [p for p in stores.iterdir() if p.name.startswith(".tmp-")] == [], "stale temporaries are removed"


# ---------------------------------------------------------------------------------------------------- held out


def test_heldout_split_is_sized_reported_and_disjoint(small, small_spec):
    held = small.manifest["heldout"]
    assert held["requested"] == small_spec.heldout_tokens == 5000
    docs = np.flatnonzero(small.heldout)
    lengths = small.document_lengths(docs)
    assert held["tokens"] == lengths.sum() >= 5000 and held["documents"] == len(docs)
    # the smallest prefix of the hash order: without its last document it would be too small
    order = np.argsort(small.digests, kind="stable")
    assert set(order[: len(docs)]) == set(docs)
    last = order[len(docs) - 1]
    assert lengths.sum() - small.document_lengths(np.array([last]))[0] < 5000
    assert not held["tokenizer_saw_heldout"]
    assert (small.tiers[docs] == -1).all() and (small.tiers[~small.heldout] >= 0).all()
    assert small.manifest["train"]["tokens"] + held["tokens"] == small.num_tokens
    # windows for held-out loss and documents for cloze tasks
    windows = small.heldout_windows(32)
    assert windows.dtype == np.int64 and windows.shape == (held["tokens"] // 32, 32)
    assert small.heldout_windows(32, max_windows=3).shape == (3, 32)
    texts = small.heldout_documents()
    assert len(texts) == len(docs)
    stream = np.concatenate([small.encode(d["text"]) + [small.eod_id] for d in texts])
    assert (stream[: windows.size] == windows.ravel()).all()
    corpus_ids = {d["id"] for d in make_documents()}
    assert {d["id"] for d in texts} <= corpus_ids


def test_corpus_too_small_for_the_heldout_size(tmp_path, corpus_file):
    with pytest.raises(DataError, match="leaves no training documents"):
        prepare(data_spec(corpus_file, tmp_path / "cache", heldout_tokens="10M"))


def test_a_reserve_larger_than_the_corpus_still_leaves_the_bpe_half_of_it(tmp_path, corpus_file):
    """8 bytes per held-out token can exceed a small corpus (a 2M-token held-out set of a trimmed standard library
    did): the BPE then learned no merges from an empty training set. It keeps half the corpus, here enough for the
    held-out set too."""
    corpus_bytes = sum(len(d["text"].encode()) for d in make_documents())
    spec = data_spec(corpus_file, tmp_path / "cache", heldout_tokens=corpus_bytes // 8 + 1)
    data = prepare(spec)
    assert data.vocab_size > 256 + 3, "the BPE learned merges"
    assert not data.manifest["heldout"]["tokenizer_saw_heldout"]
    assert data.manifest["train"]["tokens"] > 0


def test_duplicates_and_empty_documents_are_dropped(tmp_path):
    docs = make_documents(80, seed=2)
    docs += [dict(docs[3], id="copy"), {"id": "blank", "text": "  \n", "quality_score": 0.0}]
    spec = data_spec(write_jsonl(tmp_path / "d.jsonl", docs), tmp_path / "cache", heldout_tokens=1000)
    data = prepare(spec)
    assert data.manifest["documents"] == 80
    assert data.manifest["duplicates_dropped"] == 1 and data.manifest["empty_dropped"] == 1
    assert len(set(data.digests.tolist())) == 80


# ------------------------------------------------------------------------------------------------------ quality

CLEAN = '''\
"""Utilities to merge sorted sequences."""


def merge(left: list[int], right: list[int]) -> list[int]:
    """Merge two sorted lists into one sorted list.

    Runs in linear time: both inputs are walked once.
    """
    merged = []
    i = j = 0
    while i < len(left) and j < len(right):
        # take the smaller head so the output stays sorted
        if left[i] <= right[j]:
            merged.append(left[i])
            i += 1
        else:
            merged.append(right[j])
            j += 1
    merged.extend(left[i:])
    merged.extend(right[j:])
    return merged
'''


def test_heuristic_scorers_rank_clean_text_above_noise():
    code = CodeQualityScorer()
    assert isinstance(code, QualityScorer)
    table = (
        "DATA = [\n"
        + "\n".join(", ".join(f"0x{i * j % 256:02x}" for j in range(40)) + "," for i in range(40))
        + "\n]\n"
    )
    minified = "x=1;y=2\n" * 3
    assert code.score(CLEAN, "lib/merge.py") > code.score(table, "lib/table.py")
    assert code.score(CLEAN, "lib/merge.py") > code.score(minified, "lib/m.py")
    assert code.score(CLEAN, "lib/merge.py") > code.score(CLEAN, "tests/test_merge.py")
    prose = ProseQualityScorer()
    good = "The river ran quiet and cold under the stone bridge. It was late in the year, and the light was thin. " * 5
    noise = "{{ }} ### ... ### {{ }} 1234 5678 ;;; ||| @@@ " * 10
    assert prose.score(good) > prose.score(noise)
    assert prose.score("") == code.score("") == 0.0


def test_auto_scorer_and_tiers_of_the_heuristics(tmp_path):
    docs = [{"id": d["id"], "text": d["text"]} for d in make_documents(240, seed=4)]  # no score column
    code_docs = [d for i, d in enumerate(docs) if i % 2 == 1]
    spec = data_spec(write_jsonl(tmp_path / "c.jsonl", code_docs), tmp_path / "cache", heldout_tokens=2000)
    assert prepare(spec).manifest["quality"]["scorer"] == "code"
    prose_docs = [d for i, d in enumerate(docs) if i % 2 == 0]
    spec = data_spec(write_jsonl(tmp_path / "p.jsonl", prose_docs), tmp_path / "cache", heldout_tokens=2000)
    data = prepare(spec)
    assert data.manifest["quality"]["scorer"] == "prose"
    train = np.flatnonzero(~data.heldout)
    total = data.document_lengths(train).sum()
    longest = data.document_lengths(train).max()
    for t, name in enumerate(TIERS):
        members = np.flatnonzero(data.tiers == t)
        tokens = data.document_lengths(members).sum()
        assert abs(tokens - total / 3) <= longest, "tiers are token terciles"
        assert data.available_tokens(name) == tokens == data.manifest["quality"]["tiers"][name]["tokens"]
        if t:
            assert data.scores[members].min() >= data.scores[data.tiers == t - 1].max()


# ----------------------------------------------------------------------------------------- the trainer interface


def test_train_stream_gives_torch_micro_batches_and_exact_accounting(small, small_spec):
    import torch

    ar, mdlm = make_trials(small_spec, unique=3000, total=10_240, seq_len=32, sequences=8, micro_batch=2, workers=2)
    streams = {r: train_stream(ar, small, rank=r) for r in range(2)}
    assert streams[0].grad_accum_steps == ar.grad_accum_steps == 2
    assert streams[0].num_steps == 10_240 // 256 == 40
    steps = list(streams[1])
    assert len(steps) == 40
    for i, step in enumerate(steps):
        assert step.step == i and len(step.micro_batches) == 2
        for mb in step.micro_batches:
            assert isinstance(mb, torch.Tensor) and mb.dtype == torch.int64 and mb.shape == (2, 32)
        assert step.tokens_seen == (i + 1) * 256
        assert step.epoch == pytest.approx(step.tokens_seen / 3000)
        assert step.unique_tokens_seen == min(step.tokens_seen, 3000)
    assert steps[-1].tokens_seen == 10_240 and steps[-1].epoch == pytest.approx(10_240 / 3000)  # fractional last epoch
    assert train_stream(mdlm, small, rank=1).order_hash == streams[1].order_hash == streams[0].order_hash
    (other_seed, _) = make_trials(small_spec, unique=3000, total=10_240, micro_batch=2, workers=2, seeds=(1,))
    assert train_stream(other_seed, small).order_hash != streams[0].order_hash
    state = streams[1].state()
    assert state["step"] == 40 and (state["epoch"], state["position"]) == divmod(10_240, 3000)


def test_budget_seed_holds_the_documents_of_a_budget_fixed_across_seeds(small, small_spec):
    def ar_streams(data: DataSpec) -> list:
        trials = make_trials(data, unique=3000, total=10_240, seeds=(0, 1))
        return [train_stream(t, small) for t in trials if t.objective == "ar"]

    own = ar_streams(small_spec)  # without data.budget_seed, each seed draws its own documents
    assert set(own[0].budget.documents) != set(own[1].budget.documents)
    fixed_spec = DataSpec.model_validate({**small_spec.model_dump(mode="json"), "budget_seed": 7})
    fixed = ar_streams(fixed_spec)
    assert list(fixed[0].budget.documents) == list(fixed[1].budget.documents)
    assert list(fixed[0].budget.documents) == list(Budget(small, 3000, 7).documents)
    assert (fixed[0].budget.tokens() == fixed[1].budget.tokens()).all()
    # the data order is still each seed's own: the same unique tokens, shuffled differently
    first = [s.global_batch(0) for s in fixed]
    assert not np.array_equal(first[0], first[1])
    assert fixed[0].order_hash != fixed[1].order_hash
    # the field is in a trial's identity only where it is set: the ids of specs without it are unchanged
    assert "budget_seed" not in small_spec.model_dump(mode="json")
    assert fixed_spec.model_dump(mode="json")["budget_seed"] == 7
    plain, held = make_trials(small_spec, 3000, 10_240)[0], make_trials(fixed_spec, 3000, 10_240)[0]
    assert plain.trial_id != held.trial_id and plain.data.budget_seed is None and held.data.budget_seed == 7


def test_a_budget_beyond_a_tier_fails_with_the_available_size(small, small_spec):
    high = small.available_tokens("high")
    (trial, _) = make_trials(small_spec, unique=high + 1, total=200_000, quality="high")
    with pytest.raises(DataError, match=rf"\({high:,}\) training tokens of quality tier 'high'"):
        train_stream(trial, small)
    (trial, _) = make_trials(small_spec, unique=high, total=200_000, quality="high")
    assert set(train_stream(trial, small).budget.documents) <= set(np.flatnonzero(small.tiers == 2))


def test_a_state_from_another_order_is_refused(small, small_spec):
    (trial, _) = make_trials(small_spec, unique=3000, total=10_240)
    (other, _) = make_trials(small_spec, unique=2000, total=10_240)
    with pytest.raises(DataError, match="another data order"):
        train_stream(trial, small, state=train_stream(other, small).state())
    with pytest.raises(DataError, match="global-batch boundary"):
        train_stream(trial, small, state={"epoch": 0, "position": 5})


# ------------------------------------------------------------------------------------------------------ the CLI

SPEC = """\
name: data-cli
data:
  corpus: {source: "CORPUS"}
  tokenizer: {bpe_vocab: 512}
  seq_len: 32
  heldout_tokens: 5k
  cache_dir: "CACHE"
model: nano
train:
  total_tokens: TOTAL
  global_batch_tokens: 256
  micro_batch: 8
  warmup_tokens: 0
grid:
  objective: [ar, mdlm]
  unique_tokens: [10k, BUDGET]
"""


def _spec(tmp_path: Path, corpus: Path | str, budget: str, extra: str = "", total: str = "1B") -> Path:
    text = SPEC.replace("CORPUS", str(corpus)).replace("CACHE", str(tmp_path / "cache")).replace("BUDGET", budget)
    text = text.replace("TOTAL", total)
    path = tmp_path / "study.yaml"
    path.write_text(text + extra)
    return path


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_a_budget_beyond_the_corpus_fails_validate_and_plan(tmp_path, corpus_file, command):
    # no token store yet: an upper bound from the corpus's bytes rejects budgets that cannot fit
    spec = _spec(tmp_path, corpus_file, "300M")
    result = runner.invoke(app, [command, str(spec)])
    assert result.exit_code == 2, result.output
    assert f"{spec}:16:" in result.output and "grid.unique_tokens[1]" in result.output
    bound = size_bound(CorpusSpec(source=str(corpus_file))).tokens - 5000
    from crossover.specs import format_tokens

    assert f"exceeds the training tokens available in corpus {corpus_file}: at most {format_tokens(bound)}" in (
        result.output
    )
    assert _tree(tmp_path / "cache") == [], "validate writes nothing"
    # with a store the check is exact: a budget under the byte bound but over the real size fails, naming it
    spec = _spec(tmp_path, corpus_file, "100k")
    assert runner.invoke(app, ["validate", str(spec)]).exit_code == 0
    assert runner.invoke(app, ["data", "prepare", str(spec)]).exit_code == 0
    train = prepare(data_spec(corpus_file, tmp_path / "cache")).manifest["train"]["tokens"]
    result = runner.invoke(app, [command, str(spec)])
    assert result.exit_code == 2, result.output
    assert f"exceeds the training tokens available in corpus {corpus_file}: {format_tokens(train)} (" in result.output
    spec = _spec(tmp_path, corpus_file, "70k")
    result = runner.invoke(app, [command, str(spec)])
    assert result.exit_code == 0, result.output
    assert "checked exactly" in result.output


def test_a_tier_budget_is_checked_at_validate(tmp_path, corpus_file):
    spec = _spec(tmp_path, corpus_file, "40k", extra="  quality: [low, high]\n")
    assert runner.invoke(app, ["validate", str(spec)]).exit_code == 0  # the bound cannot tell yet
    assert runner.invoke(app, ["data", "prepare", str(spec)]).exit_code == 0
    result = runner.invoke(app, ["validate", str(spec)])
    assert result.exit_code == 2
    assert "quality tier 'low'" in result.output and "quality tier 'high'" in result.output


def test_a_missing_local_corpus_fails_validate(tmp_path):
    spec = _spec(tmp_path, tmp_path / "nowhere.jsonl", "40k")
    result = runner.invoke(app, ["validate", str(spec)])
    assert result.exit_code == 2
    assert f"{spec}:3:" in result.output and "data.corpus" in result.output and "does not exist" in result.output


def test_remote_corpora_skip_the_size_check(tmp_path):
    _spec(tmp_path, "hf:some-org/some-corpus", "96B", total="100B")
    result = runner.invoke(app, ["validate", str(tmp_path / "study.yaml")])
    assert result.exit_code == 0, result.output
    assert "size check skipped for remote corpus hf:some-org/some-corpus" in result.output


def test_a_data_size_failure_imports_no_heavy_packages(tmp_path, corpus_file):
    spec = _spec(tmp_path, corpus_file, "300M")
    probe = (
        "import sys\nfrom crossover.cli import app\n"
        "try:\n    app(['validate', sys.argv[1]])\n"
        "except SystemExit as e:\n"
        "    print('loaded:', [m for m in ('ray', 'mlflow', 'torch', 'deepspeed', 'datasets') if m in sys.modules])\n"
        "    raise\n"
    )
    result = subprocess.run([sys.executable, "-c", probe, str(spec)], capture_output=True, text=True, env=os.environ)
    assert result.returncode == 2, result.stderr
    assert "loaded: []" in result.stdout and "grid.unique_tokens[1]" in result.stderr


def test_data_prepare_and_stats(tmp_path, corpus_file):
    spec = _spec(tmp_path, corpus_file, "40k", extra="  quality: [all, high]\n")
    first = runner.invoke(app, ["data", "prepare", str(spec)])
    assert first.exit_code == 0, first.output
    assert "built" in first.output and "300 documents" in first.output
    second = runner.invoke(app, ["data", "prepare", str(spec)])
    assert second.exit_code == 0 and "cached" in second.output
    stats = runner.invoke(app, ["data", "stats", str(spec)])
    assert stats.exit_code == 0, stats.output
    for words in ("held out", "quality tiers", "budgets of the grid", "high", "NO", "yes", "1 budget(s) do not fit"):
        assert words in stats.output, words
    as_json = json.loads(runner.invoke(app, ["data", "stats", str(spec), "--json"]).output)
    fits = {(b["quality"], b["unique_tokens"]): b["fits"] for b in as_json["budgets"]}
    assert fits == {("all", 10_000): True, ("all", 40_000): True, ("high", 10_000): True, ("high", 40_000): False}
    assert as_json["documents"] == 300 and as_json["heldout"]["tokens"] >= 5000
    missing = _spec(tmp_path, tmp_path / "nope.jsonl", "40k")
    result = runner.invoke(app, ["data", "prepare", str(missing)])
    assert result.exit_code == 2 and "does not exist" in result.output
