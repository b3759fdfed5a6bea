"""The tracking contract's names: tags, metric names, artifact folders, and how a TrialSpec becomes params.

Pure names and string functions (nothing is imported from the rest of crossover at run time), so every floor can use
them: the specs (the search metric's default and check), the trainer (the metrics it logs), the platform's writer and
the analysis' reader. The contract in words is the docstring of `crossover.tracking`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crossover.specs.hardware import Runtime
    from crossover.specs.study import TrialSpec

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"

# Tags
TAG_STUDY = "crossover.study"
TAG_ROLE = "crossover.role"  # "study" on the parent run, "trial" on each child run
TAG_CELL = "crossover.cell"
TAG_OBJECTIVE = "crossover.objective"
TAG_TRIAL_ID = "crossover.trial_id"
TAG_ITEMS = "crossover.items"  # comma-separated tasks with per-item artifacts (absent: none)
TAG_RUNTIME = "crossover.runtime"  # parent run: the study's resolved precision and compile (JSON)
VERDICT_TAG = "crossover.verdict"  # parent run: crossover.verdict.<cell> holds the cell's verdict line
STATE_TAG = "crossover.state"  # parent run: crossover.state.<cell> holds the cell's state (crossed, undetermined, ...)
TAG_LINEAGE = "crossover.lineage_id"  # shared by trials that differ only in train.total_tokens
TAG_BRANCH = "crossover.branch"  # where the trial's branch checkpoint is kept (path or URI), once it is whole
TAG_BRANCH_TOKENS = "crossover.branch_tokens"  # the tokens seen at that checkpoint
TAG_EXTENDED_BY = "crossover.extended_by"  # on a deleted run: the run of the longer trial that continued it
TAG_OUT_OF_SPEC = "crossover.out_of_spec"  # "true" on a finished trial the study's current spec no longer has
TAG_TRIALS_HASH = "crossover.trials_hash"  # parent run: the trial ids its spec expands to
TAG_SPEC_HASH = "crossover.spec_hash"  # parent run: the spec file's text last run (a new one is kept in its history)
TAG_TUNE_EXPERIMENT = "crossover.tune_experiment"  # parent run: name:trials-hash of the Tune experiment in use
TAG_ERROR = "crossover.error"  # trial run: why it failed (cleared when a retry finishes)
TAG_DATA_HASH = "crossover.data_hash"  # trial run: the hash of every batch it trained on, in order
TAG_PARENT = "mlflow.parentRunId"
# Provenance (crossover.platform.provenance): what ran, resolved once on the driver, on the parent run and every trial
# run; "unknown" where the source is no git checkout (an installed wheel, an image without .git)
TAG_GIT_COMMIT = "crossover.source.git_commit"  # the commit of the crossover source tree
TAG_GIT_DIRTY = "crossover.source.git_dirty"  # "true" where tracked files differ from that commit, else "false"
TAG_MLFLOW_GIT_COMMIT = "mlflow.source.git.commit"  # MLflow's own commit tag (shown in its UI), where known
VERSION_TAG = "crossover.version"  # crossover.version.<package>: torch, ray, deepspeed, mlflow, crossover
TAG_IMAGE = "crossover.image"  # the container image the driver ran in ($CROSSOVER_IMAGE), where set
# The early-stopped AR (spec block `early_stopped_ar`): the AR trial's run records the stop its validation items chose;
# the anneal run (role "anneal", left out of the ordinary curves) trains the same trial with its decay ending there.
TAG_AR_STOP = "crossover.ar_stop"  # AR trial run: the validation-chosen stop (tokens seen)
TAG_ANNEAL_OF = "crossover.anneal_of"  # anneal run: the trial id of the AR trial it anneals
TAG_ANNEAL_STOP = "crossover.anneal_stop"  # anneal run: its train.total_tokens, the AR trial's validation-chosen stop
TAG_ANNEAL_METRIC = "crossover.anneal_metric"  # both: the metric whose validation half chose the stop
ROLE_STUDY = "study"
ROLE_TRIAL = "trial"
ROLE_ANNEAL = "anneal"  # an AR trial annealed to the validation-chosen stop of another (crossover.anneal_of)
ROLE_SUPERSEDED = "superseded"  # a parent run that `crossover run --fresh` replaced, or a winner's confirm run
# after the search found another winner (a grown search)

# A search study (spec block `search`, crossover.platform.search): each (grid cell, objective) is one Optuna study, its
# samples' runs grouped by TAG_SEARCH_GROUP; once they are done each group's winner is retrained on fresh seeds (role
# "confirm") beside the spec's base settings on the same seeds (role "base"). Every such run's TAG_CELL is the grid
# cell (the sampled values are its `search.<name>` params, not part of the cell), so a cell's AR and MDLM pair up.
TAG_SEARCH_GROUP = "crossover.search_group"  # "<grid cell>/<objective>": the Optuna study the run belongs to
TAG_SEARCH_VALUE = "crossover.search_value"  # sample run: the value Optuna was told (validation items only)
TAG_PRUNED_AT = "crossover.pruned_at"  # sample run: tokens seen when its group's pruner stopped it
TAG_CONFIRMS = "crossover.confirms"  # confirm run: the run id of the winning sample it retrains on a fresh seed
ROLE_SEARCH = "search"  # one sample of a (cell, objective) search
ROLE_CONFIRM = "confirm"  # a (cell, objective) winner retrained on a fresh seed
ROLE_BASE = "base"  # the spec's base settings on the confirm seeds: the reference of the tuning gain
SEARCH_PARAM_PREFIX = "search."  # sample and confirm runs: the sampled values, one param each (search.lr, ...)

# Metrics (step = tokens seen)
TRAIN_LOSS = "train/loss"
TRAIN_METRICS = (TRAIN_LOSS, "tokens", "epoch", "unique_tokens", "flops", "tokens_per_s", "lr", "grad_norm", "mfu")
EVAL_PREFIX = "eval/"
HELDOUT_LOSS = "eval/heldout_loss/loss"  # per token: AR's exact NLL, MDLM's ELBO bound
PROGRESS_METRICS = (TRAIN_LOSS, HELDOUT_LOSS)  # what the live progress and `crossover status` show
ITEMS_DIR = "items"  # per-item artifacts: items/<task>/<tokens>.json
SPEC_DIR = "spec"  # the parent run's spec/study.yaml, spec/trials.json and spec/history/<UTC time>.yaml
REPORT_DIR = "report"  # where `crossover analyze` logs its report on the parent run

# The MLflow UI (3.x) opens an experiment in its GenAI view unless the link asks for the training view; the
# experiment kind tag is what later releases read instead. The saved view shows the verdict and summary columns.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
VIEW_ID = "crossover"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_ID}"
LOCAL_UI = "http://127.0.0.1:5000"  # where `crossover ui` serves a local store

# Child-run summary metrics (logged when a trial finishes): the headline accuracy's final and best values, the
# held-out loss at the end, and the epochs trained, for sorting and comparing runs in the runs table.
SUMMARY_PREFIX = "summary/"
SUMMARY_COLUMNS = [f"{SUMMARY_PREFIX}{name}" for name in ("acc_final", "acc_best", "heldout_loss_final", "epochs")]
HEADLINE_ACCURACY = ("eval/heldout_cloze/acc_pmi", "eval/heldout_cloze/acc")

# MLflow's own system metrics (CPU, memory, disk, network, GPU) on a trial run while it trains, step = sample number:
# a view of the machine, read by no analysis and copied to no continued run.
SYSTEM_PREFIX = "system/"

# Every multiple-choice item belongs to one half, by its document: the validation half chooses (AR's stopping
# point), the test half scores (the analysis' headline values), so no choice is made on the items that judge it.
VALIDATION, TEST = "validation", "test"
_LOWER_SUFFIXES = ("loss", "nll", "ppl", "perplexity", "bpb")


def item_document(item_id: str) -> str:
    """The document an item comes from: '<doc id>' of a held-out cloze item '<doc id>@<offset>'; the whole id of
    items with no offset (a HumanEval task id)."""
    return item_id.rsplit("@", 1)[0] if "@" in item_id else item_id


def item_split(item_id: str) -> str:
    """VALIDATION or TEST, by a hash of the item's document: the items of one document are all in one half, the
    same half in every process, study and release."""
    digest = hashlib.blake2b(item_document(str(item_id)).encode(), digest_size=8).digest()
    return VALIDATION if digest[0] % 2 == 0 else TEST


def split_means(ids: list[str], metrics: Mapping[str, list[float]], split: str) -> dict[str, float]:
    """Each per-item metric's mean over the items of one half (nothing when the half has no items)."""
    chosen = [i for i, item_id in enumerate(ids) if item_split(item_id) == split]
    if not chosen:
        return {}
    return {name: sum(float(values[i]) for i in chosen) / len(chosen) for name, values in metrics.items()}


def validation_key(task: str, metric: str) -> str:
    """`eval/<task>/<metric>/validation`: the metric's mean over the task's validation items."""
    return f"{eval_key(task, metric)}/{VALIDATION}"


def higher_is_better(metric: str) -> bool:
    """Direction from the metric name: loss, nll, ppl, perplexity and bpb are lower-is-better, delta_nll and
    everything else (acc, acc_norm, pass_at_k, ...) higher-is-better; a split suffix (/validation) is skipped."""
    parts = metric.split("/")
    last = (parts[-2] if len(parts) > 1 and parts[-1] in (VALIDATION, TEST) else parts[-1]).lower()
    if last.startswith("delta"):
        return True
    return not last.endswith(_LOWER_SUFFIXES)


def training_view_url(server: str, experiment_id: str) -> str:
    """The link that opens a study in the MLflow UI's model-training view, with the crossover columns shown."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_ID}&workflowType=machine_learning"


def ui_server(tracking_uri: str) -> str:
    """The UI's address for a tracking URI: the server itself, or `crossover ui`'s for a local store."""
    return tracking_uri if tracking_uri.startswith(("http://", "https://")) else LOCAL_UI


def view_state(columns: list[str]) -> str:
    """The experiment tag value of the saved view: its name and the runs table's columns (MLflow 3.17's format)."""
    state = {
        "selectedColumns": [f"metrics.`{c}`" for c in columns],
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
    }
    return json.dumps({"name": "crossover", "createdAt": 0, "state": json.dumps(state)})


_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")


def task_key(task: str) -> str:
    """A task name as it appears in metric keys and artifact paths: MLflow allows only `/\\w.- :`, so
    `humaneval_pass@k` becomes `humaneval_pass_at_k`; `lm_eval:hellaswag` stays as it is."""
    return _BAD_KEY_CHARS.sub("_", task.replace("@", "_at_")).replace("/", "_")


def eval_key(task: str, metric: str) -> str:
    """`eval/<task>/<metric>`, e.g. eval/heldout_cloze/acc."""
    return f"{EVAL_PREFIX}{task_key(task)}/{metric}"


def items_path(task: str, step: int) -> str:
    """Where the per-item results of one task at one eval point are stored (on the child run, or in a folder)."""
    return f"{ITEMS_DIR}/{task_key(task)}/{int(step)}.json"


def items_payload(task: str, step: int, ids: list[str], metrics: Mapping[str, list[float]]) -> dict[str, Any]:
    """The per-item file's content: eval/<task>/<metric> is the mean of each list, in the order of `ids`."""
    return {
        "task": task,
        "step": int(step),
        "ids": [str(i) for i in ids],
        "metrics": {k: [float(v) for v in vs] for k, vs in metrics.items()},
    }


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts become dotted keys; lists become JSON; None becomes 'None'; everything else str()."""
    if isinstance(value, Mapping):
        flat: dict[str, str] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if isinstance(value, (list, tuple)):
        return {prefix: json.dumps(list(value))}
    return {prefix: str(value)}


def trial_params(trial: TrialSpec, runtime: Runtime | None = None) -> dict[str, str]:
    """The flattened TrialSpec: `data.unique_tokens`, `train.total_tokens`, `model.layers`, `axes.<axis>`, ...;
    with the runtime it trains with, also `runtime.precision` and `runtime.compile` (what `auto` resolved to)."""
    params = flatten(trial.model_dump(mode="json"))
    if runtime is not None:
        params.update(flatten({"precision": runtime.precision, "compile": runtime.compile}, "runtime"))
    return params


def trial_tags(trial: TrialSpec, parent_run_id: str) -> dict[str, str]:
    return {
        TAG_PARENT: parent_run_id,
        TAG_STUDY: trial.study,
        TAG_ROLE: ROLE_TRIAL,
        TAG_CELL: trial.cell,
        TAG_OBJECTIVE: trial.objective,
        TAG_TRIAL_ID: trial.trial_id,
        TAG_LINEAGE: trial.lineage_id,
    }
