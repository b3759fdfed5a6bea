"""The study spec: pydantic models for every block of a study YAML file, and the resolved `TrialSpec`.

A grid axis value replaces the base value of the same name; `crossover.specs.expand` turns a `StudySpec` into
complete, self-contained `TrialSpec`s.
"""

from __future__ import annotations

import builtins
import difflib
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from crossover.specs.model import PRESETS, ModelConfig
from crossover.specs.tokens import parse_tokens

Tokens = Annotated[int, BeforeValidator(parse_tokens), Field(gt=0)]
TokensOrZero = Annotated[int, BeforeValidator(parse_tokens), Field(ge=0)]
Objective = Literal["ar", "mdlm"]
Quality = Literal["all", "low", "medium", "high"]


# Keys of earlier spec versions, by their dotted path: the spec error says what replaced them.
RETIRED_KEYS = {
    "eval.mdlm_steps": "retired key, replaced by 'mdlm_block': mdlm_steps set a number of decoding steps per answer "
    "(longer answers got larger blocks); mdlm_block is the tokens decoded per step, the same for every answer: 1 (the "
    "default) is MDLM's exact chain rule, 4 on the 16-token cloze spans matches the old mdlm_steps: 4, null the ELBO",
}


def closest(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """' (did you mean 'x'?)' for the nearest valid name, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


class Strict(BaseModel):
    """Every spec block rejects unknown keys, so a typo is an error and never a silently ignored setting."""

    model_config = ConfigDict(extra="forbid")


class Frozen(Strict):
    """Spec blocks that are grid-axis values: immutable and hashable, so equal values compare and cache alike."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class CorpusSpec(Strict):
    """Where the documents come from. The string shorthand `corpus: X` means `corpus: {source: X}`."""

    source: str = "stdlib-python"  # "stdlib-python", "python-packages", a local file, directory or glob, or "hf:<name>"
    format: Literal["auto", "jsonl", "json", "parquet", "csv", "txt"] = "auto"
    text_field: str = "text"
    hf_config: str | None = None
    split: str = "train"
    streaming: bool = False

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"source": data} if isinstance(data, str) else data


class TokenizerSpec(Strict):
    """A byte-level BPE trained on the corpus (`bpe_vocab`, special tokens included) or a pretrained tokenizer.

    A pretrained tokenizer states its `vocab_size` (mask token included) so that planning needs no download.
    """

    bpe_vocab: int | None = Field(default=None, ge=256)
    pretrained: str | None = None
    vocab_size: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_kind(self) -> TokenizerSpec:
        if self.pretrained is not None and self.bpe_vocab is not None:
            raise ValueError("give either bpe_vocab (train a BPE) or pretrained (load one), not both")
        if self.pretrained is not None and self.vocab_size is None:
            raise ValueError(
                f"pretrained tokenizer '{self.pretrained}' needs vocab_size (its size plus the mask token)"
            )
        if self.pretrained is None and self.bpe_vocab is None:
            self.bpe_vocab = 4096
        return self

    @property
    def size(self) -> int:
        return self.bpe_vocab if self.bpe_vocab is not None else self.vocab_size  # type: ignore[return-value]


class DataSpec(Strict):
    corpus: CorpusSpec = CorpusSpec()
    tokenizer: TokenizerSpec = TokenizerSpec()
    seq_len: int = Field(default=256, gt=0)
    heldout_tokens: Tokens = 200_000
    quality: Quality = "all"
    quality_scorer: str = "auto"  # "auto", "code", "prose", or the name of a score column in the dataset
    unique_tokens: Tokens | None = None  # the data budget; usually a grid axis
    cache_dir: str | None = None  # token stores and tokenizers; default ~/.cache/crossover
    # Which documents make up a budget: chosen by the trial's seed unless this is set, when every seed trains on the
    # same documents (the seed still sets the initial weights and the data order).
    budget_seed: int | None = Field(default=None, ge=0)
    # Where the token store lives so every node of a cluster reads it: a folder on a shared volume or an `s3://` /
    # `gs://` URI. `crossover data prepare` (and `crossover run`, when it is missing) builds it there as a Ray Data
    # job over the cluster's CPUs, in shards; each trial fetches only the shards its unique budget needs into its
    # local cache. Unset: the store is built in, and read from, the local cache (`cache_dir`).
    store: str | None = None

    @field_validator("store")
    @classmethod
    def _store_location(cls, value: str | None) -> str | None:
        if value is not None and "://" in value and value.split("://", 1)[0] not in ("s3", "gs"):
            raise ValueError(
                f"data.store '{value}' has an unsupported scheme; give a folder on a shared volume, "
                "s3://bucket/prefix or gs://bucket/prefix"
            )
        if value is not None and "://" not in value and not value.startswith(("/", "~")):
            raise ValueError(
                f"data.store '{value}' is a relative path; give an absolute folder on a shared volume (every node "
                "reaches it at the same path) or an s3:// or gs:// URI"
            )
        return value

    @model_serializer(mode="wrap")
    def _without_unset_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # left out while None, so the trial ids of specs written before these fields existed stay what they were
        dumped = handler(self)
        for name in ("budget_seed", "store"):
            if getattr(self, name) is None:
                dumped.pop(name, None)
        return dumped


class ModelSpec(Frozen):
    """A size preset, explicit dimensions, or a preset with some dimensions overridden. `model: nano` is a preset."""

    preset: str | None = None
    layers: int | None = Field(default=None, gt=0)
    d_model: int | None = Field(default=None, gt=0)
    heads: int | None = Field(default=None, gt=0)
    kv_heads: int | None = Field(default=None, gt=0)
    ffn: int | None = Field(default=None, gt=0)
    max_seq_len: int | None = Field(default=None, gt=0)
    qk_norm: bool | None = None
    rope_base: float | None = Field(default=None, gt=0)
    norm_eps: float | None = Field(default=None, gt=0)
    attention: Literal["auto", "sdpa", "flash"] | None = None
    compile: bool | Literal["auto"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"preset": data} if isinstance(data, str) else data

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, name: str | None) -> str | None:
        if name is not None and name not in PRESETS:
            raise ValueError(
                f"unknown model preset '{name}'{closest(name, list(PRESETS))}; presets: {', '.join(PRESETS)}"
            )
        return name

    @model_validator(mode="after")
    def _complete(self) -> ModelSpec:
        if self.preset is None:
            missing = [k for k in ("layers", "d_model", "heads", "ffn") if getattr(self, k) is None]
            if missing:
                raise ValueError(
                    f"a model without a preset needs {', '.join(missing)} (or name a preset: {', '.join(PRESETS)})"
                )
        return self

    @property
    def label(self) -> str:
        overrides = self.model_dump(exclude_none=True, exclude={"preset"})
        if self.preset and not overrides:
            return self.preset
        dims = f"L{self.layers or PRESETS[self.preset]['layers']}d{self.d_model or PRESETS[self.preset]['d_model']}"  # type: ignore[index]
        if self.preset and self.ffn is not None:  # a preset with a wider or narrower MLP (a dense peer of an MoE)
            dims += f"f{self.ffn}"
        return f"{self.preset}-{dims}" if self.preset else dims


class SparsitySpec(Frozen):
    """Dense (`experts: 1`) or mixture-of-experts. Unset fields keep the model preset's own (dense unless MoE preset)."""

    experts: int | None = Field(default=None, gt=0)
    top_k: int | None = Field(default=None, gt=0)
    aux_coef: float = Field(default=0.01, ge=0)
    z_coef: float = Field(default=0.001, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"experts": 1, "top_k": 1} if data == "dense" else data


class NoiseSpec(Frozen):
    """Regularising noise: AR input masking (share of input tokens replaced by the mask id) and dropout."""

    input_mask: float = Field(default=0.0, ge=0, lt=1)
    dropout: float = Field(default=0.0, ge=0, lt=1)

    @property
    def label(self) -> str:
        parts = [f"im{self.input_mask:g}"] if self.input_mask else []
        parts += [f"do{self.dropout:g}"] if self.dropout else []
        return "-".join(parts) or "clean"


class TrainSpec(Strict):
    total_tokens: Tokens | None = None  # the compute budget; may be a grid axis
    global_batch_tokens: Tokens = 16_384
    micro_batch: int = Field(default=16, gt=0)  # sequences per worker per forward pass
    lr: float = Field(default=1e-3, gt=0)
    min_lr: float = Field(default=1e-4, ge=0)
    warmup_tokens: TokensOrZero = 200_000
    schedule: Literal["wsd", "cosine", "constant"] = "wsd"
    decay_fraction: float = Field(default=0.2, gt=0, le=1)  # WSD: share of training spent in the exponential decay
    weight_decay: float = Field(default=0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(default=1e-8, gt=0)
    grad_clip: float = Field(default=1.0, ge=0)  # 0 disables clipping
    # auto: bf16 on a GPU and with AMX, fp32 without AVX512, else the faster measured (crossover.specs.hardware)
    precision: Literal["auto", "bf16", "fp32", "fp16"] = "auto"
    zero_stage: int = Field(default=1, ge=0, le=3)
    activation_checkpointing: Literal["none", "full", "selective"] = "none"  # recompute activations in backward
    mdlm_t_min: float = Field(default=1e-3, gt=0, lt=1)  # MDLM draws the mask ratio t ~ U(mdlm_t_min, 1]
    # checkpoints kept per trial (the latest); "all" keeps one per eval point, so a task added to the study later
    # is scored at every eval point instead of the last ones
    keep_checkpoints: Annotated[int, Field(ge=1)] | Literal["all"] = 2
    # a checkpoint also every this many minutes of training between eval points (None: at eval points only), so a
    # preempted trial loses minutes, not an epoch (hours on 16 GPUs at 1B tokens). 30: a 1B model's checkpoint
    # (weights and optimizer state, ~16 GB) takes seconds to a minute to write, at most a few percent of 30 minutes,
    # and a preemption then loses 15 minutes of training on average
    checkpoint_minutes: float | None = Field(default=30, gt=0)

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must each lie in [0, 1), got {list(betas)}")
        return betas


# Train fields a grid may vary (the optimizer and batch hyper-parameters).
HYPERPARAMETERS = (
    "lr",
    "min_lr",
    "warmup_tokens",
    "schedule",
    "decay_fraction",
    "weight_decay",
    "betas",
    "eps",
    "grad_clip",
    "global_batch_tokens",
    "micro_batch",
)


class EvalSpec(Strict):
    every: str | int = "epoch"  # "epoch" (the paper), a token count ("2M"), or "log:K" for K log-spaced points
    tasks: list[str] = ["heldout_loss"]
    mc_samples: int = Field(default=32, gt=0)  # Monte Carlo samples for MDLM likelihoods (its ELBO)
    # MDLM's multiple-choice answers decoded left to right, this many tokens per step, every answer alike whatever its
    # length: 1 is its exact chain rule (one forward per answer token); a larger block is cheaper and weaker (the
    # tokens of a block predicted independently); None scores them with the ELBO (mc_samples samples) instead
    mdlm_block: int | None = Field(default=1, gt=0)
    max_items: int = Field(default=200, gt=0)  # items per task per eval point
    lm_eval_include: str | None = None  # a folder of lm-eval task YAMLs (local tasks) beside lm-eval's own
    unsafe_execution: bool = False  # humaneval_pass@k on a host without the sandbox: run generated code unsandboxed

    @field_validator("every")
    @classmethod
    def _schedule(cls, every: str | int) -> str | int:
        if every == "epoch":
            return every
        if isinstance(every, str) and every.startswith("log:"):
            points = every[4:]
            if not points.isdigit() or int(points) < 1:
                raise ValueError(f"'log:K' needs a positive integer K, got {every!r}")
            return every
        tokens = parse_tokens(every)
        if tokens <= 0:
            raise ValueError(f"an eval interval must be positive, got {every!r}")
        return tokens

    @field_validator("tasks")
    @classmethod
    def _each_once(cls, tasks: list[str]) -> list[str]:
        # The names themselves are the task registry's (crossover.evals.registry, a floor above): the CLI checks them.
        repeated = sorted({t for t in tasks if tasks.count(t) > 1})
        if repeated:
            raise ValueError(f"eval task(s) {', '.join(repeated)} named twice")
        return tasks


class ResourcesSpec(Strict):
    workers: int = Field(default=1, gt=0)  # data-parallel workers per trial
    cpus_per_worker: float = Field(default=1, gt=0)
    gpus_per_worker: float = Field(default=0, ge=0)  # a fraction (0.5, 0.25) packs several small trials on a GPU
    gpu_memory_gb: float = Field(default=80, gt=0)  # per GPU: `plan` refuses a trial whose estimate exceeds it
    max_concurrent: int | None = Field(default=None, gt=0)  # None fills the cluster
    storage: str | None = None  # Ray storage path or URI for checkpoints; default ~/ray_results
    max_failures: int = Field(default=2, ge=0)  # restarts of a failed trial, each from its last checkpoint

    @field_validator("gpus_per_worker")
    @classmethod
    def _whole_or_fraction(cls, gpus: float) -> float:
        if gpus > 1 and gpus != int(gpus):
            raise ValueError(
                f"gpus_per_worker {gpus:g}: above 1 a worker takes whole GPUs (Ray can share one GPU, "
                "not split several); use a fraction below 1 to pack trials, or a whole number"
            )
        return gpus


class Distribution(Strict):
    """One search dimension: exactly one of uniform, loguniform, int (inclusive bounds) or choice."""

    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    # builtins.int: in this class body `int` names the field itself (None), so `tuple[int, int]` read as (None, None)
    int: tuple[builtins.int, builtins.int] | None = None
    choice: list[Any] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Distribution:
        given = [k for k in ("uniform", "loguniform", "int", "choice") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of uniform, loguniform, int, choice (got {given or 'none'})")
        bounds = getattr(self, given[0])
        if given[0] != "choice" and not bounds[0] < bounds[1]:
            raise ValueError(f"{given[0]} bounds must be increasing, got {list(bounds)}")
        if given[0] == "loguniform" and bounds[0] <= 0:
            raise ValueError("loguniform bounds must be positive")
        return self


# Settings a search may sample besides the train hyper-parameters: the regularising noise, AR's main regularisers.
NOISE_HYPERPARAMETERS = ("noise.dropout", "noise.input_mask")
SEARCHABLE = (*HYPERPARAMETERS, *NOISE_HYPERPARAMETERS)
OBJECTIVES = ("ar", "mdlm")


class SearchSpec(Strict):
    """Optuna search of each (grid cell, objective) on its own (crossover.platform.search): every group is one Optuna
    study whose samples are chosen on the metric's validation items; each group's winner is then retrained on
    `confirm_seeds` fresh seeds beside the spec's base settings on the same seeds, and the verdict compares the
    confirmed winners. `space` is shared by both objectives, or given per objective (`space: {ar: {...}, mdlm:
    {...}}`). `scope: grid` makes one Optuna study per objective whose samples also choose the cell."""

    method: Literal["optuna"] = "optuna"
    # eval/<task>/<metric> of a task with items, read on its validation half; default: the headline accuracy
    # (crossover.specs.anneal.anneal_metric). AR is scored by its best eval point (early-stopped), MDLM by its last.
    metric: str | None = None
    mode: Literal["min", "max"] | None = None  # default: the metric's own direction
    num_samples: int = Field(default=8, gt=0, le=10_000)  # per (cell, objective); scope grid: per objective
    scope: Literal["per_cell", "grid"] = "per_cell"
    space: dict[str, dict[str, Distribution]]  # objective -> name -> distribution (a shared space is copied to both)
    confirm_seeds: int = Field(default=3, ge=1, le=100)  # fresh seeds each winner (and the base) is retrained on
    # Optuna's median pruner within each (cell, objective), after this share of a trial's tokens (None: no pruning)
    prune_after: float | None = Field(default=0.33, gt=0, lt=1)
    # Optuna storage URL (sqlite:///..., postgresql://...) or a journal file path; default: a journal file beside the
    # study's driver log (its Ray storage when local), so a grown search continues every Optuna study
    storage: str | None = None

    @field_validator("space", mode="before")
    @classmethod
    def _per_objective(cls, space: Any) -> Any:
        """A space keyed by objective is kept; any other is the shared space of both objectives."""
        if isinstance(space, dict) and space and set(space) <= set(OBJECTIVES):
            return space
        return {objective: space for objective in OBJECTIVES}

    @field_validator("space")
    @classmethod
    def _known_names(cls, space: dict[str, dict[str, Distribution]]) -> dict[str, dict[str, Distribution]]:
        for objective, names in space.items():
            for name in names:
                if name not in SEARCHABLE:
                    raise ValueError(
                        f"cannot search over '{name}'{closest(name, SEARCHABLE)}; searchable: {', '.join(SEARCHABLE)}"
                    )
            if not names:
                raise ValueError(f"search.space.{objective} is empty: name at least one hyper-parameter")
        return space

    def space_of(self, objective: str) -> dict[str, Distribution]:
        return self.space.get(objective, {})


class EarlyStoppedArSpec(Strict):
    """The early-stopped AR baseline (the analysis' "AR's best"). Its stopping point is always chosen on the
    validation items (`crossover.tracking.names.item_split`) and scored on the test items. `anneal`: once the AR
    trials are done, `crossover run` trains one more AR trial per AR trial, the same one with its schedule's decay
    ending at that stop (continued from a kept checkpoint before its decay where there is one: keep_checkpoints: all),
    so the baseline is a model a practitioner would train, not a mid-run point at the stable learning rate."""

    anneal: bool = False
    metric: str | None = None  # eval/<task>/<metric> that chooses the stop; default: crossover.specs.anneal


class StudySpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)  # also the MLflow experiment name
    description: str = ""
    objective: Objective | None = None  # usually a grid axis
    data: DataSpec = DataSpec()
    model: ModelSpec = ModelSpec(preset="nano")
    sparsity: SparsitySpec = SparsitySpec()
    noise: NoiseSpec = NoiseSpec()
    train: TrainSpec = TrainSpec()
    eval: EvalSpec = EvalSpec()
    resources: ResourcesSpec = ResourcesSpec()
    grid: dict[str, list[Any]] = {}
    exclude: list[dict[str, Any]] = []
    seeds: list[Annotated[int, Field(ge=0)]] = Field(default=[0], min_length=1)
    search: SearchSpec | None = None
    early_stopped_ar: EarlyStoppedArSpec = EarlyStoppedArSpec()

    # Where each field came from in the YAML file, so expansion errors can name file, line and column.
    _source: Any = PrivateAttr(default=None)
    _trials: Any = PrivateAttr(default=None)

    def expand(self) -> list[TrialSpec]:
        """Every trial of the study, in grid order (see crossover.specs.expand)."""
        if self._trials is None:
            from crossover.specs.expand import expand_study  # lazy: import cycle (specs.expand imports this module)

            self._trials = expand_study(self)
        return self._trials


class TrialSpec(BaseModel):
    """One training run, complete and self-contained: nothing is resolved later. JSON round-trips exactly."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    study: str
    name: str  # readable, e.g. mdlm-U50k-nano-s0
    trial_id: str  # hash of the content below
    cell: str  # every axis value but objective and seed: the AR and MDLM trials of a cell are a matched pair
    objective: Objective
    seed: int
    axes: dict[str, str]  # readable values of the axes the grid varies
    data: DataSpec
    model: ModelConfig
    noise: NoiseSpec
    train: TrainSpec
    eval: EvalSpec
    resources: ResourcesSpec

    @property
    def unique_tokens(self) -> int:
        return self.data.unique_tokens  # type: ignore[return-value]

    @property
    def lineage_id(self) -> str:
        """Shared by the trials that differ from this one only in train.total_tokens (see `trial_identity`)."""
        from crossover.specs.expand import trial_identity  # lazy: import cycle, as in expand()

        return trial_identity(self.model_dump(mode="json", exclude={"trial_id", "name"}), lineage=True)

    @property
    def total_tokens(self) -> int:
        return self.train.total_tokens  # type: ignore[return-value]

    @property
    def epochs(self) -> float:
        return self.total_tokens / self.unique_tokens

    @property
    def grad_accum_steps(self) -> int:
        """Micro-batches per worker per optimizer step, so the global batch in tokens is the same for any worker count."""
        sequences = self.train.global_batch_tokens // self.data.seq_len
        return sequences // (self.train.micro_batch * self.resources.workers)
