"""The answer in one line per cell: did MDLM overtake AR, where, how surely, and by how much in data.

    verdicts(analysis) -> [Verdict(cell, line, metrics, state)]

Every line starts with the cell's state, decided by the evidence (crossover.analysis.crossing): `crossed`,
`not crossed`, `undetermined` (the evidence cannot tell whether MDLM ends ahead; the point estimate is quoted beside
it as such), or `MDLM ahead at every point`; then the interval, P(crossed) and what the interval resampled (items
and/or seeds; with one seed it says the interval holds item noise only), both objectives' values at the end, and the
data efficiency. Without per-item results or seeds nothing backs a claim: the state is `undetermined`, the point
estimate beside it, and the line says why. Crossover positions are quoted to the significant figures the eval grid
supports (2 for points ~1.5x apart). Lines read, for the study's metric (cloze accuracy by default):
    unique_tokens=50k: MDLM overtakes AR on heldout_cloze/acc_pmi at 1.5M tokens (30 epochs) (90% CI 1.1M to 2M;
        P(crossed) 96%; over seeds as a t with 2 df and items, 3 seeds); at the end AR 0.541, MDLM 0.603; ...
    unique_tokens=200k: undetermined within 4M tokens (20 epochs): the evidence cannot tell whether MDLM ends ahead
        (the point estimate crosses at 3.2M tokens (16 epochs) on heldout_cloze/acc_pmi; 90% CI 2.6M to past the
        end; ...); ...
    unique_tokens=600k: not crossed within 4.8M tokens (8 epochs): AR ahead at the end by 0.061 on
        heldout_cloze/acc_pmi (...); ...
Every line names its metric; positions and intervals print through crossover.analysis.formatting.

`loss_verdicts` gives the same lines for the held-out loss (AR's exact NLL against MDLM's ELBO, a bound: a loss
crossover found this way is conservative) and `delta_nll_lines` the Delta NLL view: trials whose held-out loss rose
after its minimum, with the paired change of their accuracy on the same items and an equivalence margin.

In a search study every line compares the two confirmed winners (`read_study`), and ends with them and what tuning
moved against the base settings on the same seeds and test items (`tuning_lines` gives the whole reading per cell:
each search, the winner's selection score and its confirmed score).

They head the report and `crossover analyze`'s output, and are logged on the study's parent MLflow run: a tag
`crossover.verdict.<cell>` with the line, `crossover.state.<cell>` with the state (`crossover status` prints them),
and metrics `verdict/<cell>/...` (state 1 MDLM ahead at the end / 0 undetermined / -1 not crossed, crossed 1/0,
P(crossed), crossover tokens and epochs, AR's lead at the end, AR's peak, MDLM's final value, the efficiency ratios,
and with several seeds the share of seed pairs that crossed and the spread over seeds) that the runs table can show
as columns.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from crossover.analysis.analyze import EQUIVALENCE_MARGIN, SCORINGS, StudyAnalysis, TunedObjective
from crossover.analysis.crossing import ALWAYS_AHEAD, CROSSED, NOT_CROSSED, UNDETERMINED
from crossover.analysis.formatting import interval, ratio, significant, tokens_and_epochs
from crossover.analysis.paired import Difference
from crossover.specs import format_tokens, parse_tokens

_BAD_KEY = re.compile(r"[^\w.\- /]")


@dataclass
class Verdict:
    cell: str
    line: str
    metrics: dict[str, float] = field(default_factory=dict)
    state: str | None = None  # crossed | not_crossed | undetermined | mdlm_always_ahead (None: no verdict)

    @property
    def key(self) -> str:
        """The cell as a short MLflow key part, its axis values: `unique_tokens=150k` -> `150k`,
        `quality=high,unique_tokens=1B` -> `high_1B` (short, so the runs table's column headers tell cells apart)."""
        values = "_".join(part.split("=", 1)[-1] for part in self.cell.split(","))
        return _BAD_KEY.sub("_", values.replace("/", "-"))


def efficiency_ratio_text(row: pd.Series, suffix: str) -> str:
    """U'/U of one efficiency row on one basis ("" for best, "_final"), with its bound or interval."""
    value, status, bound = row[f"ratio{suffix}"], row[f"status{suffix}"], row[f"bound{suffix}"]
    if value is not None and not pd.isna(value):
        text = ratio(value)
    elif status in ("above_range", "below_range"):
        text = f"{'>' if status == 'above_range' else '<'} {bound:.2g}x"
    else:
        return "not defined"
    low, high = row.get(f"ci_low{suffix}"), row.get(f"ci_high{suffix}")
    if low is not None and not pd.isna(low) and not (low == high and low in (0, math.inf)):  # a bound says it all
        below, above = row.get("ratio_below"), row.get("ratio_above")
        text += f" (CI {ratio(low, below, above)} to {ratio(high, below, above)})"
    return text


def _efficiency_of(analysis: StudyAnalysis, row: pd.Series) -> tuple[dict[str, float], str]:
    """(verdict metrics, phrase) for the cell's MDLM budget from the data-efficiency table: the headline against
    AR's best (early-stopped), the final-vs-final ratio beside it, each with its interval and what it resamples."""
    table = analysis.efficiency.table
    if table.empty or "unique_tokens" not in row or pd.isna(row["unique_tokens"]):
        return {}, ""
    others = [a for a in analysis.axes if a != "unique_tokens"]
    group = ", ".join(f"{a}={row[a]}" for a in others) or "all"
    budget = parse_tokens(str(row["unique_tokens"]))
    hit = table[(table["group"] == group) & np.isclose(table["unique_tokens"].astype(float), budget)]
    if hit.empty:
        return {}, ""
    found = hit.iloc[0]
    metrics = {
        key: float(found[column])
        for key, column in (("efficiency", "ratio"), ("efficiency_final", "ratio_final"))
        if found[column] is not None and not pd.isna(found[column])
    }
    best = efficiency_ratio_text(found, "")
    # a bound of 1 means "below the smallest AR budget, which is U itself" (bound = U_min / U, up to rounding)
    at_most_one = found["status"] == "below_range" and found["bound"] <= 1 + 1e-9
    below_one = at_most_one or metrics.get("efficiency", math.inf) < 1
    ci = f"{analysis.confidence:.0%} intervals over {found['ci_source']}" if found["ci_source"] else "no interval"
    if found["status"] == "ok":
        head = (
            f"data efficiency {best} against AR's best (AR's best needs {format_tokens(found['ar_equivalent'])} unique)"
        )
    elif found["status"] == "above_range":
        head = f"data efficiency {best} against AR's best (MDLM's best beats AR's best at every budget observed)"
    elif found["status"] == "below_range":
        head = f"data efficiency {best} against AR's best (MDLM's best is below AR's best at every budget observed)"
    else:
        head = "data efficiency not defined (too few AR budgets)"
    if below_one:
        head = f"MDLM not more data-efficient than an early-stopped AR: {head}"
    final = efficiency_ratio_text(found, "_final")
    return metrics, f"; {head}; final vs final {final}; {ci}"


def _seeds_of(row: pd.Series) -> tuple[dict[str, float], str]:
    """The spread across seeds where a cell has two or more: each seed pair's own crossover and the standard
    deviation over seeds of AR's best and MDLM's last value."""
    per_seed = row.get("seed_crossover_tokens")
    if not isinstance(per_seed, list | tuple | np.ndarray) or len(per_seed) < 2:
        return {}, ""
    crossings = ", ".join(
        "not crossed" if v == math.inf else "MDLM always ahead" if v == -math.inf else format_tokens(v)
        for v in per_seed
    )
    share = float(np.mean([math.isfinite(v) for v in per_seed]))
    metrics = {
        "seeds_crossed": share,
        "ar_best_sd": float(row["ar_best_sd"]),
        "mdlm_final_sd": float(row["mdlm_final_sd"]),
    }
    return metrics, (
        f"; across {len(per_seed)} seeds: crossover per seed {crossings}, AR's best varies by "
        f"{row['ar_best_sd']:.2g} (sd), MDLM's last by {row['mdlm_final_sd']:.2g}"
    )


STATE_CODE = {CROSSED: 1.0, ALWAYS_AHEAD: 1.0, UNDETERMINED: 0.0, NOT_CROSSED: -1.0}  # the `state` metric


def status_phrase(row: pd.Series | None) -> str:
    if row is None:
        return "no verdict"
    if row["status"] == CROSSED:
        return f"crossed at {format_tokens(float(row['crossover_tokens']), crossover_digits(row))}"
    return {NOT_CROSSED: "not crossed", ALWAYS_AHEAD: "MDLM always ahead", UNDETERMINED: "undetermined"}.get(
        row["status"], "no verdict"
    )


def crossover_digits(row: pd.Series) -> int:
    """The significant figures a cell's crossover positions are quoted to: what its eval grid supports."""
    value = row.get("sig_figs")
    return 2 if value is None or pd.isna(value) else int(value)


def _evidence(row: pd.Series, confidence: float, axis: str) -> str:
    """The interval and what it resampled, or that no interval backs the status."""
    if row.get("ci_low") is None or pd.isna(row.get("ci_low")):
        return "no interval: it needs per-item results or two or more seeds"
    p = row.get("p_crossed")
    chance = "" if p is None or pd.isna(p) else f"; P(crossed) {p:.0%}"
    return (
        f"{confidence:.0%} CI {interval(row['ci_low'], row['ci_high'], axis, crossover_digits(row), unit=True)}{chance}; "
        f"over {row['ci_source']}"
    )


def _head(row: pd.Series, curves, metric: str, confidence: float, axis: str, better: float) -> str:
    """The state, where, and the evidence; both objectives' values at the end beside it."""
    digits = crossover_digits(row)
    at_end = f"at the end AR {curves.ar[-1]:.3g}, MDLM {curves.mdlm[-1]:.3g}"
    window = tokens_and_epochs(curves.tokens[-1], curves.epochs[-1])
    evidence = _evidence(row, confidence, axis)
    estimate = ""
    if row.get("point_status") == CROSSED and row.get("crossover_tokens") is not None:
        tokens, epochs = float(row["crossover_tokens"]), float(row["crossover_epochs"])
        estimate = tokens_and_epochs(tokens, epochs, digits)
    status = row["status"]
    if status == CROSSED:
        return f"MDLM overtakes AR on {metric} at {estimate} ({evidence}); {at_end}"
    if status == NOT_CROSSED:
        lead = abs(better * (curves.ar[-1] - curves.mdlm[-1]))
        return f"not crossed within {window}: AR ahead at the end by {lead:.2g} on {metric} ({evidence}); {at_end}"
    if status == ALWAYS_AHEAD:
        return (
            f"MDLM ahead at every point from {tokens_and_epochs(curves.tokens[0], curves.epochs[0])} on {metric}: no crossover "
            f"inside the window ({evidence}); {at_end}"
        )
    guess = {
        CROSSED: f"the point estimate crosses at {estimate} on {metric}",
        NOT_CROSSED: f"the point estimate on {metric} does not cross",
        ALWAYS_AHEAD: f"the point estimate on {metric} has MDLM ahead throughout",
    }.get(row.get("point_status"), f"on {metric}")
    return (
        f"undetermined within {window}: the evidence cannot tell whether MDLM ends ahead ({guess}; {evidence}); "
        f"{at_end}"
    )


def scoring_tables(analysis: StudyAnalysis) -> dict[str, pd.DataFrame]:
    """The crossovers of every accuracy the task was scored on (the study's metric among them), indexed by cell, in
    the order acc, acc_norm, acc_pmi; empty when the study scored only one."""
    if not analysis.scorings:
        return {}
    tables = {m: a.crossovers.table for m, a in {analysis.metric: analysis, **analysis.scorings}.items()}
    return {
        m: tables[m].set_index("cell") if not tables[m].empty else pd.DataFrame()
        for m in sorted(tables, key=lambda m: SCORINGS.index(m.rsplit("/", 1)[-1]))
    }


def _scorings_of(analysis: StudyAnalysis, cell: str, status: str) -> tuple[float | None, str]:
    """The cell's verdict on each accuracy of the task side by side (raw, per character, PMI), and on how many the
    main metric's verdict holds: (share agreeing, phrase), or (None, "") when the study scored only one."""
    tables = scoring_tables(analysis)
    if not tables:
        return None, ""
    found = {m: t.loc[cell] if cell in t.index else None for m, t in tables.items()}
    parts = ", ".join(f"{m.rsplit('/', 1)[-1]} {status_phrase(row)}" for m, row in found.items())
    agree = [m for m, row in found.items() if row is not None and row["status"] == status]
    if len(agree) == len(found):
        holds = "the same verdict on every scoring"
    elif len(agree) == 1:
        holds = f"this verdict holds on {analysis.metric.rsplit('/', 1)[-1]} only"
    else:
        holds = f"this verdict holds on {len(agree)} of {len(found)} scorings"
    return len(agree) / len(found), f"; by scoring: {parts} ({holds})"


EQUIVALENT_WITHIN = 0.03  # "MDLM's last and AR's best are equivalent" when the whole interval lies inside +-0.03


def _against_ar_best(analysis: StudyAnalysis, cell: str) -> tuple[dict[str, float], str]:
    """MDLM's last against an early-stopped AR (`find_ar_best`: annealed to its validation-chosen stop, or that
    eval point), paired on the test items and seeds: (metrics, phrase); ({}, "") where the cell has none."""
    best = analysis.ar_best.by_cell.get(cell)
    if best is None:
        return {}, ""
    items = "" if "all items" in best.source else ", on the test items" if best.test_items else ", on all items"
    phrase = f"AR's best {best.value:.3g} ({best.source}{items})"
    if best.mdlm_last is not None:
        phrase += f", MDLM's last {best.mdlm_last:.3g}"
    d = best.difference
    if d is None:
        return {}, phrase
    metrics = {"last_minus_best": d.value, "last_minus_best_low": d.low, "last_minus_best_high": d.high}
    return metrics, f"{phrase}: {last_minus_best_text(d, analysis.higher_is_better)}"


def last_minus_best_text(d: Difference, higher_is_better: bool) -> str:
    """ "MDLM's last minus AR's best +0.044 (90% CI ...; what it resampled): cannot tell which is ahead (...)"."""
    better = "MDLM's last minus AR's best" if higher_is_better else "MDLM's advantage over AR's best"
    if d.excludes_zero():
        reading = "MDLM's last surely ahead of an early-stopped AR" if d.low > 0 else "an early-stopped AR surely ahead"
    elif d.within(EQUIVALENT_WITHIN):
        reading = f"equivalent within +-{EQUIVALENT_WITHIN:g}"
    else:
        reading = f"cannot tell which is ahead (neither excludes zero nor lies within +-{EQUIVALENT_WITHIN:g})"
    return f"{better} {d.text(3)}: {reading}"


def verdicts(analysis: StudyAnalysis) -> list[Verdict]:
    """One verdict per cell with curves; cells without both objectives get a line saying what is missing."""
    metric = analysis.metric.removeprefix("eval/")
    better = 1.0 if analysis.higher_is_better else -1.0
    out = []
    for _, row in analysis.crossovers.table.iterrows():
        cell = row["cell"]
        curves = analysis.crossovers.curves.get(cell)
        if row["status"] == "missing mdlm":  # AR alone by design (the spec's exclude), e.g. a budget for U'/U
            counts = " (its AR runs count in the data-efficiency ratios)" if "unique_tokens" in analysis.axes else ""
            out.append(Verdict(cell, f"{cell}: AR only, no crossover: the study has no MDLM trial here{counts}"))
            continue
        if curves is None or row["status"] not in STATE_CODE:
            out.append(Verdict(cell, f"{cell}: no verdict ({str(row['status']).replace('_', ' ')})"))
            continue
        metrics: dict[str, float] = {"crossed": float(row["status"] == CROSSED), "state": STATE_CODE[row["status"]]}
        if row.get("p_crossed") is not None and not pd.isna(row.get("p_crossed")):
            metrics["p_crossed"] = float(row["p_crossed"])
        if row["status"] == CROSSED:
            metrics.update(
                crossover_tokens=float(row["crossover_tokens"]), crossover_epochs=float(row["crossover_epochs"])
            )
        head = _head(row, curves, metric, analysis.confidence, analysis.x_axis, better)
        peak = int(np.argmax(better * curves.ar))
        metrics.update(
            ar_lead_final=float(better * (curves.ar[-1] - curves.mdlm[-1])),
            ar_peak=float(curves.ar[peak]),
            ar_peak_tokens=float(curves.tokens[peak]),
            mdlm_final=float(curves.mdlm[-1]),
        )
        efficiency_metrics, efficiency = _efficiency_of(analysis, row)
        metrics.update(efficiency_metrics)
        share, scorings = _scorings_of(analysis, cell, row["status"])
        if share is not None:
            metrics["scorings_agree"] = share
        best_metrics, tail = _against_ar_best(analysis, cell)
        metrics.update(best_metrics)
        if not tail:  # no AR's best of its own: its best eval point (the lowest for a loss), as it is
            tail = (
                f"AR's best eval point {curves.ar[peak]:.3g} ({format_tokens(curves.tokens[peak])}, "
                f"{significant(curves.epochs[peak])} epochs; chosen on the items that score it, not annealed)"
            )
        seed_metrics, seeds = _seeds_of(row)
        metrics.update(seed_metrics)
        tuning_metrics, tuning = _tuning_of(analysis, cell)
        metrics.update(tuning_metrics)
        line = f"{cell}: {head}; {tail}{seeds}{scorings}{efficiency}{tuning}"
        out.append(Verdict(cell, line, metrics, row["status"]))
    return out


HEADLINE = {"ar": "AR's best", "mdlm": "MDLM's last"}  # what the verdict reads of each objective


def tuning_state(gain: Difference) -> str:
    """The tuning gain in three states: only an interval that excludes zero says tuning moved the value."""
    return "tuning helped" if gain.low > 0 else "tuning hurt" if gain.high < 0 else "cannot tell"


def settings_text(group: TunedObjective) -> str:
    """The winner's sampled values: "lr=0.0031, weight_decay=0.05" (numbers to 3 significant figures)."""

    def value(text: str) -> str:
        try:
            return f"{float(text):.3g}"
        except ValueError:
            return text

    return ", ".join(f"{k}={value(v)}" for k, v in group.settings.items()) or "settings not recorded"


def gain_text(group: TunedObjective) -> str:
    """One objective's tuning gain and its reading: "+0.160 (90% CI ...; what it resampled): tuning helped"."""
    if group.gain is None:
        return "no paired gain (it needs per-item results of the confirm and base runs on the same seeds)"
    return f"{group.gain.text(3)}: {tuning_state(group.gain)}"


def _against_base(group: TunedObjective) -> str:
    """ "AR's best 0.802 against the base's 0.621: +0.182 (90% CI ...): tuning helped"."""
    values = (
        f" {group.confirmed:.3g} against the base's {group.base:.3g}"
        if group.confirmed is not None and group.base is not None
        else ""
    )
    return f"{HEADLINE[group.objective]}{values}: {gain_text(group)}"


def search_text(group: TunedObjective) -> str:
    """ "4 samples: 3 finished, 1 pruned, 0 failed" (and the unfinished, where a search is still running)."""
    text = f"{group.samples} samples: {group.finished} finished, {group.pruned} pruned, {group.failed} failed"
    return text + (f", {group.unfinished} unfinished" if group.unfinished else "")


def selection_text(group: TunedObjective) -> str:
    """The winner's value in its search, said as what it is: "selection score 0.62 on heldout_cloze/acc_pmi's
    validation items (its value in the search: the best of the samples, biased upwards by that choice, the winner's
    curse)"; the direction of the bias is the search metric's."""
    if group.selection_score is None:
        return "selection score not recorded"
    metric = f"{group.selection_metric.removeprefix('eval/')}'s" if group.selection_metric else "the search metric's"
    way = {True: "upwards", False: "downwards"}.get(group.selection_higher, "towards better")
    return (
        f"selection score {group.selection_score:.3g} on {metric} validation items (its value in the search: the best "
        f"of the samples, biased {way} by that choice, the winner's curse)"
    )


def _tuning_of(analysis: StudyAnalysis, cell: str) -> tuple[dict[str, float], str]:
    """A search study's cell: the two winners the verdict compares, and what tuning moved against the base
    settings: (metrics, phrase); ({}, "") for a grid study."""
    groups = analysis.tuning.of_cell(cell)
    if not groups:
        return {}, ""
    seeds = sorted({len(g.seeds) for g in groups})
    winners = "; ".join(
        f"{g.objective.upper()} {settings_text(g)} (search of {search_text(g)}), {selection_text(g)}" for g in groups
    )
    gains = "; ".join(_against_base(g) for g in groups)
    metrics = {
        f"tuning_gain_{g.objective}{suffix}": value
        for g in groups
        if g.gain is not None
        for suffix, value in (("", g.gain.value), ("_low", g.gain.low), ("_high", g.gain.high))
    }
    return metrics, (
        f"; tuned against tuned: the verdict compares each objective's search winner, confirmed on "
        f"{'/'.join(map(str, seeds))} fresh seed{'s' if seeds != [1] else ''}: {winners}; tuning gain, the winner minus the base settings on the "
        f"same seeds and test items (positive: better): {gains}"
    )


def tuning_lines(analysis: StudyAnalysis) -> list[str]:
    """A search study's tuning, one line per cell: for each objective its search (samples finished, pruned,
    failed), its winner's settings, its selection score (its value in the search on the validation items: the best
    of the samples, so biased towards better by the choice, the winner's curse), its score on the test items over the
    confirm seeds with their interval, and the tuning gain against the base settings on the same seeds and items."""
    lines = []
    for cell in dict.fromkeys(cell for cell, _ in sorted(analysis.tuning.by_group)):
        parts = []
        for g in analysis.tuning.of_cell(cell):
            if g.confirmed is None:
                confirmed = "not confirmed yet (no confirm run with an eval point)"
            elif g.score is None:
                confirmed = f"{HEADLINE[g.objective]} {g.confirmed:.3g} on {len(g.seeds)} confirm seeds (no interval)"
            else:
                confirmed = (
                    f"{HEADLINE[g.objective]} {g.confirmed:.3g} on the test items over confirm seeds "
                    f"{', '.join(map(str, g.seeds))} ({analysis.confidence:.0%} CI {g.score.low:.3g} to "
                    f"{g.score.high:.3g}; {g.score.source})"
                )
            base = f"' {g.base:.3g}" if g.base is not None else ""
            parts.append(
                f"{g.objective.upper()}: search of {search_text(g)}; winner {settings_text(g)}, {selection_text(g)}; "
                f"{confirmed}; tuning gain over the base settings{base} (same seeds and test items, positive: better): "
                f"{gain_text(g)}"
            )
        if (untuned := analysis.tuning.untuned.get(cell)) is not None:
            parts.append(
                f"Untuned, the base settings on the same seeds: "
                f"{last_minus_best_text(untuned, analysis.higher_is_better)}"
            )
        lines.append(f"{cell}: " + ". ".join(parts))
    return lines


def loss_verdicts(analysis: StudyAnalysis) -> list[Verdict]:
    """The verdicts on the held-out loss, when the main metric is another (see the module docstring)."""
    if analysis.loss is None:
        return []
    return [
        Verdict(v.cell, v.line.replace("on heldout_loss/loss", "on the held-out loss"), v.metrics)
        for v in verdicts(analysis.loss)
    ]


def delta_nll_lines(analysis: StudyAnalysis) -> list[str]:
    """One line per trial whose held-out loss rose at least 5% after its minimum: did its answers get worse? Read on
    the study's accuracy (acc_pmi by default) as the paired change on the same items from the loss minimum to the
    end, with its interval: "held" (rising loss is not worse answers) only where the whole interval lies above
    -EQUIVALENCE_MARGIN, "fell" only where it lies below 0, "cannot tell" otherwise; without per-item results no
    claim. Delta NLL raw and scale-free beside it."""
    view = analysis.delta_nll
    table = view.table
    if table.empty or view.task is None:
        return []
    name = (view.accuracy or "").removeprefix("eval/")
    margin = EQUIVALENCE_MARGIN
    lines = []
    for _, row in table.iterrows():
        if not row["loss_rise"] >= 0.05:
            continue
        rise = (
            f"{row['trial']}: held-out loss rose {row['loss_rise']:.0%} after its minimum ({row['loss_min']:.3g} at "
            f"{format_tokens(row['loss_min_tokens'])} tokens -> {row['loss_final']:.3g})"
        )
        widened = "widened" if row["delta_nll_final"] > row["delta_nll_at_min"] else "narrowed"
        delta = f"Delta NLL {widened} {row['delta_nll_at_min']:.3g} -> {row['delta_nll_final']:.3g}"
        if "delta_rel_final" in row and not pd.isna(row["delta_rel_final"]):
            delta += f" (scale-free {row['delta_rel_at_min']:.3g} -> {row['delta_rel_final']:.3g})"
        if "acc_final" not in row or pd.isna(row["acc_final"]):
            lines.append(f"{rise}; {delta}; no accuracy logged, so no claim about answers")
            continue
        accuracy = f"{name} {row['acc_at_min']:.3g} -> {row['acc_final']:.3g}"
        ci = row.get("acc_change_ci")
        if not isinstance(ci, tuple):
            lines.append(
                f"{rise}; {accuracy}; {delta}; no per-item results, so no paired interval and no claim about answers"
            )
            continue
        low, high = ci
        change = (
            f"change {row['acc_change']:+.3f} ({analysis.confidence:.0%} CI {low:+.3f} to {high:+.3f}, paired on "
            f"the same items; {row['acc_change_source']})"
        )
        if low > -margin:
            verdict = (
                f"{accuracy} held: {change} lies above -{margin:g}, the equivalence margin: rising loss is not "
                "worse answers here"
            )
        elif high < 0:
            verdict = f"{accuracy} fell: {change} lies below 0: here rising loss did come with worse answers"
        else:
            verdict = f"{accuracy}: cannot tell whether answers got worse ({change} reaches below -{margin:g})"
        lines.append(f"{rise}; {verdict}; {delta}")
    return lines
