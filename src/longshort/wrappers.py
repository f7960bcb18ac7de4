"""Layers around layers: `Dense`, `TimeDistributed`, `Bidirectional`, and a mask-passing `Sequential`.

Modules with `accepts_mask = True` take `mask=` (B, T); `Sequential` hands the mask
(or `lengths`, turned into a mask) to each of them.
"""

from __future__ import annotations

import copy
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longshort._lazy import LazyInput, check_size
from longshort._validate import check_sequence, resolve_mask
from longshort.activations import ActivationSpec, get_activation
from longshort.rnn import RNN, State

Initializer = Callable[[Tensor], Tensor]


class Dense(LazyInput):
    """`y = activation(x W^T + b)` on the last axis of x, any rank; `weight (units, F)`, `bias (units)`.

    `input_size=None` infers F on the first call. Keras' initialisers: Glorot-uniform weight, zero bias.
    """

    lazy_weight = "weight"

    def __init__(
        self,
        units: int,
        input_size: Optional[int] = None,
        *,
        activation: Optional[ActivationSpec] = None,
        use_bias: bool = True,
        kernel_initializer: Initializer = nn.init.xavier_uniform_,
        bias_initializer: Initializer = nn.init.zeros_,
    ) -> None:
        super().__init__()
        check_size("units", units)
        self.units = units
        self.input_size = input_size
        self.activation = None if activation is None else get_activation(activation)
        self.kernel_initializer = kernel_initializer
        self.weight = self._input_weight(units, input_size)
        self.bias = nn.Parameter(torch.zeros(units)) if use_bias else None
        with torch.no_grad():
            if self.built:
                kernel_initializer(self.weight)
            if self.bias is not None:
                bias_initializer(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"Dense expects a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        self.check_input(x)
        y = F.linear(x, self.weight, self.bias)
        return y if self.activation is None else self.activation(y)

    def extra_repr(self) -> str:
        return f"units={self.units}, input_size={self.input_size}, use_bias={self.bias is not None}"


class TimeDistributed(nn.Module):
    """Apply `module` to every time step: (B, T, ...) -> (B*T, ...) -> module -> (B, T, ...).

    One call of `module` on all steps at once, no loop over time. With `mask`, only the
    real steps go through `module` (so batch statistics never see padding) and masked
    steps come out as zeros.
    """

    accepts_mask = True

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, lengths: Optional[Tensor] = None) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() < 3:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"TimeDistributed expects input of rank >= 3, shape (batch, time, ...), got {shape}")
        B, T = x.shape[:2]
        mask = resolve_mask(mask, lengths, B, T, x.device)
        if mask is None:
            y = self.module(x.reshape(B * T, *x.shape[2:]))  # (B*T, ...)
            return y.reshape(B, T, *y.shape[1:])  # (B, T, ...)
        y_real = self.module(x[mask])  # (N real steps, ...)
        y = y_real.new_zeros(B, T, *y_real.shape[1:])
        y[mask] = y_real
        return y


def _concat(forward: Tensor, backward: Tensor) -> Tensor:
    return torch.cat([forward, backward], dim=-1)


MERGE_MODES: dict[Optional[str], Callable[[Tensor, Tensor], Union[Tensor, tuple[Tensor, Tensor]]]] = {
    "concat": _concat,
    "sum": torch.add,
    "mul": torch.mul,
    "ave": lambda forward, backward: (forward + backward) / 2,
    None: lambda forward, backward: (forward, backward),
}


class Bidirectional(nn.Module):
    """Run `layer` forwards and a fresh copy of it backwards, and merge the two outputs.

    The backward copy has its own newly drawn weights. With `return_sequences` its outputs
    are flipped back into time order before merging, so step t of both directions line up.
    `merge_mode`: "concat" (default), "sum", "mul", "ave", or None for the pair.
    With `return_state`: `(output, *forward_state, *backward_state)`; an `initial_state`
    is the pair `(forward_state, backward_state)`.
    """

    accepts_mask = True

    def __init__(self, layer: RNN, merge_mode: Optional[str] = "concat") -> None:
        super().__init__()
        if not isinstance(layer, RNN):
            raise TypeError(f"Bidirectional wraps a longshort RNN layer, got {type(layer).__name__}")
        if not (merge_mode is None or isinstance(merge_mode, str)) or merge_mode not in MERGE_MODES:
            raise ValueError(f"merge_mode must be one of {list(MERGE_MODES)}, got {merge_mode!r}")
        if layer.stateful:
            raise ValueError("Bidirectional does not take a stateful layer: the backward pass needs the whole sequence")
        self.merge_mode = merge_mode
        self.forward_layer = layer
        self.backward_layer = copy.deepcopy(layer)
        self.backward_layer.go_backwards = not layer.go_backwards
        for module in self.backward_layer.modules():
            if module is not self.backward_layer and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def forward(
        self,
        x: Tensor,
        initial_state: Optional[tuple[State, State]] = None,
        mask: Optional[Tensor] = None,
        lengths: Optional[Tensor] = None,
    ):
        check_sequence(x, "Bidirectional")
        if initial_state is not None and not (isinstance(initial_state, (tuple, list)) and len(initial_state) == 2):
            raise ValueError(f"Bidirectional: initial_state must be a pair (forward_state, backward_state), got {type(initial_state).__name__}")
        forward_state, backward_state = (None, None) if initial_state is None else initial_state
        forward_out = self.forward_layer(x, forward_state, mask=mask, lengths=lengths)
        backward_out = self.backward_layer(x, backward_state, mask=mask, lengths=lengths)
        if self.forward_layer.return_state:
            (forward_out, *forward_states), (backward_out, *backward_states) = forward_out, backward_out
        if self.forward_layer.return_sequences:
            backward_out = backward_out.flip(1)  # back into time order
        output = MERGE_MODES[self.merge_mode](forward_out, backward_out)
        if self.forward_layer.return_state:
            return (output, *forward_states, *backward_states)
        return output

    def extra_repr(self) -> str:
        return f"merge_mode={self.merge_mode!r}"


class Sequential(nn.Sequential):
    """`torch.nn.Sequential` that passes `mask` / `lengths` to the layers that take a mask.

    Stack recurrent layers with `return_sequences=True` on all but (usually) the last.
    """

    accepts_mask = True

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, lengths: Optional[Tensor] = None) -> Tensor:
        if mask is not None or lengths is not None:
            check_sequence(x, "Sequential")
            mask = resolve_mask(mask, lengths, x.shape[0], x.shape[1], x.device)
        for index, module in enumerate(self):
            x = module(x, mask=mask) if mask is not None and getattr(module, "accepts_mask", False) else module(x)
            if not isinstance(x, Tensor):
                raise TypeError(
                    f"layer {index} ({type(module).__name__}) of the Sequential returned {type(x).__name__}, not a tensor: "
                    "inside a Sequential, layers must not use return_state"
                )
        return x
