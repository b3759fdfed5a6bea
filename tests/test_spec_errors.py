"""Every impossible or malformed study exits 2 naming file, line and field, before anything runs or is written."""

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from crossover.cli import app

runner = CliRunner()

GOOD = """\
name: errors
data:
  seq_len: 128
model: nano
train:
  total_tokens: 1M
  global_batch_tokens: 4096
  micro_batch: 8
  warmup_tokens: 10k
grid:
  objective: [ar, mdlm]
  unique_tokens: [50k, 200k]
"""

# (case, spec text, field the message must name, line, words the message must contain)
CASES = [
    ("unique exceeds total", GOOD.replace("[50k, 200k]", "[50k, 2M]"), "grid.unique_tokens[1]", 12, ["exceeds total_tokens"]),
    ("non-positive budget", GOOD.replace("[50k, 200k]", "[0, 200k]"), "grid.unique_tokens[0]", 12, ["greater than 0"]),
    ("negative total", GOOD.replace("total_tokens: 1M", "total_tokens: -5"), "train.total_tokens", 6, ["greater than 0"]),
    ("batch not divisible", GOOD.replace("micro_batch: 8", "micro_batch: 12"), "train.micro_batch", 8, ["micro batches of 12"]),
    ("batch not whole sequences", GOOD.replace("4096", "4000"), "train.global_batch_tokens", 7, ["multiple of seq_len"]),
    ("top_k above experts", GOOD + "sparsity: {experts: 2, top_k: 4}\n", "sparsity", 13, ["top_k (4) cannot exceed experts (2)"]),
    ("unknown objective", GOOD.replace("[ar, mdlm]", "[ar, diffusion]"), "grid.objective[1]", 11, ["'ar' or 'mdlm'", "diffusion"]),
    ("unknown preset", GOOD.replace("model: nano", "model: nanoo"), "model.preset", 4, ["unknown model preset 'nanoo'", "did you mean 'nano'"]),
    ("unknown preset in grid", GOOD + "  model: [nano, gpt5]\n", "grid.model[1]", 13, ["unknown model preset 'gpt5'"]),
    ("unknown quality tier", GOOD.replace("seq_len: 128", "seq_len: 128\n  quality: best"), "data.quality", 4, ["'low'", "best"]),
    ("seq_len beyond model max", GOOD.replace("seq_len: 128", "seq_len: 2048").replace("4096", "32768"), "data.seq_len", 3, ["exceeds the model's maximum 1024"]),
    ("empty grid after exclude", GOOD + "exclude:\n  - {objective: [ar, mdlm]}\n", "exclude", 13, ["no trials left"]),
    ("malformed yaml", GOOD.replace("micro_batch: 8", "micro_batch: [8"), "(yaml)", 9, ["malformed YAML"]),
    ("empty file", "", "(top level)", 1, ["mapping", "empty"]),
    ("top level a list", "- name: x\n- model: nano\n", "(top level)", 1, ["mapping", "list"]),
    ("unknown key", GOOD.replace("train:", "trian:"), "trian", 5, ["unknown key 'trian'", "did you mean 'train'"]),
    ("unknown nested key", GOOD.replace("micro_batch: 8", "micro_batch: 8\n  learning_rate: 0.1"), "train.learning_rate", 9, ["unknown key 'learning_rate'", "valid keys"]),
    ("unknown axis", GOOD + "  unique_token: [1M]\n", "grid.unique_token", 13, ["unknown grid axis 'unique_token'", "did you mean 'unique_tokens'"]),
    ("unknown exclude axis", GOOD + "exclude:\n  - {objectve: ar}\n", "exclude[0].objectve", 14, ["did you mean 'objective'"]),
    ("duplicate key", GOOD.replace("model: nano", "model: nano\nmodel: micro"), "model", 5, ["twice"]),
    ("input mask on mdlm", GOOD + "noise: {input_mask: 0.1}\n", "noise", 13, ["AR trials only", "exclude"]),
    ("bad token count", GOOD.replace("[50k, 200k]", "[50k, lots]"), "grid.unique_tokens[1]", 12, ["token count"]),
    ("missing name", GOOD.replace("name: errors\n", ""), "name", None, ["missing required key 'name'"]),
    ("min_lr above lr", GOOD.replace("warmup_tokens: 10k", "warmup_tokens: 10k\n  lr: 1e-4\n  min_lr: 1e-3"), "train.min_lr", 11, ["exceeds lr"]),
    ("repeated grid value", GOOD.replace("[50k, 200k]", "[50k, 50000]"), "grid.unique_tokens[1]", 12, ["repeats"]),
    ("unknown eval task", GOOD + "eval: {tasks: [heldout_los]}\n", "eval.tasks", 13, ["did you mean 'heldout_loss'"]),
    ("no mdlm block", GOOD + "eval: {mdlm_block: 0}\n", "eval.mdlm_block", 13, ["greater than 0"]),
    ("retired mdlm_steps", GOOD + "eval: {mdlm_steps: 4}\n", "eval.mdlm_steps", 13, ["retired key, replaced by 'mdlm_block'", "tokens decoded per step", "1 (the default) is MDLM's exact chain rule"]),
    ("fp16 on cpu", GOOD.replace("warmup_tokens: 10k", "warmup_tokens: 10k\n  precision: fp16"), "train.precision", 10, ["GPUs only"]),
    ("split gpus above one", GOOD + "resources: {gpus_per_worker: 1.5}\n", "resources.gpus_per_worker", 13, ["whole GPUs"]),
    ("gpu memory exceeded", GOOD.replace("model: nano", "model: 8b").replace("seq_len: 128", "seq_len: 2048").replace("4096", "65536") + "resources: {gpus_per_worker: 1}\n",
     "train.micro_batch", 8, ["needs ~", "GiB per GPU", "gpu_memory_gb 80", "add workers with train.zero_stage: 3"]),
    ("packed trials share a gpu's memory", GOOD.replace("model: nano", "model: 100m").replace("seq_len: 128", "seq_len: 2048").replace("4096", "65536").replace("micro_batch: 8", "micro_batch: 32") + "resources: {gpus_per_worker: 0.25}\n",
     "train.micro_batch", 8, ["gpus_per_worker 0.25", "activation_checkpointing: full"]),
    ("search metric no trial reports", GOOD + "search: {metric: eval/heldout_cloze/acc, space: {lr: {loguniform: [1e-4, 1e-2]}}}\n",
     "search.metric", 13, ["not a metric the trials report", "add heldout_cloze to eval.tasks"]),
]  # fmt: skip


@pytest.mark.parametrize(("case", "text", "field", "line", "words"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("command", ["validate", "plan"])
def test_bad_spec_exits_2_naming_file_line_and_field(tmp_path, command, case, text, field, line, words, monkeypatch):
    spec = tmp_path / "study.yaml"
    spec.write_text(text)
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = runner.invoke(app, [command, str(spec)])
    assert result.exit_code == 2, result.output
    message = result.output
    assert str(spec) in message
    assert f"{field}:" in message
    if line is not None:
        assert f"{spec}:{line}:" in message
    for word in words:
        assert word in message
    assert sorted(p.name for p in tmp_path.rglob("*")) == before, "a failed spec must write nothing"


def test_missing_file_exits_2(tmp_path):
    result = runner.invoke(app, ["plan", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "no such file" in result.output


def test_console_script_exits_2_without_touching_ray_mlflow_or_torch(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(GOOD.replace("[50k, 200k]", "[50k, 2M]"))
    probe = (
        "import sys\n"
        "from crossover.cli import app\n"
        "try:\n    app(['validate', sys.argv[1]])\n"
        "except SystemExit as e:\n"
        "    heavy = [m for m in ('ray', 'mlflow', 'torch', 'deepspeed') if m in sys.modules]\n"
        "    print('loaded:', heavy)\n    raise\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(spec)], capture_output=True, text=True, cwd=tmp_path, env=os.environ
    )
    assert result.returncode == 2, result.stderr
    assert "loaded: []" in result.stdout
    assert "grid.unique_tokens[1]" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]
