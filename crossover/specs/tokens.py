"""Token counts written the way researchers write them: 96B, 1.5B, 500M, 50k, 1.5e9, 1000."""

from __future__ import annotations

from decimal import Decimal, DecimalException

_SUFFIXES = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}
# Far past any training run (the largest published use tens of T); a larger count is a typo, and refusing it keeps
# every later float conversion and message finite.
MAX_TOKENS = 10**15


def parse_tokens(value: object) -> int:
    """Return the exact integer a token count denotes; raise ValueError naming the accepted forms."""
    if isinstance(value, bool):
        raise ValueError(f"expected a token count such as 50k, 1.5B or 2000000, got {value!r}")
    if isinstance(value, int):
        return _bounded(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"a token count must be a whole number, got {value!r}")
        return _bounded(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a token count such as 50k, 1.5B or 2000000, got {value!r}")
    text = value.strip().replace("_", "").replace(",", "")
    scale = 1
    if text and text[-1].lower() in _SUFFIXES:
        scale = _SUFFIXES[text[-1].lower()]
        text = text[:-1]
    try:
        number = Decimal(text) * scale
    except DecimalException:  # not a number, or one past Decimal's own exponent range
        raise ValueError(
            f"expected a token count such as 50k, 500M, 1.5B, 96B, 1.5e9 or 2000000, got {value!r}"
        ) from None
    if number != number.to_integral_value():
        raise ValueError(f"a token count must be a whole number of tokens, got {value!r} = {number}")
    return _bounded(number)


def _bounded(count: int | float | Decimal) -> int:
    """The count as an int, refused before conversion when past MAX_TOKENS ("1e999999999" would fill memory)."""
    if abs(count) > MAX_TOKENS:
        raise ValueError(
            f"a token count of {Decimal(count):.3g} is beyond any training run (at most 1,000T = 1e15): check for a typo"
        )
    return int(count)


def format_tokens(n: int | float, digits: int = 3) -> str:
    """Short readable form used in trial names and tables: 50000 -> 50k, 1500000000 -> 1.5B; at most `digits`
    significant figures (a position between eval points a factor 1.5 apart supports 2)."""
    n = float(f"{n:.{digits}g}")  # rounded first, so that the unit fits the rounded value: 958k at 1 figure reads 1M
    for suffix, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if abs(n) >= scale:
            text = f"{n / scale:.4g}"  # printed without an exponent
            if "e" not in text:
                return text + suffix
    return f"{n:.4g}"


def format_seconds(seconds: float) -> str:
    """A duration for people: 12s, 4m05s, 2h03m."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
