"""Shared token stores: the store of a data spec on a shared volume or in object storage (`data.store`), in shards.

Layout of `<data.store>/<key>/` (the key is the local store's: the corpus fingerprint and every setting that
changes the bytes), written through pyarrow's filesystems (a local or mounted path, `s3://`, `gs://`):

    shards/<first row>-<end row>.bin   the tokens of corpus rows [first, end): exactly the bytes a local store's
                                       tokens.bin holds for them, so the shards in row order concatenate to it
    shards/<first row>-<end row>.json  the shard's record, written once its tokens are complete: its rows, size,
                                       sha256, and each row's token count and quality score. A build that finds a
                                       record (and a token file of its size) skips the shard
    docs.npz, heldout.jsonl, tokenizer.json    as in a local store
    heldout.bin                        the held-out documents' tokens in hash order (what `heldout_stream` returns),
                                       so evaluating needs no training shard
    manifest.json                      a local store's manifest plus `shards` (name, rows, token range, size and
                                       sha256 of each) and `shards_sha256`; written last: a store is whole once it
                                       exists

Shards cut the corpus rows by UTF-8 bytes (`shard_rows`: about 1/64 of the corpus each, between 256 KiB and 64 MiB
of text), so their boundaries follow from the corpus alone, never from how many workers build them.

Building: `crossover.platform.data_job` runs the stages that need the whole corpus on the driver (`store.plan_build`)
and one `ShardBuilder.build` per shard as Ray Data tasks; `write_shared_store` then writes the files above. The
tokens come from `store.encode_rows`, the function a local store is tokenized with.

Reading (`open_shared`, through `store.prepare` when `data.store` is set): the manifest, document table, tokenizer
and held-out files are copied into `<cache>/shared/<key>/` and checked against their sha256; tokens.bin there is a
sparse file of the full size in which only the fetched shards are written, at their offsets, so `PreparedData.tokens`
stays one flat memmap. A trial's budget fetches the shards holding its documents (`fetch_shards`); `present.json`
records the fetched ones with their sha256, and each is checked again when the copy is opened (a damaged one is
fetched again): always where they hold up to FULL_VERIFY_BYTES, else when tokens.bin's stat changed since they were
last checked or written (`checked.json`), as a local store is. This module imports no Ray.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from crossover.data.cache import file_lock, file_sha256, remove_stale_tmp, tmp_path_for, write_json_atomic
from crossover.data.errors import DataError
from crossover.data.quality import SCORERS
from crossover.data.store import (
    FULL_VERIFY_BYTES,
    Notify,
    PreparedData,
    StorePlan,
    encode_rows,
    finish_layout,
    load_store_corpus,
    read_manifest,
    store_dir,
    store_key,
    write_manifest,
    write_store_files,
)
from crossover.specs.study import DataSpec

FILES = ("docs.npz", "heldout.jsonl", "tokenizer.json", "heldout.bin")  # beside the shards; the manifest names them
SHARDS_TARGET = 64  # shards of a corpus, unless that makes them smaller than MIN or larger than MAX_SHARD_BYTES
MIN_SHARD_BYTES = 256 << 10
MAX_SHARD_BYTES = 64 << 20


def shard_rows(nbytes: np.ndarray, shard_bytes: int | None = None) -> list[tuple[int, int]]:
    """Consecutive row ranges [first, end) covering every row, each holding about `shard_bytes` of text (default:
    1/SHARDS_TARGET of the corpus within [MIN_SHARD_BYTES, MAX_SHARD_BYTES]); a row is never split."""
    total = int(nbytes.sum())
    size = shard_bytes or min(MAX_SHARD_BYTES, max(MIN_SHARD_BYTES, total // SHARDS_TARGET))
    cumulative = np.cumsum(nbytes)
    cuts = np.searchsorted(cumulative, np.arange(size, total, size), side="left") + 1
    bounds = sorted({0, len(nbytes), *(int(c) for c in cuts if 0 < c < len(nbytes))})
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def shard_name(first: int, end: int) -> str:
    return f"shards/{first:010d}-{end:010d}"


def location_uri(data: DataSpec) -> str:
    """The folder of this data spec's shared store: `<data.store>/<key>`."""
    assert data.store, "a shared store needs data.store"
    return f"{data.store.rstrip('/')}/{store_key(data)}"


class StoreLocation:
    """A shared store's folder, read and written through pyarrow's filesystems (a local path, s3://, gs://)."""

    def __init__(self, uri: str):
        import pyarrow.fs as pafs  # lazy: shared stores only

        self.uri = uri
        if "://" in uri:
            self.fs, self.base = pafs.FileSystem.from_uri(uri)
        else:
            self.fs, self.base = pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, name: str) -> str:
        return f"{self.base}/{name}"

    def read(self, name: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(self.path(name)) as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DataError(f"cannot read {self.uri}/{name}: {exc}") from None

    def read_json(self, name: str) -> dict[str, Any] | None:
        raw = self.read(name)
        try:
            return None if raw is None else json.loads(raw)
        except ValueError:
            return None  # cut short: as if never written

    def sizes(self, names: Sequence[str]) -> list[int | None]:
        """Each file's size, None where it does not exist."""
        import pyarrow.fs as pafs  # lazy: as in __init__

        infos = self.fs.get_file_info([self.path(n) for n in names])
        return [info.size if info.type == pafs.FileType.File else None for info in infos]

    @contextlib.contextmanager
    def output(self, name: str) -> Iterator[BinaryIO]:
        """A stream to file `name`. On a local filesystem it is written under a temporary name and renamed into
        place when complete; an object store shows an object only once its upload completes."""
        path = self.path(name)
        if not self.local:
            with self.fs.open_output_stream(path) as f:
                yield f
            return
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = tmp_path_for(Path(path))
        try:
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def write(self, name: str, payload: bytes) -> None:
        with self.output(name) as f:
            f.write(payload)

    def remove(self) -> None:
        """Delete the whole store (a rebuild)."""
        import pyarrow.fs as pafs  # lazy: as in __init__

        if self.fs.get_file_info(self.base).type != pafs.FileType.NotFound:
            self.fs.delete_dir(self.base)

    def finished(self, ranges: Sequence[tuple[int, int]]) -> dict[str, dict[str, Any]]:
        """The records of the shards of `ranges` that an earlier build finished (record and tokens both there)."""
        names = [shard_name(*r) for r in ranges]
        have = self.sizes([n + ".json" for n in names])
        out = {}
        for name, (first, end), size in zip(names, ranges, have, strict=True):
            record = self.read_json(name + ".json") if size is not None else None
            if record is None or record.get("rows") != [first, end]:
                continue
            if self.sizes([name + ".bin"])[0] == record["size"]:
                out[name] = record
        return out


# ------------------------------------------------------------------------------------------------------- building


@dataclass(frozen=True)
class ShardJob:
    """What every shard task of one store build needs (sent to each Ray Data worker once)."""

    data_json: str  # the DataSpec, as JSON
    cache: str  # the cache root the corpus is loaded through
    store: str  # the store's folder: location_uri(data)
    tokenizer_json: str
    dtype: str
    scorer_name: str
    keep: np.ndarray  # bool per corpus row: kept (non-empty, first of its exact duplicates)

    @classmethod
    def of(cls, plan: StorePlan, cache: Path) -> ShardJob:
        return cls(
            plan.data.model_dump_json(),
            str(cache),
            location_uri(plan.data),
            plan.tok.to_str(),
            plan.dtype.name,
            plan.scorer_name,
            plan.docs.keep,
        )


class ShardBuilder:
    """Tokenizes shards of one store build: loads the corpus and tokenizer once, then `build` per shard."""

    def __init__(self, job: ShardJob):
        from tokenizers import Tokenizer  # lazy: as in store.PreparedData.tokenizer

        self.job = job
        self.ds = load_store_corpus(DataSpec.model_validate_json(job.data_json), Path(job.cache))
        if len(self.ds) != len(job.keep):
            raise DataError(
                f"the corpus has {len(self.ds):,} rows on this node and {len(job.keep):,} where the build started; "
                "a corpus must not change while its token store is built"
            )
        self.tok = Tokenizer.from_str(job.tokenizer_json)
        self.scorer = SCORERS[job.scorer_name]() if job.scorer_name in SCORERS else None
        self.location = StoreLocation(job.store)

    def build(self, first: int, end: int) -> dict[str, Any]:
        """Tokenize rows [first, end) into the shard's token file, then write its record; the record."""
        name = shard_name(first, end)
        started = time.perf_counter()
        with self.location.output(name + ".bin") as sink:
            encoded = encode_rows(
                self.ds.select(range(first, end)),
                self.tok,
                np.dtype(self.job.dtype),
                self.job.keep[first:end],
                self.scorer,
                self.job.scorer_name,
                sink,
            )
        record = {
            "name": name,
            "rows": [first, end],
            "size": encoded.size,
            "sha256": encoded.sha256,
            "tokens": int(encoded.lengths.sum()),
            "seconds": round(time.perf_counter() - started, 4),
            "lengths": encoded.lengths.tolist(),
            "scores": encoded.scores.tolist(),
        }
        self.location.write(name + ".json", json.dumps(record).encode())
        return record


def write_shared_store(
    plan: StorePlan, ranges: Sequence[tuple[int, int]], records: dict[str, dict[str, Any]], notify: Notify
) -> dict[str, Any]:
    """The files beside the shards, from every shard's record, and the manifest last; the manifest."""
    location = StoreLocation(location_uri(plan.data))
    lengths = np.zeros(len(plan.ds), dtype=np.int64)
    scores = np.zeros(len(plan.ds), dtype=np.float64)
    entries, start = [], 0
    for first, end in ranges:
        record = records[shard_name(first, end)]
        lengths[first:end] = record["lengths"]
        scores[first:end] = record["scores"]
        tokens = int(lengths[first:end].sum())
        assert record["size"] == tokens * plan.dtype.itemsize, record["name"]
        entries.append(
            {
                "name": record["name"],
                "rows": [first, end],
                "tokens": [start, start + tokens],
                "size": record["size"],
                "sha256": record["sha256"],
            }
        )
        start += tokens
    layout = finish_layout(plan, lengths, scores, notify)
    with tempfile.TemporaryDirectory(prefix="crossover-store-") as folder:
        out = Path(folder)
        write_store_files(plan.ds, plan.docs, layout, plan.tok, out)
        held_rows = plan.docs.kept[layout.heldout_order]
        with open(out / "heldout.bin", "wb") as f:
            encode_rows(
                plan.ds.select(held_rows),
                plan.tok,
                plan.dtype,
                np.ones(len(held_rows), dtype=bool),
                plan.scorer,
                plan.scorer_name,
                f,
            )
        shards_sha256 = hashlib.sha256("".join(e["sha256"] for e in entries).encode()).hexdigest()
        manifest = write_manifest(plan, layout, out, FILES, {"shards": entries, "shards_sha256": shards_sha256})
        for name in FILES:
            location.write(name, (out / name).read_bytes())
        location.write("manifest.json", (out / "manifest.json").read_bytes())
    return manifest


# -------------------------------------------------------------------------------------------------------- reading


def open_shared(data: DataSpec, notify: Notify) -> PreparedData:
    """The local copy of a data spec's shared store (see the module docstring), made or checked in full (every file
    and every fetched shard against its sha256); no shard is fetched here (the trial's budget fetches its own).
    Raises DataError when the store has not been built."""
    location = StoreLocation(location_uri(data))
    remote = location.read_json("manifest.json")
    if remote is None:
        raise DataError(
            f"the token store {location.uri} has not been built (or its build did not finish): "
            "`crossover data prepare SPEC` builds it, on a Ray cluster with --address"
        )
    copy = store_dir(data)
    with file_lock(copy.parent / f".{copy.name}.lock"):
        remove_stale_tmp(copy.parent, copy.name)
        problem = _check_copy(copy, remote) if read_manifest(copy) == remote else "from another build"
        if problem is not None:
            if copy.exists():
                notify(f"the local copy {copy} of {location.uri} is {problem}; copying it again")
                shutil.rmtree(copy)
            _copy_store(location, remote, copy)
        else:
            _check_present(copy, remote, notify)
    return PreparedData(copy, remote, source=location.uri)


def _check_copy(copy: Path, manifest: dict[str, Any]) -> str | None:
    for name in FILES:
        entry, path = manifest["files"][name], copy / name
        if not path.exists() or path.stat().st_size != entry["size"] or file_sha256(path) != entry["sha256"]:
            return f"damaged ({name} does not match the manifest)"
    if (copy / "tokens.bin").stat().st_size != manifest["tokens"] * np.dtype(manifest["dtype"]).itemsize:
        return "damaged (tokens.bin has the wrong size)"
    return None


def _copy_store(location: StoreLocation, manifest: dict[str, Any], copy: Path) -> None:
    """Copy the files beside the shards (checking each), make an empty tokens.bin of the full size, manifest last."""
    tmp = tmp_path_for(copy)
    tmp.mkdir(parents=True)
    try:
        for name in FILES:
            payload = location.read(name)
            if payload is None or hashlib.sha256(payload).hexdigest() != manifest["files"][name]["sha256"]:
                raise DataError(
                    f"{location.uri}/{name} is missing or does not match the store's manifest: the shared store is "
                    "damaged; `crossover data prepare SPEC --rebuild` builds it again"
                )
            (tmp / name).write_bytes(payload)
        with open(tmp / "tokens.bin", "wb") as f:  # sparse: only fetched shards take space
            f.truncate(manifest["tokens"] * np.dtype(manifest["dtype"]).itemsize)
        write_json_atomic(tmp / "present.json", {})
        write_json_atomic(tmp / "manifest.json", manifest)
        os.rename(tmp, copy)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _present(copy: Path) -> dict[str, str]:
    try:
        return json.loads((copy / "present.json").read_text())
    except (OSError, ValueError):
        return {}


def _shard_bytes(manifest: dict[str, Any], entry: dict[str, Any]) -> tuple[int, int]:
    """(byte offset in tokens.bin, size) of a shard."""
    itemsize = np.dtype(manifest["dtype"]).itemsize
    return entry["tokens"][0] * itemsize, entry["size"]


def _check_present(copy: Path, manifest: dict[str, Any], notify: Notify) -> None:
    """Hash every fetched shard in the copy's tokens.bin; forget a damaged one (the budget fetches it again). As a
    local store is (store.verify_store), fetched shards of more than FULL_VERIFY_BYTES in all are hashed again only
    when tokens.bin's stat has changed since they were last checked or written (`checked.json`)."""
    present = _present(copy)
    entries = {e["name"]: e for e in manifest["shards"]}
    total = sum(_shard_bytes(manifest, entries[name])[1] for name in present)
    if total > FULL_VERIFY_BYTES and _checked(copy) == _signature(copy, present):
        return
    damaged = []
    with open(copy / "tokens.bin", "rb") as f:
        for name, sha in present.items():
            offset, size = _shard_bytes(manifest, entries[name])
            f.seek(offset)
            if sha != entries[name]["sha256"] or shard_digest(f.read(size)) != sha:
                damaged.append(name)
    if damaged:
        notify(f"{len(damaged)} fetched shard(s) of {copy} are damaged ({', '.join(damaged[:3])}); fetching again")
        present = {k: v for k, v in present.items() if k not in damaged}
        write_json_atomic(copy / "present.json", present)
    _record_checked(copy, present)


def shard_digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def _signature(copy: Path, present: dict[str, str]) -> list:
    """What a check of the fetched shards vouches for: tokens.bin's stat and the shards it holds."""
    st = (copy / "tokens.bin").stat()
    return [[st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino], sorted(present)]


def _checked(copy: Path) -> list | None:
    try:
        return json.loads((copy / "checked.json").read_text())
    except (OSError, ValueError):
        return None


def _record_checked(copy: Path, present: dict[str, str]) -> None:
    try:
        write_json_atomic(copy / "checked.json", _signature(copy, present))
    except OSError:
        pass  # a read-only cache: check fully next time


def shards_of(manifest: dict[str, Any], token_starts: np.ndarray) -> list[str]:
    """The names of the shards holding the documents that start at `token_starts` (a document is never split)."""
    starts = np.array([e["tokens"][0] for e in manifest["shards"]], dtype=np.int64)
    which = np.unique(np.searchsorted(starts, np.asarray(token_starts, dtype=np.int64), side="right") - 1)
    return [manifest["shards"][i]["name"] for i in which]


def fetch_shards(data: PreparedData, names: Sequence[str]) -> list[str]:
    """Fetch the shards `names` of a shared store's copy that it lacks, each checked against its sha256 and written
    at its offset in tokens.bin; the names fetched."""
    if all(name in _present(data.root) for name in names):
        return []
    assert data.source is not None
    location = StoreLocation(data.source)
    entries = {e["name"]: e for e in data.manifest["shards"]}
    fetched = []
    with file_lock(data.root.parent / f".{data.root.name}.lock"):
        present = _present(data.root)  # another process may have fetched some meanwhile
        with open(data.root / "tokens.bin", "r+b") as f:
            for name in names:
                if name in present:
                    continue
                entry = entries[name]
                payload = location.read(name + ".bin")
                if payload is None or shard_digest(payload) != entry["sha256"]:
                    raise DataError(
                        f"shard {location.uri}/{name}.bin is missing or does not match the store's manifest: the "
                        "shared store is damaged; `crossover data prepare SPEC --rebuild` builds it again"
                    )
                offset, _ = _shard_bytes(data.manifest, entry)
                os.pwrite(f.fileno(), payload, offset)
                present[name] = entry["sha256"]
                fetched.append(name)
            f.flush()
            os.fsync(f.fileno())
        write_json_atomic(data.root / "present.json", present)
        _record_checked(data.root, present)  # each shard was checked as it was written; the others before
    return fetched
