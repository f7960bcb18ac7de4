"""The demo and the CLI that runs it, on tiny configurations."""

import dataclasses

import pytest
import torch

from longshort.cli import config_from_overrides, main
from longshort.datasets import sunspots_yearly, windows
from longshort.demo import DemoConfig, cycle_period, run_demo


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


def test_cycle_period_finds_a_sine_period():
    assert cycle_period(torch.sin(torch.arange(200.0) * 2 * torch.pi / 11)) == 11
    assert cycle_period(torch.ones(50)) != cycle_period(torch.ones(50))  # nan for a constant


def test_short_demo_beats_persistence():
    report = run_demo(DemoConfig(epochs=40, free_run_years=40), progress=False)
    lstm, persistence, _ = report.rmse.values()
    assert lstm < persistence
    assert len(report.forecast) == len(report.actual) == len(report.test_years) == 60
    assert len(report.epoch_losses) == 40 and report.epoch_losses[-1] < report.epoch_losses[0]


def test_cli_demo_prints_the_table_and_writes_the_plot(tmp_path, capsys):
    assert main(["demo", "--epochs=1", "--free_run_years=24", "--no-progress", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "RMSE" in printed and "persistence" in printed and "linear autoregression" in printed
    assert (tmp_path / "sunspots.png").stat().st_size > 10_000


def test_cli_rejects_unknown_and_malformed_options(capsys):
    assert main(["demo", "--epoch=3"]) == 2
    assert "unknown option --epoch" in capsys.readouterr().err
    assert main(["demo", "--epochs=many"]) == 2
    assert "--epochs takes a int" in capsys.readouterr().err


def test_config_overrides_convert_types():
    config = config_from_overrides(DemoConfig, ["--epochs=7", "--learning_rate=0.5", "--split-year=1900"])
    assert dataclasses.astuple(config)[:4] == (24, 1900, 32, 7) and config.learning_rate == 0.5
    with pytest.raises(ValueError, match="--field=value"):
        config_from_overrides(DemoConfig, ["epochs"])
