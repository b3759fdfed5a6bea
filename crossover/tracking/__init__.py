"""The tracking contract: what `crossover run` writes to MLflow and `crossover analyze` reads, defined once.

Names are in `crossover.tracking.names` (tags, metric names, artifact folders, `task_key`, `eval_key`, and
`trial_params`/`trial_tags`, the flattening); the way to the store in `crossover.tracking.store` (the URI, the
reachability check, the client, paginated search). The platform writes (`crossover.platform.tracking`:
`start_study` for the parent run, `TrialRun` for each trial's run), the analysis reads (`crossover.analysis`), and
no tag or metric name is written as a literal anywhere else (tests/test_tracking.py checks it). This package imports
nothing else of crossover but the user-error base, so every floor may use it. The tests and the benchmark write
synthetic studies through the same platform writer (tests/analysis_support.py).

Store
    The tracking URI is the `--tracking-uri` argument, else MLFLOW_TRACKING_URI, else the embedded default
    `sqlite:///mlflow.db` (made absolute against the working directory). On the cluster, the MLflow server in k8s/.

Experiment
    One per study, named exactly by the study (`StudySpec.name`). On a SQLite store the platform creates it with
    its artifacts in `mlartifacts/` beside the database file.

Parent run (one current per study)
    run name: the study name.
    tags: `crossover.study` = <study>, `crossover.role` = `study`. `crossover run --fresh` retags the old parent
    `crossover.role` = `superseded` and starts a new one; the analysis reads only the children of the current parent
    (the latest with role `study`), or every trial run of the experiment when there is none.
    artifacts: `spec/study.yaml` (the spec file as last run), `spec/trials.json` (the expanded trial table: a JSON
    list of `TrialSpec.model_dump(mode="json")`) and `spec/history/<UTC time>.yaml` (each version of the spec that
    was run: a study grows, crossover.platform.grow). `crossover analyze` adds `report/` (report.html, report.md,
    figures/*.png|svg, crossovers.csv, efficiency.csv, scaling.csv, critical_compute.csv, delta_nll.csv (those with
    rows: summary.json's `not_written` says why one is missing) and summary.json, where interval bounds outside the observed window are the strings "inf" / "-inf"), and the verdict
    per cell (`crossover.analysis.verdict`): the tag `crossover.verdict.<cell key>` with the line, and metrics
    `verdict/<cell key>/<name>` (crossed, crossover_tokens, crossover_epochs, ar_lead_final, ar_peak,
    ar_peak_tokens, mdlm_final, efficiency), the cell key being its axis values joined by `_` (`50k`, `high_1B`).
    `crossover run` records `crossover.runtime` (the study's resolved precision and compile, JSON),
    `crossover.trials_hash`, `crossover.spec_hash` and `crossover.tune_experiment`, and the provenance it runs with
    (as on each trial run, below).

Child run (one per trial)
    run name: the trial name (`TrialSpec.name`, e.g. `mdlm-U50k-nano-s0`).
    tags: `mlflow.parentRunId` = <parent run id>, `crossover.study` = <study>, `crossover.role` = `trial`,
    `crossover.cell` = <TrialSpec.cell>, `crossover.objective` = `ar` | `mdlm`, `crossover.trial_id` = <trial_id>
    (the tag that marks a run as a trial), `crossover.lineage_id`, and `crossover.items` = comma-separated task keys
    that have per-item artifacts (absent when none; the analysis downloads item artifacts only from runs that carry
    it). `crossover.error` on a failed trial; `crossover.data_hash` once it finished; `crossover.branch` and
    `crossover.branch_tokens` once its branch checkpoint is kept; `crossover.out_of_spec` = `true` on a finished
    trial the study's spec no longer has (the analysis leaves it out); `crossover.extended_by` on a deleted run a
    longer trial continued. Provenance, that of the latest driver to train it: `crossover.source.git_commit` (and
    `mlflow.source.git.commit` where known), `crossover.source.git_dirty` (`true` | `false`; both `unknown` where
    the source is no git checkout), `crossover.version.<package>` (torch, ray, deepspeed, mlflow, crossover) and
    `crossover.image` where the driver's `CROSSOVER_IMAGE` is set.
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
    (`task_key`: `@` -> `_at_`, any character outside `/\\w.- :` -> `_`, so `lm_eval:hellaswag` stays,
    `humaneval_pass@k` -> `humaneval_pass_at_k`). Metrics in use: `eval/heldout_loss/loss` (MDLM: the ELBO bound),
    `eval/<task>/acc`, `eval/<task>/acc_norm`, `eval/<task>/nll` (NLL of the right option), `eval/<task>/delta_nll`
    (mean NLL of the wrong options minus NLL of the right one: higher is better), pass@k as `eval/<task>/pass_at_k`.
    Metric names ending in loss, nll, ppl, perplexity or bpb are lower-is-better; all others higher-is-better. The
    rows of `load_curves` are the steps at which any `eval/` metric was logged; other metrics are taken at the latest
    step at or before it. Summary metrics (`summary/acc_final`, `acc_best`, `heldout_loss_final`, `epochs`, step 0)
    when a trial finishes. MLflow's own system metrics (`system/cpu_utilization_percentage`,
    `system/gpu_0_utilization_percentage`, ...) while a trial trains, with step = the sample's number.

Per-item eval results (for bootstrap intervals)
    Artifact `items/<task key>/<step>.json` on the child run, one per task and eval point, with
    {"task": <task>, "step": <tokens>, "ids": [<item id>, ...], "metrics": {<metric>: [<value per item>, ...]}}
    where eval/<task>/<metric> is the mean of that list (acc: 1.0/0.0 per item; delta_nll, nll: per-item values).
    Item ids are stable across eval points and trials (the same held-out items), so AR and MDLM are compared on
    the same items and resampled in pairs.
"""
