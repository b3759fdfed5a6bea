"""The base of every error a user can fix. The floor below all others: it imports nothing."""


class UserError(Exception):
    """An error the user can fix (the message says how): the command line prints it and exits with status 2.
    Every user-facing error derives from it (SpecError, DataError, TrackingError, AnalysisError, ...)."""
