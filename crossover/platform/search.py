"""A search study on Ray Tune (spec block `search`; its spec side: crossover.specs.search).

    per (grid cell, objective): one Optuna study in persistent storage -> every group's samples side by side in one
    Tune run (`GroupSearch`, round robin, `max_concurrent` capping the total) -> each sample pruned only against its
    own group (`GroupPruning`: Optuna's median pruner after `prune_after` of its tokens) -> each group's winner
    retrained on fresh seeds beside the base settings on the same seeds (`plan_confirmations`)

Samples are chosen on the metric's validation items: AR by its best eval point so far (the early-stopped model a
practitioner keeps), MDLM by its last. Each group's Optuna study is '<study>/<group>' in the search's storage: a
grown search (more samples, another cell) continues it, reusing every finished sample; `--fresh` deletes them.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossover.platform.launch import HPARAMS, LAUNCHES, POINT, TrialLaunch
from crossover.platform.tracking import find_trial_run, trial_runs_of
from crossover.specs import SpecError, StudySpec
from crossover.specs.expand import sampled_trial
from crossover.specs.search import confirm_trials, search_groups, search_higher, search_key
from crossover.specs.study import Distribution
from crossover.tracking.names import (
    ROLE_BASE,
    ROLE_CONFIRM,
    ROLE_SEARCH,
    ROLE_SUPERSEDED,
    TAG_CELL,
    TAG_CONFIRMS,
    TAG_PRUNED_AT,
    TAG_ROLE,
    TAG_SEARCH_GROUP,
    TAG_SEARCH_VALUE,
)
from crossover.tracking.store import mlflow_client
from crossover.trainers.schedules import trained_tokens

MIN_COMPLETE_TO_PRUNE = 2  # finished samples of a group before its pruner may stop another: a median needs some
ABANDONED = "crossover_abandoned"  # Optuna user attribute: a sample whose Tune run ended without telling (not counted)
REPEAT_OF = "crossover_repeat_of"  # Optuna user attribute: the sample whose settings it repeats (-1: one training)


def optuna_storage(spec: StudySpec, driver_folder: Path) -> str:
    """The search's Optuna storage: the spec's URL or journal path, else a journal file beside the driver's log."""
    given = spec.search.storage
    if given and "://" in given:
        return given
    return str(Path(given).expanduser().resolve() if given else driver_folder / f"{spec.name}.optuna.journal")


def _open_storage(where: str):
    import optuna  # lazy: Optuna for a search study's driver only

    if "://" in where:
        return optuna.storages.RDBStorage(where)
    Path(where).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(where))


def _optuna_distribution(dist: Distribution):
    import optuna  # lazy: as above

    if dist.uniform is not None:
        return optuna.distributions.FloatDistribution(*dist.uniform)
    if dist.loguniform is not None:
        return optuna.distributions.FloatDistribution(*dist.loguniform, log=True)
    if dist.int is not None:
        return optuna.distributions.IntDistribution(*dist.int)
    return optuna.distributions.CategoricalDistribution(dist.choice)


@dataclass
class Group:
    """One (grid cell, objective) search: its grid trials' launches (one, scope per_cell), its space, its quota."""

    name: str
    objective: str
    launches: dict[str, TrialLaunch]  # grid trial name -> launch
    space: dict[str, Distribution]
    grace_tokens: int | None  # no pruning before this many tokens (None: never)
    total_tokens: int  # a sample's length: its last eval point is never pruned (nothing left to save)
    used: int = 0  # finished samples in its Optuna study (complete, pruned or failed)
    asked: int = 0  # samples asked this run


@dataclass
class SearchPlan:
    """Every group of a search study and where their Optuna studies are kept."""

    study: str  # an Optuna study per group is '<study>/<group>'
    storage: str
    groups: dict[str, Group]
    num_samples: int
    higher: bool
    metric_key: str  # eval/<task>/<metric>/validation
    notes: list[str] = field(default_factory=list)

    @property
    def left(self) -> int:
        return sum(max(0, self.num_samples - g.used) for g in self.groups.values())

    @property
    def experiment_suffix(self) -> str:
        """Names the Tune run of this search: a changed quota or set of groups is a new run (a grown search)."""
        text = json.dumps({"n": self.num_samples, "groups": sorted(self.groups)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    def summary(self) -> str:
        groups = len(self.groups)
        done = sum(min(g.used, self.num_samples) for g in self.groups.values())
        kept = f"; {done} finished earlier and reused" if done else ""
        return (
            f"search: {groups} Optuna stud{'ies' if groups != 1 else 'y'} (one per cell and objective), "
            f"{self.num_samples} samples each{kept}; {self.left} to train, side by side"
        )


def plan_search(spec: StudySpec, launches: list[TrialLaunch], driver_folder: Path) -> SearchPlan:
    """The search's groups, each with how many samples its Optuna study already finished."""
    by_name = {launch.trial.name: launch for launch in launches}
    trials = [launch.trial for launch in launches]
    prune_after = spec.search.prune_after
    groups = {}
    for name, members in search_groups(spec, trials).items():
        total = trained_tokens(members[0])  # its last eval point
        groups[name] = Group(
            name,
            members[0].objective,
            {t.name: by_name[t.name] for t in members},
            spec.search.space_of(members[0].objective),
            None if prune_after is None else math.ceil(prune_after * total),
            total,
        )
    plan = SearchPlan(
        spec.name,
        optuna_storage(spec, driver_folder),
        groups,
        spec.search.num_samples,
        search_higher(spec),
        search_key(spec),
    )
    storage = _open_storage(plan.storage)
    for group in groups.values():
        study = _study(plan, group, storage)
        group.used = _finished_samples(study)
    return plan


def _finished_samples(study) -> int:
    """How many of an Optuna study's samples are finished (complete, pruned or failed: never asked again), not
    counting those a stopped run abandoned."""
    import optuna  # lazy: as above

    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    return sum(t.state in finished and not t.user_attrs.get(ABANDONED) for t in study.get_trials(deepcopy=False))


def _study(plan: SearchPlan, group: Group, storage):
    import optuna  # lazy: as above

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=MIN_COMPLETE_TO_PRUNE, n_warmup_steps=group.grace_tokens)
        if group.grace_tokens is not None
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        study_name=f"{plan.study}/{group.name}",
        storage=storage,
        direction="maximize" if plan.higher else "minimize",
        pruner=pruner,
        load_if_exists=True,
    )
    # seeded by the group and how far its search is: reproducible, and a continued search does not draw its first
    # samples again (the same settings are the same trial, already finished)
    seen = len(study.get_trials(deepcopy=False))
    study.sampler = optuna.samplers.TPESampler(
        seed=int(hashlib.sha256(f"{group.name}#{seen}".encode()).hexdigest()[:8], 16)
    )
    return study


@dataclass
class _Live:
    group: str
    number: int  # the Optuna trial's number in its study
    optuna_id: int  # its id in the Optuna storage
    trial_id: str  # the crossover trial id of the sample
    value: float | None = None  # the group's score so far: AR's best, MDLM's last
    reported: set[int] = field(default_factory=set)
    pruned_at: int | None = None


def _searcher_base():
    from ray.tune.search import Searcher  # lazy: Ray for the driver only

    return Searcher


class GroupSearch(_searcher_base()):  # type: ignore[misc]
    """Tune's searcher for a search study: asks each group's Optuna study in turn, so every group's samples run side
    by side; tells each sample's validation score (or pruned, or failed) to its own study only."""

    def __init__(self, plan: SearchPlan, tracking_uri: str, parent_run_id: str):
        super().__init__(metric=plan.metric_key, mode="max" if plan.higher else "min")
        self.plan, self.tracking_uri, self.parent_run_id = plan, tracking_uri, parent_run_id
        self.live: dict[str, _Live] = {}
        self._storage = None
        self._studies: dict[str, Any] = {}
        self._turn = 0

    def __getstate__(self) -> dict:  # Tune pickles its searcher with the Tuner: storages and studies are reopened
        return {**self.__dict__, "_storage": None, "_studies": {}}

    def study(self, group: str):
        if group not in self._studies:
            if self._storage is None:
                self._storage = _open_storage(self.plan.storage)
            self._studies[group] = _study(self.plan, self.plan.groups[group], self._storage)
        return self._studies[group]

    def _trial(self, live: _Live):
        """The Optuna trial of a live sample, to report to and ask whether to prune (rebuilt after a restore)."""
        import optuna  # lazy: as above

        return optuna.trial.Trial(self.study(live.group), live.optuna_id)

    # ---- asking
    def suggest(self, trial_id: str) -> dict | None:
        """The next sample of the group with the fewest samples training (in turn among equals): every group's
        search advances side by side, each one sample at a time while there are at least as many slots as groups."""
        names = list(self.plan.groups)
        order = [names[(self._turn + offset) % len(names)] for offset in range(len(names))]
        open_groups = [g for g in order if self.plan.groups[g].used + self.plan.groups[g].asked < self.plan.num_samples]
        if not open_groups:
            return self.FINISHED
        training = {g: sum(live.group == g for live in self.live.values()) for g in open_groups}
        chosen = min(open_groups, key=lambda g: training[g])  # the first in turn among the fewest
        self._turn = (names.index(chosen) + 1) % len(names)
        return self._ask(trial_id, self.plan.groups[chosen])

    def _ask(self, trial_id: str, group: Group) -> dict:
        import optuna  # lazy: as above

        study = self.study(group.name)
        space = {name: _optuna_distribution(dist) for name, dist in group.space.items()}
        points = list(group.launches)
        if len(points) > 1:  # scope grid: the sample also chooses its cell
            space["__point"] = optuna.distributions.CategoricalDistribution(points)
        asked = study.ask(space)
        hparams = {k: v for k, v in asked.params.items() if k != "__point"}
        point = asked.params.get("__point", points[0])
        base = group.launches[point]
        try:
            sample = sampled_trial(base.trial, hparams).trial_id
        except SpecError:  # settings the grid's checks refuse together: a failed sample, and the next one
            study.tell(asked.number, state=optuna.trial.TrialState.FAIL)
            group.used += 1
            return self.suggest(trial_id)
        if self._told_as_repeat(study, asked, sample):
            group.used += 1
            return self.suggest(trial_id)
        group.asked += 1
        launch = base.model_copy(
            update={
                "tags": {**base.tags, TAG_ROLE: ROLE_SEARCH, TAG_SEARCH_GROUP: group.name, TAG_CELL: base.trial.cell}
            }
        )
        self.live[trial_id] = _Live(group.name, asked.number, asked._trial_id, sample)
        return {POINT: point, HPARAMS: hparams, LAUNCHES: {point: launch.model_dump(mode="json")}}

    def _told_as_repeat(self, study, asked, sample: str) -> bool:
        """Whether the asked settings repeat an earlier sample of the group (TPE repeats itself in a small `int` or
        `choice` space): then it is told that sample's outcome, trains nothing (the same settings are the same trial,
        already trained) and counts as a sample. A repeat of one still training is told failed: its value is not known
        yet, and the same trial cannot train twice at once."""
        import optuna  # lazy: as above

        state = optuna.trial.TrialState
        if any(live.trial_id == sample for live in self.live.values()):
            repeated = None
        else:
            earlier = [
                t
                for t in study.get_trials(deepcopy=False, states=(state.COMPLETE, state.PRUNED, state.FAIL))
                if t.params == asked.params and not t.user_attrs.get(ABANDONED) and REPEAT_OF not in t.user_attrs
            ]
            if not earlier:
                return False
            repeated = earlier[-1]
        asked.set_user_attr(REPEAT_OF, repeated.number if repeated else -1)
        if repeated is not None and repeated.state == state.COMPLETE:
            study.tell(asked.number, repeated.value)
        else:
            study.tell(asked.number, state=repeated.state if repeated is not None else state.FAIL)
        return True

    # ---- hearing
    def observe(self, trial_id: str, result: dict) -> None:
        """Keep a sample's score at an eval point (once per point) and report it to its Optuna study."""
        live = self.live.get(trial_id)
        if live is None or self.metric not in result or "tokens" not in result:
            return
        tokens, value = int(result["tokens"]), float(result[self.metric])
        if tokens in live.reported or value != value:
            return
        live.reported.add(tokens)
        if (
            self.plan.groups[live.group].objective == "ar" and live.value is not None
        ):  # AR: its best point so far, the early-stopped model
            value = max(value, live.value) if self.plan.higher else min(value, live.value)
        live.value = value
        self._trial(live).report(value, tokens)

    def should_prune(self, trial_id: str, result: dict) -> bool:
        """Whether the sample's group pruner stops it now (after its grace, against its own group only); tags its
        run first, so the run closes as a finished sample, not as a stopped study."""
        self.observe(trial_id, result)
        live = self.live.get(trial_id)
        group = self.plan.groups[live.group] if live else None
        if live is None or group.grace_tokens is None or self.metric not in result:
            return False
        tokens = int(result["tokens"])
        if not group.grace_tokens <= tokens < group.total_tokens or not self._trial(live).should_prune():
            return False
        live.pruned_at = int(result["tokens"])
        self._tag(live, {TAG_PRUNED_AT: str(live.pruned_at)})
        return True

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.observe(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        import optuna  # lazy: as above

        live = self.live.get(trial_id)
        if live is None:
            return
        study, state = self.study(live.group), optuna.trial.TrialState
        if error or live.value is None:
            study.tell(live.number, state=state.FAIL)
        elif live.pruned_at is not None:
            study.tell(live.number, state=state.PRUNED)
            # closed here too: Tune counts the sample done before its stopped process has closed the run itself
            self._tag(live, {}, status="FINISHED")
        else:
            study.tell(live.number, live.value)
            self._tag(live, {TAG_SEARCH_VALUE: repr(live.value)})
        group = self.plan.groups[live.group]
        group.used, group.asked = group.used + 1, group.asked - 1
        del self.live[trial_id]

    def _tag(self, live: _Live, tags: dict[str, str], status: str | None = None) -> None:
        """Set tags on a sample's run (and close it with `status`), from the driver."""
        run = find_trial_run(self.tracking_uri, self.parent_run_id, live.trial_id)
        if run is None:
            return
        client = mlflow_client(self.tracking_uri)
        if tags:
            client.log_batch(run.info.run_id, tags=_run_tags(tags))
        if status:
            client.set_terminated(run.info.run_id, status=status)

    # ---- Tune's state (a stopped study continues its Tune run)
    def save(self, checkpoint_path: str) -> None:
        state = {"live": {k: v.__dict__ | {"reported": sorted(v.reported)} for k, v in self.live.items()}}
        Path(checkpoint_path).write_text(json.dumps(state))

    def restore(self, checkpoint_path: str) -> None:
        """Tune's state after a stop: the samples still training, and each group's counts read again from its
        Optuna study (the searcher Tune pickled with the Tuner holds those of the run's start)."""
        state = json.loads(Path(checkpoint_path).read_text())
        self.live = {k: _Live(**{**v, "reported": set(v["reported"])}) for k, v in state["live"].items()}
        for name, group in self.plan.groups.items():
            group.used = _finished_samples(self.study(name))
            group.asked = sum(live.group == name for live in self.live.values())


def _run_tags(tags: dict[str, str]) -> list:
    from mlflow.entities import RunTag  # lazy: mlflow is slow to import

    return [RunTag(k, v) for k, v in tags.items()]


def _scheduler_base():
    from ray.tune.schedulers import FIFOScheduler  # lazy: as above

    return FIFOScheduler


class GroupPruning(_scheduler_base()):  # type: ignore[misc]
    """Tune's scheduler for a search study: stops a sample its own group's pruner prunes (GroupSearch.should_prune),
    never comparing AR with MDLM or one cell with another."""

    def __init__(self, search: GroupSearch):
        super().__init__()
        self.search = search

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return self.STOP if self.search.should_prune(trial.trial_id, result) else self.CONTINUE


def abandon_running(plan: SearchPlan) -> None:
    """Samples left RUNNING in an Optuna study by a Tune run that will not continue (a grown search starts a new
    one): failed and marked abandoned, so they are asked again and never counted."""
    import optuna  # lazy: as above

    storage = _open_storage(plan.storage)
    for group in plan.groups.values():
        study = _study(plan, group, storage)
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study._storage.set_trial_user_attr(trial._trial_id, ABANDONED, True)
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


@dataclass
class Confirmations:
    """The confirmation phase: each group's winner on the fresh seeds, and the base settings on the same seeds."""

    launches: list[TrialLaunch]
    winners: dict[str, dict[str, Any]]  # group -> {grid trial name: sampled values}
    notes: list[str]

    def summary(self) -> str:
        seeds = {launch.trial.seed for launch in self.launches}
        return (
            f"confirming {len(self.winners)} search winner(s) and the base settings on {len(seeds)} fresh seed(s) "
            f"({len(self.launches)} trials)" + "".join(f"; {note}" for note in self.notes)
        )


def plan_confirmations(spec: StudySpec, plan: SearchPlan, uri: str, parent_run_id: str) -> Confirmations:
    """Each group's best finished sample per grid trial (chosen on validation items), retrained on the confirm
    seeds (role confirm), and its grid trial's base settings on the same seeds (role base). Confirm runs of an
    earlier winner are marked superseded."""
    import optuna  # lazy: as above

    storage = _open_storage(plan.storage)
    client = mlflow_client(uri)
    confirm_runs = [r for r in trial_runs_of(uri, parent_run_id) if r.data.tags.get(TAG_ROLE) == ROLE_CONFIRM]
    launches, winners, notes = [], {}, []
    for group in plan.groups.values():
        complete = _study(plan, group, storage).get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        for point, base in group.launches.items():
            mine = [t for t in complete if t.params.get("__point", point) == point]
            if not mine:
                notes.append(f"{base.trial.name}: no finished sample to confirm")
                continue
            best = (max if plan.higher else min)(mine, key=lambda t: (t.value, -t.number))
            hparams = {k: v for k, v in best.params.items() if k != "__point"}
            winners.setdefault(group.name, {})[point] = hparams
            sample = find_trial_run(uri, parent_run_id, sampled_trial(base.trial, hparams).trial_id)
            common = {TAG_SEARCH_GROUP: group.name, TAG_CELL: base.trial.cell}
            confirms = {**common, TAG_ROLE: ROLE_CONFIRM, TAG_CONFIRMS: sample.info.run_id if sample else ""}
            for on_seed in confirm_trials(base.trial, spec):
                launches.append(
                    base.model_copy(update={"trial": on_seed, "tags": {**base.tags, **common, TAG_ROLE: ROLE_BASE}})
                )
                launches.append(
                    base.model_copy(
                        update={
                            "trial": sampled_trial(on_seed, hparams),
                            "tags": {**base.tags, **confirms},
                            "search": hparams,
                        }
                    )
                )
            for run in confirm_runs:  # an earlier winner's confirm runs of this group and cell: superseded
                tags = run.data.tags
                earlier = tags.get(TAG_SEARCH_GROUP) == group.name and tags.get(TAG_CELL) == base.trial.cell
                if earlier and tags.get(TAG_CONFIRMS) != confirms[TAG_CONFIRMS]:
                    client.set_tag(run.info.run_id, TAG_ROLE, ROLE_SUPERSEDED)
    return Confirmations(launches, winners, notes)


def forget_search(spec: StudySpec, driver_folder: Path) -> None:
    """Delete the study's Optuna studies (`crossover run --fresh`): its samples start over."""
    import optuna  # lazy: as above

    where = optuna_storage(spec, driver_folder)
    if "://" not in where and not Path(where).exists():
        return
    storage = _open_storage(where)
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        if summary.study_name.startswith(f"{spec.name}/"):
            optuna.delete_study(study_name=summary.study_name, storage=storage)
