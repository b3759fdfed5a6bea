"""HumanEval: isolated execution with resource limits, the pass@k estimator, and the task end to end."""

import math
import os
import resource
import statistics
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


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_every_canonical_solution_passes():
    problems = humaneval_problems()
    assert len(problems) == 164
    assert [p["task_id"] for p in problems[:3]] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert humaneval_problems(limit=5) == problems[:5]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: check_completion(p, p["canonical_solution"]), problems))
    failures = {p["task_id"]: r for p, r in zip(problems, results, strict=True) if not r.passed}
    assert failures == {}


def test_wrong_solutions_fail():
    problem = humaneval_problems(limit=1)[0]
    wrong = check_completion(problem, "    return False\n")  # has_close_elements: some tests expect True
    assert wrong.status == "failed" and "AssertionError" in wrong.detail
    broken = check_completion(problem, "    return (\n")
    assert broken.status == "failed" and "SyntaxError" in broken.detail
    assert run_program("raise SystemExit(3)").status == "failed"
    assert run_program("print('hi')") == run_program("print('hi')")
    assert run_program("print('hi')").passed and run_program("print('hi')").detail == "hi\n"


def test_an_infinite_loop_is_killed_with_its_children():
    start = time.monotonic()
    result = run_program("while True:\n    pass\n", timeout_s=2)
    assert result.status == "timeout" and time.monotonic() - start < 30
    # a forked child dies with its parent: the whole process group is killed
    program = "import os\npid = os.fork()\nif pid:\n    print(pid, flush=True)\nwhile True:\n    pass\n"
    result = run_program(program, timeout_s=2)
    assert result.status == "timeout"
    child = int(result.detail.split()[-1])
    for _ in range(50):  # the orphan is reaped by init; until then it may linger as a zombie
        status = Path(f"/proc/{child}/status")
        if not status.exists() or "\nState:\tZ" in status.read_text():
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"child {child} of a timed-out program is still running")


def test_huge_allocations_are_refused_without_harming_the_caller():
    rss_before, peak_before = rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = run_program("x = bytearray(8 * 2**30)\nprint('allocated')\n")
    assert result.status == "memory" and "allocated" not in result.detail
    growing = run_program("x = []\nwhile True:\n    x.append(bytearray(2**20))\n", memory_mb=128)
    assert growing.status == "memory"
    # the caller's memory did not grow with the child's, and it keeps working
    assert rss_mb() - rss_before < 50
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 50 * 1024  # KiB on Linux
    assert run_program("print(sum(range(10)))").detail == "45\n"


def test_a_flood_of_output_is_capped():
    result = run_program("while True:\n    print('x' * 1000)\n", timeout_s=20)
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
    result = humaneval_pass_at_k(em, problems, n_samples=n_samples, ks=(1, 2), max_new_tokens=24, timeout_s=5)
    assert result.item_ids == ["HumanEval/0", "HumanEval/1"]
    names = ["pass@1", "pass@2"][:n_samples]
    assert set(result.metrics) == {m for k in names for m in (k, f"{k}_stderr")}
    for name in names:
        assert 0.0 <= result.metrics[name] <= 1.0 and result.metrics[f"{name}_stderr"] >= 0.0
        assert len(result.item_metrics[name]) == 2
        assert all(v in (0.0, 0.5, 1.0) for v in result.item_metrics[name])
