"""Study specs: loading, grid expansion, TrialSpecs, the analytic counts and `crossover plan`."""

import json

import pytest
from typer.testing import CliRunner

from crossover.cli import app
from crossover.specs import (
    PRESETS,
    ModelConfig,
    SpecError,
    TrialSpec,
    count_params,
    load_study,
    padded_vocab,
    parse_study,
    resolve_model,
    training_flops_per_token,
)
from crossover.specs.study import ModelSpec, SparsitySpec

from .conftest import SPECS

runner = CliRunner()


def test_every_shipped_spec_validates():
    result = runner.invoke(app, ["validate", *map(str, sorted(SPECS.glob("*.yaml")))])
    assert result.exit_code == 0, result.output
    for name in (
        "smoke",
        "cpu_crossover",
        "cpu_crossover_seeds",
        "paper_data_budget",
        "paper_quality",
        "paper_model_size",
        "paper_sparsity",
        "paper_noise",
        "paper_code_1p7b",
        *PAPER_STUDIES_SMALL,
    ):
        assert (SPECS / f"{name}.yaml").exists()


# Every study of the paper at laptop scale and for one GPU
PAPER_STUDIES_SMALL = [
    f"{scale}_{study}" for scale in ("cpu", "gpu") for study in ("quality", "model_size", "sparsity", "noise", "code")
]


@pytest.mark.parametrize("name", PAPER_STUDIES_SMALL)
def test_the_papers_studies_at_laptop_and_gpu_scale_plan(name):
    """The CPU versions plan a wall time measured here, one rate per model shape (the sparsity study's MoE and its
    wide dense peer are measured apart from nano); the GPU versions plan their GPU-hours. Each header says what it
    asks and what the paper found."""
    result = runner.invoke(app, ["plan", str(SPECS / f"{name}.yaml")])
    assert result.exit_code == 0, result.output
    header = (SPECS / f"{name}.yaml").read_text().split("\nname:")[0]
    assert "paper" in header and "?" in header, header
    if name.startswith("cpu_"):
        assert "estimated " in result.output and " here: " in result.output, result.output
    else:
        assert "GPU-hours" in result.output
    if name == "cpu_sparsity":
        assert "nano-e4k1 " in result.output and "L4d128f2048 " in result.output, result.output


def test_plan_of_the_paper_data_budget_study():
    result = runner.invoke(app, ["plan", str(SPECS / "paper_data_budget.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    trials = plan["trials"]
    assert len(trials) == 8
    assert sorted({t["objective"] for t in trials}) == ["ar", "mdlm"]
    assert sorted({t["epochs"] for t in trials}) == [1.0, 9.6, 64.0, 192.0]
    spec = load_study(SPECS / "paper_data_budget.yaml")
    model = spec.expand()[0].model
    for t in trials:
        assert t["total_tokens"] == 96 * 10**9
        # 6·N·D with N the active non-embedding-lookup weights, plus attention over the 2048-token window.
        dense = 6 * (t["params_active"] - model.vocab_size * model.d_model) * t["total_tokens"]
        attention = 12 * model.layers * 2048 * model.d_model * t["total_tokens"]
        norms = 6 * (model.layers * (2 * model.d_model + 2 * model.head_dim) + model.d_model) * t["total_tokens"]
        assert t["flops"] == pytest.approx(dense + attention - norms, rel=1e-9)
        assert 1.0 < t["flops"] / (6 * t["params_active"] * t["total_tokens"]) < 1.2
    assert plan["total_gpu_hours"] == pytest.approx(sum(t["gpu_hours"] for t in trials))


def test_plan_table_and_totals():
    result = runner.invoke(app, ["plan", str(SPECS / "paper_sparsity.yaml"), "--mfu", "0.5", "--gpu-tflops", "400"])
    assert result.exit_code == 0, result.output
    assert "mdlm-U1B-8b-a1b-s0" in result.output
    assert "GPU-hours at 50% MFU of 400 TFLOP/s" in result.output


def test_trials_start_longest_first():
    """Trials start in order of training FLOPs (grid order among equals): the size study's micro trials first, so
    that none starts last and runs alone while the other slot idles."""
    from crossover.specs import longest_first, training_flops

    trials = load_study(SPECS / "cpu_model_size.yaml").expand()
    ordered = longest_first(trials)
    assert [t.name for t in ordered] == [
        "ar-U25k-micro-s0",
        "mdlm-U25k-micro-s0",
        "ar-U25k-nano-s0",
        "mdlm-U25k-nano-s0",
        "ar-U25k-L2d64-s0",
        "mdlm-U25k-L2d64-s0",
    ]
    assert [training_flops(t) for t in ordered] == sorted(map(training_flops, trials), reverse=True)
    equal = parse_study(BASE).expand()
    assert longest_first(equal) == equal


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and "crossover 0.1.0" in result.output


BASE = {
    "name": "unit",
    "data": {"seq_len": 128},
    "model": "nano",
    "train": {"total_tokens": "1M", "global_batch_tokens": 4096, "micro_batch": 8, "warmup_tokens": "10k"},
    "grid": {"objective": ["ar", "mdlm"], "unique_tokens": ["50k", "200k"]},
}


def test_expansion_pairs_cells_and_resolves_everything():
    trials = parse_study(BASE).expand()
    assert [t.name for t in trials] == [
        "ar-U50k-nano-s0",
        "ar-U200k-nano-s0",
        "mdlm-U50k-nano-s0",
        "mdlm-U200k-nano-s0",
    ]
    cells = {}
    for t in trials:
        cells.setdefault(t.cell, []).append(t)
    assert set(cells) == {"unique_tokens=50k", "unique_tokens=200k"}
    for pair in cells.values():
        ar, mdlm = sorted(pair, key=lambda t: t.objective)
        assert (ar.objective, mdlm.objective) == ("ar", "mdlm")
        # A matched pair differs in the objective and nothing else.
        assert ar.model_dump(exclude={"objective", "name", "trial_id", "axes"}) == mdlm.model_dump(
            exclude={"objective", "name", "trial_id", "axes"}
        )
    t = trials[0]
    assert t.unique_tokens == 50_000 and t.total_tokens == 1_000_000 and t.epochs == 20
    assert t.model.vocab_size == 4096 and t.model.layers == PRESETS["nano"]["layers"]
    assert t.grad_accum_steps == 4  # 32 sequences / (8 per micro batch x 1 worker)


def test_trial_spec_json_round_trip_and_stable_ids():
    first = parse_study(BASE).expand()
    again = parse_study(BASE).expand()
    assert [t.trial_id for t in first] == [t.trial_id for t in again]
    assert len({t.trial_id for t in first}) == len(first)
    for t in first:
        assert TrialSpec.model_validate_json(t.model_dump_json()) == t
        json.dumps(t.model_dump(mode="json"))
    changed = parse_study({**BASE, "train": {**BASE["train"], "lr": 5e-4}}).expand()
    assert {t.trial_id for t in changed}.isdisjoint({t.trial_id for t in first})


def test_grid_value_replaces_base_value():
    spec = {
        **BASE,
        "grid": {
            "objective": ["ar"],
            "unique_tokens": ["50k"],
            "lr": [1e-4, "3e-4"],
            "model": ["nano", {"preset": "micro", "layers": 2}],
        },
    }
    trials = parse_study(spec).expand()
    assert sorted({t.train.lr for t in trials}) == [1e-4, 3e-4]
    assert sorted({t.model.layers for t in trials}) == [2, 4]
    assert {t.train.warmup_tokens for t in trials} == {10_000}
    assert "ar-U50k-micro-L2d256-lr=0.0003-s0" in {t.name for t in trials}
    assert len({t.cell for t in trials}) == 4


def test_seq_len_axis_is_one_declaration():
    """The context length became a grid axis by one entry in crossover.specs.axes: its values validate, reach the
    trial, name it and make cells, and a grid value that cannot run is an error at that value."""
    from crossover.specs.axes import AXIS

    assert AXIS["seq_len"].path == ("data", "seq_len")
    spec = {**BASE, "grid": {"objective": ["ar", "mdlm"], "unique_tokens": ["50k"], "seq_len": [64, 128]}}
    trials = parse_study(spec).expand()
    assert sorted({(t.data.seq_len, t.grad_accum_steps) for t in trials}) == [(64, 8), (128, 4)]
    assert {t.name for t in trials} >= {"ar-U50k-nano-ctx64-s0", "mdlm-U50k-nano-ctx128-s0"}
    assert {t.cell for t in trials} == {"unique_tokens=50k,seq_len=64", "unique_tokens=50k,seq_len=128"}
    for values, field, words in [
        ([128, 0], "grid.seq_len[1]", "greater than 0"),
        ([128, 96], "grid.seq_len[1]", "not a whole number of 96-token sequences"),
    ]:
        with pytest.raises(SpecError) as caught:
            parse_study({**spec, "grid": {**spec["grid"], "seq_len": values}})
        assert [(p.field, words in p.message) for p in caught.value.problems] == [(field, True)]


def test_exclude_and_noise_axis():
    trials = load_study(SPECS / "paper_noise.yaml").expand()
    assert sorted((t.objective, t.noise.input_mask, t.noise.dropout) for t in trials) == [
        ("ar", 0.0, 0.0),
        ("ar", 0.0, 0.1),
        ("ar", 0.1, 0.0),
        ("ar", 0.2, 0.0),
        ("mdlm", 0.0, 0.0),
    ]
    dropout_trial = next(t for t in trials if t.noise.dropout)
    assert dropout_trial.model.dropout == 0.1


def test_seeds_multiply_trials_and_sparsity_resolves():
    spec = {
        **BASE,
        "seeds": [0, 1, 2],
        "grid": {"objective": ["mdlm"], "unique_tokens": ["50k"], "sparsity": ["dense", {"experts": 4, "top_k": 2}]},
    }
    trials = parse_study(spec).expand()
    assert len(trials) == 6
    moe = [t for t in trials if t.model.experts == 4]
    assert len(moe) == 3 and all(t.model.top_k == 2 and t.name.endswith(f"moe4x2-s{t.seed}") for t in moe)


def test_param_counts_match_presets():
    sizes = {"nano": 1e6, "micro": 5e6, "mini": 20e6}
    for preset, target in sizes.items():
        cfg = resolve_model(ModelSpec(preset=preset), SparsitySpec(), 0.0, 4096)
        assert 0.75 * target < count_params(cfg).non_embedding < 1.3 * target, preset
    recipe = resolve_model(ModelSpec(preset="1.7b"), SparsitySpec(), 0.0, padded_vocab(50278))
    assert (recipe.layers, recipe.d_model, recipe.heads, recipe.ffn) == (28, 2048, 16, 6144)
    assert 1.6e9 < count_params(recipe).total < 1.8e9
    moe = resolve_model(ModelSpec(preset="8b-a1b"), SparsitySpec(), 0.0, padded_vocab(50278))
    counts = count_params(moe)
    assert 7.5e9 < counts.total < 8.5e9 and 0.9e9 < counts.active < 1.2e9


def test_flops_scale_with_sequence_and_moe_active():
    cfg = ModelConfig(layers=2, d_model=64, heads=4, kv_heads=4, ffn=128, vocab_size=256, max_seq_len=512)
    short, long = training_flops_per_token(cfg, 128), training_flops_per_token(cfg, 256)
    assert long - short == pytest.approx(12 * 2 * 128 * 64)
    moe = cfg.model_copy(update={"experts": 8, "top_k": 2})
    assert count_params(moe).active < count_params(moe).total
    assert training_flops_per_token(moe, 128) > short  # two experts per token plus the router


def test_no_top_level_platform_package():
    from .conftest import ROOT

    assert not (ROOT / "platform").exists(), "a top-level platform/ shadows the standard library (ARCHITECTURE.md)"
