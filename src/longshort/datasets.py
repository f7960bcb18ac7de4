"""Data that ships inside the package (nothing is downloaded at run time), and windowing.

`sunspots_yearly()`: the yearly mean sunspot numbers 1700-2008 as distributed with
statsmodels (`statsmodels.datasets.sunspots`, which states "This data is public domain"),
from NOAA's National Geophysical Data Center.
"""

from __future__ import annotations

import csv
from importlib import resources

import torch
from torch import Tensor


def sunspots_yearly() -> tuple[list[int], Tensor]:
    """Years (309 of them, 1700-2008) and the yearly sunspot number for each, float64 (309,)."""
    with resources.files("longshort").joinpath("data/sunspots_yearly.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    years = [int(row["year"]) for row in rows]
    values = torch.tensor([float(row["sunspots"]) for row in rows], dtype=torch.float64)
    return years, values


def windows(series: Tensor, lookback: int) -> tuple[Tensor, Tensor]:
    """Every window of `lookback` values and the value that follows it.

    series (N,) -> inputs (N - lookback, lookback, 1), targets (N - lookback, 1)
    """
    if series.dim() != 1:
        raise ValueError(f"windows expects a 1-D series, got shape {tuple(series.shape)}")
    if not 1 <= lookback < len(series):
        raise ValueError(f"lookback must lie in [1, {len(series) - 1}] for a series of {len(series)} values, got {lookback}")
    inputs = series.unfold(0, lookback, 1)[:-1]  # (N - lookback, lookback)
    targets = series[lookback:]  # (N - lookback,)
    return inputs.unsqueeze(-1), targets.unsqueeze(-1)
