"""Shared token stores (`data.store`): built in shards by a Ray Data job, byte-identical to the local store; a re-run
tokenizes only the shards it lacks; a trial fetches only the shards its budget needs, checks them, and reads the
same training windows as from the local store; the same on S3 (moto's server)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from crossover.cli import app
from crossover.data import Budget, prepare, train_stream
from crossover.data.shards import StoreLocation, location_uri, shard_rows
from crossover.specs import parse_study
from crossover.specs.study import DataSpec

from .conftest import new_bucket, tiny_study

pytestmark = pytest.mark.xdist_group("ray")  # one worker runs every Ray test (tests/conftest.py)

SHARD_BYTES = 100_000  # the tiny corpus (2.6 MB of text) in about 26 shards
BUCKET = "crossover-shards"


@pytest.fixture(scope="module")
def bucket(s3) -> str:
    """A bucket on the session's S3 server (tests/conftest.py `s3`, whose variables are set before Ray starts, so
    the Ray workers see them too)."""
    return new_bucket(BUCKET)


@pytest.fixture(scope="module")
def ray_cluster(bucket):
    ray = pytest.importorskip("ray")
    from crossover.platform.local_ray import init_local_instance

    init_local_instance(num_cpus=2)
    yield ray
    ray.shutdown()


def data_settings(corpus: Path, cache: Path, store: str | None = None) -> dict:
    return {
        **tiny_study(corpus)["data"],
        "cache_dir": str(cache),
        **({"store": store} if store else {}),
    }


@pytest.fixture(scope="module")
def local(tiny_corpus, session_cache):
    """The local store of the tiny corpus (today's path: one process)."""
    return prepare(DataSpec(**data_settings(tiny_corpus, session_cache)))


@pytest.fixture(scope="module")
def shared(tiny_corpus, tmp_path_factory, ray_cluster):
    """The tiny corpus's shared store on a folder, built by two Ray Data workers; (data spec, build report)."""
    from crossover.platform.data_job import build_shared_store

    root = tmp_path_factory.mktemp("shared")
    data = DataSpec(**data_settings(tiny_corpus, root / "builder-cache", str(root / "store")))
    report = build_shared_store(data, workers=2, shard_bytes=SHARD_BYTES)
    return data, report


def concatenated_shards(location: StoreLocation, manifest: dict) -> bytes:
    return b"".join(location.read(entry["name"] + ".bin") or b"" for entry in manifest["shards"])


def test_shards_concatenate_to_the_local_store(shared, local):
    data, report = shared
    assert report.tokenized == report.shards > 10
    assert len(report.per_worker) == 2  # both workers tokenized some shards
    assert report.tokens == local.num_tokens
    location = StoreLocation(location_uri(data))
    tokens = concatenated_shards(location, report.manifest)
    assert hashlib.sha256(tokens).hexdigest() == local.manifest["files"]["tokens.bin"]["sha256"]
    for name in ("docs.npz", "heldout.jsonl", "tokenizer.json"):
        assert location.read(name) == (local.root / name).read_bytes(), name
    expected = {k: v for k, v in local.manifest.items() if k not in ("created", "build_seconds", "files")}
    assert {k: v for k, v in report.manifest.items() if k in expected} == expected


def test_a_trial_fetches_only_the_shards_of_its_budget(shared, local, tiny_corpus, tmp_path):
    data, report = shared
    spec = tiny_study(tiny_corpus, data=data_settings(tiny_corpus, tmp_path / "trial-cache", data.store))
    trial = parse_study(spec).expand()[0]  # unique_tokens 10k
    local_trial = parse_study(tiny_study(tiny_corpus, data=data_settings(tiny_corpus, local.root.parents[1]))).expand()
    copy = prepare(trial.data)
    assert copy.source == location_uri(data)
    assert copy.tokens_sha256 == report.manifest["shards_sha256"]
    # held-out evaluation needs no training shard
    assert np.array_equal(copy.heldout_windows(64), local.heldout_windows(64))
    assert copy.heldout_documents(3) == local.heldout_documents(3)
    assert (copy.root / "present.json").read_text().strip() == "{}"

    stream = train_stream(trial, copy, as_torch=False)
    fetched = set(json.loads((copy.root / "present.json").read_text()))
    assert 0 < len(fetched) < report.shards / 2
    reference = train_stream(local_trial[0], local, as_torch=False)
    assert np.array_equal(stream.budget.tokens(), reference.budget.tokens())
    for step in (0, stream.num_steps - 1):
        assert np.array_equal(stream.global_batch(step), reference.global_batch(step))

    # a fetched shard damaged on this machine is noticed when the copy is opened again, and fetched again
    entry = next(e for e in report.manifest["shards"] if e["name"] in fetched)
    with open(copy.root / "tokens.bin", "r+b") as f:
        f.seek(entry["tokens"][0] * copy.dtype.itemsize + 1)
        f.write(b"\xff")
    notes: list[str] = []
    again = prepare(trial.data, notify=notes.append)
    assert any("damaged" in n for n in notes)
    budget = Budget(again, trial.unique_tokens, trial.seed)
    assert np.array_equal(budget.tokens(), reference.budget.tokens())
    assert entry["name"] in json.loads((again.root / "present.json").read_text())


def test_a_large_copy_hashes_its_fetched_shards_again_only_when_tokens_bin_changed(
    shared, tiny_corpus, tmp_path, monkeypatch
):
    """As a local store over a GiB is, fetched shards over FULL_VERIFY_BYTES in all are not hashed on every open of
    the copy: only when tokens.bin's stat changed since they were checked or written (a byte changed here)."""
    from crossover.data import shards

    data, _ = shared
    monkeypatch.setattr(shards, "FULL_VERIFY_BYTES", 0)  # as if its fetched shards held more than a GiB
    spec = tiny_study(tiny_corpus, data=data_settings(tiny_corpus, tmp_path / "trial-cache", data.store))
    trial = parse_study(spec).expand()[0]
    copy = prepare(trial.data)
    reference = Budget(copy, trial.unique_tokens, trial.seed).tokens()  # fetches its shards, each checked
    fetched = json.loads((copy.root / "present.json").read_text())
    hashed: list[int] = []
    real = shards.shard_digest
    monkeypatch.setattr(shards, "shard_digest", lambda payload: hashed.append(1) or real(payload))
    prepare(trial.data)
    assert hashed == []  # unchanged since fetched: not hashed again
    name = next(iter(fetched))
    entry = next(e for e in shared[1].manifest["shards"] if e["name"] == name)
    with open(copy.root / "tokens.bin", "r+b") as f:
        f.seek(entry["tokens"][0] * copy.dtype.itemsize + 1)
        f.write(b"\xff")
    notes: list[str] = []
    again = prepare(trial.data, notify=notes.append)
    assert len(hashed) == len(fetched) and any("damaged" in n for n in notes)
    assert np.array_equal(Budget(again, trial.unique_tokens, trial.seed).tokens(), reference)


def test_prepare_continues_an_interrupted_build_from_the_cli(shared, local, tmp_path):
    """Shards (and the manifest) removed as if the build had stopped: `crossover data prepare --workers 1` tokenizes
    only those, shows the throughput, and the store is the same."""
    data, report = shared
    store = tmp_path / "store"
    shutil.copytree(data.store, store)
    copy = data.model_copy(update={"store": str(store), "cache_dir": str(tmp_path / "cache")})
    location = StoreLocation(location_uri(copy))
    removed = [e["name"] for e in report.manifest["shards"][::3]]
    for name in removed:
        Path(location.path(name + ".bin")).unlink()
        Path(location.path(name + ".json")).unlink()
    Path(location.path("manifest.json")).unlink()
    spec_path = tmp_path / "study.yaml"
    spec_path.write_text(yaml.safe_dump({**tiny_study(Path(data.corpus.source)), "data": copy.model_dump()}))

    result = CliRunner().invoke(
        app, ["data", "prepare", str(spec_path), "--workers", "1", "--shard-mb", str(SHARD_BYTES / 1e6)]
    )
    assert result.exit_code == 0, result.output
    assert f"tokenized {len(removed)} of {report.shards} shards ({report.shards - len(removed)} finished before)" in (
        " ".join(result.output.split())
    )
    assert "tokens/s" in result.output and "worker" in result.output
    manifest = location.read_json("manifest.json")
    assert manifest["shards"] == report.manifest["shards"]
    tokens = concatenated_shards(location, manifest)
    assert hashlib.sha256(tokens).hexdigest() == local.manifest["files"]["tokens.bin"]["sha256"]

    again = CliRunner().invoke(app, ["data", "prepare", str(spec_path)])
    assert again.exit_code == 0, again.output
    assert "is complete" in again.output


def test_a_store_on_s3(bucket, ray_cluster, tiny_corpus, local, tmp_path):
    from crossover.platform.data_job import build_shared_store

    data = DataSpec(**data_settings(tiny_corpus, tmp_path / "cache", f"s3://{BUCKET}/stores"))
    report = build_shared_store(data, workers=2, shard_bytes=4 * SHARD_BYTES)
    location = StoreLocation(location_uri(data))
    assert location.uri.startswith(f"s3://{BUCKET}/stores/")
    tokens = concatenated_shards(location, report.manifest)
    assert hashlib.sha256(tokens).hexdigest() == local.manifest["files"]["tokens.bin"]["sha256"]

    copy = prepare(data.model_copy(update={"cache_dir": str(tmp_path / "trial-cache")}))
    budget = Budget(copy, 20_000, seed=1)
    assert np.array_equal(budget.tokens(), Budget(local, 20_000, seed=1).tokens())


def test_shard_rows_cover_every_row_once():
    nbytes = np.array([5, 0, 300, 7, 7, 7, 0, 90, 1000, 3], dtype=np.int64)
    ranges = shard_rows(nbytes, shard_bytes=100)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(nbytes)
    assert all(a < b for a, b in ranges) and all(r[1] == s[0] for r, s in zip(ranges, ranges[1:], strict=False))
    assert shard_rows(nbytes, shard_bytes=10_000) == [(0, len(nbytes))]


def test_the_store_setting_is_checked_and_left_out_of_trial_ids(tiny_corpus):
    from crossover.specs.errors import SpecError

    base = parse_study(tiny_study(tiny_corpus)).expand()
    shared = parse_study(tiny_study(tiny_corpus, data={"store": "s3://bucket/stores"})).expand()
    assert [t.trial_id for t in shared] == [t.trial_id for t in base]
    assert shared[0].data.store == "s3://bucket/stores" and "store" not in base[0].data.model_dump()
    with pytest.raises(SpecError, match="unsupported scheme"):
        parse_study(tiny_study(tiny_corpus, data={"store": "ftp://host/stores"}))
    with pytest.raises(SpecError, match="relative path"):
        parse_study(tiny_study(tiny_corpus, data={"store": "stores"}))


def test_a_missing_shared_store_is_a_clear_error(tiny_corpus, tmp_path):
    from crossover.data import DataError

    data = DataSpec(**data_settings(tiny_corpus, tmp_path / "cache", str(tmp_path / "nowhere")))
    with pytest.raises(DataError, match="has not been built.*crossover data prepare"):
        prepare(data)


def test_a_data_error_in_a_shard_task_reaches_the_user_as_one(ray_cluster, tmp_path):
    """A quality column holding words is found only while tokenizing, in a Ray Data task: the build stops with the
    DataError itself (the command line's exit 2), not Ray's wrapping of it."""
    from crossover.data import DataError
    from crossover.platform.data_job import build_shared_store

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"document {i} " * 20, "q": "high"}) + "\n" for i in range(40)))
    data = DataSpec(
        corpus={"source": str(corpus), "format": "jsonl"},
        tokenizer={"bpe_vocab": 300},
        heldout_tokens=100,
        quality_scorer="q",
        cache_dir=str(tmp_path / "cache"),
        store=str(tmp_path / "store"),
    )
    with pytest.raises(DataError, match="quality column 'q' holds a non-number"):
        build_shared_store(data, workers=1)
