"""The data layer, measured side by side in one run (ratios are the result; absolute numbers depend on the machine).

1. Tokenizing the default corpus (the stdlib, BPE 4096 as in study_specs/cpu_crossover.yaml): a full store build
   by stage, and the tokenizer's encode throughput on all cores against one thread (tokens/s).
2. `crossover data prepare` twice as a command: the second run is a verified cache hit (goal: under 2 s).
3. Loader time per optimizer step as a share of a nano training step (forward + backward + AdamW over the same
   micro-batches), for the cpu-crossover trial shape: seq_len 256, 64 sequences per step in 4 micro-batches of 16
   (goal: under 2%).

Everything is written to a temporary cache, removed at the end. Run: .venv/bin/python bench/bench_data.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "study_specs" / "cpu_crossover.yaml"
ENCODE = """
import sys, time
from tokenizers import Tokenizer
from crossover.data import load_corpus
from crossover.specs.study import CorpusSpec
texts = load_corpus(CorpusSpec())["text"]
tok = Tokenizer.from_file(sys.argv[1])
tok.encode_special_tokens = True
tok.encode_batch_fast(texts[:50], add_special_tokens=False)
start = time.perf_counter()
n = sum(len(e.ids) for e in tok.encode_batch_fast(texts, add_special_tokens=False))
print(n, time.perf_counter() - start)
"""


def bench_spec(cache: Path) -> Path:
    """cpu_crossover.yaml with one budget that fits the stdlib (2.4M) and the cache in a temporary directory."""
    raw = yaml.safe_load(SPEC.read_text())
    raw["data"]["cache_dir"] = str(cache)
    raw["grid"]["unique_tokens"] = ["2.4M"]
    path = cache.parent / "bench_data.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def encode_rate(tokenizer: Path, parallel: bool) -> tuple[int, float]:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "true" if parallel else "false"}
    out = subprocess.run(
        [sys.executable, "-c", ENCODE, str(tokenizer)], capture_output=True, text=True, check=True, env=env, cwd=ROOT
    )
    tokens, seconds = out.stdout.split()
    return int(tokens), float(seconds)


def nano_step(trial):
    """A function running one training step of the trial's model on a step's micro-batches: the project's backbone when it imports,
    else an equivalent torch.nn transformer (4 layers, d_model 128, 4 heads, FFN 512)."""
    import torch

    try:
        from crossover.models import build_model
        from crossover.models.objectives import ar_inputs_targets, ar_loss

        model = build_model(trial.model, causal=True)
        which = "crossover.models nano"

        def loss_of(tokens):
            inputs, targets = ar_inputs_targets(tokens)
            return ar_loss(model(inputs).logits, targets)
    except ImportError:
        cfg = trial.model
        layer = torch.nn.TransformerEncoderLayer(cfg.d_model, cfg.heads, cfg.ffn, dropout=0.0, batch_first=True)
        body = torch.nn.TransformerEncoder(layer, cfg.layers)
        embed, head = torch.nn.Embedding(cfg.vocab_size, cfg.d_model), torch.nn.Linear(cfg.d_model, cfg.vocab_size)
        model = torch.nn.ModuleList([embed, body, head])
        which = "torch.nn transformer (nano dims)"

        def loss_of(tokens):
            inputs, targets = tokens[:, :-1], tokens[:, 1:]
            mask = torch.nn.Transformer.generate_square_subsequent_mask(inputs.shape[1])
            logits = head(body(embed(inputs), mask=mask, is_causal=True))
            return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(micro_batches):
        for tokens in micro_batches:
            loss_of(tokens).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, which


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5, help="nano training steps to time")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="crossover-bench-data-"))
    try:
        run(tmp / "cache", args.steps)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(cache: Path, steps: int) -> None:
    import torch

    from crossover.data import prepare, train_stream
    from crossover.specs import load_study

    torch.set_num_threads(2)
    spec_path = bench_spec(cache)
    spec = load_study(spec_path)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (others' work inflates timings)")

    # 1. a full build, by stage
    marks: dict[str, float] = {}
    start = time.perf_counter()
    data = prepare(spec.data, progress=lambda stage, done, total: marks.setdefault(stage, time.perf_counter()))
    build = time.perf_counter() - start
    marks["done"] = start + build
    stages = list(marks)
    print(f"\n1. store build of the stdlib corpus (bpe {spec.data.tokenizer.bpe_vocab}): {build:.1f} s")
    for a, b in zip(stages, stages[1:], strict=False):
        print(f"   {a:20s} {marks[b] - marks[a]:6.2f} s")
    m = data.manifest
    tokenize_s = marks["writing store"] - marks["tokenizing"]
    print(
        f"   {m['documents']:,} documents, {m['tokens']:,} tokens: tokenize+score {m['tokens'] / tokenize_s:,.0f} "
        f"tokens/s, whole build {m['tokens'] / build:,.0f} tokens/s"
    )
    tokens, par = encode_rate(data.root / "tokenizer.json", parallel=True)
    _, seq = encode_rate(data.root / "tokenizer.json", parallel=False)
    print(
        f"   encode only: {tokens / par:,.0f} tokens/s on all cores vs {tokens / seq:,.0f} on one thread "
        f"({seq / par:.2f}x)"
    )

    # 2. the command, twice: the second run is a cache hit
    command = [sys.executable, "-m", "crossover.cli", "data", "prepare", str(spec_path)]
    times = []
    for _ in range(3):
        start = time.perf_counter()
        out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
        times.append(time.perf_counter() - start)
        assert "cached" in out.stdout, out.stdout
    start = time.perf_counter()
    again = prepare(spec.data)
    hit = time.perf_counter() - start
    assert not again.built
    print(
        f"\n2. `crossover data prepare` again (cache hit, store verified by sha256): "
        f"{statistics.median(times):.2f} s wall per command (median of 3, Python start included); "
        f"prepare() itself {hit * 1e3:.0f} ms"
    )

    # 3. loader time per step against a nano training step
    trial = spec.expand()[0]
    stream = train_stream(trial, data)
    steps_timed = min(stream.num_steps, 300)
    start = time.perf_counter()
    batches = [b for _, b in zip(range(steps_timed), stream, strict=False)]
    loader = (time.perf_counter() - start) / steps_timed
    step, which = nano_step(trial)
    step(batches[0].micro_batches)  # warm-up
    samples = []
    for i in range(steps):
        start = time.perf_counter()
        step(batches[i % len(batches)].micro_batches)
        samples.append(time.perf_counter() - start)
    train_s = statistics.median(samples)
    shape = f"{stream.grad_accum_steps} x {list(batches[0].micro_batches[0].shape)}"
    print(
        f"\n3. per optimizer step ({trial.name}: {shape} tokens): loader {loader * 1e3:.3f} ms, "
        f"{which} step {train_s * 1e3:.0f} ms -> loader = {loader / train_s:.3%} of a step"
    )
    print(f"   order hash {stream.order_hash}, {stream.num_steps} steps, {stream.steps_per_epoch:.1f} steps per epoch")


if __name__ == "__main__":
    main()
