"""Building a shared token store (`data.store`) as a Ray Data job over the cluster's CPU workers.

The stages that need the whole corpus at once stay on the driver (`crossover.data.store.plan_build`): hashing and
deduplicating the documents (a document is dropped when any earlier one has the same text), reserving the held-out
candidates (a prefix of the content-hash order of the whole corpus) and training the BPE (on every text outside the
reserve; at paper scale a pretrained tokenizer is the norm and this stage only loads it). They read the corpus once
and keep a hash and a size per document. Tokenizing, the stage whose time grows with the corpus and the vocabulary,
runs as Ray Data tasks: a dataset of shard descriptors (row ranges, `crossover.data.shards.shard_rows`) is mapped by
`workers` actors, each of which loads the corpus and the tokenizer once and writes each of its shards straight to the
store through pyarrow's filesystems (`ShardBuilder.build`: the shard's tokens, then its record). A shard whose record
an earlier build left is not tokenized again, so an interrupted build continues where it stopped. The driver then
writes the document table, held-out files and the manifest, last (`write_shared_store`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from crossover.data.cache import cache_root
from crossover.data.errors import DataError
from crossover.data.shards import (
    ShardBuilder,
    ShardJob,
    StoreLocation,
    location_uri,
    shard_name,
    shard_rows,
    write_shared_store,
)
from crossover.data.store import Notify, Progress, plan_build
from crossover.errors import UserError
from crossover.specs.study import DataSpec


@dataclass
class WorkerShare:
    """What one Ray worker (an actor process) tokenized."""

    shards: int = 0
    tokens: int = 0
    seconds: float = 0.0  # busy time: the sum of its shards' times

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


@dataclass
class PrepareReport:
    """What `build_shared_store` did."""

    store: str  # the store's folder
    manifest: dict[str, Any]
    shards: int  # in the store
    tokenized: int  # shards tokenized by this build (the others were finished before, or the store was complete)
    tokens: int  # tokens of the shards tokenized now
    seconds: float  # wall time of the tokenizing stage
    workers: int
    per_worker: dict[str, WorkerShare] = field(default_factory=dict)
    complete_before: bool = False  # the store was already whole: nothing was done

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


ShardProgress = Callable[[int, int, int, float], None]  # (shards done, shards, tokens done, seconds)

# Tokenizing workers on a Ray cluster this process joined, when none are asked for: at least the CPUs of the CPU
# worker group `cpu` at its maximum (k8s/base/raycluster.yaml: 4 pods x 16 CPUs). An autoscaling cluster may have no
# CPU worker yet, so its CPUs now say little about what it can grow to: the workers that find no CPU wait, and are
# the demand its autoscaler answers with CPU pods, while the others tokenize.
CLUSTER_WORKERS = 64


def default_cluster_workers(nodes: list[dict[str, Any]]) -> int:
    """How many tokenizing workers a joined cluster gets by default: the CPUs of its alive nodes without GPUs
    (`ray.nodes()`; the CPU workers, not the GPU pods the trials need), and at least CLUSTER_WORKERS."""
    cpu_only = sum(
        node["Resources"].get("CPU", 0) for node in nodes if node["Alive"] and not node["Resources"].get("GPU")
    )
    return max(CLUSTER_WORKERS, int(cpu_only))


class _ShardTask:
    """One Ray Data actor: a ShardBuilder, and who it is (for the throughput per worker)."""

    def __init__(self, job: ShardJob, threads: int):
        # The tokenizers library encodes on as many threads as the machine has cores; a worker gets its share.
        os.environ["RAYON_NUM_THREADS"] = str(threads)
        self.builder = ShardBuilder(job)
        self.worker = f"{os.uname().nodename}:{os.getpid()}"

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        try:
            record = self.builder.build(int(row["first"]), int(row["end"]))
        except DataError as exc:  # the user's to fix: handed to the driver as is (Ray would wrap it beyond recognition)
            return {"name": "", "tokens": 0, "seconds": 0.0, "worker": self.worker, "error": str(exc)}
        return {
            "name": record["name"],
            "tokens": record["tokens"],
            "seconds": record["seconds"],
            "worker": self.worker,
            "error": "",
        }


def build_shared_store(
    data: DataSpec,
    *,
    workers: int,
    cpus_per_worker: int = 1,
    shard_bytes: int | None = None,
    rebuild: bool = False,
    progress: Progress | None = None,
    shard_progress: ShardProgress | None = None,
    notify: Notify | None = None,
) -> PrepareReport:
    """Build (or finish) the shared store of `data` on the Ray instance this process is connected to, tokenizing
    with `workers` Ray Data actors of `cpus_per_worker` CPUs each. A complete store is left as it is unless
    `rebuild`. DataError for problems the user can fix."""
    import ray  # lazy: the data CLI loads this module only for shared stores

    assert data.store, "a shared store needs data.store"
    notify = notify or (lambda message: None)
    location = StoreLocation(location_uri(data))
    if rebuild:
        location.remove()
    elif (manifest := location.read_json("manifest.json")) is not None:
        return PrepareReport(location.uri, manifest, len(manifest["shards"]), 0, 0, 0.0, workers, {}, True)
    cache = cache_root(data.cache_dir)
    plan = plan_build(data, cache, progress or (lambda stage, done, total: None), notify)
    ranges = shard_rows(plan.docs.nbytes, shard_bytes)
    records = location.finished(ranges)
    missing = [r for r in ranges if shard_name(*r) not in records]
    per_worker: dict[str, WorkerShare] = {}
    tokens = 0
    started = time.perf_counter()
    if shard_progress:
        shard_progress(len(ranges) - len(missing), len(ranges), 0, 0.0)
    if missing:
        workers = min(workers, len(missing))  # a worker more than there are shards would only wait for a CPU
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours reports shards and tokens per second
        descriptors = ray.data.from_items(
            [{"first": first, "end": end} for first, end in missing], override_num_blocks=len(missing)
        )
        built = descriptors.map(
            _ShardTask,
            fn_constructor_kwargs={"job": ShardJob.of(plan, cache), "threads": cpus_per_worker},
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=cpus_per_worker,
        )
        done = len(ranges) - len(missing)
        for row in built.iter_rows():
            if row["error"]:
                raise DataError(row["error"])
            records[row["name"]] = location.read_json(row["name"] + ".json") or {}
            share = per_worker.setdefault(row["worker"], WorkerShare())
            share.shards += 1
            share.tokens += int(row["tokens"])
            share.seconds += float(row["seconds"])
            tokens += int(row["tokens"])
            done += 1
            if shard_progress:
                shard_progress(done, len(ranges), tokens, time.perf_counter() - started)
    seconds = time.perf_counter() - started
    if progress:
        progress("writing store", 0, None)
    unread = [shard_name(*r) for r in ranges if "sha256" not in records.get(shard_name(*r), {})]
    if unread:
        raise DataError(f"{len(unread)} shard record(s) of {location.uri} are unreadable after the build: {unread[0]}")
    manifest = write_shared_store(plan, ranges, records, notify)
    return PrepareReport(location.uri, manifest, len(ranges), len(missing), tokens, seconds, workers, per_worker)


def ray_instance(address: str | None, workers: int, cpus_per_worker: int = 1) -> bool:
    """Connect to the Ray cluster at `address`, or start a local instance with a CPU per worker (at least the
    machine's cores) unless this process is connected already; True when this call connected (the caller shuts it
    down after the job)."""
    import ray  # lazy: as in build_shared_store

    if address and address.startswith(("http://", "https://")):
        raise UserError(
            f"{address} is a Ray dashboard, the address `ray job submit` takes; a Ray program joins a cluster at its "
            "GCS address (HOST:6379, RAY_ADDRESS inside a Ray job). Submit the command to the cluster as a job: "
            "ray job submit --address DASHBOARD --working-dir FOLDER -- crossover data prepare study.yaml"
        )
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        from crossover.platform.local_ray import init_local_instance

        init_local_instance(num_cpus=max(workers * cpus_per_worker, os.cpu_count() or 1))
    return True
