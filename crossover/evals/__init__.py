"""Evaluation: likelihoods (AR exact, MDLM Monte Carlo ELBO), held-out loss, likelihood multiple-choice tasks,
HumanEval (likelihood and pass@k), samplers, and the lm-eval bridge. `EvalSuite` runs a spec's tasks the same way at
a trainer's eval points and in `crossover eval`."""

from crossover.evals.likelihood import ar_loglik, mdlm_loglik
from crossover.evals.results import TaskResult
from crossover.specs.study import EVAL_TASKS

LM_EVAL_PREFIX = "lm_eval:"


def check_tasks(tasks: list[str], *, unsafe_execution: bool = False) -> None:
    """Refuse, before any training, a task this installation cannot evaluate (lm-eval tasks need the `eval` extra;
    humaneval_pass@k needs the sandbox for generated code, unless the spec's eval.unsafe_execution opts out)."""
    unknown = [t for t in tasks if t not in EVAL_TASKS and not t.startswith(LM_EVAL_PREFIX)]
    if unknown:
        raise ValueError(f"unknown eval task(s) {', '.join(unknown)}; tasks: {', '.join(EVAL_TASKS)}, lm_eval:<task>")
    if any(t.startswith(LM_EVAL_PREFIX) for t in tasks):
        import importlib.util

        if importlib.util.find_spec("lm_eval") is None:
            raise ValueError("lm_eval:<task> needs the lm-eval harness: pip install 'crossover[eval]'")
    if "humaneval_pass@k" in tasks and not unsafe_execution:
        from crossover.evals.sandbox import refusal, sandbox_available

        available, reason = sandbox_available()
        if not available:
            raise ValueError(refusal(reason))


__all__ = ["EVAL_TASKS", "TaskResult", "ar_loglik", "check_tasks", "mdlm_loglik"]
