"""Corpus sources, each returned as a `datasets.Dataset` with `id` and `text` columns.

- `stdlib-python` (the default): the `.py` files of the running interpreter's standard library (found with
  `sysconfig`, site-packages and dist-packages excluded), one document per file, sorted by relative path, with the
  absolute `path` kept as a column.
- `python-packages`: the `.py` files of the running environment's site-packages (`sysconfig`'s purelib and platlib:
  torch, ray, mlflow and the rest are installed anyway), the same way; roughly 10x the standard library, for studies
  that need more unique tokens offline. Exact duplicates are dropped and documents held out by content hash, as for
  every corpus (crossover.data.store).
- a local file, directory or glob: jsonl, json, parquet or csv rows (the text in `CorpusSpec.text_field`), or txt
  (one document per file; any file extension when `format: txt` is given).
- `hf:<name>`: a Hugging Face hub dataset by name, `hf_config` and `split` (`streaming: true` streams it once into
  an on-disk Dataset instead of downloading the repository). `<name>` may also be a local dataset directory, which
  `datasets.load_dataset` reads the same way.

Everything here but `load_corpus` is cheap (no `datasets` import, no file reads): `validate` and `plan` use
`fingerprint` and `size_bound`.
"""

from __future__ import annotations

import glob as globlib
import io
import os
import sys
import sysconfig
import tokenize
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossover.data.errors import DataError
from crossover.specs.study import CorpusSpec

if TYPE_CHECKING:
    import datasets

STDLIB = "stdlib-python"
PACKAGES = "python-packages"
HF_PREFIX = "hf:"
EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".txt": "txt",
}
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


def local_files(corpus: CorpusSpec) -> tuple[Path, list[Path], str]:
    """(base directory, files in sorted order, format) of a local source: a file, a directory or a glob."""
    source = corpus.source[len(HF_PREFIX) :] if kind(corpus) == "hf" else corpus.source
    path = Path(source).expanduser()
    if path.is_file():
        files, base = [path], path.parent
    elif path.is_dir():
        base = path
        everything = sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path)))
        if corpus.format == "auto":
            files = [p for p in everything if _ext_format(p) not in (None, "txt")]
            files = files or [p for p in everything if _ext_format(p) == "txt"] or everything
        else:
            files = [p for p in everything if _ext_format(p) == corpus.format] or (
                everything if corpus.format == "txt" else []
            )
    elif globlib.has_magic(source):
        files = sorted(Path(p) for p in globlib.glob(os.path.expanduser(source), recursive=True) if Path(p).is_file())
        base = Path(os.path.commonpath([str(p.parent) for p in files])) if files else Path(".")
    else:
        raise DataError(f"corpus source '{corpus.source}' does not exist; give a file, a directory, a glob, "
                        f"'{STDLIB}' or 'hf:<dataset name>'")  # fmt: skip
    if not files:
        raise DataError(f"corpus source '{corpus.source}' matches no files" + (
            f" of format {corpus.format}" if corpus.format != "auto" else ""))  # fmt: skip
    fmt = corpus.format
    if fmt == "auto":
        formats = {_ext_format(p) or "txt" for p in files}
        if len(formats) > 1:
            raise DataError(
                f"corpus source '{corpus.source}' mixes formats {sorted(formats)}; set data.corpus.format or narrow "
                f"the glob"
            )
        fmt = formats.pop()
    return base, files, fmt


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


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
        return {"settings": settings, "python": sys.version,
                "files": [(doc_id, st.st_size, st.st_mtime_ns) for doc_id, st in files]}  # fmt: skip
    if k == "hf" and is_remote(corpus):
        return {"settings": settings}
    base, files, fmt = local_files(corpus)
    return {"settings": settings, "root": str(base.resolve()), "format": fmt, "files": _stat_list(base, files)}


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
    _, files, fmt = local_files(corpus)
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
    import datasets

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
    import datasets

    from crossover.data.cache import cache_root

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
    base, files, fmt = local_files(corpus)
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
    import datasets

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
        from crossover.data.cache import content_key

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
    import datasets

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
