"""Load: a study of 200 tiny trials (4 steps each), 4 at a time on the local Ray instance. Checks that it completes,
that MLflow holds exactly 200 finished child runs with no step logged twice, and prints the driver's resident memory
as trials finish (flat: the driver keeps no per-trial state that grows), its peak, and the study's wall time.

Run: .venv/bin/python bench/bench_load.py [--trials 200]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml
from bench_platform import corpus

MIB = 1 << 20


def study(folder: Path, trials: int) -> Path:
    spec = {
        "name": "load",
        "data": {
            "corpus": {"source": str(corpus(folder)), "format": "jsonl"},
            "tokenizer": {"bpe_vocab": 512},
            "seq_len": 64,
            "heldout_tokens": "8k",
            "unique_tokens": 4096,
        },
        "model": "nano",
        "train": {"total_tokens": 4096, "global_batch_tokens": 1024, "micro_batch": 8, "warmup_tokens": 1024},
        "eval": {"every": "log:1", "tasks": ["heldout_loss"], "mc_samples": 2, "max_items": 8},
        "resources": {"cpus_per_worker": 0.5, "max_concurrent": 4},
        "grid": {"objective": ["ar"], "seed": list(range(trials))},
    }
    path = folder / "load.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def driver_memory(command: list[str], env: dict[str, str]) -> tuple[int, list[tuple[float, int]], float]:
    """Run the driver, sampling its resident memory every second: (exit status, [(time, rss)], seconds)."""
    started = time.time()
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    process, samples = psutil.Process(driver.pid), []
    while driver.poll() is None:
        try:
            samples.append((time.time(), process.memory_info().rss))
        except psutil.Error:
            break
        time.sleep(1)
    return driver.wait(), samples, time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    args = parser.parse_args()
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        spec = study(folder, args.trials)
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        env = {**os.environ, "CROSSOVER_CACHE": str(folder / "cache")}
        subprocess.run(
            [sys.executable, "-m", "crossover.cli", "data", "prepare", str(spec)],
            env=env,
            check=True,
            capture_output=True,
        )
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
        status, samples, seconds = driver_memory(command, env)

        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("load")
        found = client.search_runs([experiment.experiment_id], max_results=10_000)
        children = [r for r in found if "crossover.trial_id" in r.data.tags]
        finished = sorted(r.info.end_time / 1000 for r in children if r.info.status == "FINISHED")
        duplicates = 0
        for child in children:
            steps = [m.step for m in client.get_metric_history(child.info.run_id, "train/loss")]
            duplicates += len(steps) - len(set(steps))

    print(
        f"driver exit status {status}; {seconds:,.0f} s for {args.trials} trials ({seconds / args.trials:.1f} s each)"
    )
    print(f"MLflow: {len(children)} child runs ({len(finished)} FINISHED), {duplicates} steps logged twice")
    print("trials finished | driver RSS (MiB)")
    for share in (0.1, 0.25, 0.5, 0.75, 1.0):
        done = max(1, int(len(finished) * share))
        when = finished[done - 1] if finished else 0
        rss = next((r for t, r in samples if t >= when), samples[-1][1] if samples else 0)
        print(f"{done:>15} | {rss / MIB:,.0f}")
    peak = max((r for _, r in samples), default=0)
    early = next((r for t, r in samples if finished and t >= finished[max(0, len(finished) // 10 - 1)]), 0)
    last = samples[-1][1] if samples else 0
    print(
        f"driver peak RSS {peak / MIB:,.0f} MiB; from 10% of trials done to the end: {(last - early) / MIB:+,.0f} MiB"
    )
    ok = status == 0 and len(children) == len(finished) == args.trials and duplicates == 0
    print("OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
