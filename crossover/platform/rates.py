"""How fast a trial trains, and when it will be done: the one definition that `crossover status` (from the trial's
MLflow history) and the run's progress table and lines (from Tune's reports) both show.

A trial's log points are not evenly paced: the step before an eval point also waits for the evaluation, so its own
tokens/s (the logged `tokens_per_s`) dips to a tenth of the rate between them. The rate shown is the tokens advanced
over the wall time across the log points of the last RATE_WINDOW_S (the whole history while it is shorter), pauses
for evaluation and checkpoints included, so it is also the rate the ETA holds to.
"""

from __future__ import annotations

from collections.abc import Sequence

RATE_WINDOW_S = 60.0


def recent_points(points: Sequence[tuple[float, float]], window_s: float = RATE_WINDOW_S) -> list[tuple[float, float]]:
    """The (wall time s, tokens seen) points the rate reads, in time order: those of the trial's current attempt
    (after the last time its tokens went back: a restart from a checkpoint), from the latest point at or before
    `window_s` before the last one (the first point when the history is shorter) to the last one."""
    ordered = sorted(points)
    for i in range(len(ordered) - 1, 0, -1):
        if ordered[i][1] < ordered[i - 1][1]:
            ordered = ordered[i:]
            break
    if not ordered:
        return []
    start = 0
    for i, (when, _) in enumerate(ordered):
        if when > ordered[-1][0] - window_s:
            break
        start = i
    return ordered[start:]


def smoothed_rate(points: Sequence[tuple[float, float]], window_s: float = RATE_WINDOW_S) -> float | None:
    """Tokens per second over the last `window_s` of a trial's (wall time s, tokens seen) history (see
    `recent_points`); None with fewer than two points or no time between them."""
    recent = recent_points(points, window_s)
    if len(recent) < 2 or recent[-1][0] <= recent[0][0]:
        return None
    return (recent[-1][1] - recent[0][1]) / (recent[-1][0] - recent[0][0])


def eta_seconds(total_tokens: float | None, tokens: float, rate: float | None) -> float | None:
    """Seconds until a trial at `tokens` of `total_tokens` is done at `rate`; None without a rate or a total."""
    if not total_tokens or not rate or rate <= 0:
        return None
    return max(0.0, total_tokens - tokens) / rate
