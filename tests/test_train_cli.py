"""`longshort train / forecast / gates` on a time series, end to end on tiny data, and every bad input."""

import math

import pytest
import torch

from longshort.cli import main
from longshort.datasets import windows, windows_ahead
from longshort.forecasting import (
    Forecaster,
    SeriesConfig,
    _future_times,
    linear_autoregression,
    apply_autoregression,
    read_series_csv,
    seasonal_period,
    split_by_time,
)

TINY = ["--units=4", "--epochs=2", "--no-progress"]


def write_csv(path, rows=80, season=8, header="year,value,other", cell=None):
    """A seasonal series with a year column, the value and an unrelated numeric column."""
    lines = [header]
    for row in range(rows):
        value = 10 + 5 * math.sin(2 * math.pi * row / season) + 0.1 * (row % 3)
        lines.append(f"{1900 + row},{value:.3f},{row % 5}")
    if cell is not None:
        line, text = cell
        year, _, other = lines[line].split(",")
        lines[line] = f"{year},{text},{other}"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(capsys, *argv):
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(capsys, command, expected, *argv):
    code, out, err = run(capsys, command, *argv)
    assert code == 2, (out, err)
    assert err.startswith(f"longshort {command}: ") and expected in err, err
    assert "Traceback" not in err + out


# ------------------------------------------------------------------ end to end


def test_train_then_forecast_then_gates(tmp_path, capsys):
    data = write_csv(tmp_path / "series.csv")
    out = tmp_path / "run"
    code, printed, _ = run(capsys, "train", data, "--target", "value", "--lookback", 6, "--out", out, *TINY)
    assert code == 0
    for name in ("LSTM", "persistence (last value)", "seasonal naive (season 8", "linear autoregression on 6 steps"):
        assert name in printed
    assert "Trained 2 epochs" in printed and "test 1968 to 1979 (12 steps)" in printed
    for name in ("checkpoint.pt", "learning_curves.png", "test_forecast.png"):
        assert (out / name).stat().st_size > 1000

    code, printed, _ = run(capsys, "forecast", out, "--steps", 4)
    assert code == 0
    lines = printed.splitlines()
    assert "recursively, 1 at a time" in lines[0]
    assert [line.split()[0] for line in lines[1:5]] == ["1980", "1981", "1982", "1983"]
    assert all(math.isfinite(float(line.split()[1])) for line in lines[1:5])
    assert (out / "forecast.png").stat().st_size > 1000

    code, printed, _ = run(capsys, "gates", out / "checkpoint.pt", data, "--range", "10:40", "--plot", tmp_path / "g.png")
    assert code == 0 and (tmp_path / "g.png").stat().st_size > 10_000
    code, printed, _ = run(capsys, "gates", out)  # no INPUT: the series the checkpoint carries
    assert code == 0 and printed == f"Plot: {out / 'gates.png'}\n" and (out / "gates.png").stat().st_size > 10_000

    assert_refused(capsys, "forecast", f"no such file: {tmp_path / 'new.csv'}", out, "--input", tmp_path / "new.csv")
    assert_refused(capsys, "gates", f"no such file: {tmp_path / 'new.csv'}", out, tmp_path / "new.csv")
    data.write_text(data.read_text().replace("year,value,other", "year,price,other"))
    assert_refused(capsys, "forecast", "has no column 'value' (--target)", out, "--input", data)


def test_multi_step_horizon_with_features(tmp_path, capsys):
    data = write_csv(tmp_path / "series.csv")
    out = tmp_path / "run"
    args = ("--target", "value", "--features", "other", "--lookback", 6, "--horizon", 3, "--out", out)
    assert run(capsys, "train", data, *args, *TINY)[0] == 0
    forecaster = Forecaster.load(out)
    assert forecaster.data.columns == ["value", "other"] and forecaster.model[-1].units == 3
    code, printed, _ = run(capsys, "forecast", out, "--steps", 3)
    assert code == 0 and "one call of the model" in printed and len(printed.splitlines()) == 5
    assert_refused(capsys, "forecast", "needs the future of the input columns other", out, "--steps", 4)


def test_default_run_trains_on_the_bundled_sunspots(tmp_path, capsys):
    code, printed, _ = run(capsys, "train", "--out", tmp_path, *TINY)
    assert code == 0
    assert "Forecasting 'sunspots' of sunspots_yearly.csv (309 time steps)" in printed
    assert "test 1963 to 2008 (46 steps)" in printed


def test_forecast_from_another_csv(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(capsys, "train", write_csv(tmp_path / "a.csv"), "--target", "value", "--lookback", 6, "--out", out, *TINY)[0] == 0
    newer = write_csv(tmp_path / "b.csv", rows=30)
    code, printed, _ = run(capsys, "forecast", out, "--input", newer, "--steps", 2)
    assert code == 0 and "after 1929 (b.csv)" in printed and "1930" in printed


def test_missing_values_are_interpolated_and_reported(tmp_path, capsys):
    data = write_csv(tmp_path / "gaps.csv", cell=(20, "NA"))
    lines = data.read_text().splitlines()
    lines[1] = "1900,,0"  # a leading gap: dropped
    data.write_text("\n".join(lines) + "\n")
    code, printed, _ = run(capsys, "train", data, "--target", "value", "--lookback", 6, "--out", tmp_path / "r", *TINY)
    assert code == 0
    assert "Note: dropped 1 rows with missing values at the start or end (lines 2)" in printed
    assert "Note: column 'value': 1 missing values filled by linear interpolation (lines 21)" in printed


# ------------------------------------------------------------------ the pieces


def test_read_csv_fills_gaps_linearly_and_finds_target_and_time(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("date,load\n2020-01-01,1\n2020-01-02,\n2020-01-03,3\n2020-01-04,n/a\n2020-01-05,n/a\n2020-01-06,9\n")
    data = read_series_csv(path)
    assert data.columns == ["load"] and data.time_column == "date"
    assert data.values[:, 0].tolist() == [1, 2, 3, 5, 7, 9]
    assert _future_times(data.times, 2) == ["2020-01-07", "2020-01-08"]
    assert _future_times(["a", "b"], 2) == ["+1", "+2"]


def test_windows_ahead_extends_windows():
    series = torch.arange(10.0)
    inputs, targets = windows_ahead(series[:, None], 0, lookback=3, horizon=2)
    assert inputs.shape == (6, 3, 1) and targets.shape == (6, 2)
    assert inputs[2, :, 0].tolist() == [2, 3, 4] and targets[2].tolist() == [5, 6]
    one_step = windows_ahead(series[:, None], 0, 3, 1)
    assert all(torch.equal(a, b) for a, b in zip(one_step, windows(series, 3)))


def test_split_parts_do_not_share_targets():
    config = SeriesConfig(lookback=5, horizon=2, validation_fraction=0.2, test_fraction=0.2)
    split = split_by_time(50, config)
    last_train_target = split.train[-1] + 5 + 2 - 1
    assert last_train_target < split.validation_start <= split.validation[0] + 5
    assert split.validation[-1] + 5 + 2 - 1 < split.test_start == split.test[0] + 5
    assert split.test[-1] + 5 + 2 - 1 == 49


def test_baselines():
    season = seasonal_period(torch.sin(torch.arange(120.0) * 2 * math.pi / 12) + 0.01 * torch.arange(120.0), 40)
    assert season == 12
    assert seasonal_period(torch.ones(50), 20) == 0
    series = 3.0 * torch.arange(30.0, dtype=torch.float64) + 1  # exactly linear: the AR is exact
    inputs, targets = windows_ahead(series[:, None], 0, 4, 2)
    coefficients = linear_autoregression(inputs, targets)
    assert torch.allclose(apply_autoregression(coefficients, inputs), targets, atol=1e-8)


# ------------------------------------------------------------------ bad input


def test_missing_file(tmp_path, capsys):
    assert_refused(capsys, "train", f"no such file: {tmp_path / 'nope.csv'}", tmp_path / "nope.csv")
    for command in ("forecast", "generate", "gates"):
        assert_refused(capsys, command, f"no checkpoint at {tmp_path / 'run' / 'checkpoint.pt'}", tmp_path / "run" / "checkpoint.pt")


def test_csv_without_the_target_column(tmp_path, capsys):
    data = write_csv(tmp_path / "s.csv")
    assert_refused(capsys, "train", "has no column 'price' (--target); its columns are: year, value, other", data, "--target", "price")
    assert_refused(capsys, "train", "no column 'nope' (--features)", data, "--target", "value", "--features", "nope")


def test_csv_with_several_numeric_columns_needs_a_target(tmp_path, capsys):
    assert_refused(capsys, "train", "choose the column to forecast with --target (numeric columns: value, other)", write_csv(tmp_path / "s.csv"))


def test_non_numeric_value_names_column_and_line(tmp_path, capsys):
    data = write_csv(tmp_path / "s.csv", cell=(7, "12,5"))  # a decimal comma: one cell too many
    assert_refused(capsys, "train", "line 8: 4 cells, but the header has 3", data, "--target", "value")
    data = write_csv(tmp_path / "s.csv", cell=(7, "high"))
    assert_refused(capsys, "train", "line 8, column 'value': 'high' is not a number", data, "--target", "value")


def test_all_missing_target(tmp_path, capsys):
    path = tmp_path / "s.csv"
    path.write_text("t,v\n1,\n2,NA\n3,\n")
    assert_refused(capsys, "train", "column 'v' has no values", path, "--target", "v")


def test_series_shorter_than_lookback_plus_horizon(tmp_path, capsys):
    data = write_csv(tmp_path / "s.csv", rows=10)
    assert_refused(capsys, "train", "fewer than lookback 8 + horizon 3", data, "--target", "value", "--lookback", 8, "--horizon", 3)
    assert_refused(capsys, "train", "too short to give the", data, "--target", "value", "--lookback", 6)


def test_empty_and_header_only_csv(tmp_path, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert_refused(capsys, "train", "is empty", empty)
    header = tmp_path / "header.csv"
    header.write_text("year,value\n")
    assert_refused(capsys, "train", "has a header but no rows", header)


def test_bad_options(tmp_path, capsys):
    assert_refused(capsys, "train", "unknown option --unit", "--unit=3")
    assert_refused(capsys, "train", "--lookback must be at least 1", "--lookback", 0)
    assert_refused(capsys, "train", "--threads must be at least 1", "--threads=0")
    assert_refused(capsys, "train", "are for time series, not --text", "--text", "--lookback", 5)
    assert_refused(capsys, "forecast", "unknown arguments: --units=3", tmp_path, "--units=3")
    assert_refused(capsys, "gates", "--range takes FIRST:LAST", tmp_path, "x.csv", "--range", "5")


def test_forecast_needs_a_series_checkpoint(tmp_path, capsys):
    assert_refused(capsys, "forecast", f"no checkpoint at {tmp_path / 'checkpoint.pt'}", tmp_path)
    text = tmp_path / "book.txt"
    text.write_text("a small text to learn from. " * 20)
    assert run(capsys, "train", text, "--text", "--seq_len=10", "--out", tmp_path / "t", *TINY)[0] == 0
    assert_refused(capsys, "forecast", "holds a character language model (trained with --text); this needs a time-series forecaster", tmp_path / "t")
    assert_refused(capsys, "gates", "a character model needs INPUT: a text file, or the text itself in quotes", tmp_path / "t")
