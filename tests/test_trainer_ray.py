"""A two-worker trial runs the same loop in a Ray Train worker group and matches the one-worker run."""

from pathlib import Path

import pytest

from crossover.specs import parse_study
from crossover.trainers.launch import LocalReporter, run_workers
from crossover.trainers.loop import CLIENT_STATE, train
from crossover.trainers.storage import rank_copy

from .conftest import new_bucket, tiny_study

pytestmark = pytest.mark.xdist_group("ray")  # one worker runs every Ray test (tests/conftest.py)


@pytest.fixture(scope="module")
def ray_cluster(s3):  # the S3 server first: Ray's processes take its variables from this one as they start
    ray = pytest.importorskip("ray")
    from crossover.platform.local_ray import init_local_instance

    init_local_instance(num_cpus=2, num_gpus=1)  # a logical GPU, for placement
    yield ray
    ray.shutdown()


def test_two_workers_match_one_worker(tiny_corpus, session_cache, tmp_path, monkeypatch, ray_cluster, s3):
    monkeypatch.setenv("CROSSOVER_CACHE", str(session_cache))
    spec = tiny_study(
        tiny_corpus,
        train={"total_tokens": 4096, "warmup_tokens": 0, "keep_checkpoints": 4},  # 4 steps
        eval={"every": 1024},  # report every step
        grid={"objective": ["ar"], "unique_tokens": [4096]},
    )
    one = parse_study(spec).expand()[0]
    two = parse_study({**spec, "resources": {"workers": 2, "cpus_per_worker": 1}}).expand()[0]
    assert one.train.global_batch_tokens == two.train.global_batch_tokens
    assert (one.grad_accum_steps, two.grad_accum_steps) == (2, 1)

    reporter = LocalReporter(tmp_path / "one")
    train(one, reporter)
    single = [(e["step"], e["train/loss"]) for e in reporter.history()]

    result = run_workers(two, tmp_path / "ray", name="two-workers")
    assert result.error is None
    frame = result.metrics_dataframe
    double = list(zip(frame["tokens"].astype(int), frame["train/loss"], strict=True))
    assert [s for s, _ in double] == [s for s, _ in single] == [1024, 2048, 3072, 4096]
    for (_, a), (_, b) in zip(single, double, strict=True):
        assert b == pytest.approx(a, rel=2e-2)
    assert result.checkpoint is not None

    # The same trial on object storage, stopped after 2 steps and resumed: each rank fetches only the files it
    # loads (the shared model states, its own optimizer shard and state), and the resumed run equals this one.
    storage = new_bucket("crossover-two-workers")
    stopped = run_workers(two, storage, name="split", stop_after_steps=2)
    assert stopped.error is None and stopped.checkpoint.path.startswith("crossover-two-workers/split/")
    for rank in (0, 1):
        with rank_copy(stopped.checkpoint.filesystem, stopped.checkpoint.path, rank) as folder:
            names = sorted(p.name for p in Path(folder).rglob("*") if p.is_file())
        other = 1 - rank
        assert f"rank{rank}_{CLIENT_STATE}" in names and f"rank{other}_{CLIENT_STATE}" not in names, names
        assert "mp_rank_00_model_states.pt" in names and "trial.json" in names, names
        (shard,) = [n for n in names if n.endswith("optim_states.pt")]  # ZeRO-1: one optimizer shard per rank
        assert shard.endswith(f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"), names
    fetched_before = len(s3.requests("GET", "/crossover-two-workers/split/"))
    resumed = run_workers(two, storage, name="split")
    assert resumed.error is None
    fetched = s3.requests("GET", "/crossover-two-workers/split/")[fetched_before:]
    shards = sorted({path for path in fetched if path.endswith("optim_states.pt")})  # each rank's, once: resumed
    assert len(shards) == 2 and all(shard.startswith(f"/{stopped.checkpoint.path}/") for shard in shards), fetched
    assert [shard.split("zero_pp_")[1] for shard in shards] == [f"rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)]
    split = {
        int(t): loss
        for f in (stopped, resumed)
        for t, loss in zip(f.metrics_dataframe["tokens"], f.metrics_dataframe["train/loss"], strict=True)
    }
    assert sorted(split) == [1024, 2048, 3072, 4096]
    for tokens, loss in double:
        assert split[tokens] == pytest.approx(loss, rel=1e-4, abs=1e-4)


def test_two_workers_take_timed_checkpoints_at_the_same_steps(
    tiny_corpus, session_cache, tmp_path, monkeypatch, ray_cluster
):
    """Both ranks save at the same steps (a save each decides alone would hang the other or mix steps), Ray keeps the
    latest timed checkpoint to resume from, and at the end only the eval point's."""
    import json

    monkeypatch.setenv("CROSSOVER_CACHE", str(session_cache))
    spec = tiny_study(
        tiny_corpus,
        train={"total_tokens": 6144, "warmup_tokens": 0, "keep_checkpoints": 1, "checkpoint_minutes": 1e-9},
        eval={"every": 6144},  # one eval point, at the end: every earlier checkpoint is a timed one
        grid={"objective": ["ar"], "unique_tokens": [4096]},
        resources={"workers": 2, "cpus_per_worker": 1},
    )
    trial = parse_study(spec).expand()[0]

    def tokens_of(folder) -> list[int]:
        return [json.loads((folder / f"rank{r}_{CLIENT_STATE}").read_text())["tokens"] for r in (0, 1)]

    stopped = run_workers(trial, tmp_path / "ray", name="timed", stop_after_steps=4)
    assert stopped.error is None
    assert tokens_of(Path(stopped.checkpoint.path)) == [4096, 4096]  # the latest: a timed one, both ranks' files
    assert [m["eval_point_tokens"] for _, m in stopped.best_checkpoints] == [-1]  # those before it superseded

    finished = run_workers(trial, tmp_path / "ray", name="timed")  # continues from it
    assert finished.error is None
    assert [tokens_of(Path(c.path)) for c, _ in finished.best_checkpoints] == [[6144, 6144]]


def test_trials_with_a_quarter_gpu_share_one_gpu(ray_cluster, tmp_path):
    """What `crossover run` asks Tune for per trial with gpus_per_worker: 0.25 places four trials on one GPU at once."""
    from ray import tune

    from crossover.platform.driver import trial_resources
    from crossover.specs.study import ResourcesSpec

    def trial(config):
        import time

        import ray

        start = time.time()
        time.sleep(3)
        tune.report({"start": start, "end": time.time(), "gpu_ids": ",".join(map(str, ray.get_gpu_ids()))})

    request = trial_resources(ResourcesSpec(cpus_per_worker=0.5, gpus_per_worker=0.25))
    assert request == {"cpu": 0.5, "gpu": 0.25}
    tuner = tune.Tuner(
        tune.with_resources(trial, request),
        param_space={"i": tune.grid_search([0, 1, 2, 3])},
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
    )
    results = list(tuner.fit())
    assert len(results) == 4 and all(r.error is None for r in results)
    assert max(r.metrics["start"] for r in results) < min(r.metrics["end"] for r in results)  # all four at once
    assert {r.metrics["gpu_ids"] for r in results} == {"0"}  # on the one GPU
