"""`precision: auto` and `compile: auto`: how they resolve for each kind of machine, that the CPU detection agrees
with what torch reports, and what `validate` and `plan` say about it."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from crossover.specs import ModelConfig, parse_study
from crossover.specs.hardware import (
    ISA_ORDER,
    CannotEmulate,
    CpuInfo,
    _aten_cap,
    _onednn_cap,
    capped_env,
    cpu_info,
    resolve_runtime,
)
from crossover.specs.study import ResourcesSpec, TrainSpec

MODEL = ModelConfig(layers=1, d_model=64, heads=1, kv_heads=1, ffn=64, vocab_size=64, max_seq_len=64)
AMX = CpuInfo(model="Xeon AMX", isa="AMX", avx512_bf16=True)
AVX512_BF16 = CpuInfo(model="Xeon", isa="AVX512", avx512_bf16=True)
AVX2 = CpuInfo(model="EPYC", isa="AVX2", avx512_bf16=False)
OTHER = CpuInfo(model="ARM", isa="other", avx512_bf16=False)
CPU, GPU = ResourcesSpec(), ResourcesSpec(gpus_per_worker=1)


def never_measured() -> tuple[float, float]:
    raise AssertionError("measured where the rule needs no measurement")


def test_auto_is_bf16_on_gpus_and_amx_cpus_fp32_without_avx512_and_measured_between():
    """The rule alone (the measurement's rates given): AMX, AVX2 and GPUs never measure; an AVX512 CPU without AMX
    takes the faster of the two rates, or fp32 where nothing measured, saying which."""
    auto = TrainSpec()
    assert auto.precision == "auto" and MODEL.compile == "auto"
    assert resolve_runtime(auto, MODEL, GPU, AVX2).model_dump(include={"precision", "compile", "device"}) == {
        "device": "cuda",
        "precision": "bf16",
        "compile": True,
    }
    assert resolve_runtime(auto, MODEL, ResourcesSpec(gpus_per_worker=0.25), AVX2).precision == "bf16"
    assert (resolve_runtime(auto, MODEL, CPU, AMX).precision, resolve_runtime(auto, MODEL, CPU, AMX).compile) == (
        "bf16",
        False,
    )
    for cpu in (AMX, AVX2, OTHER):  # decided by the flags, never measured
        runtime = resolve_runtime(auto, MODEL, CPU, cpu, never_measured)
        assert runtime.precision == ("bf16" if cpu is AMX else "fp32") and not runtime.compile
        assert runtime.warning is None and ("has AMX" if cpu is AMX else f"uses no AMX ({cpu.isa})") in runtime.why
    assert resolve_runtime(auto, MODEL, GPU, AVX512_BF16, never_measured).precision == "bf16"
    assert resolve_runtime(TrainSpec(precision="fp32"), MODEL, CPU, AVX512_BF16, never_measured).precision == "fp32"
    zen4 = resolve_runtime(auto, MODEL, CPU, AVX512_BF16, lambda: (7079.0, 9060.0))
    assert (zen4.precision, zen4.compile, zen4.warning) == ("bf16", False, None)
    assert zen4.why == "CPU Xeon (AVX512, no AMX): bf16 measured 1.28x fp32 (9,060 vs 7,079 tok/s), so bf16"
    xeon = resolve_runtime(auto, MODEL, CPU, AVX512_BF16, lambda: (9156.0, 5450.0))
    assert xeon.precision == "fp32" and "bf16 measured 0.60x fp32 (5,450 vs 9,156 tok/s), so fp32" in xeon.why
    unmeasured = resolve_runtime(auto, MODEL, CPU, AVX512_BF16)
    assert unmeasured.precision == "fp32" and "bf16 not measured against it (nothing measured them here)" in (
        unmeasured.why
    )


def test_explicit_settings_are_kept_and_slow_bf16_is_named():
    bf16 = TrainSpec(precision="bf16")
    slow = resolve_runtime(bf16, MODEL, CPU, AVX2)
    assert slow.precision == "bf16" and "about 10.5x slower than fp32" in slow.warning and "EPYC" in slow.warning
    assert "about 1.7x slower" in resolve_runtime(bf16, MODEL, CPU, AVX512_BF16).warning
    assert resolve_runtime(bf16, MODEL, CPU, AMX).warning is None
    assert resolve_runtime(TrainSpec(precision="fp32"), MODEL, GPU, AVX2).precision == "fp32"
    assert resolve_runtime(TrainSpec(), MODEL.model_copy(update={"compile": True}), CPU, AVX2).compile is True
    assert resolve_runtime(TrainSpec(), MODEL.model_copy(update={"compile": False}), GPU, AVX2).compile is False


def test_zero_3_trains_eager_unless_compile_is_pinned():
    """ZeRO-3's parameter hooks make compiled blocks recompile past torch's limit: `auto` leaves them eager, and a
    pinned `compile: true` is kept with a warning saying so."""
    zero3 = TrainSpec(zero_stage=3)
    eager = resolve_runtime(zero3, MODEL, GPU, AVX2)
    assert eager.compile is False and eager.why == "GPU trials; eager under ZeRO-3"
    assert resolve_runtime(TrainSpec(zero_stage=2), MODEL, GPU, AVX2).compile is True
    pinned = resolve_runtime(zero3, MODEL.model_copy(update={"compile": True}), GPU, AVX2)
    assert pinned.compile is True and "ZeRO-3 recompiles every block" in pinned.warning
    both = resolve_runtime(
        TrainSpec(zero_stage=3, precision="bf16"), MODEL.model_copy(update={"compile": True}), CPU, AVX2
    )
    assert "10.5x slower" in both.warning and "ZeRO-3" in both.warning


def test_cpu_detection_agrees_with_torch():
    info = cpu_info()
    assert (info.isa == "AMX") == torch.cpu._is_amx_tile_supported()
    assert info.avx512_bf16 == torch.cpu._is_avx512_bf16_supported()
    assert (info.isa in ("AMX", "AVX512")) == torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def test_lowering_torch_to_avx2_lowers_the_detection_too(monkeypatch):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    info = cpu_info.__wrapped__()
    assert info.isa in ("AVX2", "other") and not info.native_bf16


def test_each_kernel_library_cap_is_read_as_torch_reads_it():
    """ATen's and oneDNN's caps lower the ISA to the lower of the two; values torch does not know cap nothing."""
    assert [_aten_cap(v) for v in ("default", "AVX2", "avx512", "avx512_vnni", "nonsense", "")] == [
        "other",
        "AVX2",
        "AMX",
        "AMX",
        "AMX",
        "AMX",
    ]
    assert [
        _onednn_cap(v)
        for v in ("AVX2", "avx2_vnni_2", "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_AMX", "ALL", "", "SSE41")
    ] == ["AVX2", "AVX2", "AVX512", "AVX512", "AMX", "AMX", "AMX", "other"]


def test_a_matched_pair_resolves_alike():
    spec = parse_study(
        {
            "name": "pair",
            "train": {"total_tokens": "1M"},
            "grid": {"objective": ["ar", "mdlm"], "unique_tokens": ["100k"]},
        }
    )
    ar, mdlm = spec.expand()
    assert resolve_runtime(ar.train, ar.model, ar.resources) == resolve_runtime(mdlm.train, mdlm.model, mdlm.resources)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "crossover.cli", *args],
        capture_output=True,
        text=True,
        env=os.environ if env is None else env,
        timeout=180,
    )


def test_validate_and_plan_say_how_a_study_trains_here(monkeypatch, tmp_path):
    """`plan` resolves (measuring where the CPU needs it) and `validate`, which imports no torch, then reads the
    same decision from the cache."""
    from crossover.specs import load_study
    from crossover.trainers.throughput import study_runtime_here

    from .conftest import SPECS

    monkeypatch.setenv("CROSSOVER_CACHE", str(tmp_path))
    smoke = str(SPECS / "smoke.yaml")
    plan = json.loads(run_cli("plan", smoke, "--json").stdout)
    expected = study_runtime_here(load_study(smoke), measure=False)
    assert plan["runtime"] == expected.model_dump() and expected.device == "cpu"
    validated = run_cli("validate", smoke)
    assert validated.returncode == 0 and f"trains here in {expected.precision} ({expected.why})" in validated.stdout
    assert all(row["memory_gib"] > 0 for row in plan["trials"])
    gpu_plan = run_cli("plan", str(SPECS / "paper_data_budget.yaml"))
    assert "trains here in bf16 (GPU trials), compiled on CUDA" in gpu_plan.stdout and "GiB/GPU" in gpu_plan.stdout


@pytest.mark.parametrize("kind", ["AVX2", "AVX512", "AMX"])
def test_plan_runs_as_on_each_kind_of_cpu(kind, tmp_path):
    """Acting as an AVX2-only CPU, an AVX512 CPU without AMX, and an AMX CPU (each that this CPU can act as): torch's
    kernels, the detection and `precision: auto` all read the same capped ISA, and `plan` measures a pinned-bf16
    study (the AMX bf16 path that crashed under a half cap) and prints its estimate."""
    from .conftest import SPECS

    have = cpu_info.__wrapped__().hardware_isa
    try:
        env = capped_env(kind)
    except CannotEmulate as exc:
        assert ISA_ORDER.index(kind) > ISA_ORDER.index(have) and f"widest path is {have}" in str(exc)
        pytest.skip(str(exc))  # checked above: the helper refuses, naming why
    env["CROSSOVER_CACHE"] = str(tmp_path / "cache")  # measure, never read a cached rate
    seen = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import json, torch; from crossover.specs.hardware import cpu_info; "
                "print(json.dumps([cpu_info().isa, torch.backends.cpu.get_cpu_capability(), "
                "torch.cpu._is_amx_tile_supported()]))"
            ),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert seen.returncode == 0, seen.stderr
    isa, aten, amx_tiles = json.loads(seen.stdout)
    assert isa == kind and aten == {"AVX2": "AVX2"}.get(kind, "AVX512")
    assert amx_tiles == (have == "AMX")  # the hardware flag; the cap is what keeps oneDNN off the tiles

    smoke = (SPECS / "smoke.yaml").read_text()
    auto = json.loads(run_cli("plan", str(SPECS / "smoke.yaml"), "--json", env=env).stdout)["runtime"]
    if kind == "AVX512":  # no AMX: measured, whichever trains faster on this CPU acting as one
        assert "bf16 measured" in auto["why"] and auto["why"].endswith(f"so {auto['precision']}"), auto["why"]
    else:
        assert auto["precision"] == ("bf16" if kind == "AMX" else "fp32")
    pinned = tmp_path / "bf16.yaml"
    pinned.write_text(smoke.replace("precision: auto", "precision: bf16"))
    plan = run_cli("plan", str(pinned), env=env)
    assert plan.returncode == 0, plan.stderr
    assert "mdlm-U150k-nano-s0" in plan.stdout and "not measured" not in plan.stdout
    assert f"tok/s per worker measured in bf16 on {cpu_info().model} ({kind}, torch {aten})" in plan.stdout
    if kind == "AMX":
        assert "warning" not in plan.stderr
    else:
        slower = {"AVX2": 10.5, "AVX512": 1.7}[kind]
        assert f"warning: train.precision bf16 on a CPU without AMX ({cpu_info().model}, {kind})" in plan.stderr
        assert f"about {slower:g}x slower than fp32; use precision: auto" in plan.stderr


def test_a_half_cap_on_an_amx_cpu_is_named(monkeypatch):
    """ATEN_CPU_CAPABILITY=avx2 alone leaves oneDNN on AMX tiles, which ATen's AVX2 bf16 attention cannot pack for:
    a pinned bf16 study is warned, and told to set both."""
    amx = CpuInfo(
        model="Xeon AMX",
        isa="AVX2",
        avx512_bf16=True,
        hardware_isa="AMX",
        mixed_caps="ATEN_CPU_CAPABILITY=avx2 without ONEDNN_MAX_CPU_ISA=AVX2: ...",
    )
    bf16 = resolve_runtime(TrainSpec(precision="bf16"), MODEL, CPU, amx)
    assert "10.5x slower" in bf16.warning and "without ONEDNN_MAX_CPU_ISA=AVX2" in bf16.warning
    auto = resolve_runtime(TrainSpec(), MODEL, CPU, amx)
    assert auto.precision == "fp32" and auto.warning is None and "uses no AMX (AVX2, capped from AMX)" in auto.why
    here = cpu_info.__wrapped__()
    assert here.mixed_caps is None  # the suite's own environment caps nothing by half
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    half = cpu_info.__wrapped__()
    assert half.isa in ("AVX2", "other")
    assert (half.mixed_caps is not None) == (here.hardware_isa == "AMX")  # only AMX tiles make the half cap fail
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert cpu_info.__wrapped__().mixed_caps is None


def test_a_measurement_that_fails_leaves_the_plan_whole(monkeypatch, tmp_path):
    """A throughput measurement that dies (here torch's error from a half-capped AMX CPU) is reported in the plan,
    which still prints its table and exits 0; a torn throughput cache is measured again, not a crash."""
    from typer.testing import CliRunner

    from crossover.cli import app
    from crossover.trainers import throughput

    from .conftest import SPECS

    monkeypatch.setenv("CROSSOVER_CACHE", str(tmp_path))

    def fails(*_args):
        raise RuntimeError("pack_vnni2 is only supported when avx512 is supported\nException raised from ...")

    monkeypatch.setattr(throughput, "_measure", fails)
    result = CliRunner().invoke(app, ["plan", str(SPECS / "smoke.yaml")])
    assert result.exit_code == 0, result.output
    assert "mdlm-U150k-nano-s0" in result.output and "total:" in result.output
    assert "wall time not measured here: RuntimeError: pack_vnni2 is only supported when avx512 is supported " in (
        result.output
    )
    assert "Exception raised from" not in result.output
    monkeypatch.undo()
    monkeypatch.setenv("CROSSOVER_CACHE", str(tmp_path))
    (tmp_path / throughput.CACHE_FILE).write_text('{"torn": ')
    result = CliRunner().invoke(app, ["plan", str(SPECS / "smoke.yaml")])
    assert result.exit_code == 0 and "tok/s per worker measured in" in result.output, result.output
    assert json.loads((tmp_path / throughput.CACHE_FILE).read_text())


def test_a_rate_measured_on_a_busy_machine_is_measured_again_once_it_is_quiet(monkeypatch, tmp_path):
    """A rate cached while other work shared the cores is low: the plan line says the machine was busy, and the next
    plan on a quiet machine measures again; a rate measured quiet (or cached before loads were kept) is reused, and a
    busy one is reused while the machine is still busy. The load is the OS's 1-minute average per core."""
    from crossover.trainers import throughput

    from .conftest import SPECS

    monkeypatch.setenv("CROSSOVER_CACHE", str(tmp_path))
    raw = yaml.safe_load((SPECS / "smoke.yaml").read_text())
    raw["train"]["precision"] = "fp32"  # one rate to measure (auto would also measure bf16 to decide)
    spec = parse_study(raw)
    measured = []
    real_measure = throughput._measure
    monkeypatch.setattr(throughput, "_measure", lambda *a: measured.append(1) or real_measure(*a))
    load = {"now": 3.0}
    monkeypatch.setattr(throughput, "machine_load", lambda: load["now"])
    busy = throughput.wall_time_line(spec)
    assert len(measured) == 1 and "measured while this machine was busy (load 3.0 per core)" in busy, busy
    assert throughput.wall_time_line(spec) and len(measured) == 1  # still busy: the busy rate is kept
    load["now"] = 0.2
    quiet = throughput.wall_time_line(spec)
    assert len(measured) == 2 and "busy" not in quiet, quiet
    assert throughput.wall_time_line(spec) and len(measured) == 2  # measured quiet: reused
    # a rate cached before loads were kept (a bare number) is reused as it is
    cache = json.loads((tmp_path / throughput.CACHE_FILE).read_text())
    rates = {key: entry for key, entry in cache.items() if isinstance(entry, dict) and "rate" in entry}
    assert [entry["load"] for entry in rates.values()] == [0.2]
    (tmp_path / throughput.CACHE_FILE).write_text(json.dumps({**cache, **{k: 1234.0 for k in rates}}))
    assert "1,234 tok/s" in throughput.wall_time_line(spec) and len(measured) == 2


def test_a_model_too_large_to_measure_here_gets_an_estimated_rate_said_so(monkeypatch, tmp_path):
    """The plan measures a model whole in one process; one that would not fit the memory (here a budget of 1 GiB:
    nano fits, 1b does not) is never built: its rate comes from its FLOPs per token against nano's measured rate,
    and the line says which model was estimated and why."""
    from crossover.specs import parse_study, training_flops_per_token
    from crossover.trainers import throughput

    from .conftest import SPECS

    monkeypatch.setenv("CROSSOVER_CACHE", str(tmp_path))
    raw = yaml.safe_load((SPECS / "smoke.yaml").read_text())
    raw["grid"] = {"objective": ["ar"], "unique_tokens": ["150k"], "model": ["nano", "1b"]}
    spec = parse_study(raw)
    built = []
    real_measure = throughput._measure
    monkeypatch.setattr(
        throughput, "_measure", lambda trial, *a: built.append(trial.model.preset) or real_measure(trial, *a)
    )
    line = throughput.wall_time_line(spec, memory=2**30)
    assert built == ["nano"], built  # 1b was never built
    assert "1b" in line and "(estimated)" in line and "1b not measured: measuring it needs ~" in line, line
    assert "estimated from FLOPs per token at nano's rate" in line
    wall = throughput.estimate_wall_time(
        spec, resolve_runtime(spec.train, spec.expand()[0].model, spec.resources), 1, 2**30
    )
    nano, big = (t.model for t in spec.expand())
    ratio = training_flops_per_token(nano, 128) / training_flops_per_token(big, 128)
    assert wall.rates["1b"] == pytest.approx(wall.rates["nano"] * ratio)


def test_the_wall_time_packs_trials_longest_first_with_evaluation_and_start_up(monkeypatch):
    """The plan's arithmetic, with rates fixed: every trial costs its start-up, its training tokens and its
    evaluation's token positions (EVAL_COST of a training token each) at its model's rate; trials go longest first
    to the slot that frees first, and the study adds Ray's start."""
    from crossover.specs import load_study, longest_first
    from crossover.trainers import throughput

    from .conftest import SPECS

    rates = {"micro": 250.0, "nano": 1000.0, "L2d64f256": 4000.0}
    monkeypatch.setattr(throughput, "measure_rate", lambda trial, *_: rates[throughput._model_label(trial.model)])
    spec = load_study(SPECS / "cpu_model_size.yaml")
    wall = throughput.estimate_wall_time(spec, resolve_runtime(spec.train, MODEL, CPU), slots=2)
    cost = {
        t.name: throughput.TRIAL_START_S
        + (t.total_tokens + throughput.EVAL_COST * throughput.eval_tokens(t)) / rates[throughput._model_label(t.model)]
        for t in spec.expand()
    }
    assert wall.per_trial == pytest.approx(cost)
    slots = [0.0, 0.0]
    for trial in longest_first(spec.expand()):  # both micro trials first, one per slot
        slots[slots.index(min(slots))] += cost[trial.name]
    assert wall.seconds == pytest.approx(throughput.STUDY_START_S + max(slots))
    assert cost["mdlm-U25k-micro-s0"] > cost["ar-U25k-micro-s0"]  # MDLM scores its choices in several steps
    assert wall.rates == rates


def test_the_anneal_phase_costs_each_anneal_its_own_tokens_at_the_measured_rate(monkeypatch):
    """The second phase (`after`: each anneal trial and the tokens it trains at most) goes on the slots once the grid
    is done, each anneal at the model's rate, with its share of the evaluation: every one of cpu_efficiency's six
    equal bounds costs the same (the packing share was overwritten by the first anneal's token share)."""
    from crossover.platform.anneal import anneal_cost
    from crossover.trainers import throughput

    from .conftest import SPECS

    monkeypatch.setattr(throughput, "measure_rate", lambda trial, *_: 1000.0)
    spec = parse_study(yaml.safe_load((SPECS / "cpu_efficiency.yaml").read_text()))
    bound = anneal_cost(spec).bound
    wall = throughput.estimate_wall_time(spec, resolve_runtime(spec.train, MODEL, CPU), slots=2, after=bound)
    expected = {
        trial.name: throughput.TRIAL_START_S
        + (tokens + throughput.EVAL_COST * throughput.eval_tokens(trial) * tokens / trial.total_tokens) / 1000.0
        for trial, tokens in bound
    }
    assert len(expected) == 6 and wall.after == pytest.approx(expected) and wall.share == 1.0


def tiny_study():
    """Two trials of a one-layer model: a measurement of a few seconds per precision."""
    return parse_study(
        {
            "name": "precision",
            "data": {"seq_len": 64},
            "model": {"layers": 1, "d_model": 64, "heads": 1, "kv_heads": 1, "ffn": 128},
            "train": {"total_tokens": "1M", "micro_batch": 4, "global_batch_tokens": 256},
            "grid": {"objective": ["ar", "mdlm"], "unique_tokens": ["100k"]},
        }
    )


def test_auto_on_an_avx512_cpu_without_amx_measures_both_once_and_takes_the_faster(monkeypatch, tmp_path):
    """Issue 33 item 7: flags cannot tell an AMD Zen 4 (bf16 1.28x fp32) from an Intel Xeon (bf16 0.56x), both
    AVX512-BF16 without AMX, so there `precision: auto` measures a training step in both and takes the faster. The
    rule reads this CPU described as such a CPU; the measurement really runs here (on an AVX2-only CPU bf16 is ~10x
    slower: fp32). The decision is cached once per machine: a second resolution, and validate's torch-free one, read
    it (doctored rates in the cache show they were read, not measured again)."""
    from crossover.specs import longest_first
    from crossover.trainers import throughput

    monkeypatch.setenv("CROSSOVER_CACHE", str(tmp_path))
    spec = tiny_study()
    here = cpu_info()
    avx512 = CpuInfo(model=f"{here.model} described as AVX512", isa="AVX512", avx512_bf16=True)
    first = throughput.study_runtime_here(spec, cpu=avx512)
    path = tmp_path / throughput.CACHE_FILE
    cache = json.loads(path.read_text())
    key = throughput.precision_key(longest_first(spec.expand())[0], avx512)
    fp32, bf16 = cache[key]["fp32"], cache[key]["bf16"]
    # beside the decision, the two step rates under the plan's own keys, which its wall-time estimate reuses
    rates = {json.loads(k)[2]: entry["rate"] for k, entry in cache.items() if k != key}
    assert rates == {"fp32": fp32, "bf16": bf16}
    assert (first.device, first.compile, first.warning) == ("cpu", False, None)
    assert first.precision == ("bf16" if bf16 > fp32 else "fp32")
    if here.isa == "AVX2":
        assert first.precision == "fp32" and bf16 < fp32
    assert first.why == (
        f"CPU {avx512.model} (AVX512, no AMX): bf16 measured {bf16 / fp32:.2f}x fp32 "
        f"({bf16:,.0f} vs {fp32:,.0f} tok/s), so {first.precision}"
    )
    cache[key] = {"fp32": 1000.0, "bf16": 1280.0}
    path.write_text(json.dumps(cache))
    for measure in (True, False):
        again = throughput.study_runtime_here(spec, cpu=avx512, measure=measure)
        assert again.precision == "bf16", again.why
        assert again.why.endswith("bf16 measured 1.28x fp32 (1,280 vs 1,000 tok/s), so bf16")
    assert json.loads(path.read_text()) == cache  # nothing measured or written since


def test_auto_on_amx_and_avx2_cpus_keeps_the_flag_rule_and_measures_nothing(monkeypatch, tmp_path):
    """AMX: bf16; AVX2 only: fp32 (bf16 ~10x slower), neither measured; an AVX512 CPU without AMX whose decision is
    not cached, resolved without measuring (validate), falls back to fp32 and says how it gets measured."""
    from crossover.trainers import throughput

    monkeypatch.setenv("CROSSOVER_CACHE", str(tmp_path))
    spec = tiny_study()
    for cpu, precision in ((AVX2, "fp32"), (AMX, "bf16"), (OTHER, "fp32")):
        runtime = throughput.study_runtime_here(spec, cpu=cpu)
        assert runtime.precision == precision and "measured" not in runtime.why, runtime.why
    unmeasured = throughput.study_runtime_here(spec, cpu=AVX512_BF16, measure=False)
    assert unmeasured.precision == "fp32"
    assert "bf16 not measured against it (`crossover plan` measures them, once per machine)" in unmeasured.why
    assert not (tmp_path / throughput.CACHE_FILE).exists()  # nothing was measured, bf16 least of all


def test_a_trial_trained_alone_keeps_its_runtime_on_resume(monkeypatch, tmp_path):
    """`crossover train` records how its trial trains in the trial's folder and a --resume reuses that record, so a
    resumed trial never changes precision (`crossover run` keeps its study's on the MLflow parent run)."""
    from crossover.cli.trial import RUNTIME_FILE, _trial_runtime
    from crossover.specs.hardware import Runtime
    from crossover.trainers.throughput import runtime_here

    monkeypatch.setenv("CROSSOVER_CACHE", str(tmp_path / "cache"))
    trial = tiny_study().expand()[0]
    folder = tmp_path / "run"
    first = _trial_runtime(trial, folder, resume=False)
    assert first == runtime_here(trial)
    assert Runtime.model_validate_json((folder / RUNTIME_FILE).read_text()) == first
    began = first.model_copy(update={"precision": "bf16" if first.precision == "fp32" else "fp32", "why": "began"})
    (folder / RUNTIME_FILE).write_text(began.model_dump_json())
    assert _trial_runtime(trial, folder, resume=True) == began
    assert _trial_runtime(trial, folder, resume=False) == first  # a fresh start resolves again


def test_the_wall_time_slows_trials_packed_on_a_gpu_to_the_measured_packing_rate(monkeypatch):
    """Four trials sharing one GPU (gpus_per_worker 0.25) each train at packed_share(4) of a lone trial's measured
    rate (an H200 trained 2.31x one trial's tokens with four), so the study takes 4 / 2.31 as long as if each kept
    its solo rate; the line says so. Two at once (max_concurrent 2) share it at packed_share(2)."""
    from crossover.specs.hardware import Runtime
    from crossover.specs.plan import packed_share
    from crossover.trainers import throughput

    from .conftest import SPECS

    monkeypatch.setattr(throughput, "measure_rate", lambda trial, *_: 1000.0)
    monkeypatch.setattr(throughput, "_device_name", lambda runtime: "an H200")  # this machine has no GPU to name
    spec = parse_study(yaml.safe_load((SPECS / "gpu_crossover.yaml").read_text()))
    gpu = Runtime(device="cuda", precision="bf16", compile=False, why="test")
    packed = throughput.estimate_wall_time(spec, gpu, slots=4)
    alone = {
        t.name: throughput.TRIAL_START_S + (t.total_tokens + throughput.EVAL_COST * throughput.eval_tokens(t)) / 1000.0
        for t in spec.expand()
    }
    slowed = {
        t.name: throughput.TRIAL_START_S
        + (t.total_tokens + throughput.EVAL_COST * throughput.eval_tokens(t)) / (1000.0 * packed_share(4))
        for t in spec.expand()
    }
    assert (packed.per_gpu, packed.share) == (4, pytest.approx(2.31 / 4))
    assert packed.per_trial == pytest.approx(slowed) and packed.per_trial != pytest.approx(alone)
    assert "4 share each GPU, each at 0.58x its rate alone" in throughput.describe(packed, gpu)
    two = throughput.estimate_wall_time(spec, gpu, slots=2)
    assert (two.per_gpu, two.share) == (2, pytest.approx(packed_share(2)))
    cpu = throughput.estimate_wall_time(spec, gpu.model_copy(update={"device": "cpu"}), slots=4)
    assert (cpu.per_gpu, cpu.share) == (1, 1.0)  # no GPU: nothing is packed
