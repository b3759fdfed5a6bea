"""A study whose storage is object storage (`s3://`, here moto's real S3 server on loopback): Tune's state, the
trials' checkpoints and the branch checkpoints go to the bucket, the anneal phase continues kept checkpoints from it,
`--resume` restores from it, and storage that cannot be used stops `crossover run` before anything starts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .conftest import bucket_keys, new_bucket, tiny_study
from .services import free_port, s3_env
from .test_anneal import ANNEAL
from .test_platform import CROSSOVER, run, runs

pytestmark = pytest.mark.xdist_group("ray")  # one worker runs every Ray test (tests/conftest.py)


def test_a_study_on_s3_checkpoints_anneals_and_resumes_there(study, s3):
    storage = new_bucket("crossover-anneal") + "/ray"
    # keep_checkpoints: all, so that the anneal can continue a kept checkpoint; AR only, all an anneal needs
    spec = study["write"](**{**ANNEAL, "grid": {"objective": ["ar"], "unique_tokens": ["4k"]}})
    on_s3 = {**study, "storage": storage}
    result = run(on_s3, spec, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 continue a kept checkpoint" in result.stdout, result.stdout  # found in the bucket, not from scratch
    keys = bucket_keys(storage)
    trials = {key.split("/")[1] for key in keys if key.startswith("tiny/") and "/checkpoint_" in key}
    assert trials == {"ar-U4k-nano-s0"}, keys
    assert any(key.startswith("tiny/ar-U4k-nano-s0/checkpoint_") and key.endswith("_optim_states.pt") for key in keys)
    assert any(key.startswith("tiny.branches/") and key.endswith("rank0_crossover_state.json") for key in keys)
    assert any(key.startswith("tiny.anneal-") and key.endswith("/result.json") for key in keys)  # its own experiment
    assert not Path(study["storage"]).exists()  # nothing local but the driver's log
    # the embedded store's artifacts (each run's spec) beside the checkpoints, not in a local mlartifacts
    assert any(key.startswith("mlartifacts/") and key.endswith("/artifacts/spec/study.yaml") for key in keys), keys
    _, parents, children = runs(study["uri"])
    assert parents[0].info.status == "FINISHED" and [c.info.status for c in children] == ["FINISHED"] * 2

    again = run(on_s3, spec, "--resume")  # Tune's state restored from the bucket: nothing left to train
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 AR anneal(s) finished earlier and are kept" in again.stdout, again.stdout
    assert len(runs(study["uri"])[2]) == 2


@pytest.mark.parametrize("fault", ["no bucket", "no server"])
def test_storage_that_cannot_be_used_exits_2_before_anything_starts(study, s3, fault, tmp_path):
    spec = study["write"]()
    env = study["env"] if fault == "no bucket" else {**study["env"], **s3_env(f"http://127.0.0.1:{free_port()}")}
    command = [*CROSSOVER, "run", str(spec), "--tracking-uri", study["uri"], "--storage", "s3://crossover-none/ray"]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    message = " ".join(result.stderr.split())  # as the terminal wraps it
    if fault == "no bucket":
        assert "the bucket crossover-none of the storage s3://crossover-none/ray does not exist" in message, message
        assert "aws s3 mb s3://crossover-none" in message
    else:
        assert "cannot reach the storage s3://crossover-none/ray" in message and "AWS_ENDPOINT_URL" in message, message
    assert not (tmp_path / ".crossover").exists() and not (tmp_path / "mlflow.db").exists()  # nothing written


@pytest.mark.parametrize("where", ["local", "s3"])
def test_fresh_removes_the_study_s_tune_state_and_branches_and_nothing_else(where, s3, tiny_corpus, tmp_path):
    import pyarrow.fs

    from crossover.platform.driver import remove_tune_state
    from crossover.specs import parse_study
    from crossover.trainers.storage import filesystem_of

    storage = str(tmp_path / "ray") if where == "local" else new_bucket("crossover-fresh") + "/ray"
    filesystem, root = filesystem_of(storage)
    kept = ["other/checkpoint_000000/a", "tiny.log", "tinyx/b"]
    for name in ["tiny/ar-U10k-nano-s0/checkpoint_000000/c", "tiny.branches/0123/d", "tiny.anneal-0a1b/e", *kept]:
        filesystem.create_dir(f"{root}/{name}".rsplit("/", 1)[0])
        with filesystem.open_output_stream(f"{root}/{name}") as stream:
            stream.write(b"x")
    remove_tune_state(parse_study(tiny_study(tiny_corpus)), storage)
    found = filesystem.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))
    assert sorted(f.path[len(root) + 1 :] for f in found if f.type == pyarrow.fs.FileType.File) == kept
