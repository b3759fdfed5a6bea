"""Live progress of a study on the driver: a rich table that a Tune callback keeps up to date from every log point of
every trial (about 200 per trial; trials report them without a checkpoint), or with --quiet one line per trial at
most every 30 s plus one per change of status, for jobs and logs.

Tune pickles its callbacks with the experiment state, and a live terminal display does not pickle, so the callback
holds only the study's name and forwards events to the display registered under it in this process; a study
continued by a new driver gets the new driver's display.
"""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback
from rich.console import Console
from rich.live import Live
from rich.table import Table

from crossover.platform.launch import config_name
from crossover.platform.rates import eta_seconds, recent_points, smoothed_rate
from crossover.specs import TrialSpec, format_seconds, format_tokens
from crossover.tracking.names import PROGRESS_METRICS

SHOWN_METRICS = PROGRESS_METRICS
QUIET_EVERY_S = 30.0  # --quiet: at most one progress line per trial this often


def _name(trial: Any) -> str:
    return config_name(trial.config, trial.trial_id)


DISPLAYS: dict[str, StudyProgress] = {}


class ProgressCallback(Callback):
    """Forwards Tune's trial events to the study's display in this process, if there is one."""

    def __init__(self, study: str):
        self.study = study

    def _display(self) -> StudyProgress | None:
        return DISPLAYS.get(self.study)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if display := self._display():
            display.event(trial, "running")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if display := self._display():
            metrics = {k: result[k] for k in SHOWN_METRICS if isinstance(result.get(k), (int, float))}
            display.event(
                trial, "running", tokens=int(result.get("tokens", 0)), epoch=result.get("epoch", 0.0), metrics=metrics
            )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if display := self._display():
            display.event(trial, "finished")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if display := self._display():
            display.event(trial, "error")


class StudyProgress:
    """Trial, status, tokens, epoch, latest metrics, tokens/s and ETA for every trial; updated on each Tune event.
    The rate is the trial's over the last minute of its reports (crossover.platform.rates, as `crossover status`
    reads it from MLflow), timed by `clock` as they arrive."""

    def __init__(self, study: str, trials: list[TrialSpec], console: Console, quiet: bool = False, clock=time.time):
        self.study, self.clock = study, clock
        self.totals = {t.name: t.total_tokens for t in trials}
        self.rows: dict[str, dict[str, Any]] = {t.name: {"status": "pending"} for t in trials}
        self.console, self.quiet = console, quiet
        self.live = None if quiet else Live(self.render(), console=console, refresh_per_second=2, transient=False)

    def callback(self) -> ProgressCallback:
        return ProgressCallback(self.study)

    def __enter__(self) -> StudyProgress:
        DISPLAYS[self.study] = self
        if self.live:
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        DISPLAYS.pop(self.study, None)
        if self.live:
            self.live.update(self.render())
            self.live.stop()

    def add(self, trials: list[TrialSpec]) -> None:
        """Trials the study runs beyond its grid (the anneal phase, crossover.platform.anneal)."""
        self.totals.update({t.name: t.total_tokens for t in trials})
        for trial in trials:
            self.rows.setdefault(trial.name, {"status": "pending"})
        if self.live:
            self.live.update(self.render())

    def kept(self, names: list[str]) -> None:
        """Trials that finished in an earlier run of the study and are not run again."""
        for name in names:
            self.rows[name] = {"status": "kept"}
        if self.live:
            self.live.update(self.render())

    def event(self, trial: Any, status: str, **fields: Any) -> None:
        name = _name(trial)
        row = self.rows.setdefault(name, {"status": "pending"})
        changed = row["status"] != status
        metrics = {**row.get("metrics", {}), **fields.pop("metrics", {})}  # eval metrics stay until the next eval
        row.update(status=status, metrics=metrics, **{k: v for k, v in fields.items() if v is not None})
        now = self.clock()
        if "tokens" in fields:  # a report: the rate over the last minute of them (only that much is kept)
            row["history"] = recent_points([*row.get("history", []), (now, fields["tokens"])])
            row["rate"] = smoothed_rate(row["history"])
        if self.quiet:
            if changed or now - row.get("printed", 0.0) >= QUIET_EVERY_S:
                row["printed"] = now
                self.console.print(f"{name}: {status} {self._line(name, row)}", highlight=False)
        elif self.live:
            self.live.update(self.render())

    def _eta(self, name: str, row: dict[str, Any]) -> str:
        seconds = eta_seconds(self.totals.get(name), row.get("tokens", 0), row.get("rate"))
        return format_seconds(seconds) if row["status"] == "running" and seconds is not None else ""

    def _line(self, name: str, row: dict[str, Any]) -> str:
        parts = [f"{format_tokens(row.get('tokens', 0))} tokens", f"epoch {row.get('epoch', 0):.2f}"]
        parts += [f"{k} {v:.4g}" for k, v in row.get("metrics", {}).items()]
        if row.get("rate"):
            parts.append(f"{row['rate']:,.0f} tok/s")
        if eta := self._eta(name, row):
            parts.append(f"ETA {eta}")
        return "  ".join(parts)

    def render(self) -> Table:
        table = Table(title="crossover study", expand=False)
        for column in ("trial", "status", "tokens", "epoch", "train loss", "held-out loss", "tok/s", "ETA"):
            table.add_column(column, justify="left" if column in ("trial", "status") else "right", no_wrap=True)
        colors = {"finished": "green", "kept": "green", "error": "red", "running": "yellow"}
        for name, row in self.rows.items():
            metrics = row.get("metrics", {})
            table.add_row(
                name,
                f"[{colors.get(row['status'], 'dim')}]{row['status']}[/]",
                format_tokens(row.get("tokens", 0)),
                f"{row.get('epoch', 0):.2f}",
                *[f"{metrics[m]:.4f}" if m in metrics else "" for m in SHOWN_METRICS],
                f"{row['rate']:,.0f}" if row.get("rate") else "",
                self._eta(name, row),
            )
        return table
