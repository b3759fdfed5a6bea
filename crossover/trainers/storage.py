"""Where checkpoints are kept: a local folder, or object storage (`s3://`, `gs://`) reached through pyarrow.fs, the
filesystem layer Ray's own storage uses (an S3-compatible server is found through AWS_ENDPOINT_URL, keys through
AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY).

A checkpoint holds every rank's files (each rank writes its own; Ray merges them into one folder). Resuming from
object storage, a rank downloads only what it loads: the shared files and its own shards, never the other ranks'
(`rank_copy`): with ZeRO each rank's optimizer shard is a 1/N share of the optimizer state, and N ranks each fetching
all N shards would move N times the checkpoint per resume.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from crossover.errors import UserError

if TYPE_CHECKING:
    import pyarrow.fs

# A file one rank writes for itself, numbered by its rank: DeepSpeed's ZeRO optimizer shard
# (`[bf16_]zero_pp_rank_<r>_mp_rank_00_optim_states.pt`), under ZeRO-3 its parameter shard too
# (`zero_pp_rank_<r>_mp_rank_00_model_states.pt`), an expert-parallel rank's optimizer state (`expp_rank_<r>_...`),
# and the loop's own `rank<r>_crossover_state.json`. Every other file (`mp_rank_00_model_states.pt` under ZeRO 1-2,
# `latest`, trial.json, tokenizer.json) every rank reads.
RANK_FILE = re.compile(r"(?:zero_pp_rank_|expp_rank_|^rank)(\d+)_")


def is_uri(location: str) -> bool:
    """Whether a storage location is a URI (object storage), not a local path."""
    return "://" in location


def filesystem_of(location: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The pyarrow filesystem of a local path or storage URI, and the path on it."""
    import pyarrow.fs  # lazy: ~0.6 s, and only storage URIs and the driver's checkpoint search need it

    return pyarrow.fs.FileSystem.from_uri(location if is_uri(location) else str(Path(location).resolve()))


def needed_by(name: str, rank: int) -> bool:
    """Whether rank `rank` loads the checkpoint file called `name`: a shared file or one of its own."""
    found = RANK_FILE.search(name)
    return found is None or int(found.group(1)) == rank


def copy_into(source: str, destination: str) -> None:
    """Copy a local folder's files into `destination`, a local path or a storage URI."""
    if is_uri(destination):
        import pyarrow.fs  # lazy: as in filesystem_of

        pyarrow.fs.copy_files(source, destination)
    else:
        shutil.copytree(source, destination, dirs_exist_ok=True)


@contextlib.contextmanager
def rank_copy(filesystem: pyarrow.fs.FileSystem, path: str, rank: int | None = None) -> Iterator[str]:
    """The checkpoint folder `path` on `filesystem` as a local folder: itself when it is local (read in place),
    else a temporary download (removed after) of the files rank `rank` loads, or of every file with `rank` None."""
    import pyarrow.fs  # lazy: as in filesystem_of

    if isinstance(filesystem, pyarrow.fs.LocalFileSystem):
        yield path
        return
    root = path.rstrip("/")
    listed = filesystem.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))
    files = [f for f in listed if f.type == pyarrow.fs.FileType.File and (rank is None or needed_by(f.base_name, rank))]
    with tempfile.TemporaryDirectory(prefix="crossover-ckpt-") as local:
        for file in files:
            target = Path(local, file.path[len(root) + 1 :])
            target.parent.mkdir(parents=True, exist_ok=True)
            pyarrow.fs.copy_files(file.path, str(target), source_filesystem=filesystem)
        yield local


@contextlib.contextmanager
def local_folder(location: str, rank: int | None = None) -> Iterator[str]:
    """`rank_copy` of a folder given as a local path or storage URI."""
    filesystem, path = filesystem_of(location)
    with rank_copy(filesystem, path, rank) as folder:
        yield folder


class StorageError(UserError):
    """The study's storage (resources.storage, --storage) cannot be used: an endpoint that does not answer, a
    bucket that does not exist."""

    title = "cannot use the study's storage"  # how the command line heads its message


def check_storage(storage: str) -> None:
    """Refuse, before Ray starts a trial, object storage the study cannot write to: its endpoint unreachable or its
    bucket missing (Ray would fail every trial at its first checkpoint, or the driver at its first sync). A local
    path needs no check: Ray creates its folders."""
    if not is_uri(storage):
        return
    import pyarrow.fs  # lazy: as in filesystem_of

    scheme = storage.split("://", 1)[0]
    endpoint = "AWS_ENDPOINT_URL" if scheme == "s3" else "the endpoint"
    try:
        filesystem, path = filesystem_of(storage)
        bucket = path.split("/", 1)[0]
        found = filesystem.get_file_info(bucket)
    except (OSError, pyarrow.ArrowException) as exc:
        cause = (str(exc).strip().splitlines() or [""])[0][:300]
        raise StorageError(
            f"cannot reach the storage {storage}: {cause}; check the server is up and {endpoint} and the credentials "
            "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) point at it, or set resources.storage (--storage) to a local "
            "path"
        ) from None
    if found.type == pyarrow.fs.FileType.NotFound:
        raise StorageError(
            f"the bucket {bucket} of the storage {storage} does not exist; create it (`aws s3 mb {scheme}://{bucket}`) "
            "or set resources.storage (--storage) to an existing one"
        )
