"""Provenance: which code and which packages ran a study, resolved once on the driver (the machine that runs
`crossover run`) and carried to every trial in its launch's tags, since trials may run on other machines (Ray
workers) whose copy of the source need not be a git checkout. Recorded on the study's parent run and every trial run
(the tag names: crossover.tracking.names).
"""

from __future__ import annotations

import os
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from crossover.tracking.names import (
    TAG_GIT_COMMIT,
    TAG_GIT_DIRTY,
    TAG_IMAGE,
    TAG_MLFLOW_GIT_COMMIT,
    VERSION_TAG,
)

PACKAGES = ("torch", "ray", "deepspeed", "mlflow", "crossover")  # read from their metadata: torch is not imported
IMAGE_ENV = "CROSSOVER_IMAGE"  # the container image's name and tag (k8s/docker/Dockerfile sets it at build time)
SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the crossover package
UNKNOWN = "unknown"


def provenance_tags(source: Path = SOURCE_ROOT) -> dict[str, str]:
    """The tags that say what runs: the git commit of `source` and whether its tracked files differ from it, the
    installed versions of PACKAGES ("not installed" for one that is not), and the image, where IMAGE_ENV is set."""
    commit, dirty = git_state(source)
    tags = {TAG_GIT_COMMIT: commit, TAG_GIT_DIRTY: dirty}
    if commit != UNKNOWN:
        tags[TAG_MLFLOW_GIT_COMMIT] = commit
    tags.update({f"{VERSION_TAG}.{package}": _installed_version(package) for package in PACKAGES})
    if image := os.environ.get(IMAGE_ENV):
        tags[TAG_IMAGE] = image
    return tags


def git_state(source: Path) -> tuple[str, str]:
    """(commit, "true" | "false": whether tracked files differ from it) of the git checkout whose top is `source`.

    Both are UNKNOWN, and nothing fails, where `source` is not the top of a checkout: an installed wheel (whose
    folder may lie inside some other repository, as a virtual environment inside a project does: that repository's
    commit would be a wrong answer), an image built without .git, a machine without git, or a checkout git refuses
    to read (owned by another user). Untracked files are left out: scratch outputs and new notes would otherwise
    mark nearly every tree dirty."""
    try:
        if Path(_git(source, "rev-parse", "--show-toplevel")).resolve() != source.resolve():
            return UNKNOWN, UNKNOWN
        commit = _git(source, "rev-parse", "HEAD")
        changed = _git(source, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN, UNKNOWN
    return commit, "true" if changed else "false"


def _git(source: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True, check=True, timeout=60)
    return done.stdout.strip()


def _installed_version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"
