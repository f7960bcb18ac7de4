"""The ready-made layers `LSTM`, `GRU`, `SimpleRNN` and `LayerNormLSTM`: an `RNN` around the matching cell.

Their parameters live in `.cell`, so `LSTM(32)` and `RNN(LSTMCell(32))` have the same
`state_dict` keys (`cell.weight_ih`, `cell.weight_hh`, `cell.bias`) and outputs, and run
the same path (`implementation`, see `longshort.dispatch`). What a layer adds:
`from_torch` / `to_torch`, which convert single-layer, one-direction `torch.nn` modules
(`LayerNormLSTM` has no `torch.nn` counterpart). Dtypes, as for any `RNN`: a layer computes in its
parameters' dtype (float64, float32, bfloat16) on every path; under `torch.autocast` it converts
its input and runs in that dtype with autocast off (float32 inside: see `RNN`).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from longshort.activations import ActivationSpec
from longshort.cells import Cell, GRUCell, Initializer, LayerNormLSTMCell, LSTMCell, SimpleRNNCell
from longshort.rnn import RNN


class TorchLayer(RNN):
    """A layer whose cell mirrors a `torch.nn` recurrent module: `from_torch` / `to_torch`.

    A subclass names the module (`torch_class`) and says how torch's biases map onto its
    cell's (`_biases_from_torch`; the cell's `torch_biases` maps back); weights map one to one.
    """

    torch_class: type[nn.RNNBase]
    cell: Cell

    @classmethod
    def from_torch(
        cls,
        module: nn.RNNBase,
        *,
        return_sequences: bool = False,
        return_state: bool = False,
        go_backwards: bool = False,
        stateful: bool = False,
    ):
        """A layer with the weights of `module` (a single-layer, one-direction `torch.nn` module)."""
        if not isinstance(module, cls.torch_class):
            raise TypeError(f"{cls.__name__}.from_torch expects a {cls.torch_class.__name__}, got {type(module).__name__}")
        if module.num_layers != 1 or module.bidirectional or getattr(module, "proj_size", 0):
            raise ValueError(
                f"{cls.__name__}.from_torch converts one layer in one direction without projection; got "
                f"num_layers={module.num_layers}, bidirectional={module.bidirectional}. Convert each layer and use "
                "longshort.Sequential / longshort.Bidirectional."
            )
        layer = cls(
            module.hidden_size, module.input_size, **cls._cell_options_from_torch(module), use_bias=module.bias,
            return_sequences=return_sequences, return_state=return_state, go_backwards=go_backwards, stateful=stateful,
        ).to(module.weight_hh_l0)  # dtype and device first: copying float64 weights into float32 would round them
        with torch.no_grad():
            layer.cell.weight_ih.copy_(module.weight_ih_l0)
            layer.cell.weight_hh.copy_(module.weight_hh_l0)
            if module.bias:
                for ours, theirs in zip(layer.cell.biases(), cls._biases_from_torch(module.bias_ih_l0, module.bias_hh_l0)):
                    ours.copy_(theirs)
        return layer

    def to_torch(self) -> nn.RNNBase:
        """The equivalent `torch.nn` module (batch_first=True); dropout options are not carried over."""
        cell = self.cell
        if not cell.built:
            raise RuntimeError(f"{type(self).__name__} is not built yet: call .build(input_size) first")
        module = self.torch_class(cell.input_size, cell.units, bias=cell.use_bias, batch_first=True, **self._torch_options())
        module = module.to(cell.weight_hh)  # dtype and device first, as in from_torch
        with torch.no_grad():
            module.weight_ih_l0.copy_(cell.weight_ih)
            module.weight_hh_l0.copy_(cell.weight_hh)
            if cell.use_bias:
                bias_ih, bias_hh = cell.torch_biases()
                module.bias_ih_l0.copy_(bias_ih)
                module.bias_hh_l0.copy_(bias_hh)
        return module

    # One bias (ours) <-> two biases (torch) whose sum is ours: the default for LSTM and SimpleRNN.
    @staticmethod
    def _biases_from_torch(bias_ih: Tensor, bias_hh: Tensor) -> list[Tensor]:
        return [bias_ih + bias_hh]

    @classmethod
    def _cell_options_from_torch(cls, module: nn.RNNBase) -> dict:
        return {}

    def _torch_options(self) -> dict:
        reason = self.cell.torch_refusal()
        if reason is not None:
            raise ValueError(f"{self.torch_class.__name__} cannot hold this layer: {reason}")
        return {}


class LSTM(TorchLayer):
    """`RNN(LSTMCell(...))` in one layer; see `LSTMCell` for the equations and options.

    `(B, T, F) -> (B, units)`, or `(B, T, units)` with `return_sequences`; with
    `return_state`, `(output, h, c)`.
    """

    torch_class = nn.LSTM

    def __init__(
        self,
        units: int,
        input_size: Optional[int] = None,
        *,
        activation: ActivationSpec = "tanh",
        recurrent_activation: ActivationSpec = "sigmoid",
        use_bias: bool = True,
        unit_forget_bias: bool = True,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        peephole: bool = False,
        zoneout: float = 0.0,
        kernel_initializer: Initializer = nn.init.xavier_uniform_,
        recurrent_initializer: Initializer = nn.init.orthogonal_,
        bias_initializer: Initializer = nn.init.zeros_,
        return_sequences: bool = False,
        return_state: bool = False,
        go_backwards: bool = False,
        stateful: bool = False,
        implementation: str = "auto",
    ) -> None:
        cell = LSTMCell(
            units, input_size, activation=activation, recurrent_activation=recurrent_activation, use_bias=use_bias,
            unit_forget_bias=unit_forget_bias, dropout=dropout, recurrent_dropout=recurrent_dropout, peephole=peephole,
            zoneout=zoneout, kernel_initializer=kernel_initializer, recurrent_initializer=recurrent_initializer,
            bias_initializer=bias_initializer,
        )
        super().__init__(cell, return_sequences, return_state, go_backwards, stateful, implementation)


class LayerNormLSTM(RNN):
    """`RNN(LayerNormLSTMCell(...))` in one layer: the LSTM with layer normalisation in haste's form;
    see `LayerNormLSTMCell` for the equations and options.

    `(B, T, F) -> (B, units)`, or `(B, T, units)` with `return_sequences`; with
    `return_state`, `(output, h, c)`. It runs longshort's fused kernel (masks, dropout and
    zoneout included); torch.nn has no counterpart, so there is no `from_torch` / `to_torch`.
    """

    cell: LayerNormLSTMCell

    def __init__(
        self,
        units: int,
        input_size: Optional[int] = None,
        *,
        use_bias: bool = True,
        unit_forget_bias: bool = True,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        zoneout: float = 0.0,
        epsilon: float = 1e-5,
        return_sequences: bool = False,
        return_state: bool = False,
        go_backwards: bool = False,
        stateful: bool = False,
        implementation: str = "auto",
    ) -> None:
        cell = LayerNormLSTMCell(
            units, input_size, use_bias=use_bias, unit_forget_bias=unit_forget_bias, dropout=dropout,
            recurrent_dropout=recurrent_dropout, zoneout=zoneout, epsilon=epsilon,
        )
        super().__init__(cell, return_sequences, return_state, go_backwards, stateful, implementation)


class GRU(TorchLayer):
    """`RNN(GRUCell(...))` in one layer; see `GRUCell` for the equations (PyTorch's `r, z, n`)."""

    torch_class = nn.GRU

    def __init__(
        self,
        units: int,
        input_size: Optional[int] = None,
        *,
        activation: ActivationSpec = "tanh",
        recurrent_activation: ActivationSpec = "sigmoid",
        use_bias: bool = True,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        kernel_initializer: Initializer = nn.init.xavier_uniform_,
        recurrent_initializer: Initializer = nn.init.orthogonal_,
        bias_initializer: Initializer = nn.init.zeros_,
        return_sequences: bool = False,
        return_state: bool = False,
        go_backwards: bool = False,
        stateful: bool = False,
        implementation: str = "auto",
    ) -> None:
        cell = GRUCell(
            units, input_size, activation=activation, recurrent_activation=recurrent_activation, use_bias=use_bias,
            dropout=dropout, recurrent_dropout=recurrent_dropout, kernel_initializer=kernel_initializer,
            recurrent_initializer=recurrent_initializer, bias_initializer=bias_initializer,
        )
        super().__init__(cell, return_sequences, return_state, go_backwards, stateful, implementation)

    # GRU keeps both biases, exactly as torch does.
    @staticmethod
    def _biases_from_torch(bias_ih: Tensor, bias_hh: Tensor) -> list[Tensor]:
        return [bias_ih, bias_hh]


class SimpleRNN(TorchLayer):
    """`RNN(SimpleRNNCell(...))` in one layer: `h_t = act(W_ih x_t + W_hh h_{t-1} + b)`, act tanh or ReLU."""

    torch_class = nn.RNN

    def __init__(
        self,
        units: int,
        input_size: Optional[int] = None,
        *,
        activation: ActivationSpec = "tanh",
        use_bias: bool = True,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        kernel_initializer: Initializer = nn.init.xavier_uniform_,
        recurrent_initializer: Initializer = nn.init.orthogonal_,
        bias_initializer: Initializer = nn.init.zeros_,
        return_sequences: bool = False,
        return_state: bool = False,
        go_backwards: bool = False,
        stateful: bool = False,
        implementation: str = "auto",
    ) -> None:
        cell = SimpleRNNCell(
            units, input_size, activation=activation, use_bias=use_bias, dropout=dropout,
            recurrent_dropout=recurrent_dropout, kernel_initializer=kernel_initializer,
            recurrent_initializer=recurrent_initializer, bias_initializer=bias_initializer,
        )
        super().__init__(cell, return_sequences, return_state, go_backwards, stateful, implementation)

    @classmethod
    def _cell_options_from_torch(cls, module: nn.RNNBase) -> dict:
        return {"activation": module.nonlinearity}

    def _torch_options(self) -> dict:
        super()._torch_options()
        return {"nonlinearity": self.cell.nonlinearity()}
