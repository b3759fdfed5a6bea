"""The cache root, content keys, and the atomic-write helpers every cached artifact goes through.

Everything cached is written under a temporary name and renamed into place only when complete, so a process
killed halfway leaves only a temporary (never read, removed by the next build) and never a half-written artifact.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ENV_VAR = "CROSSOVER_CACHE"
TMP_PREFIX = ".tmp-"


def cache_root(cache_dir: str | None = None) -> Path:
    """DataSpec.cache_dir, else $CROSSOVER_CACHE, else ~/.cache/crossover (not created here)."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    return Path.home() / ".cache" / "crossover"


def content_key(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (the name of a cached artifact)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def tmp_path_for(final: Path) -> Path:
    """A unique temporary sibling of `final`: .tmp-<name>-<host>-<pid>-<random>."""
    tag = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return final.parent / f"{TMP_PREFIX}{final.name}-{tag}"


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def remove_stale_tmp(directory: Path, name: str, max_age_s: float = 24 * 3600) -> list[Path]:
    """Remove temporaries of `name` left by dead processes on this host (or older than max_age_s anywhere)."""
    removed = []
    if not directory.is_dir():
        return removed
    host = socket.gethostname()
    for entry in directory.glob(f"{TMP_PREFIX}{name}-*"):
        rest = entry.name[len(TMP_PREFIX) + len(name) + 1 :]
        try:
            entry_host, pid_text, _ = rest.rsplit("-", 2)
            pid = int(pid_text)
        except ValueError:
            continue
        dead = entry_host == host and not _alive(pid)
        try:
            old = time.time() - entry.stat().st_mtime > max_age_s
        except FileNotFoundError:
            continue
        if dead or old:
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
            removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: existence check only, sends nothing
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so concurrent trials on one machine build an artifact once.

    Correctness does not depend on it (artifacts appear by atomic rename); it only avoids duplicate work.
    The kernel releases it when the holder dies.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a")  # closed by the with below
    except OSError:  # a read-only cache: nothing can be built there anyway, so nothing to serialise
        yield
        return
    with f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
