"""The documentation is the project's own: every relative link in README.md, docs/ and k8s/ points at a file in the
repository, none leaves it, and nothing refers to the working notes beside the repository."""

import re
import subprocess

import pytest

from .conftest import ROOT

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
OUTSIDE = ".." + "/shared"  # spelt apart so this file does not match its own search


def markdown_files() -> list:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.md"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return sorted(ROOT / name for name in listed)


def test_the_docs_exist_and_the_readme_links_them():
    readme = (ROOT / "README.md").read_text()
    for page in ("design", "research", "gpus", "kubernetes", "results"):
        assert (ROOT / "docs" / f"{page}.md").is_file(), page
        assert f"(docs/{page}.md)" in readme, page


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_inside_the_repository(path):
    for target in LINK.findall(path.read_text()):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):  # a web address or an anchor on the page
            continue
        resolved = (path.parent / target.split("#")[0]).resolve()
        assert resolved.is_relative_to(ROOT), f"{path.name}: {target} leaves the repository"
        assert resolved.exists(), f"{path.name}: {target} does not exist"


def test_nothing_refers_to_notes_outside_the_repository():
    found = subprocess.run(
        ["git", "grep", "--untracked", "-n", "-F", OUTSIDE, "--", "README.md", "docs", "crossover", "tests", "k8s"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert found.stdout == "", found.stdout
