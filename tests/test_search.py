"""A search study (spec block `search`): each (grid cell, objective) searched on its own Optuna study, side by side in
one Tune run, ranked on validation items, pruned only against its own group, its winner confirmed on fresh seeds
beside the base settings; a grown search reuses its finished samples. The searcher is tested with real Optuna storage
here, and the whole study with real Ray Tune, Optuna and MLflow (`crossover run`) in the last test."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from crossover.platform.anneal import anneal_cost
from crossover.specs import SpecError, parse_study
from crossover.specs.expand import sampled_trial
from crossover.specs.search import confirm_seeds, planned_trials, search_groups, search_key, trials_phrase
from crossover.tracking.names import (
    ROLE_ANNEAL,
    ROLE_BASE,
    ROLE_CONFIRM,
    ROLE_SEARCH,
    TAG_ANNEAL_OF,
    TAG_ANNEAL_STOP,
    TAG_AR_STOP,
    TAG_CELL,
    TAG_CONFIRMS,
    TAG_OBJECTIVE,
    TAG_PRUNED_AT,
    TAG_ROLE,
    TAG_SEARCH_GROUP,
    TAG_SEARCH_VALUE,
    TAG_TRIAL_ID,
)

from .conftest import tiny_study

SPACES = {
    "ar": {"lr": {"loguniform": [1e-6, 1e-2]}, "noise.dropout": {"uniform": [0.0, 0.2]}},
    "mdlm": {"lr": {"loguniform": [1e-4, 1e-2]}},
}
SEARCH = {"metric": "eval/heldout_cloze/nll", "num_samples": 3, "confirm_seeds": 1, "space": SPACES}


def blocks(**search) -> dict:
    """A tiny study's blocks for a search: 8,192 tokens a trial, an eval point every 2,048, the cloze's gold-span NLL
    ranking the samples (it falls steadily from the first steps, where the accuracy of a tiny model is still noise)."""
    return {
        "data": {"heldout_tokens": "64k"},  # enough held-out documents for both halves of the cloze items
        "train": {"total_tokens": 8192, "warmup_tokens": 0, "min_lr": 1e-7},  # below every sampled lr
        # the cloze alone, MDLM's choices scored 4 tokens a step: the suite's time (the search reads no other task)
        "eval": {"every": 2048, "tasks": ["heldout_cloze"], "max_items": 32, "mdlm_block": 4},
        "grid": {"objective": ["ar", "mdlm"], "unique_tokens": ["4k"]},
        "search": {**SEARCH, **search},
    }


def search_spec(corpus, **search) -> dict:
    return tiny_study(corpus, **blocks(**search))


def test_each_objective_has_its_own_space_and_the_plan_counts_samples_and_confirmation(tiny_corpus):
    spec = parse_study(search_spec(tiny_corpus, confirm_seeds=2))
    assert set(spec.search.space_of("ar")) == {"lr", "noise.dropout"} and set(spec.search.space_of("mdlm")) == {"lr"}
    shared = parse_study(search_spec(tiny_corpus, space={"weight_decay": {"uniform": [0.0, 0.3]}}))
    assert shared.search.space_of("ar") == shared.search.space_of("mdlm")  # one space, copied to both
    groups = search_groups(spec, spec.expand())
    assert list(groups) == ["unique_tokens=4k/ar", "unique_tokens=4k/mdlm"]
    assert search_key(spec) == "eval/heldout_cloze/nll/validation"  # ranked on the validation items only
    assert confirm_seeds(spec) == [1, 2]  # fresh: the search trains on seed 0
    planned = planned_trials(spec)  # 3 samples a group, then winner and base on 2 seeds per grid trial
    assert len(planned) == 2 * 3 + 2 * 2 * 2 and len({t.name for t in planned}) == len(planned)
    assert "2 grid trials searched: 6 samples, then 8 trials confirming" in trials_phrase(spec)
    # the anneal phase anneals the AR the verdict compares: winner and base on each confirm seed, never a sample
    annealed = parse_study({**search_spec(tiny_corpus, confirm_seeds=2), "early_stopped_ar": {"anneal": True}})
    assert [t.seed for t, _ in anneal_cost(annealed).bound] == [1, 1, 2, 2]
    assert all(t.objective == "ar" and t.total_tokens < 8192 for t, _ in anneal_cost(annealed).bound)
    # a sampled noise setting is the trial's (and its model's) as a grid's noise axis would be
    ar = next(t for t in spec.expand() if t.objective == "ar")
    sample = sampled_trial(ar, {"lr": 3e-3, "noise.dropout": 0.1})
    assert sample.noise.dropout == sample.model.dropout == 0.1 and sample.train.lr == 3e-3
    assert sample.trial_id != ar.trial_id and "do0.1" in sample.name


@pytest.mark.parametrize(
    ("change", "where", "message"),
    [
        ({"search": {**SEARCH, "scope": "grid"}}, "search.scope", "not one scale"),
        (
            {
                "search": {**SEARCH, "metric": "eval/heldout_loss/loss"},
                "eval": {"every": 2048, "tasks": ["heldout_loss", "heldout_cloze"]},
            },
            "search.metric",
            "no items",
        ),
        ({"search": {**SEARCH, "metric": "eval/heldout_cloze/nll", "mode": "max"}}, "search.mode", "lower is better"),
        ({"search": {**SEARCH, "space": {"ar": SPACES["ar"]}}}, "search.space", "no mdlm space"),
        (
            {"search": {**SEARCH, "space": {**SPACES, "mdlm": {"noise.input_mask": {"uniform": [0, 0.2]}}}}},
            "search.space.mdlm",
            "AR's regulariser",
        ),
        ({"search": {**SEARCH, "space": {"ar": {"dropuot": {"uniform": [0, 1]}}}}}, "search.space", "did you mean"),
        ({"seeds": [0, 1]}, "seeds", "one seed"),
        ({"train": {"total_tokens": 8192, "min_lr": 1e-5}}, "search.space.ar.lr", "below train.min_lr"),
    ],
)
def test_a_search_that_cannot_be_fair_is_refused_with_the_reason(tiny_corpus, change, where, message):
    raw = {**search_spec(tiny_corpus), **change}
    with pytest.raises(SpecError) as caught:
        parse_study(raw).expand()
    text = caught.value.render()
    assert where in text and message in text, text


def _searcher(spec, storage: Path):
    """The study's searcher over real Optuna journal storage (no Ray instance: Tune's classes only)."""
    from crossover.platform.search import GroupSearch, plan_search

    launches = [_launch(t) for t in spec.expand()]
    plan = plan_search(spec, launches, storage)
    search = GroupSearch(plan, "sqlite:///unused.db", "parent")
    search._tag = lambda live, tags, status=None: None  # no MLflow runs here (the Ray test below has them)
    return plan, search


def _launch(trial):
    from crossover.platform.launch import TrialLaunch
    from crossover.specs.hardware import Runtime

    runtime = Runtime(device="cpu", precision="fp32", compile=False, why="test")
    return TrialLaunch(trial=trial, runtime=runtime, tracking_uri="sqlite:///x.db", parent_run_id="p", storage="/x")


def _finish(search, tune_id: str, values: list[float], step: int = 2048) -> None:
    for k, value in enumerate(values, start=1):
        search.on_trial_result(tune_id, {"tokens": k * step, search.metric: value})
    search.on_trial_complete(tune_id, {})


def test_groups_search_side_by_side_each_in_its_own_space_and_a_grown_search_reuses_its_samples(tiny_corpus, tmp_path):
    from crossover.platform.launch import launch_of

    spec = parse_study(search_spec(tiny_corpus))
    plan, search = _searcher(spec, tmp_path)
    asked = [(f"t{k}", search.suggest(f"t{k}")) for k in range(4)]
    groups = [launch_of(config).tags[TAG_SEARCH_GROUP] for _, config in asked]
    # one sample of each group training before a second of either: both searches advance at once
    assert sorted(groups[:2]) == ["unique_tokens=4k/ar", "unique_tokens=4k/mdlm"] and sorted(groups[2:]) == sorted(
        groups[:2]
    )
    for (_, config), group in zip(asked, groups, strict=True):
        launch = launch_of(config)
        assert set(launch.search) == set(SPACES[group.split("/")[1]])  # its own objective's space
        assert launch.tags[TAG_ROLE] == ROLE_SEARCH and launch.tags[TAG_CELL] == "unique_tokens=4k"
        assert launch.trial.train.lr == launch.search["lr"]
    for tune_id, _ in asked:
        _finish(search, tune_id, [5.0, 4.0])
    last = [search.suggest("t4"), search.suggest("t5")]
    assert all(config not in (None, search.FINISHED) for config in last)
    for tune_id in ("t4", "t5"):
        _finish(search, tune_id, [5.0, 4.5])
    assert search.suggest("t6") == search.FINISHED  # 3 samples a group
    assert plan.left == 0

    # the spec grows to 5 samples a group: the Optuna studies continue, two more samples each
    grown = parse_study(search_spec(tiny_corpus, num_samples=5))
    plan, search = _searcher(grown, tmp_path)
    assert plan.left == 4 and "3 finished earlier" not in plan.summary() and "6 finished earlier" in plan.summary()
    more = [search.suggest(f"g{k}") for k in range(5)]
    assert sum(config not in (None, search.FINISHED) for config in more) == 4 and more[4] == search.FINISHED


def test_a_repeated_setting_is_told_its_earlier_outcome_and_never_trains_twice(tiny_corpus, tmp_path):
    """TPE repeats itself in a small `choice` space: a repeat of a finished sample is told that sample's value and
    trains nothing; a repeat of one still training is told failed (the same trial cannot train twice at once)."""
    from crossover.platform.launch import launch_of
    from crossover.platform.search import REPEAT_OF

    raw = search_spec(tiny_corpus, num_samples=4, space={"lr": {"choice": [1e-3, 2e-3]}})
    raw["grid"]["objective"] = ["ar"]
    _, search = _searcher(parse_study(raw), tmp_path)
    study = search.study("unique_tokens=4k/ar")
    for lr in (1e-3, 1e-3, 2e-3, 1e-3):  # Optuna asks these, in order
        study.enqueue_trial({"lr": lr})
    first = launch_of(search.suggest("t0"))
    second = launch_of(search.suggest("t1"))  # the repeat of t0 (training) is told failed; 2e-3 is asked next
    assert (first.trial.train.lr, second.trial.train.lr) == (1e-3, 2e-3)
    _finish(search, "t0", [5.0, 4.0])
    _finish(search, "t1", [5.0, 4.5])
    assert search.suggest("t2") == search.FINISHED  # the last sample repeats t0's settings: nothing to train
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert [t.user_attrs.get(REPEAT_OF) for t in trials] == [None, -1, None, 0]
    assert trials[3].value == trials[0].value == 4.0


def test_two_cells_searches_advance_together_with_a_slot_for_each_group(tiny_corpus, tmp_path):
    """Two cells x two objectives: four Optuna studies, each asked once before any is asked twice (with four slots,
    all four searches train at once; Tune's max_concurrent caps the total)."""
    from crossover.platform.launch import launch_of

    raw = search_spec(tiny_corpus)
    raw["grid"]["unique_tokens"] = ["4k", "8k"]
    _, search = _searcher(parse_study(raw), tmp_path)
    groups = [launch_of(search.suggest(f"t{k}")).tags[TAG_SEARCH_GROUP] for k in range(8)]
    cells = {f"unique_tokens={u}/{o}" for u in ("4k", "8k") for o in ("ar", "mdlm")}
    assert set(groups[:4]) == set(groups[4:]) == cells


def test_a_sample_is_pruned_only_against_its_own_group_after_its_grace(tiny_corpus, tmp_path):
    spec = parse_study(search_spec(tiny_corpus, num_samples=4))  # grace: a third of 8,192 tokens
    _, search = _searcher(spec, tmp_path)
    key = search.metric
    ar, mdlm = [], []
    for k in range(4):  # two finished samples of each group: AR's NLL near 4, MDLM's near 6
        config = search.suggest(f"t{k}")
        group = config["launches"][config["point"]]["tags"][TAG_SEARCH_GROUP]
        (ar if group.endswith("/ar") else mdlm).append(f"t{k}")
    for tune_id in ar:
        _finish(search, tune_id, [6.0, 4.0, 3.9, 3.8])
    for tune_id in mdlm:
        _finish(search, tune_id, [7.0, 6.0, 5.9, 5.8])
    bad_ar, mdlm_like = "a", "m"
    for tune_id in (bad_ar, mdlm_like):
        search.suggest(tune_id)
    groups = {t: search.live[t].group for t in (bad_ar, mdlm_like)}
    if groups[bad_ar].endswith("/mdlm"):
        bad_ar, mdlm_like = mdlm_like, bad_ar
    # within the grace period a sample is never pruned, however it looks
    assert not search.should_prune(bad_ar, {"tokens": 2048, key: 9.0})
    # after it, an AR sample far worse than AR's median is; an MDLM sample as good as MDLM's median is not, though
    # it is worse than every AR sample (never compared with the other objective)
    assert not search.should_prune(mdlm_like, {"tokens": 2048, key: 7.0})
    assert not search.should_prune(mdlm_like, {"tokens": 4096, key: 5.9})
    # nor at its last eval point, whatever its value: nothing is left to save, and its value would be lost
    assert not search.should_prune(mdlm_like, {"tokens": 8192, key: 9.0})
    assert search.should_prune(bad_ar, {"tokens": 4096, key: 8.0})
    search.on_trial_complete(bad_ar, {})
    study = search.study(groups[bad_ar])
    assert [t.state.name for t in study.get_trials()][-1] == "PRUNED"


@pytest.mark.xdist_group("ray")
def test_a_search_study_runs_both_groups_at_once_prunes_confirms_and_grows(study, tmp_path):
    """`crossover run` of a search study on a 2-CPU local Ray instance: AR's and MDLM's searches train side by side;
    a hopeless AR learning rate stops early against AR's own samples; each winner and the base settings train on the
    fresh seed, their AR annealed to its validation-chosen stop; raising num_samples continues both Optuna studies,
    training only the new samples."""
    import optuna

    from .test_platform import CROSSOVER, run, runs

    spec = blocks()
    spec["train"]["decay_fraction"] = 0.5  # every eval point's anneal decays over at least one 1,024-token batch
    anneal = {"anneal": True, "metric": "eval/heldout_cloze/acc"}
    spec_path = study["write"](**spec, resources={"max_concurrent": 2}, early_stopped_ar=anneal)
    raw = yaml.safe_load(spec_path.read_text())
    # AR's samples, in order: two good learning rates, then a hopeless one (MDLM's are Optuna's own draws)
    journal = Path(study["storage"]) / "tiny.optuna.journal"
    journal.parent.mkdir(parents=True)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    ar_study = optuna.create_study(study_name="tiny/unique_tokens=4k/ar", storage=storage, direction="minimize")
    for lr, dropout in ((3e-3, 0.0), (4e-3, 0.1), (1e-6, 0.0)):
        ar_study.enqueue_trial({"lr": lr, "noise.dropout": dropout})

    result = run(study, spec_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "search: 2 Optuna studies (one per cell and objective), 3 samples each; 6 to train" in result.stdout
    assert "confirming 2 search winner(s) and the base settings on 1 fresh seed(s) (4 trials)" in result.stdout
    client, _, children = runs(study["uri"])
    samples = [c for c in children if c.data.tags[TAG_ROLE] == ROLE_SEARCH]
    by_group = {
        g: [c for c in samples if c.data.tags[TAG_SEARCH_GROUP] == g]
        for g in ("unique_tokens=4k/ar", "unique_tokens=4k/mdlm")
    }
    assert [len(v) for v in by_group.values()] == [3, 3] and all(c.info.status == "FINISHED" for c in children)
    # side by side: an AR sample and an MDLM sample trained at the same time
    spans = {g: [(c.info.start_time, c.info.end_time) for c in v] for g, v in by_group.items()}
    assert any(
        a0 < m1 and m0 < a1 for a0, a1 in spans["unique_tokens=4k/ar"] for m0, m1 in spans["unique_tokens=4k/mdlm"]
    )
    # per-objective spaces: AR's samples drew dropout, MDLM's did not
    assert all("search.noise.dropout" in c.data.params for c in by_group["unique_tokens=4k/ar"])
    assert not any("search.noise.dropout" in c.data.params for c in by_group["unique_tokens=4k/mdlm"])
    # the hopeless learning rate stopped at its first eval point after the grace (a third of 8,192 tokens)
    (hopeless,) = [c for c in by_group["unique_tokens=4k/ar"] if float(c.data.params["search.lr"]) < 1e-5]
    assert hopeless.data.tags[TAG_PRUNED_AT] == "4096" and TAG_SEARCH_VALUE not in hopeless.data.tags
    steps = sorted(m.step for m in client.get_metric_history(hopeless.info.run_id, "tokens"))
    assert steps[-1] < 8192
    good = [c for c in by_group["unique_tokens=4k/ar"] if c is not hopeless]
    assert all(TAG_PRUNED_AT not in c.data.tags and float(c.data.tags[TAG_SEARCH_VALUE]) > 0 for c in good)
    # the winners (chosen on the validation items) and the base settings, trained on the fresh seed 1
    confirms = [c for c in children if c.data.tags[TAG_ROLE] == ROLE_CONFIRM]
    bases = [c for c in children if c.data.tags[TAG_ROLE] == ROLE_BASE]
    assert len(confirms) == len(bases) == 2
    assert {c.data.params["seed"] for c in confirms + bases} == {"1"}
    for confirm in confirms:
        group = by_group[confirm.data.tags[TAG_SEARCH_GROUP]]
        scored = [c for c in group if TAG_SEARCH_VALUE in c.data.tags]
        winner = min(scored, key=lambda c: float(c.data.tags[TAG_SEARCH_VALUE]))
        assert confirm.data.tags[TAG_CONFIRMS] == winner.info.run_id
        assert confirm.data.params["train.lr"] == winner.data.params["train.lr"]
    assert all("search.lr" not in b.data.params and b.data.params["train.lr"] == "0.003" for b in bases)
    # the anneal phase: every compared AR run (confirm and base) has its validation-chosen stop, no sample has one,
    # and each stop before the end was annealed once (a winner with the base settings is one trial: one anneal)
    compared_ar = [c for c in confirms + bases if c.data.tags[TAG_OBJECTIVE] == "ar"]
    assert all(TAG_AR_STOP in c.data.tags for c in compared_ar) and not any(TAG_AR_STOP in c.data.tags for c in samples)
    to_anneal = {c.data.tags[TAG_TRIAL_ID] for c in compared_ar if int(c.data.tags[TAG_AR_STOP]) < 8192}
    anneals = [c for c in children if c.data.tags[TAG_ROLE] == ROLE_ANNEAL]
    assert sorted(c.data.tags[TAG_ANNEAL_OF] for c in anneals) == sorted(to_anneal)
    stops = {c.data.tags[TAG_TRIAL_ID]: c.data.tags[TAG_AR_STOP] for c in compared_ar}
    assert all(c.data.tags[TAG_ANNEAL_STOP] == stops[c.data.tags[TAG_ANNEAL_OF]] for c in anneals)

    # grown: 4 samples a group; both Optuna studies continue, only the new samples train
    histories = {c.info.run_id: len(client.get_metric_history(c.info.run_id, "tokens")) for c in samples}
    raw["search"]["num_samples"] = 4
    spec_path.write_text(yaml.safe_dump(raw))
    again = run(study, spec_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "6 finished earlier and reused; 2 to train" in again.stdout
    client, _, children = runs(study["uri"])
    samples = [c for c in children if c.data.tags[TAG_ROLE] == ROLE_SEARCH]
    assert len(samples) == 8
    assert all(len(client.get_metric_history(r, "tokens")) == n for r, n in histories.items())  # none retrained
    # run again with nothing left: a driver whose first Tune call restores the confirm phase trains nothing
    finished = run(study, spec_path)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "8 finished earlier and reused; 0 to train" in finished.stdout
    assert len(runs(study["uri"])[2]) == len(children)
    analysis = subprocess.run(
        [*CROSSOVER, "analyze", "tiny", "--tracking-uri", study["uri"], "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        env=study["env"],
    )
    assert analysis.returncode == 0, analysis.stdout + analysis.stderr
    assert "tuned against tuned" in analysis.stdout and "tuning gain" in analysis.stdout, analysis.stdout
