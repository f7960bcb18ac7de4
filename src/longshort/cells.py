"""Recurrent cells: one time step each, written as the textbook equations.

Shape legend: B batch, T time, F input features, H units (hidden size).

The cell protocol
-----------------
`RNN(cell)` runs any `torch.nn.Module` that has

    initial_state(batch_size, like) -> state
        The state before the first step, on `like`'s dtype and device. A state is a
        tensor (B, ...) or a tuple / NamedTuple of them.
    forward(x_t, state) -> (y_t, new_state)
        One step: x_t (B, F) and the previous state in, the step's output y_t (B, ...)
        and the new state out.

and, optionally,

    build(input_size)                 called once with F before the first step
    reset_dropout_masks()             called at the start of every sequence
    project_input(x) / recur(p_t, s)  a cell whose step is `recur(project_input(x_t), s)`
                                      lets `RNN` project the whole sequence (B, T, F) in
                                      one matmul before the loop
    time_major_input(x)               with them: `project_input(x)` of a whole sequence,
                                      time-major (T, B, G), as the compiled path and the
                                      fused kernels take it; without it the compiled path
                                      transposes the projection (G wide) itself
    vendor_refusal(masked) / run_vendor(x, state)
    fused_refusal(masked) / run_fused(x, state, mask)
                                      whole-sequence kernels `RNN` dispatches to (see
                                      `longshort.dispatch`); the built-in cells have them.
                                      Each returns every output (B, T, ...), the output of
                                      the last real step (or None: the outputs' last step),
                                      and the final state

`RNN(cell, implementation="compiled")` runs any such cell fast (`longshort.compiled`) if its
step treats the rows of the batch independently, draws no random numbers (draw dropout
masks once per sequence: in `project_input`, or in `reset_dropout_masks` into a registered
buffer), and reads no tensors besides its inputs, parameters and registered buffers.

A minimal cell that runs (it is tested in tests/test_rnn.py)::

    class MinimalRNNCell(torch.nn.Module):
        def __init__(self, units: int, input_size: int):
            super().__init__()
            self.kernel = torch.nn.Linear(input_size, units)
            self.recurrent_kernel = torch.nn.Linear(units, units, bias=False)

        def initial_state(self, batch_size, like):
            return like.new_zeros(batch_size, self.recurrent_kernel.in_features)

        def forward(self, x_t, h_prev):
            h = torch.tanh(self.kernel(x_t) + self.recurrent_kernel(h_prev))
            return h, h

    layer = longshort.RNN(MinimalRNNCell(32, input_size=8), return_sequences=True)
    y = layer(torch.randn(4, 10, 8))   # (4, 10, 32)

Deviations from the papers, on purpose
--------------------------------------
* LSTM and SimpleRNN keep one bias vector; `torch.nn` keeps two (`bias_ih + bias_hh`)
  whose sum is the same thing. GRU keeps both, because `b_hn` sits inside `r * (...)`.
* GRU follows `torch.nn.GRU` and Keras' `reset_after=True`: the reset gate multiplies
  `W_hn h + b_hn`, not `h` (Cho et al. 2014 apply it before the matmul), and
  `h = (1 - z) * n + z * h_prev`. Gate order is PyTorch's `r, z, n` (Keras: `z, r, h`).
* Dropout is variational (Gal & Ghahramani 2016): one mask per sequence, the same mask
  for all gates; recurrent dropout drops `h_prev` only where it enters the matmul.
* LSTM zoneout has one rate for `h` and `c` (Krueger et al. 2016 allow one each).
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from longshort._lazy import LazyInput, check_size
from longshort._validate import check_flag
from longshort.activations import ActivationSpec, get_activation
from longshort.fused_gru import gru_layer
from longshort.fused_lstm import lstm_layer
from longshort.fused_lstm_variants import LayerNormWeights, ZoneoutKeep, lstm_variant_layer, lstm_variant_recurrence
from longshort.fused_simple_rnn import simple_rnn_layer
from longshort.rnn import flatten_state, map_state

Initializer = Callable[[Tensor], Tensor]


class LSTMState(NamedTuple):
    """The two states an LSTM carries from step to step."""

    h: Tensor  # (B, H) short-term state, also the step's output
    c: Tensor  # (B, H) long-term state, the cell


def _check_rate(name: str, rate: float) -> float:
    if not isinstance(rate, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1), got {rate!r}")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {rate}")
    return float(rate)


class Cell(LazyInput):
    """What the built-in cells share: `weight_ih (G*H, F)` built on first use, `weight_hh
    (G*H, H)`, Keras' initialisers, and variational dropout. Subclasses add the math."""

    gates: int = 1  # G: how many blocks of H rows the weight matrices hold
    lazy_weight = "weight_ih"
    changes: int = 0  # attribute assignments so far: RNN.dispatch keeps its decision while this stands

    def __setattr__(self, name: str, value: object) -> None:
        super().__setattr__(name, value)
        self.__dict__["changes"] = self.changes + 1  # what the kernels refuse reads only the cell's attributes

    def __init__(
        self,
        units: int,
        input_size: Optional[int],
        *,
        activation: ActivationSpec,
        use_bias: bool,
        dropout: float,
        recurrent_dropout: float,
        kernel_initializer: Initializer,
        recurrent_initializer: Initializer,
        bias_initializer: Initializer,
    ) -> None:
        super().__init__()
        check_size("units", units)
        self.units = units
        self.input_size = input_size
        self.activation = get_activation(activation)
        self.use_bias = check_flag("use_bias", use_bias)
        self.dropout = _check_rate("dropout", dropout)
        self.recurrent_dropout = _check_rate("recurrent_dropout", recurrent_dropout)
        self.kernel_initializer = kernel_initializer
        self.recurrent_initializer = recurrent_initializer
        self.bias_initializer = bias_initializer
        rows = self.gates * units
        self.weight_ih = self._input_weight(rows, input_size)
        self.weight_hh = nn.Parameter(torch.empty(rows, units))
        self._dropout_masks: dict[str, Tensor] = {}

    def reset_parameters(self) -> None:
        """Draw fresh weights: Glorot-uniform `weight_ih`, orthogonal `weight_hh`, zero bias (Keras' defaults)."""
        with torch.no_grad():
            if self.built:
                self.kernel_initializer(self.weight_ih)
            self.recurrent_initializer(self.weight_hh)
            for bias in self.biases():
                self.bias_initializer(bias)

    def biases(self) -> list[Tensor]:
        """The bias vectors `bias_initializer` fills; subclasses with one `bias` keep this."""
        return [] if self.input_bias is None else [self.input_bias]

    # -- one step -----------------------------------------------------------------------
    @property
    def input_bias(self) -> Optional[Tensor]:
        """The bias added in `project_input`: `bias`, or `bias_ih` for GRU."""
        return self.bias

    def initial_state(self, batch_size: int, like: Tensor):
        return like.new_zeros(batch_size, self.units)

    def project_input(self, x: Tensor) -> Tensor:
        """`W_ih x + b` for one step (B, F) -> (B, G*H) or a whole sequence (B, T, F) -> (B, T, G*H)."""
        self.check_input(x)
        x = self._variational_dropout(x, "input")
        return F.linear(x, self.weight_ih, self.input_bias)

    def time_major_input(self, x: Tensor) -> Tensor:
        """`project_input` of every step of x (B, T, F), time-major (T, B, G*H): what the fused kernels take."""
        x = self._variational_dropout(x, "input")
        return F.linear(x.transpose(0, 1), self.weight_ih, self.input_bias)  # (T, B, G*H)

    def recur(self, p_t: Tensor, state):
        """One step from the projected input `p_t` (B, G*H) and the previous state."""
        raise NotImplementedError

    def forward(self, x_t: Tensor, state=None):
        """One step: x_t (B, F) -> (y_t, new_state). `state=None` starts from zeros."""
        if not isinstance(x_t, Tensor) or x_t.dim() != 2:
            shape = tuple(x_t.shape) if isinstance(x_t, Tensor) else type(x_t).__name__
            raise ValueError(f"{type(self).__name__} steps one time step of shape (batch, features), got {shape}")
        if state is None:
            state = self.initial_state(x_t.shape[0], x_t)
        return self.recur(self.project_input(x_t), state)

    # -- variational dropout --------------------------------------------------------------
    def reset_dropout_masks(self) -> None:
        """Forget the dropout masks; `RNN` calls this before every sequence. Call it yourself
        between sequences when you step the cell by hand."""
        if self._dropout_masks:  # (setting a module attribute costs a few us, every call)
            self._dropout_masks = {}

    def dropout_mask(self, kind: str, like: Tensor) -> Optional[Tensor]:
        """This sequence's dropout mask (B, D) for `kind` ("input" or "recurrent") and `like` (B, ..., D),
        or None when it drops nothing (eval mode, or rate 0)."""
        rate = self.dropout if kind == "input" else self.recurrent_dropout
        if not self.training or rate == 0.0:
            return None
        shape = (like.shape[0], like.shape[-1])
        mask = self._dropout_masks.get(kind)
        if mask is None or mask.shape != shape or mask.dtype != like.dtype:
            keep = 1.0 - rate
            mask = torch.bernoulli(like.new_full(shape, keep)) / keep
            self._dropout_masks[kind] = mask
        return mask

    def _variational_dropout(self, x: Tensor, kind: str) -> Tensor:
        """x (B, D) or (B, T, D) times this sequence's mask (B, D) for `kind`."""
        mask = self.dropout_mask(kind, x)
        if mask is None:
            return x
        return x * (mask[:, None] if x.dim() == 3 else mask)

    # -- fast paths over a whole sequence (longshort.dispatch picks one) ---------------------
    def kernel_refusal(self) -> Optional[str]:
        """Why the vendor and fused kernels cannot compute this cell's step (None if they can)."""
        raise NotImplementedError

    def torch_refusal(self) -> Optional[str]:
        """Why torch's kernel and `torch.nn` module cannot compute this cell's step (None if they can)."""
        return self.kernel_refusal()

    def vendor_refusal(self, masked: bool) -> Optional[str]:
        reason = self.torch_refusal()  # what no call can change comes first
        if reason is not None:
            return reason
        if masked:
            return "torch's kernel takes no mask"
        if self.recurrent_dropout and self.training:  # in eval mode it drops nothing
            return "torch's kernel has no recurrent dropout"
        return None

    def fused_refusal(self, masked: bool) -> Optional[str]:
        return self.kernel_refusal()

    def vendor_kernel(self):
        """torch.lstm, torch.gru, torch.rnn_tanh or torch.rnn_relu: what torch.nn runs for this cell."""
        raise NotImplementedError

    _zero_bias: Optional[Tensor] = None  # torch_biases' zeros, kept between calls

    def torch_biases(self) -> list[Tensor]:
        """`bias_ih`, `bias_hh` as torch.nn keeps them: ours and zeros, for one-bias cells. The zeros
        are made once per dtype and device (a new tensor every call of the vendor path cost 10 us)."""
        zeros = self._zero_bias
        if zeros is None or zeros.dtype != self.bias.dtype or zeros.device != self.bias.device:
            with torch.inference_mode(False):  # a tensor made under inference_mode could not be saved for backward
                zeros = torch.zeros_like(self.bias)
            self.__dict__["_zero_bias"] = zeros  # a cache, not a change of the cell: kept out of `changes` (see __setattr__)
        return [self.bias, zeros]

    def run_vendor(self, x: Tensor, state):
        """The whole sequence through torch's kernel: all outputs, None (the last output is theirs at T), the final state."""
        x = self._variational_dropout(x, "input")
        kernel = self.vendor_kernel()
        weights = [self.weight_ih, self.weight_hh] + (self.torch_biases() if self.use_bias else [])
        options = (self.use_bias, 1, 0.0, self.training, False, True)  # has_biases, layers, dropout, train, bidirectional, batch_first
        if isinstance(state, tuple):  # (h, c)
            h0, c0 = state
            y, h, c = kernel(x, (h0.unsqueeze(0), c0.unsqueeze(0)), weights, *options)  # h, c (1, B, H)
            return y, None, LSTMState(h.squeeze(0), c.squeeze(0))
        y, h = kernel(x, state.unsqueeze(0), weights, *options)
        return y, None, h.squeeze(0)

    def run_fused(self, x: Tensor, state, mask: Optional[Tensor]):
        """The whole sequence through longshort's fused kernel: all outputs, the last one, the final state."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"units={self.units}, input_size={self.input_size}, use_bias={self.use_bias}"


def _last(h: Tensor, mask: Optional[Tensor]) -> Optional[Tensor]:
    """The output of the last real step: with a mask the carried h (zero if no real step); without,
    None, which `RNN` reads as the outputs' last step."""
    return None if mask is None else h * mask.any(dim=1, keepdim=True)


def _gated_kernel_refusal(cell: Cell, own_recur) -> Optional[str]:
    """The kernels of LSTM and GRU compute their cell's own `recur` with tanh and sigmoid only."""
    if type(cell).recur is not own_recur:
        return f"{type(cell).__name__} overrides recur, which the kernels do not compute"
    if cell.activation is not torch.tanh or cell.recurrent_activation is not torch.sigmoid:
        return "the kernels compute only tanh as activation and sigmoid as recurrent_activation"
    return None


def _zone_out(new: Tensor, prev: Tensor, rate: float, keep: Optional[Tensor]) -> Tensor:
    """Zoneout of one state tensor: `prev` where `keep` (training), or with `keep` None (evaluation)
    the expectation `rate * prev + (1 - rate) * new`."""
    return torch.lerp(new, prev, rate) if keep is None else torch.where(keep, prev, new)


class LSTMCell(Cell):
    r"""Long Short-Term Memory (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000).

    .. math::
        i_t = \sigma(W_{ii} x_t + W_{hi} h_{t-1} + b_i) \\
        f_t = \sigma(W_{if} x_t + W_{hf} h_{t-1} + b_f) \\
        g_t = \tanh(W_{ig} x_t + W_{hg} h_{t-1} + b_g) \\
        o_t = \sigma(W_{io} x_t + W_{ho} h_{t-1} + b_o) \\
        c_t = f_t \odot c_{t-1} + i_t \odot g_t \\
        h_t = o_t \odot \tanh(c_t)

    Parameters, gate order `i, f, g, o` as in `torch.nn.LSTMCell`: `weight_ih (4H, F)`,
    `weight_hh (4H, H)`, `bias (4H)`. `activation` replaces tanh, `recurrent_activation`
    replaces sigma. With `unit_forget_bias` (the default) the forget slice `bias[H:2H]`
    starts at 1 (Jozefowicz et al. 2015). Returns `(h, LSTMState(h, c))`.

    Options, each off by default:

    * `peephole=True`: peephole connections (Gers & Schmidhuber 2000), the gates also see the cell
      through diagonal weights `weight_ci`, `weight_cf`, `weight_co` (H each, zero at the start,
      so a fresh cell computes the plain LSTM):

      .. math::
          i_t = \sigma(\ldots + w_{ci} \odot c_{t-1}) \qquad f_t = \sigma(\ldots + w_{cf} \odot c_{t-1})
          \qquad o_t = \sigma(\ldots + w_{co} \odot c_t)

    * `zoneout=rate`: zoneout (Krueger et al. 2016), each unit of `h` and of `c` keeps its
      previous value with probability `rate`, a fresh draw per step and unit in training
      (`d_t \sim \mathrm{Bernoulli}(rate)`), the expectation in evaluation:

      .. math::
          s_t = d_t \odot s_{t-1} + (1 - d_t) \odot \tilde{s}_t \quad \text{(training)}, \qquad
          s_t = rate \cdot s_{t-1} + (1 - rate) \cdot \tilde{s}_t \quad \text{(evaluation)}

      for `s` each of `h` and `c`, with `\tilde{h}_t = o_t \odot \tanh(\tilde{c}_t)` from the new,
      not zoned-out cell, as in the paper. One rate serves both (the paper allows one each).

    Both run in longshort's fused kernel (`fused_lstm_variants`); torch's own kernel
    computes neither, and with zoneout not even in evaluation.
    """

    gates = 4

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
    ) -> None:
        super().__init__(
            units, input_size, activation=activation, use_bias=use_bias, dropout=dropout,
            recurrent_dropout=recurrent_dropout, kernel_initializer=kernel_initializer,
            recurrent_initializer=recurrent_initializer, bias_initializer=bias_initializer,
        )
        self.recurrent_activation = get_activation(recurrent_activation)
        self.unit_forget_bias = check_flag("unit_forget_bias", unit_forget_bias)
        self.peephole = check_flag("peephole", peephole)
        self.zoneout = _check_rate("zoneout", zoneout)
        self.bias = nn.Parameter(torch.empty(4 * units)) if use_bias else None
        self.weight_ci = nn.Parameter(torch.zeros(units)) if peephole else None
        self.weight_cf = nn.Parameter(torch.zeros(units)) if peephole else None
        self.weight_co = nn.Parameter(torch.zeros(units)) if peephole else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        with torch.no_grad():
            if self.bias is not None and self.unit_forget_bias:
                self.bias[self.units : 2 * self.units] = 1.0
            if self.peephole:
                for weight in (self.weight_ci, self.weight_cf, self.weight_co):
                    weight.zero_()

    def initial_state(self, batch_size: int, like: Tensor) -> LSTMState:
        zeros = like.new_zeros(batch_size, self.units)
        return LSTMState(zeros, zeros)

    def recur(self, p_t: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        h_prev, c_prev = state
        z = p_t + self._variational_dropout(h_prev, "recurrent") @ self.weight_hh.T  # (B, 4H)
        i, f, g, o = z.chunk(4, dim=-1)  # each (B, H)
        if self.peephole:
            i, f = i + self.weight_ci * c_prev, f + self.weight_cf * c_prev
        i, f = self.recurrent_activation(i), self.recurrent_activation(f)
        g = self.activation(g)
        c = f * c_prev + i * g
        if self.peephole:
            o = o + self.weight_co * c
        o = self.recurrent_activation(o)
        h = o * self.activation(c)
        if self.zoneout:
            h, c = self.zone_out((h, c), state)
        return h, LSTMState(h, c)

    # -- zoneout ------------------------------------------------------------------------------
    def zoneout_masks(self, like: Tensor, steps: tuple[int, ...] = ()) -> Tensor:
        """Zoneout's draws, bool (*steps, 2, B, H) for `like` (B, H): True where h (index 0 of the 2)
        or c (index 1) keeps its previous value, with probability `zoneout`.

        The loop draws (2, B, H) at every step, the fused path (T, 2, B, H) in one call. torch fills
        a CPU tensor's uniforms in order, so after the same `torch.manual_seed` both consume the
        random stream identically and zone out the same units (as does `Zoneout(LSTMCell(...))`,
        which draws h, then c, at every step).
        """
        return torch.rand(*steps, 2, *like.shape, dtype=like.dtype, device=like.device) < self.zoneout

    def zone_out(self, new: tuple[Tensor, Tensor], prev: tuple[Tensor, Tensor]) -> LSTMState:
        """One step's zoneout: the new (h, c) against the previous one (see the class docstring)."""
        (h, c), (h_prev, c_prev) = new, prev
        keep_h, keep_c = self.zoneout_masks(h_prev) if self.training else (None, None)  # (B, H) each
        return LSTMState(_zone_out(h, h_prev, self.zoneout, keep_h), _zone_out(c, c_prev, self.zoneout, keep_c))

    # -- the fast paths -------------------------------------------------------------------------
    def kernel_refusal(self) -> Optional[str]:
        return _gated_kernel_refusal(self, LSTMCell.recur)

    def torch_refusal(self) -> Optional[str]:
        if self.peephole:
            return "torch's LSTM has no peephole connections"
        if self.zoneout:
            return "torch's LSTM has no zoneout, and in evaluation zoneout's blend of old and new state is not the plain LSTM either"
        return self.kernel_refusal()

    def vendor_kernel(self):
        return torch.lstm

    def layer_norm_weights(self) -> Optional[LayerNormWeights]:
        """The layer norm weights of the fused kernel's recurrent side and cell; None: no layer norm."""
        return None

    def zoneout_keep(self, steps: int, like: Tensor) -> Optional[ZoneoutKeep]:
        """What each of `steps` steps keeps of the previous h and c, for the fused kernel: masks
        (T, B, H) in training, the rate in evaluation; None without zoneout."""
        if not self.zoneout:
            return None
        if not self.training:
            return ZoneoutKeep(self.zoneout, self.zoneout)
        keep = self.zoneout_masks(like, (steps,))  # (T, 2, B, H)
        return ZoneoutKeep(keep[:, 0], keep[:, 1])

    def run_fused(self, x: Tensor, state: LSTMState, mask: Optional[Tensor]):
        h0, c0 = state
        self.dropout_mask("input", x)  # drawn first, as in the loop; both branches below apply it
        recurrent_mask = self.dropout_mask("recurrent", h0)
        zoneout = self.zoneout_keep(x.shape[1], h0)  # drawn after the dropout masks, as in the loop
        peephole = (self.weight_ci, self.weight_cf, self.weight_co) if self.peephole else None
        layer_norm = self.layer_norm_weights()
        variants = dict(peephole=peephole, layer_norm=layer_norm, zoneout=zoneout, step_mask=mask, recurrent_mask=recurrent_mask)
        if peephole is None and layer_norm is None and zoneout is None:  # the plain LSTM: its own kernel is faster
            y, h, c = lstm_layer(self._variational_dropout(x, "input"), self.weight_ih, self.bias, (h0, c0), self.weight_hh, mask, recurrent_mask)
        elif layer_norm is None:  # the kernel computes p = x W_ih^T + b itself, into its buffer of gates
            y, h, c = lstm_variant_layer(self._variational_dropout(x, "input"), self.weight_ih, self.bias, (h0, c0), self.weight_hh, **variants)
        else:  # LN_x sits between x W_ih^T and the gates: p (T, B, 4H) given, bias included
            y, h, c = lstm_variant_recurrence(self.time_major_input(x), (h0, c0), self.weight_hh, **variants)
        y = y.transpose(0, 1)  # (B, T, H)
        return y, _last(h, mask), LSTMState(h, c)

    def extra_repr(self) -> str:
        text = super().extra_repr()
        if self.peephole:
            text += ", peephole=True"
        if self.zoneout:
            text += f", zoneout={self.zoneout}"
        return text


class GRUCell(Cell):
    r"""Gated Recurrent Unit (Cho et al. 2014), in the form of `torch.nn.GRUCell`.

    .. math::
        r_t = \sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}) \\
        z_t = \sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz}) \\
        n_t = \tanh(W_{in} x_t + b_{in} + r_t \odot (W_{hn} h_{t-1} + b_{hn})) \\
        h_t = (1 - z_t) \odot n_t + z_t \odot h_{t-1}

    Parameters, gate order `r, z, n` as in PyTorch: `weight_ih (3H, F)`, `weight_hh (3H, H)`,
    `bias_ih (3H)`, `bias_hh (3H)`. Returns `(h, h)`.
    """

    gates = 3
    preference = ("fused", "vendor", "loop")  # torch's CPU GRU is slower than the fused one (longshort.dispatch)

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
    ) -> None:
        super().__init__(
            units, input_size, activation=activation, use_bias=use_bias, dropout=dropout,
            recurrent_dropout=recurrent_dropout, kernel_initializer=kernel_initializer,
            recurrent_initializer=recurrent_initializer, bias_initializer=bias_initializer,
        )
        self.recurrent_activation = get_activation(recurrent_activation)
        self.bias_ih = nn.Parameter(torch.empty(3 * units)) if use_bias else None
        self.bias_hh = nn.Parameter(torch.empty(3 * units)) if use_bias else None
        self.reset_parameters()

    def biases(self) -> list[Tensor]:
        return [] if self.bias_ih is None else [self.bias_ih, self.bias_hh]

    @property
    def input_bias(self) -> Optional[Tensor]:
        return self.bias_ih

    def recur(self, p_t: Tensor, h_prev: Tensor) -> tuple[Tensor, Tensor]:
        q = F.linear(self._variational_dropout(h_prev, "recurrent"), self.weight_hh, self.bias_hh)  # (B, 3H)
        p_r, p_z, p_n = p_t.chunk(3, dim=-1)  # each (B, H)
        q_r, q_z, q_n = q.chunk(3, dim=-1)
        r = self.recurrent_activation(p_r + q_r)
        z = self.recurrent_activation(p_z + q_z)
        n = self.activation(p_n + r * q_n)
        h = (1 - z) * n + z * h_prev
        return h, h

    def kernel_refusal(self) -> Optional[str]:
        return _gated_kernel_refusal(self, GRUCell.recur)

    def vendor_kernel(self):
        return torch.gru

    def torch_biases(self) -> list[Tensor]:
        return [self.bias_ih, self.bias_hh]

    def run_fused(self, x: Tensor, h0: Tensor, mask: Optional[Tensor]):
        x = self._variational_dropout(x, "input")  # the input mask drawn first, as in the loop
        y, h = gru_layer(x, self.weight_ih, self.bias_ih, h0, self.weight_hh, self.bias_hh, mask, self.dropout_mask("recurrent", h0))
        return y.transpose(0, 1), _last(h, mask), h  # y (B, T, H)


class LayerNormLSTMCell(LSTMCell):
    r"""LSTM with layer normalisation (Ba, Kiros & Hinton 2016), in the form of haste's LayerNormLSTM.

    .. math::
        z_t = \mathrm{LN}_x(W_{ih} x_t) + \mathrm{LN}_h(W_{hh} h_{t-1}) + b \qquad i, f, g, o = \mathrm{split}(z_t) \\
        c_t = f_t \odot c_{t-1} + i_t \odot g_t \\
        h_t = o_t \odot \tanh(\mathrm{LN}_c(c_t))

    Each LN normalises over its features and scales by a learned gain; `LN_c` also has a
    learned shift. Activations are the default tanh and sigmoid; initialisers Keras' defaults. Parameters: those of `LSTMCell` plus `gain_ih (4H)`, `gain_hh (4H)`,
    `gain_c (H)`, `shift_c (H)`. The carried cell state is the un-normalised `c_t`.
    `zoneout` is `LSTMCell`'s option; there are no peephole connections (haste's form has none).
    `RNN` runs it in longshort's fused kernel (`fused_lstm_variants`); torch has none for it.
    """

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
    ) -> None:
        super().__init__(
            units, input_size, use_bias=use_bias, unit_forget_bias=unit_forget_bias, dropout=dropout,
            recurrent_dropout=recurrent_dropout, zoneout=zoneout,
        )
        if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not 0.0 < epsilon < math.inf:
            raise ValueError(f"epsilon must be a positive finite number, got {epsilon!r}")
        self.epsilon = float(epsilon)
        self.gain_ih = nn.Parameter(torch.ones(4 * units))
        self.gain_hh = nn.Parameter(torch.ones(4 * units))
        self.gain_c = nn.Parameter(torch.ones(units))
        self.shift_c = nn.Parameter(torch.zeros(units))

    def reset_parameters(self) -> None:
        """`LSTMCell`'s, and every layer norm back to gain 1 and shift 0."""
        super().reset_parameters()
        if hasattr(self, "shift_c"):  # the first call comes from LSTMCell.__init__, before the norms exist
            with torch.no_grad():
                for gain in (self.gain_ih, self.gain_hh, self.gain_c):
                    gain.fill_(1.0)
                self.shift_c.zero_()

    def project_input(self, x: Tensor) -> Tensor:
        """`LN_x(W_ih x)` for one step (B, F) or a whole sequence (B, T, F); the bias comes in `recur`."""
        self.check_input(x)
        return self._input_norm(F.linear(self._variational_dropout(x, "input"), self.weight_ih))

    def _input_norm(self, projected: Tensor) -> Tensor:
        """LN_x over the last dimension (4H) of `W_ih x`, in any layout."""
        return F.layer_norm(projected, (4 * self.units,), self.gain_ih, None, self.epsilon)

    def recur(self, p_t: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        h_prev, c_prev = state
        q = F.linear(self._variational_dropout(h_prev, "recurrent"), self.weight_hh)  # (B, 4H)
        z = p_t + F.layer_norm(q, (4 * self.units,), self.gain_hh, None, self.epsilon)
        if self.bias is not None:
            z = z + self.bias
        i, f, g, o = z.chunk(4, dim=-1)  # each (B, H)
        i, f, o = self.recurrent_activation(i), self.recurrent_activation(f), self.recurrent_activation(o)
        g = self.activation(g)
        c = f * c_prev + i * g
        h = o * self.activation(F.layer_norm(c, (self.units,), self.gain_c, self.shift_c, self.epsilon))
        if self.zoneout:
            h, c = self.zone_out((h, c), state)
        return h, LSTMState(h, c)

    def kernel_refusal(self) -> Optional[str]:
        return _gated_kernel_refusal(self, LayerNormLSTMCell.recur)

    def torch_refusal(self) -> Optional[str]:
        return "torch's LSTM has no layer normalisation"

    def time_major_input(self, x: Tensor) -> Tensor:
        # Time-major from the matmul on (x is the narrower copy to make), so that the kernel's copy of p
        # and LN_x's backward read their inputs in order; the bias added in place, as layer_norm's
        # backward reads its input, not its output.
        x = self._variational_dropout(x, "input").transpose(0, 1)  # (T, B, F)
        p = self._input_norm(F.linear(x, self.weight_ih))  # (T, B, 4H): LN_x(W_ih x_t)
        return p if self.bias is None else p.add_(self.bias)

    def layer_norm_weights(self) -> Optional[LayerNormWeights]:
        return LayerNormWeights(self.gain_hh, self.gain_c, self.shift_c, self.epsilon)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", epsilon={self.epsilon}"


class Zoneout(nn.Module):
    r"""Zoneout (Krueger et al. 2016) around any cell: each unit of the state keeps its previous
    value with probability `rate` at each step, instead of taking the new one.

    .. math::
        s_t = d_t \odot s_{t-1} + (1 - d_t) \odot \tilde{s}_t, \qquad d_t \sim \mathrm{Bernoulli}(\mathrm{rate})

    for every tensor of the state (`h` and `c` of an LSTM), a fresh mask per step and unit in
    training; in evaluation the expectation, `rate * s_{t-1} + (1 - rate) * \tilde{s}_t`. The
    step's output is the new state's first tensor (`h`). Parameters live in `.cell`.

    It wraps any cell (GRU, SimpleRNN, yours) and runs in the readable loop. For an LSTM use the
    option instead, `LSTM(units, zoneout=rate)` or `LSTMCell(units, zoneout=rate)`: the same
    computation (the same draws, even), which runs in the fused kernel.
    """

    def __init__(self, cell: nn.Module, rate: float) -> None:
        super().__init__()
        self.cell = cell
        self.rate = _check_rate("zoneout rate", rate)

    def build(self, input_size: int) -> None:
        if hasattr(self.cell, "build"):
            self.cell.build(input_size)

    def reset_dropout_masks(self) -> None:
        if hasattr(self.cell, "reset_dropout_masks"):
            self.cell.reset_dropout_masks()

    def initial_state(self, batch_size: int, like: Tensor):
        return self.cell.initial_state(batch_size, like)

    def forward(self, x_t: Tensor, state):
        _, new_state = self.cell(x_t, state)
        state = map_state(self._zoneout, new_state, state)
        return flatten_state(state)[0], state

    def _zoneout(self, new: Tensor, old: Tensor) -> Tensor:
        keep_old = torch.rand_like(new) < self.rate if self.training else None
        return _zone_out(new, old, self.rate, keep_old)


class SimpleRNNCell(Cell):
    r"""The Elman network: :math:`h_t = \mathrm{act}(W_{ih} x_t + W_{hh} h_{t-1} + b)`, act tanh or ReLU.

    Parameters: `weight_ih (H, F)`, `weight_hh (H, H)`, `bias (H)`. Returns `(h, h)`.
    """

    gates = 1
    preference = ("fused", "vendor", "loop")  # torch's CPU RNN is slower than the fused one (longshort.dispatch)

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
    ) -> None:
        super().__init__(
            units, input_size, activation=activation, use_bias=use_bias, dropout=dropout,
            recurrent_dropout=recurrent_dropout, kernel_initializer=kernel_initializer,
            recurrent_initializer=recurrent_initializer, bias_initializer=bias_initializer,
        )
        self.bias = nn.Parameter(torch.empty(units)) if use_bias else None
        self.reset_parameters()

    def recur(self, p_t: Tensor, h_prev: Tensor) -> tuple[Tensor, Tensor]:
        h = self.activation(p_t + self._variational_dropout(h_prev, "recurrent") @ self.weight_hh.T)
        return h, h

    def nonlinearity(self) -> Optional[str]:
        """"tanh" or "relu", torch.nn.RNN's name for the activation; None for any other."""
        return {torch.tanh: "tanh", torch.relu: "relu"}.get(self.activation)

    def kernel_refusal(self) -> Optional[str]:
        if type(self).recur is not SimpleRNNCell.recur:
            return f"{type(self).__name__} overrides recur, which the kernels do not compute"
        return None if self.nonlinearity() else "the kernels compute only tanh or relu as activation"

    def vendor_kernel(self):
        return torch.rnn_tanh if self.nonlinearity() == "tanh" else torch.rnn_relu

    def run_fused(self, x: Tensor, h0: Tensor, mask: Optional[Tensor]):
        x = self._variational_dropout(x, "input")  # the input mask drawn first, as in the loop
        y, h = simple_rnn_layer(x, self.weight_ih, self.bias, h0, self.weight_hh, self.nonlinearity(), mask,
                                self.dropout_mask("recurrent", h0))
        return y, _last(h, mask), h
