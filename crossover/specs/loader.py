"""The one spec loader: YAML -> validated `StudySpec`, with every problem tied to its file, line and column."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from crossover.specs.errors import FieldPath, Problem, SpecError, format_path
from crossover.specs.study import RETIRED_KEYS, StudySpec, closest


class Source:
    """Line and column (1-based) of every key and list item of a YAML document, by field path."""

    def __init__(self, file: str | None, marks: dict[FieldPath, tuple[int, int]] | None = None):
        self.file = file
        self.marks = marks or {}

    def locate(self, path: FieldPath) -> tuple[int | None, int | None]:
        """The mark of the deepest prefix of `path` that exists in the file."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.marks:
                return self.marks[path[:end]]
        return None, None

    def problem(self, path: FieldPath, message: str) -> Problem:
        line, column = self.locate(path)
        return Problem(format_path(path), message, line, column)


def _collect_marks(node: yaml.Node, path: FieldPath, marks: dict, duplicates: list[Problem]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            child = (*path, key)
            line, column = key_node.start_mark.line + 1, key_node.start_mark.column + 1
            if key in seen:
                duplicates.append(Problem(format_path(child), "key appears twice; keep one", line, column))
            seen.add(key)
            marks[child] = (line, column)
            _collect_marks(value_node, child, marks, duplicates)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            marks[(*path, index)] = (item.start_mark.line + 1, item.start_mark.column + 1)
            _collect_marks(item, (*path, index), marks, duplicates)


def _model_at(path: FieldPath) -> type[BaseModel] | None:
    """The pydantic model class that holds the field at `path` (to suggest names for an unknown key)."""
    current: Any = StudySpec
    for part in path:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        if isinstance(part, int) or part not in current.model_fields:
            return None
        current = _inner_model(current.model_fields[part].annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    """The BaseModel class inside Optional[...], list[...], Annotated[...] and the like, else the annotation."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _inner_model(arg)
        if isinstance(found, type) and issubclass(found, BaseModel):
            return found
    return annotation


def _clean_loc(loc: tuple, data: Any) -> FieldPath:
    """Drop pydantic's union and validator tags from an error location, keeping the path through the YAML data."""
    path: list[str | int] = []
    current = data
    for i, part in enumerate(loc):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            current = current[part]
        elif i == len(loc) - 1 and isinstance(part, str) and "[" not in part and "-" not in part:
            pass  # a missing key: keep it in the path
        else:
            continue
        path.append(part)
    return tuple(path)


def _describe(error: dict, path: FieldPath) -> str:
    kind, msg = error["type"], error["msg"]
    if kind == "extra_forbidden":
        retired = RETIRED_KEYS.get(".".join(map(str, path)))
        if retired:
            return retired
        key = str(path[-1])
        model = _model_at(path[:-1])
        valid = list(model.model_fields) if model else []
        hint = closest(key, valid) + (f"; valid keys: {', '.join(valid)}" if valid else "")
        return f"unknown key '{key}'{hint}"
    if kind == "missing":
        return f"missing required key '{path[-1]}'"
    msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    value = error.get("input")
    if isinstance(value, (str, int, float, bool)) and repr(value) not in msg:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:40] + f"... ({len(repr(value))} characters)"
        msg += f" (got {shown})"
    return msg


def problems_from_validation(exc: ValidationError, data: Any, source: Source) -> list[Problem]:
    problems = []
    for error in exc.errors():
        path = _clean_loc(error["loc"], data)
        problems.append(source.problem(path, _describe(error, path)))
    return problems


def parse_study(data: Any, source: Source | None = None) -> StudySpec:
    """Validate a spec already parsed from YAML (or built in Python) and expand it once, so that any grid point that
    cannot run is reported now, before Ray or MLflow is touched."""
    source = source or Source(None)
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise SpecError(
            source.file,
            [
                Problem(
                    "(top level)",
                    f"a study spec must be a mapping of keys (name, data, model, train, grid, ...); this file is {kind}",
                    1,
                    1,
                )
            ],
        )
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(source.file, problems_from_validation(exc, data, source)) from None
    spec._source = source
    spec.expand()
    return spec


# What a spec may cost before anything reads it (issue: a spec file cannot exhaust the machine). The shipped specs are
# under 3 KB, under 200 nodes and 6 levels deep (a per-objective search space); the caps leave 4-20x room and still
# read any file within a second.
MAX_SPEC_BYTES = 64 * 1024
MAX_SPEC_NODES = 5_000  # scalars, lists and mappings: aliases are refused, so this bounds what pydantic sees
MAX_SPEC_DEPTH = 24  # nested lists and mappings; PyYAML composes recursively, so this also bounds its stack
NO_ALIASES = "YAML anchors/aliases are not supported in study specs: write the values out"


def _at(mark: Any, field: str, message: str) -> Problem:
    return Problem(field, message, mark.line + 1, mark.column + 1) if mark else Problem(field, message)


def _read_spec_text(path: str | Path, file: str) -> str:
    """The file's text, refused (SpecError) when it is missing, too large or not UTF-8: read with a bound, so a
    huge or endless file (/dev/zero) costs at most MAX_SPEC_BYTES."""

    def refuse(message: str, line: int | None = None, column: int | None = None) -> SpecError:
        return SpecError(file, [Problem("(file)", message, line, column)])

    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise refuse("no such file; check the path (specs live in study_specs/)") from None
    except OSError as exc:
        raise refuse(f"cannot read the spec: {exc}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise refuse(
            f"over {MAX_SPEC_BYTES // 1024} KiB, the most a study spec may be (a few keys and grids): is this "
            "the right file?"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        line, column = before.count(b"\n") + 1, exc.start - (before.rfind(b"\n") + 1) + 1
        raise refuse(f"not UTF-8 text (byte 0x{raw[exc.start]:02x}): save the spec as UTF-8", line, column) from None


def _check_bounds(text: str, file: str) -> None:
    """Walk the YAML events (PyYAML's parser is iterative, so deep nesting cannot overflow it) and refuse aliases,
    anchors, more than MAX_SPEC_NODES nodes or MAX_SPEC_DEPTH levels, each at its line, before anything composes."""

    def refuse(event: yaml.Event, message: str) -> SpecError:
        return SpecError(file, [_at(event.start_mark, "(yaml)", message)])

    too_many = f"over {MAX_SPEC_NODES} values: a study spec is a few keys and grids; is this the right file?"
    too_deep = f"nested over {MAX_SPEC_DEPTH} levels deep (the shipped specs need at most 6): remove extra brackets or indentation"
    depth = nodes = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise refuse(event, NO_ALIASES)
        nodes += isinstance(event, yaml.NodeEvent)
        if nodes > MAX_SPEC_NODES:
            raise refuse(event, too_many)
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_SPEC_DEPTH:
                raise refuse(event, too_deep)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def load_study(path: str | Path) -> StudySpec:
    """Read, validate and expand a study YAML file; raise `SpecError` naming file, line, column and field. What the
    file may cost is bounded first (size, values, depth, no aliases), so no spec can exhaust time or memory."""
    file = str(path)
    text = _read_spec_text(path, file)
    try:
        _check_bounds(text, file)
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(file, [Problem("(yaml)", f"malformed YAML: {problem}", line, column)]) from None
    marks: dict[FieldPath, tuple[int, int]] = {}
    duplicates: list[Problem] = []
    if node is not None:
        _collect_marks(node, (), marks, duplicates)
    if duplicates:
        raise SpecError(file, duplicates)
    return parse_study(data, Source(file, marks))
