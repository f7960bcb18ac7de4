"""Why LSTM, reproduced: experiments that measure each claim of the lecture against the papers.

Run one with `longshort experiment NAME [--field=value ...] [--out DIR]`; list them with
`longshort experiment --list`. Each module defines a config dataclass, `run` and `EXPERIMENT`.
"""

from longshort.experiments.base import Experiment, Report, format_report, run_experiment

EXPERIMENTS: dict[str, Experiment] = {}  # name -> Experiment, in the order of the README


def _register(experiment: Experiment) -> None:
    EXPERIMENTS[experiment.name] = experiment


# Each experiment module registers itself here, one line each:
from longshort.experiments import forget_bias, gates, hochreiter1997  # noqa: E402
_register(forget_bias.EXPERIMENT)
_register(hochreiter1997.EXPERIMENT)
_register(gates.EXPERIMENT)
from longshort.experiments import exploding, memory  # noqa: E402
_register(exploding.EXPERIMENT)
_register(memory.EXPERIMENT)

__all__ = ["EXPERIMENTS", "Experiment", "Report", "format_report", "run_experiment"]
