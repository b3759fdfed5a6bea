"""Local folder and glob corpora: every file is read as text unless it is structured (jsonl, json, parquet, csv) or
binary, and whatever is skipped is reported with its reason by `crossover data prepare` and `crossover data stats`
(issue 33: a folder of licence texts and docs once kept only its .txt files, silently)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crossover.cli import app
from crossover.data import DataError, load_corpus, store_dir
from crossover.data.corpus import corpus_files, fingerprint, size_bound
from crossover.specs.study import CorpusSpec

from .test_data_support import data_spec, make_documents, write_jsonl

runner = CliRunner()

pytestmark = pytest.mark.usefixtures("default_cache")

# what a folder of Debian's licence texts and package docs holds: files without an extension, .txt, .md, .rst
READ = [
    "GPL-3",
    "doc/bash/COMPACT.rst",
    "doc/bash/NEWS",
    "doc/bash/README.md",
    "doc/ed/AUTHORS",
    "doc/notes.txt",
    "doc/zlib/FAQ.txt",
    "licences/Apache-2.0",
    "licences/BSD",
]
SKIPPED = {
    ".git/": "hidden",
    "doc/.cache.md": "hidden",
    "doc/app.bin": "binary: a NUL byte in its first 8 KiB",
    "doc/broken": "not a regular file",
    "doc/linked/": "link to a folder",
    "doc/random": "not UTF-8: 60 of its first 60 bytes; convert it (iconv -t UTF-8)",
    "doc/utf16.txt": "binary: a NUL byte in its first 8 KiB",
}


def debian_like_folder(root: Path) -> dict[str, str]:
    """The texts of READ under `root`, plus one of each thing that is skipped (SKIPPED)."""
    docs = [d["text"] for d in make_documents(4 * len(READ), seed=33) if not d["text"].startswith("def ")]
    texts = dict(zip(READ, docs[: len(READ)], strict=True))
    texts["doc/ed/AUTHORS"] += "\nThanks to Fran\u00e7ois M\u00fcller.\n"  # Latin-1 below: a few bytes not UTF-8
    for name, text in texts.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(text.encode("latin-1" if name == "doc/ed/AUTHORS" else "utf-8"))
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "doc" / ".cache.md").write_text("# not a document\n")
    (root / "doc" / "app.bin").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4)
    (root / "doc" / "random").write_bytes(bytes(range(0x80, 0x80 + 60)))
    (root / "doc" / "utf16.txt").write_bytes("text in UTF-16".encode("utf-16"))
    os.symlink(root / "nowhere", root / "doc" / "broken")
    os.symlink(root / "licences", root / "doc" / "linked")
    texts["doc/ed/AUTHORS"] = texts["doc/ed/AUTHORS"].encode("latin-1").decode("utf-8", errors="replace")
    return texts


def test_a_folder_reads_every_text_file_and_names_what_it_skips(tmp_path):
    texts = debian_like_folder(tmp_path / "corpus")
    for fmt in ("auto", "txt"):
        found = corpus_files(CorpusSpec(source=str(tmp_path / "corpus"), format=fmt))
        assert found.format == "txt"
        assert [str(p.relative_to(tmp_path / "corpus")) for p in found.files] == READ, fmt
        assert dict(found.skipped) == SKIPPED, fmt
    ds = load_corpus(CorpusSpec(source=str(tmp_path / "corpus")), cache_dir=tmp_path / "hf")
    assert ds["id"] == READ and ds["text"] == [texts[name] for name in READ]
    bound = size_bound(CorpusSpec(source=str(tmp_path / "corpus")))
    assert bound.documents == len(READ) and bound.tokens >= sum(len(t.encode()) for t in ds["text"])
    # a skipped file that becomes text changes the selection, hence the store's key: it is read, never a stale store
    spec = data_spec(tmp_path / "corpus", tmp_path / "cache")
    before, key = fingerprint(spec.corpus), store_dir(spec)
    (tmp_path / "corpus" / "doc" / "random").write_text("now it is text\n")
    assert fingerprint(spec.corpus) != before and store_dir(spec) != key
    assert "doc/random" in [str(p.relative_to(tmp_path / "corpus")) for p in corpus_files(spec.corpus).files]


def _study(tmp_path: Path, corpus: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(
        "name: local\n"
        f"data: {{corpus: {corpus}, tokenizer: {{bpe_vocab: 300}}, seq_len: 32, heldout_tokens: 200, "
        f"cache_dir: {tmp_path / 'cache'}}}\n"
        "train: {total_tokens: 20k, global_batch_tokens: 1024, micro_batch: 8, warmup_tokens: 1k}\n"
        "grid: {objective: [ar, mdlm], unique_tokens: [1k]}\n"
    )
    return path


def test_data_prepare_and_stats_count_the_skipped_files_and_list_them_with_verbose(tmp_path):
    debian_like_folder(tmp_path / "corpus")
    spec = _study(tmp_path, str(tmp_path / "corpus"))
    summary = f"{len(READ)} file(s) read as txt, {len(SKIPPED)} skipped: 2 hidden, 2 binary, "
    listed = [f"  skipped {path}: {why}" for path, why in sorted(SKIPPED.items())]
    prepared = runner.invoke(app, ["data", "prepare", str(spec)])
    assert prepared.exit_code == 0, prepared.output
    assert summary in prepared.output and "(--verbose lists them)" in prepared.output
    assert listed[0] not in prepared.output
    verbose = runner.invoke(app, ["data", "prepare", str(spec), "--verbose"])
    assert verbose.exit_code == 0 and "cached" in verbose.output
    assert all(line in verbose.output.splitlines() for line in listed), verbose.output
    stats = runner.invoke(app, ["data", "stats", str(spec), "--verbose"])
    assert stats.exit_code == 0, stats.output
    assert f"files       {summary}" in stats.output
    assert all(" " * 12 + line in stats.output.splitlines() for line in listed), stats.output
    assert f"corpus      {tmp_path / 'corpus'}: {len(READ)} documents" in stats.output
    as_json = json.loads(runner.invoke(app, ["data", "stats", str(spec), "--json"]).output)
    assert as_json["files"]["read"] == len(READ) and as_json["files"]["format"] == "txt"
    assert {s["path"]: s["reason"] for s in as_json["files"]["skipped"]} == SKIPPED


def test_structured_files_beside_text_files_need_a_format(tmp_path):
    docs = make_documents(40, seed=4)
    write_jsonl(tmp_path / "ds" / "data" / "train.jsonl", docs)
    (tmp_path / "ds" / "README.md").write_text("# A dataset card, not a document\n")
    result = runner.invoke(app, ["validate", str(_study(tmp_path, str(tmp_path / "ds")))])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "holds 1 jsonl file(s) (e.g. data/train.jsonl) and 1 other file(s) that would be read as text" in message
    assert "set data.corpus.format: jsonl to read only the jsonl files" in message and "or format: txt" in message
    # format: jsonl reads the jsonl rows and reports the README as skipped
    found = corpus_files(CorpusSpec(source=str(tmp_path / "ds"), format="jsonl"))
    assert found.files == [tmp_path / "ds" / "data" / "train.jsonl"]
    assert found.skipped == [("README.md", "not jsonl: data.corpus.format is jsonl")]
    ds = load_corpus(CorpusSpec(source=str(tmp_path / "ds"), format="jsonl"), cache_dir=tmp_path / "hf")
    assert ds["text"] == [d["text"] for d in docs]
    # format: txt reads every file as one text document
    ds = load_corpus(CorpusSpec(source=str(tmp_path / "ds"), format="txt"), cache_dir=tmp_path / "hf")
    assert ds["id"] == ["README.md", "data/train.jsonl"]
    # the same folder as hf:<folder> is read by datasets (its README is the dataset card): no error
    assert fingerprint(CorpusSpec(source=f"hf:{tmp_path / 'ds'}"))["files"][0][0] == "data/train.jsonl"


def test_a_glob_with_a_format_reads_every_match_and_binary_sources_are_refused(tmp_path):
    docs = make_documents(20, seed=6)
    write_jsonl(tmp_path / "shards" / "shard-00", docs[:10])
    write_jsonl(tmp_path / "shards" / "shard-01", docs[10:])
    found = corpus_files(CorpusSpec(source=str(tmp_path / "shards" / "shard-*"), format="jsonl"))
    assert [p.name for p in found.files] == ["shard-00", "shard-01"] and found.skipped == []
    ds = load_corpus(CorpusSpec(source=str(tmp_path / "shards" / "*"), format="jsonl"), cache_dir=tmp_path / "hf")
    assert ds["text"] == [d["text"] for d in docs]
    # the same folder with format: jsonl reads files by extension, and says why none is read
    with pytest.raises(
        DataError, match=r"matches no files of format jsonl; skipped: 2 not jsonl \(e.g. shard-00: not jsonl"
    ):
        corpus_files(CorpusSpec(source=str(tmp_path / "shards"), format="jsonl"))
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "a.gz").write_bytes(b"\x1f\x8b\x08\x00" + bytes(64))
    with pytest.raises(DataError, match=r"matches no files; skipped: 1 binary \(e.g. a.gz: binary: a NUL byte"):
        corpus_files(CorpusSpec(source=str(tmp_path / "bin")))
    with pytest.raises(DataError, match="is binary: a NUL byte in its first 8 KiB: give a text file"):
        corpus_files(CorpusSpec(source=str(tmp_path / "bin" / "a.gz")))
    result = runner.invoke(app, ["data", "prepare", str(_study(tmp_path, str(tmp_path / "bin")))])
    assert result.exit_code == 2 and "matches no files; skipped: 1 binary" in result.output, result.output
