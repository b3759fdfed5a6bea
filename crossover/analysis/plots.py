"""Figures of the report, drawn with matplotlib's Agg canvas (no display, no global pyplot state): PNG and SVG."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from crossover.analysis.analyze import LOSS_METRIC, StudyAnalysis, _other_axes_key
from crossover.analysis.crossing import ALWAYS_AHEAD, CROSSED, NOT_CROSSED, UNDETERMINED
from crossover.analysis.curves import StudyData
from crossover.analysis.formatting import missing, ratio
from crossover.specs import format_tokens, parse_tokens

if TYPE_CHECKING:
    from matplotlib.figure import Figure  # lazy: matplotlib (seconds); verdicts and `crossover status` need none

from matplotlib.ticker import NullLocator

AR_COLOR, MDLM_COLOR = "#1f5fa8", "#c0392b"
COLORS = {"ar": AR_COLOR, "mdlm": MDLM_COLOR}
MAX_CELLS = 12
MAX_LINES = 8
QUALITY_ORDER = {"low": 0, "medium": 1, "high": 2, "all": 3}
TOKEN_AXES = ("unique_tokens", "total_tokens", "warmup_tokens", "global_batch_tokens")
X_LABELS = {"tokens": "training tokens", "flops": "training FLOPs", "epochs": "epochs"}


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure  # lazy: matplotlib (seconds); verdicts and `crossover status` need none

    return Figure(figsize=(width, height), layout="constrained")


def save(fig: Figure, directory: Path, name: str) -> str:
    """Write name.png and name.svg; return the PNG's file name."""
    directory.mkdir(parents=True, exist_ok=True)
    fig.savefig(directory / f"{name}.png", dpi=100)
    fig.set_layout_engine("none")  # laid out once for the PNG; the SVG reuses it (layout is most of the cost)
    fig.savefig(directory / f"{name}.svg")
    return f"{name}.png"


def _short(cell: str, width: int = 42) -> str:
    return cell if len(cell) <= width else cell[: width - 1] + "…"


def _pick(items: list[str], limit: int) -> list[str]:
    """At most `limit` items, evenly spread over the list (so a large study still shows its range)."""
    if len(items) <= limit:
        return items
    index = np.unique(np.linspace(0, len(items) - 1, limit).round().astype(int))
    return [items[i] for i in index]


def _clip_ci(ci: tuple[float, float] | None, lo: float, hi: float) -> tuple[float, float] | None:
    if ci is None:
        return None
    a, b = (min(max(v, lo), hi) for v in ci)  # -inf: before the window, +inf: beyond it
    return (a, b) if b > a else None


def chance_level(curves: pd.DataFrame | None, metric: str) -> float | None:
    """The accuracy a guess gets on `metric`'s multiple-choice task: the mean of 1 / choices per item, which the task
    logs as eval/<task>/chance. None for a metric that is no accuracy, or a task that logs no chance level."""
    parts = metric.split("/")
    if curves is None or len(parts) != 3 or not parts[2].startswith("acc") or parts[2].endswith("_stderr"):
        return None
    column = f"eval/{parts[1]}/chance"
    if column not in curves or not curves[column].notna().any():
        return None
    return float(curves[column].mean())


def _chance_line(ax, chance: float | None) -> None:
    """The chance level as a dash-dot line, labelled on the panel itself (and in its legend, where it has one)."""
    if chance is not None:
        ax.axhline(chance, color="#777777", ls="-.", lw=0.9, label=f"chance ({chance:.3g})")
        where = ax.get_yaxis_transform()  # x in axes fractions, y in data
        ax.text(0.99, chance, "chance", transform=where, ha="right", va="bottom", fontsize=7, color="#555555")


def cell_curves(analysis: StudyAnalysis, data: StudyData | None = None) -> Figure | None:
    """AR and MDLM curves of each cell, the crossover and its interval marked; the chance level of an accuracy on a
    multiple-choice task (read from `data`'s curves) as a line."""
    matched = analysis.crossovers.curves
    cells = _pick(list(matched), MAX_CELLS)
    if not cells:
        return None
    ncol = min(4, len(cells))
    nrow = math.ceil(len(cells) / ncol)
    fig = _figure(3.6 * ncol, 2.8 * nrow)
    axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False).ravel())
    chance = chance_level(data.curves if data is not None else None, analysis.metric)
    for ax, cell in zip(axes, cells, strict=False):
        curve, result = matched[cell], analysis.crossovers.results[cell]
        ax.plot(curve.x, curve.ar, "o-", color=AR_COLOR, ms=3, lw=1.2, label="AR")
        ax.plot(curve.x, curve.mdlm, "s-", color=MDLM_COLOR, ms=3, lw=1.2, label="MDLM")
        ax.set_xscale("log")
        lo, hi = float(curve.x[0]), float(curve.x[-1])
        ci = _clip_ci(result.ci, lo, hi)
        if ci:
            ax.axvspan(*ci, color="#999999", alpha=0.18, lw=0, label=f"{analysis.confidence:.0%} CI")
        if result.status == CROSSED and result.x is not None:
            ax.axvline(result.x, color="black", ls="--", lw=1, label="crossover")
        elif result.status == UNDETERMINED and result.x is not None:
            ax.axvline(result.x, color="black", ls=":", lw=1, label="point estimate (undetermined)")
        status = {
            NOT_CROSSED: "AR ahead at the end",
            ALWAYS_AHEAD: "MDLM ahead throughout",
            UNDETERMINED: "undetermined",
        }.get(result.status)
        ax.set_title(_short(cell) + (f"\n({status})" if status else ""), fontsize=9)
        _chance_line(ax, chance)
        ax.set_xlabel(X_LABELS[analysis.x_axis], fontsize=8)
        ax.set_ylabel(analysis.metric.removeprefix("eval/"), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.25, which="both")
    for ax in axes[len(cells) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7, loc="best")
    shown = f" ({len(cells)} of {len(matched)} cells)" if len(cells) < len(matched) else ""
    fig.suptitle(f"{analysis.metric} against {X_LABELS[analysis.x_axis]}{shown}", fontsize=11)
    return fig


def _axis_position(axis: str, labels: pd.Series, size: pd.Series | None = None) -> tuple[np.ndarray, list[str], bool]:
    """Numeric positions for an axis' readable values: token counts and numbers as such; categories in a meaningful
    order (quality low -> high, clean noise first, models and sparsity by FLOPs per token), else as they come."""
    values = list(dict.fromkeys(labels))
    if axis in TOKEN_AXES:
        numbers = {v: float(parse_tokens(v)) for v in values}
        return labels.map(numbers).to_numpy(float), [], True
    try:
        numbers = {v: float(v) for v in values}
        return labels.map(numbers).to_numpy(float), [], True
    except ValueError:
        pass
    if axis == "quality":
        values.sort(key=lambda v: QUALITY_ORDER.get(v, 9))
    elif axis == "noise":
        values.sort(key=lambda v: (v != "clean", v))
    elif size is not None and size.notna().any():
        per_label = size.groupby(labels.to_numpy()).mean()
        values.sort(key=lambda v: per_label.get(v, np.inf))
    return labels.map({v: i for i, v in enumerate(values)}).to_numpy(float), values, False


def crossover_vs_axis(analysis: StudyAnalysis, axis: str) -> Figure | None:
    """The crossover (with its interval) against one varied axis; one line per combination of the other axes."""
    table = analysis.crossovers.table
    if axis not in table or "x" not in table:
        return None
    table = table[table["status"].isin([CROSSED, NOT_CROSSED, ALWAYS_AHEAD, UNDETERMINED])].copy()
    if table.empty:
        return None
    others = [a for a in analysis.axes if a != axis]
    table["_group"] = table[others].astype(str).agg(", ".join, axis=1) if others else "all"
    pos, categories, numeric = _axis_position(axis, table[axis].astype(str), table.get("flops_per_token"))
    table["_pos"] = pos
    groups = list(dict.fromkeys(table["_group"]))
    fig = _figure(6.4, 4.2)
    ax = fig.subplots()
    aggregate = len(groups) > MAX_LINES
    if aggregate:  # many groups: the median crossover over the other axes, with the spread as error bars
        crossed = table[table["status"] == CROSSED]
        stats = crossed.groupby("_pos")["x"].agg(["median", "min", "max", "size"]).reset_index()
        ax.errorbar(
            stats["_pos"],
            stats["median"],
            yerr=[stats["median"] - stats["min"], stats["max"] - stats["median"]],
            fmt="o-",
            color=MDLM_COLOR,
            capsize=3,
            label=f"median over {len(groups)} combinations of {', '.join(others)} (bars: range)",
        )
        shares = table.groupby("_pos")["status"].apply(lambda s: (s == CROSSED).mean()).to_dict()
    else:
        cmap = _colors(len(groups))
        # categories: shift each line a little sideways so equal points of two lines (two configurations not
        # crossed by the same end) both show
        dodge = 0.0 if numeric or len(groups) == 1 else 0.12 / (len(groups) - 1)
        for i, (color, group) in enumerate(zip(cmap, groups, strict=True)):
            sub = table[table["_group"] == group].sort_values("_pos")
            sub["_pos"] = sub["_pos"] + (i - (len(groups) - 1) / 2) * dodge
            crossed = sub[sub["status"] == CROSSED]
            label = group if group != "all" else "crossover"
            if not crossed.empty:
                low = np.where(np.isfinite(crossed["ci_low"].astype(float)), crossed["ci_low"], crossed["x_start"])
                high = np.where(np.isfinite(crossed["ci_high"].astype(float)), crossed["ci_high"], crossed["x_end"])
                has_ci = crossed["ci_low"].notna().to_numpy()
                yerr = np.vstack([np.where(has_ci, crossed["x"] - low, 0), np.where(has_ci, high - crossed["x"], 0)])
                ax.errorbar(
                    crossed["_pos"],
                    crossed["x"],
                    yerr=np.clip(yerr.astype(float), 0, None),
                    fmt="o-",
                    color=color,
                    capsize=3,
                    label=label,
                )
            suffix = "" if group == "all" else f" ({group})"
            for status, where, marker, size, label in HOLLOW_MARKERS:
                rows = sub[sub["status"] == status]
                ax.scatter(
                    rows["_pos"],
                    where(rows),
                    marker=marker,
                    facecolors="none",
                    edgecolors=color,
                    s=size,
                    label=f"{label}{suffix}" if not rows.empty else None,
                )
    _log_y(ax, analysis.x_axis)
    if numeric:
        ax.set_xscale("log" if axis in TOKEN_AXES or (pos > 0).all() and pos.max() / pos.min() > 20 else "linear")
    if numeric and (axis in TOKEN_AXES or aggregate):
        ticks = sorted(set(pos))
        labels = [format_tokens(t) if axis in TOKEN_AXES else f"{t:g}" for t in ticks]
        ax.xaxis.set_minor_locator(NullLocator())
    elif not numeric:
        ticks, labels = list(range(len(categories))), list(categories)
    else:
        ticks, labels = [], []
    if ticks:
        if aggregate:  # the share of combinations that crossed, under each value
            labels = [f"{label}\n{shares.get(t, 0):.0%} crossed" for label, t in zip(labels, ticks, strict=True)]
        ax.set_xticks(ticks, labels, fontsize=7 if aggregate else 8, rotation=20 if len(ticks) > 6 else 0)
    ax.set_xlabel(axis.replace("_", " "))
    ax.set_ylabel(f"crossover ({X_LABELS[analysis.x_axis]})")
    ax.grid(alpha=0.25, which="both")
    ax.legend(fontsize=7, loc="best")
    ax.set_title(f"Crossover against {axis.replace('_', ' ')} ({analysis.metric})", fontsize=10)
    return fig


def _point_estimate_or_edge(rows: pd.DataFrame) -> pd.Series:
    """Undetermined cells sit at their point estimate, or at the window's edge where it has none."""
    edge = np.where(rows["point_status"] == NOT_CROSSED, rows["x_end"], rows["x_start"])
    return rows["x"].where(rows["x"].notna(), edge)


# Cells without a crossover to place, drawn hollow: (status, where on the y axis, marker, size, legend)
HOLLOW_MARKERS = (
    (NOT_CROSSED, lambda rows: rows["x_end"], "^", 60, "not crossed by the end"),
    (ALWAYS_AHEAD, lambda rows: rows["x_start"], "v", 60, "MDLM ahead from the start"),
    (UNDETERMINED, _point_estimate_or_edge, "o", 40, "undetermined (point estimate)"),
)


def _log_y(ax, x_axis: str) -> None:
    """Log y with labelled ticks at 1, 2 and 5 of each decade (a crossover range is often under one decade)."""
    from matplotlib.ticker import FuncFormatter, LogLocator  # lazy: as above

    ax.set_yscale("log")
    fmt = (lambda v, _: format_tokens(v)) if x_axis == "tokens" else (lambda v, _: f"{v:.3g}")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(fmt))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _colors(n: int) -> list:
    from matplotlib import colormaps  # lazy: as above

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def efficiency_bars(analysis: StudyAnalysis) -> Figure | None:
    table = analysis.efficiency.table
    if table.empty:
        return None
    groups = _pick(list(dict.fromkeys(table["group"])), 6)
    table = table[table["group"].isin(groups)]
    fig = _figure(max(6.0, 0.55 * len(table) + 2), 4.4)
    ax = fig.subplots()
    labels, heights, hatches, texts, colors = [], [], [], [], []
    palette = dict(zip(groups, _colors(len(groups)), strict=True))
    for _, row in table.iterrows():
        labels.append(
            format_tokens(row["unique_tokens"]) + ("" if len(groups) == 1 else f"\n{_short(row['group'], 18)}")
        )
        colors.append(palette[row["group"]])
        if row["ratio"] is not None and not pd.isna(row["ratio"]):
            heights.append(row["ratio"])
            hatches.append("")
            texts.append(f"{row['ratio']:.2g}x")
        elif row["bound"] is not None and not pd.isna(row["bound"]):
            heights.append(row["bound"])
            hatches.append("//")
            texts.append((">" if row["status"] == "above_range" else "<") + f"{row['bound']:.2g}x")
        else:
            heights.append(0)
            hatches.append("")
            texts.append("n/a")
    bars = ax.bar(range(len(heights)), heights, color=colors, alpha=0.8)
    for x, (bar, hatch, text, (_, row)) in enumerate(zip(bars, hatches, texts, table.iterrows(), strict=True)):
        bar.set_hatch(hatch)
        if hatch:
            bar.set_alpha(0.35)
        top = bar.get_height()
        low, high = row.get("ci_low"), row.get("ci_high")
        if not missing(low) and not missing(high):  # the interval, drawn within the AR budgets' ratios; an arrow
            # where it runs beyond them (U'/U is never extrapolated), and its bounds in the label
            floor, ceiling = row["ratio_below"], row["ratio_above"]
            shown_low, shown_high = max(low, floor), min(high, ceiling)
            ax.plot([x, x], [shown_low, shown_high], color="black", lw=1.2)
            for shown, beyond, arrow in ((shown_low, low < floor, "v"), (shown_high, high > ceiling, "^")):
                ax.plot([x], [shown], marker=arrow if beyond else "_", color="black", ms=7)
            text += f"\n{analysis.confidence:.0%} CI {ratio(low, floor, ceiling)} to {ratio(high, floor, ceiling)}"
            top = max(top, shown_high)
        ax.annotate(
            text,
            (bar.get_x() + bar.get_width() / 2, top),
            xytext=(0, 5),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.axhline(1, color="black", lw=0.8, ls=":")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.15)  # room for the labels above the tallest whisker
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("MDLM unique-token budget U")
    ax.set_ylabel("U'/U (AR budget of equal best performance)")
    ax.set_title(
        "Data efficiency of MDLM against AR's best (early-stopped)\nwhiskers: the interval (an arrow: beyond the AR "
        "budgets observed)\nhatched: the ratio itself beyond them, a bound",
        fontsize=9,
    )
    ax.grid(alpha=0.25, axis="y")
    return fig


def scaling_fits(analysis: StudyAnalysis, data: StudyData) -> Figure | None:
    if not analysis.scaling.fits:
        return None
    labels = _pick(list(dict.fromkeys(label for label, _ in analysis.scaling.fits)), 3)
    fig = _figure(10, 3.4 * len(labels))
    axes = fig.subplots(len(labels), 2, squeeze=False)
    curves = data.curves[data.curves[LOSS_METRIC].notna()] if LOSS_METRIC in data.curves else data.curves.iloc[0:0]

    group = _other_axes_key(data.trials.set_index("run_id"), ("unique_tokens", "total_tokens"), analysis.axes)
    curves = curves.assign(group=group.reindex(curves["run_id"]).to_numpy())
    fits = {(label, fit.objective): fit for label, fit in analysis.scaling.fits}
    from matplotlib import colormaps  # lazy: as above

    for row, label in enumerate(labels):
        for col, objective in enumerate(("ar", "mdlm")):
            ax = axes[row][col]
            sub = curves[(curves["group"] == label) & (curves["objective"] == objective)]
            budgets = sorted(sub["unique_budget"].dropna().unique())
            cmap = colormaps["viridis"]
            for i, unique in enumerate(budgets):
                color = cmap(i / max(1, len(budgets) - 1))
                points = sub[sub["unique_budget"] == unique]
                ax.scatter(
                    points["tokens"],
                    points[LOSS_METRIC],
                    s=8,
                    color=color,
                    alpha=0.6,
                    label=f"U={format_tokens(unique)}",
                )
                fit = fits.get((label, objective))
                if fit is not None and len(points):
                    grid = np.geomspace(points["tokens"].min(), points["tokens"].max(), 200)
                    ax.plot(grid, fit.predict(grid, unique), color=color, lw=1.2)
            fit = fits.get((label, objective))
            title = f"{objective.upper()} ({_short(label, 30)})"
            if fit is not None:
                r_star = f"{fit.r_star:.3g}" if fit.identified else f"not identified (R<={fit.max_repetitions:.3g})"
                title += f": R_D*={r_star}, beta={fit.beta:.2g}"
            else:
                title += ": no fit"
            ax.set_title(title, fontsize=9)
            ax.set_xscale("log")
            ax.set_xlabel("training tokens", fontsize=8)
            ax.set_ylabel("held-out loss", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.25, which="both")
            if budgets and len(budgets) <= 10:
                ax.legend(fontsize=6, loc="upper right")
    fig.suptitle("Data-constrained scaling law fits (points: observed; lines: fitted law)", fontsize=11)
    return fig


def delta_nll_view(analysis: StudyAnalysis, data: StudyData) -> Figure | None:
    """Loss, the study's accuracy and Delta NLL (raw and scale-free) over training, per objective."""
    task = analysis.delta_nll.task
    if task is None:
        return None
    curves = data.curves
    panels = [(LOSS_METRIC if LOSS_METRIC in curves else f"eval/{task}/nll", "held-out loss")]
    acc = analysis.delta_nll.accuracy
    if acc:
        panels.append((acc, acc.removeprefix("eval/")))
    panels.append((f"eval/{task}/delta_nll", f"{task} Delta NLL (wrong - right)"))
    if f"eval/{task}/delta_nll_rel" in curves:
        panels.append((f"eval/{task}/delta_nll_rel", f"{task} Delta NLL / mean choice NLL"))
    # the cells with the most repetition show the effect best
    cells = data.trials.sort_values("unique_budget")["cell"].drop_duplicates().tolist()[: max(1, MAX_LINES // 2)]
    fig = _figure(4.2 * len(panels), 3.6)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    styles = ["-", "--", ":", "-."]
    for ax, (metric, title) in zip(axes, panels, strict=True):
        for i, cell in enumerate(cells):
            for objective in ("ar", "mdlm"):
                sub = curves[(curves["cell"] == cell) & (curves["objective"] == objective)].dropna(subset=[metric])
                if sub.empty:
                    continue
                mean = sub.groupby("tokens")[metric].mean()
                ax.plot(
                    mean.index,
                    mean.to_numpy(),
                    styles[i % 4],
                    color=COLORS[objective],
                    lw=1.3,
                    label=f"{objective.upper()} {_short(cell, 24)}",
                )
        ax.set_xscale("log")
        ax.set_title(title, fontsize=9)
        _chance_line(ax, chance_level(curves, metric))
        ax.set_xlabel("training tokens", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.25, which="both")
    axes[-1].legend(fontsize=6, loc="best")
    fig.suptitle("Does rising loss mean worse answers? Loss, accuracy and Delta NLL over training", fontsize=11)
    return fig
