"""Activation functions by name, as Keras users write them (`activation="relu"`).

Every option that takes an activation accepts either one of these names or any
callable `Tensor -> Tensor`.
"""

from __future__ import annotations

from typing import Callable, Union

import torch
import torch.nn.functional as F
from torch import Tensor

Activation = Callable[[Tensor], Tensor]
ActivationSpec = Union[str, Activation]


def linear(x: Tensor) -> Tensor:
    """The identity: `linear(x) = x`."""
    return x


ACTIVATIONS: dict[str, Activation] = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "hard_sigmoid": F.hardsigmoid,  # relu6(x + 3) / 6, as in Keras 3
    "linear": linear,
}


def get_activation(spec: ActivationSpec) -> Activation:
    """Return the activation named by `spec`, or `spec` itself if it is callable."""
    if callable(spec):
        return spec
    if isinstance(spec, str) and spec in ACTIVATIONS:
        return ACTIVATIONS[spec]
    raise ValueError(f"unknown activation {spec!r}: use one of {sorted(ACTIVATIONS)} or a callable")
