"""Data preparation as a Ray Data job: tokenizing throughput of the standard-library corpus with 1, 2 and 4 Ray
workers, as tokens per second and as ratios to 1 worker, each store checked byte for byte against the local build.

The corpus, tokenizer (BPE 4096) and held-out size are the defaults (`stdlib-python`). Hashing, the held-out reserve
and the BPE run on the driver once (the tokenizer is cached after the first build); what is timed is the tokenizing
stage of `build_shared_store`: from the Ray Data job's start (actors starting included) to the last shard's record,
on a local Ray instance with a CPU per worker, each worker's tokenizer on one thread. "busy" is tokens over the sum
of the shards' own times: what a worker does once started. On a machine with fewer cores than workers the extra
workers share cores: their ratio measures the job's overhead, not its scaling.

Run: .venv/bin/python bench/bench_data_prep.py   (also: bench/bench_cluster.py --data-prep)
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORKERS = (1, 2, 4)


def main() -> None:
    import ray

    from crossover.data import prepare
    from crossover.data.shards import StoreLocation, location_uri
    from crossover.platform.data_job import build_shared_store
    from crossover.platform.local_ray import init_local_instance
    from crossover.specs.study import DataSpec

    with tempfile.TemporaryDirectory(prefix="bench-data-prep-") as tmp:
        folder = Path(tmp)
        local_spec = DataSpec(cache_dir=str(folder / "cache"))
        started = time.perf_counter()
        local = prepare(local_spec)
        local_seconds = time.perf_counter() - started
        expected = local.manifest["files"]["tokens.bin"]["sha256"]
        init_local_instance(num_cpus=max(WORKERS))
        rows = []
        try:
            for workers in WORKERS:
                data = local_spec.model_copy(update={"store": str(folder / f"store-{workers}")})
                report = build_shared_store(data, workers=workers)
                location = StoreLocation(location_uri(data))
                digest = hashlib.sha256()
                for entry in report.manifest["shards"]:
                    digest.update(location.read(entry["name"] + ".bin") or b"")
                busy = sum(w.tokens for w in report.per_worker.values()) / sum(
                    w.seconds for w in report.per_worker.values()
                )
                rows.append((workers, report, busy, digest.hexdigest() == expected))
        finally:
            ray.shutdown()

    base = rows[0][1].tokens_per_s
    print(
        f"stdlib-python: {local.num_tokens:,} tokens, {rows[0][1].shards} shards; "
        f"local build (one process, every stage) {local_seconds:.1f} s; {os.cpu_count()} cores here"
    )
    print("| Ray workers | tokenizing s | tokens/s | ratio to 1 worker | busy tokens/s per worker | byte-identical |")
    print("| --- | --- | --- | --- | --- | --- |")
    for workers, report, busy, same in rows:
        print(
            f"| {workers} | {report.seconds:.1f} | {report.tokens_per_s:,.0f} | {report.tokens_per_s / base:.2f} "
            f"| {busy:,.0f} | {'yes' if same else 'NO'} |"
        )
    if max(WORKERS) > (os.cpu_count() or 1):
        print(f"({max(WORKERS)} workers on {os.cpu_count()} cores: that row measures overhead, not scaling)")


if __name__ == "__main__":
    main()
