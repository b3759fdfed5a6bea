"""Corpus sources, each returned as a `datasets.Dataset` with `id` and `text` columns.

- `stdlib-python` (the default): the `.py` files of the running interpreter's standard library (found with
  `sysconfig`, site-packages and dist-packages excluded), one document per file, sorted by relative path, with the
  absolute `path` kept as a column.
- `python-packages`: the `.py` files of the running environment's site-packages (`sysconfig`'s purelib and platlib:
  torch, ray, mlflow and the rest are installed anyway), the same way; roughly 10x the standard library, for studies
  that need more unique tokens offline. Exact duplicates are dropped and documents held out by content hash, as for
  every corpus (crossover.data.store).
- files: a local file, folder or glob, or the same in object storage, `s3://bucket/prefix` or `gs://bucket/prefix`
  (an object, every object under a "folder" prefix, or a glob such as `s3://bucket/shards/part-*.jsonl`): jsonl,
  json, parquet or csv rows (the text in `CorpusSpec.text_field`), or text (one document per file, whatever its
  extension). `corpus_files` says which files are read and why each other one is skipped; the rules are the same
  wherever the files are. Object storage is read through `pyarrow.fs`: S3 with the standard AWS variables
  (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` or `AWS_PROFILE`, `AWS_REGION`, and `AWS_ENDPOINT_URL` for
  S3-compatible storage such as MinIO or Ceph), GCS with Google's default credentials
  (`GOOGLE_APPLICATION_CREDENTIALS`, or the node's workload identity).
- `hf:<name>`: a Hugging Face hub dataset by name, `hf_config` and split (`streaming: true` streams it once into
  an on-disk Dataset instead of downloading the repository). `<name>` may also be a local dataset directory, which
  `datasets.load_dataset` reads the same way.

Everything here but `load_corpus` is cheap (no `datasets` import; of a local folder's or glob's text files only the
first 8 KiB are read, to tell text from binary; of an object-store source, `fingerprint` and `size_bound` read only
the listing): `validate` and `plan` use `fingerprint` and `size_bound`.
"""

from __future__ import annotations

import contextlib
import glob as globlib
import io
import os
import shutil
import sys
import sysconfig
import tokenize
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from fnmatch import fnmatchcase
from pathlib import Path, PurePath, PurePosixPath
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from crossover.data.cache import cache_root, content_key, file_lock, remove_stale_tmp, tmp_path_for
from crossover.data.errors import DataError
from crossover.specs.study import CorpusSpec

if TYPE_CHECKING:
    import datasets
    import pyarrow.fs

STDLIB = "stdlib-python"
PACKAGES = "python-packages"
HF_PREFIX = "hf:"
OBJECT_STORE_SCHEMES = ("s3", "gs")
EXTENSIONS = {  # the structured formats; any other file is read as text (one document) unless it is binary
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".csv": "csv",
}
SNIFF_BYTES = 8192  # how much of a text file is read to tell text from binary
REMOTE_READERS = 16  # objects read at once: each read waits on the network, not on this machine
GCS_RETRY_SECONDS = 3  # pyarrow retries GCS requests for 15 minutes by default: an unreachable source would hang
_BUILDER = {"jsonl": "json", "json": "json", "parquet": "parquet", "csv": "csv"}
_EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__"}
_T = TypeVar("_T")
_R = TypeVar("_R")


def kind(corpus: CorpusSpec) -> str:
    """'stdlib', 'packages', 'hf' or 'files' (a file, folder or glob, local or in object storage)."""
    if corpus.source == STDLIB:
        return "stdlib"
    if corpus.source == PACKAGES:
        return "packages"
    if corpus.source.startswith(HF_PREFIX):
        return "hf"
    return "files"


def in_object_store(corpus: CorpusSpec) -> bool:
    """An `s3://` or `gs://` source (listed, so its size is known without reading it: not `is_remote`)."""
    return kind(corpus) == "files" and _scheme(corpus.source) is not None


def is_remote(corpus: CorpusSpec) -> bool:
    """A hub dataset (not a local directory given as hf:<path>): its size is unknown until it is downloaded."""
    return kind(corpus) == "hf" and not Path(corpus.source[len(HF_PREFIX) :]).expanduser().exists()


def describe(corpus: CorpusSpec) -> str:
    return corpus.source if kind(corpus) != "hf" or not corpus.hf_config else f"{corpus.source} ({corpus.hf_config})"


def _python_files(root: Path, excluded: set[str]) -> list[Path]:
    """The .py files under `root` (folders named in `excluded` and hidden ones skipped), by relative path."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in excluded and not d.startswith("."))
        files.extend(Path(dirpath) / f for f in filenames if f.endswith(".py"))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def stdlib_files() -> tuple[Path, list[Path]]:
    """The standard library root and its .py files in deterministic (sorted relative path) order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return root, _python_files(root, _EXCLUDED_DIRS)


def package_files() -> list[tuple[str, Path]]:
    """(id, path) of every .py file in the environment's site-packages folders, in deterministic order. The id is
    the path relative to its folder (prefixed by the folder's number when purelib and platlib differ)."""
    paths = sysconfig.get_paths()
    roots = sorted({Path(paths[key]) for key in ("purelib", "platlib") if key in paths and Path(paths[key]).is_dir()})
    found = []
    for i, root in enumerate(roots):
        prefix = f"{i}:" if len(roots) > 1 else ""
        found += [(prefix + p.relative_to(root).as_posix(), p) for p in _python_files(root, {"__pycache__"})]
    if not found:
        raise DataError(
            f"corpus '{PACKAGES}': no .py files in this environment's site-packages ({', '.join(map(str, roots))})"
        )
    return found


def python_files(corpus: CorpusSpec) -> list[tuple[str, Path]]:
    """(id, path) of the documents of a Python-source corpus (stdlib-python or python-packages)."""
    if kind(corpus) == "packages":
        return package_files()
    root, files = stdlib_files()
    return [(p.relative_to(root).as_posix(), p) for p in files]


Stat = tuple[int, int | None]  # a file's size in bytes and modification time in ns


@dataclass(frozen=True)
class CorpusFiles:
    """The files of a file source, local or in object storage: the `files` read as `format` (sorted; a document's id
    is its path relative to `base`), each one's `stats`, and the entries of a folder or glob left out, as (path
    relative to `base`, reason). An object-store source's paths are 'bucket/key', read through its pyarrow
    `filesystem`; a local source has none."""

    base: PurePath
    files: list[PurePath]
    format: str
    skipped: list[tuple[str, str]]
    stats: dict[PurePath, Stat]
    filesystem: pyarrow.fs.FileSystem | None = None
    scheme: str = ""  # "s3" or "gs" for object storage

    def id(self, path: PurePath) -> str:
        return os.path.relpath(path, self.base)

    def uri(self, path: PurePath) -> str:
        """The path as a user names it: s3://bucket/key, or the local path."""
        return f"{self.scheme}://{path}" if self.scheme else str(path)

    def read(self, path: PurePath, limit: int = -1) -> bytes:
        """The file's bytes (its first `limit` ones when given)."""
        return _read(self.filesystem, path, limit)


class _Listing(NamedTuple):
    """What a source names before the format rules apply: one `file`, a `folder` or the matches of a `glob`; the
    files found (sorted) with their stats, and the entries skipped already (hidden, not a regular file...)."""

    what: str
    base: PurePath
    found: list[PurePath]
    skipped: list[tuple[str, str]]
    stats: dict[PurePath, Stat]
    filesystem: pyarrow.fs.FileSystem | None = None
    scheme: str = ""


def corpus_files(corpus: CorpusSpec, sniff: bool = True) -> CorpusFiles:
    """The files of a file source (a file, a folder or a glob, local or in object storage) and those skipped, with
    their reasons.

    A file named as the source is read in `format`, or by its extension (`EXTENSIONS`, else text). In a folder (walked
    recursively; in object storage, every object under the prefix) or a glob's matches, a file with a structured
    extension is read in that format and any other file as one text document, except:
    - hidden files and folders (a name starting with "."), links to folders and what is not a regular file (a
      broken link, a pipe) are skipped;
    - a text file is skipped as binary when its first 8 KiB hold a NUL byte (UTF-16 text too), or as not UTF-8 when
      over a tenth of their bytes are not UTF-8 (convert it with iconv); fewer are decoded as replacement characters;
    - `format: auto` refuses a folder or glob that mixes structured formats, or structured and text files (an
      unexpected README.md is no document of a jsonl corpus, and 900 text files beside one stray .json are no json
      corpus): set `format` to choose;
    - an explicit structured `format` reads a folder's files of that extension (the others are skipped) and every
      file a glob matches; `format: txt` reads every file as text.
    Without `sniff`, text files are not read to tell text from binary (all are kept): what an object-store source's
    `fingerprint` and `size_bound` use, so that they cost one listing and no read of any object.
    A `hf:<folder>` source is read by `datasets`; its files here only identify its content (`fingerprint`), and
    beside structured files its text files (a README.md) are left out without an error.
    """
    hf = kind(corpus) == "hf"
    source = corpus.source[len(HF_PREFIX) :] if hf else corpus.source
    scheme = None if hf else _scheme(source)
    if scheme is None:
        return _select(corpus, _local_listing(corpus, source), sniff and not hf, hf)
    with _object_store_errors(corpus, scheme):
        return _select(corpus, _object_store_listing(corpus, source, scheme), sniff, hf)


def _select(corpus: CorpusSpec, listing: _Listing, sniff: bool, hf: bool) -> CorpusFiles:
    """The files of a listing that are read, by the rules of `corpus_files`."""
    base, found, skipped = listing.base, listing.found, list(listing.skipped)
    if listing.what == "file":
        path = found[0]
        fmt = corpus.format if corpus.format != "auto" else _ext_format(path) or "txt"
        problem = _text_problem(listing.filesystem, path) if fmt == "txt" and sniff else None
        if problem:
            raise DataError(
                f"corpus source '{corpus.source}' is {problem}: give a text file, or set "
                f"data.corpus.format to its structured format"
            )
        files = found
    else:
        fmt = corpus.format if corpus.format != "auto" else _auto_format(corpus, base, found, hf)
        if fmt == "txt" and sniff:
            problems = _map(listing.filesystem, lambda p: _text_problem(listing.filesystem, p), found)
            files = [p for p, problem in zip(found, problems, strict=True) if problem is None]
            skipped += [(os.path.relpath(p, base), why) for p, why in zip(found, problems, strict=True) if why]
        elif fmt != "txt" and (listing.what == "folder" or corpus.format == "auto"):
            files = [p for p in found if _ext_format(p) == fmt]
            skipped += [
                (os.path.relpath(p, base), f"not {fmt}: data.corpus.format is {fmt}")
                for p in found
                if _ext_format(p) != fmt
            ]
        else:
            files = found  # the glob chose them, or datasets reads a hf:<folder>, or text files are not sniffed
    skipped.sort()
    if not files:
        reasons = f"; skipped: {count_reasons(skipped)} (e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise DataError(
            f"corpus source '{corpus.source}' matches no files"
            + (f" of format {corpus.format}" if corpus.format != "auto" else "")
            + reasons
        )
    stats = {p: listing.stats[p] for p in files}
    return CorpusFiles(base, files, fmt, skipped, stats, listing.filesystem, listing.scheme)


def _local_listing(corpus: CorpusSpec, source: str) -> _Listing:
    path = Path(source).expanduser()
    if path.is_file():
        return _Listing("file", path.parent, [path], [], _local_stats([path]))
    if path.is_dir():
        files, skipped = _folder_entries(path)
        return _Listing("folder", path, files, skipped, _local_stats(files))
    if globlib.has_magic(source):
        matches = sorted(Path(p) for p in globlib.glob(os.path.expanduser(source), recursive=True))
        files = [p for p in matches if p.is_file()]
        base = Path(os.path.commonpath([str(p.parent) for p in files])) if files else Path(".")
        skipped = [
            (os.path.relpath(p, base), "not a regular file") for p in matches if not p.is_file() and not p.is_dir()
        ]
        return _Listing("glob", base, files, skipped, _local_stats(files))
    if "://" in source:
        raise DataError(
            f"corpus source '{corpus.source}': unsupported scheme '{source.split('://')[0]}'; give a local path, "
            "s3://bucket/prefix or gs://bucket/prefix"
        )
    raise DataError(
        f"corpus source '{corpus.source}' does not exist; give a file, a directory, a glob, an s3:// or gs:// URI, "
        f"'{STDLIB}' or 'hf:<dataset name>'"
    )


def _local_stats(files: Iterable[Path]) -> dict[PurePath, Stat]:
    return {p: (st.st_size, st.st_mtime_ns) for p in files for st in [p.stat()]}


def _folder_entries(root: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """The regular files under `root` (sorted) and the entries skipped (relative to `root`, a folder's with a
    trailing "/"): hidden ones, links to folders (not followed) and whatever is not a regular file."""
    files, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for d in dirnames:
            if d.startswith("."):
                skipped.append((os.path.relpath(here / d, root) + "/", "hidden"))
            elif (here / d).is_symlink():
                skipped.append((os.path.relpath(here / d, root) + "/", "link to a folder"))
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and not (here / d).is_symlink()]
        for name in filenames:
            p = here / name
            if name.startswith("."):
                skipped.append((os.path.relpath(p, root), "hidden"))
            elif p.is_file():
                files.append(p)
            else:
                skipped.append((os.path.relpath(p, root), "not a regular file"))
    return sorted(files), skipped


def _scheme(source: str) -> str | None:
    """'s3' or 'gs' for an object-store URI, else None."""
    scheme, sep, _ = source.partition("://")
    return scheme if sep and scheme in OBJECT_STORE_SCHEMES else None


def _object_store_listing(corpus: CorpusSpec, source: str, scheme: str) -> _Listing:
    """An object, the objects under a prefix (a folder), or those a glob matches: one listing request (per 1,000
    objects), plus one for a single object."""
    import pyarrow.fs  # lazy: ~0.4 s, and only object-store sources need it

    path = PurePosixPath(source[len(scheme) + 3 :].strip("/"))
    bucket = path.parts[0] if path.parts else ""
    if not bucket or globlib.has_magic(bucket):
        raise DataError(f"corpus source '{corpus.source}' names no bucket; give {scheme}://bucket/prefix")
    filesystem = _filesystem(scheme, bucket)
    magic = next((i for i, part in enumerate(path.parts) if globlib.has_magic(part)), len(path.parts))
    root = PurePosixPath(*path.parts[:magic])
    try:
        infos = filesystem.get_file_info(pyarrow.fs.FileSelector(str(root), recursive=True))
    except FileNotFoundError:  # nothing under the prefix (a missing bucket is another error)
        infos = []
    objects = {PurePosixPath(i.path): (i.size, i.mtime_ns) for i in infos if i.type == pyarrow.fs.FileType.File}
    if magic < len(path.parts):
        pattern = path.parts[magic:]
        files = sorted(p for p in objects if _glob_match(p.parts[magic:], pattern))
        base = PurePosixPath(os.path.commonpath([str(p.parent) for p in files])) if files else root
        return _Listing("glob", base, files, [], objects, filesystem, scheme)
    if objects:
        files, hidden = [], set()
        for p in objects:
            parts = p.relative_to(path).parts
            first = next((i for i, part in enumerate(parts) if part.startswith(".")), None)
            if first is None:
                files.append(p)
            else:  # a hidden folder is named once, with a trailing "/", as in a local folder
                hidden.add("/".join(parts[: first + 1]) + ("/" if first < len(parts) - 1 else ""))
        return _Listing("folder", path, sorted(files), [(h, "hidden") for h in hidden], objects, filesystem, scheme)
    info = filesystem.get_file_info(str(path))
    if info.type == pyarrow.fs.FileType.File:
        return _Listing("file", path.parent, [path], [], {path: (info.size, info.mtime_ns)}, filesystem, scheme)
    key = "/".join(path.parts[1:])
    raise DataError(
        f"corpus source '{corpus.source}' does not exist: bucket '{bucket}' holds no object "
        + (f"named '{key}' and none under that prefix" if key else "at all")
        + "; give an object, a folder prefix or a glob"
    )


def _filesystem(scheme: str, bucket: str) -> pyarrow.fs.FileSystem:
    """pyarrow's filesystem for a bucket, configured as `FileSystem.from_uri` configures it (S3: the endpoint from
    AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, else the bucket's region; credentials from the environment) but giving
    up sooner where nothing answers: S3 after three attempts a request (from_uri's retries take 8 s to fail on a
    refused connection; these, 1 to 2 s), GCS after retrying for GCS_RETRY_SECONDS (about 5 s in all, not 15 min)."""
    import pyarrow.fs  # lazy: as in _object_store_listing

    if scheme == "gs":
        return pyarrow.fs.GcsFileSystem(retry_time_limit=timedelta(seconds=GCS_RETRY_SECONDS))
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return pyarrow.fs.S3FileSystem(
        endpoint_override=endpoint,
        region=None if endpoint else pyarrow.fs.resolve_s3_region(bucket),
        retry_strategy=pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=3),
    )


def _glob_match(parts: Sequence[str], pattern: Sequence[str]) -> bool:
    """Whether a path's components match a glob's as Python's `glob(recursive=True)` matches them: `**` spans any
    number of folders, and a wildcard matches no hidden name (one starting with ".")."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(
            _glob_match(parts[i:], pattern[1:])
            for i in range(len(parts) + 1)
            if not any(part.startswith(".") for part in parts[:i])
        )
    return (
        bool(parts)
        and (pattern[0].startswith(".") or not parts[0].startswith("."))
        and fnmatchcase(parts[0], pattern[0])
        and _glob_match(parts[1:], pattern[1:])
    )


@contextlib.contextmanager
def _object_store_errors(corpus: CorpusSpec, scheme: str) -> Iterator[None]:
    """An object store's failure (unreachable, no credentials, no such bucket) as a DataError naming the cause and
    the fix; a local file's OSError (no `scheme`) passes as it is."""
    if not scheme:
        yield
        return
    import pyarrow  # lazy: as in _object_store_listing

    try:
        yield
    except (OSError, pyarrow.ArrowException) as exc:  # pyarrow's "Unknown error" is no OSError
        if scheme == "s3":
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            where = f"S3 endpoint {endpoint}" if endpoint else "AWS S3 (AWS_ENDPOINT_URL is not set)"
            fix = (
                "check the bucket name, that the endpoint is reachable from here, the credentials "
                "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE) and, for S3-compatible storage "
                "(MinIO, Ceph...), AWS_ENDPOINT_URL (its URL)"
            )
        else:
            where = "Google Cloud Storage"
            fix = (
                "check the bucket name, network access to storage.googleapis.com and the credentials "
                "(GOOGLE_APPLICATION_CREDENTIALS: a service account's key file; or the node's workload identity)"
            )
        cause = str(exc).split(" error_info=")[0]  # GCS appends its retry policy's internals
        raise DataError(f"cannot read corpus source '{corpus.source}' from {where}: {cause}. To fix: {fix}") from None


def _read(filesystem: pyarrow.fs.FileSystem | None, path: PurePath, limit: int = -1) -> bytes:
    if filesystem is None:
        with open(path, "rb") as f:
            return f.read(limit)
    with filesystem.open_input_stream(str(path), compression=None) as f:  # as stored, as a local file is read
        return f.read(None if limit < 0 else limit)


def _map(filesystem: pyarrow.fs.FileSystem | None, fn: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
    """`fn` of each item, in order: several at once for an object store (each read waits on the network)."""
    if filesystem is None:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(REMOTE_READERS) as pool:
        return list(pool.map(fn, items))


def _auto_format(corpus: CorpusSpec, base: PurePath, candidates: list[PurePath], hf: bool) -> str:
    """The format of a folder's or glob's files under `format: auto`: their structured format, else txt."""
    structured = [p for p in candidates if _ext_format(p)]
    formats = sorted({_ext_format(p) or "" for p in structured})
    if len(formats) > 1:
        raise DataError(
            f"corpus source '{corpus.source}' mixes formats {formats}; set data.corpus.format or narrow the glob"
        )
    text = [p for p in candidates if not _ext_format(p)]
    if structured and text and not hf:
        fmt = formats[0]
        raise DataError(
            f"corpus source '{corpus.source}' holds {len(structured)} {fmt} file(s) (e.g. "
            f"{os.path.relpath(structured[0], base)}) and {len(text)} other file(s) that would be read as text (e.g. "
            f"{os.path.relpath(text[0], base)}); set data.corpus.format: {fmt} to read only the {fmt} files (the "
            f"others are skipped, and `crossover data prepare --verbose` lists them), or format: txt to read every "
            f"file as one text document"
        )
    return formats[0] if formats else "txt"


def _text_problem(filesystem: pyarrow.fs.FileSystem | None, path: PurePath) -> str | None:
    """Why a file cannot be read as text ('binary: ...', 'not UTF-8: ...', 'unreadable: ...'), None when it can. An
    object that cannot be read raises: a network or permission failure says nothing about the file."""
    try:
        head = _read(filesystem, path, SNIFF_BYTES)
    except OSError as exc:
        if filesystem is not None:
            raise
        return f"unreadable: {exc.strerror or exc}"
    if b"\0" in head:
        return "binary: a NUL byte in its first 8 KiB"
    invalid = len(head) - len(head.decode("utf-8", errors="ignore").encode())
    if invalid > 3 and invalid * 10 > len(head):  # 3: a character cut at the end of the 8 KiB
        return f"not UTF-8: {invalid} of its first {len(head)} bytes; convert it (iconv -t UTF-8)"
    return None


def count_reasons(skipped: Sequence[tuple[str, str]]) -> str:
    """'2 hidden, 1 binary': the reasons of skipped entries (up to a colon), most frequent first."""
    counts = Counter(why.split(":")[0] for _, why in skipped)
    return ", ".join(f"{n} {why}" for why, n in counts.most_common())


def _ext_format(path: PurePath) -> str | None:
    return EXTENSIONS.get(path.suffix.lower())


def fingerprint(corpus: CorpusSpec) -> dict[str, Any]:
    """What identifies the corpus's content, cheaply: file names, sizes and modification times (no reads).

    Of an object-store source, its listing: keys, sizes and modification times (an object rewritten with the same
    size within the same second, S3's time resolution, goes unnoticed: `crossover data prepare --rebuild` reads it
    again). A hub dataset is identified by name, config and split: once its store is built, it is used offline.
    """
    settings = corpus.model_dump(exclude={"streaming"})
    k = kind(corpus)
    if k in ("stdlib", "packages"):
        files = [(doc_id, p.stat()) for doc_id, p in python_files(corpus)]
        return {
            "settings": settings,
            "python": sys.version,
            "files": [(doc_id, st.st_size, st.st_mtime_ns) for doc_id, st in files],
        }
    if k == "hf" and is_remote(corpus):
        return {"settings": settings}
    found = corpus_files(corpus, sniff=not in_object_store(corpus))
    return {
        "settings": settings,
        "root": found.uri(found.base) if found.scheme else str(Path(found.base).resolve()),
        "format": found.format,
        "files": [(found.id(p), *found.stats[p]) for p in found.files],
    }


@dataclass(frozen=True)
class SizeBound:
    """An upper bound on the tokens of a corpus from its bytes, without reading it.

    A byte-level tokenizer emits at most one token per UTF-8 byte, plus one end-of-document token per document;
    `documents` bounds the document count and `max_document` the size of any one document (in tokens).
    """

    tokens: int
    documents: int
    max_document: int


def size_bound(corpus: CorpusSpec) -> SizeBound | None:
    """None where no cheap bound exists (a hub dataset; parquet, which is compressed). Of an object-store source,
    from its listing (a binary file skipped when read still counts here: the bound stays a bound)."""
    k = kind(corpus)
    if k in ("stdlib", "packages"):
        sizes = [p.stat().st_size for _, p in python_files(corpus)]
        return SizeBound(sum(sizes) + len(sizes), len(sizes), max(sizes, default=0) + 1)
    if is_remote(corpus):
        return None
    found = corpus_files(corpus, sniff=not in_object_store(corpus))
    if found.format == "parquet":
        return None
    fmt, sizes = found.format, [found.stats[p][0] for p in found.files]
    if fmt == "txt":
        return SizeBound(sum(sizes) + len(sizes), len(sizes), max(sizes, default=0) + 1)
    # jsonl/json/csv: a row's quoting and separators take at least one byte more than its text, which pays for
    # its end-of-document token, so the file sizes bound the tokens.
    total = sum(sizes)
    return SizeBound(total, total, max(sizes, default=0))


def decode_source(data: bytes) -> str:
    """A source file's bytes as text: UTF-8, else its declared (PEP 263) encoding, else UTF-8 with replacement."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        return data.decode(encoding)
    except (SyntaxError, UnicodeDecodeError, LookupError):
        return data.decode("utf-8", errors="replace")


def load_corpus(
    corpus: CorpusSpec, cache_dir: str | Path | None = None, columns: Sequence[str] = (), required: bool = False
) -> datasets.Dataset:
    """The corpus as a Dataset with `id` (str) and `text` columns, plus any of `columns` it has (e.g. a score);
    with `required`, a missing one of `columns` is a DataError naming the dataset's columns.

    `cache_dir` holds `datasets`' own cache for file and hub sources (default: the crossover cache root).
    """
    import datasets  # lazy: keeps `datasets` (seconds) out of crossover validate and the data package

    quiet = not datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # the CLI shows its own progress
    try:
        return _load(corpus, cache_dir, columns, required)
    finally:
        if not quiet:
            datasets.enable_progress_bars()


def _check_columns(corpus: CorpusSpec, names: Sequence[str], columns: Sequence[str], required: bool) -> None:
    missing = [c for c in columns if c not in names]
    if required and missing:
        raise DataError(f"corpus '{corpus.source}' has no column '{missing[0]}'; its columns are {', '.join(names)}")


def _load(corpus: CorpusSpec, cache_dir: str | Path | None, columns: Sequence[str], required: bool) -> datasets.Dataset:
    import datasets  # lazy: keeps `datasets` (seconds) out of crossover validate and the data package

    hf_cache = str(Path(cache_dir) if cache_dir else cache_root() / "hf-datasets")
    k = kind(corpus)
    if k in ("stdlib", "packages"):
        _check_columns(corpus, ["id", "text", "path"], columns, required)
        found = python_files(corpus)
        return datasets.Dataset.from_dict(
            {
                "id": [doc_id for doc_id, _ in found],
                "text": [decode_source(p.read_bytes()) for _, p in found],
                "path": [str(p) for _, p in found],
            }
        )
    if k == "hf":
        return _load_hf(corpus, hf_cache, columns, required)
    found = corpus_files(corpus)
    if found.format == "txt":
        _check_columns(corpus, ["id", "text", "path"], columns, required)
        with _object_store_errors(corpus, found.scheme):
            texts = _map(found.filesystem, lambda p: decode_source(found.read(p)), found.files)
        return datasets.Dataset.from_dict(
            {"id": [found.id(p) for p in found.files], "text": texts, "path": [found.uri(p) for p in found.files]}
        )
    with _object_store_errors(corpus, found.scheme):
        files = _download(found, Path(hf_cache) / "object-store") if found.filesystem else found.files
    try:
        ds = datasets.load_dataset(
            _BUILDER[found.format], data_files=[str(p) for p in files], split="train", cache_dir=hf_cache
        )
    except Exception as exc:  # datasets raises many types for unreadable files
        raise DataError(
            f"cannot read corpus '{corpus.source}' as {found.format}: {type(exc).__name__}: {exc}"
        ) from None
    return _normalize(ds, corpus, columns, required)


def _download(found: CorpusFiles, root: Path) -> list[Path]:
    """Local copies of an object-store source's structured files, for `datasets` to read them as it reads local
    ones: in `root`/<key of their listing>, reused while the objects are unchanged (as `datasets` keeps a hub
    dataset's downloads), written under a temporary name and renamed into place when complete."""
    final = root / content_key(found.uri(found.base), [(found.id(p), *found.stats[p]) for p in found.files])
    with file_lock(root / f"{final.name}.lock"):
        if not final.is_dir():
            remove_stale_tmp(root, final.name)
            tmp = tmp_path_for(final)
            try:
                _map(found.filesystem, lambda p: _copy_object(found.filesystem, p, tmp / found.id(p)), found.files)
                tmp.rename(final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return [final / found.id(p) for p in found.files]


def _copy_object(filesystem: pyarrow.fs.FileSystem, path: PurePath, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with filesystem.open_input_stream(str(path), compression=None) as source, open(target, "wb") as out:
        shutil.copyfileobj(source, out, 1 << 22)


def _load_hf(corpus: CorpusSpec, hf_cache: str, columns: Sequence[str], required: bool) -> datasets.Dataset:
    import datasets  # lazy: keeps `datasets` (seconds) out of crossover validate and the data package

    name = corpus.source[len(HF_PREFIX) :]
    try:
        ds = datasets.load_dataset(
            name, corpus.hf_config, split=corpus.split, streaming=corpus.streaming, cache_dir=hf_cache
        )
    except Exception as exc:  # network, auth, missing config or split: all user-fixable
        raise DataError(
            f"cannot load Hugging Face dataset '{name}'"
            + (f" config '{corpus.hf_config}'" if corpus.hf_config else "")
            + f" split '{corpus.split}': {type(exc).__name__}: {exc}. Check the name, hf_config and split, and "
            "network access to the hub (or point data.corpus.source at local files)"
        ) from None
    if isinstance(ds, datasets.IterableDataset):
        names = list(ds.column_names or [])
        if names and corpus.text_field not in names:
            raise _missing_field(corpus, names)
        if names:
            _check_columns(corpus, names, columns, required)
        keep = [c for c in (corpus.text_field, "id", *columns) if not names or c in names]
        ds = datasets.Dataset.from_generator(
            _stream_rows,
            gen_kwargs={"stream": ds, "keep": tuple(keep)},  # a list would be sharded
            cache_dir=hf_cache,
            fingerprint=content_key("hf-stream", fingerprint(corpus), keep),
        )
    return _normalize(ds, corpus, columns, required)


def _stream_rows(stream: Any, keep: tuple[str, ...]) -> Any:
    for row in stream:
        yield {c: row.get(c) for c in keep}


def _missing_field(corpus: CorpusSpec, names: list[str]) -> DataError:
    return DataError(
        f"corpus '{corpus.source}' has no text field '{corpus.text_field}'; its columns are {', '.join(names)}. "
        "Set data.corpus.text_field"
    )


def _normalize(ds: datasets.Dataset, corpus: CorpusSpec, columns: Sequence[str], required: bool) -> datasets.Dataset:
    import datasets  # lazy: keeps `datasets` (seconds) out of crossover validate and the data package

    names = ds.column_names
    if corpus.text_field not in names:
        raise _missing_field(corpus, names)
    _check_columns(corpus, names, columns, required)
    keep = [corpus.text_field] + [c for c in ("id", *columns) if c in names and c != corpus.text_field]
    ds = ds.select_columns(keep)
    if corpus.text_field != "text":
        ds = ds.rename_column(corpus.text_field, "text")
    if "id" not in ds.column_names:
        ds = ds.add_column("id", [str(i) for i in range(len(ds))])
    elif ds.features["id"] != datasets.Value("string"):
        ds = ds.cast_column("id", datasets.Value("string"))
    return ds
