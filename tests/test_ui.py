"""`crossover ui`: the MLflow UI's links are printed once the server answers (a real `mlflow ui`), never before; a
server that never answers, or exits first, is said with the cause; a port already taken is refused up front."""

from __future__ import annotations

import contextlib
import errno
import http.server
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

from typer.testing import CliRunner

from crossover.cli import app
from crossover.cli.study import wait_until_answers
from crossover.platform.tracking import start_study
from crossover.specs import parse_study

from .conftest import tiny_study
from .services import free_port, stop_group

START_LIMIT_S = 240  # a bound on waiting for the UI on a busy machine, never an assertion on speed


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args) -> None:
        pass


def test_the_wait_ends_when_a_late_server_answers_and_names_why_one_never_does():
    port = free_port()
    serving = threading.Event()
    server: list[http.server.HTTPServer] = []

    def start_late() -> None:  # the port refuses connections until the server starts, a second on
        time.sleep(1.0)
        server.append(http.server.HTTPServer(("127.0.0.1", port), Health))
        serving.set()
        server[0].serve_forever()

    thread = threading.Thread(target=start_late, daemon=True)
    thread.start()
    try:
        assert wait_until_answers(f"http://127.0.0.1:{port}/health", 60) is None
        assert serving.is_set()  # it waited for the server
    finally:
        serving.wait(10)
        if server:
            server[0].shutdown()
            server[0].server_close()

    nobody = free_port()
    refused = wait_until_answers(f"http://127.0.0.1:{nobody}/health", 1)
    assert refused.startswith("no answer within 1 s (last: ConnectionRefusedError"), refused
    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        mute = wait_until_answers(f"http://127.0.0.1:{silent.getsockname()[1]}/health", 1)
    assert mute.startswith("no answer within 1 s (last: ") and "timed out" in mute, mute
    exited = wait_until_answers(f"http://127.0.0.1:{nobody}/health", 60, exited=lambda: 3)
    assert exited.startswith("it exited with status 3 before answering"), exited


def test_ui_refuses_a_port_already_taken():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["ui", "--port", str(port), "--tracking-uri", "sqlite:///unused.db"])
    assert result.exit_code == 2, result.output
    assert f"port {port} on 127.0.0.1 is taken" in result.output and "--port" in result.output


def test_ui_prints_the_links_once_the_real_server_answers_and_ctrl_c_stops_it(tmp_path, tiny_corpus):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    start_study(parse_study(tiny_study(tiny_corpus)), "name: tiny\n", uri)
    port = free_port()
    server = f"http://127.0.0.1:{port}"
    log = tmp_path / "ui.log"
    command = [sys.executable, "-m", "crossover.cli", "ui", "--tracking-uri", uri, "--port", str(port)]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "w") as server_log:
        proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=server_log,
            text=True,
            env=env,
            start_new_session=True,
            # Ctrl-C as a terminal delivers it: a suite started in the background of a non-interactive shell runs
            # with SIGINT ignored, which every child inherits (and Python then keeps ignoring it)
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + START_LIMIT_S
        while not any(f"open {server}" in line for line in seen):
            assert proc.poll() is None, f"crossover ui exited: {seen}\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no link after {START_LIMIT_S} s: {seen}\n{log.read_text()[-3000:]}"
            with contextlib.suppress(queue.Empty):
                seen.append(lines.get(timeout=0.5))
        # the link is out: the server answers now, not 20 s later
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{server}/health", timeout=10) as response:
            assert response.status == 200
        assert any(line.startswith(f"tiny: {server}/#/experiments/") for line in seen), seen
        assert seen[0].startswith("starting the MLflow UI") and seen[-1].startswith(f"MLflow UI for {uri}: open")
        os.kill(proc.pid, signal.SIGINT)  # to crossover alone: it stops the server it started
        assert proc.wait(timeout=60) == 0
        # Nothing listens there any more: a connection is refused. (Binding the port to check was flaky: on a busy
        # machine another process's outgoing connection may take it as its local port, which is not a server.)
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) == errno.ECONNREFUSED
    finally:
        stop_group(proc)
