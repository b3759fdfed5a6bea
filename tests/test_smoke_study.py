"""The smoke study end to end, as on a cluster: `ray start --head` on loopback (2 CPUs), `ray job submit` of
`crossover run` on the smoke study, a real `mlflow server`; then the trainer's and the analysis' checks on the
records it made. The study is `study_specs/smoke.yaml` as shipped (300k tokens a trial, budgets 150k and 300k), the
one `make demo` runs. The spec travels with the job, as k8s/README.md says: `ray job submit --working-dir .` from a
folder outside the repository that holds only the spec, laid out as the kubelet lays out the ConfigMap that the
RayJob's submitter uploads the same way (k8s/base/rayjob.yaml), and `crossover run study.yaml` in the driver's
working directory."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from crossover.cli import app
from crossover.specs import load_study
from crossover.tracking.names import TAG_PARENT, TAG_ROLE, TAG_TRIAL_ID, TRAIN_METRICS

from .conftest import SPECS
from .services import (
    BIN,
    assert_report_renders,
    mlflow_server,
    new_auth_token,
    ray_head,
    ray_job_submit,
    with_token_auth,
)

pytestmark = pytest.mark.xdist_group("ray")  # one worker runs every Ray test (tests/conftest.py)

SHIPPED = SPECS / "smoke.yaml"


def configmap_volume(folder: Path, files: dict[str, str]) -> Path:
    """`folder` laid out as the kubelet lays out a ConfigMap volume: each key a symlink into `..data`, a symlink to
    a timestamped folder that holds the files."""
    stamped = folder / "..2026_01_01_00_00_00.000000000"
    stamped.mkdir(parents=True)
    for name, text in files.items():
        (stamped / name).write_text(text)
    (folder / "..data").symlink_to(stamped.name)
    for name in files:
        (folder / name).symlink_to(f"..data/{name}")
    return folder


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, session_cache):
    base = tmp_path_factory.mktemp("smoke")
    job_dir = configmap_volume(base / "job", {"study.yaml": SHIPPED.read_text()})
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "CROSSOVER_CACHE": str(session_cache)}
    # Token auth on, as on a real cluster, with a token of this test's own (never ~/.ray/auth_token). The job's
    # driver and its trials get it from the head: the driver inherits the head's environment.
    token = new_auth_token(base / "ray-auth")
    with mlflow_server(base / "mlflow") as url, ray_head(env, auth_token=token) as (_, dashboard):
        runtime_env = {"env_vars": {"CROSSOVER_CACHE": str(session_cache)}}
        args = [
            "--working-dir",
            ".",
            "--runtime-env-json",
            json.dumps(runtime_env),
            "--",
            "crossover",
            "run",
            "study.yaml",
            "--tracking-uri",
            url,
            "--storage",
            str(base / "ray"),
            "--quiet",
        ]
        job = ray_job_submit(dashboard, args, with_token_auth(env, token), cwd=job_dir)
        yield {"job": job, "uri": url, "base": base, "spec": job_dir / "study.yaml"}


def smoke_runs(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("smoke")
    found = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in found if r.data.tags.get(TAG_ROLE) == "study"]
    return client, parents, [r for r in found if TAG_TRIAL_ID in r.data.tags]


def test_smoke_study_runs_under_ray_job_submit(smoke):
    job = smoke["job"]
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-4000:]
    assert "4 trials finished, 0 failed" in job.stdout
    trials = load_study(smoke["spec"]).expand()
    client, parents, children = smoke_runs(smoke["uri"])
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(c.info.run_name for c in children) == sorted(t.name for t in trials)
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags[TAG_PARENT] == parents[0].info.run_id
        assert {"crossover.study", "crossover.cell", "crossover.objective"} <= set(child.data.tags)
        assert child.data.params["train.total_tokens"] == "300000"
        assert {m for m in TRAIN_METRICS if m != "mfu"} | {"eval/heldout_loss/loss"} <= set(child.data.metrics)
    cells = {}
    for child in children:
        cells.setdefault(child.data.tags["crossover.cell"], {})[child.data.tags["crossover.objective"]] = child
    for pair in cells.values():  # a matched pair saw the same data in the same order
        assert pair["ar"].data.tags["crossover.data_hash"] == pair["mdlm"].data.tags["crossover.data_hash"]


def test_both_objectives_learn_on_the_smoke_study(smoke, session_cache, monkeypatch):
    """Held-out loss per token falls for both objectives. AR's (exact NLL) ends far below the corpus' unigram
    entropy, the loss of the best model that ignores context; MDLM's ELBO (an upper bound on its NLL) at 300k tokens
    reaches about that entropy: far below the uniform ln V, before it has learned to use context (at 600k it is ~0.2
    nats below)."""
    from crossover.data import prepare

    monkeypatch.setenv("CROSSOVER_CACHE", str(session_cache))
    data = prepare(load_study(smoke["spec"]).data)
    counts = np.bincount(np.asarray(data.tokens), minlength=data.padded_vocab).astype(float)
    p = counts[counts > 0] / counts.sum()
    unigram_entropy = float(-(p * np.log(p)).sum())
    client, _, children = smoke_runs(smoke["uri"])
    final = {}
    for child in children:
        history = sorted(client.get_metric_history(child.info.run_id, "eval/heldout_loss/loss"), key=lambda m: m.step)
        assert history[-1].value < history[0].value - 0.5, child.info.run_name
        final[child.info.run_name] = history[-1].value
    print(f"unigram entropy {unigram_entropy:.3f} nats; final held-out losses {final}")
    for name, value in final.items():
        assert value < (unigram_entropy - 1.0 if name.startswith("ar-") else unigram_entropy + 0.25), name
    for child in children:  # the cloze task the crossover is read from is measured, and AR's accuracy is real skill
        metrics = child.data.metrics
        assert 0.0 <= metrics["eval/heldout_cloze/acc"] <= 1.0 and metrics["eval/heldout_cloze/chance"] == 0.25
        if child.info.run_name.startswith("ar-"):
            assert metrics["eval/heldout_cloze/acc"] > 0.25
    best_ar = next(c.data.metrics for c in children if c.info.run_name == "ar-U300k-nano-s0")  # one epoch of 300k
    assert best_ar["eval/heldout_cloze/delta_nll"] - 2 * best_ar["eval/heldout_cloze/delta_nll_stderr"] > 0
    assert best_ar["eval/heldout_cloze/acc_pmi"] > 0.25 + 3 * best_ar["eval/heldout_cloze/acc_pmi_stderr"]


def test_smoke_report_opens_in_headless_chromium(smoke, tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["analyze", "smoke", "--tracking-uri", smoke["uri"], "--out", str(out)])
    assert result.exit_code == 0, result.output
    shot = assert_report_renders(out / "report.html", tmp_path, min_images=3)  # curves, crossovers, budget axis
    if os.environ.get("CROSSOVER_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["CROSSOVER_KEEP_SCREENSHOT"])
    summary = json.loads((out / "summary.json").read_text())
    assert {row["cell"] for row in summary["crossovers"]} == {"unique_tokens=150k", "unique_tokens=300k"}


def test_run_ends_with_a_provisional_verdict_summaries_and_the_link_to_the_training_view(smoke):
    from crossover.tracking.names import SUMMARY_COLUMNS

    job = smoke["job"].stdout
    client, parents, children = smoke_runs(smoke["uri"])
    experiment = client.get_experiment_by_name("smoke")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    link = f"{smoke['uri']}/#/experiments/{experiment.experiment_id}/runs?viewStateShareKey=crossover&workflowType=machine_learning"
    assert f"MLflow training view: {link}" in job
    assert "verdict (provisional" in job and "unique_tokens=150k: " in job
    tags = parents[0].data.tags
    assert tags["crossover.verdict.150k"].startswith("unique_tokens=150k: ") and "crossover.verdict.300k" in tags
    for child in children:
        assert set(SUMMARY_COLUMNS) <= set(child.data.metrics), child.info.run_name
        history = client.get_metric_history(child.info.run_id, "eval/heldout_cloze/acc_pmi")
        assert child.data.metrics["summary/acc_best"] == max(m.value for m in history)
        assert child.data.metrics["summary/epochs"] == child.data.metrics["epoch"]


def test_the_training_view_shows_the_study_its_trials_and_the_verdict(smoke, tmp_path):
    """The link `crossover run` prints, opened in headless Chromium: the model-training view (not the GenAI one), the
    study's parent row, its trials once expanded, and the verdict and summary columns of the saved view."""
    from playwright.sync_api import sync_playwright

    from crossover.tracking.names import training_view_url

    from .services import CHROMIUM_FLAGS, _chromium

    chromium = _chromium()
    client, _, children = smoke_runs(smoke["uri"])
    experiment_id = client.get_experiment_by_name("smoke").experiment_id
    shot = tmp_path / "mlflow-training-view.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[f for f in CHROMIUM_FLAGS if f != "--headless"])
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        page.goto(training_view_url(smoke["uri"], experiment_id))
        parent = page.get_by_role("link", name="smoke", exact=True).last
        parent.wait_for(timeout=60_000)
        parent.locator("xpath=ancestor::*[@role='gridcell'][1]").locator("button").first.click()  # expand the study
        for child in children:
            page.get_by_role("link", name=child.info.run_name, exact=True).wait_for(timeout=30_000)
        headers = " ".join(page.locator("[role='columnheader']").all_inner_texts())
        page.screenshot(path=str(shot))
        text = page.inner_text("body")
        browser.close()
    assert "Run Name" in headers and "verdict/150k/state" in headers and "summary/acc_final" in headers, headers
    assert "Detect issues" not in text  # the GenAI view's
    assert shot.stat().st_size > 20_000
    if os.environ.get("CROSSOVER_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["CROSSOVER_KEEP_SCREENSHOT"].replace(".png", "-mlflow.png"))


def test_mdlm_of_the_smoke_study_samples_text_without_masks(smoke):
    """The MDLM trained by the smoke study, loaded from its last checkpoint in Ray storage, fills the requested
    number of tokens by iterative unmasking and leaves no mask token."""
    from crossover.evals.checkpoint import load_checkpoint
    from crossover.evals.sampling import generate

    found = sorted(smoke["base"].glob("ray/smoke/mdlm-U300k*/checkpoint_*"))
    assert found, list(smoke["base"].glob("ray/smoke/*"))
    em = load_checkpoint(found[-1])
    prompts = [[em.eod_id, *em.encode("def ")], [em.eod_id, *em.encode("import os\n")]]
    for remasking, block in (("low_confidence", None), ("random", 16)):
        outputs = generate(em, prompts, 48, remasking=remasking, block_length=block, stop_ids=())
        for tokens in outputs:
            assert len(tokens) == 48 and em.mask_id not in tokens
            assert isinstance(em.decode(tokens), str)
