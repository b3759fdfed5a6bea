"""The local Ray instance a study's driver starts, and the processes it leaves behind when the driver dies.

A driver killed with SIGKILL takes its GCS server and raylet with it, but Ray's dashboard and runtime-env agents
are re-parented to init and run on. They rename themselves (`ray::DashboardAgent`), so their command line names
nothing; what ties them to the dead instance is the session folder whose log files they hold open. The driver
records that folder (and itself) in `<study>.ray.json` beside the study's log; the next `crossover run` or
`crossover stop` finds the processes that still hold files of a session whose driver is gone, and stops them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import psutil

STOP_WAIT_S = 60.0  # a running driver asked to stop (SIGINT: Tune saves its state) gets this long


def state_file(folder: Path, study: str) -> Path:
    return folder / f"{study}.ray.json"


def init_local_instance(**options) -> None:
    """`ray.init` of a local instance on this machine's cores (`options`: more of ray.init's arguments).

    Ray Train checks on a trial's workers every 2 s, and a worker group waits on several checks to start and end: 6 s
    of a 20 s small trial here. On one machine those polls are cheap, so they come every 0.5 s (a cluster keeps Ray's
    default). Ray Train's preemption watcher (an actor per trial that polls for nodes being drained, one more process
    to start on a 2-core machine) has nothing to watch on one machine, so it is off. The instance's processes inherit
    the settings from this one."""
    import ray  # lazy: ray takes seconds; `crossover stop` uses this module without it

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    ray.init(include_dashboard=False, log_to_driver=False, **options)


def record_local_instance(path: Path) -> None:
    """Called by the driver right after it started a local Ray instance."""
    import ray  # lazy: as in init_local_instance

    me = psutil.Process()
    payload = {
        "driver_pid": me.pid,
        "driver_started": me.create_time(),
        "session_dir": ray._private.worker._global_node.get_session_dir_path(),
    }
    partial = path.with_name(path.name + ".partial")
    path.parent.mkdir(parents=True, exist_ok=True)  # a first run with --verbose has no log there yet
    partial.write_text(json.dumps(payload))
    partial.replace(path)


def running_driver(path: Path) -> psutil.Process | None:
    """The driver that wrote `path`, if it is still alive (the same process, not a new one with its pid, and not one
    that has exited while its parent has yet to reap it)."""
    state = _read(path)
    if state is None:
        return None
    with contextlib.suppress(psutil.Error):
        driver = psutil.Process(state["driver_pid"])
        if abs(driver.create_time() - state["driver_started"]) < 1.0 and driver.status() != psutil.STATUS_ZOMBIE:
            return driver
    return None


def leftover_processes(path: Path) -> list[psutil.Process]:
    """Processes of the recorded instance that outlived its driver (none while the driver runs)."""
    state = _read(path)
    if state is None or running_driver(path) is not None:
        return []
    session = state["session_dir"].rstrip("/") + "/"
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error):
            command = " ".join(proc.info["cmdline"] or [])
            if session in command or any(f.path.startswith(session) for f in _ray_open_files(proc, command)):
                found[proc.pid] = proc
                found.update((child.pid, child) for child in proc.children(recursive=True))
    return list(found.values())


def _ray_open_files(proc: psutil.Process, command: str) -> list:
    # Only Ray's own processes are worth asking (listing open files is a /proc walk per process).
    return proc.open_files() if "ray" in command else []  # renamed agents too: `ray::DashboardAgent`


def clean_up(path: Path) -> int:
    """Stop what a dead driver's instance left running and forget the instance; returns how many processes."""
    doomed = leftover_processes(path)
    for proc in doomed:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(doomed, timeout=10)
    if running_driver(path) is None:
        path.unlink(missing_ok=True)
    return len(doomed)


def stop_driver(path: Path) -> bool:
    """Ask a running driver to stop as Ctrl-C would (SIGINT: Tune saves its state, trials resume later); kill it
    if it has not stopped after STOP_WAIT_S. Returns whether there was one."""
    driver = running_driver(path)
    if driver is None:
        return False
    with contextlib.suppress(psutil.Error):
        driver.send_signal(signal.SIGINT)
        if not _driver_ended(path, STOP_WAIT_S):
            driver.kill()
            _driver_ended(path, 10)
    return True


def _driver_ended(path: Path, timeout_s: float) -> bool:
    """Whether the recorded driver ends within `timeout_s`. Not psutil's wait: that also waits for an ended driver's
    parent to reap it (a script that started `crossover run` and waits on something else first)."""
    deadline = time.monotonic() + timeout_s
    while running_driver(path) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
