"""What every experiment shares: its description, its report, and how the report is written.

An experiment is a config dataclass (every number its result depends on, a fixed seed, and
`threads`: `run_experiment` runs it inside `tasks.long_lag_cpu(config.threads)`),
a `run(config, out, progress)` that trains, draws its PNGs into `out` and returns a
`Report`, and a tiny configuration the test suite runs in seconds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from longshort.experiments.tasks import long_lag_cpu


@dataclass
class Report:
    """What an experiment found: a table, the numbers its claims rest on, and honest notes."""

    title: str
    columns: list[str]  # table header
    rows: list[list[Any]]  # table body, one list per row, same length as `columns`
    summary: dict[str, Any]  # the figures the experiment's claims are checked against
    notes: list[str] = field(default_factory=list)  # what the data show, in words, including where they differ from the papers
    figures: list[Path] = field(default_factory=list)  # PNGs written into the output folder
    data: dict[str, Any] = field(default_factory=dict)  # curves and per-seed raw numbers, for the JSON


@dataclass(frozen=True)
class Experiment:
    """One runnable claim: `longshort experiment NAME`."""

    name: str
    summary: str  # one line, for `longshort experiment --list`
    config_class: type
    run: Callable[[Any, Path, bool], Report]  # (config, output folder, progress bar) -> Report
    tiny: dict[str, Any]  # config overrides small enough for the test suite (seconds)


def format_table(columns: list[str], rows: list[list[Any]]) -> str:
    """A plain-text table; floats get 4 significant digits."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "nan" if math.isnan(value) else f"{value:.4g}"
        return str(value)

    body = [[cell(value) for value in row] for row in rows]
    widths = [max(len(text) for text in column) for column in zip(columns, *body)]
    line = lambda texts: "  ".join(text.ljust(width) for text, width in zip(texts, widths)).rstrip()  # noqa: E731
    return "\n".join([line(columns), line(["-" * width for width in widths])] + [line(texts) for texts in body])


def format_report(report: Report) -> str:
    lines = [report.title, "", format_table(report.columns, report.rows)]
    if report.notes:
        lines += [""] + [f"- {note}" for note in report.notes]
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, Path):
        return value.name
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no nan/inf: "nan", "inf"
    return value


def write_results(name: str, config: Any, report: Report, seconds: float, out: Path) -> Path:
    """Write `results.json` into `out` atomically (a temporary file, then a rename)."""
    results = {
        "experiment": name,
        "config": config,
        "title": report.title,
        "columns": report.columns,
        "rows": report.rows,
        "summary": report.summary,
        "notes": report.notes,
        "figures": report.figures,
        "data": report.data,
        "seconds": round(seconds, 1),
        "machine": {"torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count()},
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    with tempfile.NamedTemporaryFile("w", dir=out, suffix=".tmp", delete=False) as handle:
        json.dump(_jsonable(results), handle, indent=1)
    os.replace(handle.name, path)
    return path


def run_experiment(experiment: Experiment, config: Any, out: Path, progress: bool = True) -> tuple[Report, Path]:
    """Run `experiment` with `config`, write its JSON into `out`; return the report and the JSON's path."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with long_lag_cpu(config.threads):
        report = experiment.run(config, out, progress)
    return report, write_results(experiment.name, config, report, time.perf_counter() - start, out)


def save_figure(figure: Any, path: Path) -> Path:
    """Save a matplotlib figure as a PNG and close it."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
