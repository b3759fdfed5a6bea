"""`python -m crossover.cli`: the `crossover` command without its console script (tests, Ray job entrypoints)."""

from crossover.cli import app

app()
