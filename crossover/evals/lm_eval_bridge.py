"""The lm-evaluation-harness bridge: any lm-eval task on a crossover model, AR or MDLM, with per-item results.

`CrossoverLM` is an `lm_eval.api.model.LM` around an `EvalModel`, registered as model "crossover" so that
`lm_eval --model crossover --model_args pretrained=<checkpoint dir>` works once this module is imported.
Its three request types all go through the scorers of `crossover.evals.likelihood` and the samplers of
`crossover.evals.sampling`, so a number computed here is the number computed anywhere else in crossover:

- `loglikelihood(context, continuation)`: the sequence scored is [eod] + context + continuation. The end-of-document
  id is the BOS because training streams concatenate documents separated by it, so a document always follows one; it
  also gives an empty context something to condition on. AR: exact log p(continuation | context) (`ar_loglik`).
  MDLM: the likelihood of decoding the continuation left to right, `mdlm_block` tokens per step (default 1: its exact
  chain rule, `mdlm_ordered_loglik`, no Monte Carlo draw; every continuation with the same block size, whatever its
  length). With `mdlm_block=None`, the Monte Carlo ELBO with `mc_samples`
  samples (`mdlm_loglik`), a lower bound in expectation, drawn from a CPU
  generator seeded with `seed` at the start of every call: the same requests, seed and batch size give the same
  numbers on any device (common random numbers across a trial's eval points); the choices of one item (requests with
  the same context) share their masks, as in the held-out cloze, so which choice wins is the model's answer and not
  the draw's. The mask and pad ids never receive probability (`EvalModel.excluded_ids`). `is_greedy`: AR, whether the
  continuation is the argmax at every position (teacher forced, from the same forward pass); MDLM, whether filling
  all continuation positions at once, every one masked, by their argmax reproduces it (one extra forward pass).
- `loglikelihood_rolling(text)`: log p(text | eod) in lm-eval's disjoint rolling windows (`get_rolling_token_windows`
  with one token of context, the last window with a full context), each window scored as a loglikelihood request
  above and summed: exact for AR, a sum of per-window ELBOs for MDLM.
- `generate_until(context, gen_kwargs)`: `crossover.evals.sampling.generate` on [eod] + context (greedy unless the
  task asks for `do_sample`), stopping at eod, then cut at the first of the `until` strings; `max_gen_toks` new tokens
  at most. MDLM fills a canvas of exactly `max_gen_toks` tokens (`steps`, `block_length`, `remasking` configure it).

Every scored sequence holds at most `max_length` tokens (default: the model's max_seq_len). A context that does not
fit is cut from the left (the BOS goes first); a continuation that cannot fit beside one context token is an error
rather than a silently partial score. Requests are sorted by length (then content, so the order they arrive in does
not matter) and run `batch_size` at a time, right-padded for scoring and left-padded by the sampler.

`run_lm_eval(em, tasks)` runs tasks through `lm_eval.simple_evaluate` and returns one `TaskResult` per task (and per
group), named `lm_eval:<task>`, with lm-eval's metrics and per-document metrics from its logged samples.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lm_eval.models  # noqa: F401  (registers lm-eval's own models first: its registry loads them only when empty)
import numpy as np
import torch
from lm_eval import simple_evaluate
from lm_eval.api.instance import Instance
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.tasks import TaskManager
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from torch import nn

from crossover.evals.checkpoint import EvalModel, load_checkpoint
from crossover.evals.likelihood import continuation_loglik, evaluating, logits_of
from crossover.evals.results import TaskResult
from crossover.evals.sampling import generate
from crossover.evals.tasks import item_key


class _KeepLogits:
    """Calls the network and keeps the logits of the last call, so AR's is_greedy needs no second forward pass."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.logits: torch.Tensor | None = None

    def __call__(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.logits = logits_of(self.model(tokens, attention_mask=attention_mask))
        return self.logits


@register_model("crossover")
class CrossoverLM(LM):
    """An lm-eval model around a crossover `EvalModel` (or the checkpoint directory `pretrained`)."""

    def __init__(
        self,
        pretrained: str | Path | EvalModel,
        mc_samples: int = 32,
        mdlm_block: int | None = 1,
        batch_size: int | str = 16,
        device: str | None = None,
        seed: int = 0,
        max_length: int | None = None,
        max_tokens: int = 16384,
        max_gen_toks: int = 256,
        steps: int | None = None,
        block_length: int | None = None,
        remasking: str = "low_confidence",
    ) -> None:
        """`device` places a checkpoint (default: cuda when available); an `EvalModel` stays where it is.
        `max_tokens` bounds the token positions of one MDLM forward pass (see `mdlm_loglik`). `mdlm_block`: MDLM
        scores a continuation by decoding it left to right, that many tokens per step (`mdlm_ordered_loglik`; 1, as
        in a spec's eval block: the exact chain rule), or with None by the ELBO's `mc_samples`; `steps`, `block_length`, `remasking` are the
        generation sampler's."""
        super().__init__()
        if isinstance(pretrained, EvalModel):
            self.em = pretrained
        else:
            self.em = load_checkpoint(pretrained, device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.em.objective not in ("ar", "mdlm"):
            raise ValueError(f"unknown objective '{self.em.objective}'; expected 'ar' or 'mdlm'")
        try:
            self.batch_size = int(batch_size)
        except ValueError:
            raise ValueError(f"batch_size must be a whole number for crossover models, got '{batch_size}'") from None
        self.mc_samples = int(mc_samples)
        self.mdlm_block = None if mdlm_block in (None, "", "None") else int(mdlm_block)  # model_args give strings
        if self.mdlm_block is not None and self.mdlm_block < 1:
            raise ValueError(f"mdlm_block must be >= 1 token per step (or None for the ELBO), got {mdlm_block}")
        self.seed = int(seed)
        self.max_length = int(max_length or self.em.max_seq_len)
        if not 2 <= self.max_length <= self.em.max_seq_len:
            raise ValueError(f"max_length must be in 2..{self.em.max_seq_len} (the model's max_seq_len)")
        self.max_tokens = int(max_tokens)
        self.max_gen_toks = int(max_gen_toks)
        self.mdlm_sampler = {"steps": steps, "block_length": block_length, "remasking": remasking}
        self._device = self.em.device

    # ---------------------------------------------------------------- loglikelihood

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        pairs = [self._encode_pair(*req.args) for req in requests]
        results = self._score(pairs)
        for req, result in zip(requests, results, strict=True):
            self.cache_hook.add_partial("loglikelihood", req.args, result)
        return results

    def loglikelihood_rolling(self, requests: list[Instance]) -> list[float]:
        pairs: list[tuple[list[int], list[int]]] = []
        owner: list[int] = []
        for n, req in enumerate(requests):
            ids = self.em.encode(req.args[0])
            # max_length - 1: a window's context + continuation is one token longer than its window
            for window in get_rolling_token_windows(ids, self.em.eod_id, self.max_length - 1, context_len=1):
                pairs.append(make_disjoint_window(window))
                owner.append(n)
        totals = [0.0] * len(requests)
        for n, (logp, _) in zip(owner, self._score(pairs), strict=True):
            totals[n] += logp
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """([eod] + context ids, continuation ids) from one encoding of context + continuation, so the scored tokens
        are the ones the model saw in training. As in lm-eval's HF model, the context's trailing spaces move to the
        continuation. The split is where the whole's tokens stop matching the context's own: when a token merges
        across the boundary (a context ending in a newline, a continuation starting with spaces), that token belongs to
        the continuation, rather than being dropped as by cutting at len(context ids)."""
        spaces = len(context) - len(context.rstrip(" "))
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole, alone = self.em.encode(context + continuation), self.em.encode(context)
        shared = 0
        while shared < min(len(alone), len(whole)) and alone[shared] == whole[shared]:
            shared += 1
        return [self.em.eod_id, *whole[:shared]], whole[shared:]

    def _fit(self, context: list[int], continuation: list[int]) -> tuple[list[int], int]:
        """The scored sequence, cut from the left to max_length, and its number of continuation tokens."""
        if len(continuation) > self.max_length - 1:
            raise ValueError(
                f"a continuation of {len(continuation)} tokens does not fit in max_length {self.max_length} beside "
                "a context token; raise max_length or shorten the task's targets"
            )
        return (context + continuation)[-self.max_length :], len(continuation)

    def _score(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        rows = [self._fit(context, continuation) for context, continuation in pairs]
        # The choices of one item share their context: the same key gives them the same MDLM masks (common random
        # numbers, as in crossover.evals.tasks), so which choice wins is the model's answer and not the draw's.
        keys = [item_key(",".join(map(str, context))) for context, _ in pairs]
        order = sorted(range(len(rows)), key=lambda i: (-len(rows[i][0]), rows[i][0], rows[i][1]))
        generator = torch.Generator().manual_seed(self.seed)  # CPU: the same draws whatever the device
        results: list[tuple[float, bool]] = [(0.0, True)] * len(rows)
        with evaluating(self.em.model):
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                scored = self._score_batch([rows[i] for i in batch], [keys[i] for i in batch], generator)
                for i, result in zip(batch, scored, strict=True):
                    results[i] = result
        return results

    def _score_batch(
        self, rows: list[tuple[list[int], int]], keys: list[int], generator: torch.Generator
    ) -> list[tuple[float, bool]]:
        device = self.em.device
        width = max(len(ids) for ids, _ in rows)
        tokens = torch.full((len(rows), width), self.em.pad_id, dtype=torch.long)
        continuation = torch.zeros(len(rows), width, dtype=torch.bool)
        for r, (ids, n) in enumerate(rows):
            tokens[r, : len(ids)] = torch.tensor(ids)
            continuation[r, len(ids) - n : len(ids)] = True
        lengths = torch.tensor([len(ids) for ids, _ in rows])
        tokens, continuation, lengths = tokens.to(device), continuation.to(device), lengths.to(device)
        padded = lengths if bool((lengths < width).any()) else None  # no mask at all lets attention take its fast path
        keep = _KeepLogits(self.em.model)
        logp = continuation_loglik(
            self.em,
            tokens,
            continuation,
            padded,
            block=self.mdlm_block,
            mc_samples=self.mc_samples,
            generator=generator,
            row_keys=keys,
            max_tokens=self.max_tokens,
            model=keep,
        )
        excluded = list(self.em.excluded_ids)  # never an argmax either
        if self.em.objective == "ar":
            logits = keep.logits[:, :-1].clone()
            logits[..., excluded] = float("-inf")
            greedy = (logits.argmax(-1) == tokens[:, 1:]) | ~continuation[:, 1:]
        else:
            valid = None if padded is None else torch.arange(width, device=device)[None, :] < lengths[:, None]
            all_masked = tokens.masked_fill(continuation, self.em.mask_id)
            logits = logits_of(self.em.model(all_masked, attention_mask=valid))
            logits[..., excluded] = float("-inf")
            greedy = (logits.argmax(-1) == tokens) | ~continuation
        greedy = greedy.all(-1)
        return [(float(lp), bool(g)) for lp, g in zip(logp.tolist(), greedy.tolist(), strict=True)]

    # ---------------------------------------------------------------- generation

    def generate_until(self, requests: list[Instance]) -> list[str]:
        # requests with the same generation settings share batches
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        outputs = [""] * len(requests)
        generator = torch.Generator(device=self.em.device).manual_seed(self.seed)
        for members in groups.values():
            gen_kwargs = dict(requests[members[0]].args[1])
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            new_tokens = min(int(gen_kwargs.get("max_gen_toks", self.max_gen_toks)), self.max_length - 1)
            options = self._sampler_options(gen_kwargs, generator)
            room = self.max_length - new_tokens  # the prompt is cut from the left to leave room for the new tokens
            prompts = {i: [self.em.eod_id, *self.em.encode(requests[i].args[0])][-room:] for i in members}
            ordered = sorted(members, key=lambda i: -len(prompts[i]))
            for start in range(0, len(ordered), self.batch_size):
                batch = ordered[start : start + self.batch_size]
                new_ids = generate(self.em, [prompts[i] for i in batch], new_tokens, **options)
                for i, ids in zip(batch, new_ids, strict=True):
                    outputs[i] = _cut_at(self.em.decode(ids), until)
                    self.cache_hook.add_partial("generate_until", requests[i].args, outputs[i])
        return outputs

    def _sampler_options(self, gen_kwargs: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
        # lm-eval's convention: greedy unless do_sample; sampling without a temperature means temperature 1
        temperature = float(gen_kwargs.get("temperature", 1.0)) if gen_kwargs.get("do_sample") else 0.0
        options: dict[str, Any] = {"temperature": temperature, "stop_ids": [self.em.eod_id], "generator": generator}
        if self.em.objective == "ar":
            options["top_p"] = float(gen_kwargs.get("top_p") or 1.0)
        else:
            options.update({k: v for k, v in self.mdlm_sampler.items() if v is not None})
        return options


def _cut_at(text: str, until: Sequence[str]) -> str:
    """`text` up to the earliest occurrence of any stop string."""
    ends = [text.find(stop) for stop in until if stop]
    return text[: min((e for e in ends if e >= 0), default=len(text))]


# -------------------------------------------------------------------- running tasks


@contextlib.contextmanager
def _own_rng(device: torch.device) -> Iterator[None]:
    """simple_evaluate seeds python, numpy and torch globally: give the caller (a training loop) its streams back."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def _metric_name(key: str) -> str:
    """lm-eval's "<metric>,<filter>" as a name MLflow accepts: "acc,none" -> "acc", "acc_stderr,none" ->
    "acc_stderr", "exact_match,strict-match" -> "exact_match_strict-match" (and its "..._stderr")."""
    name, _, filter_name = key.partition(",")
    base = name.removesuffix("_stderr")
    if filter_name and filter_name != "none":
        base = f"{base}_{filter_name}"
    return f"{base}_stderr" if name.endswith("_stderr") else base


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating))


def _items(samples: list[dict[str, Any]], prefix: str = "") -> tuple[list[str], dict[str, list[float]]]:
    """Per document ids and metric values from lm-eval's logged samples (one sample per document and filter)."""
    per_doc: dict[int, dict[str, float]] = {}
    for sample in samples:
        values = per_doc.setdefault(int(sample["doc_id"]), {})
        for metric in sample["metrics"]:
            if _is_number(sample.get(metric)):  # perplexity metrics log (loglik, count) pairs, not per-item values
                values[_metric_name(f"{metric},{sample['filter']}")] = float(sample[metric])
    doc_ids = sorted(per_doc)
    names = sorted({name for values in per_doc.values() for name in values})
    item_metrics = {name: [per_doc[d].get(name, float("nan")) for d in doc_ids] for name in names}
    return [f"{prefix}{d}" for d in doc_ids], item_metrics


def _leaves(name: str, group_subtasks: dict[str, list[str]]) -> list[str]:
    children = group_subtasks.get(name) or []
    return [leaf for child in children for leaf in _leaves(child, group_subtasks)] if children else [name]


def task_results(output: dict[str, Any]) -> dict[str, TaskResult]:
    """One TaskResult per task and group of a `simple_evaluate(..., log_samples=True)` output, named lm_eval:<name>.

    A group's items are its tasks' documents, "<task>/<doc_id>" (the group's mean weighs tasks by size, so the mean
    over its items is the group's score)."""
    samples = output.get("samples", {})
    group_subtasks = output.get("group_subtasks", {})
    results = {}
    for name, summary in output["results"].items():
        metrics = {_metric_name(k): float(v) for k, v in summary.items() if "," in k and _is_number(v)}
        if name in samples:
            item_ids, item_metrics = _items(samples[name])
        else:
            item_ids, item_metrics = [], {}
            for leaf in _leaves(name, group_subtasks):
                ids, values = _items(samples.get(leaf, []), prefix=f"{leaf}/")
                for metric in item_metrics.keys() | values.keys():  # a metric only some tasks have is NaN elsewhere
                    previous = item_metrics.get(metric, [float("nan")] * len(item_ids))
                    item_metrics[metric] = previous + values.get(metric, [float("nan")] * len(ids))
                item_ids += ids
        results[f"lm_eval:{name}"] = TaskResult(f"lm_eval:{name}", metrics, item_ids, item_metrics)
    return results


def run_lm_eval(
    em: EvalModel,
    tasks: list[str],
    *,
    include_path: str | Path | list[str | Path] | None = None,
    include_defaults: bool = True,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    mc_samples: int = 32,
    mdlm_block: int | None = 1,
    batch_size: int = 16,
    seed: int = 0,
    bootstrap_iters: int = 1000,
    task_manager: Any = None,
) -> dict[str, TaskResult]:
    """lm-eval `tasks` (names from lm-eval and from `include_path`'s task YAMLs) on `em`: {"lm_eval:<task>": result}.

    `include_defaults=False` skips indexing lm-eval's ~15k built-in task files (seconds) when every task comes from
    `include_path`. `seed` drives the MDLM Monte Carlo draws, sampling, lm-eval's few-shot choice and its seeding of
    the global generators, which are restored afterwards. `bootstrap_iters` only matters for metrics without a closed
    form standard error (perplexities); lm-eval runs them in a process pool. `task_manager`: one built before
    (`lm_eval.tasks.TaskManager`), so a caller evaluating repeatedly indexes the task files once.
    """
    lm = CrossoverLM(em, mc_samples=mc_samples, mdlm_block=mdlm_block, batch_size=batch_size, seed=seed)
    manager = task_manager or TaskManager(include_path=include_path, include_defaults=include_defaults)
    with _own_rng(em.device):
        output = simple_evaluate(
            model=lm,
            tasks=list(tasks),
            task_manager=manager,
            limit=limit,
            num_fewshot=num_fewshot,
            log_samples=True,
            bootstrap_iters=bootstrap_iters,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    return task_results(output)
