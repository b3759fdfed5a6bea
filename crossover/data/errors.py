"""The one error the data layer raises for problems a user can fix (missing file, bad field, budget too large)."""

from __future__ import annotations

from crossover.errors import UserError


class DataError(UserError):
    """A corpus, tokenizer or budget problem the user can fix; the message names the cause and what to do.

    The CLI prints it and exits with status 2.
    """

    title = "data error"  # how the command line heads its message
