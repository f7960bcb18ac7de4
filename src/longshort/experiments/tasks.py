"""Synthetic long-lag tasks: inputs (B, T, F) and targets, generated from a torch.Generator.

- `adding_problem`: the form of Le et al. (2015) and Arjovsky et al. (2016). Two channels:
  a value uniform in [0, 1] and a marker that is 1 at two positions (one in each half of
  the sequence). The target is the sum of the two marked values. Always answering 1 (the
  mean) gives MSE 1/6 ~ 0.167, the baseline.
- `copy_task`: the copy-memory task of Arjovsky et al. (2016). `length` symbols from an
  alphabet of `symbols` are shown, then `lag` blanks, then a delimiter; the model must
  output the symbols again over the last `length` steps (and blanks before). Guessing
  blanks then random symbols gives cross-entropy `length * log(symbols) / (lag + 2 * length)`.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor

from longshort.dispatch import fixed_order

ADDING_BASELINE_MSE = 1 / 6  # variance of the sum of two independent U(0, 1): answering its mean, 1


def adding_problem(batch_size: int, length: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Inputs (B, T, 2) = (value, marker) and targets (B, 1) = sum of the two marked values."""
    if length < 2:
        raise ValueError(f"the adding problem needs length >= 2, got {length}")
    values = torch.rand(batch_size, length, generator=generator)  # (B, T)
    half = length // 2
    first = torch.randint(0, half, (batch_size,), generator=generator)
    second = torch.randint(half, length, (batch_size,), generator=generator)
    markers = torch.zeros(batch_size, length)
    rows = torch.arange(batch_size)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    targets = (values * markers).sum(dim=1, keepdim=True)  # (B, 1)
    return torch.stack([values, markers], dim=-1), targets  # (B, T, 2), (B, 1)


def copy_task(batch_size: int, lag: int, generator: torch.Generator, length: int = 10, symbols: int = 8) -> tuple[Tensor, Tensor]:
    """One-hot inputs (B, lag + 2 * length, symbols + 2) and class targets (B, lag + 2 * length).

    Classes: 0 = blank, 1..symbols = the symbols, symbols + 1 = the delimiter (input only).
    """
    total = lag + 2 * length
    sequence = torch.randint(1, symbols + 1, (batch_size, length), generator=generator)  # (B, length)
    inputs = torch.zeros(batch_size, total, dtype=torch.long)
    inputs[:, :length] = sequence
    inputs[:, length + lag - 1] = symbols + 1  # the delimiter: "now repeat"
    targets = torch.zeros(batch_size, total, dtype=torch.long)
    targets[:, -length:] = sequence
    return torch.nn.functional.one_hot(inputs, symbols + 2).float(), targets


def copy_baseline_cross_entropy(lag: int, length: int = 10, symbols: int = 8) -> float:
    """Per-step cross-entropy of the memoryless strategy: blanks, then uniform guesses over the symbols."""
    return length * math.log(symbols) / (lag + 2 * length)


@contextmanager
def long_lag_cpu(threads: int = 1) -> Iterator[None]:
    """Run torch on `threads` CPU threads with float32 denormals flushed to zero, and "auto"'s kernels
    fixed by their order (`dispatch.fixed_order`: a run then repeats bit for bit, resumed or not);
    restore all three after.

    Gradients that vanish over a long lag (a forget gate near 0.5 halves them at every step)
    pass through denormal floats below 1.2e-38, which x86 CPUs compute many times slower:
    an LSTM with forget bias 0 at T=200 trains 7x slower than one with bias 1. Flushing them
    to zero changes no result that matters (they are below 1e-38). One thread keeps OpenMP
    threads from stalling each other on a busy 2-core machine.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    try:
        with fixed_order():
            yield
    finally:
        torch.set_flush_denormal(False)  # torch's default; it offers no way to read the current setting
        torch.set_num_threads(previous)
