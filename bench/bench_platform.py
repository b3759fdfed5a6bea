"""Per-trial overhead of `crossover run` (Ray Tune scheduling, process start, imports, DeepSpeed and MLflow set-up,
checkpoint upload): study wall time minus the time trials spent in training and evaluation (their `loop_seconds`),
per trial, for one-worker trials (run in the Tune trial's process) and two-worker trials (a Ray Train worker group).
Goals: at most 5 s and 20 s. Also times `make demo` from a fresh clone with `--demo`.

Run: .venv/bin/python bench/bench_platform.py [--demo]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def corpus(folder: Path) -> Path:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    path = folder / "corpus.jsonl"
    with open(path, "w") as f:
        for p in sorted(stdlib.glob("*.py"))[:200]:
            f.write(json.dumps({"text": p.read_text(errors="replace")}) + "\n")
    return path


def study(folder: Path, workers: int, trials: int) -> Path:
    spec = {
        "name": f"overhead-w{workers}",
        "data": {
            "corpus": {"source": str(corpus(folder)), "format": "jsonl"},
            "tokenizer": {"bpe_vocab": 512},
            "seq_len": 64,
            "heldout_tokens": "8k",
            "unique_tokens": 16384,
        },
        "model": "nano",
        "train": {"total_tokens": 16384, "global_batch_tokens": 2048, "micro_batch": 8, "warmup_tokens": 1024},
        "eval": {"every": "log:2", "tasks": ["heldout_loss"], "mc_samples": 2, "max_items": 16},
        "resources": {"workers": workers, "cpus_per_worker": 1, "max_concurrent": 1},
        "grid": {"objective": ["ar", "mdlm"], "seed": list(range(trials // 2))},
    }
    path = folder / f"overhead-w{workers}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def overhead(workers: int, trials: int) -> None:
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        spec = study(folder, workers, trials)
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        env = {**os.environ, "CROSSOVER_CACHE": str(folder / "cache")}
        command = [
            sys.executable,
            "-m",
            "crossover.cli",
            "run",
            str(spec),
            "--tracking-uri",
            uri,
            "--storage",
            str(folder / "ray"),
            "--quiet",
        ]
        subprocess.run(
            [sys.executable, "-m", "crossover.cli", "data", "prepare", str(spec)],
            env=env,
            check=True,
            capture_output=True,
        )
        start, started_at = time.perf_counter(), time.time()
        result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=folder)
        wall = time.perf_counter() - start
        if result.returncode:
            sys.exit(result.stdout[-3000:] + result.stderr[-3000:])
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name(f"overhead-w{workers}").experiment_id])
        children = [r for r in runs if "crossover.trial_id" in r.data.tags]
        busy = sum(r.data.metrics["loop_seconds"] for r in children)
        spans = [(r.info.end_time - r.info.start_time) / 1000 for r in children]
        # Trials run one at a time: from the first trial's start to the last one's end, all but the loop is overhead.
        first, last = min(r.info.start_time for r in children) / 1000, max(r.info.end_time for r in children) / 1000
        print(
            f"{workers} worker(s): {len(children)} trials one at a time in {wall:.1f} s, {busy:.1f} s training+eval; "
            f"driver start-up (Ray, MLflow) {first - started_at:.1f} s; overhead per trial "
            f"{(last - first - busy) / len(children):.1f} s (first trial start to last trial end, minus the loop); "
            f"{(wall - busy) / len(children):.1f} s with the driver's start-up and shutdown shared out; "
            f"MLflow run span minus loop {sum(spans) / len(spans) - busy / len(children):.1f} s"
        )


def demo() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["git", "clone", "-q", str(ROOT), f"{tmp}/clone"], check=True)
        start = time.perf_counter()
        subprocess.run(["make", "demo"], cwd=f"{tmp}/clone", check=True, capture_output=True)
        print(f"make demo from a fresh clone: {time.perf_counter() - start:.0f} s (setup included)")


if __name__ == "__main__":
    if "--two-workers-only" not in sys.argv:
        overhead(workers=1, trials=4)
    overhead(workers=2, trials=2)
    if "--demo" in sys.argv:
        demo()
