"""Evaluation: likelihoods (AR exact, MDLM Monte Carlo ELBO), held-out loss, likelihood multiple-choice tasks,
HumanEval (likelihood and pass@k), samplers, and the lm-eval bridge.

Every task a spec names is a component found by name in `crossover.evals.registry`; `crossover.evals.suite.EvalSuite`
runs a trial's tasks the same way at a trainer's eval points and in `crossover eval`. This package's import loads
neither torch nor a task: `crossover validate` checks task names with it."""
