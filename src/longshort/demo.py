"""The demo: longshort's main job end to end, as the commands a user types.

`longshort demo` (what `make demo` runs) works on the data that ship with longshort. It
runs these commands through `longshort.cli.main`, the code the command line runs, and
prints each one before its output:

    longshort train --out runs/demo/sunspots              a forecaster of the yearly sunspot number
    longshort forecast runs/demo/sunspots --steps 22      the next two solar cycles, printed and plotted
    longshort gates runs/demo/sunspots                    f, i, o, g, c, h over its last 24 years
    longshort train --text --epochs=4 --out runs/demo/kjv a character model of the King James text
    longshort generate runs/demo/kjv --prompt "And God said" --length 300 --seed 0
    longshort gates runs/demo/kjv "In the beginning God created the heaven and the earth."

So the demo never drifts from the commands: it is them. Like `longshort train`, it resumes
what an interrupted run left in its output folder (`--fresh` starts over).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longshort.charmodel import TextConfig
from longshort.forecasting import SeriesConfig

GATES_TEXT = "In the beginning God created the heaven and the earth."  # Genesis 1:1, for the text model's gates


@dataclass
class DemoConfig:
    """What the demo runs; each field is `--field=value` on `longshort demo`."""

    series_epochs: int = 300  # at most: early stopping ends the sunspot forecaster sooner (SeriesConfig's default)
    forecast_steps: int = 22  # years forecast after 2008: two solar cycles
    text: bool = True  # also train a character model on the King James text (35 s on an idle 2-core machine)
    text_units: int = 256  # its LSTM size (TextConfig's default)
    text_epochs: int = 4  # its epochs: a third of TextConfig's 12, to keep the demo short
    prompt: str = "And God said"  # what generation starts from
    generate_length: int = 300  # characters to generate
    seed: int = 0


def demo_commands(config: DemoConfig, out: Path, fresh: bool = False, progress: bool = True) -> list[list[str]]:
    """The `longshort` command lines the demo runs, in order (options left at their defaults are left out)."""
    series, text = Path(out) / "sunspots", Path(out) / "kjv"
    flags = (["--fresh"] if fresh else []) + ([] if progress else ["--no-progress"])
    commands = [
        ["train", "--out", str(series), *_changed(SeriesConfig, {"epochs": config.series_epochs, "seed": config.seed}), *flags],
        ["forecast", str(series), "--steps", str(config.forecast_steps)],
        ["gates", str(series)],
    ]
    if config.text:
        text_options = _changed(TextConfig, {"units": config.text_units, "epochs": config.text_epochs, "seed": config.seed})
        commands += [
            ["train", "--text", *text_options, "--out", str(text), *flags],
            ["generate", str(text), "--prompt", config.prompt, "--length", str(config.generate_length), "--seed", str(config.seed)],
            ["gates", str(text), GATES_TEXT],
        ]
    return commands


def _changed(config_class: type, values: dict[str, Any]) -> list[str]:
    """`--name=value` for each of `values` that differs from `config_class`'s default."""
    defaults = config_class()
    return [f"--{name}={value}" for name, value in values.items() if getattr(defaults, name) != value]
