"""A trained model ready to evaluate: the network, its objective and its tokenizer, from the trainer or a checkpoint.

A checkpoint directory (what the trainer reports at each eval point, kept by Ray storage or `crossover train`) holds

    model/                          DeepSpeed's files (tag "model")
    trial.json                      the TrialSpec the model was trained from
    tokenizer.json                  the tokenizer, so evaluating needs no token store
    rank<r>_crossover_state.json    the resume state of each rank

`load_checkpoint(path)` turns it into an `EvalModel` in fp32 (or `dtype`) on `device`, for `crossover eval`, the
lm-eval bridge and the samplers; the trainer builds the same `EvalModel` around its live network.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crossover.data.tokenizer import decode_ids, encode_text, real_size, special_ids
from crossover.errors import UserError
from crossover.models import build_model
from crossover.specs import TrialSpec

TRIAL_FILE = "trial.json"
TOKENIZER_FILE = "tokenizer.json"
DEEPSPEED_TAG = "model"


class CheckpointError(UserError):
    """A directory that is not a usable crossover checkpoint (a user error: the message says what is missing)."""

    title = "not a usable checkpoint"  # how the command line heads its message


@dataclass
class EvalModel:
    """What every evaluator takes. `model(tokens, attention_mask=...)` follows the crossover.models forward contract."""

    model: nn.Module
    objective: str  # "ar" (exact likelihood, sampled left to right) or "mdlm" (decoded in blocks or its ELBO, unmasked)
    tokenizer: Any  # a `tokenizers.Tokenizer`
    eod_id: int
    mask_id: int
    pad_id: int
    trial: TrialSpec | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_seq_len(self) -> int:
        return self.model.cfg.max_seq_len

    @property
    def window(self) -> int:
        """The sequence length the model was trained on (the model's limit when the trial is unknown)."""
        return min(self.trial.data.seq_len, self.max_seq_len) if self.trial is not None else self.max_seq_len

    @functools.cached_property
    def excluded_ids(self) -> tuple[int, ...]:
        """Ids that are no real token of a text, so no likelihood and no sample gives them probability: the mask, the
        pad (unless it is the end-of-document id, as with a tokenizer without a pad token) and the embedding rows past
        the tokenizer's vocabulary (the model pads its vocabulary; see `crossover.specs.expand.padded_vocab`)."""
        ids = {self.mask_id, self.pad_id} - {self.eod_id}
        if self.tokenizer is not None:
            vocab = self.model.cfg.vocab_size
            ids |= set(range(min(real_size(self.tokenizer), vocab), vocab))
        return tuple(sorted(ids))

    def encode(self, text: str) -> list[int]:
        """Token ids exactly as the token store tokenized documents (special-token text stays text)."""
        return encode_text(self.tokenizer, text)

    def decode(self, ids: Any) -> str:
        return decode_ids(self.tokenizer, ids)

    @classmethod
    def from_data(cls, model: nn.Module, objective: str, data: Any, trial: TrialSpec | None = None) -> EvalModel:
        """Around a live model and its `crossover.data.PreparedData` (the trainer's eval points)."""
        return cls(model, objective, data.tokenizer, data.eod_id, data.mask_id, data.pad_id, trial)


def write_checkpoint_extras(folder: str | Path, trial: TrialSpec, tokenizer_path: str | Path) -> None:
    """The files beside DeepSpeed's that make a checkpoint self-describing (rank 0 writes them)."""
    folder = Path(folder)
    (folder / TRIAL_FILE).write_text(trial.model_dump_json(indent=1))
    (folder / TOKENIZER_FILE).write_bytes(Path(tokenizer_path).read_bytes())


def _module_state(folder: Path, zero_stage: int) -> dict[str, torch.Tensor]:
    model_states = folder / DEEPSPEED_TAG / "mp_rank_00_model_states.pt"
    if not model_states.exists():
        raise CheckpointError(f"{folder} has no DeepSpeed model states ({model_states.relative_to(folder)})")
    if zero_stage >= 3:  # parameters are partitioned across ranks: gather the fp32 copies from the optimizer files
        # lazy: deepspeed takes seconds to import and only a ZeRO-3 checkpoint needs it (crossover eval)
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=DEEPSPEED_TAG)
    return torch.load(model_states, map_location="cpu", weights_only=False)["module"]


def read_trial(path: Path) -> TrialSpec:
    """A checkpoint's TrialSpec. One written before `eval.mdlm_block` carries `eval.mdlm_steps` (decoding steps per
    answer): it is dropped, so the checkpoint is scored with the default block (1, exact) unless told otherwise."""
    values = json.loads(path.read_text())
    if isinstance(values.get("eval"), dict):
        values["eval"].pop("mdlm_steps", None)
    return TrialSpec.model_validate(values)


def load_checkpoint(
    path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> EvalModel:
    """The model of a crossover checkpoint directory, in eval mode on `device`."""
    # lazy: tokenizers is not in the planner install, and `crossover plan` imports this module (Task.cost)
    from tokenizers import Tokenizer

    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {folder} does not exist or is not a directory")
    missing = [name for name in (TRIAL_FILE, TOKENIZER_FILE) if not (folder / name).exists()]
    if missing:
        raise CheckpointError(
            f"{folder} is not a crossover checkpoint: {', '.join(missing)} missing; pass a checkpoint_* directory "
            "written by `crossover train` or a trial's Ray storage"
        )
    trial = read_trial(folder / TRIAL_FILE)
    model = build_model(trial.model, causal=trial.objective == "ar")
    state = _module_state(folder, trial.train.zero_stage)
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    model.to(device=device, dtype=dtype).eval()
    tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
    ids = special_ids(tokenizer)
    return EvalModel(model, trial.objective, tokenizer, ids.eod, ids.mask, ids.pad, trial)
