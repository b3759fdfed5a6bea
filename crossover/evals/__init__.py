"""Evaluation: likelihoods (AR exact, MDLM Monte Carlo ELBO); tasks, samplers and the lm-eval bridge build on them."""

from crossover.evals.likelihood import ar_loglik, mdlm_loglik

# Tasks the trainer can run at its eval points today; the spec also names the ones still being built.
AVAILABLE_TASKS = ("heldout_loss",)


def check_tasks(tasks: list[str]) -> None:
    """Refuse, before any training, a task that specs accept but this version cannot evaluate yet."""
    missing = [t for t in tasks if t not in AVAILABLE_TASKS]
    if missing:
        raise ValueError(
            f"eval task(s) {', '.join(missing)} are not available in this version of crossover; "
            f"use eval.tasks: [{', '.join(AVAILABLE_TASKS)}]"
        )


__all__ = ["AVAILABLE_TASKS", "ar_loglik", "check_tasks", "mdlm_loglik"]
