"""HumanEval: sandboxed execution with resource limits, the pass@k estimator, and the task end to end."""

import math
import os
import resource
import site
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from crossover.evals.checkpoint import load_checkpoint
from crossover.evals.humaneval import (
    OUTPUT_CHARS,
    check_completion,
    humaneval_pass_at_k,
    humaneval_problems,
    pass_at_k_result,
    run_program,
    truncate_completion,
)
from crossover.evals.registry import check_tasks
from crossover.evals.sandbox import SANDBOX_ENV, sandbox_available

# The limit and classification tests run in the sandbox where this host has one and unsandboxed elsewhere (they
# test rlimits and the timeout, not isolation); the isolation tests skip without a sandbox.
ANY_HOST = {"unsafe_execution": True}
SANDBOX, WHY_NOT = sandbox_available()
sandboxed = pytest.mark.skipif(not SANDBOX, reason=f"this host cannot sandbox programs: {WHY_NOT}")


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def live_processes_with(token: str) -> list[int]:
    """Processes, zombies aside, whose command line holds `token` (a program's limits, seen from the host)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and token in (entry / "cmdline").read_bytes().decode(errors="replace"):
                if "\nState:\tZ" not in (entry / "status").read_text():
                    found.append(int(entry.name))
        except OSError:  # it exited meanwhile
            continue
    return found


def assert_killed_with_its_children(program: str, memory_mb: int) -> None:
    """`program` forks and loops; the timeout stops it, and no process of it is left (seen from the host, since a
    program in the sandbox knows only its namespace's pids). `memory_mb`, unique per call, marks its processes."""
    token = str(memory_mb << 20)  # the bootstrap's RLIMIT_AS argument, in every command line of the run
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(run_program, program, timeout_s=3, memory_mb=memory_mb, **ANY_HOST)
        deadline = time.monotonic() + 3
        while len(live_processes_with(token)) < 2 and time.monotonic() < deadline:  # the program and its child
            time.sleep(0.05)
        assert len(live_processes_with(token)) >= 2, "the program did not fork"
        result = running.result()
    assert result.status == "timeout" and "forked" in result.detail
    for _ in range(50):  # an orphan outside a pid namespace is reaped by init; until then it may linger
        if not live_processes_with(token):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"processes {live_processes_with(token)} of a timed-out program are still running")


def test_every_canonical_solution_passes():
    problems = humaneval_problems()
    assert len(problems) == 164
    assert [p["task_id"] for p in problems[:3]] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert humaneval_problems(limit=5) == problems[:5]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: check_completion(p, p["canonical_solution"], **ANY_HOST), problems))
    failures = {p["task_id"]: r for p, r in zip(problems, results, strict=True) if not r.passed}
    assert failures == {}


def test_wrong_solutions_fail():
    problem = humaneval_problems(limit=1)[0]
    wrong = check_completion(problem, "    return False\n", **ANY_HOST)  # has_close_elements: some tests expect True
    assert wrong.status == "failed" and "AssertionError" in wrong.detail
    broken = check_completion(problem, "    return (\n", **ANY_HOST)
    assert broken.status == "failed" and "SyntaxError" in broken.detail
    assert run_program("raise SystemExit(3)", **ANY_HOST).status == "failed"
    hi = run_program("print('hi')", **ANY_HOST)
    assert hi == run_program("print('hi')", **ANY_HOST)
    assert hi.passed and hi.detail == "hi\n"


def test_an_infinite_loop_is_killed_with_its_children():
    start = time.monotonic()
    result = run_program("while True:\n    pass\n", timeout_s=2, **ANY_HOST)
    assert result.status == "timeout" and time.monotonic() - start < 30
    # a forked child dies with its parent: the whole process group is killed
    program = "import os\nif os.fork():\n    print('forked', flush=True)\nwhile True:\n    pass\n"
    assert_killed_with_its_children(program, memory_mb=1021)


def test_huge_allocations_are_refused_without_harming_the_caller():
    rss_before, peak_before = rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = run_program("x = bytearray(8 * 2**30)\nprint('allocated')\n", **ANY_HOST)
    assert result.status == "memory" and "allocated" not in result.detail
    growing = run_program("x = []\nwhile True:\n    x.append(bytearray(2**20))\n", memory_mb=128, **ANY_HOST)
    assert growing.status == "memory"
    # the caller's memory did not grow with the child's, and it keeps working
    assert rss_mb() - rss_before < 50
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 50 * 1024  # KiB on Linux
    assert run_program("print(sum(range(10)))", **ANY_HOST).detail == "45\n"


def test_a_flood_of_output_is_capped():
    result = run_program("while True:\n    print('x' * 1000)\n", timeout_s=20, **ANY_HOST)
    assert result.status == "failed" and "output exceeded" in result.detail
    assert len(result.detail) < OUTPUT_CHARS + 100


def test_completions_stop_at_top_level_code():
    body = "    return a + b\n"
    assert truncate_completion(body + "\n\ndef main():\n    pass\n") == body + "\n"
    assert truncate_completion(body + "\nif __name__ == '__main__':\n    main()") == body
    assert truncate_completion(body + "\nprint(add(1, 2))\nclass A: pass") == body
    assert truncate_completion(body) == body


def test_pass_at_k_matches_the_closed_form():
    outcomes = [[True, False, False, False, False], [False] * 5, [True, True, True, False, True], [True] * 5]
    result = pass_at_k_result(["a", "b", "c", "d"], outcomes, ks=(1, 2, 5, 10))
    assert result.task == "humaneval_pass@k" and result.item_ids == ["a", "b", "c", "d"]
    assert set(result.metrics) == {"pass@1", "pass@1_stderr", "pass@2", "pass@2_stderr", "pass@5", "pass@5_stderr"}
    for k in (1, 2, 5):
        expected = [1 - math.comb(5 - sum(o), k) / math.comb(5, k) for o in outcomes]
        assert result.item_metrics[f"pass@{k}"] == pytest.approx(expected)
        assert result.metrics[f"pass@{k}"] == pytest.approx(statistics.mean(expected))
        assert result.metrics[f"pass@{k}_stderr"] == pytest.approx(statistics.stdev(expected) / 2)
    assert result.item_metrics["pass@1"] == pytest.approx([0.2, 0.0, 0.8, 1.0])
    assert result.item_metrics["pass@2"] == pytest.approx([0.4, 0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="same positive number"):
        pass_at_k_result(["a", "b"], [[True], [True, False]], ks=(1,))
    with pytest.raises(ValueError, match="no k"):
        pass_at_k_result(["a"], [[True]], ks=(2,))


@pytest.mark.parametrize(("objective", "n_samples"), [("ar", 2), ("mdlm", 1)])
def test_pass_at_k_of_a_tiny_checkpoint_end_to_end(tiny_checkpoints, one_thread, objective, n_samples):
    em = load_checkpoint(tiny_checkpoints[objective])
    problems = humaneval_problems(limit=2)
    result = humaneval_pass_at_k(
        em, problems, n_samples=n_samples, ks=(1, 2), max_new_tokens=24, timeout_s=5, **ANY_HOST
    )
    assert result.item_ids == ["HumanEval/0", "HumanEval/1"]
    names = ["pass@1", "pass@2"][:n_samples]
    assert set(result.metrics) == {m for k in names for m in (k, f"{k}_stderr")}
    for name in names:
        assert 0.0 <= result.metrics[name] <= 1.0 and result.metrics[f"{name}_stderr"] >= 0.0
        assert len(result.item_metrics[name]) == 2
        assert all(v in (0.0, 0.5, 1.0) for v in result.item_metrics[name])


# ---- the sandbox: each test also runs its program outside it (CROSSOVER_SANDBOX=off, eval.unsafe_execution) to
# show that the program does what it claims where nothing stops it


@sandboxed
def test_a_program_has_no_network(monkeypatch):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=5).close()\n"
        result = run_program(program)
        assert result.status == "failed" and "Network is unreachable" in result.detail
        with pytest.raises(TimeoutError):
            listener.accept()  # nobody knocked
        monkeypatch.setenv(SANDBOX_ENV, "off")
        assert run_program(program, unsafe_execution=True).passed
        listener.accept()[0].close()


@sandboxed
def test_a_program_cannot_read_files_outside_its_directory(tmp_path, monkeypatch):
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    home = tmp_path / "home"
    token = home / ".ray" / "auth_token"
    token.parent.mkdir(parents=True)
    token.write_text("t0ken")
    monkeypatch.setenv("HOME", str(home))
    for path in (secret, token):
        result = run_program(f"print(open({str(path)!r}).read())\n")
        assert result.status == "failed" and "FileNotFoundError" in result.detail  # not even there
        assert path.read_text() not in result.detail
    # none of these host paths is there (base site-packages: an empty folder); the stdlib is, off sys.path nothing
    hidden = [str(Path(__file__).parent), *site.getsitepackages(), "/etc/passwd", "/home", "/proc/self", "/sys/kernel"]
    program = "import json, os, sys\n"
    program += f"print([p for p in {hidden!r} if os.path.exists(p) and (not os.path.isdir(p) or os.listdir(p))])\n"
    program += "print(os.listdir('/tmp'), [p for p in sys.path if 'site-packages' in p])\n"
    assert run_program(program).detail == "[]\n['program.py'] []\n"
    monkeypatch.setenv(SANDBOX_ENV, "off")
    assert run_program(f"print(open({str(secret)!r}).read())\n", unsafe_execution=True).detail == "s3cret\n"


@sandboxed
def test_a_program_cannot_write_outside_its_directory(tmp_path, monkeypatch):
    target = tmp_path / "written.txt"
    for path in (str(target), "/written.txt", f"{sys.base_prefix}/written.txt", "/dev/written.txt"):
        result = run_program(f"open({path!r}, 'w').write('x')\n")
        assert result.status == "failed" and ("FileNotFoundError" in result.detail or "Read-only" in result.detail)
        assert not Path(path).exists()
    assert run_program("open('/tmp/a', 'w').write('x')\nopen('b', 'w').write('y')\n").passed  # its own: yes
    monkeypatch.setenv(SANDBOX_ENV, "off")
    assert run_program(f"open({str(target)!r}, 'w').write('x')\n", unsafe_execution=True).passed
    assert target.read_text() == "x"


@sandboxed
def test_a_program_sees_none_of_the_callers_environment(monkeypatch):
    monkeypatch.setenv("CROSSOVER_TEST_MARKER", "m4rker")
    result = run_program("import os\nprint(sorted(os.environ))\n")
    assert result.passed and result.detail == "['HOME', 'LC_ALL', 'PATH', 'TMPDIR']\n"


@sandboxed
def test_a_child_that_leaves_the_process_group_dies_with_the_pid_namespace():
    program = "import os\nif os.fork():\n    print('forked', flush=True)\nelse:\n    os.setsid()\n"
    program += "while True:\n    pass\n"
    assert_killed_with_its_children(program, memory_mb=1022)


@sandboxed
def test_humaneval_runs_where_the_host_has_a_sandbox():
    check_tasks(["humaneval_pass@k"])  # no opt-in needed


def test_humaneval_refuses_without_a_sandbox_unless_the_spec_opts_in(monkeypatch):
    monkeypatch.setenv(SANDBOX_ENV, "off")
    assert sandbox_available() == (False, "CROSSOVER_SANDBOX=off")
    with pytest.raises(ValueError, match=r"eval\.unsafe_execution: true") as refused:
        check_tasks(["heldout_loss", "humaneval_pass@k"])
    assert "CROSSOVER_SANDBOX=off" in str(refused.value) and "unshare" in str(refused.value)
    check_tasks(["heldout_loss", "humaneval_pass@k"], unsafe_execution=True)
    check_tasks(["heldout_loss", "humaneval_likelihood"])  # no generated code, no sandbox needed
    with pytest.raises(ValueError, match=r"eval\.unsafe_execution"):
        run_program("print('hi')")
    assert run_program("print('hi')", unsafe_execution=True).detail == "hi\n"
    # unsandboxed programs run with a warning, once per process
    twice = "from crossover.evals.sandbox import use_sandbox\nprint(use_sandbox(True), use_sandbox(True))\n"
    done = subprocess.run([sys.executable, "-c", twice], capture_output=True, text=True, check=True)
    assert done.stdout == "False False\n"
    assert [line for line in done.stderr.splitlines() if "WITHOUT a sandbox" in line] == [done.stderr.strip()]
