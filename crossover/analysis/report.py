"""The report: one list of blocks rendered twice, as self-contained HTML (figures embedded as PNG data, SVG files
linked relatively) and as Markdown (figures referenced relatively), plus CSV tables and a JSON summary; then logged
to the study's parent MLflow run under `report/` so it shows in the MLflow UI."""

from __future__ import annotations

import base64
import html
import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crossover.analysis.analyze import (
    EQUIVALENCE_MARGIN,
    X_COLUMNS,
    DataEfficiency,
    DeltaNll,
    Scaling,
    StudyAnalysis,
    Tuning,
)
from crossover.analysis.axes import axis_verdicts
from crossover.analysis.crossing import ALWAYS_AHEAD, CROSSED, INTERVAL, NOT_CROSSED, UNDETERMINED
from crossover.analysis.curves import StudyData
from crossover.analysis.formatting import interval, missing, number, position
from crossover.analysis.verdict import (
    HEADLINE,
    Verdict,
    delta_nll_lines,
    efficiency_ratio_text,
    loss_verdicts,
    scoring_tables,
    settings_text,
    status_phrase,
    tuning_lines,
    tuning_state,
    verdicts,
)
from crossover.tracking.names import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    REPORT_DIR,
    SEARCH_PARAM_PREFIX,
    STATE_TAG,
    SUMMARY_COLUMNS,
    VERDICT_TAG,
    VIEW_TAG,
    view_state,
)
from crossover.tracking.store import mlflow_client, redact

VIEW_VERDICT_METRICS = (
    "state",
    "p_crossed",
    "crossover_tokens",
    "crossover_epochs",
    "efficiency",
)  # the view's columns

MAX_TABLE_ROWS = 200


@dataclass
class Block:
    kind: str  # h1 | h2 | p | table | figure | list
    content: Any
    caption: str = ""


_AXIS_NAMES = {"tokens": "tokens", "flops": "FLOPs", "epochs": "epochs"}


def _blank(v: Any) -> bool:
    return missing(v) or (isinstance(v, str) and not v.strip())


def _shown_columns(df: pd.DataFrame) -> pd.DataFrame:
    """A report table without its empty columns (no value in any row): an empty column says nothing."""
    return df[[c for c in df.columns if not df[c].map(_blank).all()]]


def _status_text(status: str) -> str:
    return {
        CROSSED: "crossed",
        NOT_CROSSED: "not crossed: AR still ahead at the end",
        ALWAYS_AHEAD: "MDLM ahead at every point",
        UNDETERMINED: "undetermined: cannot tell whether MDLM ends ahead",
    }.get(status, status)


def state_counts(analysis: StudyAnalysis) -> str:
    """ "crossed 1, not crossed 0, undetermined 2 of 3 cells" (MDLM-always-ahead cells counted where there are)."""
    states = analysis.crossovers.table.get("status", pd.Series(dtype=str))
    names = [(CROSSED, "crossed"), (NOT_CROSSED, "not crossed"), (UNDETERMINED, "undetermined")]
    if (states == ALWAYS_AHEAD).any():
        names.append((ALWAYS_AHEAD, "MDLM ahead throughout"))
    return ", ".join(f"{label} {int((states == s).sum())}" for s, label in names) + f" of {len(states)} cells"


def _crossover_table(analysis: StudyAnalysis) -> pd.DataFrame:
    table = analysis.crossovers.table
    if table.empty:
        return table
    axis = analysis.x_axis
    out = pd.DataFrame({"cell": table["cell"]})
    for a in analysis.axes:
        out[a] = table[a]
    out["status"] = table["status"].map(_status_text)
    if "evidence" in table:
        out["decided by"] = [
            "point estimate (no interval)" if e != INTERVAL else f"{analysis.confidence:.0%} interval"
            for e in table["evidence"]
        ]
        out["point estimate"] = table["point_status"].map(_status_text)
    if "reference" in table:
        out["compared with"] = table["reference"].fillna("")
    out[f"crossover ({axis})"] = table.get("x", pd.Series(dtype=float)).map(lambda v: position(v, axis))
    if "ci_low" in table:
        out[f"{analysis.confidence:.0%} CI"] = [
            interval(lo, hi, axis) for lo, hi in zip(table["ci_low"], table["ci_high"], strict=True)
        ]
        out["P(crossed)"] = table["p_crossed"].map(lambda v: "" if v is None or pd.isna(v) else f"{v:.0%}")
        if not (table["ci_source"] == analysis.crossovers.ci_source).all():  # else said once above the report's tables
            out["interval over"] = table["ci_source"].fillna("")
    if "crossover_tokens" in table:
        others = [a for a in X_COLUMNS if a != axis]  # the crossover on the other compute axes, in one column
        out[f"crossover ({' / '.join(_AXIS_NAMES[a] for a in others)})"] = [
            " / ".join(position(row[f"crossover_{a}"], a) for a in others) if not missing(row.get("x")) else ""
            for _, row in table.iterrows()
        ]
        out["observed"] = [interval(s, e, axis) for s, e in zip(table["x_start"], table["x_end"], strict=True)]
        out["AR / MDLM final"] = [
            "" if pd.isna(a) else f"{a:.4g} / {d:.4g}"
            for a, d in zip(table["ar_final"], table["mdlm_final"], strict=True)
        ]
    if "seed_crossover_tokens" in table:  # two or more seeds in some cell: each seed pair's own crossover
        out["per seed"] = [
            ", ".join(position(v, "tokens") for v in per) if isinstance(per, list) else ""
            for per in table["seed_crossover_tokens"]
        ]
        out["sd over seeds: AR best / MDLM last"] = [
            "" if pd.isna(a) else f"{a:.2g} / {d:.2g}"
            for a, d in zip(table["ar_best_sd"], table["mdlm_final_sd"], strict=True)
        ]
    return out


def _efficiency_table(efficiency: DataEfficiency) -> pd.DataFrame:

    t = efficiency.table
    if t.empty:
        return t
    return pd.DataFrame(
        {
            "group": t["group"],
            "MDLM budget U": t["unique_tokens"].map(lambda v: position(v, "tokens")),
            "MDLM best / final": [f"{b:.4g} / {f:.4g}" for b, f in zip(t["mdlm_best"], t["mdlm_final"], strict=True)],
            "AR budget U' of MDLM's best (vs AR's best)": [
                "outside the AR budgets" if missing(v) else position(v, "tokens") for v in t["ar_equivalent"]
            ],
            "U'/U vs AR's best (headline)": [efficiency_ratio_text(r, "") for _, r in t.iterrows()],
            "U'/U final vs final": [efficiency_ratio_text(r, "_final") for _, r in t.iterrows()],
            "interval over": t["ci_source"].fillna("none"),
        }
    )


def _scorings_table(analysis: StudyAnalysis) -> pd.DataFrame:

    out = pd.DataFrame({"cell": analysis.crossovers.table["cell"]})
    for metric, by_cell in scoring_tables(analysis).items():
        out[metric.rsplit("/", 1)[-1]] = [
            status_phrase(by_cell.loc[c]) if c in by_cell.index else "no verdict" for c in out["cell"]
        ]
    return out


def _fit_table(scaling: Scaling) -> pd.DataFrame:
    rows = []
    for label, fit in scaling.fits:
        if fit.identified:
            r_star = f"{fit.r_star:.3g} (x/÷ {fit.r_star_factor:.2g})"
            note = "beyond the repetitions observed" if fit.extrapolated else ""
        elif fit.problems:
            r_star = f"not identified (fit {fit.r_star:.3g})"
            note = "; ".join(fit.problems)
        else:
            r_star = f"not identified (fit {fit.r_star:.3g})"
            note = f"repeats had not lost much value by R = {fit.max_repetitions:.3g}: train longer to measure R_D*"
        if fit.dropped_after_minimum:
            note = "; ".join(
                filter(
                    None,
                    [note, f"{fit.dropped_after_minimum} points after a run's loss minimum left out (overfitting)"],
                )
            )
        rows.append(
            {
                "group": label,
                "objective": fit.objective,
                "R_D*": r_star,
                "E": f"{fit.e:.3g}",
                "B": f"{fit.b:.3g}",
                "beta": f"{fit.beta:.3g}",
                "points": fit.n_points,
                "runs": fit.n_runs,
                "max repetitions": f"{fit.max_repetitions:.3g}",
                "rmse (log loss)": f"{fit.rmse:.2g}",
                "note": note,
            }
        )
    return pd.DataFrame(rows)


def _critical_table(scaling: Scaling) -> pd.DataFrame:
    t = scaling.critical
    if t.empty:
        return t
    return pd.DataFrame(
        {
            "group": t["group"],
            "U": t["unique_tokens"].map(lambda v: position(v, "tokens")),
            "C_crit (fitted laws, FLOPs)": t["critical_flops"].map(
                lambda v: "not within 10,000 epochs" if v is None or pd.isna(v) else f"{v:.3g}"
            ),
            "tokens": t["critical_tokens"].map(lambda v: position(v, "tokens")),
            "epochs": t["critical_epochs"].map(number),
            "Prabhudesai et al. (FLOPs)": t["prabhudesai_flops"].map(lambda v: f"{v:.3g}"),
            "ratio ours/theirs": [
                "" if c is None or pd.isna(c) else f"{c / p:.3g}"
                for c, p in zip(t["critical_flops"], t["prabhudesai_flops"], strict=True)
            ],
            "note": t["note"],
        }
    )


def _delta_table(delta: DeltaNll) -> pd.DataFrame:
    t = delta.table
    if t.empty:
        return t
    out = pd.DataFrame(
        {
            "trial": t["trial"],
            "loss min at": t["loss_min_tokens"].map(lambda v: position(v, "tokens")),
            "loss min -> final": [f"{a:.4g} -> {b:.4g}" for a, b in zip(t["loss_min"], t["loss_final"], strict=True)],
            "loss rise": t["loss_rise"].map(lambda v: f"{v:+.1%}"),
        }
    )
    if "acc_at_min" in t:
        name = (delta.accuracy or "accuracy").rsplit("/", 1)[-1]
        se = t["acc_stderr"] if "acc_stderr" in t else pd.Series(np.nan, index=t.index)
        out[f"{name} at min -> final (± se)"] = [
            f"{a:.3f} -> {b:.3f}" + ("" if pd.isna(e) else f" (± {e:.3f})")
            for a, b, e in zip(t["acc_at_min"], t["acc_final"], se, strict=True)
        ]
    out["Delta NLL at min -> final"] = [
        f"{a:.3g} -> {b:.3g}" for a, b in zip(t["delta_nll_at_min"], t["delta_nll_final"], strict=True)
    ]
    if "delta_rel_final" in t:
        out["scale-free Delta NLL"] = [
            f"{a:.3g} -> {b:.3g}" for a, b in zip(t["delta_rel_at_min"], t["delta_rel_final"], strict=True)
        ]
    return out


def build_blocks(analysis: StudyAnalysis, data: StudyData, figures: dict[str, str]) -> list[Block]:
    """The report, section by section, each read from its stage's result; the verdicts head it."""
    return [
        Block("h1", f"Study {analysis.study}: AR vs MDLM"),
        *_verdict_section(analysis),
        *_tuning_section(analysis),
        _study_facts(analysis, data),
        *_crossover_section(analysis, figures),
        *_efficiency_section(analysis.efficiency, analysis.confidence, figures),
        *_scaling_section(analysis.scaling, figures),
        *_delta_nll_section(analysis.delta_nll, figures),
        *_notes_and_files(analysis),
    ]


def _verdict_section(analysis: StudyAnalysis) -> list[Block]:
    blocks = []
    if lines := [v.line for v in axis_verdicts(analysis)]:
        blocks += [
            Block("h2", "Study verdict"),
            Block("p", "Along each axis the study varies besides the unique budget, against the paper's finding:"),
            Block("list", lines),
        ]
    blocks += [
        Block("h2", "Verdict"),
        Block("list", [v.line for v in verdicts(analysis)] or ["No cell has both AR and MDLM curves."]),
    ]
    if lines := [v.line for v in loss_verdicts(analysis)]:
        blocks += [
            Block(
                "p",
                "On the held-out loss (AR's exact NLL against MDLM's ELBO, an upper bound on its NLL, so "
                "a crossover here is conservative):",
            ),
            Block("list", lines),
        ]
    if lines := delta_nll_lines(analysis):
        blocks += [
            Block(
                "p",
                "Held-out loss rising after its minimum: did the answers get worse? (the Delta NLL "
                "view; the accuracy's change is paired on the same items, and 'held' means its whole "
                f"interval lies above -{EQUIVALENCE_MARGIN:g}, the equivalence margin)",
            ),
            Block("list", lines),
        ]
    return blocks


def _tuning_table(tuning: Tuning) -> pd.DataFrame:
    """One row per (cell, objective) of a search study: its search, winner, scores and tuning gain."""
    rows = []
    for g in tuning.by_group.values():
        row = {
            "cell": g.cell,
            "objective": g.objective,
            "winner": settings_text(g),
            "samples": g.samples,
            "finished": g.finished,
            "pruned": g.pruned,
            "failed": g.failed,
            "winner_run": g.winner_run,
            "selection_score": g.selection_score,
            "read": HEADLINE[g.objective],
            "confirm_seeds": ", ".join(map(str, g.seeds)),
            "confirmed": g.confirmed,
            "confirmed_low": g.score.low if g.score else None,
            "confirmed_high": g.score.high if g.score else None,
            "base": g.base,
            "gain": g.gain.value if g.gain else None,
            "gain_low": g.gain.low if g.gain else None,
            "gain_high": g.gain.high if g.gain else None,
            "gain_over": g.gain.source if g.gain else None,
            "gain_reads": tuning_state(g.gain) if g.gain else None,
        }
        rows.append(row | {f"{SEARCH_PARAM_PREFIX}{k}": v for k, v in g.settings.items()})
    return pd.DataFrame(rows)


def _tuning_section(analysis: StudyAnalysis) -> list[Block]:
    """A search study's tuning: which runs the verdicts compare, each winner's search and the tuning gain."""
    if not analysis.tuning.by_group:
        return []
    return [
        Block("h2", "Tuning: tuned against tuned"),
        Block(
            "p",
            "A search study: each (cell, objective) was tuned on its own (one Optuna search, its samples chosen on "
            "the validation items), and its winner retrained on fresh seeds beside the spec's base settings on the "
            "same seeds. The verdicts above compare the two winners' confirm runs, never the samples or the base "
            "runs. A winner's selection score is the best of its search on the validation items, so it is biased "
            "upwards by the choice (the winner's curse); its score on the test items over the confirm seeds is not. "
            "The tuning gain is the winner minus the base settings, paired on the same seeds and test items (seeds "
            f"and items variance, a t interval at {analysis.confidence:.0%}); 'cannot tell' where its interval "
            "holds 0.",
        ),
        Block("list", tuning_lines(analysis)),
        Block("table", _tuning_table(analysis.tuning)),
    ]


def _study_facts(analysis: StudyAnalysis, data: StudyData) -> Block:
    """What was read: the store, the trials, the metric and axis, the states and what backs them."""
    axis, ci_source = analysis.x_axis, analysis.crossovers.ci_source
    seeds = data.trials.groupby("objective")["seed"].nunique().to_dict()
    runs = f"{len(data.trials)} trial runs"
    if data.searched:
        runs = (
            f"{len(data.trials)} confirm runs (each search winner on fresh seeds; besides them "
            f"{len(data.search_samples)} search samples and {len(data.base_trials)} base runs, not in the curves)"
        )
    return Block(
        "list",
        [
            f"Tracking store: {redact(analysis.tracking_uri)}; {runs} in "
            f"{data.trials['cell'].nunique()} cells; seeds per objective: "
            + ", ".join(f"{k} {v}" for k, v in sorted(seeds.items())),
            f"Metric: {analysis.metric} ({'higher' if analysis.higher_is_better else 'lower'} is better); "
            f"compute axis: {axis} ({X_COLUMNS[axis]}); {data.curves['step'].nunique()} distinct eval points.",
            f"States: {state_counts(analysis)}. Confidence intervals: "
            + (
                f"{analysis.confidence:.0%} over {ci_source}; a state is 'crossed' or 'not crossed' "
                "only where the interval says so, 'undetermined' otherwise"
                if ci_source
                else "none (no per-item results and fewer than two seeds per objective): every state is "
                "'undetermined', the point estimate shown beside it"
            )
            + ".",
            f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `crossover analyze`.",
            *(
                [
                    "Caution: this compares AR's exact held-out NLL with MDLM's ELBO, an upper bound on its NLL, "
                    "so MDLM looks worse than it is and a crossover found here is conservative. The paper reads "
                    "crossovers from downstream accuracy: add heldout_cloze (or another task) to eval.tasks."
                ]
                if analysis.metric.startswith("eval/heldout_loss/")
                else []
            ),
        ],
    )


def _crossover_section(analysis: StudyAnalysis, figures: dict[str, str]) -> list[Block]:
    blocks = [Block("h2", "Crossover per cell")]
    blocks.append(
        Block(
            "p",
            "The crossover is the first point after which the MDLM curve stays ahead of AR to the end of the "
            "observation, found on the AR-MDLM margin smoothed in log compute (LOWESS, robust to single bad "
            "evaluations). The state is the evidence's: 'crossed' only where MDLM ends ahead in at least "
            f"{analysis.confidence:.0%} of the replicates (a one-sided claim at the study's confidence), 'not "
            "crossed' only where AR is as surely ahead at the last point (the crossover, if any, lies beyond the "
            "observed compute), 'undetermined' otherwise; the point estimate's own reading is beside it. An "
            "interval bound 'past the end' or 'before the first point' means some replicates place it "
            "outside the window. P(crossed) is the share of replicates that cross inside it. With one seed the "
            "interval holds item noise only: training noise between seeds is not in it.",
        )
    )
    blocks.append(Block("table", _crossover_table(analysis)))
    if analysis.scorings:
        blocks.append(
            Block(
                "p",
                "The same crossover on each accuracy of the task: raw likelihood (acc), per character "
                "(acc_norm) and PMI (acc_pmi). A verdict that holds on one of them only is weaker "
                "evidence than one that holds on all.",
            )
        )
        blocks.append(Block("table", _scorings_table(analysis)))
    if "cells" in figures:
        blocks.append(
            Block(
                "figure",
                figures["cells"],
                "AR and MDLM curves per cell; dashed: crossover; grey: interval; "
                "dash-dot: chance, where the metric is a multiple-choice accuracy",
            )
        )
    for a in analysis.axes:
        if f"axis:{a}" in figures:
            blocks.append(Block("figure", figures[f"axis:{a}"], f"Crossover against {a.replace('_', ' ')}"))
    return blocks


def _efficiency_section(efficiency: DataEfficiency, confidence: float, figures: dict[str, str]) -> list[Block]:
    blocks = [Block("h2", "Data efficiency")]
    if efficiency.why_empty:
        blocks.append(Block("p", efficiency.why_empty))
    else:
        blocks.append(
            Block(
                "p",
                "For each MDLM unique-token budget U: the AR budget U' that reaches the same performance "
                "(interpolated in log U over the AR budgets observed, never extrapolated) and the ratio U'/U. The "
                "headline compares what each trial reached: its best value over the run (an early-stopped AR, the "
                "baseline a practitioner would use, against MDLM's best). Final vs final compares the last values, "
                "where an AR left to overfit has decayed: a ratio there above the headline measures AR's decay, not "
                f"MDLM's gain. Intervals: {confidence:.0%} bootstrap over what the column 'interval over' "
                "names. The paper reports about 3x.",
            )
        )
        blocks.append(Block("table", _efficiency_table(efficiency)))
        if "efficiency" in figures:
            blocks.append(Block("figure", figures["efficiency"], "U'/U per MDLM budget"))
    return blocks


def _scaling_section(scaling: Scaling, figures: dict[str, str]) -> list[Block]:
    blocks = [Block("h2", "Data-constrained scaling laws")]
    blocks.append(
        Block(
            "p",
            "L(D, U) = E + B / D'^beta with effective data D' = U + U R_D* (1 - exp(-R / R_D*)), R the repetitions "
            "beyond the first epoch (Muennighoff et al.), fitted per objective with a robust loss and several starts, "
            "on the held-out loss after warm-up, each run up to its loss minimum (the law cannot rise); R_D*'s standard error "
            "is a bootstrap over runs. Prabhudesai et al. report R_D* of about 15 for AR and about 500 for "
            "diffusion.",
        )
    )
    if scaling.fits:
        blocks.append(Block("table", _fit_table(scaling)))
    for note in scaling.notes:
        blocks.append(Block("p", note))
    if "scaling" in figures:
        blocks.append(Block("figure", figures["scaling"], "Observed held-out loss and the fitted laws"))
    if not scaling.critical.empty:
        blocks.append(
            Block(
                "p",
                "Critical compute: the training compute beyond which the fitted MDLM law predicts a lower loss than the "
                "AR law, against Prabhudesai et al.'s C_crit(U) = 2.12e15 U^2.174 (U in millions of unique tokens).",
            )
        )
        blocks.append(Block("table", _critical_table(scaling)))
        if scaling.critical_power_law:
            coef, exponent = scaling.critical_power_law
            blocks.append(Block("p", f"Our fit across budgets: C_crit(U) = {coef:.3g} U^{exponent:.3g}."))
    return blocks


def _delta_nll_section(delta: DeltaNll, figures: dict[str, str]) -> list[Block]:
    blocks = [Block("h2", "Delta NLL: does rising loss mean worse answers?")]
    if delta.why_empty:
        blocks.append(Block("p", delta.why_empty))
    else:
        blocks.append(
            Block(
                "p",
                f"Validation loss, accuracy and Delta NLL (mean NLL of the wrong options minus that of the right one) "
                f"on {delta.task}, per trial: from the point of lowest loss to the end of training.",
            )
        )
        blocks.append(Block("table", _delta_table(delta)))
        if "delta" in figures:
            blocks.append(Block("figure", figures["delta"], "Loss, accuracy and Delta NLL over training"))
    return blocks


def _notes_and_files(analysis: StudyAnalysis) -> list[Block]:
    blocks: list[Block] = []
    if analysis.notes:
        blocks.append(Block("h2", "Notes"))
        blocks.append(Block("list", analysis.notes))
    tables = _csv_tables(analysis)
    written = [name for name, (table, _) in tables.items() if not table.empty]
    files = [f"Beside this report: {', '.join(written) or 'no CSV table'} and summary.json."]
    files += [f"No {name}: {why.rstrip('.')}." for name, why in _unwritten(analysis)]
    blocks += [Block("h2", "Files"), Block("list", files)]
    return blocks


def _md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "(none)"
    shown = _shown_columns(df.head(MAX_TABLE_ROWS))
    cells = [[str(v).replace("|", "\\|") for v in row] for row in shown.itertuples(index=False)]
    lines = ["| " + " | ".join(map(str, shown.columns)) + " |", "|" + "---|" * len(shown.columns)]
    lines += ["| " + " | ".join(r) + " |" for r in cells]
    if len(df) > MAX_TABLE_ROWS:
        lines.append(f"\n{len(df) - MAX_TABLE_ROWS} more rows in the CSV files beside this report.")
    return "\n".join(lines)


def render_markdown(blocks: list[Block]) -> str:
    parts = []
    for b in blocks:
        if b.kind == "h1":
            parts.append(f"# {b.content}")
        elif b.kind == "h2":
            parts.append(f"## {b.content}")
        elif b.kind == "p":
            parts.append(str(b.content))
        elif b.kind == "list":
            parts.append("\n".join(f"- {item}" for item in b.content))
        elif b.kind == "table":
            parts.append(_md_table(b.content))
        elif b.kind == "figure":
            svg = b.content.replace(".png", ".svg")
            parts.append(f"![{b.caption}](figures/{b.content})\n\n*{b.caption}* ([SVG](figures/{svg}))")
    return "\n\n".join(parts) + "\n"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222;
padding:0 1rem;line-height:1.45}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
.table{overflow-x:auto;margin:.6rem 0}table{border-collapse:collapse;font-size:.82rem}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top;overflow-wrap:break-word}
th{background:#f4f4f4}
figure{margin:1rem 0}img{max-width:100%;height:auto;border:1px solid #eee}figcaption{font-size:.85rem;color:#555}
#image-warning{display:none;background:#fde2e2;padding:.5rem;border:1px solid #e99}
"""

# Marks the page once every figure has loaded (data-images="loaded/total"), and shows a warning if one did not;
# data-wide-tables: how many tables are wider than their box (then they scroll in it), " page" if the page itself is.
CHECK_IMAGES = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
  if (ok < imgs.length) { document.getElementById('image-warning').style.display = 'block'; }
  var wide = Array.prototype.slice.call(document.querySelectorAll('div.table')).filter(function (t) {
    return t.scrollWidth > t.clientWidth + 1; }).length;
  document.body.setAttribute('data-wide-tables', wide + (document.documentElement.scrollWidth >
    document.documentElement.clientWidth + 1 ? ' page' : ''));
});
"""


def render_html(blocks: list[Block], figure_dir: Path, title: str) -> str:
    e = html.escape
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>",
        '<p id="image-warning">Some figures failed to load.</p>',
    ]
    for b in blocks:
        if b.kind == "h1":
            parts.append(f"<h1>{e(b.content)}</h1>")
        elif b.kind == "h2":
            parts.append(f"<h2>{e(b.content)}</h2>")
        elif b.kind == "p":
            parts.append(f"<p>{e(str(b.content))}</p>")
        elif b.kind == "list":
            parts.append("<ul>" + "".join(f"<li>{e(str(i))}</li>" for i in b.content) + "</ul>")
        elif b.kind == "table":
            df = b.content
            if df.empty:
                parts.append("<p>(none)</p>")
                continue
            shown = _shown_columns(df.head(MAX_TABLE_ROWS))
            head = "".join(f"<th>{e(str(c))}</th>" for c in shown.columns)
            body = "".join(
                "<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in row) + "</tr>"
                for row in shown.itertuples(index=False)
            )
            parts.append(f'<div class="table"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>')
            if len(df) > MAX_TABLE_ROWS:
                parts.append(f"<p>{len(df) - MAX_TABLE_ROWS} more rows in the CSV files beside this report.</p>")
        elif b.kind == "figure":
            data = base64.b64encode((figure_dir / b.content).read_bytes()).decode()
            svg = b.content.replace(".png", ".svg")
            parts.append(
                f'<figure><img alt="{e(b.caption)}" src="data:image/png;base64,{data}">'
                f'<figcaption>{e(b.caption)} (<a href="figures/{e(svg)}">SVG</a>)</figcaption></figure>'
            )
    parts.append(f"<script>{CHECK_IMAGES}</script></body></html>")
    return "\n".join(parts)


def _csv_tables(analysis: StudyAnalysis) -> dict[str, tuple[pd.DataFrame, str]]:
    """The report's CSV files: name -> (table, why it is empty when it is; an empty table is not written); a search
    study's tuning.csv besides."""
    tuning = {"tuning.csv": (_tuning_table(analysis.tuning), "")} if analysis.tuning.by_group else {}
    return tuning | {
        "crossovers.csv": (analysis.crossovers.table, "no cell has both AR and MDLM curves"),
        "efficiency.csv": (analysis.efficiency.table, analysis.efficiency.why_empty or "no MDLM budget to compare"),
        "scaling.csv": (_fit_frame(analysis.scaling), "no scaling law was fitted (the scaling laws' section says why)"),
        "critical_compute.csv": (
            analysis.scaling.critical,
            "no critical compute: it needs a fitted scaling law for both AR and MDLM in a group",
        ),
        "delta_nll.csv": (analysis.delta_nll.table, analysis.delta_nll.why_empty or "no Delta NLL view"),
    }


def _unwritten(analysis: StudyAnalysis) -> list[tuple[str, str]]:
    """(file, why) for each CSV file the report leaves out because its table has no row."""
    return [(name, why) for name, (table, why) in _csv_tables(analysis).items() if table.empty]


def _draw(analysis: StudyAnalysis, data: StudyData, figure_dir: Path) -> dict[str, str]:
    import matplotlib  # lazy: matplotlib only when figures are drawn (seconds to import)

    matplotlib.use("Agg", force=True)
    from crossover.analysis import plots  # lazy: matplotlib, as above

    figures: dict[str, str] = {}
    drawings: list[tuple[str, str, Any]] = [("cells", "curves", lambda: plots.cell_curves(analysis, data))]
    for a in analysis.axes:
        drawings.append((f"axis:{a}", f"crossover_vs_{a}", lambda a=a: plots.crossover_vs_axis(analysis, a)))
    drawings += [
        ("efficiency", "efficiency", lambda: plots.efficiency_bars(analysis)),
        ("scaling", "scaling_fits", lambda: plots.scaling_fits(analysis, data)),
        ("delta", "delta_nll", lambda: plots.delta_nll_view(analysis, data)),
    ]
    for key, name, draw in drawings:
        fig = draw()
        if fig is not None:
            figures[key] = plots.save(fig, figure_dir, name)
    return figures


def _json_value(v: Any) -> Any:
    """JSON has no infinity: interval bounds outside the window are written as the strings "inf" / "-inf"."""
    if isinstance(v, float):
        if math.isnan(v):
            return None
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
    if isinstance(v, list | tuple):  # per-seed crossovers
        return [_json_value(x) for x in v]
    if hasattr(v, "item"):  # numpy scalars
        return _json_value(v.item())
    return v


def _json_ready(df: pd.DataFrame) -> list[dict]:
    return [{k: _json_value(v) for k, v in row.items()} for row in df.to_dict("records")]


def write_report(analysis: StudyAnalysis, data: StudyData, out_dir: Path | str, log_to_mlflow: bool = False) -> Path:
    """Write report.html, report.md, figures/, CSV tables and summary.json into `out_dir` (replacing an earlier
    report there; written aside first so a failure leaves no half report), and, with `log_to_mlflow`, log them to
    the study's parent run (`log_report`). Returns the HTML path."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        figures = _draw(analysis, data, staging / "figures")
        blocks = build_blocks(analysis, data, figures)
        (staging / "report.md").write_text(render_markdown(blocks))
        title = f"crossover report: {analysis.study}"
        (staging / "report.html").write_text(render_html(blocks, staging / "figures", title))
        for name, (table, _) in _csv_tables(analysis).items():
            if not table.empty:
                table.to_csv(staging / name, index=False)
        summary = {
            "study": analysis.study,
            "metric": analysis.metric,
            "x_axis": analysis.x_axis,
            "higher_is_better": analysis.higher_is_better,
            "confidence": analysis.confidence,
            "ci_source": analysis.crossovers.ci_source,
            "axis_verdicts": [
                {"axis": v.axis, "group": v.group, "line": v.line, **v.metrics, "agreement": v.agreement}
                for v in axis_verdicts(analysis)
            ],
            "states": state_counts(analysis),
            "verdicts": [{"cell": v.cell, "line": v.line, **v.metrics, "state": v.state} for v in verdicts(analysis)],
            "loss_verdicts": [{"cell": v.cell, "line": v.line, **v.metrics} for v in loss_verdicts(analysis)],
            "delta_nll": delta_nll_lines(analysis),
            "crossovers": _json_ready(analysis.crossovers.table),
            "efficiency": _json_ready(analysis.efficiency.table),
            "scaling": _json_ready(_fit_frame(analysis.scaling)),
            "critical_compute": _json_ready(analysis.scaling.critical),
            "notes": [*analysis.notes, *analysis.scaling.notes],
            "not_written": {name: why for name, why in _unwritten(analysis)},
        }
        if analysis.tuning.by_group:  # a search study
            summary |= {"tuning": tuning_lines(analysis), "tuning_groups": _json_ready(_tuning_table(analysis.tuning))}
        (staging / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.chmod(0o755)  # mkdtemp makes it private
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if log_to_mlflow:
        log_report(data, out_dir, [*axis_verdicts(analysis), *verdicts(analysis)])
    return out_dir / "report.html"


def log_report(data: StudyData, out_dir: Path | str, lines: list[Verdict] = ()) -> str | None:
    """Log the report directory to the study's parent run under `report/`, and the verdicts (`log_verdicts`);
    returns the run id (None: no parent)."""
    if not data.parent_run_id:
        return None
    mlflow_client(data.tracking_uri).log_artifacts(data.parent_run_id, str(out_dir), REPORT_DIR)
    log_verdicts(data, lines)
    return data.parent_run_id


def log_verdicts(data: StudyData, lines: list[Verdict]) -> None:
    """Each verdict on the study's parent run, as the tag `crossover.verdict.<cell>` and metrics
    `verdict/<cell>/<name>`, and the experiment's saved view showing those columns beside the trials' summaries."""
    if not data.parent_run_id:
        return
    from mlflow.entities import Metric, RunTag  # lazy: MLflow only when results are logged back

    client = mlflow_client(data.tracking_uri)
    now = int(datetime.now(timezone.utc).timestamp() * 1000)
    tags = [RunTag(f"{VERDICT_TAG}.{v.key}", v.line[:5000]) for v in lines]
    tags += [RunTag(f"{STATE_TAG}.{v.key}", v.state) for v in lines if v.state]
    metrics = [Metric(f"verdict/{v.key}/{name}", value, now, 0) for v in lines for name, value in v.metrics.items()]
    for start in range(0, max(len(tags), len(metrics)), 100):  # MLflow takes at most 100 tags per batch
        client.log_batch(data.parent_run_id, metrics=metrics[start : start + 100], tags=tags[start : start + 100])
    shown = [f"verdict/{v.key}/{name}" for v in lines for name in VIEW_VERDICT_METRICS if name in v.metrics]
    client.set_experiment_tag(data.experiment_id, VIEW_TAG, view_state([*SUMMARY_COLUMNS, *shown]))
    client.set_experiment_tag(data.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


def _fit_frame(scaling: Scaling) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "group": label,
                "objective": f.objective,
                "r_star": f.r_star,
                "r_star_factor": f.r_star_factor,
                "e": f.e,
                "b": f.b,
                "beta": f.beta,
                "n_points": f.n_points,
                "max_repetitions": f.max_repetitions,
                "rmse": f.rmse,
                "extrapolated": f.extrapolated,
                "identified": f.identified,
            }
            for label, f in scaling.fits
        ]
    )
