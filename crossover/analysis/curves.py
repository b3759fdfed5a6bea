"""Loading a study's curves from MLflow: one row per (trial, eval point), in bulk.

Reading 1,000 trials with `get_metric_history` per run and metric means ~15,000 queries. Runs, params and tags
come from the client's `search_runs`; on a SQL store (SQLite, Postgres, MySQL) the metric histories are then read
with one SELECT per chunk of 500 runs on MLflow's `metrics` table, through the store's own SQLAlchemy engine; any
other store (an MLflow server over HTTP, a file store), or a SQL store whose schema surprises us, is read with the
client's `get_metric_history` in a thread pool. See bench/bench_analysis.py for the measured times.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from crossover.analysis.errors import AnalysisError
from crossover.tracking.names import (
    EVAL_PREFIX,
    ITEMS_DIR,
    ROLE_ANNEAL,
    ROLE_BASE,
    ROLE_CONFIRM,
    ROLE_SEARCH,
    ROLE_STUDY,
    ROLE_SUPERSEDED,
    ROLE_TRIAL,
    SPEC_DIR,
    SYSTEM_PREFIX,
    TAG_ANNEAL_OF,
    TAG_ANNEAL_STOP,
    TAG_AR_STOP,
    TAG_CELL,
    TAG_CONFIRMS,
    TAG_ITEMS,
    TAG_OBJECTIVE,
    TAG_OUT_OF_SPEC,
    TAG_PARENT,
    TAG_PRUNED_AT,
    TAG_ROLE,
    TAG_SEARCH_GROUP,
    TAG_SEARCH_VALUE,
    TAG_STUDY,
    TAG_TRIAL_ID,
)
from crossover.tracking.store import (
    TrackingError,
    check_reachable,
    find_experiment_id,
    mlflow_client,
    redact,
    resolve_tracking_uri,
    search_all_runs,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient  # lazy: MLflow (seconds); a study read from files needs none

ID_COLUMNS = ["study", "run_id", "trial", "trial_id", "cell", "objective", "seed", "status"]
BUDGET_COLUMNS = ["unique_budget", "total_budget"]
CHUNK = 500  # run ids per query (SQLite allows 32,766 bound parameters; servers cap lists too)


@dataclass
class StudyData:
    """Everything `crossover analyze` needs from MLflow, read once."""

    study: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str | None
    trials: pd.DataFrame  # one row per trial run: identity, axes.*, budgets and every param
    curves: pd.DataFrame  # one row per (trial, eval point)
    item_tasks: list[str] = field(default_factory=list)  # tasks whose per-item results are in `items/<task>` columns
    # The anneal runs (crossover.platform.anneal: an AR trial trained again with its decay ending at its
    # validation-chosen stop), kept out of `trials` and `curves` so no AR curve or mean mixes them in: one row per
    # anneal run (its trial row, with `anneal_of`, the AR trial id, and `anneal_stop`, tokens), and their curves in
    # the layout of `curves` (the last row of each is its final value, per-item results included).
    anneals: pd.DataFrame = field(default_factory=pd.DataFrame)
    anneal_curves: pd.DataFrame = field(default_factory=pd.DataFrame)
    # A search study (spec block `search`): `trials` and `curves` are its confirm runs, each (cell, objective)'s
    # winner retrained on fresh seeds, so every verdict compares the two winners. Kept apart in the same layouts:
    # the search's samples (`search_group`, `search_value`: what Optuna was told, `pruned_at`; their curves without
    # per-item results, which no stage reads) and the base runs (the spec's own settings on the confirm seeds: the
    # reference of the tuning gain). Empty for a grid study.
    search_samples: pd.DataFrame = field(default_factory=pd.DataFrame)
    search_curves: pd.DataFrame = field(default_factory=pd.DataFrame)
    base_trials: pd.DataFrame = field(default_factory=pd.DataFrame)
    base_curves: pd.DataFrame = field(default_factory=pd.DataFrame)
    # the metric the search ranked its samples by and its direction (the parent run's spec; None where unread)
    search_metric: str | None = None
    search_higher: bool | None = None

    @property
    def searched(self) -> bool:
        """A search study: its verdicts compare confirmed winners."""
        return not self.search_samples.empty or not self.base_trials.empty

    @property
    def axes(self) -> list[str]:
        """The axes the study's grid varies (besides objective and seed), in grid order."""
        cols = [c for c in self.trials.columns if c.startswith("axes.")]
        return [c[5:] for c in cols if c[5:] not in ("objective", "seed")]


def _experiment_id(client: MlflowClient, study: str, uri: str) -> str:
    """The study's experiment, or an AnalysisError naming the closest study the store holds."""

    from mlflow.exceptions import MlflowException  # lazy: as in the client above

    try:
        if (found := find_experiment_id(client, study)) is not None:
            return found
        names = [e.name for e in client.search_experiments(max_results=1000)]
    except MlflowException as exc:
        raise AnalysisError(f"the tracking store at {redact(uri)} failed: {exc.message}") from None
    studies = [n for n in names if n != "Default"]
    close = difflib.get_close_matches(study, studies, n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    listing = f"; studies there: {', '.join(sorted(studies)[:20])}" if studies else "; it holds no studies yet"
    raise AnalysisError(f"no study named '{study}' in the tracking store {redact(uri)}{hint}{listing}")


def _sql_store(client: MlflowClient) -> Any:
    """MLflow's SQLAlchemy store behind the client, or None for HTTP and file stores."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore  # lazy: as above

        store = client._tracking_client.store
    except Exception:  # noqa: BLE001 - any change in MLflow internals just means: use the public API
        return None
    return store if isinstance(store, SqlAlchemyStore) else None


def _histories_sql(store: Any, run_ids: list[str]) -> pd.DataFrame:
    """Every metric history of `run_ids` from MLflow's `metrics` table, one SELECT per chunk of runs, on a raw
    connection of the store's own engine. The ORM path (`get_metric_history_bulk` or column queries) spends ~10 us
    a row building Python objects: ~15 s for the benchmark's 1.2M values against ~3 s here. MLflow's system
    metrics are left out (a point a minute for each of dozens of keys: more rows than the curves themselves)."""
    engine = store.engine
    quote = engine.dialect.identifier_preparer.quote
    style = engine.dialect.paramstyle
    columns = ", ".join(quote(c) for c in ("run_uuid", "key", "step", "timestamp", "value", "is_nan"))
    rows: list[tuple] = []
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for start in range(0, len(run_ids), CHUNK):
            chunk = run_ids[start : start + CHUNK]
            if style == "qmark":
                marks = ", ".join("?" * len(chunk))
            elif style in ("format", "pyformat"):
                marks = ", ".join(["%s"] * len(chunk))
            elif style == "numeric":
                marks = ", ".join(f":{i + 1}" for i in range(len(chunk)))
            else:
                raise NotImplementedError(style)
            where = f"{quote('run_uuid')} IN ({marks}) AND {quote('key')} NOT LIKE '{SYSTEM_PREFIX}%'"
            cursor.execute(f"SELECT {columns} FROM {quote('metrics')} WHERE {where}", chunk)
            rows.extend(cursor.fetchall())
        cursor.close()
    finally:
        raw.close()
    frame = pd.DataFrame.from_records(rows, columns=["run_id", "key", "step", "timestamp", "value", "is_nan"])
    frame["value"] = frame["value"].astype(float).where(~frame["is_nan"].astype(bool), np.nan)
    return frame.drop(columns="is_nan")


def _histories_client(client: MlflowClient, run_keys: dict[str, list[str]]) -> pd.DataFrame:
    """Per run and key through the public client, 16 requests at a time (for HTTP servers and file stores)."""

    def fetch(job: tuple[str, str]) -> list[tuple]:
        run_id, key = job
        return [(run_id, key, m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key)]

    jobs = [(run_id, key) for run_id, keys in run_keys.items() for key in keys]
    with ThreadPoolExecutor(max_workers=16) as pool:
        rows = [row for result in pool.map(fetch, jobs) for row in result]
    return pd.DataFrame(rows, columns=["run_id", "key", "step", "timestamp", "value"]) if rows else _empty_history()


def _empty_history() -> pd.DataFrame:
    return pd.DataFrame({"run_id": [], "key": [], "step": [], "timestamp": [], "value": []})


def _trial_table(study: str, runs: list[Any]) -> pd.DataFrame:
    rows = []
    for run in runs:
        tags, params = run.data.tags, run.data.params
        row: dict[str, Any] = dict(params)
        seed = params.get("seed")
        row.update(
            study=tags.get(TAG_STUDY, study),
            run_id=run.info.run_id,
            trial=run.info.run_name or params.get("name", run.info.run_id),
            trial_id=tags[TAG_TRIAL_ID],
            cell=tags.get(TAG_CELL, params.get("cell", "base")),
            objective=tags.get(TAG_OBJECTIVE, params.get("objective")),
            seed=int(seed) if seed is not None and seed.lstrip("-").isdigit() else 0,
            status=run.info.status,
            start_time=run.info.start_time,
            parent_run_id=tags.get(TAG_PARENT),
            item_tasks=tags.get(TAG_ITEMS, ""),
            role=tags.get(TAG_ROLE, ROLE_TRIAL),
            anneal_of=tags.get(TAG_ANNEAL_OF),
            anneal_stop=_number(tags.get(TAG_ANNEAL_STOP)),
            ar_stop=_number(tags.get(TAG_AR_STOP)),
            search_group=tags.get(TAG_SEARCH_GROUP),
            search_value=_number(tags.get(TAG_SEARCH_VALUE)),
            pruned_at=_number(tags.get(TAG_PRUNED_AT)),
            confirms=tags.get(TAG_CONFIRMS) or None,  # "": the platform found no winning sample run
            metric_keys=sorted(k for k in run.data.metrics if not k.startswith(SYSTEM_PREFIX)),
        )
        row["unique_budget"] = _number(params.get("data.unique_tokens"))
        row["total_budget"] = _number(params.get("train.total_tokens"))
        rows.append(row)
    trials = pd.DataFrame(rows).sort_values(["start_time", "trial"], kind="stable").reset_index(drop=True)
    trials = _grid_axes(trials)
    axes = [c for c in trials.columns if c.startswith("axes.")]
    first = ID_COLUMNS + BUDGET_COLUMNS + axes
    return trials[first + [c for c in trials.columns if c not in first]]


SEARCH_ROLES = (ROLE_SEARCH, ROLE_CONFIRM, ROLE_BASE)
_CELL_PART = re.compile(r",(?=[\w.]+=)")  # a cell's "axis=label" parts (a label may hold a comma)


def _grid_axes(trials: pd.DataFrame) -> pd.DataFrame:
    """A search study's runs carry each sampled value as an axis of their trial (crossover.specs.expand.
    sampled_trial: `axes.lr`, a changed `axes.noise`), but their cell (`crossover.cell`) is the grid cell: the axes
    read are the grid's, those the cells name, with the cells' labels. A grid study's table is returned as it is."""
    if not trials["role"].isin(SEARCH_ROLES).any():
        return trials
    labels = [dict(p.split("=", 1) for p in _CELL_PART.split(cell) if "=" in p) for cell in trials["cell"]]
    grid = list(dict.fromkeys(axis for found in labels for axis in found))
    kept = ("objective", "seed", *grid)
    trials = trials.drop(columns=[c for c in trials.columns if c.startswith("axes.") and c[5:] not in kept])
    for axis in grid:
        trials[f"axes.{axis}"] = [found.get(axis) for found in labels]
    return trials


def _number(text: str | None) -> float:
    try:
        return float(text) if text is not None else np.nan
    except ValueError:
        return np.nan


def _read_items(client: MlflowClient, trials: pd.DataFrame) -> tuple[dict[tuple[str, str, int], dict], list[str]]:
    """Per-item artifacts items/<task>/<step>.json of the runs tagged with `crossover.items`."""
    found: dict[tuple[str, str, int], dict] = {}
    tasks: set[str] = set()
    todo = trials[(trials["item_tasks"] != "") & (trials["role"] != ROLE_SEARCH)]  # no stage reads a sample's
    if todo.empty:
        return found, []
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bar per run

    def fetch(run_id: str) -> list[tuple[str, int, dict]]:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(client.download_artifacts(run_id, ITEMS_DIR, tmp))
            out = []
            for path in sorted(local.glob("*/*.json")):
                payload = json.loads(path.read_text())
                metrics = {k: np.asarray(v, dtype=float) for k, v in payload.get("metrics", {}).items()}
                out.append((path.parent.name, int(payload.get("step", path.stem)), {"ids": payload["ids"], **metrics}))
            return out

    with ThreadPoolExecutor(max_workers=8) as pool:
        for run_id, results in zip(todo["run_id"], pool.map(fetch, todo["run_id"]), strict=True):
            for task, step, items in results:
                found[(run_id, task, step)] = items
                tasks.add(task)
    return found, sorted(tasks)


def _pivot(history: pd.DataFrame) -> pd.DataFrame:
    """Long (run, key, step, value) -> one row per (run, eval step); non-eval metrics carried forward to the step."""
    history = history.sort_values(["run_id", "step", "timestamp"], kind="stable")
    history = history.drop_duplicates(["run_id", "key", "step"], keep="last")  # a resumed trial re-logs steps
    wide = history.pivot(index=["run_id", "step"], columns="key", values="value")
    wide.columns.name = None
    eval_cols = [c for c in wide.columns if c.startswith(EVAL_PREFIX)]
    if not eval_cols:
        return wide.iloc[0:0].reset_index()
    is_eval = wide[eval_cols].notna().any(axis=1)
    other = [c for c in wide.columns if c not in eval_cols]
    if other:  # the latest value at or before each eval step (train metrics may be logged at other steps)
        wide[other] = wide[other].groupby(level="run_id").ffill()
    return wide[is_eval].reset_index()


def read_study(study: str, tracking_uri: str | None = None, items: bool = True, bulk: bool = True) -> StudyData:
    """Read a study (parent run, trial runs, metric histories, per-item results) from MLflow. The trial runs are the
    children (`mlflow.parentRunId`) of the current parent run (`crossover.role=study`; runs under parents that
    `crossover run --fresh` marked `superseded` are left out); without such a parent, every run tagged
    `crossover.trial_id` in the study's experiment. Anneal runs (`crossover.role=anneal`) are kept apart, in
    `anneals` and `anneal_curves`, out of the ordinary trials and curves. A search study's trials are its confirm
    runs; its samples and base runs are kept apart too (`StudyData.search_samples`, `base_trials`), and a confirm run
    of a winner the search replaced (`superseded`) is left out. `bulk=False` reads the histories through the public
    client API even from a SQL store (slower; the tests compare both paths)."""
    from mlflow.exceptions import MlflowException  # lazy: as in the client above

    uri = resolve_tracking_uri(tracking_uri)
    try:
        check_reachable(uri, write=False)
    except TrackingError as exc:
        raise AnalysisError(str(exc)) from None
    try:
        client = mlflow_client(uri)
        experiment_id = _experiment_id(client, study, uri)
        runs = search_all_runs(client, [experiment_id])
    except MlflowException as exc:
        raise AnalysisError(f"reading study '{study}' from {redact(uri)} failed: {exc.message}") from None
    parents = [r for r in runs if r.data.tags.get(TAG_ROLE) == ROLE_STUDY]
    current = max(parents, key=lambda r: (r.info.start_time or 0, r.info.run_id)) if parents else None
    # Finished trials a grown study's spec no longer has are kept in MLflow but are not the study's any more.
    trial_runs = [
        r
        for r in runs
        if TAG_TRIAL_ID in r.data.tags
        and TAG_OUT_OF_SPEC not in r.data.tags
        and r.data.tags.get(TAG_ROLE) != ROLE_SUPERSEDED  # an earlier winner's confirm run
    ]
    if current is not None:  # `crossover run --fresh` superseded the older parents: only the current one's trials
        trial_runs = [r for r in trial_runs if r.data.tags.get(TAG_PARENT) == current.info.run_id]
    if not trial_runs:
        raise AnalysisError(
            f"study '{study}' in {redact(uri)} has no trial runs yet (runs tagged {TAG_TRIAL_ID}); start it with "
            f"`crossover run` or wait for its first trial"
        )
    trials = _trial_table(study, trial_runs)
    parent_run_id = current.info.run_id if current else trials["parent_run_id"].dropna().mode().get(0)

    keys = sorted({k for ks in trials["metric_keys"] for k in ks})
    if not any(k.startswith(EVAL_PREFIX) for k in keys):
        raise AnalysisError(
            f"study '{study}' has {len(trials)} trial run(s) but no evaluation points yet (no {EVAL_PREFIX}* metrics); "
            f"wait for the first evaluation, or check the spec's eval.every"
        )
    try:
        store = _sql_store(client)
        run_ids = trials["run_id"].tolist()
        history = None
        if store is not None and bulk:
            try:
                history = _histories_sql(store, run_ids)
            except Exception:  # noqa: BLE001 - an unexpected schema or driver: the public API still works
                history = None
        if history is None:
            history = _histories_client(client, dict(zip(trials["run_id"], trials["metric_keys"], strict=True)))
        item_results, item_tasks = _read_items(client, trials) if items else ({}, [])
    except MlflowException as exc:
        raise AnalysisError(
            f"reading the metrics of study '{study}' from {redact(uri)} failed: {exc.message}"
        ) from None

    curves = _pivot(history)
    trials = _dedupe(trials, curves)
    curves = curves[curves["run_id"].isin(trials["run_id"])]
    info = trials.set_index("run_id")
    meta_cols = ["study", "trial", "trial_id", "cell", "objective", "seed", "status", *BUDGET_COLUMNS]
    meta_cols += [c for c in info.columns if c.startswith("axes.")]
    curves = curves.join(info[meta_cols], on="run_id")
    if "tokens" not in curves:
        curves["tokens"] = curves["step"].astype(float)
    curves["tokens"] = curves["tokens"].fillna(curves["step"].astype(float))
    epochs = curves["tokens"] / curves["unique_budget"]
    curves["epoch"] = curves["epoch"].fillna(epochs) if "epoch" in curves else epochs
    if "flops" not in curves:
        curves["flops"] = np.nan
    per_token = (curves["flops"] / curves["tokens"]).groupby(curves["run_id"]).transform("median")
    curves["flops"] = curves["flops"].fillna(curves["tokens"] * per_token)
    for task in item_tasks:
        curves[f"items/{task}"] = [
            item_results.get((run_id, task, int(step)))
            for run_id, step in zip(curves["run_id"], curves["step"], strict=True)
        ]
    metric_cols = sorted(c for c in curves.columns if c not in meta_cols and c not in ("run_id", "step"))
    curves = curves[["run_id", *meta_cols, "step", *metric_cols]]
    curves = curves.sort_values(["cell", "objective", "seed", "trial", "step"], kind="stable").reset_index(drop=True)
    annealed = trials["role"] == ROLE_ANNEAL
    anneals = trials[annealed].reset_index(drop=True)
    in_anneal = curves["run_id"].isin(anneals["run_id"])
    anneal_curves = curves[in_anneal].join(anneals.set_index("run_id")[["anneal_of", "anneal_stop"]], on="run_id")

    def of_role(role: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        chosen = trials[trials["role"] == role].reset_index(drop=True)
        return chosen, curves[curves["run_id"].isin(chosen["run_id"])].reset_index(drop=True)

    samples, sample_curves = of_role(ROLE_SEARCH)
    base, base_curves = of_role(ROLE_BASE)
    ordinary = ~trials["role"].isin([ROLE_ANNEAL, ROLE_SEARCH, ROLE_BASE])  # grid trials, or a search's confirm runs
    if not ordinary.any():
        raise AnalysisError(
            f"study '{study}' has {len(samples)} search sample(s) and {len(base)} base run(s) but no confirm runs yet: "
            f"its verdict compares each (cell, objective)'s winner retrained on fresh seeds; wait for the search to "
            f"finish"
        )
    searched = parent_run_id is not None and (len(samples) or len(base))
    search_metric, search_higher = _search_metric(client, parent_run_id) if searched else (None, None)
    return StudyData(
        study,
        uri,
        experiment_id,
        parent_run_id,
        trials[ordinary].reset_index(drop=True),
        curves[curves["run_id"].isin(trials.loc[ordinary, "run_id"])].reset_index(drop=True),
        item_tasks,
        anneals,
        anneal_curves.reset_index(drop=True),
        samples,
        sample_curves,
        base,
        base_curves,
        search_metric,
        search_higher,
    )


def _search_metric(client: MlflowClient, parent_run_id: str) -> tuple[str | None, bool | None]:
    """The metric a search study ranked its samples by, and whether higher is better, from the spec on its parent
    run (spec/study.yaml); (None, None) where it cannot be read: the analysis then names no metric for it."""
    import yaml  # lazy: only a search study reads its spec

    from crossover.specs import parse_study
    from crossover.specs.search import search_higher, search_metric

    try:
        with tempfile.TemporaryDirectory() as tmp:
            text = Path(client.download_artifacts(parent_run_id, f"{SPEC_DIR}/study.yaml", tmp)).read_text()
        spec = parse_study(yaml.safe_load(text))
        return search_metric(spec), search_higher(spec)
    except Exception:  # noqa: BLE001 - a missing file or a spec this version refuses: the metric goes unnamed
        return None, None


def _dedupe(trials: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """One run per trial_id (and role: a search's winner may be the base settings, confirmed beside them): a
    retried trial keeps the run with the most eval points, then the latest."""
    if not trials.duplicated(["role", "trial_id"]).any():
        return trials
    points = curves.groupby("run_id").size()
    ranked = trials.assign(_points=trials["run_id"].map(points).fillna(0))
    ranked = ranked.sort_values(["_points", "start_time"]).drop_duplicates(["role", "trial_id"], keep="last")
    return ranked.drop(columns="_points").sort_index()


def load_curves(study: str, tracking_uri: str | None = None, items: bool = True) -> pd.DataFrame:
    """One row per (trial, eval point) of the study's current trial runs (see `read_study`): identity (run_id,
    trial, trial_id, cell, objective, seed, status), budgets (unique_budget, total_budget), readable axis values
    (axes.<axis>), step = tokens seen, tokens, epoch, flops and every logged metric (train metrics at the latest
    step at or before the eval point); per-item results as dicts in `items/<task>` columns where they were logged.

    The tracking URI is `tracking_uri`, else MLFLOW_TRACKING_URI, else the embedded default sqlite:///mlflow.db.
    Raises AnalysisError (unknown study, unreachable store, no eval points yet)."""
    return read_study(study, tracking_uri, items=items).curves
