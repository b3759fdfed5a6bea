"""The tracking contract is written once: no tag or metric name of `crossover.tracking.names` stands as a string
literal anywhere else in the package (a renamed metric cannot leave a reader behind)."""

from __future__ import annotations

import ast
from pathlib import Path

import crossover
from crossover.tracking import names

PACKAGE = Path(crossover.__file__).parent
TRACKING = PACKAGE / "tracking"


def contract_names() -> set[str]:
    """Every tag and metric name the contract defines (its string constants shaped like one)."""
    shaped = ("crossover.", "mlflow.", "eval/", "train/", "summary/", "verdict/")
    found = set()
    for value in vars(names).values():
        values = value if isinstance(value, (tuple, list)) else [value]
        found |= {v for v in values if isinstance(v, str) and v.startswith(shaped) and v not in shaped}
    return found


def test_no_tracking_name_is_a_literal_outside_the_tracking_layer():
    wanted = contract_names()
    assert {"eval/heldout_loss/loss", "train/loss", "crossover.trial_id", "crossover.error"} <= wanted
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if TRACKING in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in wanted:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.value!r}")
    assert not found, "tracking names written as literals (use crossover.tracking.names):\n" + "\n".join(found)
