"""What crosses Ray for one trial: a `TrialLaunch`, the one object Tune's trainable receives (and a multi-worker
trial's Ray Train workers after it). It is validated on both sides, so a trial never trains from a half-read dict."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from crossover.specs import TrialSpec
from crossover.specs.expand import sampled_trial
from crossover.specs.hardware import Runtime


class Continuation(BaseModel):
    """A finished trial's checkpoint that a trial starts from instead of from scratch: a shorter trial's branch (a
    grown study, crossover.platform.grow) or an AR trial's kept checkpoint before its decay (crossover.platform.anneal).
    The MLflow run of the new trial takes over the old one's points up to `tokens`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str  # the MLflow run of the trial continued
    branch: str  # its checkpoint folder (a path or URI)
    tokens: int  # tokens it had trained on at that checkpoint
    replaces: bool = False  # the spec no longer has the continued trial: its run is replaced, not kept beside


class TrialLaunch(BaseModel):
    """One trial as it is handed to Ray: what trains (`trial`, in `runtime`), where it is tracked (the study's MLflow
    parent run) and kept (Ray storage), and what it starts from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trial: TrialSpec
    runtime: Runtime  # resolved once for the study, on the driver
    tracking_uri: str
    parent_run_id: str
    storage: str  # the study's Ray storage path or URI
    continues: Continuation | None = None
    tags: dict[str, str] = {}  # set on the trial's MLflow run as it starts (an anneal trial's role)
    search: dict[str, Any] = {}  # a search sample's (or a confirmed winner's) sampled values: `search.<name>` params

    def sampled(self, hparams: dict[str, Any]) -> TrialLaunch:
        """This grid trial's launch with a search sample's hyper-parameters applied (see `sampled_trial`)."""
        return self.model_copy(update={"trial": sampled_trial(self.trial, hparams), "search": hparams})


# The keys of a Tune config: a grid trial's is {LAUNCH: launch}; a search sample's is {POINT: grid trial name,
# HPARAMS: sampled values, LAUNCHES: {grid trial name: launch}} (Optuna chooses among names, not objects).
LAUNCH, POINT, HPARAMS, LAUNCHES = "launch", "point", "hparams", "launches"


def launch_of(config: dict[str, Any]) -> TrialLaunch:
    """The launch a Tune config stands for."""
    if POINT in config:
        return TrialLaunch.model_validate(config[LAUNCHES][config[POINT]]).sampled(config[HPARAMS])
    return TrialLaunch.model_validate(config[LAUNCH])


def config_name(config: dict[str, Any], tune_trial_id: str) -> str:
    """A Tune trial's readable name before its launch is resolved: the grid trial's, or a sample's grid point and
    Tune's id for it."""
    return config[LAUNCH]["trial"]["name"] if LAUNCH in config else f"{config.get(POINT, '?')}-{tune_trial_id}"
