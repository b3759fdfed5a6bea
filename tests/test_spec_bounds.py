"""A spec file cannot exhaust the machine: the loader bounds size, values, depth and refuses aliases before anything
composes the YAML, every command that reads a spec exits 2 on the hostile files, and a fuzz of the loader (random
documents and mutations of the shipped specs) only ever ends in a valid spec or a SpecError."""

from __future__ import annotations

import math
import os
import time
import tracemalloc
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings, target
from hypothesis import strategies as st
from typer.testing import CliRunner

from crossover.cli import app
from crossover.evals.registry import check_spec_tasks
from crossover.specs import SpecError, StudySpec, load_study
from crossover.specs.loader import MAX_SPEC_BYTES, MAX_SPEC_DEPTH, MAX_SPEC_NODES, NO_ALIASES

SHIPPED = sorted((Path(__file__).parents[1] / "study_specs").glob("*.yaml"))
runner = CliRunner()


def billion_laughs() -> str:
    """The issue's file: 8 nested anchors, each level a list of nine aliases of the one before (9^9 leaves)."""
    lines, previous = ["a: &a [x, x, x, x, x, x, x, x, x]"], "a"
    for name in "bcdefgh":
        lines.append(f"{name}: &{name} [{', '.join(['*' + previous] * 9)}]")
        previous = name
    lines.append(f"i: [{', '.join(['*' + previous] * 9)}]")
    return "\n".join(lines) + "\n"


DEEP = "name: deep\nx: " + "[" * 5000 + "]" * 5000 + "\n"


def load(path: Path) -> StudySpec:
    """What every command does with a spec file (crossover.cli.common.load_spec)."""
    spec = load_study(path)
    check_spec_tasks(spec, installed=False)
    return spec


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (billion_laughs(), 1, [NO_ALIASES]),
        (DEEP, 2, [f"nested over {MAX_SPEC_DEPTH} levels", "remove extra brackets or indentation"]),
        (
            "name: big\nseeds: [" + ", ".join(map(str, range(MAX_SPEC_NODES))) + "]\n",
            2,
            [f"over {MAX_SPEC_NODES} values"],
        ),
        ("name: huge\n# " + "x" * MAX_SPEC_BYTES + "\n", None, ["over 64 KiB"]),
        ("name: bytes\ndescription: caf\xe9\n".encode("latin-1"), 2, ["not UTF-8", "0xe9", "save the spec as UTF-8"]),
    ],
    ids=["billion laughs", "deep nesting", "too many values", "too large", "not utf-8"],
)
@pytest.mark.parametrize("command", [["validate"], ["plan"], ["run"], ["analyze"], ["data", "prepare"]])
def test_hostile_file_exits_2_at_its_line_writing_nothing(tmp_path, monkeypatch, command, text, line, words):
    spec = tmp_path / "hostile.yaml"
    spec.write_bytes(text if isinstance(text, bytes) else text.encode())
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, [*command, str(spec)])
    assert result.exit_code == 2, result.output
    assert (f"{spec}:{line}:" if line else f"{spec}: (file)") in result.output
    for word in words:
        assert word in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile.yaml"], "a refused spec writes nothing"


def test_billion_laughs_is_refused_before_it_costs_memory(tmp_path):
    spec = tmp_path / "laughs.yaml"
    spec.write_text(billion_laughs())
    tracemalloc.start()
    try:
        with pytest.raises(SpecError, match="anchors/aliases"):
            load_study(spec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5 * 2**20, f"refusing a 375-byte file allocated {peak / 2**20:.1f} MiB"  # unbounded: ~12 GB


def test_a_grid_that_multiplies_to_millions_is_refused_before_expanding(tmp_path):
    spec = tmp_path / "grid.yaml"
    axis = ", ".join(f"{v}k" for v in range(10, 60))  # 50 values
    spec.write_text(
        f"name: big\ngrid:\n  objective: [ar, mdlm]\n  unique_tokens: [{axis}]\n  lr: [{', '.join(f'{i}e-4' for i in range(1, 50))}]\n"
        f"seeds: [{', '.join(map(str, range(100)))}]\n"
    )
    with pytest.raises(SpecError, match=r"490,000 points \(2 objective x 50 unique_tokens x 49 lr x 100 seed\)"):
        load_study(spec)


@pytest.mark.parametrize("value", ["9" * 300, "1e400", "2e15", "1e999999999"])
def test_a_token_count_past_any_training_run_is_a_spec_error(tmp_path, value):
    """Found by the fuzz: a 300-digit unique_tokens passed validation and overflowed a float in a later message."""
    spec = tmp_path / "huge.yaml"
    spec.write_text(f"name: huge\ntrain:\n  total_tokens: 1M\ngrid:\n  unique_tokens: [{value}]\n")
    result = runner.invoke(app, ["validate", str(spec)])
    assert result.exit_code == 2, result.output
    assert f"{spec}:5:" in result.output and "grid.unique_tokens" in result.output
    assert "beyond any training run" in result.output or "expected a token count" in result.output
    assert len(result.output) < 2000, "the message quotes the value, not its 300 digits"


def test_every_shipped_spec_is_well_inside_the_bounds():
    for path in SHIPPED:
        text = path.read_text()
        events = list(yaml.parse(text, Loader=yaml.SafeLoader))
        depth = deepest = 0
        for found in events:
            depth += isinstance(found, yaml.CollectionStartEvent) - isinstance(found, yaml.CollectionEndEvent)
            deepest = max(deepest, depth)
        nodes = sum(isinstance(e, yaml.NodeEvent) for e in events)
        assert len(text.encode()) * 10 < MAX_SPEC_BYTES and nodes * 10 < MAX_SPEC_NODES, path.name
        assert deepest * 3 <= MAX_SPEC_DEPTH, path.name
        load(path)


# The fuzz: any outcome but a StudySpec or a SpecError is a bug (a traceback and exit 1 at the command line).

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**20, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["ar", "mdlm", "nano", "1M", "50k", "1e400", "-1", "0", "log:0", "epoch", "auto", ".nan", "all"]),
)
KEYS = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        [
            "name",
            "data",
            "model",
            "train",
            "eval",
            "grid",
            "seeds",
            "exclude",
            "search",
            "resources",
            "unique_tokens",
            "total_tokens",
            "objective",
            "lr",
            "seq_len",
            "tasks",
            "every",
            "space",
            "preset",
            "sparsity",
            "noise",
        ]
    ),
)
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5), max_leaves=30
)
# The suite runs a fixed (derandomized) 150 examples, so CI cannot turn red on a draw no earlier run made; the long run
# (CROSSOVER_FUZZ_EXAMPLES=10000, docs/results.md) draws fresh examples to find new failures.
LONG_FUZZ = "CROSSOVER_FUZZ_EXAMPLES" in os.environ
FUZZ = settings(
    max_examples=int(os.environ.get("CROSSOVER_FUZZ_EXAMPLES", 150)),
    derandomize=not LONG_FUZZ,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# What one document may cost the loader. The caps (64 KiB, 5,000 values, 24 levels, no aliases, 10,000 grid points)
# bound it: the costliest legal spec, a grid at the 10,000-point cap, loads in ~3 CPU seconds here (tracemalloc
# doubles that); the long run's costliest of 30,000 fuzzed documents took 1.5 s and 0.3 MiB (docs/results.md), and
# the unbounded loader spent 115 s and 12 GB on the billion laughs. CPU time, not wall time: a busy machine cannot
# turn it red. `target` steers hypothesis towards the costliest documents it can find.
DOCUMENT_PEAK_MIB = 64
DOCUMENT_CPU_SECONDS = 10.0


def assert_spec_or_spec_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(content)
    tracemalloc.start()
    cpu = time.process_time()
    try:
        load(path)
        event("valid spec")
    except SpecError as exc:
        assert exc.problems and all(p.message for p in exc.problems)
        event(f"SpecError at {exc.problems[0].field.split('.')[0].split('[')[0]}")
    finally:
        cpu = time.process_time() - cpu
        peak_mib = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    target(peak_mib, label="peak MiB")
    target(cpu, label="CPU seconds")
    assert peak_mib < DOCUMENT_PEAK_MIB, f"one document allocated {peak_mib:.1f} MiB"
    assert cpu < DOCUMENT_CPU_SECONDS, f"one document took {cpu:.2f} CPU seconds"


def _paths(value, prefix=()):
    """Every (container path) position inside parsed YAML, to mutate one."""
    if isinstance(value, dict):
        for key, child in value.items():
            yield (*prefix, key)
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield (*prefix, index)
            yield from _paths(child, (*prefix, index))


def _parent(data, path):
    for part in path[:-1]:
        data = data[part]
    return data


@st.composite
def mutated_shipped_spec(draw) -> bytes:
    """A shipped spec with one hostile change: a key deleted or duplicated, a value swapped for another type, a
    huge number or NaN, deep nesting, an alias, or a non-UTF-8 byte."""
    text = draw(st.sampled_from(SHIPPED)).read_text()
    data = yaml.safe_load(text)
    kind = draw(st.sampled_from(["delete", "swap", "huge", "nan", "deep", "duplicate", "alias", "bytes", "truncate"]))
    event(f"mutation: {kind}")
    if kind in ("delete", "swap", "huge", "nan", "deep"):
        path = draw(st.sampled_from(list(_paths(data))))
        parent = _parent(data, path)
        if kind == "delete":
            del parent[path[-1]]
            return yaml.safe_dump(data, sort_keys=False).encode()
        if kind == "deep":
            replacement = 0
            for _ in range(draw(st.integers(1, 60))):
                replacement = [replacement]
        else:
            replacement = {
                "swap": draw(VALUES),
                "nan": math.nan,
                "huge": draw(st.sampled_from([10**30, 1e308, -(10**30), 2**63])),
            }[kind]
        parent[path[-1]] = replacement
        return yaml.safe_dump(data, sort_keys=False).encode()
    lines = text.splitlines(keepends=True)
    at = draw(st.integers(0, len(lines) - 1))
    if kind == "duplicate":
        lines.insert(at, lines[at])
    elif kind == "alias":
        lines.append("extra: &anchor [1, 2]\nmore: *anchor\n")
    elif kind == "truncate":
        return "".join(lines)[: draw(st.integers(0, len(text)))].encode()
    raw = bytearray("".join(lines).encode())
    if kind == "bytes":
        raw.insert(draw(st.integers(0, len(raw))), draw(st.integers(0x80, 0xFF)))
    return bytes(raw)


@FUZZ
@given(content=mutated_shipped_spec())
def test_fuzz_mutated_shipped_specs(tmp_path, content):
    assert_spec_or_spec_error(tmp_path, content)


@FUZZ
@given(value=VALUES)
def test_fuzz_random_yaml_documents(tmp_path, value):
    assert_spec_or_spec_error(tmp_path, yaml.safe_dump(value).encode())


@FUZZ
@given(content=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_fuzz_random_bytes(tmp_path, content):
    assert_spec_or_spec_error(tmp_path, content)
