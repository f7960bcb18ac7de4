"""Time-series forecasting with an LSTM: `longshort train series.csv --target COLUMN`.

Data. A CSV file with a header row. The target column is forecast; `features` are further
input columns (the target is always an input too). A first column named year, date,
time, month, ... (or the one `time_column` names) labels the time axis of the plots;
other columns are ignored. Cells that are empty or say NA, NaN, null, none, n/a, - or ?
are missing values: rows at the start or end with a missing value in a used column are
dropped, gaps inside are filled by linear interpolation between their neighbours, and a
note says which lines. Any other value that is not a number is an error that names the
column and the line.

Split by time. The last `test_fraction` of the time steps is the test part, which only the
final comparison sees; the `validation_fraction` before it decides early stopping (the
weights of the epoch with the lowest validation loss are kept); the model trains on the
rest. Every column is standardised with the mean and standard deviation of the training part.

Model. `Sequential(LSTM(units), Dense(horizon))` reads the last `lookback` rows of all input
columns and forecasts the next `horizon` values of the target at once (a direct
multi-output head, trained on the mean squared error over the horizon). Forecasts longer
than the horizon run recursively, feeding the forecasts back in blocks of `horizon`; that
needs the future of every input column, so it is possible for a univariate model only.

Baselines, on the same test windows and in the target's units: persistence (the last
value, repeated over the horizon), seasonal naive (the value one season earlier; the
season is `season`, or the lag of the strongest autocorrelation peak of the training part),
and a linear autoregression fitted by least squares on the training windows (all inputs
of the window, one output per horizon step).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from longshort.checkpoints import (
    CheckpointError,
    EpochLoop,
    TrainingState,
    checkpoint_file,
    config_from_checkpoint,
    fingerprint,
    fit,
    load_checkpoint,
    load_weights,
)
from longshort.datasets import bundled_path, read_text_file, windows_ahead
from longshort.experiments.base import pyplot, save_figure
from longshort.layers import LSTM
from longshort.training import Clip
from longshort.wrappers import Dense, Sequential

DEFAULT_CSV = "sunspots_yearly.csv"  # what `longshort train` uses without a file
TIME_NAMES = {"year", "date", "time", "month", "week", "day", "hour", "minute", "timestamp", "datetime", "period", "quarter"}
MISSING = {"", "na", "nan", "n/a", "null", "none", "-", "?"}


@dataclass
class SeriesConfig:
    """Everything a forecaster's result depends on; each field is `--field=value` on the command line."""

    target: str = ""  # the column to forecast; "" picks the only numeric column
    features: str = ""  # further input columns, comma-separated (the target is always an input)
    time_column: str = ""  # the column of time labels; "" takes a first column named year, date, time, month, ...
    lookback: int = 24  # time steps the model reads
    horizon: int = 1  # time steps it forecasts at once
    validation_fraction: float = 0.15  # the time steps before the test part: early stopping
    test_fraction: float = 0.15  # the last time steps: held out for the comparison with the baselines
    season: int = 0  # season length of the seasonal-naive baseline; 0: the strongest autocorrelation peak
    units: int = 32  # LSTM size
    epochs: int = 300  # at most this many passes over the training windows
    patience: int = 40  # stop after this many epochs without a lower validation loss (0: never)
    batch_size: int = 32
    learning_rate: float = 3e-3
    clip_norm: float = 1.0  # global gradient-norm clipping
    seed: int = 0
    threads: int = 1  # CPU threads for torch: 1 is fastest for small models, above all on a busy machine
    skip_nonfinite: bool = False  # a step with a NaN or infinite loss or gradient: skip it (True) or stop (NonFiniteError)

    def __post_init__(self) -> None:
        for name in ("lookback", "horizon", "units", "epochs", "batch_size", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.validation_fraction < 1 or not 0 <= self.test_fraction < 1:
            raise ValueError("--validation_fraction must lie in (0, 1) and --test_fraction in [0, 1)")
        if self.validation_fraction + self.test_fraction >= 1:
            raise ValueError("--validation_fraction plus --test_fraction must leave time steps to train on")
        if self.season < 0 or self.patience < 0 or not self.learning_rate > 0 or not self.clip_norm > 0:
            raise ValueError("--season and --patience must be >= 0, --learning_rate and --clip_norm > 0")


@dataclass
class SeriesData:
    """A cleaned table: one row per time step, the target first."""

    source: str  # the file it came from
    columns: list[str]  # the input columns; columns[0] is the target
    times: list[str]  # a label per row (from the time column, or the row number)
    values: Tensor  # (N, F) float64, no missing values
    time_column: str = ""  # "" when the rows are numbered
    notes: list[str] = field(default_factory=list)  # what was done about missing values
    fingerprint: str = ""  # a hash of the file's text


# ----------------------------------------------------------------------------- reading a CSV


def read_series_csv(path: Path, target: str = "", features: str = "", time_column: str = "") -> SeriesData:
    """Read and check a CSV as the module docstring says; ValueError with the file, column and line on bad input."""
    path = Path(path)
    text = read_text_file(path)
    rows = csv.reader(io.StringIO(text))
    try:
        header = [name.strip() for name in next(rows)]
        body = []
        for cells in rows:
            if not any(cell.strip() for cell in cells):
                continue  # a blank line
            if len(cells) != len(header):
                raise ValueError(f"{path}, line {rows.line_num}: {len(cells)} cells, but the header has {len(header)}")
            body.append((rows.line_num, cells))
    except csv.Error as error:
        raise ValueError(f"{path}, line {rows.line_num}: not valid CSV ({error})") from None
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise ValueError(f"{path}: the header names {', '.join(map(repr, duplicates))} more than once")
    if not body:
        raise ValueError(f"{path} has a header but no rows of data")

    def column(name: str, option: str) -> int:
        if name not in header:
            raise ValueError(f"{path} has no column {name!r} ({option}); its columns are: {', '.join(header)}")
        return header.index(name)

    if time_column:
        time_index: Optional[int] = column(time_column, "--time_column")
    else:
        time_index = 0 if len(header) > 1 and header[0].lower() in TIME_NAMES else None
    if target:
        target_index = column(target, "--target")
    else:
        numeric = [index for index in range(len(header)) if index != time_index and _is_numeric(body, index)]
        if len(numeric) != 1:
            names = ", ".join(header[index] for index in numeric) or "none"
            raise ValueError(f"{path}: choose the column to forecast with --target (numeric columns: {names})")
        target_index = numeric[0]
    used = [target_index]
    for name in (name.strip() for name in features.split(",")):
        if name and column(name, "--features") not in used:
            used.append(header.index(name))
    if time_index in used and time_column:
        raise ValueError(f"{path}: the time column {header[time_index]!r} cannot also be forecast or an input")
    if time_index in used:
        time_index = None  # a column named like a time axis, but the user forecasts it: the rows are numbered

    columns = [header[index] for index in used]
    values = torch.tensor([_parse_column(path, header[index], index, body) for index in used], dtype=torch.float64).T  # (N, F)
    lines = [line for line, _ in body]
    times = [cells[time_index].strip() for _, cells in body] if time_index is not None else [str(row) for row in range(len(body))]
    values, times, notes = _fill_missing(path, columns, values, times, lines)
    return SeriesData(
        source=str(path), columns=columns, times=times, values=values,
        time_column=header[time_index] if time_index is not None else "", notes=notes,
        fingerprint=fingerprint(text.encode()),
    )


def _is_numeric(body: list[tuple[int, list[str]]], index: int) -> bool:
    seen = False
    for _, cells in body:
        text = cells[index].strip()
        if text.lower() in MISSING:
            continue
        try:
            float(text)
        except ValueError:
            return False
        seen = True
    return seen


def _parse_column(path: Path, name: str, index: int, body: list[tuple[int, list[str]]]) -> list[float]:
    values = []
    for line, cells in body:
        text = cells[index].strip()
        if text.lower() in MISSING:
            values.append(math.nan)
            continue
        try:
            value = float(text)
        except ValueError:
            raise ValueError(
                f"{path}, line {line}, column {name!r}: {text!r} is not a number "
                "(leave a missing value empty or write NA)"
            ) from None
        if not math.isfinite(value):
            raise ValueError(f"{path}, line {line}, column {name!r}: {text!r} is not a finite number")
        values.append(value)
    return values


def _line_list(lines: list[int]) -> str:
    shown = ", ".join(map(str, lines[:8]))
    return shown + (f" and {len(lines) - 8} more" if len(lines) > 8 else "")


def _fill_missing(
    path: Path, columns: list[str], values: Tensor, times: list[str], lines: list[int]
) -> tuple[Tensor, list[str], list[str]]:
    """Drop rows with a missing value at the start and end; interpolate the gaps inside linearly."""
    missing = values.isnan()  # (N, F)
    for column_index, name in enumerate(columns):
        if missing[:, column_index].all():
            raise ValueError(f"{path}: column {name!r} has no values")
    complete = (~missing.any(dim=1)).nonzero().flatten()
    if len(complete) == 0:
        raise ValueError(f"{path}: no row has a value in every used column ({', '.join(columns)})")
    first, last = int(complete[0]), int(complete[-1])
    notes = []
    dropped = lines[:first] + lines[last + 1 :]
    if dropped:
        notes.append(f"dropped {len(dropped)} rows with missing values at the start or end (lines {_line_list(dropped)})")
    values, times, lines = values[first : last + 1].clone(), times[first : last + 1], lines[first : last + 1]
    rows = np.arange(len(values))
    for column_index, name in enumerate(columns):
        gaps = values[:, column_index].isnan().numpy()
        if gaps.any():
            known = values[:, column_index].numpy()
            values[:, column_index] = torch.from_numpy(np.interp(rows, rows[~gaps], known[~gaps]))
            filled = [line for line, gap in zip(lines, gaps) if gap]
            notes.append(f"column {name!r}: {len(filled)} missing values filled by linear interpolation (lines {_line_list(filled)})")
    return values, times, notes


# ----------------------------------------------------------------------------- baselines


def linear_autoregression(inputs: Tensor, targets: Tensor) -> Tensor:
    """Least-squares coefficients (L*F + 1, K) of `targets = window . a + b` for windows (N, L, F), targets (N, K)."""
    design = torch.cat([inputs.flatten(1), torch.ones(len(inputs), 1, dtype=inputs.dtype)], dim=1)  # (N, L*F + 1)
    return torch.linalg.lstsq(design, targets).solution


def apply_autoregression(coefficients: Tensor, inputs: Tensor) -> Tensor:
    """The linear autoregression's forecasts (N, K) for windows (N, L, F)."""
    design = torch.cat([inputs.flatten(1), torch.ones(len(inputs), 1, dtype=inputs.dtype)], dim=1)  # (N, L*F + 1)
    return design @ coefficients


def seasonal_period(values: Tensor, longest: int) -> int:
    """The lag (2..longest) of the highest local peak of the autocorrelation of `values`; 0 if there is none."""
    centred = values - values.mean()
    longest = min(longest, len(values) // 2)
    if longest < 3 or float(centred.abs().max()) == 0:
        return 0
    variance = float(torch.dot(centred, centred))
    correlation = [1.0] + [float(torch.dot(centred[:-lag], centred[lag:])) / variance for lag in range(1, longest + 2)]
    peaks = [lag for lag in range(2, longest + 1) if correlation[lag - 1] < correlation[lag] >= correlation[lag + 1] and correlation[lag] > 0]
    return max(peaks, key=lambda lag: correlation[lag]) if peaks else 0


def _rmse(prediction: Tensor, target: Tensor) -> float:
    return float(((prediction - target) ** 2).mean().sqrt())


# ----------------------------------------------------------------------------- the split


@dataclass(frozen=True)
class Split:
    """Window indices of each part; window j reads rows j..j+L-1 and forecasts rows j+L..j+L+K-1."""

    validation_start: int  # first row of the validation part
    test_start: int  # first row of the test part (= N without a test part)
    train: range
    validation: range
    test: range


def split_by_time(rows: int, config: SeriesConfig) -> Split:
    """Cut `rows` time steps into train | validation | test; a ValueError when a part gets no window."""
    lookback, horizon = config.lookback, config.horizon
    if rows < lookback + horizon:
        raise ValueError(
            f"the series has {rows} time steps, fewer than lookback {lookback} + horizon {horizon}: "
            "use a smaller --lookback or a longer series"
        )
    test_start = rows - round(config.test_fraction * rows)
    validation_start = test_start - round(config.validation_fraction * rows)
    split = Split(
        validation_start=validation_start,
        test_start=test_start,
        train=range(0, max(0, validation_start - lookback - horizon + 1)),
        validation=range(max(0, validation_start - lookback), max(0, test_start - lookback - horizon + 1)),
        test=range(max(0, test_start - lookback), rows - lookback - horizon + 1) if test_start < rows else range(0),
    )
    empty = [name for name in ("train", "validation", "test") if len(getattr(split, name)) == 0]
    if config.test_fraction == 0:
        empty = [name for name in empty if name != "test"]
    if empty:
        needed = math.ceil((lookback + horizon) / (1 - config.validation_fraction - config.test_fraction)) + 2 * horizon
        raise ValueError(
            f"the series has {rows} time steps: too short to give the {' and '.join(empty)} part a window of "
            f"lookback {lookback} + horizon {horizon} (about {needed} are needed); "
            "use a smaller --lookback, or change --validation_fraction / --test_fraction"
        )
    return split


# ----------------------------------------------------------------------------- the forecaster


@dataclass
class Forecast:
    """A forecast from the end of a series, with the history it continues."""

    target: str
    times: list[str]  # the forecast's time labels
    values: list[float]
    history_times: list[str]
    history_values: list[float]


class Forecaster:
    """A trained forecaster: the model with its config, scaling, and the series it learned from.

    Make one with `train_forecaster` or `Forecaster.load(checkpoint)`; use `forecast(steps)`.
    """

    def __init__(
        self,
        config: SeriesConfig,
        data: SeriesData,
        mean: Tensor,
        std: Tensor,
        model: Sequential,
        state: Optional[TrainingState] = None,
        report: Optional[dict[str, Any]] = None,
    ) -> None:
        self.config = config
        self.data = data
        self.mean, self.std = mean, std  # (F,) each: the training part's
        self.model = model.eval()
        self.state = state or TrainingState()
        self.report = report or {}

    @classmethod
    def load(cls, path: Path) -> "Forecaster":
        """The forecaster in a checkpoint (a file or an output folder), with its best weights."""
        payload = load_checkpoint(path, "series")
        config = config_from_checkpoint(SeriesConfig, payload, path)
        stored = payload["data"]
        try:
            data = SeriesData(
                source=stored["source"], columns=list(stored["columns"]), times=list(stored["times"]),
                values=stored["values"].double(), time_column=stored["time_column"], fingerprint=stored["fingerprint"],
            )
            mean, std = torch.tensor(stored["mean"], dtype=torch.float64), torch.tensor(stored["std"], dtype=torch.float64)
            state = TrainingState(**payload["training"])
        except (KeyError, TypeError, AttributeError) as error:
            raise _damaged(path, error) from None
        model = build_model(config, len(data.columns))
        load_weights(model, state.best_weights or payload["model"], path)
        return cls(config, data, mean, std, model, state, payload.get("report"))

    def checkpoint_data(self) -> dict[str, Any]:
        """What the checkpoint stores besides the weights: columns, scaling, the series (plain data and tensors)."""
        return {
            "source": self.data.source, "columns": self.data.columns, "times": self.data.times,
            "values": self.data.values, "time_column": self.data.time_column, "fingerprint": self.data.fingerprint,
            "mean": self.mean.tolist(), "std": self.std.tolist(),
        }

    def scale(self, values: Tensor) -> Tensor:
        """(N, F) in the data's units -> standardised float32."""
        return ((values - self.mean) / self.std).float()

    def predict(self, windows: Tensor) -> Tensor:
        """Forecasts (N, horizon) of the target, in its units, for windows (N, lookback, F) in the data's units."""
        with torch.no_grad():
            scaled = self.model(self.scale(windows))  # (N, K)
        return scaled.double() * self.std[0] + self.mean[0]

    def read_csv(self, path: Path) -> SeriesData:
        """Read another CSV with this model's columns (target, features, time column)."""
        return read_series_csv(path, self.data.columns[0], ",".join(self.data.columns[1:]), self.data.time_column)

    def forecast(self, steps: int, data: Optional[SeriesData] = None) -> Forecast:
        """Forecast `steps` time steps after the end of `data` (default: the training series).

        Up to `horizon` steps come from one call of the model; more run recursively in blocks
        of `horizon`, which needs a univariate model (no --features).
        """
        data = data or self.data
        lookback, horizon = self.config.lookback, self.config.horizon
        if steps < 1:
            raise ValueError(f"--steps must be at least 1, got {steps}")
        if steps > horizon and len(data.columns) > 1:
            raise ValueError(
                f"forecasting {steps} steps needs the future of the input columns {', '.join(data.columns[1:])}, "
                f"which the model does not forecast: ask for at most {horizon} steps (its horizon), "
                "or train with a longer --horizon"
            )
        if len(data.values) < lookback:
            raise ValueError(f"{data.source} has {len(data.values)} time steps; the model reads the last {lookback}")
        window = data.values[-lookback:]  # (L, F)
        values: list[float] = []
        while True:
            block = self.predict(window[None])[0]  # (K,)
            values += block.tolist()
            if len(values) >= steps:
                break
            window = torch.cat([window, block[:, None]])[-lookback:]  # (L, 1): only univariate models get here
        shown = min(len(data.values), max(10 * lookback, 200))
        return Forecast(
            target=data.columns[0],
            times=_future_times(data.times, steps),
            values=values[:steps],
            history_times=data.times[-shown:],
            history_values=data.values[-shown:, 0].tolist(),
        )

    def gate_window(self, data: SeriesData, first: Optional[int], last: Optional[int]) -> tuple[Tensor, list[str]]:
        """Rows `first:last` of `data` (default: the last `lookback`) standardised (1, T, F), and their time labels."""
        if first is None and last is None:
            first = max(0, len(data.values) - self.config.lookback)
        rows = range(len(data.values))[first:last]
        if len(rows) == 0:
            raise ValueError(f"the range {first}:{last} holds none of the {len(data.values)} rows of {data.source}")
        return self.scale(data.values[rows.start : rows.stop : rows.step])[None], [data.times[row] for row in rows]


def build_model(config: SeriesConfig, features: int) -> Sequential:
    """`Sequential(LSTM(units), Dense(horizon))` for `features` input columns."""
    return Sequential(LSTM(config.units, input_size=features), Dense(config.horizon, input_size=config.units))


def _damaged(path: Path, error: Exception) -> CheckpointError:
    return CheckpointError(f"{checkpoint_file(path)} is damaged: its data entry does not fit ({type(error).__name__}: {error})")


def _future_times(times: list[str], steps: int) -> list[str]:
    """Time labels for `steps` steps after `times`: numbers or dates continue with their last step; else +1, +2, ..."""
    if len(times) >= 2:
        try:
            last, step = float(times[-1]), float(times[-1]) - float(times[-2])
            integral = all(float(label).is_integer() for label in times[-2:])
            return [str(int(last + k * step)) if integral else f"{last + k * step:g}" for k in range(1, steps + 1)]
        except ValueError:
            pass
        try:
            last_date, previous = np.datetime64(times[-1]), np.datetime64(times[-2])
            return [str(last_date + k * (last_date - previous)) for k in range(1, steps + 1)]
        except ValueError:
            pass
    return [f"+{k}" for k in range(1, steps + 1)]


# ----------------------------------------------------------------------------- training


def train_forecaster(
    config: Optional[SeriesConfig] = None,
    source: Optional[Path] = None,
    out: Optional[Path] = None,
    progress: bool = True,
    fresh: bool = False,
    echo: Callable[[str], None] = print,
) -> Forecaster:
    """Train a forecaster on the CSV `source` (default: the bundled yearly sunspot numbers).

    With `out`, a checkpoint is written to `out/checkpoint.pt` after every epoch, and a run
    finds it there and resumes (unless `fresh`). `echo` receives the notes (missing values,
    resuming). The forecaster's `report` holds the test RMSEs of the model and the baselines.
    """
    config = config or SeriesConfig(target="sunspots")
    data = read_series_csv(source or bundled_path(DEFAULT_CSV), config.target, config.features, config.time_column)
    for note in data.notes:
        echo(f"Note: {note}.")
    split = split_by_time(len(data.values), config)
    train_rows = data.values[: split.validation_start]  # (N_train, F)
    mean, std = train_rows.mean(dim=0), train_rows.std(dim=0)
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant column stays as it is, centred

    torch.manual_seed(config.seed)
    model = build_model(config, len(data.columns))
    forecaster = Forecaster(config, data, mean, std, model)
    inputs, targets = windows_ahead(forecaster.scale(data.values), 0, config.lookback, config.horizon)  # (N, L, F), (N, K)
    train_x, train_y = inputs[split.train.start : split.train.stop], targets[split.train.start : split.train.stop]
    validation = slice(split.validation.start, split.validation.stop)

    def epoch_batches(generator: torch.Generator) -> list[tuple[Tensor, Tensor]]:
        order = torch.randperm(len(train_x), generator=generator).split(config.batch_size)
        return [(train_x[batch], train_y[batch]) for batch in order]

    loop = EpochLoop(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=config.learning_rate),
        epoch_batches=epoch_batches,
        batch_loss=lambda trained, x, y: F.mse_loss(trained(x), y),
        validation_loss=lambda: float(F.mse_loss(model(inputs[validation]), targets[validation])),
        clip=Clip(max_norm=config.clip_norm),
        skip_nonfinite=config.skip_nonfinite,
        seed=config.seed,
        unit="seq",
    )
    name = Path(data.source).name
    state, report = fit(
        loop, "series", config, forecaster.checkpoint_data(), out, fresh, progress,
        f"training on {name}", echo, lambda state: evaluate(forecaster, split, state),
    )
    forecaster.state, forecaster.report = state, report
    return forecaster


def evaluate(forecaster: Forecaster, split: Split, state: TrainingState) -> dict[str, Any]:
    """RMSE on the test part (the validation part if there is none) of the model and the three baselines."""
    config, data = forecaster.config, forecaster.data
    inputs, targets = windows_ahead(data.values, 0, config.lookback, config.horizon)  # (N, L, F), (N, K)
    part = split.test if len(split.test) else split.validation
    windows = range(part.start, part.stop)
    test_x, test_y = inputs[part.start : part.stop], targets[part.start : part.stop]
    target_series = data.values[:, 0]
    season = config.season or seasonal_period(target_series[: split.validation_start], longest=len(target_series))
    steps_ahead = torch.arange(1, config.horizon + 1)
    rmse = {"LSTM": _rmse(forecaster.predict(test_x), test_y)}
    rmse["persistence (last value)"] = _rmse(test_x[:, -1:, 0].expand_as(test_y), test_y)
    if season:
        back = season * torch.ceil(steps_ahead / season).long()  # (K,): the same phase, one or more seasons back
        rows = torch.tensor(windows)[:, None] + config.lookback + steps_ahead - 1 - back  # (N, K)
        if int(rows.min()) >= 0:
            how = "" if config.season else ", from the autocorrelation"
            rmse[f"seasonal naive (season {season}{how})"] = _rmse(target_series[rows], test_y)
    coefficients = linear_autoregression(inputs[split.train.start : split.train.stop], targets[split.train.start : split.train.stop])
    rmse[f"linear autoregression on {config.lookback} steps"] = _rmse(apply_autoregression(coefficients, test_x), test_y)
    first_targets = [part.start + config.lookback + k for k in range(len(part))]
    return {
        "part": "test" if len(split.test) else "validation",
        "rmse": rmse,
        "times": {
            "train": _span(data.times, 0, split.validation_start),
            "validation": _span(data.times, split.validation_start, split.test_start),
            "test": _span(data.times, split.test_start, len(data.times)),
        },
        "boundaries": [data.times[row] for row in (split.validation_start, split.test_start) if row < len(data.times)],
        "evaluated_times": [data.times[row] for row in first_targets],
        "actual": test_y[:, 0].tolist(),
        "lstm": forecaster.predict(test_x)[:, 0].tolist(),  # one step ahead
        "autoregression": apply_autoregression(coefficients, test_x)[:, 0].tolist(),
        "epochs": state.epoch,
        "best_epoch": state.best_epoch,
        "stopped_early": state.stopped_early,
        "seconds": round(state.seconds, 1),
    }


def _span(times: list[str], start: int, stop: int) -> str:
    return f"{times[start]} to {times[stop - 1]} ({stop - start} steps)" if stop > start else "none"


# ----------------------------------------------------------------------------- reporting


def format_report(forecaster: Forecaster) -> str:
    """The training summary and the RMSE table, with an honest sentence on how the LSTM compares."""
    config, data, report = forecaster.config, forecaster.data, forecaster.report
    target = data.columns[0]
    inputs = target + (f" and {', '.join(data.columns[1:])}" if len(data.columns) > 1 else "")
    times = report["times"]
    stop = f"stopped early, best epoch {report['best_epoch']}" if report["stopped_early"] else f"best epoch {report['best_epoch']}"
    lines = [
        f"Forecasting {target!r} of {Path(data.source).name} ({len(data.values)} time steps) from the last "
        f"{config.lookback} steps of {inputs}, {config.horizon} step(s) ahead.",
        f"Train {times['train']}, validation {times['validation']} (early stopping), test {times['test']}.",
        f"Trained {report['epochs']} epoch{'s' if report['epochs'] != 1 else ''} ({stop}) in {report['seconds']:.0f} s.",
        "",
        f"RMSE on the {report['part']} part ({target}, over {config.horizon} step(s) ahead):",
    ]
    width = max(len(name) for name in report["rmse"])
    lines += [f"  {name:<{width}}  {value:10.4g}" for name, value in report["rmse"].items()]
    lstm, persistence = report["rmse"]["LSTM"], report["rmse"]["persistence (last value)"]
    autoregression = report["rmse"][f"linear autoregression on {config.lookback} steps"]
    lines += ["", f"The LSTM's error is {_relative(lstm, persistence)} persistence's and {_relative(lstm, autoregression)} the linear autoregression's."]
    if lstm >= persistence:
        lines.append("It does not beat persistence here: try more epochs, a longer --lookback or more data.")
    return "\n".join(lines)


def _relative(value: float, reference: float) -> str:
    if reference == 0:
        return "compared with 0 for"
    change = (value - reference) / reference
    if abs(change) < 0.005:
        return "the same as"
    return f"{abs(change):.0%} {'below' if change < 0 else 'above'}"


def plot_test(forecaster: Forecaster, path: Path) -> Path:
    """Above, the whole series with its validation and test parts shaded; below, the evaluated part
    close up: the actual values and the one-step forecasts of the LSTM and the linear autoregression."""
    report, data, config = forecaster.report, forecaster.data, forecaster.config
    plt = pyplot()
    figure, (whole, close) = plt.subplots(2, 1, figsize=(10, 7.5), gridspec_kw={"height_ratios": [1, 1.4]})
    axis_of = _time_axis(data.times)
    times = axis_of(data.times)
    whole.plot(times, data.values[:, 0].tolist(), color="0.3", linewidth=1, label="actual")
    starts = axis_of(report["boundaries"])  # where the validation part (and the test part) start
    shades = [("validation part (early stopping)", "tab:orange"), ("test part (never trained on)", "tab:green")]
    for (label, colour), start, stop in zip(shades, starts, starts[1:] + [times[-1]]):
        whole.axvspan(start, stop, color=colour, alpha=0.15, label=label)
    whole.set_title(f"{data.columns[0]} ({Path(data.source).name}): trained on the unshaded part")
    whole.legend(loc="upper left", fontsize=8)

    shown = axis_of(report["evaluated_times"])
    rmse = report["rmse"]
    close.plot(shown, report["actual"], color="0.3", linewidth=1.5, marker=".", label="actual")
    close.plot(shown, report["lstm"], color="tab:red", linewidth=1.5, label=f"LSTM (RMSE {rmse['LSTM']:.3g})")
    autoregression = f"linear autoregression on {config.lookback} steps"
    close.plot(
        shown, report["autoregression"], color="tab:blue", linestyle="--", linewidth=1,
        label=f"{autoregression} (RMSE {rmse[autoregression]:.3g})",
    )
    close.plot([], [], " ", label=f"persistence: RMSE {rmse['persistence (last value)']:.3g}")  # a legend line only
    ahead = "" if config.horizon == 1 else f" (RMSE over all {config.horizon} steps ahead)"
    close.set_title(f"The {report['part']} part close up: forecasts one step ahead{ahead}")
    close.set_xlabel(data.time_column or "time step")
    close.legend(loc="upper left", fontsize=8)
    return save_figure(figure, Path(path))


def plot_forecast(forecast: Forecast, path: Path, time_label: str = "time step") -> Path:
    """The history and the forecast after it, in one PNG."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(10, 4.5))
    axis_of = _time_axis(forecast.history_times + forecast.times)
    axes.plot(axis_of(forecast.history_times), forecast.history_values, color="0.4", linewidth=1, label="history")
    axes.plot(
        axis_of([forecast.history_times[-1]] + forecast.times), [forecast.history_values[-1]] + forecast.values,
        color="tab:red", linewidth=1.5, marker="." if len(forecast.times) <= 60 else None, label="LSTM forecast",
    )
    axes.set_title(f"{forecast.target}: forecast of {len(forecast.times)} steps")
    axes.set_xlabel(time_label)
    axes.legend(loc="upper left")
    return save_figure(figure, Path(path))


def _time_axis(all_times: list[str]) -> Callable[[list[str]], list[Any]]:
    """Map time labels to plot positions: numbers, dates, or else their order in `all_times`."""
    try:
        [float(label) for label in all_times]
        return lambda labels: [float(label) for label in labels]
    except ValueError:
        pass
    try:
        [np.datetime64(label) for label in all_times]
        return lambda labels: [np.datetime64(label) for label in labels]
    except ValueError:
        pass
    position = {label: index for index, label in enumerate(all_times)}
    return lambda labels: [position.get(label, index) for index, label in enumerate(labels)]
