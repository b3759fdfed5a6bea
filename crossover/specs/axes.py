"""Grid axes, each declared once: the type of its values, where a spec sets it when the grid does not vary it (which
is also where its value goes in a trial), its readable label and its part of a trial's name. Adding an axis is one
`Axis` here (and its test); `crossover.specs.expand` builds trials and places errors from these declarations alone,
and the checks a built trial must pass are the named rules there (`RULES`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, TypeAdapter

from crossover.specs.errors import FieldPath
from crossover.specs.study import (
    HYPERPARAMETERS,
    ModelSpec,
    NoiseSpec,
    Objective,
    Quality,
    SparsitySpec,
    StudySpec,
    Tokens,
)
from crossover.specs.tokens import format_tokens


def plain_label(value: Any) -> str:
    """1e-3 -> '0.001', (0.9, 0.95) -> '0.9/0.95', 'ar' -> 'ar'."""
    if isinstance(value, tuple):
        return "/".join(f"{v:g}" for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def sparsity_label(value: SparsitySpec) -> str:
    return "dense" if value.experts in (None, 1) else f"moe{value.experts}x{value.top_k or 1}"


@dataclass(frozen=True)
class Axis:
    """One grid axis. `path`: where a spec sets it outside the grid (the error location when the grid does not vary
    it) and the trial field its value replaces. `kind`: the type of one value (None: the type of the field at
    `path`). `prefix`: before its label in a trial's name (e.g. 'T' in ar-U50k-nano-T4M-s0), None where the name
    has a fixed place for it (objective, unique_tokens, model, seed)."""

    name: str
    path: FieldPath
    kind: Any = None
    label: Callable[[Any], str] = plain_label
    prefix: str | None = ""

    @functools.cached_property
    def adapter(self) -> TypeAdapter:
        if self.kind is not None:
            return TypeAdapter(self.kind)
        section: type[BaseModel] = StudySpec.model_fields[self.path[0]].annotation  # type: ignore[assignment]
        field = section.model_fields[self.path[1]]
        return TypeAdapter(Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation)

    def spec_value(self, spec: StudySpec) -> Any:
        """The value a spec gives this axis outside the grid."""
        value: Any = spec
        for part in self.path:
            value = getattr(value, part)
        return value


_TOKEN_HYPERPARAMETERS = ("warmup_tokens", "global_batch_tokens")

DECLARED = (
    Axis("objective", ("objective",), Objective, prefix=None),
    Axis("unique_tokens", ("data", "unique_tokens"), Tokens, format_tokens, prefix=None),
    Axis("total_tokens", ("train", "total_tokens"), Tokens, format_tokens, prefix="T"),
    Axis("quality", ("data", "quality"), Quality, prefix="q_"),
    Axis("model", ("model",), ModelSpec, lambda m: m.label, prefix=None),
    Axis("sparsity", ("sparsity",), SparsitySpec, sparsity_label),
    Axis("noise", ("noise",), NoiseSpec, lambda n: n.label),
    Axis("seed", ("seeds",), int, prefix=None),
    *(
        Axis(
            name,
            ("train", name),
            label=format_tokens if name in _TOKEN_HYPERPARAMETERS else plain_label,
            prefix=f"{name}=",
        )
        for name in HYPERPARAMETERS
    ),
    Axis("seq_len", ("data", "seq_len"), prefix="ctx"),
)
AXIS = {axis.name: axis for axis in DECLARED}
AXES = tuple(AXIS)
