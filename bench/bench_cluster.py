"""A study on a simulated autoscaling cluster: how many trials run at once against how many its maximum holds, and how
long from `crossover run` to the first trial training, to the cluster at its largest, and from the study's end to
the cluster back at its head.

The cluster is Ray's own autoscaler with its fake multi-node provider (tests/services.ray_autoscaling_head): a head
with no CPUs and 0 to MAX_NODES nodes of NODE_CPUS CPUs, real raylets on this machine. The study: TRIALS two-worker
trials of half a CPU per worker (a trial's worker group and its driver's 0.01 CPU fit one node). Every number is
printed beside what it is compared with; on this 2-core machine the trials share its cores, so the times say how the
platform and the autoscaler behave, not how fast a real cluster trains.

Data preparation by Ray workers (1, 2, 4), a shared token store built as a Ray Data job, is bench/bench_data_prep.py
beside this one (`--data-prep` runs it instead of the autoscaling study).

Run: .venv/bin/python bench/bench_cluster.py [--data-prep]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.services import (  # noqa: E402
    kill_processes_with_env,
    new_auth_token,
    ray_autoscaling_head,
    ray_nodes,
    with_token_auth,
)
from tests.test_autoscaling import growing_study, most_at_once, training_spans  # noqa: E402

MAX_NODES, NODE_CPUS, TRIALS = 3, 2, 4
TRIAL_CPUS = 2 * 0.5 + 0.01  # two workers of half a CPU, and the trial's own process (TRIAL_DRIVER_CPU)


def corpus(folder: Path) -> Path:
    """A small JSONL corpus of this repository's own Python files (as the tests' tiny corpus)."""
    import json

    path = folder / "corpus.jsonl"
    with path.open("w") as out:
        for source in sorted((ROOT / "crossover").rglob("*.py")):
            out.write(json.dumps({"text": source.read_text()}) + "\n")
    return path


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        folder = Path(tmp)
        token = new_auth_token(folder / "ray-auth")
        env = with_token_auth({**os.environ, "CROSSOVER_CACHE": str(folder / "cache")}, token)
        spec = folder / "study.yaml"
        spec.write_text(yaml.safe_dump(growing_study(corpus(folder))))
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        subprocess.run(
            [sys.executable, "-m", "crossover.cli", "data", "prepare", str(spec)], env=env, check=True, cwd=folder
        )
        try:
            with ray_autoscaling_head(env, folder / "cluster", NODE_CPUS, MAX_NODES) as (address, dashboard):
                command = [sys.executable, "-m", "crossover.cli", "run", str(spec), "--address", address]
                command += ["--tracking-uri", uri, "--storage", str(folder / "ray"), "--quiet"]
                submitted = time.time()
                driver = subprocess.Popen(
                    command, env=env, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
                )
                nodes_seen: list[tuple[float, int]] = []
                while driver.poll() is None:
                    nodes_seen.append((time.time(), len(ray_nodes(dashboard, env)) - 1))
                    time.sleep(1)
                ended = time.time()
                while (left := len(ray_nodes(dashboard, env)) - 1) > 0 and time.time() - ended < 300:
                    time.sleep(2)
                shrunk = time.time()
        finally:
            kill_processes_with_env("RAY_AUTH_TOKEN_PATH", str(token))
        spans = training_spans(uri)
        largest = max(n for _, n in nodes_seen)
        at_largest = min(t for t, n in nodes_seen if n == largest)
        fits = min(TRIALS, int(MAX_NODES * NODE_CPUS // TRIAL_CPUS))
        first = min(start for start, _ in spans.values())
        print(f"| measure ({TRIALS} two-worker trials; 0 to {MAX_NODES} nodes of {NODE_CPUS} CPUs) | value | against |")
        print("| --- | --- | --- |")
        print(
            f"| trials training at once | {most_at_once(list(spans.values()))} | {fits} that fit the cluster's maximum |"
        )
        print(f"| nodes at the cluster's largest | {largest} | its maximum {MAX_NODES} |")
        print(f"| `crossover run` to the first trial's first step | {first - submitted:.0f} s | - |")
        print(f"| `crossover run` to the cluster at its largest | {at_largest - submitted:.0f} s | - |")
        print(
            f"| study's end to the cluster back at its head | {shrunk - ended:.0f} s ({left} nodes left) | idle timeout 10 s |"
        )
        print(f"| study, `crossover run` to its end | {ended - submitted:.0f} s | - |")


if __name__ == "__main__":
    if "--data-prep" in sys.argv[1:]:
        from bench_data_prep import main as data_prep  # beside this file (sys.path[0])

        data_prep()
    else:
        main()
