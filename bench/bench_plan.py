"""`crossover plan` on a 10,000-trial grid, timed end to end (goal: well under 5 s).

Run: .venv/bin/python bench/bench_plan.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPEC = """
name: bench-10k
data: {corpus: stdlib-python, seq_len: 256}
model: nano
train: {total_tokens: 1B, global_batch_tokens: 16384, micro_batch: 16, warmup_tokens: 1M}
grid:
  objective: [ar, mdlm]
  unique_tokens: [%s]
  lr: [1e-4, 2e-4, 5e-4, 1e-3, 2e-3]
  weight_decay: [0.0, 0.01, 0.05, 0.1, 0.2]
  model: [nano, micro, mini, 100m]
seeds: [0, 1, 2, 3, 4]
"""


def main() -> None:
    budgets = ", ".join(f"{(i + 1) * 10}M" for i in range(10))  # 2 x 10 x 5 x 5 x 4 x 5 = 10,000 trials
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "bench.yaml"
        spec.write_text(SPEC % budgets)
        crossover = [sys.executable, "-m", "crossover.cli"]
        for label, args in [
            ("plan --json", ["plan", str(spec), "--json"]),
            ("plan (table)", ["plan", str(spec)]),
            ("validate", ["validate", str(spec)]),
        ]:
            start = time.perf_counter()
            result = subprocess.run([*crossover, *args], capture_output=True, text=True, check=True)
            seconds = time.perf_counter() - start
            print(f"{label:14s} 10,000 trials: {seconds:5.2f} s  ({len(result.stdout) / 1e6:.1f} MB of output)")
        start = time.perf_counter()
        subprocess.run([*crossover, "--version"], capture_output=True, check=True)
        print(f"{'--version':14s} (startup alone): {time.perf_counter() - start:5.2f} s")


if __name__ == "__main__":
    main()
