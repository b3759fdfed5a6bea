"""The `crossover` command: a thin typer shell over the packages, one module per command group; user errors exit
with status 2 (`crossover.cli.app`)."""

from crossover.cli import analyze, data, specs, study, trial  # noqa: F401  (each registers its commands on the app)
from crossover.cli.app import app

__all__ = ["app"]
