"""Input weights created on the first call, as Keras' `build`: `input_size=None` means "infer it".

A module using `LazyInput` keeps its input weight (rows, F) in the attribute named by
`lazy_weight`. Until it is built that attribute holds an `UnbuiltParameter`, which
refuses to be handed to an optimizer with an error that says what to do.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn
from torch.nn.parameter import UninitializedParameter, UninitializedTensorMixin


class UnbuiltParameter(UninitializedParameter):
    """An input weight whose input size is not known yet; it becomes a `Parameter` when built."""

    cls_to_become = nn.Parameter
    owner = "this layer"

    def __deepcopy__(self, memo):
        copied = super().__deepcopy__(memo)
        copied.owner = self.owner
        return copied

    @property
    def is_leaf(self) -> bool:  # the first thing torch.optim asks of a parameter
        raise RuntimeError(
            f"{self.owner} has no input weights yet: its input size is inferred on the first call. "
            "Build it before creating the optimizer: pass input_size=..., call .build(input_size), "
            "or run one batch through the model."
        )


def check_size(name: str, value: Optional[int], optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int{' or None' if optional else ''}, got {value!r}")


class LazyInput(nn.Module):
    """Shared by the cells and `Dense`: build on first call, or eagerly with `build(input_size)`."""

    lazy_weight: str  # the attribute holding the (rows, input_size) weight
    input_size: Optional[int]
    kernel_initializer: Callable[[Tensor], Tensor]

    def _input_weight(self, rows: int, input_size: Optional[int]) -> nn.Parameter:
        check_size("input_size", input_size, optional=True)
        if input_size is not None:
            return nn.Parameter(torch.empty(rows, input_size))
        weight = UnbuiltParameter()
        weight.owner = f"{type(self).__name__}(units={self.units})"
        return weight

    @property
    def built(self) -> bool:
        # from _parameters, not getattr (Module.__getattr__ is a Python call), and isinstance of the mixin, a plain
        # class (Parameter's metaclass checks in Python): `built` runs at every call of a layer
        return not isinstance(self._parameters[self.lazy_weight], UninitializedTensorMixin)

    def build(self, input_size: int) -> None:
        """Create the input weight for `input_size` features (a no-op if already built so)."""
        if input_size == self.input_size:  # built for it: `input_size` is set only with the weight
            return
        if self.built:
            raise ValueError(f"{type(self).__name__} was built for {self.input_size} input features, got {input_size}")
        check_size("input_size", input_size)
        weight = getattr(self, self.lazy_weight)
        weight.materialize((weight_rows(self), input_size))
        self.input_size = input_size
        with torch.no_grad():
            self.kernel_initializer(weight)

    def check_input(self, x: Tensor) -> None:
        """Build on the first call; afterwards the last axis of x must be `input_size`."""
        if not self.built:
            self.build(x.shape[-1])
        elif x.shape[-1] != self.input_size:
            raise ValueError(f"{type(self).__name__} was built for {self.input_size} input features, got {x.shape[-1]} (input shape {tuple(x.shape)})")

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if not self.built:
            raise RuntimeError(f"{type(self).__name__} is not built yet, so it has no state_dict: call .build(input_size) first")
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        weight = state_dict.get(prefix + self.lazy_weight)
        if not self.built and weight is not None:
            self.build(weight.shape[1])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def weight_rows(module: LazyInput) -> int:
    """Rows of the lazy weight: `gates * units` for a cell, `units` for Dense."""
    return getattr(module, "gates", 1) * module.units
