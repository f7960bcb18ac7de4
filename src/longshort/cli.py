"""The `longshort` command line.

    longshort demo [--field=value ...] [--out DIR] [--fresh] [--no-progress]
    longshort experiment NAME [--field=value ...] [--out DIR]
    longshort experiment --list
    longshort train [FILE] [--text] [--target COLUMN] [--features A,B] [--lookback N] [--horizon K]
                    [--epochs N] [--out DIR] [--fresh] [--no-progress] [--field=value ...]
    longshort forecast CHECKPOINT [--steps K] [--input CSV] [--plot PNG]
    longshort generate CHECKPOINT [--prompt TEXT] [--length N] [--temperature T] [--seed S]
    longshort gates CHECKPOINT [INPUT] [--range A:B] [--max-units N] [--plot PNG]
    longshort export CHECKPOINT [--onnx FILE] [--torchscript FILE]

Bad input (a missing or malformed file, a wrong option, an unusable checkpoint) prints
`longshort COMMAND: what is wrong` on stderr and exits with code 2. A training run stopped
by a NaN or infinite loss or gradient (longshort.training's guard) says where and exits with 3;
one interrupted by Ctrl-C exits with 130, by SIGTERM with 143, its last finished epoch kept.
Every command first has malloc keep freed memory for reuse (`longshort.memory`: the demo's
text model trains 20% faster on glibc); `LONGSHORT_HOLD_MEMORY=0` leaves malloc as it is.
Under torchrun, `train` runs data-parallel (longshort.distributed); only rank 0 prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import os
import shlex
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence, TypeVar

from longshort.demo import DemoConfig, demo_commands
from longshort.memory import hold_freed_memory

SERIES_FLAGS = ("target", "features", "lookback", "horizon")  # train's flags that only a time series takes

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
        values[name] = _convert(name, text, type(fields[name].default))
    return config_class(**values)


def _convert(name: str, text: str, kind: type) -> object:
    """`text` as a value of a config field's type (bool, int, float, str or an Enum); a clear error otherwise."""
    if kind is bool:
        if text.lower() not in ("1", "true", "yes", "0", "false", "no"):
            raise ValueError(f"--{name} takes true or false, got {text!r}")
        return text.lower() in ("1", "true", "yes")
    if issubclass(kind, enum.Enum):
        choices = [member.value for member in kind]
        if text not in choices:
            raise ValueError(f"--{name} takes one of {', '.join(map(str, choices))}, got {text!r}")
        return kind(text)
    try:
        return kind(text)
    except ValueError:
        what = {int: "an integer", float: "a number"}.get(kind, f"a {kind.__name__}")
        raise ValueError(f"--{name} takes {what}, got {text!r}") from None


def _demo(overrides: Sequence[str], out: Path, fresh: bool, progress: bool) -> int:
    """Run the demo's commands (see longshort.demo) one after the other, each shown first; stop at a failure."""
    config = config_from_overrides(DemoConfig, overrides)
    for command in demo_commands(config, out, fresh, progress):
        print(f"\n$ longshort {shlex.join(command)}", flush=True)
        code = main(command)
        if code != 0:
            return code
    return 0


def _experiment(name: Optional[str], overrides: Sequence[str], out: Optional[Path], progress: bool, list_them: bool) -> int:
    from longshort.experiments import EXPERIMENTS, format_report, run_experiment

    if list_them:
        width = max(len(known) for known in EXPERIMENTS)
        for known, experiment in EXPERIMENTS.items():
            print(f"{known:<{width}}  {experiment.summary}")
        return 0
    if name is None:
        raise ValueError(f"name an experiment: {', '.join(EXPERIMENTS)} (see --list)")
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


class Terminated(Exception):
    """SIGTERM arrived (a scheduler, or torchrun stopping the other processes when one failed)."""


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into Terminated while training, so it ends as Ctrl-C does, with a message."""

    def terminate(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fields_help(config_class: type) -> str:
    return ", ".join(f"--{field.name}={field.default}" for field in dataclasses.fields(config_class))


def _train(args: argparse.Namespace, overrides: Sequence[str]) -> int:
    from longshort.charmodel import TextConfig, format_report as format_text, train_char_model
    from longshort.distributed import DistributedError, main_process
    from longshort.forecasting import SeriesConfig, format_report as format_series, plot_test, train_forecaster
    from longshort.gate_plots import plot_learning_curves
    from longshort.training import NonFiniteError

    flags = [f"--{name}={value}" for name in SERIES_FLAGS + ("epochs",) if (value := getattr(args, name)) is not None]
    if args.text and any(getattr(args, name) is not None for name in SERIES_FLAGS):
        raise ValueError("--target, --features, --lookback and --horizon are for time series, not --text")
    if args.file is not None and not args.file.exists():
        raise ValueError(f"no such file: {args.file}")
    name = args.file.stem if args.file is not None else ("kjv" if args.text else "sunspots")
    out = args.out or Path("runs") / name
    progress = not args.no_progress
    main = main_process()  # not rank 1, 2, ... of a torchrun launch: those train silently
    echo = print if main else (lambda _: None)
    trainer, config_class = (train_char_model, TextConfig) if args.text else (train_forecaster, SeriesConfig)
    config = config_from_overrides(config_class, [*overrides, *flags])
    try:
        with _sigterm_raises():
            model = trainer(config, args.file, out, progress, args.fresh, echo)
    except NonFiniteError as error:  # the guard of longshort.training: no NaN reached the weights
        kept = f" {out / 'checkpoint.pt'} keeps the last finished epoch." if (out / "checkpoint.pt").is_file() else ""
        print(f"longshort train: {error}.{kept}", file=sys.stderr)
        return 3
    except DistributedError as error:
        print(f"longshort train: {error}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as stop:
        how, code = ("interrupted", 130) if isinstance(stop, KeyboardInterrupt) else ("terminated (SIGTERM)", 143)
        print(f"\nlongshort train: {how}. {out / 'checkpoint.pt'} keeps the last finished epoch: "
              "run the same command again to resume.", file=sys.stderr)
        return code
    if not main:
        return 0
    if args.text:
        print(format_text(model))
        what = f'Generate: longshort generate {out} --prompt "..." --length 300 --temperature 0.8'
        ylabel, title = "bits per character", f"Character LSTM on {model.source}"
    else:
        print(format_series(model))
        print(f"\nPlot: {plot_test(model, out / 'test_forecast.png')}")
        what = f"Forecast: longshort forecast {out} --steps {model.config.horizon}"
        ylabel, title = "mean squared error (standardised)", f"LSTM forecaster of {model.data.columns[0]!r}"
    state = model.state
    print(f"Plot: {plot_learning_curves(state.train_losses, state.validation_losses, state.best_epoch, ylabel, title, out / 'learning_curves.png')}")
    print(f"Checkpoint: {out / 'checkpoint.pt'}\n{what}")
    return 0


def _forecast(args: argparse.Namespace) -> int:
    from longshort.forecasting import Forecaster, plot_forecast

    forecaster = Forecaster.load(args.checkpoint)
    data = forecaster.read_csv(args.input) if args.input is not None else forecaster.data
    horizon = forecaster.config.horizon
    steps = args.steps if args.steps is not None else horizon
    forecast = forecaster.forecast(steps, data)
    how = "one call of the model" if steps <= horizon else f"recursively, {horizon} at a time"
    print(f"Forecast of {forecast.target!r} after {data.times[-1]} ({Path(data.source).name}), {steps} steps ({how}):")
    width = max(len(label) for label in forecast.times)
    for label, value in zip(forecast.times, forecast.values):
        print(f"  {label:>{width}}  {value:10.4g}")
    plot = args.plot or _beside(args.checkpoint, "forecast.png")
    print(f"Plot: {plot_forecast(forecast, plot, data.time_column or 'time step')}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from longshort.charmodel import CharModel

    model = CharModel.load(args.checkpoint)
    print(args.prompt + model.generate(args.prompt, args.length, args.temperature, args.seed))
    return 0


def _gates(args: argparse.Namespace) -> int:
    from longshort.checkpoints import load_checkpoint
    from longshort.datasets import read_text_file
    from longshort.gate_plots import draw_gates

    first, last = _parse_range(args.range)
    kind = load_checkpoint(args.checkpoint)["kind"]
    plot = args.plot or _beside(args.checkpoint, "gates.png")
    if kind == "series":
        from longshort.forecasting import Forecaster

        model = Forecaster.load(args.checkpoint)
        if args.input is None:
            sequence = model.data  # the series it was trained on, which the checkpoint carries
        elif not Path(args.input).exists():
            raise ValueError(f"no such file: {args.input}")
        else:
            sequence = model.read_csv(Path(args.input))
    else:
        from longshort.charmodel import CharModel

        model = CharModel.load(args.checkpoint)
        if args.input is None:
            raise ValueError("a character model needs INPUT: a text file, or the text itself in quotes")
        if Path(args.input).is_file():
            sequence = read_text_file(Path(args.input))
        else:
            print(f"Reading the text {args.input!r} itself (there is no file of that name).")
            sequence = args.input
    print(f"Plot: {draw_gates(model, sequence, plot, first, last, args.max_units)}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from longshort.export import export_checkpoint

    try:
        exported = export_checkpoint(args.checkpoint, args.onnx, args.torchscript)
    except ImportError as missing:  # onnx is not installed: its message says what to install
        raise ValueError(str(missing)) from None
    for path in exported.written:
        print(f"Wrote {path}")
    print(f"Input {exported.inputs}.\nOutput {exported.outputs}.")
    return 0


def _parse_range(text: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    if text is None:
        return None, None
    start, colon, stop = text.partition(":")
    try:
        if not colon:
            raise ValueError
        return (int(start) if start.strip() else None), (int(stop) if stop.strip() else None)
    except ValueError:
        raise ValueError(f"--range takes FIRST:LAST (row or character numbers, either may be left out), got {text!r}") from None


def _beside(checkpoint: Path, name: str) -> Path:
    """A file next to the checkpoint (in its folder)."""
    return checkpoint / name if checkpoint.is_dir() else checkpoint.parent / name


def _add_model_commands(commands: argparse._SubParsersAction) -> None:
    from longshort.charmodel import TextConfig
    from longshort.forecasting import SeriesConfig

    train = commands.add_parser(
        "train",
        allow_abbrev=False,
        help="train an LSTM forecaster on a CSV, or with --text a character language model on a text file",
        description="Train on FILE (default: yearly sunspot numbers, or with --text the King James Genesis and Exodus, "
        "both shipped with longshort). A checkpoint in --out is resumed unless --fresh. "
        f"Time-series options (SeriesConfig): {_fields_help(SeriesConfig)}. Text options (TextConfig): {_fields_help(TextConfig)}.",
    )
    train.add_argument("file", nargs="?", type=Path, help="a CSV with a header, or a UTF-8 text file with --text")
    train.add_argument("--text", action="store_true", help="train a character-level language model on a text file")
    train.add_argument("--target", help="the column to forecast (needed when the CSV has several numeric columns)")
    train.add_argument("--features", help="further input columns, comma-separated")
    train.add_argument("--lookback", type=int, help="time steps the model reads (default 24)")
    train.add_argument("--horizon", type=int, help="time steps forecast at once (default 1)")
    train.add_argument("--epochs", type=int, help="at most this many epochs (early stopping may end sooner)")
    train.add_argument("--out", type=Path, default=None, help="folder for the checkpoint and plots (default runs/NAME)")
    train.add_argument("--fresh", action="store_true", help="start over instead of resuming the checkpoint in --out")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    forecast = commands.add_parser("forecast", allow_abbrev=False, help="forecast with a trained series checkpoint")
    forecast.add_argument("checkpoint", type=Path, help="checkpoint.pt, or the folder train wrote it to")
    forecast.add_argument("--steps", type=int, default=None, help="how many steps ahead (default: the model's horizon)")
    forecast.add_argument("--input", type=Path, default=None, help="forecast after this CSV's series instead of the training series")
    forecast.add_argument("--plot", type=Path, default=None, help="the PNG (default forecast.png beside the checkpoint)")

    generate = commands.add_parser("generate", allow_abbrev=False, help="sample text from a trained --text checkpoint")
    generate.add_argument("checkpoint", type=Path, help="checkpoint.pt, or the folder train wrote it to")
    generate.add_argument("--prompt", default="", help="text to start from (default: a line break)")
    generate.add_argument("--length", type=int, default=300, help="characters to generate (default 300)")
    generate.add_argument("--temperature", type=float, default=0.8, help="0 = most likely character, 1 = the model's distribution (default 0.8)")
    generate.add_argument("--seed", type=int, default=None, help="make the sampling repeatable")

    gates = commands.add_parser(
        "gates", allow_abbrev=False, help="draw the LSTM's f, i, o, g, c, h over time for an input, as heat maps",
        description="INPUT is a CSV for a forecaster (default: the series it was trained on), or a text file or the text "
        "itself for a character model. Drawn: the last lookback rows of the CSV, or the first 80 characters, unless --range says.",
    )
    gates.add_argument("checkpoint", type=Path, help="checkpoint.pt, or the folder train wrote it to")
    gates.add_argument("input", nargs="?", help="a CSV (series model; default its training series), or a text file or text (text model)")
    gates.add_argument("--range", default=None, help="FIRST:LAST rows (CSV) or characters (text), Python slice style")
    gates.add_argument("--max-units", type=int, default=64, help="draw at most this many units (default 64)")
    gates.add_argument("--plot", type=Path, default=None, help="the PNG (default gates.png beside the checkpoint)")

    export = commands.add_parser(
        "export", allow_abbrev=False, help="write a trained checkpoint's model as ONNX and/or TorchScript",
        description="The model with its best weights, in evaluation mode, for any batch size and length: a forecaster "
        "with its scaling built in (windows in the data's units in, forecasts in the target's units out), a character "
        "model as codes in, scores and state out (the vocabulary stored with it). See longshort.export.",
    )
    export.add_argument("checkpoint", type=Path, help="checkpoint.pt, or the folder train wrote it to")
    export.add_argument("--onnx", type=Path, default=None, metavar="FILE", help="write the ONNX file here (needs the onnx package)")
    export.add_argument("--torchscript", type=Path, default=None, metavar="FILE", help="write the TorchScript file here (torch.jit.load reads it)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="longshort", description="LSTM networks as taught, on PyTorch.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="train, forecast, generate and draw the gates on the bundled sunspots and King James text",
        description="Runs longshort train / forecast / gates on the bundled yearly sunspot numbers, then train --text / "
        f"generate / gates on the bundled King James text, showing each command. Options (DemoConfig): {_fields_help(DemoConfig)}.",
    )
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder for the checkpoints and plots (default runs/demo)")
    demo.add_argument("--fresh", action="store_true", help="train anew instead of resuming the checkpoints in --out")
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
    _add_model_commands(commands)
    args, overrides = parser.parse_known_args(argv)
    if os.environ.get("LONGSHORT_HOLD_MEMORY") != "0":
        hold_freed_memory()  # freed memory stays for the next step instead of being faulted in again (longshort.memory)
    try:
        if args.command == "experiment":
            return _experiment(args.name, overrides, args.out, not args.no_progress, args.list)
        if args.command == "demo":
            return _demo(overrides, args.out, args.fresh, progress=not args.no_progress)
        if args.command != "train" and overrides:
            raise ValueError(f"unknown arguments: {' '.join(overrides)} (see longshort {args.command} --help)")
        if args.command == "train":
            return _train(args, overrides)
        return {"forecast": _forecast, "generate": _generate, "gates": _gates, "export": _export}[args.command](args)
    except (ValueError, OSError) as error:
        print(f"longshort {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # train says more, and resumes; the other commands have nothing to lose
        print(f"\nlongshort {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
