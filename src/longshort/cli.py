"""The `longshort` command line.

    longshort demo [--field=value ...] [--out DIR]
    longshort experiment NAME [--field=value ...] [--out DIR]
    longshort experiment --list
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Optional, Sequence, TypeVar

from longshort.demo import DemoConfig, format_report, plot_report, run_demo

Config = TypeVar("Config")


def config_from_overrides(config_class: type[Config], overrides: Sequence[str]) -> Config:
    """Build a config dataclass from `--field=value` strings, converting each value to the field's type."""
    fields = {field.name: field for field in dataclasses.fields(config_class)}
    values = {}
    for override in overrides:
        name, equals, text = override.removeprefix("--").partition("=")
        name = name.replace("-", "_")
        if not override.startswith("--") or not equals:
            raise ValueError(f"expected --field=value, got {override!r}")
        if name not in fields:
            raise ValueError(f"unknown option --{name}; {config_class.__name__} has: {', '.join('--' + f for f in fields)}")
        kind = type(fields[name].default)
        try:
            values[name] = text.lower() in ("1", "true", "yes") if kind is bool else kind(text)
        except ValueError:
            raise ValueError(f"--{name} takes a {kind.__name__}, got {text!r}") from None
    return config_class(**values)


def _demo(overrides: Sequence[str], out: Path, progress: bool) -> int:
    config = config_from_overrides(DemoConfig, overrides)
    report = run_demo(config, progress=progress)
    print(format_report(report))
    print(f"\nPlot: {plot_report(report, out / 'sunspots.png')}")
    return 0


def _experiment(name: Optional[str], overrides: Sequence[str], out: Optional[Path], progress: bool, list_them: bool) -> int:
    from longshort.experiments import EXPERIMENTS, format_report, run_experiment

    if list_them or name is None:
        width = max(len(known) for known in EXPERIMENTS)
        for known, experiment in EXPERIMENTS.items():
            print(f"{known:<{width}}  {experiment.summary}")
        return 0 if list_them else 2
    if name not in EXPERIMENTS:
        raise ValueError(f"no experiment {name!r}; there are: {', '.join(EXPERIMENTS)} (see --list)")
    experiment = EXPERIMENTS[name]
    config = config_from_overrides(experiment.config_class, overrides)
    report, results = run_experiment(experiment, config, out or Path("runs/experiments") / name, progress)
    print(format_report(report))
    print(f"\nResults: {results}")
    for figure in report.figures:
        print(f"Plot: {figure}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="longshort", description="LSTM networks as taught, on PyTorch.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="train an LSTM on yearly sunspot numbers and show what it learned",
        description="Options (DemoConfig fields) as --field=value: "
        + ", ".join(f"--{field.name}={field.default}" for field in dataclasses.fields(DemoConfig)),
    )
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder for the plot (default runs/demo)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    experiment = commands.add_parser(
        "experiment",
        help="run one of the experiments that show why LSTM (see --list)",
        description="Options are the experiment's config fields, as --field=value.",
    )
    experiment.add_argument("name", nargs="?", help="which experiment (see --list)")
    experiment.add_argument("--list", action="store_true", help="list the experiments")
    experiment.add_argument("--out", type=Path, default=None, help="folder for results.json and plots (default runs/experiments/NAME)")
    experiment.add_argument("--no-progress", action="store_true", help="no progress bar")
    args, overrides = parser.parse_known_args(argv)
    try:
        if args.command == "experiment":
            return _experiment(args.name, overrides, args.out, not args.no_progress, args.list)
        return _demo(overrides, args.out, progress=not args.no_progress)
    except ValueError as error:
        print(f"longshort {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
