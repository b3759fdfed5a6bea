"""The token store: every document tokenized once into one flat memmap, with offsets, hashes, scores and tiers.

Layout of `<cache>/stores/<key>/` (the key hashes the corpus fingerprint and every setting that changes the bytes):

    tokens.bin      uint16 (vocabulary <= 65536) or uint32 token ids; each document followed by end-of-document
    docs.npz        offsets [n+1] int64, digest [n] uint64, score [n] float64, tier [n] int8 (-1 held out),
                    heldout [n] bool; documents in corpus order, exact duplicates and empty documents dropped
    heldout.jsonl   the held-out documents (id, text) in hash order, for cloze-style evaluations
    tokenizer.json  the tokenizer the ids belong to
    manifest.json   sizes and sha256 of the files above, counts, tiers, special ids; written last

A store is built under a temporary name and renamed into place when complete; one that fails verification (a
missing file, a wrong size or hash) is reported, removed and rebuilt.

Stages: `plan_build` (read, hash and deduplicate, held-out reserve, quality scorer, tokenizer: they need the whole
corpus), `encode_rows` (tokenize and score: the one way tokens are made, for the whole corpus here and for one shard
of a shared store in `crossover.data.shards`), then the split and tiers and the files (`finish_layout`,
`write_store_files`, `write_manifest`). With `data.store` set, `prepare` opens the local copy of that shared store
instead (`shards.open_shared`), which keeps this layout but for a sparse tokens.bin holding only fetched shards.

Held-out split: documents ordered by content hash; the held-out set is the shortest prefix of that order holding
`heldout_tokens` tokens. The BPE is trained on the documents outside a reserve (the prefix holding 8 bytes per
held-out token, at most half the corpus), so it never sees held-out text unless the reserve falls short (then the
manifest says so).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from crossover.data import corpus as corpora
from crossover.data.cache import (
    cache_root,
    content_key,
    file_lock,
    file_sha256,
    remove_stale_tmp,
    tmp_path_for,
    write_json_atomic,
)
from crossover.data.errors import DataError
from crossover.data.quality import SCORE_COLUMN, TIERS, QualityScorer, assign_tiers, resolve_scorer
from crossover.data.tokenizer import (
    check_size,
    decode_ids,
    encode_text,
    get_tokenizer,
    real_size,
    special_ids,
    tokenizer_key,
)
from crossover.specs.expand import padded_vocab
from crossover.specs.study import DataSpec

if TYPE_CHECKING:
    import datasets
    from tokenizers import Tokenizer

STORE_VERSION = 1
RESERVE_BYTES_PER_TOKEN = 8  # held-out reserve kept from tokenizer training: 8 bytes per held-out token
BATCH_DOCS = 512
FULL_VERIFY_BYTES = 1 << 30  # stores up to 1 GiB are hashed on every load; larger ones when their stat changes
FILES = ("tokens.bin", "docs.npz", "heldout.jsonl", "tokenizer.json")

Progress = Callable[[str, int, int | None], None]  # (stage, done, total or None)
Notify = Callable[[str], None]


def _quiet_progress(stage: str, done: int, total: int | None) -> None:
    pass


def _log_notify(message: str) -> None:
    logging.getLogger("crossover.data").warning(message)


def corpus_key(data: DataSpec) -> str:
    """The corpus as this data spec splits it: its fingerprint and the held-out size (cheap: no reads)."""
    return content_key("corpus", corpora.fingerprint(data.corpus), data.heldout_tokens, RESERVE_BYTES_PER_TOKEN)


def store_key(data: DataSpec) -> str:
    ckey = corpus_key(data)
    return content_key("store", STORE_VERSION, ckey, tokenizer_key(data.tokenizer, ckey), data.quality_scorer)


def store_dir(data: DataSpec) -> Path:
    """Where this machine reads the store: the local store, or the local copy of a shared one (`data.store`)."""
    return cache_root(data.cache_dir) / ("shared" if data.store else "stores") / store_key(data)


def read_manifest(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


class PreparedData:
    """A verified token store, memory-mapped: the tokenizer, special ids, documents, held-out split and tiers."""

    def __init__(self, root: Path, manifest: dict[str, Any], built: bool = False, source: str | None = None):
        self.root = root
        self.manifest = manifest
        self.built = built  # True when this call built the store, False when it came from the cache
        self.source = source  # the shared store (data.store) this is a local copy of; None for a local store
        tok = manifest["tokenizer"]
        self.eod_id: int = tok["eod_id"]
        self.mask_id: int = tok["mask_id"]
        self.pad_id: int = tok["pad_id"]
        self.vocab_size: int = tok["size"]  # the tokenizer's real size (largest id + 1)
        self.padded_vocab: int = tok["padded_vocab"]  # embedding rows: padded_vocab(spec size)
        self.dtype = np.dtype(manifest["dtype"])
        self.tokens = (
            np.memmap(root / "tokens.bin", dtype=self.dtype, mode="r")
            if manifest["tokens"]
            else (np.zeros(0, self.dtype))
        )
        with np.load(root / "docs.npz") as docs:
            self.offsets: np.ndarray = docs["offsets"]
            self.digests: np.ndarray = docs["digest"]
            self.scores: np.ndarray = docs["score"]
            self.tiers: np.ndarray = docs["tier"]
            self.heldout: np.ndarray = docs["heldout"]
        self._tokenizer: Tokenizer | None = None

    # ---- sizes
    @property
    def num_documents(self) -> int:
        return len(self.digests)

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def heldout_tokens(self) -> int:
        return int(self.manifest["heldout"]["tokens"])

    def training_documents(self, quality: str = "all") -> np.ndarray:
        """Indices of the training documents (never held out) of a tier, or of all tiers for 'all'."""
        if quality == "all":
            return np.flatnonzero(~self.heldout)
        if quality not in TIERS:
            raise DataError(f"unknown quality tier '{quality}'; tiers: all, {', '.join(TIERS)}")
        return np.flatnonzero(self.tiers == TIERS.index(quality))

    def document_lengths(self, docs: np.ndarray) -> np.ndarray:
        return self.offsets[docs + 1] - self.offsets[docs]

    def available_tokens(self, quality: str = "all") -> int:
        """Training tokens a unique budget of this tier can draw from (end-of-document tokens included)."""
        return int(self.document_lengths(self.training_documents(quality)).sum())

    @property
    def tokens_sha256(self) -> str:
        """Names the store's tokens: tokens.bin's sha256, or for a shared store the sha256 of its shards' hashes."""
        if "shards" in self.manifest:
            return self.manifest["shards_sha256"]
        return self.manifest["files"]["tokens.bin"]["sha256"]

    def fetch_documents(self, docs: np.ndarray) -> list[str]:
        """Make the tokens of documents `docs` readable: a local store has them all; a copy of a shared store fetches
        the shards holding them (each checked against its sha256). The names of the shards fetched now."""
        if self.source is None:
            return []
        from crossover.data.shards import fetch_shards, shards_of  # lazy: pyarrow's filesystems, shared stores only

        return fetch_shards(self, shards_of(self.manifest, self.offsets[docs]))

    # ---- tokenizer
    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            from tokenizers import Tokenizer  # lazy: keeps tokenizers out of crossover validate

            self._tokenizer = Tokenizer.from_file(str(self.root / "tokenizer.json"))
        return self._tokenizer

    def encode(self, text: str) -> list[int]:
        """Token ids of a text exactly as the store tokenized documents (special-token text stays text)."""
        return encode_text(self.tokenizer, text)

    def decode(self, ids: Any) -> str:
        return decode_ids(self.tokenizer, ids)

    # ---- held-out data
    def heldout_documents(self, limit: int | None = None) -> list[dict[str, str]]:
        """Held-out documents as {'id', 'text'} in hash order (the first `limit`), e.g. for a cloze task."""
        out = []
        with open(self.root / "heldout.jsonl") as f:
            for line in f:
                if limit is not None and len(out) >= limit:
                    break
                out.append(json.loads(line))
        return out

    def heldout_stream(self) -> np.ndarray:
        """All held-out tokens, documents in hash order, each followed by end-of-document (int64). A shared store
        keeps them in heldout.bin too, so evaluating needs none of its training shards."""
        if "shards" in self.manifest:
            return np.fromfile(self.root / "heldout.bin", dtype=self.dtype).astype(np.int64)
        docs = np.flatnonzero(self.heldout)
        docs = docs[np.argsort(self.digests[docs], kind="stable")]
        if len(docs) == 0:
            return np.zeros(0, np.int64)
        return np.concatenate([self.tokens[self.offsets[d] : self.offsets[d + 1]] for d in docs]).astype(np.int64)

    def heldout_windows(self, seq_len: int, max_windows: int | None = None) -> np.ndarray:
        """Held-out tokens packed into [N, seq_len] int64 windows (the partial last window dropped).

        With `max_windows`, that many windows spread evenly over the whole held-out set, so a small evaluation
        budget still samples every part of it rather than its first documents only."""
        stream = self.heldout_stream()
        n = len(stream) // seq_len
        windows = stream[: n * seq_len].reshape(n, seq_len)
        if max_windows is not None and max_windows < n:
            windows = windows[np.linspace(0, n - 1, max_windows).round().astype(np.int64)]
        return windows

    def stats(self) -> dict[str, Any]:
        """What `crossover data stats` prints: documents, tokens, held-out and tiers (from the manifest)."""
        m = self.manifest
        return {
            "store": str(self.root),
            "corpus": m["corpus"]["source"],
            "documents": m["documents"],
            "duplicates_dropped": m["duplicates_dropped"],
            "empty_dropped": m["empty_dropped"],
            "tokens": m["tokens"],
            "dtype": m["dtype"],
            "tokenizer": m["tokenizer"],
            "heldout": m["heldout"],
            "train": m["train"],
            "quality": m["quality"],
        }


# ---------------------------------------------------------------------------------------------------- prepare


def prepare(
    data: DataSpec,
    *,
    progress: Progress | None = None,
    notify: Notify | None = None,
    rebuild: bool = False,
    full_verify: bool = False,
) -> PreparedData:
    """The tokenizer and token store of a data spec, loaded from the cache (and verified) or built.

    Only `corpus`, `tokenizer`, `heldout_tokens`, `quality_scorer`, `cache_dir` and `store` matter: every trial of a
    study (any budget, tier, seq_len or objective) shares one store. With `data.store` set the store is a shared
    one, built by `crossover data prepare` (a Ray Data job, crossover.platform.data_job): this copies its manifest,
    document table, tokenizer and held-out files into the local cache, and the trial's budget fetches the shards it
    reads (`PreparedData.fetch_documents`), every file checked in full; `rebuild` and `full_verify` do not apply.
    `progress(stage, done, total)` reports building; `notify(message)` reports a corrupted store being rebuilt and
    similar (default: a logging warning).
    Raises DataError for problems the user can fix.
    """
    progress = progress or _quiet_progress
    notify = notify or _log_notify
    cache = cache_root(data.cache_dir)
    if data.store:
        from crossover.data.shards import open_shared  # lazy: pyarrow's filesystems, shared stores only

        return open_shared(data, notify=notify)
    key = store_key(data)
    final = cache / "stores" / key
    with file_lock(cache / "stores" / f".{key}.lock"):
        remove_stale_tmp(final.parent, key)
        if final.exists():
            if rebuild:
                shutil.rmtree(final)
            else:
                problem = verify_store(final, key, full=full_verify)
                if problem is None:
                    return PreparedData(final, read_manifest(final) or {})
                notify(f"token store {final} is {problem}; rebuilding it")
                shutil.rmtree(final)
        tmp = tmp_path_for(final)
        tmp.mkdir(parents=True)
        try:
            manifest = _build(data, cache, tmp, progress, notify)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _record_verified(final, manifest)
        return PreparedData(final, manifest, built=True)


def verify_store(root: Path, key: str, full: bool = False) -> str | None:
    """None when the store is complete and intact, else what is wrong with it ('incomplete: ...')."""
    manifest = read_manifest(root)
    if manifest is None:
        return "incomplete (no readable manifest.json)"
    if manifest.get("version") != STORE_VERSION or manifest.get("key") != key:
        return "from another version or settings"
    files = manifest.get("files", {})
    total = 0
    for name in FILES:
        entry = files.get(name)
        path = root / name
        if entry is None:
            return f"incomplete (manifest lacks {name})"
        if not path.exists():
            return f"incomplete ({name} is missing)"
        size = path.stat().st_size
        if size != entry["size"]:
            return f"corrupted ({name} has {size} bytes, the manifest says {entry['size']})"
        total += size
    if full or total <= FULL_VERIFY_BYTES or not _stat_unchanged(root, manifest):
        for name in FILES:
            if file_sha256(root / name) != files[name]["sha256"]:
                return f"corrupted ({name} does not match its sha256 in the manifest)"
        _record_verified(root, manifest)
    return None


def _stat_signature(root: Path) -> list[list[int]]:
    out = []
    for name in FILES:
        st = (root / name).stat()
        out.append([st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino])
    return out


def _record_verified(root: Path, manifest: dict[str, Any]) -> None:
    """Remember the files' stat after a full check, so large stores are re-hashed only when their files change."""
    if sum(e["size"] for e in manifest["files"].values()) > FULL_VERIFY_BYTES:
        try:
            write_json_atomic(root / "verified.json", _stat_signature(root))
        except OSError:
            pass  # a read-only cache: verify fully next time


def _stat_unchanged(root: Path, manifest: dict[str, Any]) -> bool:
    try:
        return json.loads((root / "verified.json").read_text()) == _stat_signature(root)
    except (OSError, ValueError):
        return False


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", errors="surrogatepass"), digest_size=16).digest()


def _batches(ds: datasets.Dataset, columns: list[str]) -> Iterator[tuple[int, dict[str, list]]]:
    """(first row index, batch) over the dataset."""
    start = 0
    for batch in ds.select_columns(columns).iter(batch_size=BATCH_DOCS):
        yield start, batch
        start += len(next(iter(batch.values())))


@dataclass
class StorePlan:
    """What a store's build knows before tokenizing (stages 1 to 3, on one machine: they need the whole corpus at
    once): the corpus, which rows are kept, the held-out reserve, the quality scorer and the tokenizer."""

    data: DataSpec
    key: str
    ds: datasets.Dataset
    docs: _Documents
    scorer_name: str
    scorer: QualityScorer | None
    reserved: np.ndarray
    tok: Tokenizer
    tok_key: str
    size: int
    dtype: np.dtype
    started: float


def corpus_columns(data: DataSpec) -> tuple[list[str], bool]:
    """(the columns beside id and text the corpus is loaded with, whether a missing one is an error)."""
    named_column = data.quality_scorer not in ("auto", "code", "prose")
    if data.quality_scorer == "auto":
        return [SCORE_COLUMN], False
    return ([data.quality_scorer] if named_column else []), named_column


def load_store_corpus(data: DataSpec, cache: Path) -> datasets.Dataset:
    columns, required = corpus_columns(data)
    return corpora.load_corpus(data.corpus, cache / "hf-datasets", columns=columns, required=required)


def plan_build(data: DataSpec, cache: Path, progress: Progress, notify: Notify) -> StorePlan:
    """Stages 1 to 3: read the corpus, hash and deduplicate its documents, reserve the held-out candidates, choose
    the quality scorer and train (or load) the tokenizer."""
    started = time.time()
    progress("reading corpus", 0, None)
    ds = load_store_corpus(data, cache)
    docs = _hash_documents(ds, data, progress)
    scorer_name, scorer = _quality_scorer(ds, data, docs.samples)
    reserved = _heldout_reserve(docs, data)
    tok, tok_key = _train_tokenizer(ds, data, cache, docs.keep & ~reserved, progress, notify)
    size = check_size(tok, data.tokenizer)
    dtype = np.dtype(np.uint16 if size <= 1 << 16 else np.uint32)
    key = store_key(data)
    return StorePlan(data, key, ds, docs, scorer_name, scorer, reserved, tok, tok_key, size, dtype, started)


def _build(data: DataSpec, cache: Path, out: Path, progress: Progress, notify: Notify) -> dict[str, Any]:
    """Build the store's files in `out`, stage by stage; its manifest."""
    plan = plan_build(data, cache, progress, notify)
    n_rows = len(plan.ds)
    with open(out / "tokens.bin", "wb") as f:
        encoded = encode_rows(
            plan.ds,
            plan.tok,
            plan.dtype,
            plan.docs.keep,
            plan.scorer,
            plan.scorer_name,
            f,
            lambda done: progress("tokenizing", done, n_rows),
        )
        f.flush()
        os.fsync(f.fileno())
    progress("writing store", 0, None)
    layout = finish_layout(plan, encoded.lengths, encoded.scores, notify)
    write_store_files(plan.ds, plan.docs, layout, plan.tok, out)
    manifest = write_manifest(plan, layout, out, FILES)
    assert manifest["files"]["tokens.bin"]["sha256"] == encoded.sha256
    return manifest


def finish_layout(plan: StorePlan, lengths: np.ndarray, scores: np.ndarray, notify: Notify) -> _Layout:
    """Stage 5 from every row's token count and score (however they were tokenized)."""
    layout = _split_and_tier(plan.docs, lengths, scores, plan.reserved, plan.data)
    if layout.tokenizer_saw_heldout and plan.data.tokenizer.pretrained is None:
        notify("the held-out reserve was too small: the BPE was trained on some held-out documents")
    return layout


@dataclass
class _Documents:
    """Stage 1: which corpus rows are kept (non-empty, first of their exact duplicates), their content hashes and
    UTF-8 sizes, and up to 200 samples for choosing the quality scorer."""

    rows: int
    keep: np.ndarray  # bool per row
    digests: np.ndarray  # uint64 per row (0 where not kept)
    nbytes: np.ndarray  # int64 per row
    samples: list[tuple[str, str]]
    empty: int
    duplicates: int

    @property
    def kept(self) -> np.ndarray:
        return np.flatnonzero(self.keep)


def _hash_documents(ds: datasets.Dataset, data: DataSpec, progress: Progress) -> _Documents:
    n_rows = len(ds)
    docs = _Documents(
        n_rows,
        np.zeros(n_rows, dtype=bool),
        np.zeros(n_rows, dtype=np.uint64),
        np.zeros(n_rows, dtype=np.int64),
        [],
        0,
        0,
    )
    seen: set[bytes] = set()
    for start, batch in _batches(ds, ["id", "text"]):
        for j, (doc_id, text) in enumerate(zip(batch["id"], batch["text"], strict=True)):
            if not text or not text.strip():
                docs.empty += 1
                continue
            d = _digest(text)
            if d in seen:
                docs.duplicates += 1
                continue
            seen.add(d)
            docs.keep[start + j] = True
            docs.digests[start + j] = int.from_bytes(d[:8], "big")
            docs.nbytes[start + j] = len(text.encode("utf-8", errors="surrogatepass"))
            if len(docs.samples) < 200:
                docs.samples.append((doc_id, text))
        progress("hashing documents", start + len(batch["id"]), n_rows)
    if not docs.keep.any():
        raise DataError(f"corpus '{data.corpus.source}' has no non-empty documents")
    return docs


def _quality_scorer(ds: datasets.Dataset, data: DataSpec, samples: list[tuple[str, str]]):
    """(name, scorer) of the spec's quality scorer; the scorer is None where the score is a corpus column."""
    try:
        return resolve_scorer(
            data.quality_scorer,
            ds.column_names,
            True if corpora.kind(data.corpus) in ("stdlib", "packages") else None,
            samples,
        )
    except ValueError as exc:
        raise DataError(str(exc)) from None


def _heldout_reserve(docs: _Documents, data: DataSpec) -> np.ndarray:
    """Stage 2: the rows the BPE trainer never sees (bool per row), a prefix of the hash order large enough for the
    held-out set, and never more than half the corpus: a reserve holding every document would leave the BPE no text
    to learn merges from (a 256-byte vocabulary); where the held-out set outgrows it, the manifest says the BPE saw
    held-out text."""
    kept = docs.kept
    by_hash = kept[np.argsort(docs.digests[kept], kind="stable")]
    reserve_bytes = np.cumsum(docs.nbytes[by_hash])
    reserve_n = int(np.searchsorted(reserve_bytes, RESERVE_BYTES_PER_TOKEN * data.heldout_tokens, side="left")) + 1
    reserve_n = min(reserve_n, int(np.searchsorted(reserve_bytes, reserve_bytes[-1] / 2, side="left")))
    reserved = np.zeros(docs.rows, dtype=bool)
    reserved[by_hash[:reserve_n]] = True
    return reserved


def _train_tokenizer(
    ds: datasets.Dataset, data: DataSpec, cache: Path, shown: np.ndarray, progress: Progress, notify: Notify
):
    """Stage 3: the spec's tokenizer (trained on the rows `shown`, or cached, or pretrained) and its cache key."""

    def training_texts() -> tuple[Iterator[str], int]:
        def texts() -> Iterator[str]:
            for start, batch in _batches(ds, ["text"]):
                for j, text in enumerate(batch["text"]):
                    if shown[start + j]:
                        yield text

        return texts(), int(shown.sum())

    progress("training tokenizer", 0, None)
    return get_tokenizer(data.tokenizer, cache, corpus_key(data), training_texts, notify)


@dataclass
class EncodedRows:
    """What `encode_rows` wrote: tokens and quality score per row (0 for rows not kept), and the bytes' sha256."""

    lengths: np.ndarray  # int64 per row: the document's tokens plus its end-of-document, 0 where not kept
    scores: np.ndarray  # float64 per row
    sha256: str
    size: int  # bytes written


def encode_rows(
    ds: datasets.Dataset,
    tok: Tokenizer,
    dtype: np.dtype,
    keep: np.ndarray,
    scorer: QualityScorer | None,
    scorer_name: str,
    sink: BinaryIO,
    progress: Callable[[int], None] | None = None,
) -> EncodedRows:
    """Stage 4, the one way a store's tokens are made: each kept row of `ds` (`keep`: bool per row of `ds`) as its
    token ids and end-of-document, in row order, written to `sink` (a file, or a stream to object storage), scored on
    the way; `progress(rows done)` after each batch. The whole corpus at once builds a local store's tokens.bin; a
    range of rows builds one shard of a shared store, and the shards in row order concatenate to those same bytes.

    The tokenizers library encodes each batch on all the cores it is given, one batch ahead on a thread (it
    releases the GIL), so scoring overlaps encoding."""
    n_rows = len(ds)
    lengths = np.zeros(n_rows, dtype=np.int64)
    scores = np.zeros(n_rows, dtype=np.float64)
    tokens_hash = hashlib.sha256()
    score_cols = ["id", "text"] + ([scorer_name] if scorer is None else [])
    eod = np.array([special_ids(tok).eod], dtype=dtype)

    def encode(start: int, batch: dict[str, list]) -> tuple[int, dict[str, list], list[int], list]:
        rows = [j for j in range(len(batch["text"])) if keep[start + j]]
        texts = [batch["text"][j] for j in rows]
        return start, batch, rows, tok.encode_batch_fast(texts, add_special_tokens=False) if texts else []

    def encoded() -> Iterator[tuple[int, dict[str, list], list[int], list]]:
        with ThreadPoolExecutor(1) as pool:
            pending = None
            for start, batch in _batches(ds, score_cols):
                future = pool.submit(encode, start, batch)
                if pending is not None:
                    yield pending.result()
                pending = future
            if pending is not None:
                yield pending.result()

    done = size = 0
    tok.encode_special_tokens = True  # a literal "<|endoftext|>" in a document is text, not a separator
    try:
        for start, batch, rows, encodings in encoded():
            pieces = []
            for j, enc in zip(rows, encodings, strict=True):
                pieces.append(np.asarray(enc.ids, dtype=dtype))
                pieces.append(eod)
                lengths[start + j] = len(enc.ids) + 1
            if pieces:
                block = np.concatenate(pieces).tobytes()
                sink.write(block)
                tokens_hash.update(block)
                size += len(block)
            for j, s in zip(rows, _score(scorer, scorer_name, batch, rows), strict=True):
                scores[start + j] = s
            done += len(batch["text"])
            if progress is not None:
                progress(done)
    finally:
        tok.encode_special_tokens = False
    return EncodedRows(lengths, scores, tokens_hash.hexdigest(), size)


@dataclass
class _Layout:
    """Stage 5, over the kept documents (corpus order): where each starts in tokens.bin, which are held out (the
    first by content hash, up to heldout_tokens), and the quality tier of each training document."""

    lengths: np.ndarray
    scores: np.ndarray
    digests: np.ndarray
    offsets: np.ndarray
    heldout: np.ndarray  # bool
    heldout_order: np.ndarray  # indices into the kept documents of the held-out ones, in hash order
    tiers: np.ndarray  # int8, -1 for held-out documents
    tokenizer_saw_heldout: bool

    @property
    def total_tokens(self) -> int:
        return int(self.offsets[-1])


def _split_and_tier(
    docs: _Documents, lengths: np.ndarray, scores: np.ndarray, reserved: np.ndarray, data: DataSpec
) -> _Layout:
    kept = docs.kept
    lengths, scores, digests = lengths[kept], scores[kept], docs.digests[kept]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    order = np.argsort(digests, kind="stable")
    n_heldout = int(np.searchsorted(np.cumsum(lengths[order]), data.heldout_tokens, side="left")) + 1
    if n_heldout >= len(kept):
        raise DataError(
            f"corpus '{data.corpus.source}' has {int(offsets[-1]):,} tokens in {len(kept)} documents: heldout_tokens "
            f"{data.heldout_tokens:,} leaves no training documents; lower data.heldout_tokens or use a larger corpus"
        )
    heldout = np.zeros(len(kept), dtype=bool)
    heldout[order[:n_heldout]] = True
    tiers = np.full(len(kept), -1, dtype=np.int8)
    train = np.flatnonzero(~heldout)
    tiers[train] = assign_tiers(scores[train], lengths[train], digests[train])
    saw = bool(reserved[kept[order[:n_heldout]]].sum() < n_heldout)
    return _Layout(lengths, scores, digests, offsets, heldout, order[:n_heldout], tiers, saw)


def write_store_files(ds: datasets.Dataset, docs: _Documents, layout: _Layout, tok, out: Path) -> None:
    """Stage 6: docs.npz (offsets, digests, scores, tiers, held-out flags), heldout.jsonl (the held-out documents'
    text, hash order) and tokenizer.json beside tokens.bin."""
    np.savez(
        out / "docs.npz",
        offsets=layout.offsets,
        digest=layout.digests,
        score=layout.scores,
        tier=layout.tiers,
        heldout=layout.heldout,
    )
    held_rows = docs.kept[layout.heldout_order]
    wanted = set(held_rows.tolist())
    texts_by_row: dict[int, dict[str, str]] = {}
    for start, batch in _batches(ds, ["id", "text"]):
        for j in range(len(batch["text"])):
            if start + j in wanted:
                texts_by_row[start + j] = {"id": batch["id"][j], "text": batch["text"][j]}
    with open(out / "heldout.jsonl", "w") as f:
        for row in held_rows:
            f.write(json.dumps(texts_by_row[int(row)]) + "\n")
    tok.save(str(out / "tokenizer.json"))


def write_manifest(
    plan: StorePlan, layout: _Layout, out: Path, names: tuple[str, ...], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Stage 7: the manifest (what was built, from what, and the size and sha256 of each file of `names` in `out`,
    plus `extra`), written last and synced: a store is whole once its manifest exists."""
    data, key, docs, tok, dtype = plan.data, plan.key, plan.docs, plan.tok, plan.dtype
    tok_key, size, scorer_name, started = plan.tok_key, plan.size, plan.scorer_name, plan.started
    lengths, tiers, scores = layout.lengths, layout.tiers, layout.scores
    ids = special_ids(tok)
    n_heldout = len(layout.heldout_order)
    heldout_count = int(lengths[layout.heldout].sum())
    tier_info = {}
    for t, name in enumerate(TIERS):
        members = tiers == t
        tier_info[name] = {
            "documents": int(members.sum()),
            "tokens": int(lengths[members].sum()),
            "score_min": float(scores[members].min()) if members.any() else None,
            "score_max": float(scores[members].max()) if members.any() else None,
        }
    files = {name: {"size": (out / name).stat().st_size, "sha256": file_sha256(out / name)} for name in names}
    documents, total = len(lengths), layout.total_tokens
    manifest = {
        "version": STORE_VERSION,
        "key": key,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "build_seconds": round(time.time() - started, 3),
        "corpus": {**data.corpus.model_dump(), "rows": docs.rows},
        "documents": documents,
        "duplicates_dropped": docs.duplicates,
        "empty_dropped": docs.empty,
        "tokens": total,
        "max_document_tokens": int(lengths.max()),
        "dtype": dtype.name,
        "tokenizer": {
            "key": tok_key,
            "kind": "pretrained" if data.tokenizer.pretrained else "bpe",
            "name": data.tokenizer.pretrained or f"bpe{data.tokenizer.bpe_vocab}",
            "size": size,
            "real_size": real_size(tok),
            "padded_vocab": padded_vocab(data.tokenizer.size),
            "eod_id": ids.eod,
            "mask_id": ids.mask,
            "pad_id": ids.pad,
        },
        "heldout": {
            "requested": data.heldout_tokens,
            "documents": n_heldout,
            "tokens": heldout_count,
            "tokenizer_saw_heldout": layout.tokenizer_saw_heldout,
        },
        "train": {"documents": documents - n_heldout, "tokens": total - heldout_count},
        "quality": {"scorer": scorer_name, "tiers": tier_info},
        "files": files,
        **(extra or {}),
    }
    with open(out / "manifest.json", "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    return manifest


def _score(scorer: QualityScorer | None, column: str, batch: dict[str, list], rows: list[int]) -> list[float]:
    if scorer is None:
        out = []
        for j in rows:
            value = batch[column][j]
            try:
                out.append(float("nan") if value is None else float(value))
            except (TypeError, ValueError):
                raise DataError(f"quality column '{column}' holds a non-number: {value!r}") from None
        return out
    return [scorer.score(batch["text"][j], batch["id"][j]) for j in rows]
