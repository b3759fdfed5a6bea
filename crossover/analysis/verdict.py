"""The answer in one line per cell: did MDLM overtake AR, where, with what certainty, and by how much in data.

    verdicts(analysis) -> [Verdict(cell, line, metrics)]

Lines read, for the study's metric (cloze accuracy by default):
    unique_tokens=50k: MDLM overtakes AR on heldout_cloze/acc_pmi at 1.35M tokens (27 epochs; 90% CI 975k to 1.93M);
        AR's best 0.555 (127k, 2.54 epochs), MDLM's last 0.539; MDLM not more data-efficient than an early-stopped
        AR: data efficiency < 1x against AR's best (...); final vs final 2.1x (CI 1.6x to 2.8x); 90% intervals
        over items, 1 seed
    unique_tokens=600k: not crossed within 4.8M tokens (8 epochs); AR ahead by 0.061 at the end; ...
    unique_tokens=16M: MDLM ahead at every point from 65k tokens (0.004 epochs): no crossover inside the window; ...

`loss_verdicts` gives the same lines for the held-out loss (AR's exact NLL against MDLM's ELBO, a bound: a loss
crossover found this way is conservative) and `delta_nll_lines` the Delta NLL view: trials whose held-out loss rose
after its minimum while the gap between wrong and right answers kept widening.

They head the report and `crossover analyze`'s output, and are logged on the study's parent MLflow run: a tag
`crossover.verdict.<cell>` with the line, and metrics `verdict/<cell>/...` (crossed 1/0, crossover tokens and epochs,
AR's lead at the end, AR's peak, MDLM's final value, the efficiency ratio against AR's best and final vs final,
and with several seeds the share of seed pairs that crossed and the spread over seeds) that the runs table can show
as columns. With two or more seeds a line also gives each seed pair's own crossover and that spread, and the
intervals resample seeds, then items.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from crossover.analysis.analyze import SCORINGS, StudyAnalysis
from crossover.analysis.crossing import ALWAYS_AHEAD, CROSSED, NOT_CROSSED
from crossover.specs import format_tokens, parse_tokens

_BAD_KEY = re.compile(r"[^\w.\- /]")


@dataclass
class Verdict:
    cell: str
    line: str
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The cell as a short MLflow key part, its axis values: `unique_tokens=150k` -> `150k`,
        `quality=high,unique_tokens=1B` -> `high_1B` (short, so the runs table's column headers tell cells apart)."""
        values = "_".join(part.split("=", 1)[-1] for part in self.cell.split(","))
        return _BAD_KEY.sub("_", values.replace("/", "-"))


def _epochs(v: float) -> str:
    return f"{v:.3g}"


def _where(tokens: float, epochs: float) -> str:
    return f"{format_tokens(tokens)} tokens ({_epochs(epochs)} epochs)"


def _x(v: float | None, axis: str) -> str:
    if v is None or pd.isna(v):
        return "?"
    if math.isinf(v):
        return "beyond the end" if v > 0 else "before the start"
    return format_tokens(v) if axis == "tokens" else f"{v:.3g} {axis}"


def _ratio(v: float) -> str:
    return "above the AR budgets" if math.isinf(v) else ("below the AR budgets" if v == 0 else f"{v:.2g}x")


def efficiency_ratio_text(row: pd.Series, suffix: str) -> str:
    """U'/U of one efficiency row on one basis ("" for best, "_final"), with its bound or interval."""
    ratio, status, bound = row[f"ratio{suffix}"], row[f"status{suffix}"], row[f"bound{suffix}"]
    if ratio is not None and not pd.isna(ratio):
        text = f"{ratio:.2g}x"
    elif status in ("above_range", "below_range"):
        text = f"{'>' if status == 'above_range' else '<'} {bound:.2g}x"
    else:
        return "not defined"
    low, high = row.get(f"ci_low{suffix}"), row.get(f"ci_high{suffix}")
    if low is not None and not pd.isna(low) and not (low == high and low in (0, math.inf)):  # a bound says it all
        text += f" (CI {_ratio(low)} to {_ratio(high)})"
    return text


def _efficiency_of(analysis: StudyAnalysis, row: pd.Series) -> tuple[dict[str, float], str]:
    """(verdict metrics, phrase) for the cell's MDLM budget from the data-efficiency table: the headline against
    AR's best (early-stopped), the final-vs-final ratio beside it, each with its interval and what it resamples."""
    table = analysis.efficiency
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


def status_phrase(row: pd.Series | None) -> str:
    if row is None:
        return "no verdict"
    if row["status"] == CROSSED:
        return f"crossed at {format_tokens(float(row['crossover_tokens']))}"
    return {NOT_CROSSED: "not crossed", ALWAYS_AHEAD: "MDLM always ahead"}.get(row["status"], "no verdict")


def scoring_tables(analysis: StudyAnalysis) -> dict[str, pd.DataFrame]:
    """The crossovers of every accuracy the task was scored on (the study's metric among them), indexed by cell, in
    the order acc, acc_norm, acc_pmi; empty when the study scored only one."""
    if not analysis.scorings:
        return {}
    tables = {analysis.metric: analysis.crossovers, **{m: a.crossovers for m, a in analysis.scorings.items()}}
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


def verdicts(analysis: StudyAnalysis) -> list[Verdict]:
    """One verdict per cell with curves; cells without both objectives get a line saying what is missing."""
    metric = analysis.metric.removeprefix("eval/")
    better = 1.0 if analysis.higher_is_better else -1.0
    out = []
    for _, row in analysis.crossovers.iterrows():
        cell = row["cell"]
        curves = analysis.cells.get(cell)
        if curves is None or row["status"] not in (CROSSED, NOT_CROSSED, ALWAYS_AHEAD):
            out.append(Verdict(cell, f"{cell}: no verdict ({str(row['status']).replace('_', ' ')})"))
            continue
        metrics: dict[str, float] = {"crossed": float(row["status"] == CROSSED)}
        if row["status"] == CROSSED:
            tokens, epochs = float(row["crossover_tokens"]), float(row["crossover_epochs"])
            ci = ""
            if row.get("ci_low") is not None and not pd.isna(row.get("ci_low")):
                ci = f"; {analysis.confidence:.0%} CI {_x(row['ci_low'], analysis.x_axis)} to " \
                     f"{_x(row['ci_high'], analysis.x_axis)}"  # fmt: skip
            head = f"MDLM overtakes AR on {metric} at {format_tokens(tokens)} tokens ({_epochs(epochs)} epochs{ci})"
            metrics.update(crossover_tokens=tokens, crossover_epochs=epochs)
        elif row["status"] == NOT_CROSSED:
            lead = better * (curves.ar[-1] - curves.mdlm[-1])
            head = (
                f"not crossed within {_where(curves.tokens[-1], curves.epochs[-1])}; "
                f"AR ahead by {abs(lead):.3g} at the end"
            )
        else:
            head = (
                f"MDLM ahead at every point from {_where(curves.tokens[0], curves.epochs[0])}: no crossover inside "
                "the window"
            )
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
        tail = (
            f"AR's best {curves.ar[peak]:.3g} ({format_tokens(curves.tokens[peak])}, "
            f"{_epochs(curves.epochs[peak])} epochs), MDLM's last {curves.mdlm[-1]:.3g}"
        )
        seed_metrics, seeds = _seeds_of(row)
        metrics.update(seed_metrics)
        out.append(Verdict(cell, f"{cell}: {head}; {tail}{seeds}{scorings}{efficiency}", metrics))
    return out


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
    the study's accuracy (acc_pmi by default): "rising loss is not worse answers" only where the final accuracy is at
    least the accuracy at the loss minimum minus one standard error (the larger of the two logged); the plain
    opposite where it fell further; no claim without a standard error. Delta NLL raw and scale-free beside it."""
    table = analysis.delta_nll
    if table.empty or analysis.delta_task is None:
        return []
    name = (analysis.delta_accuracy or "").removeprefix("eval/")
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
        se = row.get("acc_stderr")
        if se is None or pd.isna(se):
            lines.append(f"{rise}; {accuracy}; {delta}; no standard error logged, so no claim about answers")
        elif row["acc_final"] >= row["acc_at_min"] - se:
            lines.append(f"{rise} while {accuracy} held (within one standard error, {se:.2g}): rising loss is not "
                         f"worse answers here; {delta}")  # fmt: skip
        else:
            lines.append(f"{rise} and {accuracy} fell by more than one standard error ({se:.2g}): here rising loss "
                         f"did come with worse answers; {delta}")  # fmt: skip
    return lines
