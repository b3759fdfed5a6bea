"""`crossover analyze` on a synthetic study of 1,000 trials x 100 eval points in a real SQLite MLflow store.

Prints, side by side: writing the store through the platform's writer (crossover.platform.tracking, via
tests/analysis_support.py; once, reused with --store), loading the curves from MLflow, the in-memory
analysis alone (crossovers with bootstrap intervals, efficiency, scaling fits, Delta NLL), the plots and report, and
the whole `crossover analyze` command. Goal: the in-memory analysis well under 10 s.

Run: .venv/bin/python bench/bench_analysis.py [--store DIR] [--skip-client] [--seeds N]
(--seeds 1 halves the study to 500 trials, for a quicker run.)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.analysis_support

STUDY = "bench-analysis-1k"
SPEC = {
    "name": STUDY,
    "data": {"seq_len": 256},
    "model": "nano",
    "train": {"total_tokens": "2B", "global_batch_tokens": 16384, "micro_batch": 16, "warmup_tokens": "10M"},
    "eval": {"every": "log:100", "tasks": ["heldout_loss", "heldout_cloze"]},
    # 2 objectives x 10 budgets x 5 sizes x 5 learning rates x 2 seeds = 1,000 trials in 250 cells
    "grid": {
        "objective": ["ar", "mdlm"],
        "unique_tokens": ["2M", "3.5M", "6M", "10M", "18M", "30M", "50M", "90M", "150M", "250M"],
        "model": ["nano", "micro", "mini", "100m", "1b"],
        "lr": [2e-4, 5e-4, 1e-3, 2e-3, 4e-3],
    },
    "seeds": [0, 1],
}


def write_store(uri: str) -> float:
    from tests.analysis_support import write_study
    from tests.synthetic import Truth

    start = time.perf_counter()
    write_study(SPEC, uri, Truth(midpoint_tokens=3e7), seed=0, items=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, help="directory for the MLflow store; reused when it already holds one")
    parser.add_argument("--skip-client", action="store_true", help="skip timing the public per-run API read")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per cell (default 2: 1,000 trials)")
    args = parser.parse_args()
    SPEC["seeds"] = list(range(args.seeds))
    trials = 500 * args.seeds
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    with tempfile.TemporaryDirectory() as tmp:
        store_dir = args.store or Path(tmp)
        store_dir.mkdir(parents=True, exist_ok=True)
        db = store_dir / "mlflow.db"
        uri = f"sqlite:///{db.resolve()}"
        if db.exists():
            print(f"store           reusing {db}")
        else:
            seconds = write_store(uri)
            print(f"write store     {trials:,} trials x 100 eval points: {seconds:7.1f} s  ({db})")
        bench(uri, Path(tmp), compare_client=not args.skip_client)


def bench(uri: str, tmp: Path, compare_client: bool = True) -> None:
    start = time.perf_counter()
    import mlflow  # noqa: F401 - timed apart: a one-off cost of every process that reads MLflow

    from crossover.analysis import analyze_study, read_study, write_report

    print(f"import mlflow   {time.perf_counter() - start:7.2f} s")
    start = time.perf_counter()
    data = read_study(STUDY, uri, items=False)
    load_s = time.perf_counter() - start
    shape = f"{len(data.trials)} trials, {len(data.curves):,} rows, {data.curves.shape[1]} columns"
    print(f"load curves     {load_s:7.2f} s  ({shape}: search_runs + one SELECT per 500 runs)")
    if compare_client:
        start = time.perf_counter()
        slow = read_study(STUDY, uri, items=False, bulk=False)
        client_s = time.perf_counter() - start
        calls = int(slow.trials["metric_keys"].map(len).sum())
        same = slow.curves.equals(data.curves)
        print(
            f"  the same via get_metric_history per run and key ({calls:,} calls, 16 threads): {client_s:7.2f} s "
            f"({client_s / load_s:.1f}x slower; identical curves: {same})"
        )

    start = time.perf_counter()
    analysis = analyze_study(data, metric="eval/heldout_cloze/acc")
    analysis_s = time.perf_counter() - start
    crossed = int((analysis.crossovers.table["status"] == "crossed").sum())
    print(
        f"analysis        {analysis_s:7.2f} s  ({len(analysis.crossovers.table)} cells, {crossed} crossed, "
        f"{len(analysis.scaling.fits)} scaling fits, bootstrap over {analysis.crossovers.ci_source or 'nothing'})"
    )

    start = time.perf_counter()
    write_report(analysis, data, tmp / "report", log_to_mlflow=False)
    report_s = time.perf_counter() - start
    print(f"plots + report  {report_s:7.2f} s")
    print(f"in-process sum  {load_s + analysis_s + report_s:7.2f} s")

    command = [
        sys.executable,
        "-m",
        "crossover.cli",
        "analyze",
        STUDY,
        "--tracking-uri",
        uri,
        "--out",
        str(tmp / "cli"),
    ]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    cli_s = time.perf_counter() - start
    if result.returncode != 0:
        print(result.stdout + result.stderr)
        raise SystemExit(f"crossover analyze failed with status {result.returncode}")
    print(f"crossover analyze (whole command, new process, report logged to MLflow): {cli_s:7.2f} s")
    print(f"analysis alone is {analysis_s / (load_s + analysis_s + report_s):.0%} of the in-process total")


if __name__ == "__main__":
    main()
