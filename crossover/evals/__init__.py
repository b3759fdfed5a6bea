"""Evaluation: likelihoods (AR exact, MDLM Monte Carlo ELBO); tasks, samplers and the lm-eval bridge build on them."""

from crossover.evals.likelihood import ar_loglik, mdlm_loglik

__all__ = ["ar_loglik", "mdlm_loglik"]
