"""`crossover plan --cluster-gpus N`: the study's training time on a cluster grown to N GPUs, with trials packed on a
GPU slowed to the measured packed rate (not their rate alone)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from crossover.cli import app
from crossover.specs import load_study, plan_study
from crossover.specs.plan import PACKED_MEASURED, cluster_wall_time, packed_share

SPECS = Path(__file__).parents[1] / "study_specs"
runner = CliRunner()


def test_packed_trials_share_the_measured_gain():
    assert packed_share(1) == 1.0
    assert packed_share(4) == pytest.approx(PACKED_MEASURED[1] / 4)  # each of four: 0.58x its rate alone
    assert packed_share(2) == pytest.approx((1 + (PACKED_MEASURED[1] - 1) / 3) / 2)
    assert packed_share(8) == pytest.approx(PACKED_MEASURED[1] / 8)  # no gain past the measured four


def test_the_paper_study_runs_its_eight_trials_at_once_on_the_prod_cluster():
    spec = load_study(SPECS / "paper_data_budget.yaml")
    plan = plan_study(spec)
    wall = cluster_wall_time(spec, plan, gpus=64)  # 8 pods x 8 GPUs, the prod overlay's maximum
    assert (wall.at_once, wall.gpus_per_trial, wall.per_gpu) == (8, 8, 1)
    assert wall.hours == pytest.approx(max(r.gpu_hours for r in plan.trials) / 8)
    half = cluster_wall_time(spec, plan, gpus=32)  # half the cluster: two waves
    assert half.at_once == 4 and half.hours > 1.9 * wall.hours


def test_packed_trials_take_longer_than_their_rate_alone_says():
    spec = load_study(SPECS / "gpu_crossover.yaml")  # gpus_per_worker 0.25, max_concurrent 4
    plan = plan_study(spec)
    wall = cluster_wall_time(spec, plan, gpus=1)
    assert (wall.at_once, wall.per_gpu) == (4, 4)
    alone = max(r.gpu_hours for r in plan.trials)
    assert wall.hours == pytest.approx(2 * alone / packed_share(4))  # 8 trials, two waves of four


def test_plan_prints_the_cluster_line_and_refuses_a_cpu_study():
    done = runner.invoke(app, ["plan", str(SPECS / "paper_data_budget.yaml"), "--cluster-gpus", "64"])
    assert done.exit_code == 0, done.output
    assert "on a cluster of 64 GPUs at its maximum: 8 trials at once, 8 GPUs each" in done.output
    hours = done.output.split("about ", 1)[1].split(" hours", 1)[0]
    assert f"says about {hours}\nhours" in (SPECS.parent / "k8s" / "README.md").read_text()  # the number it quotes
    refused = runner.invoke(app, ["plan", str(SPECS / "smoke.yaml"), "--cluster-gpus", "8"])
    assert refused.exit_code == 2 and "trials use no GPUs" in refused.output
