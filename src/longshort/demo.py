"""The demo: an LSTM learns the ~11-year sunspot cycle from 250 years of yearly data.

It trains `Sequential(LSTM(units), Dense(1))` to forecast next year's sunspot number from
the previous `lookback` years (1700 up to the split year), then, on the years after the
split it never saw, compares its one-step forecasts with two baselines: persistence
(next year = this year) and a linear autoregression on the same window fitted by least
squares. Finally it lets the model run free (feeding its own forecasts back in) and
measures the period of the cycle it generates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from longshort.datasets import sunspots_yearly, windows
from longshort.layers import LSTM
from longshort.training import Clip, History, train_step
from longshort.wrappers import Dense, Sequential


@dataclass
class DemoConfig:
    """Everything the demo's result depends on."""

    lookback: int = 24  # years of history the model sees
    split_year: int = 1948  # train on targets up to this year, test on the years after
    units: int = 32  # LSTM size
    epochs: int = 200  # full passes over the training windows
    batch_size: int = 32
    learning_rate: float = 3e-3
    clip_norm: float = 1.0  # global gradient-norm clipping
    free_run_years: int = 120  # how long the model runs on its own output
    seed: int = 0


@dataclass
class DemoReport:
    config: DemoConfig
    rmse: dict[str, float]  # test RMSE in sunspot numbers: lstm, persistence, linear AR
    test_years: list[int]
    actual: list[float]
    forecast: list[float]
    free_run: list[float]  # the model fed its own forecasts, from the first test year on
    free_run_period: float  # period of the free-running cycle in years (nan if there is none)
    epoch_losses: list[float]  # mean training loss (scaled units) per epoch
    history: History = field(repr=False)


def _rmse(prediction: Tensor, target: Tensor) -> float:
    return float(((prediction - target) ** 2).mean().sqrt())


def linear_autoregression(inputs: Tensor, targets: Tensor) -> Tensor:
    """Least-squares coefficients (lookback + 1,) of `target = a . window + b`."""
    design = torch.cat([inputs.squeeze(-1), torch.ones(len(inputs), 1, dtype=inputs.dtype)], dim=1)  # (N, L+1)
    return torch.linalg.lstsq(design, targets).solution


def cycle_period(values: Tensor, shortest: int = 5, longest: int = 20) -> float:
    """Period in steps of the strongest autocorrelation peak between `shortest` and `longest` lags."""
    centred = values - values.mean()
    if float(centred.abs().max()) < 1e-6:
        return float("nan")
    lags = range(shortest, longest + 1)
    correlation = torch.stack([torch.dot(centred[:-lag], centred[lag:]) / (len(values) - lag) for lag in lags])
    return float(list(lags)[int(correlation.argmax())])


def run_demo(config: Optional[DemoConfig] = None, progress: bool = True) -> DemoReport:
    config = config or DemoConfig()
    torch.manual_seed(config.seed)
    years, series = sunspots_yearly()
    inputs, targets = windows(series, config.lookback)  # (N, L, 1), (N, 1)
    target_years = years[config.lookback :]
    n_train = sum(year <= config.split_year for year in target_years)
    mean, std = series[: n_train + config.lookback].mean(), series[: n_train + config.lookback].std()
    scaled_inputs, scaled_targets = ((inputs - mean) / std).float(), ((targets - mean) / std).float()

    model = Sequential(LSTM(config.units, input_size=1), Dense(1, input_size=config.units))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    history = History()
    train_x, train_y = scaled_inputs[:n_train], scaled_targets[:n_train]
    bar = tqdm(range(config.epochs), desc="training LSTM on sunspots", unit="epoch", disable=not progress)
    epoch_losses = []
    for _ in bar:
        batches = torch.randperm(n_train).split(config.batch_size)
        for batch in batches:
            def loss_fn() -> Tensor:
                return torch.nn.functional.mse_loss(model(train_x[batch]), train_y[batch])

            train_step(model, loss_fn, optimizer, Clip(max_norm=config.clip_norm), history)
        epoch_losses.append(sum(history.losses[-len(batches):]) / len(batches))
        bar.set_postfix(loss=f"{epoch_losses[-1]:.4f}")

    model.eval()
    with torch.no_grad():
        lstm = model(scaled_inputs[n_train:]).double() * std + mean  # (N_test, 1)
        seed_window = scaled_inputs[n_train : n_train + 1]  # (1, L, 1): the years before the first test year
        generated = []
        for _ in range(config.free_run_years):
            next_value = model(seed_window)  # (1, 1)
            generated.append(float(next_value) * float(std) + float(mean))
            seed_window = torch.cat([seed_window[:, 1:], next_value[:, None]], dim=1)
    coefficients = linear_autoregression(inputs[:n_train], targets[:n_train])
    test_inputs, test_targets = inputs[n_train:], targets[n_train:]
    autoregression = torch.cat([test_inputs.squeeze(-1), torch.ones(len(test_inputs), 1, dtype=torch.float64)], 1) @ coefficients
    rmse = {
        "LSTM": _rmse(lstm, test_targets),
        "persistence (next = this year)": _rmse(test_inputs[:, -1], test_targets),
        f"linear autoregression on {config.lookback} years": _rmse(autoregression, test_targets),
    }
    return DemoReport(
        config=config,
        rmse=rmse,
        test_years=target_years[n_train:],
        actual=test_targets.squeeze(-1).tolist(),
        forecast=lstm.squeeze(-1).tolist(),
        free_run=generated,
        free_run_period=cycle_period(torch.tensor(generated)),
        epoch_losses=epoch_losses,
        history=history,
    )


def plot_report(report: DemoReport, path: Path) -> Path:
    """Draw the test years (actual and forecast) and the training loss into a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    years, series = sunspots_yearly()
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), gridspec_kw={"height_ratios": [2, 1]})
    top.plot(years, series.tolist(), color="0.6", linewidth=1, label="actual")
    top.plot(report.test_years, report.forecast, color="tab:red", linewidth=1.5, label="LSTM one-year-ahead forecast")
    free_years = range(report.test_years[0], report.test_years[0] + len(report.free_run))
    top.plot(free_years, report.free_run, color="tab:blue", linestyle="--", linewidth=1, label="LSTM running on its own forecasts")
    top.axvline(report.config.split_year + 0.5, color="k", linestyle=":", linewidth=1)
    top.set_title(f"Yearly sunspot number: trained up to {report.config.split_year}, tested after")
    top.set_xlabel("year")
    top.legend(loc="upper left")
    bottom.semilogy(range(1, len(report.epoch_losses) + 1), report.epoch_losses)
    bottom.set_xlabel("epoch")
    bottom.set_ylabel("training MSE (standardised)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def format_report(report: DemoReport) -> str:
    config = report.config
    lines = [
        f"Yearly sunspot numbers, 1700-2008. Trained on the years up to {config.split_year}, "
        f"tested on {report.test_years[0]}-{report.test_years[-1]} ({len(report.test_years)} years it never saw).",
        "",
        "One-year-ahead forecast error on the test years (RMSE, sunspot number):",
    ]
    width = max(len(name) for name in report.rmse)
    lines += [f"  {name:<{width}}  {value:6.1f}" for name, value in report.rmse.items()]
    lines += ["", "Last test years:    year   actual   LSTM forecast"]
    for year, actual, forecast in list(zip(report.test_years, report.actual, report.forecast))[-8:]:
        lines.append(f"                    {year}   {actual:6.1f}   {forecast:6.1f}")
    period = report.free_run_period
    lines.append("")
    if period == period:  # not nan
        lines.append(
            f"What it learned: left to run on its own forecasts for {config.free_run_years} years, the LSTM "
            f"generates a cycle with a period of {period:.0f} years (the solar cycle averages about 11)."
        )
    else:
        lines.append("Left to run on its own forecasts, the LSTM settles to a constant: it did not learn a cycle.")
    return "\n".join(lines)
