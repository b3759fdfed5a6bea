"""The in-memory analysis of a whole study: crossovers per cell, data efficiency, scaling fits, the Delta NLL view.

`analyze_study(read_study(...))` computes everything `crossover analyze` reports, without plotting. It is a chain of
pure stages, each a function of the study's data (and the `Reading`: which metric, which way is better, which compute
axis, which confidence) that returns a frozen result:

    find_crossovers -> Crossovers        every cell's crossover, its interval and matched curves
    find_ar_best    -> ArBaseline        per cell, AR early-stopped (chosen on validation items, scored on test items)
    measure_efficiency -> DataEfficiency U'/U per MDLM budget against AR's best and final values
    fit_scaling     -> Scaling           data-constrained scaling laws on the held-out loss, critical compute
    read_delta_nll  -> DeltaNll          per trial: loss minimum, final, accuracy and Delta NLL there
    find_tuning     -> Tuning            a search study's winners, their search, and the tuning gain over the base

A search study's trials are its confirm runs (`read_study`), so every stage but the last compares the two winners.

`StudyAnalysis` composes them, built once; the report (crossover.analysis.report), the verdicts
(crossover.analysis.verdict, crossover.analysis.axes) and the plots read those results and never change them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from crossover.analysis.crossing import CROSSED, Crossover, find_crossover
from crossover.analysis.curves import StudyData
from crossover.analysis.efficiency import Efficiency, efficiency_details
from crossover.analysis.errors import AnalysisError
from crossover.analysis.paired import Difference, paired_difference
from crossover.analysis.scaling import (
    InsufficientData,
    ScalingFit,
    critical_tokens,
    fit_data_constrained,
    prabhudesai_critical_compute,
)
from crossover.specs import ModelConfig, count_params
from crossover.specs.tokens import format_tokens
from crossover.tracking.names import (
    HEADLINE_ACCURACY,
    HELDOUT_LOSS,
    SEARCH_PARAM_PREFIX,
    TEST,
    VALIDATION,
    higher_is_better,
    item_split,
    validation_key,
)

X_COLUMNS = {"tokens": "tokens", "flops": "flops", "epochs": "epoch"}
SCORINGS = ("acc", "acc_norm", "acc_pmi")  # a multiple-choice task's accuracies: raw, per character, PMI
LOSS_METRIC = HELDOUT_LOSS
_DEFAULT_METRICS = (*HEADLINE_ACCURACY, "acc_norm", "acc", LOSS_METRIC)


def default_metric(metrics: list[str]) -> str:
    """The paper's crossover is on downstream accuracy: held-out cloze accuracy (PMI-scored where logged, see
    crossover.evals.tasks), else any accuracy, else the held-out loss, else the first eval metric."""
    for wanted in _DEFAULT_METRICS:
        if wanted.startswith("eval/"):
            if wanted in metrics:
                return wanted
        else:
            hits = [m for m in metrics if m.rsplit("/", 1)[-1] == wanted]
            if hits:
                return hits[0]
    return metrics[0]


@dataclass(frozen=True)
class Reading:
    """What an analysis reads and how: the metric (eval/<task>/<name>), which way is better, the compute axis
    (tokens, flops or epochs) and the level of its intervals. The stages take it; the loss and the other scorings
    are read with another."""

    metric: str
    x_axis: str
    higher_is_better: bool
    confidence: float

    @property
    def task(self) -> str:
        return self.metric.split("/")[1]

    @property
    def field_name(self) -> str:
        """The metric's name within its task's per-item results (acc, acc_pmi, loss)."""
        return self.metric.rsplit("/", 1)[-1]


# The results hold DataFrames, which have no truth value: compared by identity (eq=False), never by content.
@dataclass(frozen=True, eq=False)
class CellCurves:
    """The matched AR and MDLM curves of one cell on the common eval points (means over seeds)."""

    cell: str
    x: np.ndarray
    ar: np.ndarray
    mdlm: np.ndarray
    tokens: np.ndarray
    flops: np.ndarray
    epochs: np.ndarray


@dataclass(frozen=True, eq=False)
class Crossovers:
    """`find_crossovers`: every cell's crossover on one reading."""

    table: pd.DataFrame  # one row per cell (its axis values, status, position, interval, finals, seed spread)
    results: Mapping[str, Crossover] = field(default_factory=dict)  # cells with both curves on common points
    curves: Mapping[str, CellCurves] = field(default_factory=dict)  # the same cells' matched curves
    ci_source: str | None = None  # what the intervals resampled, over every cell ("/"-joined); None: no interval
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ArBestSeed:
    """One seed's early-stopped AR and the matched MDLM's last value, on the same test items."""

    seed: int
    stop_tokens: float  # where AR stops: its anneal's length, or its validation-chosen eval point
    value: float  # AR's best on the test items
    mdlm_last: float | None  # the same cell's MDLM trial of this seed, its final value on the test items
    run_id: str  # where `value` is read (the anneal run, or the AR run)
    test_items: Mapping[str, float] | None = None  # AR's best model on each test item (None: no per-item results)


@dataclass(frozen=True)
class ArBest:
    """AR's best in one cell, as the verdict reads it: chosen on the validation items, scored on the test items."""

    cell: str
    value: float  # mean over seeds of AR's best on the test items
    stop_tokens: float  # mean over seeds of the stopping point (tokens)
    source: str  # "annealed at 380k", "validation-chosen eval point (not annealed)", ... (`_trial_values`)
    annealed: bool  # every seed's value is an annealed model's (an anneal run, or the AR trial's own end)
    mdlm_last: float | None  # mean over seeds of the cell's MDLM final value on the same test items
    test_items: bool  # the values are on the test items (False: older studies without per-item results, all items)
    seeds: tuple[ArBestSeed, ...] = ()
    difference: Difference | None = None  # MDLM's last minus AR's best, paired on the test items and seeds


@dataclass(frozen=True)
class ArBaseline:
    """`find_ar_best`: per cell with AR trials, its early-stopped AR."""

    by_cell: Mapping[str, ArBest] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class DataEfficiency:
    """`measure_efficiency`: U'/U per (group of the other axes, MDLM budget), on both bases (BASES)."""

    table: pd.DataFrame = field(default_factory=pd.DataFrame)  # empty: `why_empty` says why
    why_empty: str | None = None
    notes: tuple[str, ...] = ()  # trials left out


@dataclass(frozen=True, eq=False)
class Scaling:
    """`fit_scaling`: the data-constrained law per (group, objective) and the critical compute it implies."""

    fits: tuple[tuple[str, ScalingFit], ...] = ()  # (group label, fit)
    critical: pd.DataFrame = field(default_factory=pd.DataFrame)  # per (group, unique budget)
    critical_power_law: tuple[float, float] | None = None  # (coef, exponent) of our C_crit(U), U in millions
    notes: tuple[str, ...] = ()  # fits not made, and why


@dataclass(frozen=True, eq=False)
class DeltaNll:
    """`read_delta_nll`: per trial, the held-out loss at its minimum and at the end, and the accuracy and Delta NLL
    there (does rising loss mean worse answers?)."""

    table: pd.DataFrame = field(default_factory=pd.DataFrame)  # empty: `why_empty` says why
    task: str | None = None  # the multiple-choice task read
    accuracy: str | None = None  # the accuracy read (the study's metric where it can)
    why_empty: str | None = None


@dataclass(frozen=True)
class TunedObjective:
    """One (grid cell, objective) of a search study: its Optuna search, its winner confirmed on fresh seeds, and
    what tuning moved against the spec's base settings on the same seeds. `score` and `gain` read the value the
    verdict reads: AR's best (early-stopped on the validation items) or MDLM's last, on the test items."""

    cell: str
    objective: str
    settings: Mapping[str, str]  # the winner's sampled values, `search.<name>` params of its confirm runs
    samples: int  # sample runs of the search, and of them:
    finished: int
    pruned: int  # stopped by the group's pruner (crossover.pruned_at)
    failed: int
    winner_run: str | None  # the winning sample's run (crossover.confirms)
    selection_score: float | None  # the winner's value in the search (validation items): what chose it
    selection_metric: str | None = None  # the search's metric, whether higher is better (None: not read)
    selection_higher: bool | None = None
    seeds: tuple[int, ...] = ()  # the confirm seeds
    confirmed: float | None = None  # mean over the confirm seeds, on the test items
    score: Difference | None = None  # its interval (a mean against 0: seeds and items), None without per-item results
    base: float | None = None  # the base settings' same value, mean over their seeds
    gain: Difference | None = None  # confirmed minus base, paired on seeds and test items; positive: better

    @property
    def unfinished(self) -> int:
        return self.samples - self.finished - self.pruned - self.failed


@dataclass(frozen=True)
class Tuning:
    """`find_tuning`: per (cell, objective) of a search study; empty for a grid study."""

    by_group: Mapping[tuple[str, str], TunedObjective] = field(default_factory=dict)
    # per cell, the base settings' MDLM's last minus AR's best, paired on their seeds and test items: the untuned gap
    # the tuned verdict is read against (None without per-item results on common seeds)
    untuned: Mapping[str, Difference | None] = field(default_factory=dict)

    def of_cell(self, cell: str) -> list[TunedObjective]:
        return [self.by_group[key] for key in sorted(self.by_group) if key[0] == cell]


@dataclass(frozen=True, eq=False)
class StudyAnalysis:
    """The stages' results on one reading of a study, composed once (`analyze_study`). The held-out loss's and the
    task's other scorings' crossovers are the same composition on another reading, with their crossovers only."""

    study: str
    tracking_uri: str
    axes: tuple[str, ...]
    reading: Reading
    crossovers: Crossovers
    ar_best: ArBaseline = field(default_factory=ArBaseline)
    efficiency: DataEfficiency = field(default_factory=DataEfficiency)
    scaling: Scaling = field(default_factory=Scaling)
    delta_nll: DeltaNll = field(default_factory=DeltaNll)
    tuning: Tuning = field(default_factory=Tuning)
    loss: StudyAnalysis | None = None  # the held-out loss's crossovers, when the main metric is another
    scorings: Mapping[str, StudyAnalysis] = field(default_factory=dict)  # the task's other accuracies' crossovers
    model_params: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # cell -> (total, active) parameters
    study_notes: tuple[str, ...] = ()  # about the whole study: MDLM's scoring handicap, no cell crossed

    @property
    def metric(self) -> str:
        return self.reading.metric

    @property
    def x_axis(self) -> str:
        return self.reading.x_axis

    @property
    def higher_is_better(self) -> bool:
        return self.reading.higher_is_better

    @property
    def confidence(self) -> float:
        return self.reading.confidence

    @property
    def notes(self) -> tuple[str, ...]:
        """The report's notes, in stage order (the scaling fits' own notes are the scaling section's)."""
        return (*self.crossovers.notes, *self.efficiency.notes, *self.study_notes)


def _axis_values(data: StudyData) -> pd.DataFrame:
    """Per cell: the readable value of each varied axis."""
    cols = [f"axes.{a}" for a in data.axes]
    return data.trials.drop_duplicates("cell").set_index("cell")[cols].rename(columns=lambda c: c[5:])


def _model_params(data: StudyData) -> dict[str, tuple[int, int]]:
    """Per cell: the (total, active) parameter counts of its model, from the trials' `model.*` params (cells whose
    params do not describe a model are left out)."""
    out = {}
    fields = [f for f in ModelConfig.model_fields if f"model.{f}" in data.trials.columns]
    for cell, row in data.trials.drop_duplicates("cell").set_index("cell").iterrows():
        values = {f: row[f"model.{f}"] for f in fields if isinstance(row[f"model.{f}"], str)}
        values.pop("preset", None)
        try:
            counts = count_params(ModelConfig.model_validate(values))
        except ValueError:
            continue
        out[cell] = (counts.total, counts.active)
    return out


def _interp_log(value: float, xs: np.ndarray, ys: np.ndarray) -> float:
    ok = np.isfinite(xs) & np.isfinite(ys) & (xs > 0) & (ys > 0)
    if not math.isfinite(value) or value <= 0 or ok.sum() < 2:
        return value if not math.isfinite(value) else math.nan
    return float(np.exp(np.interp(math.log(value), np.log(xs[ok]), np.log(ys[ok]))))


def _seed_spread(
    x: np.ndarray, tokens: np.ndarray, ar: pd.DataFrame, mdlm: pd.DataFrame, higher: bool
) -> dict[str, Any]:
    """With two or more seeds of each objective: the crossover of each matched seed pair (tokens; +inf where that
    pair did not cross, -inf where MDLM led throughout) and the spread (sample standard deviation) over seeds of
    AR's best and MDLM's last value. Empty with one seed."""
    if ar.shape[1] < 2 or mdlm.shape[1] < 2:
        return {}
    peak = ar.max() if higher else ar.min()
    out: dict[str, Any] = {
        "ar_best_sd": float(peak.std(ddof=1)),
        "mdlm_final_sd": float(mdlm.ffill().iloc[-1].std(ddof=1)),
    }
    per_seed = []
    for seed in [s for s in ar.columns if s in mdlm.columns]:
        a, d = ar[seed].to_numpy(dtype=float), mdlm[seed].to_numpy(dtype=float)
        if np.isfinite(a).sum() < 2 or np.isfinite(d).sum() < 2:
            continue
        found = find_crossover(x, a, d, higher)  # it leaves out the points a seed has no value at
        at = {"not_crossed": math.inf, "mdlm_always_ahead": -math.inf}.get(found.point_status)  # a seed's estimate
        per_seed.append(at if at is not None else _interp_log(found.x, x, tokens))
    if per_seed:
        out["seed_crossover_tokens"] = per_seed
    return out


@dataclass(frozen=True, eq=False)
class _MetricTables:
    """Stage 1 of the crossovers: the metric per cell, eval step, objective and seed, and the x axis per cell and
    step, on the points that have both."""

    valid: pd.DataFrame  # the curve rows with the metric and the x axis
    seeds: dict[str, pd.DataFrame]  # cell -> step x (objective, seed)
    axis: dict[str, pd.DataFrame]  # cell -> step x (tokens, flops, epoch, x column)
    axis_values: pd.DataFrame  # cell -> each varied axis' readable value
    item_column: str | None  # where the per-item results of the metric's task are, if logged
    field_name: str  # the metric's name within its task (acc, acc_pmi, loss)

    def seeds_of(self, cell: str, objective: str) -> pd.DataFrame | None:
        table = self.seeds.get(cell)
        if table is None or objective not in table.columns.get_level_values(0):
            return None
        table = table[objective].dropna(axis=1, how="all")
        return table if table.shape[1] else None

    def reference(self, cell: str, objective: str) -> str | None:
        """MDLM trials never carry AR input noise (specs refuse it), so an AR noise variant is compared with the
        MDLM trials that match it on every other axis: the study's clean reference."""
        values = self.axis_values
        if "noise" not in values.columns:
            return None
        mine = values.loc[cell].drop("noise")
        others = [
            c
            for c in values.index
            if c != cell and self.seeds_of(c, objective) is not None and values.loc[c].drop("noise").equals(mine)
        ]
        clean = [c for c in others if values.loc[c, "noise"] == "clean"]
        choice = clean or others
        return choice[0] if len(choice) == 1 else None


def _metric_tables(data: StudyData, metric: str, xcol: str) -> _MetricTables:
    curves = data.curves
    task = metric.split("/")[1]
    valid = curves[curves[metric].notna() & curves[xcol].notna()]
    by_seed = valid.groupby(["cell", "step", "objective", "seed"])[metric].mean().unstack(["objective", "seed"])
    axis_cols = valid.groupby(["cell", "step"])[list(dict.fromkeys(["tokens", "flops", "epoch", xcol]))].mean()
    return _MetricTables(
        valid,
        {cell: t.droplevel(0) for cell, t in by_seed.groupby(level=0, sort=False)},
        {cell: t.droplevel(0) for cell, t in axis_cols.groupby(level=0, sort=False)},
        _axis_values(data),
        f"items/{task}" if task in data.item_tasks else None,
        metric.rsplit("/", 1)[-1],
    )


def _cell_crossover(
    tables: _MetricTables, cell: str, reading: Reading, n_boot: int, seed: int
) -> tuple[dict[str, Any], Crossover | None, CellCurves | None]:
    """Stage 2, one cell: its row of the crossover table, and (where it has common points) the crossover with its
    interval and the matched curves."""
    row: dict[str, Any] = {"cell": cell, **tables.axis_values.loc[cell].to_dict()}
    if cell not in tables.seeds:
        return {**row, "status": "no_data"}, None, None
    source = {"ar": cell, "mdlm": cell}
    for objective in ("ar", "mdlm"):
        if tables.seeds_of(cell, objective) is None and (ref := tables.reference(cell, objective)) is not None:
            source[objective] = ref
            row["reference"] = f"{objective.upper()} from {ref}"
    ar_seeds, mdlm_seeds = tables.seeds_of(source["ar"], "ar"), tables.seeds_of(source["mdlm"], "mdlm")
    if ar_seeds is None or mdlm_seeds is None:
        missing = ", ".join(o for o, t in (("ar", ar_seeds), ("mdlm", mdlm_seeds)) if t is None)
        return {**row, "status": f"missing {missing}"}, None, None
    means = pd.concat([ar_seeds.mean(axis=1).rename("ar"), mdlm_seeds.mean(axis=1).rename("mdlm")], axis=1)
    means = means.dropna().sort_index()
    ar_seeds, mdlm_seeds = ar_seeds.reindex(means.index), mdlm_seeds.reindex(means.index)
    steps = means.index.to_numpy()
    xcol = X_COLUMNS[reading.x_axis]
    ax = tables.axis[cell].reindex(steps)
    x = ax[xcol].to_numpy(dtype=float)
    keep = np.flatnonzero(np.isfinite(x))
    keep = keep[np.concatenate([[True], np.diff(x[keep]) > 0])] if len(keep) else keep
    steps, x = steps[keep], x[keep]
    ar = means["ar"].to_numpy()[keep]
    mdlm = means["mdlm"].to_numpy()[keep]
    samples: dict[str, Any] = {}
    if tables.item_column and len(steps):
        samples = _item_samples(tables.valid, source, tables.item_column, tables.field_name, steps)
    if not samples and ar_seeds.shape[1] >= 2 and mdlm_seeds.shape[1] >= 2:
        a_s = ar_seeds.to_numpy()[keep]
        d_s = mdlm_seeds.to_numpy()[keep]
        same = sorted(ar_seeds.columns) == sorted(mdlm_seeds.columns)
        samples = dict(ar_samples=a_s, mdlm_samples=d_s, resample="seeds", paired=same)
    if len(steps) == 0:
        return {**row, "status": "no_common_points"}, None, None
    result = find_crossover(
        x, ar, mdlm, reading.higher_is_better, confidence=reading.confidence, n_boot=n_boot, seed=seed, **samples
    )
    tokens, flops, epochs = (ax[c].to_numpy(dtype=float)[keep] for c in ("tokens", "flops", "epoch"))
    spread = _seed_spread(x, tokens, ar_seeds.iloc[keep], mdlm_seeds.iloc[keep], reading.higher_is_better)
    at = result.x if result.x is not None else math.nan
    row = {
        **row,
        "status": result.status,
        "point_status": result.point_status,
        "evidence": result.evidence,
        "x": result.x,
        "ci_low": result.ci[0] if result.ci else None,
        "ci_high": result.ci[1] if result.ci else None,
        "p_crossed": result.p_crossed,
        "p_ahead_at_end": result.p_ahead_at_end,
        "ci_source": result.ci_source,
        "sig_figs": grid_sig_figs(x, result.x),
        "crossover_tokens": _interp_log(at, x, tokens),
        "crossover_flops": _interp_log(at, x, flops),
        "crossover_epochs": _interp_log(at, x, epochs),
        "flops_per_token": float(np.nanmedian(flops / tokens)) if np.isfinite(flops).any() else math.nan,
        "x_start": float(x[0]),
        "x_end": float(x[-1]),
        "points": len(x),
        "ar_final": float(ar[-1]),
        "mdlm_final": float(mdlm[-1]),
        "seeds_ar": int(ar_seeds.shape[1]),
        "seeds_mdlm": int(mdlm_seeds.shape[1]),
        **spread,
    }
    return row, result, CellCurves(cell, x, ar, mdlm, tokens, flops, epochs)


def find_crossovers(data: StudyData, reading: Reading, n_boot: int = 1000, seed: int = 0) -> Crossovers:
    """Every cell's crossover on the reading's metric and x axis (stage 1: the tables; stage 2: each cell): the
    table, the crossovers, the matched curves and what the intervals resampled."""
    tables = _metric_tables(data, reading.metric, X_COLUMNS[reading.x_axis])
    rows, results, curves = [], {}, {}
    for cell in tables.axis_values.index:
        row, result, matched = _cell_crossover(tables, cell, reading, n_boot, seed)
        rows.append(row)
        if result is not None:
            results[cell], curves[cell] = result, matched
    sources = {r.ci_source for r in results.values() if r.ci_source}
    notes = ()
    if not sources:
        notes = (
            "No confidence intervals: they need per-item eval results (items/<task>/ artifacts) or two or more "
            "seeds per objective. Every status is undetermined; the smoothed point estimate is shown beside it.",
        )
    return Crossovers(pd.DataFrame(rows), results, curves, "/".join(sorted(sources)) or None, notes)


def grid_sig_figs(x: np.ndarray, at: float | None) -> int:
    """The significant figures a crossover position between eval points `x` supports: 3 where neighbouring points
    are within ~10% of each other, 2 for spacings up to ~2x (cpu_crossover's log:12 over 100x: 1.52x), 1 beyond."""
    if at is None or len(x) < 2 or not math.isfinite(at):
        return 2
    j = int(np.clip(np.searchsorted(x, at), 1, len(x) - 1))
    spacing = x[j] / x[j - 1] - 1
    return int(np.clip(2 + math.floor(-math.log10(max(spacing, 1e-9))), 1, 3)) if spacing < 1 else 1


def _half(items: Any, field_name: str, split: str) -> dict[str, float] | None:
    """{item id: value} of one eval point's per-item results on one half of the items (names.item_split); None
    without per-item results."""
    if not isinstance(items, dict) or field_name not in items:
        return None
    return {i: float(v) for i, v in zip(items["ids"], items[field_name], strict=True) if item_split(i) == split}


def _halves(curves: pd.DataFrame, metric: str, column: str | None, field_name: str) -> pd.DataFrame:
    """Per curve row: `metric` on the validation items and on the test items, from the per-item results (the
    logged eval/<task>/<metric>/validation where there are none); NaN where neither says."""
    out = pd.DataFrame({VALIDATION: np.nan, TEST: np.nan}, index=curves.index)
    if column is not None and column in curves:
        for index, items in zip(curves.index, curves[column], strict=True):
            for split in (VALIDATION, TEST):
                if half := _half(items, field_name, split):
                    out.at[index, split] = float(np.nanmean(list(half.values())))
    logged = validation_key(metric.split("/")[1], field_name)
    if logged in curves:
        out[VALIDATION] = out[VALIDATION].fillna(curves[logged])
    return out


ANNEALED, VALIDATION_CHOSEN, ALL_ITEMS = (
    "annealed at {stop}",
    "validation-chosen eval point (not annealed)",
    ("best eval point on all items (no validation split: flatters AR)"),
)


def _trial_values(data: StudyData, metric: str, higher: bool) -> pd.DataFrame:
    """Per trial (anneal runs are read as AR's best, never as trials): `final`, its last value on the test items;
    `best`, what an early-stopped model of it scores on the test items: for AR, the final value of its anneal run
    (crossover.platform.anneal) where the study has one, else its eval point with the best validation value
    (chosen on the validation items, scored on the test items; not annealed unless it is the run's end); for MDLM,
    its final value (MDLM's last, trained to its end). `stop`: the tokens AR stops at; `best_run`, `best_step`:
    where `best` is read; `best_source`: which of these it is. Without per-item results or a validation metric
    (older studies) the values are on all items and AR's best is its best eval point on them, as said there."""
    task, field_name = metric.split("/")[1], metric.rsplit("/", 1)[-1]
    column = f"items/{task}" if task in data.item_tasks else None
    anneals: dict[str, pd.Series] = {}
    if len(data.anneal_curves) and metric in data.anneal_curves:
        done = data.anneal_curves[data.anneal_curves[metric].notna()].sort_values("step")
        done = done.assign(**_halves(done, metric, column, field_name))
        # the AR trial's current stop (crossover.ar_stop), where an earlier choice (another metric) left another
        chosen = data.trials.set_index("trial_id")["ar_stop"] if "ar_stop" in data.trials else pd.Series(dtype=float)
        for _, last in done.groupby("run_id").tail(1).iterrows():  # a finished anneal: its last point is its stop
            stop = chosen.get(last["anneal_of"], math.nan)
            if last["step"] >= 0.99 * last["anneal_stop"] and (pd.isna(stop) or stop == last["anneal_stop"]):
                anneals[last["anneal_of"]] = last
    valid = data.curves[data.curves[metric].notna()].sort_values("step")
    valid = valid.assign(**_halves(valid, metric, column, field_name))
    rows = []
    for run_id, points in valid.groupby("run_id", sort=False):
        last = points.iloc[-1]
        final = last[TEST] if pd.notna(last[TEST]) else last[metric]
        row = {
            "run_id": run_id,
            **last[["cell", "objective", "seed", "unique_budget", "step"]].to_dict(),
            "final": final,
            "best": final,
            "stop": last["tokens"],
            "best_run": run_id,
            "best_step": last["step"],
            "best_source": "final",
        }
        if last["objective"] == "ar":
            if (anneal := anneals.get(last["trial_id"])) is not None:
                best = anneal[TEST] if pd.notna(anneal[TEST]) else anneal[metric]
                row |= {
                    "best": best,
                    "stop": anneal["anneal_stop"],
                    "best_run": anneal["run_id"],
                    "best_step": anneal["step"],
                    "best_source": ANNEALED.format(stop=format_tokens(int(anneal["anneal_stop"]))),
                }
            else:
                chosen = points[VALIDATION].notna().any()
                scores = points[VALIDATION] if chosen else points[metric]
                pick = points.loc[scores.idxmax() if higher else scores.idxmin()]  # the earliest among equals
                at_end = pick["step"] == last["step"]
                source = VALIDATION_CHOSEN if chosen else ALL_ITEMS
                if chosen and at_end:  # its own schedule annealed it there
                    source = f"{ANNEALED.format(stop=format_tokens(int(pick['tokens'])))} (its own end)"
                if chosen and pd.isna(pick[TEST]):
                    source += "; scored on all items"
                row |= {
                    "best": pick[TEST] if pd.notna(pick[TEST]) else pick[metric],
                    "stop": pick["tokens"],
                    "best_step": pick["step"],
                    "best_source": source,
                }
        rows.append(row)
    columns = [
        "run_id",
        "cell",
        "objective",
        "seed",
        "unique_budget",
        "step",
        "final",
        "best",
        "stop",
        "best_run",
        "best_step",
        "best_source",
    ]
    return pd.DataFrame(rows, columns=columns)


def _other_axes_key(trials: pd.DataFrame, exclude: tuple[str, ...], axes: list[str]) -> pd.Series:
    cols = [f"axes.{a}" for a in axes if a not in exclude]
    if not cols:
        return pd.Series("all", index=trials.index)
    return trials[cols].astype(str).apply(lambda r: ", ".join(f"{c[5:]}={v}" for c, v in r.items()), axis=1)


BASES = ("best", "final")  # efficiency against what each trial reached (headline), and against its last value


def _trial_item_curves(
    curves: pd.DataFrame, run_ids: list[str], column: str, field_name: str, steps: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Per trial: (eval points x items) per-item scores in step order (at `steps` when given, NaN where a trial has
    no items there), items aligned on the first trial's ids; empty unless every trial has them."""
    out: dict[str, np.ndarray] = {}
    ids: list[str] | None = None
    for run_id in run_ids:
        rows = curves[curves["run_id"] == run_id].sort_values("step")
        by_step: dict[int, list[float]] = {}
        for step, items in zip(rows["step"], rows[column], strict=True):
            if not isinstance(items, dict) or field_name not in items:
                continue
            if ids is None:
                ids = list(items["ids"])
            found = dict(zip(items["ids"], items[field_name], strict=True))
            by_step[step] = [float(found.get(i, np.nan)) for i in ids]
        if not by_step or ids is None:
            return {}
        missing = [np.nan] * len(ids)
        out[run_id] = np.asarray([by_step.get(s, missing) for s in (by_step if steps is None else steps)])
    return out


def _item_samples(
    curves: pd.DataFrame, source: dict[str, str], column: str, field_name: str, steps: np.ndarray
) -> dict[str, Any]:
    """`find_crossover`'s per-item samples for one cell, (steps x seeds x items), its seeds paired when AR and MDLM
    have the same ones; empty without items."""
    runs = {
        o: curves[(curves["cell"] == source[o]) & (curves["objective"] == o)].groupby("seed")["run_id"].first()
        for o in ("ar", "mdlm")
    }
    found = _trial_item_curves(curves, [*runs["ar"], *runs["mdlm"]], column, field_name, steps)
    if not found:
        return {}
    a, d = (np.stack([found[r] for r in runs[o]], axis=1) for o in ("ar", "mdlm"))
    same = list(runs["ar"].index) == list(runs["mdlm"].index)
    return dict(ar_samples=a, mdlm_samples=d, paired=same)


def _basis_details(values: pd.DataFrame, higher: bool) -> dict[str, list[Efficiency]] | None:
    """`efficiency_details` on each basis from per-trial `best` and `final` values (means over seeds per objective
    and budget); None unless both objectives are there."""
    means = values.groupby(["objective", "unique_budget"])[list(BASES)].mean()
    if not {"ar", "mdlm"} <= set(means.index.get_level_values(0)):
        return None
    return {b: efficiency_details(means.loc["ar"][b].to_dict(), means.loc["mdlm"][b].to_dict(), higher) for b in BASES}


def _test_item_vectors(data: StudyData, sub: pd.DataFrame, column: str, field_name: str) -> dict[str, np.ndarray]:
    """Per trial of `sub` (`_trial_values` rows): (best, final) x test items, its per-item scores where `best` and
    `final` are read, items aligned on one list of ids; empty unless every trial has them there."""
    curves = pd.concat([data.curves, data.anneal_curves]) if len(data.anneal_curves) else data.curves
    if column not in curves:
        return {}
    at = dict(zip(zip(curves["run_id"], curves["step"], strict=True), curves[column], strict=True))
    out: dict[str, np.ndarray] = {}
    ids: list[str] | None = None
    for row in sub.itertuples():
        halves = [
            _half(at.get((run, step)), field_name, TEST)
            for run, step in ((row.best_run, row.best_step), (row.run_id, row.step))
        ]
        if not all(halves):
            return {}
        ids = ids if ids is not None else sorted(halves[0])
        out[row.run_id] = np.asarray([[half.get(i, np.nan) for i in ids] for half in halves])
    return out


def _efficiency_intervals(
    data: StudyData, reading: Reading, sub: pd.DataFrame, n_boot: int, seed: int
) -> tuple[dict[tuple[str, float], tuple[float, float]], str | None]:
    """Bootstrap intervals of U'/U per (basis, MDLM budget): seeds resampled within each (objective, budget) when
    it has two or more, then the eval items (the same draw for every trial: the items are shared), each replicate's
    best and final re-read on the resampled test items at the points `_trial_values` chose (the choice, made on the
    validation items, is not redone). Returns ({(basis, U): (low, high)}, what was resampled)."""
    task = reading.task
    item_curves = _test_item_vectors(data, sub, f"items/{task}", reading.field_name) if task in data.item_tasks else {}
    seeds = sub.groupby(["objective", "unique_budget"])["run_id"].agg(list)
    most_seeds = int(seeds.map(len).max())
    if not item_curves and most_seeds < 2:
        return {}, None
    rng = np.random.default_rng(seed)
    n_items = next(iter(item_curves.values())).shape[1] if item_curves else 0
    observed = sub.set_index("run_id")[["best", "final"]].to_dict("index")
    coded = {"above_range": math.inf, "below_range": 0.0}  # out-of-range ratios, as interval bounds
    draws: dict[str, list[dict[float, float]]] = {basis: [] for basis in BASES}
    for _ in range(n_boot):
        if item_curves:
            weights = rng.multinomial(n_items, np.full(n_items, 1 / n_items)).astype(float)
        rows = []
        for (objective, budget), run_ids in seeds.items():
            chosen = rng.choice(run_ids, size=len(run_ids)) if len(run_ids) >= 2 else run_ids
            for run_id in chosen:
                if item_curves:
                    scores = item_curves[run_id]  # (best, final) x test items
                    ok = np.isfinite(scores)
                    best, final = (np.where(ok, scores, 0) @ weights) / np.maximum(ok @ weights, 1e-12)
                else:
                    best, final = observed[run_id]["best"], observed[run_id]["final"]
                rows.append({"objective": objective, "unique_budget": budget, "best": best, "final": final})
        details = _basis_details(pd.DataFrame(rows), reading.higher_is_better) or {}
        for basis in BASES:
            draws[basis].append(
                {
                    r.unique_tokens: r.ratio if r.ratio is not None else coded.get(r.status, math.nan)
                    for r in details.get(basis, [])
                }
            )
    alpha = (1 - reading.confidence) / 2
    intervals = {}
    for basis in BASES:
        budgets = {u for d in draws[basis] for u in d}
        for budget in budgets:
            values = np.array([d.get(budget, math.nan) for d in draws[basis]])
            values = values[~np.isnan(values)]
            if len(values) < 0.9 * n_boot:  # undefined too often to give an interval its stated level
                continue
            low, high = np.quantile(values, [alpha, 1 - alpha], method="inverted_cdf")
            intervals[(basis, budget)] = (float(low), float(high))
    fewest = int(seeds.map(len).min())
    seeds_part = f"{fewest} seed" + ("s" if fewest != 1 else "")
    if fewest < most_seeds:  # e.g. seeds at one budget only (cpu_efficiency): say the range, not the fewest alone
        seeds_part = f"{fewest} to {most_seeds} seeds by budget and objective"
    source = (
        f"items, {seeds_part}"
        if item_curves and most_seeds < 2
        else (f"seeds then items, {seeds_part}" if item_curves else f"seeds, {seeds_part}")
    )
    return intervals, source


def _ar_best_at(values: pd.DataFrame, budget: float) -> dict[str, Any]:
    """The efficiency row's AR at the MDLM budget itself: its best (mean over seeds, test items), stop and source."""
    ar = values[(values["objective"] == "ar") & (values["unique_budget"] == budget)]
    if ar.empty:
        return {"ar_best": None, "ar_stop": None, "ar_best_source": None}
    return {
        "ar_best": float(ar["best"].mean()),
        "ar_stop": float(ar["stop"].mean()),
        "ar_best_source": "; ".join(dict.fromkeys(ar["best_source"])),
    }


def measure_efficiency(data: StudyData, reading: Reading, n_boot: int = 1000, seed: int = 0) -> DataEfficiency:
    """U'/U per MDLM budget against an early-stopped AR (the headline: the baseline a practitioner would use; each
    AR trial annealed to its stop chosen on the validation items where the study has anneal runs, else its
    validation-chosen eval point; `ar_best_source` says which), and against final values (AR left to overfit);
    every value on the test items (`_trial_values`), with MDLM's last on both bases; each with a bootstrap
    interval over the test items (and seeds where there are several)."""
    if "unique_tokens" not in data.axes:
        return DataEfficiency(why_empty="Not applicable: the study does not vary the unique-token budget.")
    values = _trial_values(data, reading.metric, reading.higher_is_better)
    unfinished = values["step"] < 0.99 * values["run_id"].map(data.trials.set_index("run_id")["total_budget"])
    notes = ()
    if unfinished.any():
        notes = (
            f"Data efficiency leaves out {int(unfinished.sum())} trial(s) whose last evaluation is before the end of "
            f"their training budget: their final performance is not known yet.",
        )
        values = values[~unfinished]
    trials = data.trials.set_index("run_id")
    values = values.assign(
        group=_other_axes_key(trials, ("unique_tokens",), data.axes).reindex(values["run_id"]).to_numpy()
    )
    rows = []
    for group in sorted(values["group"].unique()):
        sub = values[values["group"] == group]
        details = _basis_details(sub, reading.higher_is_better)
        if details is None:
            continue
        intervals, source = _efficiency_intervals(data, reading, sub, n_boot, seed)
        ar_budgets = sub.loc[sub["objective"] == "ar", "unique_budget"].astype(float)
        for best, final in zip(details["best"], details["final"], strict=True):
            row: dict[str, Any] = {
                "group": group,
                "unique_tokens": best.unique_tokens,
                "ci_source": source,
                **_ar_best_at(sub, best.unique_tokens),
                # the ratios U'/U can take inside the AR budgets: bounds outside print against them
                "ratio_below": ar_budgets.min() / best.unique_tokens,
                "ratio_above": ar_budgets.max() / best.unique_tokens,
            }
            for basis, eff in (("best", best), ("final", final)):
                suffix = "" if basis == "best" else "_final"
                low, high = intervals.get((basis, eff.unique_tokens), (None, None))
                row |= {
                    f"mdlm_{basis}": eff.performance,
                    f"ar_equivalent{suffix}": eff.ar_equivalent,
                    f"ratio{suffix}": eff.ratio,
                    f"status{suffix}": eff.status,
                    f"bound{suffix}": eff.bound,
                    f"ci_low{suffix}": low,
                    f"ci_high{suffix}": high,
                }
            rows.append(row)
    why_empty = None if rows else "No group has both AR and MDLM trials at two or more unique budgets."
    return DataEfficiency(pd.DataFrame(rows), why_empty, notes)


def find_ar_best(data: StudyData, reading: Reading) -> ArBaseline:
    """Per cell with AR trials: its early-stopped AR (`ArBest`), paired seed by seed with the cell's MDLM last."""
    if not (data.curves[reading.metric].notna().any() if reading.metric in data.curves else False):
        return ArBaseline()
    values = _trial_values(data, reading.metric, reading.higher_is_better)
    on_test = reading.task in data.item_tasks
    items = _item_results(data, f"items/{reading.task}") if on_test else None
    by_cell = {}
    for cell, rows in values.groupby("cell", sort=False):
        ar, mdlm = rows[rows["objective"] == "ar"], rows[rows["objective"] == "mdlm"].set_index("seed")["final"]
        if ar.empty:
            continue
        seeds = tuple(
            ArBestSeed(
                int(r.seed),
                float(r.stop),
                float(r.best),
                float(mdlm[r.seed]) if r.seed in mdlm.index else None,
                str(r.best_run),
                _test_scores(items, reading, r.best_run, r.best_step) if items is not None else None,
            )
            for r in ar.itertuples()
        )
        by_cell[cell] = ArBest(
            cell=cell,
            value=float(ar["best"].mean()),
            stop_tokens=float(ar["stop"].mean()),
            source="; ".join(dict.fromkeys(ar["best_source"])),
            annealed=all(str(src).startswith(ANNEALED.split("{")[0]) for src in ar["best_source"]),
            mdlm_last=float(mdlm.mean()) if len(mdlm) else None,
            test_items=on_test,
            seeds=seeds,
            difference=_last_minus_best(items, reading, rows, seeds) if items is not None else None,
        )
    return ArBaseline(by_cell)


def _item_results(data: StudyData, column: str) -> pd.Series | None:
    """The per-item results of every run, trials' and anneals', indexed by (run id, step); None without them."""
    curves = pd.concat([data.curves, data.anneal_curves]) if len(data.anneal_curves) else data.curves
    return curves.set_index(["run_id", "step"])[column] if column in curves else None


def _last_minus_best(
    items: pd.Series, reading: Reading, rows: pd.DataFrame, seeds: Sequence[ArBestSeed]
) -> Difference | None:
    """MDLM's last minus AR's best in one cell (`_trial_values` rows), paired: per seed that has both, AR's
    early-stopped model (its test items, read once into `seeds`) and MDLM's last on the same test items (`items`:
    `_item_results`); None where no seed has per-item results of both."""
    mdlm = rows[rows["objective"] == "mdlm"].set_index("seed")
    pairs = [
        (seed.test_items or {}, _test_scores(items, reading, *mdlm.loc[seed.seed][["run_id", "step"]]))
        for seed in seeds
        if seed.seed in mdlm.index
    ]
    return _paired_scores(pairs, reading.higher_is_better, reading.confidence)


def _test_scores(items: pd.Series, reading: Reading, run_id: str, step: int) -> dict[str, float]:
    """{test item id: value} of one run at one eval point (`items`: `_item_results`); empty without them."""
    return _half(items.get((run_id, step)), reading.field_name, TEST) or {}


def _paired_scores(
    pairs: Sequence[tuple[Mapping[str, float], Mapping[str, float]]], higher_is_better: bool, confidence: float
) -> Difference | None:
    """b - a over (a, b) pairs of per-item scores, one pair per seed, on the items every pair has (in the direction
    where higher is better); None where no item is common."""
    matrix = _common_items([scores for pair in pairs for scores in pair])  # rows a, b, a, b, ...
    if matrix is None:
        return None
    sign = 1.0 if higher_is_better else -1.0
    return paired_difference(sign * matrix[0::2], sign * matrix[1::2], confidence)


def ar_best_change(base: ArBest, other: ArBest, higher_is_better: bool, confidence: float) -> Difference | None:
    """`other`'s early-stopped AR minus `base`'s (two cells of an axis), paired on the test items and on the seeds
    both have; None where either lacks per-item results."""
    base_seeds = {s.seed: s.test_items for s in base.seeds if s.test_items}
    pairs = [(base_seeds[s.seed], s.test_items) for s in other.seeds if s.test_items and s.seed in base_seeds]
    return _paired_scores(pairs, higher_is_better, confidence)


def fit_scaling(data: StudyData) -> Scaling:
    """The data-constrained law per (group of the other axes, objective) on the held-out loss after warm-up, and
    per unique budget the critical compute where the MDLM law passes the AR law."""
    if LOSS_METRIC not in data.curves:
        return Scaling(notes=(f"No scaling-law fit: the study logged no {LOSS_METRIC}.",))
    notes = []
    curves = data.curves[data.curves[LOSS_METRIC].notna()]
    trials = data.trials.set_index("run_id")
    group = _other_axes_key(trials, ("unique_tokens", "total_tokens"), data.axes)
    warmup = pd.to_numeric(trials.get("train.warmup_tokens", pd.Series(0, index=trials.index)), errors="coerce")
    curves = curves.assign(
        group=group.reindex(curves["run_id"]).to_numpy(),
        warmup=warmup.reindex(curves["run_id"]).fillna(0).to_numpy(),
    )
    curves = curves[curves["tokens"] > curves["warmup"]]
    fits: dict[tuple[str, str], ScalingFit] = {}
    for (label, objective), sub in curves.groupby(["group", "objective"], sort=True):
        try:
            fit = fit_data_constrained(
                sub["tokens"].to_numpy(),
                sub["unique_budget"].to_numpy(),
                sub[LOSS_METRIC].to_numpy(),
                objective,
                label,
                runs=sub["run_id"].to_numpy(),
            )
        except InsufficientData as exc:
            notes.append(f"No fit for {objective} ({label}): {exc}")
            continue
        fits[(label, objective)] = fit
    rows = []
    for label in sorted({g for g, _ in fits}):
        if (label, "ar") not in fits or (label, "mdlm") not in fits:
            continue
        sub = curves[curves["group"] == label]
        per_token = float(np.nanmedian(sub["flops"] / sub["tokens"])) if sub["flops"].notna().any() else math.nan
        for unique in sorted(sub["unique_budget"].dropna().unique()):
            d_crit = critical_tokens(fits[(label, "ar")], fits[(label, "mdlm")], unique)
            rows.append(
                {
                    "group": label,
                    "unique_tokens": unique,
                    "critical_tokens": d_crit,
                    "critical_epochs": None if d_crit is None else d_crit / unique,
                    "critical_flops": None if d_crit is None else d_crit * per_token,
                    "prabhudesai_flops": prabhudesai_critical_compute(unique),
                    "note": ""
                    if fits[(label, "ar")].identified and fits[(label, "mdlm")].identified
                    else "extrapolates an R_D* the data does not identify",
                }
            )
    critical, power_law = pd.DataFrame(rows), None
    if rows:
        # a power law in U only from critical computes whose fits identify R_D*, at three or more budgets: two points
        # always fit a line, and an unidentified R_D* makes C_crit an extrapolation
        finite = critical.dropna(subset=["critical_flops"])
        finite = finite[(finite["critical_flops"] > 0) & (finite["note"] == "")]
        if finite["unique_tokens"].nunique() >= MIN_POWER_LAW_BUDGETS:
            slope, intercept = np.polyfit(
                np.log(finite["unique_tokens"] / 1e6), np.log(finite["critical_flops"].astype(float)), 1
            )
            power_law = (float(math.exp(intercept)), float(slope))
        else:
            notes.append(
                f"No C_crit(U) power law: it needs critical computes from fits that identify R_D* at "
                f"{MIN_POWER_LAW_BUDGETS} or more unique budgets; this study has "
                f"{finite['unique_tokens'].nunique()}."
            )
    return Scaling(tuple((label, fit) for (label, _), fit in fits.items()), critical, power_law, tuple(notes))


MIN_POWER_LAW_BUDGETS = 3


def read_delta_nll(data: StudyData, reading: Reading) -> DeltaNll:
    """Per trial, from its held-out loss minimum to its end: the loss, the reading's accuracy (its paired change on
    the same items where there are per-item results) and Delta NLL, on the reading's task where it logged one."""
    curves = data.curves
    tasks = [c.split("/")[1] for c in curves.columns if c.startswith("eval/") and c.endswith("/delta_nll")]
    if not tasks:
        return DeltaNll(
            why_empty="No Delta NLL logged: it needs a multiple-choice task such as heldout_cloze "
            "(eval/<task>/delta_nll)."
        )
    task = reading.task if reading.task in tasks else tasks[0]
    loss = LOSS_METRIC if LOSS_METRIC in curves else f"eval/{task}/nll"
    # the study's own accuracy where it is this task's (acc_pmi by default), else its raw accuracy
    own = reading.metric if reading.task == task and reading.field_name.startswith("acc") else None
    acc = own or next((f"eval/{task}/{m}" for m in ("acc", "acc_norm") if f"eval/{task}/{m}" in curves), None)
    delta = f"eval/{task}/delta_nll"
    rel = f"eval/{task}/delta_nll_rel"
    cols = [c for c in (loss, acc, delta) if c is not None and c in curves]
    valid = curves.dropna(subset=cols).sort_values(["run_id", "step"])
    groups = valid.groupby("run_id", sort=False)
    first = groups.head(1).set_index("run_id")
    last = groups.tail(1).set_index("run_id")
    best = valid.loc[groups[loss].idxmin()].set_index("run_id")
    table = pd.DataFrame(
        {
            "trial": last["trial"],
            "objective": last["objective"],
            "cell": last["cell"],
            "loss_min_tokens": best["tokens"],
            "loss_min": best[loss],
            "loss_final": last[loss],
            "loss_rise": last[loss] / best[loss] - 1,
            "delta_nll_at_min": best[delta],
            "delta_nll_final": last[delta],
            "delta_nll_first": first[delta],
        }
    )
    if acc:
        table["acc_at_min"] = best[acc]
        table["acc_final"] = last[acc]
        if f"{acc}_stderr" in curves:  # the item standard errors logged with it
            table["acc_stderr"] = np.fmax(best[f"{acc}_stderr"], last[f"{acc}_stderr"])
        if task in data.item_tasks:  # the paired change on the same items, from the loss minimum to the end
            changes = {
                run_id: _paired_change(
                    curves,
                    run_id,
                    f"items/{task}",
                    acc.rsplit("/", 1)[-1],
                    best.loc[run_id, "step"],
                    last.loc[run_id, "step"],
                    reading.confidence,
                )
                for run_id in last.index
            }
            table["acc_change"] = pd.Series({r: c.value if c else math.nan for r, c in changes.items()})
            table["acc_change_ci"] = pd.Series({r: (c.low, c.high) if c else None for r, c in changes.items()})
            table["acc_change_source"] = pd.Series({r: c.source if c else None for r, c in changes.items()})
    if rel in curves:
        table["delta_rel_at_min"] = best[rel]
        table["delta_rel_final"] = last[rel]
    return DeltaNll(table.sort_values(["cell", "objective", "trial"]).reset_index(drop=True), task, acc)


def find_tuning(data: StudyData, reading: Reading) -> Tuning:
    """Per (cell, objective) of a search study: its search's samples (finished, pruned, failed), the confirmed
    winner's settings and selection score (its value in the search, on the validation items: the best of the samples,
    so biased upwards by that choice), its score on the test items over the confirm seeds with their interval, and
    the tuning gain: the confirm runs minus the base runs, paired on the same seeds and test items
    (`_paired_scores`). Empty for a grid study."""
    if not data.searched:
        return Tuning()
    confirmed = _headline_scores(data, reading)
    base = _headline_scores(replace(data, trials=data.base_trials, curves=data.base_curves), reading)
    samples = data.search_samples  # read_study's: the trial table's columns, even without a row
    by_group = {}
    searched = zip(samples["cell"], samples["objective"], strict=True)
    for cell, objective in dict.fromkeys([*confirmed, *base, *searched]):
        mine = samples[(samples["cell"] == cell) & (samples["objective"] == objective)]
        pruned = mine["pruned_at"].notna()
        confirm_runs = data.trials[(data.trials["cell"] == cell) & (data.trials["objective"] == objective)]
        winner = confirm_runs["confirms"].dropna()
        winner_run = str(winner.iloc[0]) if len(winner) else None
        chosen = mine.loc[mine["run_id"] == winner_run, "search_value"]
        ours, theirs = confirmed.get((cell, objective), {}), base.get((cell, objective), {})
        matrix = _common_items([items for _, items in ours.values() if items])
        by_group[(cell, objective)] = TunedObjective(
            cell=cell,
            objective=objective,
            settings=_search_settings(confirm_runs),
            samples=len(mine),
            finished=int(((mine["status"] == "FINISHED") & ~pruned).sum()),
            pruned=int(pruned.sum()),
            failed=int(((mine["status"] == "FAILED") & ~pruned).sum()),
            winner_run=winner_run,
            selection_score=float(chosen.iloc[0]) if len(chosen) and pd.notna(chosen.iloc[0]) else None,
            selection_metric=data.search_metric,
            selection_higher=data.search_higher,
            seeds=tuple(sorted(ours)),
            confirmed=float(np.mean([v for v, _ in ours.values()])) if ours else None,
            score=paired_difference(np.zeros_like(matrix), matrix, reading.confidence) if matrix is not None else None,
            base=float(np.mean([v for v, _ in theirs.values()])) if theirs else None,
            gain=_paired_on_seeds(theirs, ours, reading),
        )
    untuned = {
        cell: _paired_on_seeds(base.get((cell, "ar"), {}), base.get((cell, "mdlm"), {}), reading)
        for cell in dict.fromkeys(cell for cell, _ in base)
    }
    return Tuning(by_group, untuned)


def _paired_on_seeds(
    a: Mapping[int, tuple[float, Mapping[str, float] | None]],
    b: Mapping[int, tuple[float, Mapping[str, float] | None]],
    reading: Reading,
) -> Difference | None:
    """b - a (`_headline_scores`' per-seed values) paired on the seeds both have per-item scores for, and their
    common test items (`_paired_scores`)."""
    common = [s for s in b if s in a and a[s][1] and b[s][1]]
    return _paired_scores([(a[s][1], b[s][1]) for s in common], reading.higher_is_better, reading.confidence)


def _headline_scores(
    data: StudyData, reading: Reading
) -> dict[tuple[str, str], dict[int, tuple[float, Mapping[str, float] | None]]]:
    """Per (cell, objective), per seed: the value the verdict reads (`_trial_values`' `best`: AR early-stopped on
    the validation items, MDLM's last), on the test items, and its per-item scores there (None without them)."""
    if reading.metric not in data.curves or not data.curves[reading.metric].notna().any():
        return {}
    values = _trial_values(data, reading.metric, reading.higher_is_better)
    items = _item_results(data, f"items/{reading.task}") if reading.task in data.item_tasks else None
    out: dict[tuple[str, str], dict[int, tuple[float, Mapping[str, float] | None]]] = {}
    for r in values.itertuples():
        scores = _test_scores(items, reading, r.best_run, r.best_step) if items is not None else None
        out.setdefault((r.cell, r.objective), {})[int(r.seed)] = (float(r.best), scores or None)
    return out


def _common_items(scores: Sequence[Mapping[str, float]]) -> np.ndarray | None:
    """(seeds, items) on the items every seed has; None where there is no seed or no common item."""
    ids = sorted(set.intersection(*(set(s) for s in scores))) if scores else []
    return np.array([[s[i] for i in ids] for s in scores]) if ids else None


def _search_settings(runs: pd.DataFrame) -> dict[str, str]:
    """The sampled values (`search.<name>` params) of a group's confirm runs: the winner's, one value each."""
    columns = [c for c in runs.columns if c.startswith(SEARCH_PARAM_PREFIX)]
    found = {c.removeprefix(SEARCH_PARAM_PREFIX): runs[c].dropna() for c in columns}
    return {name: str(values.iloc[0]) for name, values in found.items() if len(values)}


EQUIVALENCE_MARGIN = 0.02  # accuracy: a change inside +-0.02 is "held" in the Delta NLL view


def _paired_change(
    curves: pd.DataFrame, run_id: str, column: str, field_name: str, start: int, end: int, confidence: float
) -> Difference | None:
    """A trial's accuracy at `end` minus at `start`, paired on its items, or None without per-item results."""
    found = _trial_item_curves(curves, [run_id], column, field_name, np.array([start, end]))
    if not found or not np.isfinite(found[run_id]).any(axis=1).all():
        return None
    before, after = found[run_id]
    return paired_difference(before, after, confidence)


@contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """The matrices here are small (hundreds of rows): BLAS threads only add contention, several-fold on a busy
    machine. threadpoolctl is optional."""
    try:
        from threadpoolctl import threadpool_limits  # lazy: only around the bootstrap
    except ImportError:
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


FEW_MC_SAMPLES = 16  # below this, bench/bench_mdlm_scoring.py measured MDLM's accuracy pulled towards chance


def _monte_carlo_note(data: StudyData) -> str | None:
    """MDLM's multiple-choice answers scored more weakly than its exact chain rule (eval.mdlm_block 1), so its
    accuracy is an underestimate the verdict should name: by the Monte Carlo ELBO with few samples (noise picks wrong
    answers), or decoded in blocks of more than one token (eval.mdlm_block > 1, or eval.mdlm_steps, the number of
    steps per answer of runs from before the block size)."""
    trials = data.trials
    if "objective" not in trials:
        return None
    mdlm = trials["objective"] == "mdlm"

    def number(param: str) -> pd.Series:  # "None" (the ELBO) and a param the run lacks read as NaN
        if param not in trials:
            return pd.Series(float("nan"), index=trials.index)
        return pd.to_numeric(trials[param], errors="coerce")

    block, steps = number("eval.mdlm_block"), number("eval.mdlm_steps")
    notes = []
    k = number("eval.mc_samples")[mdlm & block.isna() & steps.isna()].dropna()  # scored by the ELBO
    if (k < FEW_MC_SAMPLES).any():
        notes.append(
            f"MDLM's answers were scored with K = {int(k.min())} Monte Carlo samples: noisy likelihoods pull its "
            f"accuracy towards chance, so its curves are a lower estimate (on the smoke study's models K = 16 raised "
            f"MDLM's accuracy by about 0.05 over K = 4; bench/bench_mdlm_scoring.py). Raise eval.mc_samples, or "
            f"score exactly with eval.mdlm_block: 1."
        )
    if len(blocks := block[mdlm & (block > 1)]):
        notes.append(
            f"MDLM scored in blocks of {int(blocks.max())} tokens (eval.mdlm_block): a weaker, cheaper approximation "
            f"than its exact chain rule; its likelihoods are a lower estimate, and its accuracies are not the exact "
            f"scorer's (on the smoke study's models, blocks of 8 moved raw acc by +0.10 and acc_pmi by -0.02; "
            f"docs/results.md, 'MDLM scorer sensitivity'). Score it exactly with eval.mdlm_block: 1."
        )
    if len(legacy := steps[mdlm & block.isna() & (steps < 16)]):  # 16: the cloze's span, decoded one token a step
        notes.append(
            f"MDLM decoded each answer in {int(legacy.min())} steps (eval.mdlm_steps, before eval.mdlm_block): "
            f"answers longer than that in blocks of several tokens, a weaker, cheaper approximation than its exact "
            f"chain rule, its likelihoods a lower estimate and its accuracies not the exact scorer's."
        )
    return " ".join(notes) or None


def analyze_study(
    data: StudyData,
    metric: str | None = None,
    x: str = "tokens",
    higher: bool | None = None,
    confidence: float = 0.9,
    n_boot: int = 1000,
    seed: int = 0,
) -> StudyAnalysis:
    """Everything the report shows, computed in memory. Raises AnalysisError for an unknown metric or axis."""
    if x not in X_COLUMNS:
        raise AnalysisError(f"unknown compute axis '{x}'; use tokens, flops or epochs")
    metrics = sorted(c for c in data.curves.columns if c.startswith("eval/") and data.curves[c].notna().any())
    if metric is None:
        metric = default_metric(metrics)
    elif metric not in metrics:
        raise AnalysisError(f"study '{data.study}' logged no metric '{metric}'; eval metrics: {', '.join(metrics)}")
    if x == "flops" and not data.curves["flops"].notna().any():
        raise AnalysisError("the study logged no `flops` metric, so there is no FLOPs axis; use --x tokens or epochs")
    reading = Reading(metric, x, higher_is_better(metric) if higher is None else higher, confidence)

    def crossovers_only(other: str, higher: bool) -> StudyAnalysis:
        """The loss's or another scoring's reading: its crossovers, read as the main one's are."""
        again = Reading(other, x, higher, confidence)
        return _composed(data, again, find_crossovers(data, again, n_boot, seed))

    with _single_threaded_blas():
        crossovers = find_crossovers(data, reading, n_boot, seed)
        ar_best = find_ar_best(data, reading)
        efficiency = measure_efficiency(data, reading, n_boot, seed)
        scaling = fit_scaling(data)
        delta_nll = read_delta_nll(data, reading)
        tuning = find_tuning(data, reading)
        # the loss crossover too, read with its caveat
        loss = crossovers_only(LOSS_METRIC, False) if metric != LOSS_METRIC and LOSS_METRIC in metrics else None
        scorings = {}
        if reading.field_name in SCORINGS:  # the verdict on every scoring of the task, side by side
            for other in (f"eval/{reading.task}/{name}" for name in SCORINGS):
                if other != metric and other in metrics:
                    scorings[other] = crossovers_only(other, True)
    notes = []
    if reading.field_name in SCORINGS and (note := _monte_carlo_note(data)):
        notes.append(note)
    crossed = crossovers.table.get("status", pd.Series(dtype=str)).eq(CROSSED).sum()
    if len(crossovers.table) and not crossed:
        notes.append("No cell crossed inside the observed window.")
    return _composed(
        data,
        reading,
        crossovers,
        ar_best=ar_best,
        efficiency=efficiency,
        scaling=scaling,
        delta_nll=delta_nll,
        tuning=tuning,
        loss=loss,
        scorings=scorings,
        model_params=_model_params(data),
        study_notes=tuple(notes),
    )


def _composed(data: StudyData, reading: Reading, crossovers: Crossovers, **stages: Any) -> StudyAnalysis:
    """A study's stage results on one reading, with the study's identity: the main analysis and its loss and
    scoring sub-analyses alike (stages not given stay empty)."""
    return StudyAnalysis(data.study, data.tracking_uri, tuple(data.axes), reading, crossovers, **stages)
