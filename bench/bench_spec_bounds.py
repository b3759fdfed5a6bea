"""Hostile spec files against the command line: each must exit 2 in under 2 s and 300 MB (issue: a spec file cannot
exhaust the machine). Runs `crossover validate` on each file in a fresh process and prints its exit status, wall time
and peak resident memory beside the goals; a good shipped spec is the baseline (the CLI's own start-up).
Before the bounds, the billion laughs took 115 s and 12 GB and the deep nesting ended in a RecursionError (exit 1).

Run: .venv/bin/python bench/bench_spec_bounds.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.test_spec_bounds import DEEP, billion_laughs  # noqa: E402


def measure(path: Path) -> tuple[int, float, float, str]:
    """(exit status, seconds, peak RSS in MiB, first line of the message) of `crossover validate path`."""
    code = (
        "import sys, resource\nfrom crossover.cli import app\ntry:\n    app(['validate', sys.argv[1]])\nfinally:\n"
        "    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    )
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    lines = done.stderr.strip().splitlines()
    rss_mib = int(lines[-1]) / 1024  # ru_maxrss is KiB on Linux
    message = next((line for line in lines[:-1] if str(path) in line), lines[0] if len(lines) > 1 else "")
    return done.returncode, seconds, rss_mib, message.replace(str(path), path.name)


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        files = {"shipped smoke.yaml (baseline)": ROOT / "study_specs" / "smoke.yaml"}
        for name, text in [("billion laughs (375 bytes)", billion_laughs()), ("deep nesting (5,000 levels)", DEEP)]:
            files[name] = Path(folder) / f"{name.split()[0]}.yaml"
            files[name].write_text(text)
        print("| file | exit (goal 2) | seconds (goal < 2) | peak RSS MiB (goal < 300) | message |")
        print("| --- | --- | --- | --- | --- |")
        for name, path in files.items():
            code, seconds, rss, message = measure(path)
            print(f"| {name} | {code} | {seconds:.2f} | {rss:.0f} | {message[:110]} |")


if __name__ == "__main__":
    main()
