"""The planner install: what `make demo` installs first (the Makefile's .venv/.planner target: the CPU build of torch,
pyproject.toml's `planner` dependency group, crossover without its dependencies) plans a study whole, its wall-time
estimate included, in a fresh venv; and a measurement that lacks a module says which, and how to install it."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from .conftest import ROOT, SPECS


def test_the_planner_group_is_a_subset_of_the_dependencies():
    """The group repeats its packages from the dependencies (a group cannot refer to them), spelled the same."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11 on
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    planner = project["dependency-groups"]["planner"]
    assert set(planner) <= set(project["project"]["dependencies"]), planner


def closure(name: str) -> list[importlib.metadata.Distribution]:
    """`name`'s distribution in this environment and those it requires (no extras), recursively."""
    found: dict[str, importlib.metadata.Distribution] = {}
    todo = [name]
    while todo:
        dist = importlib.metadata.distribution(todo.pop())
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in found:
            continue
        found[key] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(found.values())


def link_torch_and_pip(venv: Path, farm: Path) -> None:
    """Makes this environment's torch (and what it requires) and pip importable in `venv`, so that the recipe's torch
    install and pip upgrade are satisfied instead of unpacking ~700 MB again (about a minute here): symlinks to each
    distribution's top-level files in `farm`, on the venv's path through a .pth file. pip never uninstalls from
    `farm` (it is outside the venv): a newer pip or another torch would go into the venv beside it."""
    farm.mkdir()
    for dist in closure("torch") + closure("pip"):
        site = Path(dist.locate_file(""))
        for top in {Path(str(file)).parts[0] for file in dist.files or []} - {".."}:
            if (site / top).exists() and not (farm / top).exists():
                (farm / top).symlink_to(site / top)
    site_packages = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (site_packages / "from-the-suite.pth").write_text(f"{farm}\n")


def test_the_planner_install_plans_with_the_wall_time_estimate(tmp_path):
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env = {k: v for k, v in env.items() if not k.startswith(("MAKE", "MFLAGS"))}  # a `make test` above us
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    link_torch_and_pip(venv, tmp_path / "from-the-suite")
    make = subprocess.run(
        ["make", "--no-print-directory", f"VENV={venv}", f"PYTHON={sys.executable}", str(venv / ".planner")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert make.returncode == 0, make.stdout + make.stderr
    python = str(venv / "bin" / "python")
    found = subprocess.run(
        [
            python,
            "-c",
            "import importlib.util as u; print([m for m in ('ray', 'mlflow', 'deepspeed', "
            "'datasets') if u.find_spec(m)])",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert found.stdout.strip() == "[]", found.stdout + found.stderr  # the planner's packages alone, none of the rest

    def plan(cache: str) -> str:
        done = subprocess.run(
            [str(venv / "bin" / "crossover"), "plan", str(SPECS / "smoke.yaml")],
            cwd=tmp_path,
            env={**env, "CROSSOVER_CACHE": str(tmp_path / cache)},
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    out = plan("cache")
    assert re.search(r"^estimated \S+ here: 4 trials, ", out, re.M), out
    assert "not measured" not in out, out
    # Without a module the measurement imports, the line names it and the fix, and does not blame training.
    subprocess.run([python, "-m", "pip", "uninstall", "-q", "-y", "psutil"], env=env, check=True, capture_output=True)
    out = plan("cache-again")  # a fresh cache: the measurement runs again
    assert (
        f"wall time not measured here: the throughput measurement imports psutil, which is not installed in {venv} "
        in (out)
    )
    assert "`pip install -e .` or `make setup` installs all of crossover's dependencies" in out, out
    assert "training a step" not in out, out
