"""Analysis: MLflow records of a study -> curves -> crossovers, data efficiency, scaling-law fits -> plots and report.

This package reads MLflow and may import `crossover.specs`; it never imports `crossover.trainers` or
`crossover.platform`. `crossover analyze STUDY` is its command line.

Tracking contract
=================
What this package reads is what `crossover run` writes: the contract in words is the docstring of
`crossover.tracking`, its names are `crossover.tracking.names`, the way to the store `crossover.tracking.store`.

Analysis contract
=================
- `load_curves(study, tracking_uri=None) -> DataFrame`: one row per (trial, eval point), see `curves.load_curves`.
- `find_crossover(x, ar, mdlm, higher_is_better=True) -> Crossover` (`x`, `status`, `ci`), see `crossing`.
- `data_efficiency(ar, mdlm, higher_is_better=True) -> dict`: per MDLM budget U, U'/U or None, see `efficiency`.
- `fit_data_constrained(...) -> ScalingFit` and `critical_tokens(...)`, see `scaling`.
- `analyze_study(read_study(...)) -> StudyAnalysis` and `write_report(...)`: everything `crossover analyze` shows;
  `StudyAnalysis` composes the frozen results of the analysis' pure stages (`Crossovers`, `ArBaseline`,
  `DataEfficiency`, `Scaling`, `DeltaNll`), see `analyze`.
- `verdicts(analysis) -> [Verdict]`: one line per cell, see `verdict`.
- A search study (spec block `search`): `read_study`'s trials are the confirm runs (each (cell, objective)'s winner
  on fresh seeds), so every verdict compares the two winners; samples and base runs are kept apart
  (`StudyData.search_samples`, `base_trials`); `analysis.tuning` (`find_tuning`) and `verdict.tuning_lines` give each
  winner's search, selection score, confirmed score and its gain over the base settings on the same seeds and items.
- `axis_verdicts(analysis) -> [AxisVerdict]`: one line per axis varied besides the unique budget, read against the
  paper's finding (agrees, disagrees, cannot tell), see `axes`; on the parent run as the tag
  `crossover.verdict.axis_<axis>[_<other axes' values>]` and the metric `verdict/axis_<axis>.../agreement`
  (1, -1, 0).
"""

from crossover.analysis.analyze import StudyAnalysis, analyze_study, higher_is_better
from crossover.analysis.axes import AxisVerdict, axis_verdicts
from crossover.analysis.crossing import Crossover, convert_x, find_crossover
from crossover.analysis.curves import StudyData, load_curves, read_study
from crossover.analysis.efficiency import Efficiency, data_efficiency, efficiency_details
from crossover.analysis.errors import AnalysisError
from crossover.analysis.report import log_report, log_verdicts, write_report
from crossover.analysis.scaling import (
    InsufficientData,
    ScalingFit,
    critical_tokens,
    effective_data,
    fit_data_constrained,
    prabhudesai_critical_compute,
)
from crossover.analysis.verdict import Verdict, verdicts

__all__ = [
    "AnalysisError",
    "AxisVerdict",
    "Crossover",
    "Efficiency",
    "InsufficientData",
    "ScalingFit",
    "StudyAnalysis",
    "StudyData",
    "Verdict",
    "analyze_study",
    "axis_verdicts",
    "convert_x",
    "critical_tokens",
    "data_efficiency",
    "effective_data",
    "efficiency_details",
    "find_crossover",
    "fit_data_constrained",
    "higher_is_better",
    "load_curves",
    "log_report",
    "log_verdicts",
    "read_study",
    "prabhudesai_critical_compute",
    "verdicts",
    "write_report",
]
