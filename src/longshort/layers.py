"""The ready-made layers `LSTM`, `GRU` and `SimpleRNN`: an `RNN` around the matching cell.

Their parameters live in `.cell`, so `LSTM(32)` and `RNN(LSTMCell(32))` have the same
`state_dict` keys (`cell.weight_ih`, `cell.weight_hh`, `cell.bias`) and outputs. Unlike
`RNN(cell)`, a layer runs the fastest path that can run the call (`implementation`, see
`longshort.dispatch`). `from_torch` / `to_torch` convert single-layer, one-direction
`torch.nn` modules.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from longshort.activations import ActivationSpec
from longshort.cells import Cell, GRUCell, Initializer, LSTMCell, LSTMState, SimpleRNNCell
from longshort.dispatch import Dispatcher
from longshort.fused_gru import gru_recurrence
from longshort.fused_lstm import lstm_recurrence
from longshort.fused_simple_rnn import simple_rnn_recurrence
from longshort.rnn import RNN, State, flatten_state


class TorchLayer(Dispatcher):
    """A layer whose cell mirrors a `torch.nn` recurrent module: `from_torch` / `to_torch`, and
    the vendor path, which runs torch's own kernel on our weights.

    A subclass names the module (`torch_class`), says how biases map (`_biases_from_torch`,
    `_biases_to_torch`; the weights map one to one) and which activations torch has
    (`_unsupported_activations`).
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
                bias_ih, bias_hh = self._biases_to_torch(cell.biases())
                module.bias_ih_l0.copy_(bias_ih)
                module.bias_hh_l0.copy_(bias_hh)
        return module

    # One bias (ours) <-> two biases (torch) whose sum is ours: the default for LSTM and SimpleRNN.
    @staticmethod
    def _biases_from_torch(bias_ih: Tensor, bias_hh: Tensor) -> list[Tensor]:
        return [bias_ih + bias_hh]

    @staticmethod
    def _biases_to_torch(biases: list[Tensor]) -> list[Tensor]:
        return [biases[0], torch.zeros_like(biases[0])]

    @classmethod
    def _cell_options_from_torch(cls, module: nn.RNNBase) -> dict:
        return {}

    def _torch_options(self) -> dict:
        if self._unsupported_activations() is not None:
            raise ValueError(f"{self.torch_class.__name__} cannot hold this layer: it has only {self._unsupported_activations()}")
        return {}

    def _unsupported_activations(self) -> Optional[str]:
        """None if torch's kernels (and ours) compute this cell's activations, else the ones they do compute."""
        cell = self.cell
        if cell.activation is not torch.tanh or cell.recurrent_activation is not torch.sigmoid:
            return "tanh as activation and sigmoid as recurrent_activation"
        return None

    # -- the vendor path ----------------------------------------------------------------------
    def _vendor_refusal(self, masked: bool) -> Optional[str]:
        if masked:
            return f"{self.torch_class.__name__}'s kernel takes no mask"
        if self.cell.recurrent_dropout:
            return f"{self.torch_class.__name__}'s kernel has no recurrent dropout"
        if self._unsupported_activations() is not None:
            return f"{self.torch_class.__name__}'s kernel computes only {self._unsupported_activations()}"
        return None

    def _vendor_function(self):
        """torch.lstm, torch.gru, torch.rnn_tanh or torch.rnn_relu."""
        raise NotImplementedError

    def _run_vendor(self, x: Tensor, state: State):
        cell = self.cell
        x = cell._variational_dropout(x, "input")
        weights = [cell.weight_ih, cell.weight_hh]
        if cell.use_bias:
            weights += self._biases_to_torch(cell.biases())
        leaves = [leaf.unsqueeze(0) for leaf in flatten_state(state)]  # (1, B, H): torch's (layers, batch, H)
        hx = leaves[0] if isinstance(state, Tensor) else tuple(leaves)
        y, *final = self._vendor_function()(x, hx, weights, cell.use_bias, 1, 0.0, self.training, False, True)
        final = [leaf.squeeze(0) for leaf in final]
        return y, y[:, -1], (final[0] if isinstance(state, Tensor) else LSTMState(*final))

    # -- the fused path ---------------------------------------------------------------------------
    def _fused_refusal(self, masked: bool) -> Optional[str]:
        if self._unsupported_activations() is not None:
            return f"the fused kernel computes only {self._unsupported_activations()}"
        return None

    @staticmethod
    def _last(y: Tensor, h: Tensor, mask: Optional[Tensor]) -> Tensor:
        """The output of the last real step: y at T, or with a mask the carried h (zero if no real step)."""
        return y[:, -1] if mask is None else h * mask.any(dim=1, keepdim=True)


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
            unit_forget_bias=unit_forget_bias, dropout=dropout, recurrent_dropout=recurrent_dropout,
            kernel_initializer=kernel_initializer, recurrent_initializer=recurrent_initializer,
            bias_initializer=bias_initializer,
        )
        super().__init__(cell, return_sequences, return_state, go_backwards, stateful)
        self._set_implementation(implementation)

    def _vendor_function(self):
        return torch.lstm

    def _run_fused(self, x: Tensor, state: LSTMState, mask: Optional[Tensor]):
        cell = self.cell
        h0, c0 = state
        y, h, c = lstm_recurrence(cell.project_input(x), (h0, c0), cell.weight_hh, mask, cell.dropout_mask("recurrent", h0))
        return y, self._last(y, h, mask), LSTMState(h, c)


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
        super().__init__(cell, return_sequences, return_state, go_backwards, stateful)
        self._set_implementation(implementation)

    # GRU keeps both biases, exactly as torch does.
    @staticmethod
    def _biases_from_torch(bias_ih: Tensor, bias_hh: Tensor) -> list[Tensor]:
        return [bias_ih, bias_hh]

    @staticmethod
    def _biases_to_torch(biases: list[Tensor]) -> list[Tensor]:
        return [biases[0], biases[1]]

    def _vendor_function(self):
        return torch.gru

    def _run_fused(self, x: Tensor, h0: Tensor, mask: Optional[Tensor]):
        cell = self.cell
        y, h = gru_recurrence(cell.project_input(x), h0, cell.weight_hh, cell.bias_hh, mask, cell.dropout_mask("recurrent", h0))
        return y, self._last(y, h, mask), h


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
        super().__init__(cell, return_sequences, return_state, go_backwards, stateful)
        self._set_implementation(implementation)

    @classmethod
    def _cell_options_from_torch(cls, module: nn.RNNBase) -> dict:
        return {"activation": module.nonlinearity}

    def _torch_options(self) -> dict:
        super()._torch_options()
        return {"nonlinearity": self._nonlinearity()}

    def _nonlinearity(self) -> Optional[str]:
        return {torch.tanh: "tanh", torch.relu: "relu"}.get(self.cell.activation)

    def _unsupported_activations(self) -> Optional[str]:
        return "tanh or relu as activation" if self._nonlinearity() is None else None

    def _vendor_function(self):
        return torch.rnn_tanh if self._nonlinearity() == "tanh" else torch.rnn_relu

    def _run_fused(self, x: Tensor, h0: Tensor, mask: Optional[Tensor]):
        cell = self.cell
        p = cell.project_input(x)  # (B, T, H)
        y, h = simple_rnn_recurrence(p, h0, cell.weight_hh, self._nonlinearity(), mask, cell.dropout_mask("recurrent", h0))
        return y, self._last(y, h, mask), h
