"""Analysis: MLflow records of a study -> curves -> crossovers, data efficiency, scaling-law fits -> plots and report.

This package reads MLflow and may import `crossover.specs`; it never imports `crossover.trainers` or
`crossover.platform`. `crossover analyze STUDY` is its command line.

Tracking contract
=================
What the training platform writes (`crossover.platform.tracking`: `start_study` for the parent run, `TrialRun`
for each trial's run) and this package reads. The names (tags, metric names, artifact folders, `task_key`,
`eval_key`, and `trial_params`/`trial_tags`, the flattening) are defined once, in `crossover.specs.tracking`, for
both sides. The tests and the benchmark write synthetic studies through the same platform writer
(tests/analysis_support.py).

Store
    The tracking URI is the `--tracking-uri` argument, else MLFLOW_TRACKING_URI, else the embedded default
    `sqlite:///mlflow.db` (relative to the working directory). On the cluster, the MLflow server in k8s/.

Experiment
    One per study, named exactly by the study (`StudySpec.name`). On a SQLite store the platform creates it with
    its artifacts in `mlartifacts/` beside the database file.

Parent run (one current per study)
    run name: the study name.
    tags: `crossover.study` = <study>, `crossover.role` = `study`. `crossover run --fresh` retags the old parent
    `crossover.role` = `superseded` and starts a new one; the analysis reads only the children of the current parent
    (the latest with role `study`), or every trial run of the experiment when there is none.
    artifacts: `spec/study.yaml` (the spec file as written) and `spec/trials.json` (the expanded trial table: a JSON
    list of `TrialSpec.model_dump(mode="json")`). `crossover analyze` adds `report/` (report.html, report.md,
    figures/*.png|svg, crossovers.csv, efficiency.csv, scaling.csv, critical_compute.csv, delta_nll.csv and
    summary.json, where interval bounds outside the observed window are the strings "inf" / "-inf"), and the verdict
    per cell (`crossover.analysis.verdict`): the tag `crossover.verdict.<cell key>` with the line, and metrics
    `verdict/<cell key>/<name>` (crossed, crossover_tokens, crossover_epochs, ar_lead_final, ar_peak,
    ar_peak_tokens, mdlm_final, efficiency), the cell key being its axis values joined by `_` (`50k`, `high_1B`).
    `crossover run` records `crossover.runtime` (the study's resolved precision and compile, JSON).

Child run (one per trial)
    run name: the trial name (`TrialSpec.name`, e.g. `mdlm-U50k-nano-s0`).
    tags: `mlflow.parentRunId` = <parent run id>, `crossover.study` = <study>, `crossover.role` = `trial`,
    `crossover.cell` = <TrialSpec.cell>, `crossover.objective` = `ar` | `mdlm`, `crossover.trial_id` = <trial_id>
    (the tag that marks a run as a trial), and `crossover.items` = comma-separated task keys that have per-item
    artifacts (absent when none; the analysis downloads item artifacts only from runs that carry it).
    A retried trial continues its run (found again by trial_id and parent) and may log a step again: the latest
    value wins. Should two runs carry the same trial_id, the one with the most eval points wins (then the latest
    start time).
    params: the flattened `TrialSpec.model_dump(mode="json")`: nested keys joined with dots (`data.unique_tokens`,
    `train.total_tokens`, `train.warmup_tokens`, `model.layers`, `noise.input_mask`, `axes.unique_tokens` = the
    readable axis value `50k`, ...), top-level `study`, `name`, `trial_id`, `cell`, `objective`, `seed`; lists as
    JSON (`train.betas` = `[0.9, 0.95]`), None as `None`, everything else `str()`. The analysis needs
    `data.unique_tokens`, `seed` and `axes.*`; `train.total_tokens` and `train.warmup_tokens` are used when present
    (scaling fits skip the warm-up).

Metrics
    step = tokens seen so far (an integer, the same for AR and MDLM at the same point of training), logged with
    `log_batch`. Training: `train/loss`, `tokens` (= step), `epoch` (= tokens / unique budget), `unique_tokens`
    (distinct tokens seen so far), `flops` (cumulative training FLOPs), `tokens_per_s`, `lr`, `grad_norm`, `mfu` on
    GPU. Evaluation at each eval point: `eval/<task>/<metric>`, with <task> the spec's task name made key-safe
    (`crossover.specs.tracking.task_key`: `@` -> `_at_`, any character outside `/\\w.- :` -> `_`, so
    `lm_eval:hellaswag` stays, `humaneval_pass@k` -> `humaneval_pass_at_k`). Metrics in use:
    `eval/heldout_loss/loss` (MDLM: the ELBO bound), `eval/<task>/acc`, `eval/<task>/acc_norm`, `eval/<task>/nll`
    (NLL of the right option), `eval/<task>/delta_nll` (mean NLL of the wrong options minus NLL of the right one:
    higher is better), pass@k as `eval/<task>/pass_at_k`. Metric names ending in loss, nll, ppl, perplexity or bpb
    are lower-is-better; all others higher-is-better. The rows of `load_curves` are the steps at which any `eval/`
    metric was logged; other metrics are taken at the latest step at or before it.

Per-item eval results (for bootstrap intervals)
    Artifact `items/<task key>/<step>.json` on the child run, one per task and eval point, with
    {"task": <task>, "step": <tokens>, "ids": [<item id>, ...], "metrics": {<metric>: [<value per item>, ...]}}
    where eval/<task>/<metric> is the mean of that list (acc: 1.0/0.0 per item; delta_nll, nll: per-item values).
    Item ids are stable across eval points and trials (the same held-out items), so AR and MDLM are compared on
    the same items and resampled in pairs.

Analysis contract
=================
- `load_curves(study, tracking_uri=None) -> DataFrame`: one row per (trial, eval point), see `curves.load_curves`.
- `find_crossover(x, ar, dlm, higher_is_better=True) -> Crossover` (`x`, `status`, `ci`), see `crossing`.
- `data_efficiency(ar, dlm, higher_is_better=True) -> dict`: per MDLM budget U, U'/U or None, see `efficiency`.
- `fit_data_constrained(...) -> ScalingFit` and `critical_tokens(...)`, see `scaling`.
- `analyze_study(load_study(...)) -> StudyAnalysis` and `write_report(...)`: everything `crossover analyze` shows.
- `verdicts(analysis) -> [Verdict]`: one line per cell, see `verdict`.
- `axis_verdicts(analysis) -> [AxisVerdict]`: one line per axis varied besides the unique budget, read against the
  paper's finding (agrees, disagrees, cannot tell), see `axes`; on the parent run as the tag
  `crossover.verdict.axis_<axis>[_<other axes' values>]` and the metric `verdict/axis_<axis>.../agreement`
  (1, -1, 0).
"""

from crossover.analysis.axes import AxisVerdict, axis_verdicts
from crossover.analysis.crossing import Crossover, convert_x, find_crossover
from crossover.analysis.curves import StudyData, load_curves, load_study, resolve_tracking_uri
from crossover.analysis.efficiency import Efficiency, data_efficiency, efficiency_details
from crossover.analysis.errors import AnalysisError
from crossover.analysis.report import log_report, log_verdicts, write_report
from crossover.analysis.scaling import (
    InsufficientData,
    ScalingFit,
    critical_tokens,
    effective_data,
    fit_data_constrained,
    prabhudesai_critical_compute,
)
from crossover.analysis.study import StudyAnalysis, analyze_study, higher_is_better
from crossover.analysis.verdict import Verdict, verdicts

__all__ = [
    "AnalysisError",
    "AxisVerdict",
    "Crossover",
    "Efficiency",
    "InsufficientData",
    "ScalingFit",
    "StudyAnalysis",
    "StudyData",
    "Verdict",
    "analyze_study",
    "axis_verdicts",
    "convert_x",
    "critical_tokens",
    "data_efficiency",
    "effective_data",
    "efficiency_details",
    "find_crossover",
    "fit_data_constrained",
    "higher_is_better",
    "load_curves",
    "log_report",
    "log_verdicts",
    "load_study",
    "prabhudesai_critical_compute",
    "resolve_tracking_uri",
    "verdicts",
    "write_report",
]
