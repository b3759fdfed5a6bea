"""Corpus sources, each returned as a `datasets.Dataset` with `id` and `text` columns.

- `stdlib-python` (the default): the `.py` files of the running interpreter's standard library (found with
  `sysconfig`, site-packages and dist-packages excluded), one document per file, sorted by relative path, with the
  absolute `path` kept as a column.
- `python-packages`: the `.py` files of the running environment's site-packages (`sysconfig`'s purelib and platlib:
  torch, ray, mlflow and the rest are installed anyway), the same way; roughly 10x the standard library, for studies
  that need more unique tokens offline. Exact duplicates are dropped and documents held out by content hash, as for
  every corpus (crossover.data.store).
- a local file, directory or glob: jsonl, json, parquet or csv rows (the text in `CorpusSpec.text_field`), or text
  (one document per file, whatever its extension). `local_files` says which files of a folder or glob are read and
  why each other one is skipped.
- `hf:<name>`: a Hugging Face hub dataset by name, `hf_config` and `split` (`streaming: true` streams it once into
  an on-disk Dataset instead of downloading the repository). `<name>` may also be a local dataset directory, which
  `datasets.load_dataset` reads the same way.

Everything here but `load_corpus` is cheap (no `datasets` import; of a local folder's or glob's text files only the
first 8 KiB are read, to tell text from binary): `validate` and `plan` use `fingerprint` and `size_bound`.
"""

from __future__ import annotations

import glob as globlib
import io
import os
import sys
import sysconfig
import tokenize
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossover.data.cache import cache_root, content_key
from crossover.data.errors import DataError
from crossover.specs.study import CorpusSpec

if TYPE_CHECKING:
    import datasets

STDLIB = "stdlib-python"
PACKAGES = "python-packages"
HF_PREFIX = "hf:"
EXTENSIONS = {  # the structured formats; any other file is read as text (one document) unless it is binary
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".csv": "csv",
}
SNIFF_BYTES = 8192  # how much of a text file is read to tell text from binary
_BUILDER = {"jsonl": "json", "json": "json", "parquet": "parquet", "csv": "csv"}
_EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__"}


def kind(corpus: CorpusSpec) -> str:
    """'stdlib', 'packages', 'hf' or 'local'."""
    if corpus.source == STDLIB:
        return "stdlib"
    if corpus.source == PACKAGES:
        return "packages"
    if corpus.source.startswith(HF_PREFIX):
        return "hf"
    return "local"


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


@dataclass(frozen=True)
class LocalFiles:
    """The files of a local source: the `files` read as `format` (sorted, ids relative to `base`) and the entries of
    a folder or glob left out, as (path relative to `base`, reason)."""

    base: Path
    files: list[Path]
    format: str
    skipped: list[tuple[str, str]]


def local_files(corpus: CorpusSpec) -> LocalFiles:
    """The files of a local source (a file, a folder or a glob) and those skipped, with their reasons.

    A file named as the source is read in `format`, or by its extension (`EXTENSIONS`, else text). In a folder (walked
    recursively) or a glob's matches, a file with a structured extension is read in that format and any other file as
    one text document, except:
    - hidden files and folders (a name starting with "."), links to folders and what is not a regular file (a
      broken link, a pipe) are skipped;
    - a text file is skipped as binary when its first 8 KiB hold a NUL byte (UTF-16 text too), or as not UTF-8 when
      over a tenth of their bytes are not UTF-8 (convert it with iconv); fewer are decoded as replacement characters;
    - `format: auto` refuses a folder or glob that mixes structured formats, or structured and text files (an
      unexpected README.md is no document of a jsonl corpus, and 900 text files beside one stray .json are no json
      corpus): set `format` to choose;
    - an explicit structured `format` reads a folder's files of that extension (the others are skipped) and every
      file a glob matches; `format: txt` reads every file as text.
    A `hf:<folder>` source is read by `datasets`; its files here only identify its content (`fingerprint`), and
    beside structured files its text files (a README.md) are left out without an error.
    """
    hf = kind(corpus) == "hf"
    source = corpus.source[len(HF_PREFIX) :] if hf else corpus.source
    path = Path(source).expanduser()
    if path.is_file():
        fmt = corpus.format if corpus.format != "auto" else _ext_format(path) or "txt"
        problem = _not_text(path) if fmt == "txt" and not hf else None
        if problem:
            raise DataError(
                f"corpus source '{corpus.source}' is {problem}: give a text file, or set "
                f"data.corpus.format to its structured format"
            )
        return LocalFiles(path.parent, [path], fmt, [])
    if path.is_dir():
        base = path
        candidates, skipped = _folder_entries(path)
    elif globlib.has_magic(source):
        matches = sorted(Path(p) for p in globlib.glob(os.path.expanduser(source), recursive=True))
        candidates = [p for p in matches if p.is_file()]
        skipped = [(p, "not a regular file") for p in matches if not p.is_file() and not p.is_dir()]
        base = Path(os.path.commonpath([str(p.parent) for p in candidates])) if candidates else Path(".")
    else:
        raise DataError(
            f"corpus source '{corpus.source}' does not exist; give a file, a directory, a glob, "
            f"'{STDLIB}' or 'hf:<dataset name>'"
        )
    fmt = corpus.format if corpus.format != "auto" else _auto_format(corpus, base, candidates, hf)
    if fmt == "txt" and not hf:
        files = []
        for p in candidates:
            problem = _not_text(p)
            if problem:
                skipped.append((p, problem))
            else:
                files.append(p)
    elif fmt != "txt" and (path.is_dir() or corpus.format == "auto"):
        files = [p for p in candidates if _ext_format(p) == fmt]
        skipped += [(p, f"not {fmt}: data.corpus.format is {fmt}") for p in candidates if _ext_format(p) != fmt]
    else:
        files = candidates  # the glob chose them (or datasets reads a hf:<folder>)
    listed = sorted((os.path.relpath(p, base) + ("/" if p.is_dir() else ""), why) for p, why in skipped)
    if not files:
        reasons = f"; skipped: {count_reasons(listed)} (e.g. {listed[0][0]}: {listed[0][1]})" if listed else ""
        raise DataError(
            f"corpus source '{corpus.source}' matches no files"
            + (f" of format {corpus.format}" if corpus.format != "auto" else "")
            + reasons
        )
    return LocalFiles(base, files, fmt, listed)


def _folder_entries(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The regular files under `root` (sorted) and the entries skipped: hidden ones, links to folders (not followed)
    and whatever is not a regular file."""
    files, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for d in dirnames:
            if d.startswith("."):
                skipped.append((here / d, "hidden"))
            elif (here / d).is_symlink():
                skipped.append((here / d, "link to a folder"))
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and not (here / d).is_symlink()]
        for name in filenames:
            p = here / name
            if name.startswith("."):
                skipped.append((p, "hidden"))
            elif p.is_file():
                files.append(p)
            else:
                skipped.append((p, "not a regular file"))
    return sorted(files), skipped


def _auto_format(corpus: CorpusSpec, base: Path, candidates: list[Path], hf: bool) -> str:
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


def _not_text(path: Path) -> str | None:
    """Why a file cannot be read as text ('binary: ...', 'not UTF-8: ...', 'unreadable: ...'), None when it can."""
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError as exc:
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


def _ext_format(path: Path) -> str | None:
    return EXTENSIONS.get(path.suffix.lower())


def _stat_list(base: Path, files: Sequence[Path]) -> list[tuple[str, int, int]]:
    out = []
    for p in files:
        st = p.stat()
        out.append((os.path.relpath(p, base), st.st_size, st.st_mtime_ns))
    return out


def fingerprint(corpus: CorpusSpec) -> dict[str, Any]:
    """What identifies the corpus's content, cheaply: file names, sizes and modification times (no reads).

    A hub dataset is identified by name, config and split: once its store is built, it is used offline.
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
    lf = local_files(corpus)
    return {
        "settings": settings,
        "root": str(lf.base.resolve()),
        "format": lf.format,
        "files": _stat_list(lf.base, lf.files),
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
    """None where no cheap bound exists (a remote dataset; parquet, which is compressed)."""
    k = kind(corpus)
    if k in ("stdlib", "packages"):
        sizes = [p.stat().st_size for _, p in python_files(corpus)]
        return SizeBound(sum(sizes) + len(sizes), len(sizes), max(sizes, default=0) + 1)
    if is_remote(corpus):
        return None
    lf = local_files(corpus)
    files, fmt = lf.files, lf.format
    if fmt == "parquet":
        return None
    sizes = [p.stat().st_size for p in files]
    if fmt == "txt":
        return SizeBound(sum(sizes) + len(sizes), len(sizes), max(sizes, default=0) + 1)
    # jsonl/json/csv: a row's quoting and separators take at least one byte more than its text, which pays for
    # its end-of-document token, so the file sizes bound the tokens.
    total = sum(sizes)
    return SizeBound(total, total, max(sizes, default=0))


def read_source_file(path: Path) -> str:
    """A source file as text: UTF-8, else its declared (PEP 263) encoding, else UTF-8 with replacement."""
    data = path.read_bytes()
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
                "text": [read_source_file(p) for _, p in found],
                "path": [str(p) for _, p in found],
            }
        )
    if k == "hf":
        return _load_hf(corpus, hf_cache, columns, required)
    lf = local_files(corpus)
    base, files, fmt = lf.base, lf.files, lf.format
    if fmt == "txt":
        _check_columns(corpus, ["id", "text", "path"], columns, required)
        return datasets.Dataset.from_dict(
            {
                "id": [os.path.relpath(p, base) for p in files],
                "text": [read_source_file(p) for p in files],
                "path": [str(p) for p in files],
            }
        )
    try:
        ds = datasets.load_dataset(_BUILDER[fmt], data_files=[str(p) for p in files], split="train", cache_dir=hf_cache)
    except Exception as exc:  # datasets raises many types for unreadable files
        raise DataError(f"cannot read corpus '{corpus.source}' as {fmt}: {type(exc).__name__}: {exc}") from None
    return _normalize(ds, corpus, columns, required)


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
