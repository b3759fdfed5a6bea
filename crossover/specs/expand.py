"""Grid expansion: a `StudySpec` -> the complete `TrialSpec` of every grid point, or a `SpecError` for any that
cannot run (checked here once, so `validate`, `plan` and `run` all refuse the same studies)."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from crossover.specs.axes import AXES, AXIS, DECLARED
from crossover.specs.errors import FieldPath, Problem, SpecError
from crossover.specs.loader import Source, problems_from_validation
from crossover.specs.memory import GIB, estimate_memory
from crossover.specs.model import PRESETS, ModelConfig
from crossover.specs.study import (
    DataSpec,
    ModelSpec,
    NoiseSpec,
    ResourcesSpec,
    SparsitySpec,
    StudySpec,
    TrainSpec,
    TrialSpec,
    closest,
)
from crossover.specs.tokens import format_tokens


def padded_vocab(size: int) -> int:
    """Embedding rows: the tokenizer's size rounded up to a multiple of 64 for efficient matmuls."""
    return -(-size // 64) * 64


@functools.cache
def resolve_model(model: ModelSpec, sparsity: SparsitySpec, dropout: float, vocab_size: int) -> ModelConfig:
    dims: dict[str, Any] = dict(PRESETS[model.preset]) if model.preset else {"max_seq_len": 4096}
    dims.update(model.model_dump(exclude_none=True, exclude={"preset"}))
    dims.setdefault("kv_heads", dims["heads"])
    if sparsity.experts is not None:
        dims["experts"] = sparsity.experts
        dims["top_k"] = sparsity.top_k if sparsity.top_k is not None else 1
    elif sparsity.top_k is not None:
        dims["top_k"] = sparsity.top_k
    return ModelConfig(
        preset=model.preset,
        vocab_size=vocab_size,
        dropout=dropout,
        moe_aux_coef=sparsity.aux_coef,
        moe_z_coef=sparsity.z_coef,
        **dims,
    )


def _label(axis: str, value: Any) -> str:
    """Readable value for names, cells and tables."""
    return AXIS[axis].label(value)


def _trial_name(objective: str, unique: int, model_label: str, axes: dict[str, str], seed: int) -> str:
    """objective, U<budget>, model, then the other axes the grid varies (each with its prefix), then s<seed>."""
    return f"{objective}-U{format_tokens(unique)}-{model_label}{_name_tail(axes, seed)}"


def _name_tail(axes: dict[str, str], seed: int) -> str:
    return "".join(f"-{AXIS[axis].prefix}{label}" for axis, label in axes.items() if AXIS[axis].prefix is not None) + (
        f"-s{seed}"
    )


def _model_label(trial: TrialSpec) -> str:
    """The model's label as a grid trial's name holds it, between its budget and its other axes (`_trial_name`)."""
    body = trial.name[len(f"{trial.objective}-U{format_tokens(trial.unique_tokens)}-") :]
    return body[: body.rindex(_name_tail(trial.axes, trial.seed))]


def _content_id(trial: dict) -> str:
    text = json.dumps(trial, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# What a trial's id leaves out: the list of tasks it is evaluated on (a task added to a finished study is scored on
# the trials' kept checkpoints, not retrained for) and where and how it runs. How each task scores stays in.
NOT_IN_IDENTITY = {
    "eval": ("tasks",),
    "train": ("keep_checkpoints", "checkpoint_minutes"),
    "resources": ("gpu_memory_gb", "max_concurrent", "storage", "max_failures"),
    "data": ("store",),
}


def trial_identity(content: dict, *, lineage: bool = False) -> str:
    """The id of a trial's content (a TrialSpec's fields but its id and name): equal ids train and score alike, so
    a study that grows keeps its finished trials. `lineage`: the id without the trial's length (train.total_tokens),
    shared by trials that differ only in how long they train: a longer one can continue a shorter one."""
    content = {key: dict(value) if isinstance(value, dict) else value for key, value in content.items()}
    for section, fields in NOT_IN_IDENTITY.items():
        for field in fields:
            content[section].pop(field, None)
    if lineage:
        content["train"].pop("total_tokens", None)
        content["axes"].pop("total_tokens", None)
        content["cell"] = ",".join(p for p in content["cell"].split(",") if not p.startswith("total_tokens="))
    return _content_id(content)


class _Expander:
    def __init__(self, spec: StudySpec):
        self.spec = spec
        self.source: Source = spec._source or Source(None)
        self.problems: list[Problem] = []

    def fail(self, path: FieldPath, message: str) -> None:
        problem = self.source.problem(path, message)
        if problem not in self.problems:
            self.problems.append(problem)

    def axis_values(self) -> dict[str, list[Any]]:
        """Each grid axis validated once, value by value, so errors point at grid.<axis>[i]."""
        for axis, values in self.spec.grid.items():
            if axis not in AXES:
                self.fail(("grid", axis), f"unknown grid axis '{axis}'{closest(axis, AXES)}; axes: {', '.join(AXES)}")
            elif not values:
                self.fail(("grid", axis), f"grid axis '{axis}' has no values; give a list of at least one")
        for i, rule in enumerate(self.spec.exclude):
            if not rule:
                self.fail(("exclude", i), "an exclude rule is empty: it would drop every grid point")
            for axis in rule:
                if axis not in AXES:
                    self.fail(
                        ("exclude", i, axis), f"unknown axis '{axis}'{closest(axis, AXES)}; axes: {', '.join(AXES)}"
                    )
        if self.problems:
            return {}
        axes: dict[str, list[Any]] = {}
        grid = dict(self.spec.grid)
        if "seed" not in grid:
            grid["seed"] = list(self.spec.seeds)
        for axis, raw_values in grid.items():
            values = []
            for i, raw in enumerate(raw_values):
                path = ("grid", axis, i) if axis in self.spec.grid else ("seeds", i)
                try:
                    value = AXIS[axis].adapter.validate_python(raw)
                except ValidationError as exc:
                    data = {"grid": {axis: {i: raw}}} if axis in self.spec.grid else {}
                    for problem in problems_from_validation(exc, data, self.source):
                        self.problems.append(self.source.problem(path, problem.message))
                    continue
                if value in values:
                    self.fail(path, f"repeats an earlier value of this axis ({_label(axis, value)}); remove it")
                values.append(value)
            axes[axis] = values
        return axes

    def excluded(self, point: dict[str, Any]) -> bool:
        for rule_index, rule in enumerate(self.spec.exclude):
            if all(self._rule_matches(rule_index, axis, wanted, point.get(axis)) for axis, wanted in rule.items()):
                return True
        return False

    def _rule_matches(self, rule_index: int, axis: str, wanted: Any, actual: Any) -> bool:
        options = wanted if isinstance(wanted, list) and axis != "betas" else [wanted]
        try:
            return actual in [AXIS[axis].adapter.validate_python(option) for option in options]
        except ValidationError as exc:
            self.fail(("exclude", rule_index, axis), f"not a valid {axis} value: {exc.errors()[0]['msg']}")
            return False

    def where(self, axis: str, index: dict[str, int]) -> FieldPath:
        """The YAML path of the value `axis` takes at this grid point: the grid entry if the grid varies it."""
        if axis in self.spec.grid:
            return ("grid", axis, index[axis])
        return AXIS[axis].path

    def build(self, point: dict[str, Any], index: dict[str, int]) -> TrialSpec | None:
        """The trial of one grid point: every axis' value (the grid's, else the spec's) placed at its path, checked
        by `RULES`; None (and the problems recorded) when it cannot run."""
        spec = self.spec
        values = {a.name: point[a.name] if a.name in point else a.spec_value(spec) for a in DECLARED}
        for axis, missing in REQUIRED.items():
            if values[axis] is None:
                self.fail(AXIS[axis].path, missing)
        if any(values[axis] is None for axis in REQUIRED):
            return None

        def section(name: str) -> Any:
            updates = {a.path[1]: values[a.name] for a in DECLARED if a.path[0] == name and len(a.path) == 2}
            return getattr(spec, name).model_copy(update=updates)

        data: DataSpec = section("data")
        train: TrainSpec = section("train")
        noise: NoiseSpec = values["noise"]
        model_spec: ModelSpec = values["model"]
        try:
            model = resolve_model(model_spec, values["sparsity"], noise.dropout, padded_vocab(data.tokenizer.size))
        except ValidationError as exc:
            message = exc.errors()[0]["msg"].removeprefix("Value error, ")
            culprit = "sparsity" if "top_k" in message or "experts" in message else "model"
            self.fail(self.where(culprit, index), message)
            return None
        varied = frozenset(spec.grid)
        draft = Draft(values["objective"], data, train, model, model_spec.label, noise, spec.resources, varied)
        problems = [found for rule in RULES if (found := rule(draft))]
        for where, message in problems:
            self.fail(self.where(where, index) if isinstance(where, str) else where, message)
        if problems:
            return None
        axes = {axis: _label(axis, point[axis]) for axis in spec.grid}
        content = dict(
            study=spec.name,
            objective=draft.objective,
            seed=point["seed"],
            axes=axes,
            data=data.model_dump(mode="json"),
            model=model.model_dump(mode="json"),
            noise=noise.model_dump(mode="json"),
            train=train.model_dump(mode="json"),
            eval=section("eval").model_dump(mode="json"),
            resources=spec.resources.model_dump(mode="json"),
        )
        return _trial(content, model_spec.label)


def _trial(content: dict[str, Any], model_label: str) -> TrialSpec:
    """The TrialSpec of a trial's content (its axes' labels set): its cell, readable name and content id added."""
    axes = content["axes"]
    varied = {axis: label for axis, label in axes.items() if axis not in ("objective", "seed")}
    content = {"cell": ",".join(f"{axis}={label}" for axis, label in varied.items()) or "base", **content}
    unique = content["data"]["unique_tokens"]
    name = _trial_name(content["objective"], unique, model_label, axes, content["seed"])
    return TrialSpec.model_validate({**content, "trial_id": trial_identity(content), "name": name})


def sampled_trial(trial: TrialSpec, hparams: dict[str, Any]) -> TrialSpec:
    """The grid trial `trial` with a search sample's hyper-parameters, without expanding the study again: each
    sampled value becomes a one-value axis of the trial (in its name, cell and id, as a grid axis would be; a noise
    field changes the `noise` axis) and the trial passes the grid's checks (`RULES`); a sample that cannot train
    raises SpecError at search.space.<name>."""
    problems: list[Problem] = []
    values, noise_values = {}, {}
    for name, value in hparams.items():
        try:
            if name.startswith("noise."):
                field = name.removeprefix("noise.")
                noise_values[field] = TypeAdapter(NoiseSpec.model_fields[field].annotation).validate_python(value)
                NoiseSpec.model_validate({**trial.noise.model_dump(), **noise_values})  # its bounds
            else:
                values[name] = AXIS[name].adapter.validate_python(value)
        except ValidationError as exc:
            problems.append(Problem(f"search.space.{name}", f"sampled {value!r}: {exc.errors()[0]['msg']}"))
    if problems:
        raise SpecError(None, problems)
    train = trial.train.model_copy(update={AXIS[name].path[1]: value for name, value in values.items()})
    noise = trial.noise.model_copy(update=noise_values)
    model = trial.model.model_copy(update={"dropout": noise.dropout})
    model_label = _model_label(trial)
    varied = frozenset(trial.axes) | frozenset(values) | ({"noise"} if noise_values else frozenset())
    draft = Draft(trial.objective, trial.data, train, model, model_label, noise, trial.resources, varied)
    for where, message in (found for rule in RULES if (found := rule(draft))):
        at = (
            f"search.space.{where}"
            if where in values
            else ".".join(map(str, (where,) if isinstance(where, str) else where))
        )
        problems.append(
            Problem(at, f"with the sampled {', '.join(f'{k}={v!r}' for k, v in hparams.items())}: {message}")
        )
    if problems:
        raise SpecError(None, problems)
    axes = {**trial.axes, **{name: _label(name, value) for name, value in values.items()}}
    if noise_values:
        axes["noise"] = _label("noise", noise)
    content = trial.model_dump(mode="json", exclude={"trial_id", "name", "cell"})
    content |= {
        "axes": axes,
        "train": train.model_dump(mode="json"),
        "noise": noise.model_dump(mode="json"),
        "model": model.model_dump(mode="json"),
    }
    return _trial(content, model_label)


def reseeded(trial: TrialSpec, seed: int) -> TrialSpec:
    """`trial` on another seed (its initialisation, data order and budget documents unless data.budget_seed holds
    them): a search winner's confirmation on a fresh seed."""
    content = trial.model_dump(mode="json", exclude={"trial_id", "name", "cell"})
    content |= {"seed": seed, "axes": {**trial.axes, **({"seed": str(seed)} if "seed" in trial.axes else {})}}
    return _trial(content, _model_label(trial))


# What a grid point cannot do without: the axis and the problem when neither the grid nor the spec sets it.
REQUIRED = {
    "objective": "no objective: set `objective: ar|mdlm` or a grid axis `objective: [ar, mdlm]`",
    "unique_tokens": "no unique-token budget: set data.unique_tokens or a grid axis unique_tokens",
    "total_tokens": "no compute budget: set train.total_tokens or a grid axis total_tokens",
}


@dataclass(frozen=True)
class Draft:
    """A trial before its checks: what the rules read. `varied`: the axes its grid varies (where a problem goes)."""

    objective: str
    data: DataSpec
    train: TrainSpec
    model: ModelConfig
    model_label: str
    noise: NoiseSpec
    resources: ResourcesSpec
    varied: frozenset[str]

    @property
    def unique(self) -> int:
        return self.data.unique_tokens  # type: ignore[return-value]

    @property
    def total(self) -> int:
        return self.train.total_tokens  # type: ignore[return-value]

    @property
    def workers(self) -> int:
        return self.resources.workers


# A rule returns None when the trial can run, else (where, message): `where` an axis (placed at the grid entry or
# the spec key that sets it) or a spec path. Adding a check is one function added to RULES.
Found = tuple[str | FieldPath, str] | None


def unique_within_total(d: Draft) -> Found:
    if d.unique <= d.total:
        return None
    grid = d.varied
    axis = "total_tokens" if "total_tokens" in grid and "unique_tokens" not in grid else "unique_tokens"
    return axis, (
        f"unique_tokens {format_tokens(d.unique)} exceeds total_tokens {format_tokens(d.total)}: a trial cannot see "
        "more unique tokens than it trains on; lower unique_tokens or raise train.total_tokens"
    )


def seq_len_within_model(d: Draft) -> Found:
    if d.data.seq_len <= d.model.max_seq_len:
        return None
    return "seq_len", (
        f"seq_len {d.data.seq_len} exceeds the model's maximum {d.model.max_seq_len} ({d.model_label}); "
        "shorten data.seq_len or set model.max_seq_len"
    )


def whole_sequences(d: Draft) -> Found:
    batch, seq_len = d.train.global_batch_tokens, d.data.seq_len
    if batch % seq_len == 0:
        return None
    grid = d.varied
    axis = "seq_len" if "seq_len" in grid and "global_batch_tokens" not in grid else "global_batch_tokens"
    return axis, (
        f"global_batch_tokens {batch} is not a whole number of {seq_len}-token sequences; "
        f"use a multiple of seq_len, e.g. {max(1, batch // seq_len) * seq_len}"
    )


def micro_batches_split(d: Draft) -> Found:
    if d.train.global_batch_tokens % d.data.seq_len:
        return None  # whole_sequences says what is wrong
    sequences, per_step = d.train.global_batch_tokens // d.data.seq_len, d.train.micro_batch * d.workers
    if sequences % per_step == 0 and sequences >= per_step:
        return None
    return "micro_batch", (
        f"the global batch of {sequences} sequences cannot be split into micro batches of {d.train.micro_batch} "
        f"on {d.workers} worker(s) ({per_step} sequences per accumulation step); make global_batch_tokens/seq_len "
        "a multiple of micro_batch x workers"
    )


def one_batch_at_least(d: Draft) -> Found:
    if d.total >= d.train.global_batch_tokens:
        return None
    return "total_tokens", (
        f"total_tokens {format_tokens(d.total)} is less than one global batch "
        f"({format_tokens(d.train.global_batch_tokens)})"
    )


def warmup_before_end(d: Draft) -> Found:
    if d.train.warmup_tokens < d.total:
        return None
    return "warmup_tokens", (
        f"warmup_tokens {format_tokens(d.train.warmup_tokens)} must be less than total_tokens {format_tokens(d.total)}"
    )


def min_lr_below_lr(d: Draft) -> Found:
    return None if d.train.min_lr <= d.train.lr else ("min_lr", f"min_lr {d.train.min_lr:g} exceeds lr {d.train.lr:g}")


def fp16_on_gpus(d: Draft) -> Found:
    if d.train.precision != "fp16" or d.resources.gpus_per_worker > 0:
        return None
    return ("train", "precision"), (
        "precision fp16 trains on GPUs only (its loss scaling is a GPU recipe); use auto, fp32 or bf16 on CPU, "
        "or set resources.gpus_per_worker"
    )


def fits_gpu_memory(d: Draft) -> Found:
    if d.resources.gpus_per_worker <= 0:
        return None
    fits, message = gpu_memory_fits(d.model, d.train, d.data.seq_len, d.resources)
    return None if fits else ("model" if "model" in d.varied else "micro_batch", message)


def input_mask_on_ar(d: Draft) -> Found:
    if d.objective == "ar" or d.noise.input_mask == 0:
        return None
    return "noise", (
        "input_mask noise applies to AR trials only; drop these MDLM points with an exclude rule, e.g. "
        f"exclude: [{{objective: mdlm, noise: {{input_mask: {d.noise.input_mask:g}}}}}]"
    )


RULES: tuple[Callable[[Draft], Found], ...] = (
    unique_within_total,
    seq_len_within_model,
    whole_sequences,
    micro_batches_split,
    one_batch_at_least,
    warmup_before_end,
    min_lr_below_lr,
    fp16_on_gpus,
    fits_gpu_memory,
    input_mask_on_ar,
)


def gpu_memory_fits(model: ModelConfig, train: TrainSpec, seq_len: int, resources: ResourcesSpec) -> tuple[bool, str]:
    """Whether a GPU trial's estimated peak memory fits its share of a GPU; if not, a message naming the changes
    that would make it fit (by the same estimate)."""
    budget = resources.gpu_memory_gb * GIB * min(1.0, resources.gpus_per_worker)
    settings = dict(
        precision="bf16" if train.precision == "auto" else train.precision,
        zero_stage=train.zero_stage,
        workers=resources.workers,
        micro_batch=train.micro_batch,
        seq_len=seq_len,
        checkpointing=train.activation_checkpointing,
    )
    estimate = estimate_memory(model, **settings)
    if estimate.total <= budget:
        return True, ""
    options = {
        "train.activation_checkpointing: selective": dict(checkpointing="selective"),
        "train.activation_checkpointing: full": dict(checkpointing="full"),
        f"train.micro_batch: {max(1, train.micro_batch // 2)}": dict(micro_batch=max(1, train.micro_batch // 2)),
        "train.zero_stage: 3": dict(zero_stage=3),
    }
    fixes = []
    for name, change in options.items():
        if any(settings[key] == value for key, value in change.items()):
            continue  # already the setting
        need = estimate_memory(model, **{**settings, **change}).total
        if need <= budget:
            fixes.append(f"{name} (~{need / GIB:.0f} GiB)")
    share = f" x gpus_per_worker {resources.gpus_per_worker:g}" if resources.gpus_per_worker < 1 else ""
    fix = f"fits with {' or '.join(fixes)}" if fixes else "add workers with train.zero_stage: 3, or lower micro_batch"
    return False, (
        f"the {model.preset or 'model'} trial needs ~{estimate.total / GIB:.0f} GiB per GPU ({estimate.describe()}), "
        f"more than resources.gpu_memory_gb {resources.gpu_memory_gb:g}{share}; {fix}"
    )


MAX_GRID_POINTS = 10_000  # trials a grid may expand to (the paper's largest study has a few hundred)


def expand_study(spec: StudySpec) -> list[TrialSpec]:
    """The cartesian product of the grid axes (seeds last), minus `exclude` rules, as complete TrialSpecs."""
    expander = _Expander(spec)
    axes = expander.axis_values()
    from crossover.specs.anneal import metric_problem  # lazy: import cycle (specs.anneal imports this module)
    from crossover.specs.search import search_problems  # lazy: the same cycle

    for where, message in search_problems(spec):
        expander.fail(where, message)

    if problem := metric_problem(spec):
        expander.fail(("early_stopped_ar", "metric" if spec.early_stopped_ar.metric else "anneal"), problem)
    if expander.problems:
        raise SpecError(expander.source.file, expander.problems)
    names = list(axes)
    points = math.prod(len(axes[n]) for n in names)
    if points > MAX_GRID_POINTS:  # checked before building any: a few short lists can multiply to billions
        sizes = " x ".join(f"{len(axes[n])} {n}" for n in names)
        expander.fail(
            ("grid",),
            f"the grid has {points:,} points ({sizes}), over the {MAX_GRID_POINTS:,} a study may "
            "run: split it into several studies or narrow an axis",
        )
        raise SpecError(expander.source.file, expander.problems)
    trials: list[TrialSpec] = []
    for indices in itertools.product(*(range(len(axes[n])) for n in names)):
        index = dict(zip(names, indices, strict=True))
        point = {n: axes[n][i] for n, i in index.items()}
        if expander.excluded(point):
            continue
        trial = expander.build(point, index)
        if trial is not None:
            trials.append(trial)
    if not trials and not expander.problems:
        expander.fail(("exclude",) if spec.exclude else ("grid",), "no trials left: every grid point is excluded")
    if expander.problems:
        raise SpecError(expander.source.file, expander.problems)
    seen: dict[str, int] = {}
    for i, trial in enumerate(trials):  # readable names are unique within a study
        if trial.name in seen:
            trials[i] = trial.model_copy(update={"name": f"{trial.name}-{trial.trial_id[:6]}"})
        seen[trial.name] = i
    return trials
