"""The study's answer along each axis it varies besides the unique budget: one line per axis (per value of the other
axes), read against the direction the paper found.

    axis_verdicts(analysis) -> [AxisVerdict(axis, group, line, agreement, metrics)]

Each line gives the crossover (with its interval) at every value of the axis in the axis' natural order (quality low
-> high, models by parameter count, noise clean -> strongest), the measured trend, the paper's finding, and whether
this study agrees, disagrees or cannot tell:

    quality: later as quality rises: low 0.9M (CI 0.7M to 1.2M), medium 1.3M (...), high 2M (...); the paper: the
        crossover comes somewhat later with higher-quality data; this study agrees (high's interval lies after low's)

Two crossovers differ only where their intervals do not overlap; a study agrees where some pair of values differs
in the paper's direction and none against it, disagrees in the opposite case, and cannot tell otherwise (every
interval overlapping, no intervals, or pairs differing both ways). The model-size line adds each size's AR peak
against its last value (saturation); the noise line says whether a noised AR closed the gap to MDLM (MDLM no longer
ahead at the end, surely); a study with a mixture-of-experts model gets one sparsity line over its configurations
instead: whether MDLM ends ahead in each, what more total parameters did to AR, and where MDLM's MoE landed between
its compute-matched and parameter-matched dense peers. Axes the paper says nothing about (optimizer settings, the
compute budget) get the crossovers and the trend without a judgement.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from crossover.analysis.analyze import StudyAnalysis, ar_best_change
from crossover.analysis.crossing import ALWAYS_AHEAD, CROSSED, INTERVAL, NOT_CROSSED, STATUSES, Crossover, compare
from crossover.analysis.formatting import parameters, position
from crossover.analysis.paired import Difference
from crossover.analysis.verdict import Verdict, crossover_digits
from crossover.specs import format_tokens, parse_tokens

AGREES, DISAGREES, CANNOT_TELL, NEEDS_SEEDS = "agrees", "disagrees", "cannot tell", "needs seeds"
AGREEMENT = {AGREES: 1.0, DISAGREES: -1.0, CANNOT_TELL: 0.0, NEEDS_SEEDS: 0.0}  # the metric logged on the parent run
MIN_SEEDS = 3  # per objective, in every cell an axis line compares, before it agrees or disagrees
NOT_AXES = ("objective", "seed", "unique_tokens")  # the unique budget's answer is each cell's own line
CONFIG_AXES = ("model", "sparsity")
QUALITY_ORDER = ("low", "medium", "high")

PAPER = {
    "quality": "the crossover comes somewhat later with higher-quality data",
    "model": "the crossover comes earlier with larger models (AR saturates or overfits, MDLM keeps gaining)",
    "sparsity": "MDLM beats AR in every configuration; for AR, more total parameters under a data limit hurt; "
    "MDLM's MoE lands between its compute-matched and parameter-matched dense peers",
    "noise": "noise helps AR under a data limit but does not close the gap to MDLM, and AR still saturates",
}
LATER = {"quality": 1, "model": -1}  # +1: the crossover comes later as the axis rises; -1: earlier
RISES = {"quality": "as quality rises", "model": "as the model grows", "noise": "as noise grows"}


@dataclass
class AxisVerdict(Verdict):
    axis: str = ""
    group: str = ""  # the other axes' values ("unique_tokens=50k"), empty when nothing else varies
    agreement: str | None = None  # AGREES, DISAGREES, CANNOT_TELL; None where the paper states no direction

    @property
    def key(self) -> str:
        """`axis_quality`, `axis_quality_50k`: a tag and metric key part of its own, apart from the cells'."""
        values = "_".join(part.split("=", 1)[-1] for part in self.group.split(",") if part)
        return re.sub(r"[^\w.\-]", "_", "_".join(["axis", self.axis, *([values] if values else [])]))


@dataclass
class _Point:
    """One axis value's crossover on the analysis' compute axis: +inf not crossed, -inf MDLM always ahead."""

    label: str
    cell: str
    row: pd.Series
    position: float
    low: float | None
    high: float | None
    text: str
    result: Crossover
    extra: dict[str, float] = field(default_factory=dict)

    def surely_mdlm_ahead_at_end(self) -> bool:
        """The status says so and an interval decided it (the status is the evidence's: crossing.decide)."""
        return self.row["status"] in (CROSSED, ALWAYS_AHEAD) and self.result.evidence == INTERVAL

    def surely_ar_ahead_at_end(self) -> bool:
        return self.row["status"] == NOT_CROSSED and self.result.evidence == INTERVAL


def _number(value: object) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def _tokens_at(analysis: StudyAnalysis, cell: str, x: float, digits: int) -> str:
    """A position on the analysis' x axis, printed in tokens (interpolated on the cell's own eval points)."""
    if math.isinf(x) or analysis.x_axis == "tokens":
        return position(x, "tokens", digits)
    curves = analysis.crossovers.curves[cell]
    ok = (curves.x > 0) & (curves.tokens > 0)
    tokens = float(np.exp(np.interp(math.log(x), np.log(curves.x[ok]), np.log(curves.tokens[ok]))))
    return format_tokens(tokens, digits)


def _point(analysis: StudyAnalysis, label: str, row: pd.Series) -> _Point | None:
    cell = row["cell"]
    if cell not in analysis.crossovers.curves or row["status"] not in STATUSES:
        return None
    curves = analysis.crossovers.curves[cell]
    low, high = _number(row.get("ci_low")), _number(row.get("ci_high"))
    digits = crossover_digits(row)  # as the cell's own verdict quotes it
    ci = ""
    if low is not None:
        ci = f" (CI {_tokens_at(analysis, cell, low, digits)} to {_tokens_at(analysis, cell, high, digits)})"
    if row["status"] == CROSSED:
        position = float(row["x"])
        text = f"{format_tokens(float(row['crossover_tokens']), digits)}{ci}"
    elif row["status"] == NOT_CROSSED:
        position, text = math.inf, f"not crossed within {format_tokens(float(curves.tokens[-1]))}{ci}"
    elif row["status"] == ALWAYS_AHEAD:
        position, text = -math.inf, f"MDLM ahead from the start{ci}"
    else:  # undetermined: the trend reads its point estimate (a description, never a judgement)
        point = row.get("point_status")
        position = float(row["x"]) if point == CROSSED else math.inf if point == NOT_CROSSED else -math.inf
        text = f"undetermined{ci}"
    better = 1.0 if analysis.higher_is_better else -1.0
    peak = int(np.argmax(better * curves.ar))
    early_stopped = analysis.ar_best.by_cell.get(cell)  # chosen on validation items, scored on test items
    paired = early_stopped is not None and early_stopped.mdlm_last is not None  # a cell with MDLM trials of its own
    mdlm_end = float(curves.mdlm[-1])
    extra = {  # ar_best and mdlm_last on the same items (the test items where there are any); the rest on curves
        "ar_peak": float(curves.ar[peak]),
        "ar_best": early_stopped.value if early_stopped else float(curves.ar[peak]),
        "ar_last": float(curves.ar[-1]),
        "mdlm_best": float(curves.mdlm[int(np.argmax(better * curves.mdlm))]),
        "mdlm_end": mdlm_end,
        "mdlm_last": early_stopped.mdlm_last if paired else mdlm_end,
    }
    return _Point(label, cell, row, position, low, high, text, analysis.crossovers.results[cell], extra)


def _judge_order(points: list[_Point], direction: int, confidence: float) -> tuple[str, str]:
    """(agreement, why) for crossovers expected to move later (+1) or earlier (-1) along `points` (natural order):
    every pair compared on its paired replicates (`crossing.compare`), the level shared among the pairs."""
    if len(points) < 2:
        return CANNOT_TELL, "fewer than two values have a verdict"
    if any(p.low is None for p in points):
        return CANNOT_TELL, "no intervals to compare (per-item results or two or more seeds give them)"
    pairs = [(a, b) for i, a in enumerate(points) for b in points[i + 1 :]]
    order = {(a.label, b.label): compare(a.result, b.result, confidence, len(pairs)) for a, b in pairs}
    later = [(a, b) for a, b in pairs if order[(a.label, b.label)] > 0]
    earlier = [(a, b) for a, b in pairs if order[(a.label, b.label)] < 0]
    expected, against = (later, earlier) if direction > 0 else (earlier, later)
    word = "after" if direction > 0 else "before"
    level = f"paired replicates, {confidence:.0%} shared among {len(pairs)} pair{'s' if len(pairs) > 1 else ''}"
    if expected and not against:
        a, b = expected[0]
        return AGREES, f"{b.label}'s crossover comes surely {word} {a.label}'s; {level}"
    if against and not expected:
        a, b = against[0]
        return (
            DISAGREES,
            f"{b.label}'s crossover comes surely {'before' if direction > 0 else 'after'} {a.label}'s; {level}",
        )
    if expected and against:
        return CANNOT_TELL, f"the evidence orders the values both ways; {level}"
    return CANNOT_TELL, f"no pair is surely ordered; {level}"


def _judge_mdlm_ahead(points: list[_Point]) -> str:
    """For a finding that MDLM ends ahead of AR at every point: it disagrees where AR is surely ahead at the end of
    any, agrees where MDLM surely is at every one, and cannot tell otherwise."""
    if any(p.surely_ar_ahead_at_end() for p in points):
        return DISAGREES
    return AGREES if all(p.surely_mdlm_ahead_at_end() for p in points) else CANNOT_TELL


def _trend(points: list[_Point], rises: str) -> str:
    """The point estimates' order (undetermined cells at their estimate): a description, not a finding."""
    pairs = list(zip(points, points[1:], strict=False))  # compared, not subtracted: "not crossed" (+inf) twice is equal
    if len(points) < 2 or all(a.position == b.position for a, b in pairs):
        return "the same at every value" if len(points) >= 2 else "one value"
    if all(a.position <= b.position for a, b in pairs):
        return f"later {rises}"
    if all(a.position >= b.position for a, b in pairs):
        return f"earlier {rises}"
    return f"no monotone trend {rises}"


def _values_text(points: list[_Point]) -> str:
    return ", ".join(f"{p.label} {p.text}" for p in points)


# ---------------------------------------------------------------------------------------------------- orders


def _quality_key(label: str) -> tuple[int, str]:
    return (QUALITY_ORDER.index(label) if label in QUALITY_ORDER else len(QUALITY_ORDER), label)


def _noise_key(label: str) -> tuple[float, float]:
    """`clean` < `im0.1` < `im0.2`; dropout (`do0.1`) after input masking of the same strength."""
    found = dict(re.findall(r"(im|do)([\d.eE+-]+)", label))
    return (float(found.get("im", 0)) + float(found.get("do", 0)), float(found.get("do", 0)))


def _generic_key(label: str) -> tuple[int, float, str]:

    try:
        return (0, float(parse_tokens(label)), label)
    except (ValueError, TypeError):
        try:
            return (0, float(label), label)
        except ValueError:
            return (1, 0.0, label)


def _ordered(analysis: StudyAnalysis, axis: str, rows: pd.DataFrame) -> pd.DataFrame:
    labels = rows[axis].astype(str)
    if axis == "quality":
        key = labels.map(_quality_key)
    elif axis == "noise":
        key = labels.map(_noise_key)
    elif axis == "model":
        key = rows["cell"].map(lambda c: analysis.model_params.get(c, (0, 0)))
    else:
        key = labels.map(_generic_key)
    return rows.assign(_key=key.to_list()).sort_values("_key", kind="stable").drop(columns="_key")


# ---------------------------------------------------------------------------------------------------- lines


def _ordered_line(analysis: StudyAnalysis, axis: str, points: list[_Point]) -> tuple[str, str | None, dict]:
    rises = RISES.get(axis, f"as {axis} rises")
    head = f"{_trend(points, rises)}: {_values_text(points)}"
    if axis not in LATER:
        return f"{head}; the paper states no direction for {axis}", None, {}
    agreement, why = _judge_order(points, LATER[axis], analysis.confidence)
    line = f"{head}; the paper: {PAPER[axis]}; this study {agreement} ({why})"
    if axis == "model":
        saturation = ", ".join(f"{p.label} {p.extra['ar_peak']:.3g} -> {p.extra['ar_last']:.3g}" for p in points)
        gaining = sum(p.extra["mdlm_end"] == p.extra["mdlm_best"] for p in points)  # both on the curve
        line += (
            f"; AR's peak eval point -> last (on every item, a description): {saturation}; MDLM's last is its best "
            f"in {gaining} of {len(points)} sizes"
        )
    return line, agreement, {}


@dataclass(frozen=True)
class _Shifts:
    """How each of several cells' early-stopped AR differs from a base cell's, paired on the test items and seeds,
    each interval at the level that makes all of them hold at the study's confidence together (Bonferroni); or the
    point estimates, said so, where a cell lacks per-item results."""

    texts: list[tuple[_Point, str]]  # (point, its change as printed)
    changes: list[Difference]  # in the direction where higher is better (empty: no intervals)
    deltas: list[float]  # the point estimates' changes, the same direction
    how: str  # what the counts rest on

    @property
    def intervals(self) -> bool:
        return bool(self.changes)

    def count(self, raised: bool) -> int:
        if self.intervals:
            return sum((c.low > 0) if raised else (c.high < 0) for c in self.changes)
        return sum((d > 0) if raised else (d < 0) for d in self.deltas)

    def verb(self, raised: str) -> str:
        return f"surely {raised}" if self.intervals else raised

    def and_lowered(self) -> str:
        return f" and surely lowered it in {self.count(raised=False)}" if self.intervals else ""


def _change_text(change: Difference, better: float) -> str:
    """A change in the metric's own direction (a loss's lower is better), with its interval's level."""
    low, high = sorted((better * change.low, better * change.high))
    return f"{better * change.value:+.3g}, {change.confidence:.1%} CI {low:+.3g} to {high:+.3g}"


def _ar_best_shifts(analysis: StudyAnalysis, base: _Point, others: list[_Point]) -> _Shifts:
    better = 1.0 if analysis.higher_is_better else -1.0
    deltas = [better * (p.extra["ar_best"] - base.extra["ar_best"]) for p in others]
    level = 1 - (1 - analysis.confidence) / max(1, len(others))
    by_cell = analysis.ar_best.by_cell
    changes = [
        ar_best_change(by_cell[base.cell], by_cell[p.cell], analysis.higher_is_better, level)
        if base.cell in by_cell and p.cell in by_cell
        else None
        for p in others
    ]
    if others and all(c is not None for c in changes):
        texts = [(p, _change_text(c, better)) for p, c in zip(others, changes, strict=True) if c is not None]
        how = f"paired on the test items ({changes[0].source})" + (
            f", each interval at {level:.1%} so that the {len(others)} hold {analysis.confidence:.0%} together"
            if len(others) > 1
            else ""
        )
        return _Shifts(texts, [c for c in changes if c is not None], deltas, how)
    texts = [(p, f"{better * d:+.3g}") for p, d in zip(others, deltas, strict=True)]
    return _Shifts(texts, [], deltas, "point estimates, no interval (no per-item results)")


def _noise_line(analysis: StudyAnalysis, points: list[_Point]) -> tuple[str, str | None, dict]:
    clean = next((p for p in points if p.label == "clean"), None)
    noised = [p for p in points if p.label != "clean"]
    if clean is None or not noised:
        return f"{_values_text(points)}; no clean AR and noised AR to compare", CANNOT_TELL, {}
    shifts = _ar_best_shifts(analysis, clean, noised)
    parts = [f"clean AR: {clean.text}, its best {clean.extra['ar_best']:.3g}"]
    parts += [
        f"{p.label}: {p.text}, AR's best {p.extra['ar_best']:.3g} ({shift} against clean)" for p, shift in shifts.texts
    ]
    helped = shifts.count(raised=True)
    closed = [p for p in noised if p.surely_ar_ahead_at_end()]
    open_ = [p for p in noised if p.surely_mdlm_ahead_at_end()]
    saturates = sum(p.extra["ar_last"] != p.extra["ar_peak"] for p in noised)  # on the curves: a description
    summary = (
        f"noise {shifts.verb('raised')} AR's best in {helped} of {len(noised)} variants"
        f"{shifts.and_lowered()}; {shifts.how}; MDLM still ahead at the end of "
        f"{len(open_)} of {len(noised)} noised ARs (surely, at the interval's level), AR ahead of it in "
        f"{len(closed)}; the noised AR ends below its own best in {saturates} of {len(noised)}"
    )
    if not clean.surely_mdlm_ahead_at_end():
        agreement, why = CANNOT_TELL, "MDLM is not surely ahead of even the clean AR here: there is no gap to close"
    else:
        agreement = _judge_mdlm_ahead(noised)
        why = {
            DISAGREES: f"{', '.join(p.label for p in closed)} closed the gap",
            AGREES: "no noised AR closed the gap",
            CANNOT_TELL: "some noised ARs' crossovers are not surely inside the window",
        }[agreement]
    line = f"{'; '.join(parts)}; {summary}; the paper: {PAPER['noise']}; this study {agreement} ({why})"
    return line, agreement, {"noise_helped": helped / len(noised), "gap_closed": len(closed) / len(noised)}


def _sparsity_line(analysis: StudyAnalysis, points: list[_Point]) -> tuple[str, str | None, dict]:
    sizes = {p.cell: analysis.model_params.get(p.cell) for p in points}
    moe = [p for p in points if sizes[p.cell] and sizes[p.cell][1] < sizes[p.cell][0]]
    dense = sorted((p for p in points if p not in moe and sizes[p.cell]), key=lambda p: sizes[p.cell][0])
    better = 1.0 if analysis.higher_is_better else -1.0
    ahead = [p for p in points if p.surely_mdlm_ahead_at_end()]
    behind = [p for p in points if p.surely_ar_ahead_at_end()]
    parts = [
        f"{p.label} ({parameters(sizes[p.cell])}): {p.text}, AR's best {p.extra['ar_best']:.3g}, MDLM's last "
        f"{p.extra['mdlm_last']:.3g}"
        for p in points
    ]
    findings = [f"MDLM surely ahead at the end in {len(ahead)} of {len(points)} configurations"]
    if len(dense) >= 2:
        small, large = dense[0], dense[-1]
        shift = _ar_best_shifts(analysis, small, [large])
        if shift.intervals:
            reading = {1: "more total parameters surely helped", -1: "more total parameters surely hurt"}.get(
                shift.count(raised=True) - shift.count(raised=False), "cannot tell whether more total parameters hurt"
            )
        else:
            reading = "cannot tell (no interval) whether more total parameters hurt"
        findings.append(
            f"{reading} AR's best ({small.label} {small.extra['ar_best']:.3g}, {large.label} "
            f"{large.extra['ar_best']:.3g}: {shift.texts[0][1]}; {shift.how})"
        )
    for m in moe:
        total, active = sizes[m.cell]
        if not dense:
            break
        compute = min(dense, key=lambda p: abs(math.log(sizes[p.cell][0] / active)))
        param = min(dense, key=lambda p: abs(math.log(sizes[p.cell][0] / total)))
        if compute is param:
            findings.append(f"{m.label}'s dense peers are one model ({compute.label}): no 'between' to read")
            continue
        lo, hi = sorted((compute.extra["mdlm_last"], param.extra["mdlm_last"]), key=lambda v: better * v)
        value = m.extra["mdlm_last"]
        where = (
            "between"
            if better * lo <= better * value <= better * hi
            else ("above both" if better * value > better * hi else "below both")
        )
        findings.append(  # MDLM's last values side by side: a description, not a tested difference
            f"on the point values (a description, no interval), MDLM's {m.label} ({value:.3g}) lands {where} its "
            f"compute-matched {compute.label} ({compute.extra['mdlm_last']:.3g}) and parameter-matched {param.label} "
            f"({param.extra['mdlm_last']:.3g})"
        )
    agreement = _judge_mdlm_ahead(points)
    why = {
        DISAGREES: f"AR surely ahead at the end in {', '.join(p.label for p in behind)}",
        AGREES: "MDLM surely ahead at the end in every configuration",
        CANNOT_TELL: "some configurations' verdicts are not sure at the interval's level",
    }[agreement]
    line = f"{'; '.join(parts)}; {'; '.join(findings)}; the paper: {PAPER['sparsity']}; this study {agreement} ({why})"
    return line, agreement, {"configs_mdlm_ahead": len(ahead) / len(points)}


def axis_verdicts(analysis: StudyAnalysis, min_seeds: int = MIN_SEEDS) -> list[AxisVerdict]:
    """One line per axis the study varies besides the unique budget (per value of its other axes); empty when it
    varies only the unique budget (each cell's verdict answers it). A line whose cells have fewer than `min_seeds`
    seeds per objective reads "needs seeds" instead of a judgement."""
    table = analysis.crossovers.table
    if table.empty:
        return []
    axes = [a for a in analysis.axes if a not in NOT_AXES and a in table.columns]
    has_moe = any(total > active for total, active in analysis.model_params.values())
    out = []
    done_config = False
    for axis in axes:
        if has_moe and axis in CONFIG_AXES:  # one sparsity line over the configurations (model x sparsity)
            if done_config:
                continue
            done_config, varied, name = True, [a for a in axes if a in CONFIG_AXES], "sparsity"
        else:
            varied, name = [axis], axis
        others = [a for a in analysis.axes if a not in varied and a not in ("objective", "seed") and a in table]
        groups = table.groupby(others, sort=False, dropna=False) if others else [((), table)]
        for values, rows in groups:
            values = values if isinstance(values, tuple) else (values,)
            group = ",".join(f"{a}={v}" for a, v in zip(others, values, strict=True))
            rows = _ordered(analysis, varied[0], rows) if len(varied) == 1 else rows
            label = rows[varied].astype(str).agg("/".join, axis=1)
            points = [p for lab, (_, r) in zip(label, rows.iterrows(), strict=True) if (p := _point(analysis, lab, r))]
            if len({p.label for p in points}) < 2:
                continue
            if name == "sparsity":
                body, agreement, metrics = _sparsity_line(analysis, points)
            elif name == "noise":
                body, agreement, metrics = _noise_line(analysis, points)
            else:
                body, agreement, metrics = _ordered_line(analysis, name, points)
            few = [p for p in points if p.result.seeds < min_seeds]
            if agreement is not None and few:  # one seed's interval holds item noise only: no judgement on it
                body += (
                    f"; needs seeds: {len(few)} of {len(points)} values have fewer than {min_seeds} seeds per "
                    f"objective, so their intervals leave out training noise (it would have read: {agreement})"
                )
                agreement = NEEDS_SEEDS
            if agreement is not None:
                metrics = {"agreement": AGREEMENT[agreement], **metrics}
            head = f"{name}" + (f" (at {group})" if group else "")
            out.append(
                AxisVerdict(f"axis:{name}", f"{head}: {body}", metrics, axis=name, group=group, agreement=agreement)
            )
    return out
