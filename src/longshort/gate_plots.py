"""Pictures of a trained LSTM: learning curves, and heat maps of its gates over a sequence.

`draw_gates` replays the model's LSTM cell over a sequence (`trace_gates`, shared with the
gates experiment) and `plot_gates` draws what `longshort gates` shows: one heat map per
quantity of the LSTM step (units down, time across), in the order a reader follows the equations:

    f  forget gate      sigmoid, 0..1: how much of c_{t-1} is kept
    i  input gate       sigmoid, 0..1: how much of the candidate is written
    o  output gate      sigmoid, 0..1: how much of tanh(c_t) is shown as h_t
    g  candidate        tanh, -1..1: what would be written
    c  cell state       unbounded: the long-term memory
    h  hidden state     -1..1: the output
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Optional, Sequence, Union

from torch import Tensor

from longshort.charmodel import CharModel
from longshort.experiments.base import pyplot, save_figure
from longshort.experiments.gates import trace_gates
from longshort.forecasting import Forecaster, SeriesData

GATE_ORDER = ("f", "i", "o", "g", "c", "h")
GATE_TITLES = {
    "f": "f: forget gate",
    "i": "i: input gate",
    "o": "o: output gate",
    "g": "g: candidate",
    "c": "c: cell state",
    "h": "h: hidden state (output)",
}
VISIBLE = {" ": "\u2423", "\n": "\u21b5", "\t": "\u21e5"}  # how blanks are drawn under the time axis


def plot_learning_curves(
    train_losses: Sequence[float], validation_losses: Sequence[float], best_epoch: int, ylabel: str, title: str, path: Path
) -> Path:
    """Training and validation loss per epoch, the best epoch marked; a PNG at `path`."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    plt = pyplot()
    figure, axes = plt.subplots(figsize=(8, 4.5))
    epochs = range(1, len(train_losses) + 1)
    marker = "o" if len(epochs) <= 20 else None
    axes.plot(epochs, list(train_losses), marker=marker, label="training")
    axes.plot(epochs, list(validation_losses), marker=marker, label="validation")
    if best_epoch:
        axes.axvline(best_epoch, color="k", linestyle=":", linewidth=1, label=f"best epoch ({best_epoch}): weights kept")
    if min(min(train_losses), min(validation_losses)) > 0:
        axes.set_yscale("log")
        axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: _log_tick(value, (1,))))
        axes.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: _log_tick(value, (2, 3, 5))))
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel(ylabel)
    axes.set_title(textwrap.fill(title, 80), fontsize=11)
    axes.legend()
    return save_figure(figure, Path(path))


def _log_tick(value: float, leading: tuple[int, ...]) -> str:
    """A log axis' tick label as a plain number (0.2, 3, 50), or "" unless its leading digit is in `leading`."""
    digit = round(value / 10 ** math.floor(math.log10(value)), 6)
    return f"{value:g}" if digit in leading else ""


def plot_gates(
    gates: dict[str, Tensor],
    path: Path,
    title: str,
    tick_labels: Optional[Sequence[str]] = None,
    xlabel: str = "time step",
    max_units: int = 64,
    series: Optional[tuple[str, Sequence[float]]] = None,
) -> Path:
    """Heat maps of f, i, o, g, c, h (each (T, H)) as units x time, in one PNG at `path`.

    `tick_labels` (T of them) are written under the time axis: the characters of a text
    (blanks drawn visibly) or the time labels of a series. Only the first `max_units` units are
    shown. `series` (name, T values) is drawn above the maps: the input the LSTM reads.
    """
    plt = pyplot()
    steps, units = gates["h"].shape
    shown = min(units, max_units)
    width = min(24.0, max(8.0, 0.14 * steps + 2))
    height_per_map = min(3.2, max(1.2, 0.05 * shown + 0.6))
    heights = ([0.6] if series is not None else []) + [1.0] * len(GATE_ORDER)
    figure, axes = plt.subplots(
        len(heights), 1, figsize=(width, height_per_map * sum(heights) + 0.8), sharex=True, gridspec_kw={"height_ratios": heights}
    )
    if series is not None:
        name, values = series
        axes[0].plot(range(len(values)), list(values), color="k", marker=".", linewidth=1)
        axes[0].set_title(f"input: {name}", fontsize=10, loc="left")
        figure.colorbar(plt.cm.ScalarMappable(), ax=axes[0], pad=0.01, fraction=0.03).remove()  # keep the maps' width
        axes = axes[1:]
    for axis, name in zip(axes, GATE_ORDER):
        values = gates[name][:, :shown].detach().double().T.numpy()  # (units, T)
        if name in ("f", "i", "o"):
            limits, colours = (0.0, 1.0), "viridis"
        else:
            bound = 1.0 if name in ("g", "h") else max(1e-6, float(abs(values).max()))
            limits, colours = (-bound, bound), "RdBu_r"
        image = axis.imshow(values, aspect="auto", interpolation="nearest", cmap=colours, vmin=limits[0], vmax=limits[1])
        axis.set_ylabel("unit")
        axis.set_title(GATE_TITLES[name], fontsize=10, loc="left")
        figure.colorbar(image, ax=axis, pad=0.01, fraction=0.03)
    bottom = axes[-1]
    if tick_labels is not None:
        labels = [VISIBLE.get(label, label) for label in tick_labels]
        every = max(1, len(labels) // 60)  # at most about 60 labels
        bottom.set_xticks(range(0, len(labels), every))
        rotation = 90 if max(len(label) for label in labels) > 1 else 0
        bottom.set_xticklabels(labels[::every], fontsize=8, fontfamily="monospace", rotation=rotation)
        if series is None:  # no input curve on top: the labels above the first map too, to read a tall figure from either end
            axes[0].tick_params(axis="x", labeltop=True)
            for label in axes[0].get_xticklabels():
                label.set(fontsize=8, fontfamily="monospace", rotation=rotation)
    bottom.set_xlabel(xlabel)
    suffix = f" (first {shown} of {units} units)" if shown < units else ""
    figure.suptitle(title + suffix)
    return save_figure(figure, Path(path))


def draw_gates(
    model: Union[Forecaster, CharModel],
    sequence: Union[SeriesData, str],
    path: Path,
    first: Optional[int] = None,
    last: Optional[int] = None,
    max_units: int = 64,
) -> Path:
    """The gate heat maps of `model` reading `sequence` (rows first:last of a series, default the
    last lookback rows; or characters first:last of a text, default the first 80), as a PNG."""
    if isinstance(model, Forecaster):
        if not isinstance(sequence, SeriesData):
            raise TypeError("a forecaster reads a series: pass the SeriesData of Forecaster.read_csv(path)")
        x, labels = model.gate_window(sequence, first, last)  # (1, T, F)
        cell, xlabel = model.model[0].cell, sequence.time_column or "time step"
        target = (sequence.columns[0], (x[0, :, 0].double() * model.std[0] + model.mean[0]).tolist())
        title = f"LSTM gates of the forecaster of {sequence.columns[0]!r}, reading {Path(sequence.source).name}"
    else:
        if not isinstance(sequence, str):
            raise TypeError("a character model reads text: pass a string")
        text = sequence[first : last if first is not None or last is not None else 80]
        if not text:
            raise ValueError(f"the range {first}:{last} holds none of the {len(sequence)} characters")
        x, labels = model.embed(text), list(text)  # (1, T, E)
        cell, xlabel, target = model.network.lstm.cell, "time: the characters read", None
        title = "LSTM gates of the character model"
    return plot_gates(trace_gates(cell, x[0]), path, title, labels, xlabel, max_units, target)
