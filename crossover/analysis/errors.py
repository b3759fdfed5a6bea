"""Errors a user can cause (unknown study, unreachable tracking server, nothing evaluated yet): one clear message."""

from __future__ import annotations

from crossover.errors import UserError


class AnalysisError(UserError):
    """A problem with the user's input or environment; `crossover analyze` prints the message and exits 2."""

    title = "cannot analyse"  # how the command line heads its message
