"""The code base stays ruff clean (lint and format), checked in CI with the rest of the suite."""

import subprocess
import sys

from .conftest import ROOT


def test_ruff_check_and_format():
    paths = ["crossover", "tests", "bench"]
    lint = subprocess.run([sys.executable, "-m", "ruff", "check", *paths], cwd=ROOT, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", *paths], cwd=ROOT, capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
