"""The demo (`make demo`): train / forecast / gates / generate on the bundled data, and its claim."""

import dataclasses
import shlex
from pathlib import Path

import pytest
import torch

from longshort.cli import config_from_overrides, main
from longshort.datasets import sunspots_yearly, windows
from longshort.demo import DemoConfig, demo_commands
from longshort.forecasting import SeriesConfig, train_forecaster

PERSISTENCE = "persistence (last value)"
AUTOREGRESSION = "linear autoregression on 24 steps"


def quiet(_: str) -> None:
    pass


def test_sunspots_ship_with_the_package():
    years, values = sunspots_yearly()
    assert years[0] == 1700 and years[-1] == 2008 and len(values) == 309
    assert values.dtype == torch.float64 and float(values.min()) >= 0


def test_windows_pair_each_window_with_the_next_value():
    inputs, targets = windows(torch.arange(6.0), lookback=3)
    assert inputs.shape == (3, 3, 1) and targets.shape == (3, 1)
    assert inputs[1, :, 0].tolist() == [1.0, 2.0, 3.0] and targets[1, 0] == 4.0
    with pytest.raises(ValueError, match="lookback"):
        windows(torch.arange(6.0), lookback=6)


def test_the_demo_runs_the_commands_the_readme_shows():
    commands = [shlex.join(command) for command in demo_commands(DemoConfig(), Path("runs/demo"))]
    assert commands == [
        "train --out runs/demo/sunspots",
        "forecast runs/demo/sunspots --steps 22",
        "gates runs/demo/sunspots",
        "train --text --epochs=4 --out runs/demo/kjv",
        "generate runs/demo/kjv --prompt 'And God said' --length 300 --seed 0",
        "gates runs/demo/kjv 'In the beginning God created the heaven and the earth.'",
    ]
    short = demo_commands(DemoConfig(text=False, series_epochs=5), Path("x"), fresh=True, progress=False)
    assert len(short) == 3 and short[0] == ["train", "--out", "x/sunspots", "--epochs=5", "--fresh", "--no-progress"]


def test_tiny_demo_end_to_end(tmp_path, capsys):
    tiny = ["--series_epochs=2", "--forecast_steps=3", "--text_units=4", "--text_epochs=1", "--generate_length=20"]
    assert main(["demo", *tiny, "--no-progress", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    steps = [line for line in printed.splitlines() if line.startswith("$ longshort ")]
    assert [step.split()[2] for step in steps] == ["train", "forecast", "gates", "train", "generate", "gates"]
    for expected in ("Forecasting 'sunspots' of sunspots_yearly.csv", PERSISTENCE, AUTOREGRESSION, "seasonal naive (season 11"):
        assert expected in printed
    forecast = printed[printed.index("$ longshort forecast") :].splitlines()
    assert [line.split()[0] for line in forecast[2:5]] == ["2009", "2010", "2011"]
    assert "Bits per character on the held-out text" in printed
    generated = printed[printed.index("$ longshort generate") :].splitlines()[1]
    assert generated.startswith("And God said") and len(generated) >= len("And God said")
    for name in ("sunspots/test_forecast.png", "sunspots/learning_curves.png", "sunspots/forecast.png",
                 "sunspots/gates.png", "kjv/learning_curves.png", "kjv/gates.png"):
        assert (tmp_path / name).stat().st_size > 10_000, name


def test_the_forecaster_beats_persistence_on_the_held_out_years():
    config = SeriesConfig(target="sunspots", epochs=25, patience=0)
    report = train_forecaster(config, progress=False, echo=quiet).report
    assert report["times"]["test"] == "1963 to 2008 (46 steps)"
    assert report["rmse"]["LSTM"] < 0.8 * report["rmse"][PERSISTENCE]


@pytest.mark.slow
def test_the_readme_demo_numbers():
    """The claim of the README's demo section: with the defaults, the LSTM beats persistence and the linear AR."""
    report = train_forecaster(progress=False, echo=quiet).report
    rmse = report["rmse"]
    assert rmse["LSTM"] < 0.6 * rmse[PERSISTENCE] and rmse["LSTM"] < rmse[AUTOREGRESSION]


def test_cli_rejects_unknown_and_malformed_options(capsys):
    assert main(["demo", "--epochs=3"]) == 2
    assert "unknown option --epochs; DemoConfig has: --series_epochs" in capsys.readouterr().err
    assert main(["demo", "--series_epochs=many"]) == 2
    assert "--series_epochs takes a" in capsys.readouterr().err


def test_config_overrides_convert_types():
    config = config_from_overrides(DemoConfig, ["--series-epochs=7", "--text=false", "--prompt=Moses", "--seed=2"])
    assert dataclasses.astuple(config)[:3] == (7, 22, False) and config.prompt == "Moses" and config.seed == 2
    with pytest.raises(ValueError, match="--field=value"):
        config_from_overrides(DemoConfig, ["epochs"])
