from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

# Compiled kernels of this session only: inductor's on-disk cache outlives a run, and code compiled for another CPU
# capability (ATEN_CPU_CAPABILITY, used to test as on an AVX2-only machine) must never be reused.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="crossover-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "study_specs"


# Modules whose tests start Ray instances (and the processes and ports that go with them). `make test` runs the suite
# in two pytest-xdist workers: these (each marked `xdist_group("ray")`) in one, in order and first, everything else in
# the other. Their time is mostly waiting (Ray and MLflow starting, trial processes importing, faults being noticed),
# which the other worker's tests fill; and no two Ray instances ever share the machine (the tests count and kill
# their processes).
CLUSTER_MODULES = {
    "test_platform",
    "test_smoke_study",
    "test_lost_node",
    "test_ray_auth",
    "test_trainer_ray",
    "test_autoscaling",
    "test_object_storage",
    "test_tracking_postgres",
    "test_data_store_shards",
    "test_search",
}


def pytest_collection_modifyitems(config, items) -> None:  # noqa: ANN001 - pytest's hook signature
    """The Ray tests first: the longest group starts at once instead of after the other worker's share."""
    items.sort(key=lambda item: item.path.stem not in CLUSTER_MODULES)  # stable: each part keeps its order


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001 - pytest's hook signature
    """The CPU the suite ran on, at the end of its log (shown with -q too): its time and the hardware tests' paths
    depend on it."""
    from crossover.specs.hardware import cpu_info

    info = cpu_info()
    terminalreporter.write_line(f"cpu: {info.model}, {os.cpu_count()} cores, {info.isa} (what torch's kernels use)")


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and immune to oversubscription on a busy 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def default_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Anything that falls back to the default cache root writes to a temporary directory, never ~/.cache."""
    monkeypatch.setenv("CROSSOVER_CACHE", str(tmp_path_factory.getbasetemp() / "default-cache"))


@pytest.fixture
def small_spec(tmp_path_factory: pytest.TempPathFactory):
    """The data tests' small corpus and its DataSpec (built once per session)."""
    from .test_data_support import shared_spec

    return shared_spec(tmp_path_factory)


@pytest.fixture
def small(tmp_path_factory: pytest.TempPathFactory):
    """The prepared token store of `small_spec`."""
    from .test_data_support import shared_store

    return shared_store(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real corpus: 200 modules of the standard library as JSON lines (fast to tokenize and train on)."""
    import json
    import sysconfig

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if p.stat().st_size < 60_000)[:200]
    path = tmp_path_factory.mktemp("corpus") / "tiny.jsonl"
    with open(path, "w") as f:
        for p in files:
            f.write(json.dumps({"text": p.read_text(encoding="utf-8", errors="replace")}) + "\n")
    return path


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One token-store cache for the session, so each corpus is tokenized once."""
    return tmp_path_factory.mktemp("cache")


def tiny_study(corpus: Path, **blocks) -> dict:
    """A small study over `corpus`: nano model, 64-token windows, 1k-token global batches."""
    spec = {
        "name": "tiny",
        "data": {
            "corpus": {"source": str(corpus), "format": "jsonl"},
            "tokenizer": {"bpe_vocab": 512},
            "seq_len": 64,
            "heldout_tokens": "8k",
        },
        "model": "nano",
        "train": {
            "total_tokens": "40960",
            "global_batch_tokens": 1024,
            "micro_batch": 8,
            "lr": 3e-3,
            "min_lr": 3e-4,
            "warmup_tokens": 2048,
            "zero_stage": 1,
        },
        "eval": {"every": "log:3", "tasks": ["heldout_loss"], "mc_samples": 2, "max_items": 16},
        "grid": {"objective": ["ar", "mdlm"], "unique_tokens": ["10k"]},
    }
    for key, value in blocks.items():
        spec[key] = {**spec[key], **value} if isinstance(spec.get(key), dict) else value
    return spec


@pytest.fixture(scope="session")
def tiny_checkpoints(tiny_corpus: Path, session_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """{'ar': dir, 'mdlm': dir}: the last checkpoint of each objective of `tiny_study`, trained once per session."""
    import os

    from crossover.specs import parse_study
    from crossover.trainers.launch import LocalReporter
    from crossover.trainers.loop import train

    previous = os.environ.get("CROSSOVER_CACHE")
    os.environ["CROSSOVER_CACHE"] = str(session_cache)
    try:
        found = {}
        for trial in parse_study(tiny_study(tiny_corpus)).expand():
            reporter = LocalReporter(tmp_path_factory.mktemp(f"ckpt-{trial.objective}"), keep=1)
            train(trial, reporter)
            found[trial.objective] = reporter.checkpoints()[-1]
        return found
    finally:
        if previous is None:
            os.environ.pop("CROSSOVER_CACHE", None)
        else:
            os.environ["CROSSOVER_CACHE"] = previous


@dataclass(frozen=True)
class S3:
    endpoint: str  # the server's URL
    log: Path  # its log: a line per HTTP request ("GET /bucket/key HTTP/1.1" 200)

    def requests(self, method: str, prefix: str) -> list[str]:
        """The paths of the requests made so far with `method` under `prefix` (/bucket/key...), in order."""
        lines = self.log.read_text().splitlines()
        return [line.split('"')[1].split()[1] for line in lines if f'"{method} {prefix}' in line]


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory):
    """moto's S3 server on loopback (tests/services.py), its variables (`s3_env`) set in this process for the rest of
    the session, so that boto3, pyarrow, MLflow and every Ray instance or process started after use it (a Ray
    instance must start after it: its processes keep the environment they started with). One server for every module
    that asks, each test with a bucket of its own (`new_bucket`)."""
    from .services import s3_env, s3_server

    folder = tmp_path_factory.mktemp("s3")
    with s3_server(folder) as endpoint, pytest.MonkeyPatch.context() as patch:
        for name, value in s3_env(endpoint).items():
            patch.setenv(name, value)
        yield S3(endpoint, folder / f"moto-{endpoint.rsplit(':', 1)[1]}.log")


def new_bucket(name: str) -> str:
    """A new bucket on the `s3` fixture's server; its URI (s3://name)."""
    import boto3

    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}"


def bucket_keys(uri: str) -> list[str]:
    """The keys of every object under a storage URI (s3://bucket/prefix), below the prefix."""
    import boto3

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [item["Key"][len(prefix) :].lstrip("/") for page in pages for item in page.get("Contents", [])]


@pytest.fixture
def study(tmp_path, tiny_corpus, session_cache):
    """A tiny study file, a private Ray temp dir and storage, and the environment to run it in."""
    from .services import kill_ray_processes, ray_temp_dir

    temp_dir = ray_temp_dir()
    env = {**os.environ, "CROSSOVER_CACHE": str(session_cache), "RAY_TMPDIR": temp_dir}

    def write(**blocks) -> Path:
        path = tmp_path / "study.yaml"
        path.write_text(yaml.safe_dump(tiny_study(tiny_corpus, **blocks)))
        return path

    yield {"write": write, "env": env, "uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "storage": str(tmp_path / "ray")}
    kill_ray_processes(temp_dir)
    shutil.rmtree(temp_dir, ignore_errors=True)  # Ray leaves its session folders (logs, sockets) behind
