"""How the analysis prints a value, a position on the x axis, an interval, a data-efficiency ratio and a model's
size: one place, so the verdict lines, the axis lines, the report and `crossover analyze`'s table say the same thing
the same way.

A crossover interval bound is infinite where replicates do not cross inside the run: it reads "past the end" (or
"before the first point" for MDLM ahead from the start), and an interval lying wholly there says so in words
("entirely past the end") rather than as a pair of bounds. A U'/U bound outside the AR budgets reads as the
inequality it is: "< 0.5x" (below the smallest AR budget's ratio), "> 4x" (above the largest's).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from crossover.specs import format_tokens

PAST_END = "past the end"
BEFORE_START = "before the first point"


def missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def number(v: Any, digits: int = 3) -> str:
    """A value to `digits` significant figures; "" when missing."""
    if missing(v):
        return ""
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{float(v):.{digits}g}"


def significant(v: float, digits: int = 3) -> str:
    """`v` rounded to `digits` significant figures, without an exponent for everyday sizes: 29.7 at 1 figure reads
    '30', not '3e+01'."""
    return f"{float(f'{v:.{digits}g}'):.6g}"


def position(v: Any, axis: str, digits: int = 3, unit: bool = False) -> str:
    """A position on the x axis ("tokens", "flops", "epochs"): tokens as 1.5M, others as numbers (followed by the
    axis' name with `unit`); an infinite bound in words; "" when missing."""
    if missing(v):
        return ""
    if math.isinf(v):
        return PAST_END if v > 0 else BEFORE_START
    if axis == "tokens":
        return format_tokens(v, digits)
    return f"{v:.{digits}g}" + (f" {axis}" if unit else "")


def tokens_and_epochs(tokens: float, epochs: float, digits: int = 3) -> str:
    """A point of training in tokens and the epochs over the unique data they are: "1.5M tokens (30 epochs)"."""
    return f"{format_tokens(tokens, digits)} tokens ({significant(epochs, digits)} epochs)"


def interval(low: Any, high: Any, axis: str, digits: int = 3, unit: bool = False) -> str:
    """`low` to `high` on the x axis; an interval wholly past the end (or before the first point) in words."""
    if missing(low) or missing(high):
        return ""
    if math.isinf(low) and low == high:
        return f"entirely {position(low, axis)}"
    return f"{position(low, axis, digits, unit)} to {position(high, axis, digits, unit)}"


def parameters(size: tuple[int, int] | None) -> str:
    """A model's (total, active) parameter count: "12.3M", or "48.1M total, 12.3M active" for a mixture of experts."""
    if not size:
        return "size unknown"
    total, active = size
    return f"{total / 1e6:.3g}M" if total == active else f"{total / 1e6:.3g}M total, {active / 1e6:.3g}M active"


def ratio(v: Any, below: Any = None, above: Any = None) -> str:
    """A U'/U value or interval bound: 0 and inf code "below / above the AR budgets", printed against the smallest
    (`below`) and largest (`above`) AR budget's ratio where known."""
    if missing(v):
        return ""
    if v == 0:
        return f"< {below:.2g}x" if not missing(below) else "below the AR budgets"
    if math.isinf(v):
        return f"> {above:.2g}x" if not missing(above) else "above the AR budgets"
    return f"{v:.2g}x"
