"""`crossover run` end to end on a real local Ray instance with real MLflow stores: the contract, resume after a
killed driver, a killed training worker, and an unreachable tracking server (a search study: test_search)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from crossover.platform.tracking import TrialRun, start_study
from crossover.specs import parse_study
from crossover.specs.hardware import Runtime
from crossover.tracking.names import TAG_PARENT, TAG_ROLE, TAG_TRIAL_ID, TRAIN_METRICS
from crossover.tracking.store import mlflow_client
from crossover.trainers.throughput import study_runtime_here

from .conftest import tiny_study
from .services import free_port, mlflow_server, stop_group

pytestmark = pytest.mark.xdist_group("ray")  # one worker runs every Ray test (tests/conftest.py)

CROSSOVER = [sys.executable, "-m", "crossover.cli"]
CONTRACT_METRICS = {m for m in TRAIN_METRICS if m != "mfu"} | {"eval/heldout_loss/loss"}


def run(study, spec: Path, *args: str, timeout: int = 420) -> subprocess.CompletedProcess:
    command = [*CROSSOVER, "run", str(spec), "--tracking-uri", study["uri"], "--storage", study["storage"], "--quiet"]
    return subprocess.run(
        [*command, *args], env=study["env"], capture_output=True, text=True, timeout=timeout, cwd=spec.parent
    )


def start_driver(study, spec: Path) -> tuple[subprocess.Popen, Path]:
    """`crossover run --quiet` of the study in its own process group, and the log it writes (a file, not a pipe: an
    unread pipe would block a chatty driver)."""
    command = [*CROSSOVER, "run", str(spec), "--tracking-uri", study["uri"], "--storage", study["storage"], "--quiet"]
    log = spec.parent / "driver.log"
    driver = subprocess.Popen(
        command,
        env=study["env"],
        cwd=spec.parent,
        start_new_session=True,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    return driver, log


def poll_runs(uri: str):
    """`runs` while a study is starting: nothing until the driver has created the store (never race its schema)."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return None, [], []
    try:
        return runs(uri)
    except Exception:  # noqa: BLE001 - the driver is still creating the tables
        return None, [], []


def runs(uri: str, name: str = "tiny"):
    client = mlflow_client(uri)
    experiment = client.get_experiment_by_name(name)
    found = client.search_runs([experiment.experiment_id], max_results=1000) if experiment else []
    parents = [r for r in found if r.data.tags.get(TAG_ROLE) == "study"]
    children = [r for r in found if TAG_TRIAL_ID in r.data.tags]
    return client, parents, children


def ray_processes(temp_dir: str) -> list:
    """Processes of Ray instances under `temp_dir`: naming it, or holding its files open (renamed agents)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if proc.pid != os.getpid() and (
                any(temp_dir in part for part in proc.info["cmdline"] or [])
                or any(f.path.startswith(temp_dir) for f in proc.open_files())
            ):
                found.append(proc)
    return found


def tune_results(study, trial: str) -> list[dict]:
    """What Tune heard from a trial, in order: the driver's own result.json in its Ray session folder (the copy in
    the storage path is synced from it now and then, and can lag at the end)."""
    pattern = f"ray/session_*/artifacts/*/tiny/driver_artifacts/{trial}/result.json"
    (*_, latest) = sorted(Path(study["env"]["RAY_TMPDIR"]).glob(pattern))
    return [json.loads(line) for line in latest.read_text().splitlines()]


def wait_for(probe, done, timeout_s: float = 60.0):
    """`probe()` once `done(result)` holds (or when time is up): a crashed instance takes seconds to wind down."""
    deadline = time.monotonic() + timeout_s
    while not done(found := probe()) and time.monotonic() < deadline:
        time.sleep(1)
    return found


def history_steps(client, run, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, key))


def test_run_records_every_trial_by_the_contract_and_a_rerun_trains_nothing(study):
    """A cell's two trials (AR and MDLM) of two Ray Train workers each on 2 CPUs: each trial's worker group gets the
    whole machine in turn (neither waits for resources held by the other trial's driver) and logs one MLflow run, from
    its rank-0 worker. (One cell: a two-worker trial takes ~50 s to start here, and the contract is per trial.)"""
    from crossover.platform.driver import worker_groups_that_fit

    spec = study["write"](
        train={"total_tokens": 8192},
        eval={"every": "log:2"},
        grid={"objective": ["ar", "mdlm"], "unique_tokens": ["4k"]},
        resources={"workers": 2, "cpus_per_worker": 1},
    )
    parsed = parse_study(yaml.safe_load(spec.read_text()))
    assert worker_groups_that_fit(parsed, {"CPU": 2.0}) == 1 and worker_groups_that_fit(parsed, {"CPU": 5.0}) == 2
    trials = parsed.expand()
    result = run(study, spec)
    assert result.returncode == 0, result.stdout + result.stderr
    # a quiet first screen: other libraries' routine notices are in the study's log file, not on the terminal
    shown = result.stdout + result.stderr
    assert "Ray instance" not in shown and "accelerator" not in shown and "library notices:" in shown
    assert "Started a local Ray instance" in (Path(study["storage"]) / "tiny.log").read_text()
    client, parents, children = runs(study["uri"])
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id, "spec")}
    assert artifacts == {"spec/study.yaml", "spec/trials.json", "spec/history"}
    runtime = Runtime.model_validate_json(parents[0].data.tags["crossover.runtime"])
    with pytest.MonkeyPatch.context() as env:  # the decision the run made here, as the plan states it
        env.setenv("CROSSOVER_CACHE", study["env"]["CROSSOVER_CACHE"])
        assert runtime == study_runtime_here(parse_study(yaml.safe_load(spec.read_text())), measure=False)
    assert sorted(r.info.run_name for r in children) == sorted(t.name for t in trials)
    by_name = {t.name: t for t in trials}
    for child in children:
        trial = by_name[child.info.run_name]
        assert child.info.status == "FINISHED"
        assert child.data.tags[TAG_PARENT] == parents[0].info.run_id
        assert child.data.tags["crossover.cell"] == trial.cell
        assert child.data.tags["crossover.objective"] == trial.objective
        assert child.data.tags[TAG_TRIAL_ID] == trial.trial_id
        params = child.data.params
        assert params["data.unique_tokens"] == str(trial.unique_tokens)
        assert params["train.total_tokens"] == "8192" and params["model.layers"] == "4"
        assert params["objective"] == trial.objective and params["axes.unique_tokens"] == trial.axes["unique_tokens"]
        # `auto` resolved once for the study (recorded on the parent run), the same for every trial
        assert (params["train.precision"], params["model.compile"]) == ("auto", "auto")
        assert (params["runtime.precision"], params["runtime.compile"]) == (runtime.precision, str(runtime.compile))
        assert CONTRACT_METRICS <= set(child.data.metrics)
        tokens = client.get_metric_history(child.info.run_id, "tokens")
        assert all(m.step == m.value for m in tokens) and max(m.step for m in tokens) == 8192
        # Tune (and so the driver's progress display) heard every log point, not only the eval points
        heard = [r["tokens"] for r in tune_results(study, child.info.run_name)]
        evals = history_steps(client, child, "eval/heldout_loss/loss")
        assert heard == history_steps(client, child, "train/loss") and len(heard) > len(evals)
    listed = subprocess.run(
        [*CROSSOVER, "status", "tiny", "--tracking-uri", study["uri"]], capture_output=True, text=True, env=study["env"]
    )
    assert listed.returncode == 0 and listed.stdout.count("FINISHED") == len(trials), listed.stdout

    steps_before = {c.info.run_name: history_steps(client, c, "train/loss") for c in children}
    again = run(study, spec)
    assert again.returncode == 0, again.stderr
    client, parents, children = runs(study["uri"])
    assert len(parents) == 1 and len(children) == len(trials)
    assert {c.info.run_name: history_steps(client, c, "train/loss") for c in children} == steps_before


def test_resume_refuses_a_study_that_never_ran_and_writes_nothing(study, tmp_path):
    spec = study["write"]()
    result = run(study, spec, "--resume")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "nothing to continue" in result.stderr and "without --resume starts it" in result.stderr, result.stderr
    assert not Path(study["storage"]).exists() and not (tmp_path / "mlflow.db").exists()


def test_driver_killed_mid_study_resumes_without_rerunning_finished_trials(study):
    spec = study["write"](train={"total_tokens": 16384}, eval={"every": 4096}, resources={"max_concurrent": 1})
    trials = parse_study(yaml.safe_load(spec.read_text())).expand()
    command = [*CROSSOVER, "run", str(spec), "--tracking-uri", study["uri"], "--storage", study["storage"], "--quiet"]
    driver = subprocess.Popen(
        command,
        env=study["env"],
        cwd=spec.parent,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 400
    try:
        while time.monotonic() < deadline:
            time.sleep(2)
            _, _, children = poll_runs(study["uri"])
            if any(c.info.status == "FINISHED" for c in children):
                break
        else:
            pytest.fail("no trial finished in time")
    finally:
        driver.kill()  # the driver crashes; its Ray instance's agents outlive it
        driver.wait()
    client, _, children = runs(study["uri"])
    finished = {
        c.info.run_name: history_steps(client, c, "train/loss") for c in children if c.info.status == "FINISHED"
    }
    assert 1 <= len(finished) < len(trials)
    temp_dir = study["env"]["RAY_TMPDIR"]
    left = wait_for(lambda: ray_processes(temp_dir), lambda found: all(p.name().startswith("ray::") for p in found))
    assert left, "a killed driver leaves Ray's agents running (if Ray stops doing so, this test has nothing to show)"

    resumed = run(study, spec, "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Ray processes left running by an earlier driver of this study" in resumed.stdout
    assert ray_processes(temp_dir) == []  # the earlier instance's and its own: nothing left behind
    client, parents, children = runs(study["uri"])
    assert len(parents) == 1
    assert sorted(c.info.run_name for c in children) == sorted(t.name for t in trials)  # no duplicate runs
    assert all(c.info.status == "FINISHED" for c in children)
    for child in children:
        steps = history_steps(client, child, "train/loss")
        if child.info.run_name in finished:
            assert steps == finished[child.info.run_name]  # not trained again
        assert history_steps(client, child, "eval/heldout_loss/loss") == [4096, 8192, 12288, 16384]


def test_stop_ends_a_running_study_leaving_no_process_and_its_runs_killed(study):
    """`crossover stop` ends the study as Ctrl-C does: exit 130, the runs KILLED (not failed), no Ray process left.
    A rerun continuing a stopped study is the SIGTERM test's (the same handler ends both)."""
    spec = study["write"](train={"total_tokens": 98304}, eval={"every": 24576}, grid={"objective": ["ar"]})
    driver, log = start_driver(study, spec)
    try:
        found = wait_for(
            lambda: poll_runs(study["uri"])[2], lambda children: children or driver.poll() is not None, timeout_s=300
        )
        assert found, "the trial never started:\n" + log.read_text()[-3000:]
        again = run(study, spec)  # a second driver of the same study is refused while the first runs
        assert again.returncode == 2 and "already running" in again.stderr
        stop = subprocess.run(
            [*CROSSOVER, "stop", str(spec), "--storage", study["storage"]],
            env=study["env"],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert stop.returncode == 0 and "stopped its driver" in stop.stdout, stop.stdout + stop.stderr
        driver.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 130 and "study stopped" in log.read_text(), log.read_text()[-3000:]
    _, (parent,), (child,) = runs(study["uri"])  # stopped, not failed: both continue
    assert (parent.info.status, child.info.status) == ("KILLED", "KILLED") and "crossover.error" not in child.data.tags
    assert wait_for(lambda: ray_processes(study["env"]["RAY_TMPDIR"]), lambda left: not left, timeout_s=30) == []


def test_sigterm_stops_a_running_study_as_ctrl_c_and_the_rerun_continues_from_a_timed_checkpoint(study):
    """SIGTERM to the driver (`ray job stop`, a Kubernetes pod stopped) ends the study as Ctrl-C does: exit 130, the
    runs KILLED, not left RUNNING; the trial had checkpoints between eval points (one due every step), and the rerun
    continues from the latest of those, not from the start."""
    # One eval point, at the end: every checkpoint before it is a timed one.
    spec = study["write"](
        train={"total_tokens": 49152, "checkpoint_minutes": 1e-9}, eval={"every": 49152}, grid={"objective": ["ar"]}
    )
    driver, log = start_driver(study, spec)
    try:

        def logged_tokens() -> list[int]:
            client, _, children = poll_runs(study["uri"])
            return history_steps(client, children[0], "tokens") if children else []

        # Three log points: the checkpoints of the first two are written (each follows its step's log).
        found = wait_for(logged_tokens, lambda steps: len(steps) >= 3 or driver.poll() is not None, timeout_s=300)
        assert len(found) >= 3, "the trial never trained three steps:\n" + log.read_text()[-3000:]
        driver.send_signal(signal.SIGTERM)
        driver.wait(timeout=120)
    finally:
        stop_group(driver)
    assert driver.returncode == 130 and "study stopped" in log.read_text(), log.read_text()[-3000:]
    _, (parent,), (child,) = runs(study["uri"])
    assert (parent.info.status, child.info.status) == ("KILLED", "KILLED")
    kept = {
        json.loads(state.read_text())["tokens"]
        for state in Path(study["storage"], "tiny").glob("*/checkpoint_*/rank0_crossover_state.json")
    }
    assert kept and 0 < min(kept) and max(kept) < 49152  # timed checkpoints only: no eval point before the end

    resumed = run(study, spec)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    client, (parent,), (child,) = runs(study["uri"])
    assert (parent.info.status, child.info.status) == ("FINISHED", "FINISHED")
    # The rerun's first report (Tune counts reports from 1 again in a restored trial): one step after where it began.
    *_, first = (r for r in tune_results(study, child.info.run_name) if r["iterations_since_restore"] == 1)
    assert first["tokens"] - 1024 in kept  # it went on from a timed checkpoint of the stopped run
    assert history_steps(client, child, "eval/heldout_loss/loss") == [49152]


# SIGTERM here (as Ctrl-C, while Ray starts) once left the driver hanging past 120 s in a fresh-clone `make test` under
# load, and did not again in 7 tries alone: not understood yet, so this test sends Ctrl-C only; SIGTERM to a running
# study is tested above (test_sigterm_stops_a_running_study_as_ctrl_c_and_the_rerun_continues_from_a_timed_checkpoint).
@pytest.mark.parametrize("signum", [signal.SIGINT], ids=["ctrl-c"])
def test_ctrl_c_while_a_study_starts_stops_it_marked_killed(study, signum):
    """Ctrl-C as soon as the study's parent run exists (Ray starting, or the first trial just placed): exit 130 with a
    line saying how to continue, and the parent run KILLED, not FINISHED."""
    # A trial far longer than the test: on a loaded machine the first poll that sees the parent run can come late,
    # and the signal must still find the study running (it ends the trial early, so the length costs nothing).
    spec = study["write"](train={"total_tokens": 1_000_000}, grid={"objective": ["ar"]})
    command = [*CROSSOVER, "run", str(spec), "--tracking-uri", study["uri"], "--storage", study["storage"]]
    driver = subprocess.Popen(
        command,
        env=study["env"],
        cwd=spec.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert wait_for(lambda: poll_runs(study["uri"])[1], lambda parents: parents or driver.poll() is not None)
        driver.send_signal(signum)
        output = driver.communicate(timeout=120)[0]
    finally:
        stop_group(driver)
    assert driver.returncode == 130 and "study stopped" in output and "crossover run" in output, output[-3000:]
    _, (parent,), children = runs(study["uri"])
    assert parent.info.status == "KILLED" and all(c.info.status == "KILLED" for c in children)


RECORD_AND_EXIT = """
import json, sys, psutil
me = psutil.Process()
json.dump({"driver_pid": me.pid, "driver_started": me.create_time(), "session_dir": "/nowhere"}, open(sys.argv[1], "w"))
"""


def test_a_driver_that_exited_is_not_running_before_its_parent_reaps_it(tmp_path):
    """`crossover stop` and the second-driver check see an ended driver as ended even while the program that started
    it has not waited on it yet (it is a zombie till then)."""
    import psutil

    from crossover.platform.local_ray import running_driver, stop_driver

    record = tmp_path / "tiny.ray.json"
    driver = subprocess.Popen([sys.executable, "-c", RECORD_AND_EXIT, str(record)])
    try:
        assert wait_for(lambda: psutil.Process(driver.pid).status(), lambda s: s == psutil.STATUS_ZOMBIE) == "zombie"
        assert running_driver(record) is None and stop_driver(record) is False
    finally:
        driver.wait()


def test_killed_training_process_restarts_from_its_checkpoint(study):
    import psutil

    # Three quarters of the trial remain after its first checkpoint: seconds to find and kill its process, on any CPU.
    spec = study["write"](
        train={"total_tokens": 98304}, eval={"every": 24576}, grid={"objective": ["ar"], "unique_tokens": ["10k"]}
    )
    driver, log = start_driver(study, spec)
    killed = None
    try:
        deadline = time.monotonic() + 300
        while killed is None and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.5)
            client, _, children = poll_runs(study["uri"])
            if children and history_steps(client, children[0], "eval/heldout_loss/loss"):
                for proc in psutil.process_iter(["cmdline"]):
                    cmdline = " ".join(proc.info["cmdline"] or [])
                    if cmdline.startswith("ray::ImplicitFunc") or cmdline.startswith("ray::run_trial"):
                        proc.kill()  # the process training the trial dies
                        killed = proc.pid
        assert killed, "never saw the trial's process after its first checkpoint:\n" + log.read_text()[-3000:]
        driver.wait(timeout=400)
    finally:
        stop_group(driver)
    assert driver.returncode == 0, log.read_text()[-5000:]
    client, _, children = runs(study["uri"])
    assert len(children) == 1 and children[0].info.status == "FINISHED"
    assert history_steps(client, children[0], "eval/heldout_loss/loss") == [24576 * i for i in range(1, 5)]
    assert max(history_steps(client, children[0], "tokens")) == 98304


@pytest.mark.long  # `make test-long`: the suite's time (Makefile)
def test_a_full_disk_at_a_checkpoint_fails_the_trial_naming_the_space_and_a_rerun_resumes(study, tmp_path):
    every, total = 49152, 147456
    disk = tmp_path / "disk"  # a small filesystem of its own for the study's storage, filled up mid-trial
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=128m", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here (needs root): {mounted.stderr.strip()}")
    storage, log = str(disk / "ray"), tmp_path / "driver.log"
    spec = study["write"](
        train={"total_tokens": total}, eval={"every": every}, grid={"objective": ["ar"]}, resources={"max_failures": 0}
    )
    command = [*CROSSOVER, "run", str(spec), "--tracking-uri", study["uri"], "--storage", storage, "--quiet"]
    try:
        driver = subprocess.Popen(
            command,
            env=study["env"],
            cwd=spec.parent,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def logged() -> int:  # MLflow, not Tune's result.json: that is synced to storage only now and then
            _, _, children = poll_runs(study["uri"])
            history = client.get_metric_history(children[0].info.run_id, "tokens") if children else []
            return max((m.step for m in history), default=0)

        client = mlflow_client(study["uri"])
        deadline = time.monotonic() + 300
        while logged() <= every and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)  # a log point after the first checkpoint: that checkpoint is in storage, whole
        (first,) = Path(storage, "tiny").glob("*/checkpoint_000000")
        files = {f.relative_to(first): f.stat().st_size for f in first.rglob("*") if f.is_file()}
        with open(disk / "filler", "wb") as filler:  # leave half a checkpoint's room
            room = shutil.disk_usage(disk).free - sum(files.values()) // 2
            while room > 0:
                room -= filler.write(b"\0" * min(room, 1 << 20))
        driver.wait(timeout=300)
        output = log.read_text()
        assert driver.returncode == 1, output[-3000:]
        assert "no space for a checkpoint in " + storage in output and "MiB free there" in output, output[-3000:]
        assert [c.name for c in first.parent.glob("checkpoint_*")] == ["checkpoint_000000"]  # nothing half-written
        assert {f.relative_to(first): f.stat().st_size for f in first.rglob("*") if f.is_file()} == files

        (disk / "filler").unlink()  # space freed: the same command resumes the study
        rerun = subprocess.run(command, env=study["env"], cwd=spec.parent, capture_output=True, text=True, timeout=420)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        client, _, (child,) = runs(study["uri"])
        assert child.info.status == "FINISHED"
        assert history_steps(client, child, "eval/heldout_loss/loss") == list(range(every, total + 1, every))
        steps = history_steps(client, child, "train/loss")
        assert steps == sorted(set(steps)) and steps[-1] == total
        # resumed from the first checkpoint: the restored trial's first report (Tune counts iterations since the
        # restore) came one step after it, not at the first step of a trial started over
        (results,) = Path(storage, "tiny").glob("*/result.json")
        restarts = [json.loads(line) for line in results.read_text().splitlines()]
        restarts = [r for r in restarts if r["iterations_since_restore"] == 1 and r["training_iteration"] > 1]
        assert [r["tokens"] for r in restarts] == [every + 1024]
    finally:
        with contextlib.suppress(Exception):
            os.killpg(driver.pid, signal.SIGKILL)
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_unreachable_tracking_server_exits_2_before_any_trial(study, tmp_path):
    spec = study["write"]()
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = subprocess.run(
        [*CROSSOVER, "run", str(spec), "--tracking-uri", url, "--storage", study["storage"]],
        env=study["env"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 2
    assert "unreachable" in result.stderr and url in result.stderr
    assert "Ray" not in result.stdout + result.stderr  # no Ray instance was started
    assert not Path(study["storage"]).exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.long  # `make test-long`: the suite's time (Makefile)
def test_a_tracking_server_restarted_mid_study_loses_nothing(study, tmp_path):
    total, every = 98304, 24576
    spec = study["write"](
        train={"total_tokens": total}, eval={"every": every, "tasks": ["heldout_loss", "heldout_cloze"]}
    )
    store, port = tmp_path / "server", free_port()
    with mlflow_server(store, port) as url:
        command = [*CROSSOVER, "run", str(spec), "--tracking-uri", url, "--storage", study["storage"], "--quiet"]
        driver = subprocess.Popen(
            command,
            env=study["env"],
            cwd=spec.parent,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

        def logged() -> list[int]:
            with contextlib.suppress(Exception):
                _, _, children = runs(url)
                return [len(mlflow_client(url).get_metric_history(c.info.run_id, "tokens")) for c in children]
            return []

        assert wait_for(logged, lambda counts: len(counts) == 2 and min(counts) > 0, timeout_s=300), "no trial logged"
    # the server is stopped (same port, same backend store): the trials train on, buffering what they log
    down = time.time()
    time.sleep(10)
    with mlflow_server(store, port) as url:
        up = time.time()
        output, _ = driver.communicate(timeout=900)
        assert driver.returncode == 0, output
        client, parents, children = runs(url)
        assert len(parents) == 1 and parents[0].info.status == "FINISHED" and len(children) == 2
        buffered = []  # values logged while the server was down, sent after it came back
        for child in children:
            assert child.info.status == "FINISHED"
            history = client.get_metric_history(child.info.run_id, "train/loss")
            assert sorted(m.step for m in history) == list(range(1024, total + 1, 1024))  # every log point, once
            buffered.extend(m for m in history if down * 1000 < m.timestamp < up * 1000)
            evals = [m.step for m in client.get_metric_history(child.info.run_id, "eval/heldout_cloze/acc")]
            assert sorted(evals) == list(range(every, total + 1, every))
            items = {a.path for a in client.list_artifacts(child.info.run_id, "items/heldout_cloze")}
            assert items == {f"items/heldout_cloze/{step}.json" for step in evals}
        assert buffered, "the trials logged nothing while the server was down: the fault missed the run"


def test_metrics_logged_while_the_server_is_down_are_not_lost(tmp_path, tiny_corpus):
    spec = parse_study(tiny_study(tiny_corpus))
    trial = spec.expand()[0]
    port = free_port()
    with mlflow_server(tmp_path / "store", port) as url:
        parent = start_study(spec, "name: tiny\n", url)
        run_ = TrialRun(trial, url, parent)
        run_.log({"train/loss": 5.0}, 1024)
    for step in (2048, 3072):  # the server is down: buffered, no exception
        run_.log({"train/loss": 4.0, "tokens": step}, step)
    assert len(run_._pending) == 4  # two steps of two metrics wait in the buffer
    with mlflow_server(tmp_path / "store", port) as url:
        run_.finish()
        client = mlflow_client(url)
        assert sorted(m.step for m in client.get_metric_history(run_.run_id, "train/loss")) == [1024, 2048, 3072]
        assert client.get_run(run_.run_id).info.status == "FINISHED"


def test_a_restarted_trial_does_not_log_an_eval_point_twice(tmp_path, tiny_corpus):
    """A trial restarted before its first checkpoint was recorded (a driver killed in between) trains again from
    the start: the MLflow run it continues keeps one value per step, and per-item files are not rewritten."""
    spec = parse_study(tiny_study(tiny_corpus))
    trial, uri = spec.expand()[0], f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = start_study(spec, "name: tiny\n", uri)
    first = TrialRun(trial, uri, parent)
    for step in (1024, 2048):
        first.log({"train/loss": 5.0 - step / 1024, "tokens": step}, step)
    first.log_items("heldout_cloze", 2048, ["a", "b"], {"acc": [1.0, 0.0]})
    again = TrialRun(trial, uri, parent)  # the restart
    assert again.run_id == first.run_id and again.logged_through == 2048
    for step in (1024, 2048, 3072):
        again.log({"train/loss": 5.0 - step / 1024, "tokens": step}, step)
    again.log_items("heldout_cloze", 2048, ["a", "b"], {"acc": [0.0, 0.0]})
    again.finish()
    client = mlflow_client(uri)
    assert sorted(m.step for m in client.get_metric_history(first.run_id, "train/loss")) == [1024, 2048, 3072]
    items = json.loads(Path(client.download_artifacts(first.run_id, "items/heldout_cloze/2048.json")).read_text())
    assert items["metrics"]["acc"] == [1.0, 0.0]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the drop is the point
def test_a_ctrl_c_dropped_on_its_way_still_stops_a_starting_study():
    """Python drops what a callback raises in some places (finalizers, logging's at-fork lock release that Ray's
    start-up runs on every fork): a Ctrl-C landing there must still stop the study at the next safe point."""
    from crossover.platform.driver import interrupts_kept

    class DropsWhatItRaises:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), interrupts_kept() as interrupted:
        DropsWhatItRaises()  # the KeyboardInterrupt raised in __del__ is printed and dropped here
        interrupted()
    assert signal.getsignal(signal.SIGINT) is before
