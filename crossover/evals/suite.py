"""The evaluation tasks of a spec, run the same way at a trainer's eval points and by `crossover eval CHECKPOINT`.

    EvalSuite(tasks, settings, data) -> items built once (the same items at every eval point and for every trial
    of a study, so curves and matched pairs compare item by item) -> suite.run(em) -> [TaskResult]

Tasks:
- `heldout_loss`: held-out loss per token (AR exact NLL, MDLM ELBO); computed by the caller, which can share the
  windows across ranks (see `crossover.evals.heldout`).
- `heldout_cloze`, `humaneval_likelihood`: likelihood multiple choice (`crossover.evals.tasks`).
- `humaneval_pass@k`: greedy completions of `max_items` problems, executed in subprocesses (pass@1).
- `lm_eval:<task>`: any lm-eval task through the bridge, `max_items` documents (its data must be reachable).

Budgets come from the spec's eval block: `max_items` items per task, `mc_samples` Monte Carlo samples per MDLM
ELBO, and `mdlm_steps` (MDLM's choices decoded left to right in that many steps instead of the ELBO). Per-item
results are kept for the analysis's bootstrap (`crossover.tracking.names.items_payload`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from crossover.evals import LM_EVAL_PREFIX
from crossover.evals.checkpoint import EvalModel
from crossover.evals.results import TaskResult

HELDOUT_LOSS = "heldout_loss"
ITEM_SEED = 0  # every trial of a study scores the same items: matched pairs and seeds compare item by item


class EvalSuite:
    """The spec's tasks other than `heldout_loss`, with their items built once."""

    def __init__(
        self,
        tasks: Sequence[str],
        *,
        max_items: int,
        mc_samples: int,
        mdlm_steps: int | None = None,
        data: Any = None,
        seq_len: int | None = None,
        lm_eval_include: str | None = None,
        unsafe_execution: bool = False,
    ):
        """`data`: a `crossover.data.PreparedData` (held-out documents and the tokenizer) or an EvalModel (no
        held-out documents). `seq_len`: the training window, which every multiple-choice item fits (a model is
        scored at the lengths it was trained on: a HumanEval problem whose solution takes more than half the window
        is left out, its prompt cut from the left). `unsafe_execution`: the spec's
        eval.unsafe_execution (HumanEval programs run unsandboxed where the host has no sandbox)."""
        from crossover.evals.tasks import MC_TASKS, build_items

        self.tasks = [t for t in tasks if t != HELDOUT_LOSS]
        self.max_items, self.mc_samples, self.mdlm_steps = max_items, mc_samples, mdlm_steps
        self.lm_eval_include = lm_eval_include
        self.unsafe_execution = unsafe_execution
        self._lm_eval_tasks = None  # lm-eval's task index (seconds to build), built at the first eval point
        self.items = {}
        for task in self.tasks:
            if task in MC_TASKS:
                self.items[task] = build_items(task, data, max_items=max_items, seed=ITEM_SEED, max_seq_len=seq_len)

    def run(self, em: EvalModel) -> list[TaskResult]:
        from crossover.evals.tasks import score_multiple_choice

        results = []
        for task in self.tasks:
            if task in self.items:
                pmi = task == "heldout_cloze"  # its spans compete on surface form: acc_pmi is the sharper accuracy
                results.append(score_multiple_choice(task, em, self.items[task], mc_samples=self.mc_samples,
                                                     mdlm_steps=self.mdlm_steps, seed=ITEM_SEED, pmi=pmi))  # fmt: skip
            elif task == "humaneval_pass@k":
                from crossover.evals.humaneval import humaneval_pass_at_k, humaneval_problems

                problems = humaneval_problems(limit=self.max_items)
                results.append(humaneval_pass_at_k(em, problems, n_samples=1, ks=(1,), seed=ITEM_SEED,
                                                   unsafe_execution=self.unsafe_execution))  # fmt: skip
            elif task.startswith(LM_EVAL_PREFIX):
                from lm_eval.tasks import TaskManager

                from crossover.evals.lm_eval_bridge import run_lm_eval

                if self._lm_eval_tasks is None:
                    self._lm_eval_tasks = TaskManager(include_path=self.lm_eval_include)
                name = task.removeprefix(LM_EVAL_PREFIX)
                found = run_lm_eval(em, [name], limit=self.max_items, mc_samples=self.mc_samples,
                                    mdlm_steps=self.mdlm_steps, seed=ITEM_SEED, task_manager=self._lm_eval_tasks)  # fmt: skip
                results.extend(found.values())
            else:
                raise ValueError(f"unknown eval task '{task}'")
        return results


def metrics_of(results: Sequence[TaskResult]) -> dict[str, float]:
    """eval/<task>/<metric> for every result (the MLflow metric names of the tracking contract)."""
    from crossover.tracking.names import eval_key

    return {eval_key(r.task, name): value for r in results for name, value in r.metrics.items()}


def evaluate_checkpoint(
    path: str,
    tasks: Sequence[str],
    *,
    max_items: int | None = None,
    mc_samples: int | None = None,
    mdlm_steps: int | None = None,
    device: str = "cpu",
    lm_eval_include: str | None = None,
) -> list[TaskResult]:
    """`crossover eval`: the tasks on a checkpoint, with the budgets of its trial's eval block unless given
    (`mdlm_steps` can switch a trial scored by the ELBO to left-to-right decoding, not back).

    Held-out tasks read the trial's token store (built again from its corpus if this machine lacks it)."""
    from crossover.evals import check_tasks
    from crossover.evals.checkpoint import load_checkpoint
    from crossover.evals.heldout import heldout_loss

    check_tasks(list(tasks), unsafe_execution=True)  # unknown tasks now; the sandbox once the trial's spec is read
    em = load_checkpoint(path, device=device)
    trial = em.trial
    check_tasks(list(tasks), unsafe_execution=trial.eval.unsafe_execution)
    max_items = max_items or trial.eval.max_items
    mc_samples = mc_samples or trial.eval.mc_samples
    mdlm_steps = mdlm_steps or trial.eval.mdlm_steps
    needs_data = any(t in (HELDOUT_LOSS, "heldout_cloze") for t in tasks)
    data = None
    if needs_data:
        from crossover.data import prepare

        data = prepare(trial.data)
    suite = EvalSuite(tasks, max_items=max_items, mc_samples=mc_samples, mdlm_steps=mdlm_steps,
                      data=data if data is not None else em, seq_len=trial.data.seq_len,
                      lm_eval_include=lm_eval_include or trial.eval.lm_eval_include,
                      unsafe_execution=trial.eval.unsafe_execution)  # fmt: skip
    results = []
    if HELDOUT_LOSS in tasks:
        windows = data.heldout_windows(trial.data.seq_len, max_windows=max_items)
        total, count = heldout_loss(
            lambda tokens: em.model(tokens).logits, windows, objective=em.objective, mask_id=em.mask_id,
            batch_size=trial.train.micro_batch, mc_samples=mc_samples, t_min=trial.train.mdlm_t_min, seed=0,
            device=em.device,
        )  # fmt: skip
        results.append(TaskResult(HELDOUT_LOSS, {"loss": total / max(count, 1)}, [], {}))
    return results + suite.run(em)
