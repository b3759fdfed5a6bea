"""Spec errors that name the file, line, column and field, and say what was expected."""

from __future__ import annotations

from dataclasses import dataclass

from crossover.errors import UserError

FieldPath = tuple[str | int, ...]  # a field path inside the spec, e.g. ("grid", "unique_tokens", 2)


def format_path(path: FieldPath) -> str:
    """('grid', 'unique_tokens', 2) -> 'grid.unique_tokens[2]'."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


@dataclass(frozen=True)
class Problem:
    field: str
    message: str
    line: int | None = None  # 1-based
    column: int | None = None  # 1-based


class SpecError(UserError):
    """A study spec cannot be run. Raised before Ray or MLflow is touched; the CLI exits with status 2."""

    title = "invalid study spec"  # how the command line heads its message

    def __init__(self, file: str | None, problems: list[Problem]):
        self.file = file
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        lines = []
        for p in self.problems:
            where = self.file or "<spec>"
            if p.line is not None:
                where += f":{p.line}:{p.column}"
            lines.append(f"{where}: {p.field}: {p.message}")
        return "\n".join(lines)
