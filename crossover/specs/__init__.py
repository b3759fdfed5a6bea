"""Study specs: pydantic models, the YAML loader, grid expansion, model presets and analytic counts (no torch)."""

from crossover.specs.axes import AXES
from crossover.specs.errors import Problem, SpecError
from crossover.specs.expand import padded_vocab, resolve_model
from crossover.specs.loader import load_study, parse_study
from crossover.specs.model import PRESETS, ModelConfig, ParamCounts, count_params, training_flops_per_token
from crossover.specs.plan import Plan, PlanRow, fill_slots, longest_first, plan_study, training_flops
from crossover.specs.study import HYPERPARAMETERS, StudySpec, TrialSpec
from crossover.specs.tokens import format_seconds, format_tokens, parse_tokens

__all__ = [
    "AXES",
    "HYPERPARAMETERS",
    "PRESETS",
    "ModelConfig",
    "ParamCounts",
    "Plan",
    "PlanRow",
    "Problem",
    "SpecError",
    "StudySpec",
    "TrialSpec",
    "count_params",
    "format_seconds",
    "format_tokens",
    "load_study",
    "fill_slots",
    "longest_first",
    "padded_vocab",
    "parse_study",
    "parse_tokens",
    "plan_study",
    "resolve_model",
    "training_flops",
    "training_flops_per_token",
]
