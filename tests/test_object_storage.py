"""A study's storage on object storage (`s3://`, here moto's real S3 server on loopback): storage that cannot be used
stops `crossover run` before anything starts, and `--fresh` removes the study's Tune state there. A whole study on a
bucket (checkpoints, branches, the anneal phase continuing kept checkpoints, `--resume`) is test_anneal's; a node lost
mid-trial resuming from the bucket is test_lost_node's."""

from __future__ import annotations

import subprocess

import pytest

from .conftest import new_bucket, tiny_study
from .services import free_port, s3_env
from .test_platform import CROSSOVER

pytestmark = pytest.mark.xdist_group("ray")  # one worker runs every Ray test (tests/conftest.py)


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

    from crossover.platform.driver import has_tune_state, remove_tune_state
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
    # a search study leaves only its phases' experiments (no <study> folder): still something for --resume
    spec = parse_study(tiny_study(tiny_corpus))
    assert not has_tune_state(spec, storage)
    filesystem.create_dir(f"{root}/tiny.search-0a1b2c3d/ar-U10k-nano-s0")
    with filesystem.open_output_stream(f"{root}/tiny.search-0a1b2c3d/ar-U10k-nano-s0/result.json") as stream:
        stream.write(b"{}")
    assert has_tune_state(spec, storage)
