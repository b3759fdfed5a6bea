"""Corpora in object storage (issue 34): an s3:// folder, glob or object is read by the rules of a local one (same
files read, same skip reasons, same Dataset) through pyarrow.fs, here against moto's real S3 server on loopback;
`crossover data prepare` / `data stats` report its files as they report a local folder's, and an unreachable endpoint,
a missing bucket or missing credentials (gs:// too) is a user error naming the cause and the fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from typer.testing import CliRunner

from crossover.cli import app
from crossover.data import DataError, load_corpus
from crossover.data.corpus import corpus_files, fingerprint, size_bound
from crossover.specs.study import CorpusSpec

from .conftest import new_bucket
from .services import free_port
from .test_data_support import make_documents, write_jsonl
from .test_local_corpus import READ, SKIPPED, _study, debian_like_folder

runner = CliRunner()

pytestmark = pytest.mark.usefixtures("default_cache")

BUCKET = "crossover-corpora"
# what a folder holds that an object store cannot: links (the other skip reasons are the same)
SKIPPED_IN_S3 = {path: why for path, why in SKIPPED.items() if why not in ("link to a folder", "not a regular file")}


@pytest.fixture(scope="module")
def bucket(s3) -> str:
    """A bucket on the session's S3 server (tests/conftest.py `s3`: this process's environment points boto3 and
    pyarrow at it)."""
    return new_bucket(BUCKET)


def upload(folder: Path, prefix: str) -> str:
    """The regular files under `folder` as objects under `prefix` (links are not followed); the prefix's URI."""
    client = boto3.client("s3")
    for dirpath, _, names in os.walk(folder):
        for path in (Path(dirpath) / name for name in names):
            if path.is_file() and not path.is_symlink():
                client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return f"s3://{BUCKET}/{prefix}"


def same_documents(remote: CorpusSpec, local: CorpusSpec, cache: Path) -> list[str]:
    """The ids of two corpora after checking that they hold the same documents."""
    a, b = load_corpus(remote, cache_dir=cache), load_corpus(local, cache_dir=cache)
    assert a["id"] == b["id"] and a["text"] == b["text"]
    return a["id"]


def test_an_s3_folder_glob_or_object_reads_as_the_same_files_on_disk(bucket, tmp_path):
    debian_like_folder(tmp_path / "corpus")
    source = upload(tmp_path / "corpus", "licences")
    found = corpus_files(CorpusSpec(source=source))
    assert found.format == "txt" and [found.id(p) for p in found.files] == READ
    assert dict(found.skipped) == SKIPPED_IN_S3
    assert same_documents(CorpusSpec(source=source), CorpusSpec(source=str(tmp_path / "corpus")), tmp_path) == READ
    ds = load_corpus(CorpusSpec(source=source), cache_dir=tmp_path)
    assert ds["path"] == [f"{source}/{name}" for name in READ]
    bound = size_bound(CorpusSpec(source=source))
    assert bound.documents >= len(READ) and bound.tokens >= sum(len(t.encode()) for t in ds["text"])

    # a glob matches as Python's glob does (`**` spans folders, wildcards skip hidden names); an object alone
    pattern = "doc/**/*.[mt]*"
    ids = same_documents(
        CorpusSpec(source=f"{source}/{pattern}"), CorpusSpec(source=str(tmp_path / "corpus" / pattern)), tmp_path
    )
    assert ids == ["bash/README.md", "notes.txt", "zlib/FAQ.txt"]  # doc/utf16.txt is binary, doc/.cache.md hidden
    assert same_documents(
        CorpusSpec(source=f"{source}/GPL-3"), CorpusSpec(source=str(tmp_path / "corpus" / "GPL-3")), tmp_path
    ) == ["GPL-3"]

    # the store's key follows the objects: it changes when one is rewritten or added
    before = fingerprint(CorpusSpec(source=source))
    assert fingerprint(CorpusSpec(source=source)) == before
    boto3.client("s3").put_object(Bucket=BUCKET, Key="licences/GPL-3", Body=b"a rewritten licence\n")
    changed = fingerprint(CorpusSpec(source=source))
    assert changed != before
    boto3.client("s3").put_object(Bucket=BUCKET, Key="licences/doc/new.txt", Body=b"a new document\n")
    assert fingerprint(CorpusSpec(source=source)) not in (before, changed)


def test_an_s3_jsonl_corpus_reads_as_the_same_rows_on_disk(bucket, tmp_path):
    docs = make_documents(30, seed=34)
    write_jsonl(tmp_path / "shards" / "part-00.jsonl", docs[:12])
    write_jsonl(tmp_path / "shards" / "nested" / "part-01.jsonl", docs[12:])
    (tmp_path / "shards" / "README.md").write_text("# A dataset card, not a document\n")
    source = upload(tmp_path / "shards", "rows")
    with pytest.raises(DataError, match=r"holds 2 jsonl file\(s\) \(e.g. nested/part-01.jsonl\) and 1 other file"):
        corpus_files(CorpusSpec(source=source))
    found = corpus_files(CorpusSpec(source=source, format="jsonl"))
    assert [found.id(p) for p in found.files] == ["nested/part-01.jsonl", "part-00.jsonl"]
    assert found.skipped == [("README.md", "not jsonl: data.corpus.format is jsonl")]
    local = CorpusSpec(source=str(tmp_path / "shards"), format="jsonl")
    ids = same_documents(CorpusSpec(source=source, format="jsonl"), local, tmp_path / "hf")
    assert sorted(ids) == sorted(d["id"] for d in docs)
    # a glob of the same objects reads the local copy of them that datasets read
    glob = CorpusSpec(source=f"{source}/**/part-*.jsonl")
    assert same_documents(glob, local, tmp_path / "hf") == ids
    assert len([p for p in (tmp_path / "hf" / "object-store").iterdir() if p.is_dir()]) == 1


def test_data_prepare_and_stats_report_the_files_of_an_s3_folder(bucket, tmp_path):
    debian_like_folder(tmp_path / "corpus")
    spec = _study(tmp_path, upload(tmp_path / "corpus", "reported"))
    summary = f"{len(READ)} file(s) read as txt, {len(SKIPPED_IN_S3)} skipped: 2 hidden, 2 binary, 1 not UTF-8"
    listed = [f"  skipped {path}: {why}" for path, why in sorted(SKIPPED_IN_S3.items())]
    prepared = runner.invoke(app, ["data", "prepare", str(spec), "--verbose"])
    assert prepared.exit_code == 0, prepared.output
    assert "built" in prepared.output and f"{len(READ)} documents" in prepared.output
    assert summary in prepared.output.splitlines()
    assert all(line in prepared.output.splitlines() for line in listed), prepared.output
    cached = runner.invoke(app, ["data", "prepare", str(spec)])
    assert cached.exit_code == 0 and "cached" in cached.output, cached.output
    assert f"{summary} (--verbose lists them)" in cached.output.splitlines()
    stats = runner.invoke(app, ["data", "stats", str(spec), "--json"])
    assert stats.exit_code == 0, stats.output
    files = json.loads(stats.output)["files"]
    assert files["read"] == len(READ) and files["format"] == "txt"
    assert {s["path"]: s["reason"] for s in files["skipped"]} == SKIPPED_IN_S3


def test_a_missing_bucket_an_unreachable_endpoint_or_missing_credentials_exit_2_naming_the_cause(bucket, tmp_path):
    missing = runner.invoke(app, ["data", "prepare", str(_study(tmp_path, "s3://no-such-bucket/docs"))])
    assert missing.exit_code == 2, missing.output
    message = " ".join(missing.output.split())
    assert "cannot read corpus source 's3://no-such-bucket/docs' from S3 endpoint" in message
    assert "The specified bucket does not exist" in message and "check the bucket name" in message
    absent = runner.invoke(app, ["data", "prepare", str(_study(tmp_path, f"s3://{BUCKET}/nothing-here"))])
    assert absent.exit_code == 2 and f"bucket '{BUCKET}' holds no object named 'nothing-here'" in absent.output

    # `crossover validate` lists the objects (no datasets import); an endpoint nothing listens on fails there
    nowhere = f"http://127.0.0.1:{free_port()}"
    probe = (
        "import sys\nfrom crossover.cli import app\n"
        "try:\n    app(['validate', sys.argv[1]])\n"
        "except SystemExit as e:\n"
        "    print('loaded:', [m for m in ('ray', 'mlflow', 'torch', 'datasets') if m in sys.modules])\n"
        "    raise\n"
    )
    env = {**os.environ, "AWS_ENDPOINT_URL": nowhere, "AWS_ENDPOINT_URL_S3": nowhere}
    spec = _study(tmp_path, f"s3://{BUCKET}/licences")
    result = subprocess.run([sys.executable, "-c", probe, str(spec)], capture_output=True, text=True, env=env)
    assert result.returncode == 2 and "loaded: []" in result.stdout, result.stderr
    message = " ".join(result.stderr.split())
    assert f"from S3 endpoint {nowhere}: When listing objects" in message and "Could not connect" in message
    assert "AWS_ENDPOINT_URL (its URL)" in message and "Traceback" not in message

    # gs:// through pyarrow's GCS client: credentials that cannot be loaded fail before any request
    gcs = runner.invoke(
        app,
        ["validate", str(_study(tmp_path, "gs://crossover-test/docs"))],
        env={"GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "no-key.json")},
    )
    assert gcs.exit_code == 2, gcs.output
    message = " ".join(gcs.output.split())
    assert "cannot read corpus source 'gs://crossover-test/docs' from Google Cloud Storage" in message
    assert "Cannot open credentials file" in message and "GOOGLE_APPLICATION_CREDENTIALS" in message
