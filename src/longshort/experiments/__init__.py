"""Why LSTM, reproduced: experiments that measure each claim of the lecture against the papers.

Run one with `longshort experiment NAME [--field=value ...] [--out DIR]`; list them with
`longshort experiment --list`. Each module defines a config dataclass, `run` and `EXPERIMENT`.
"""

from longshort.experiments.base import Experiment, Report, format_report, run_experiment

EXPERIMENTS: dict[str, Experiment] = {}  # name -> Experiment, in the order of the README


def _register(experiment: Experiment) -> None:
    EXPERIMENTS[experiment.name] = experiment


# Each experiment module defines EXPERIMENT; they are listed in the order of the README:
from longshort.experiments import exploding, forget_bias, gates, hochreiter1997, memory  # noqa: E402

for _module in (exploding, memory, forget_bias, hochreiter1997, gates):
    _register(_module.EXPERIMENT)

__all__ = ["EXPERIMENTS", "Experiment", "Report", "format_report", "run_experiment"]
