"""`from_torch` / `to_torch` for LSTM, GRU and SimpleRNN, state_dict round trips, float64."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import longshort as ls

B, T, F, H = 3, 5, 4, 6

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-10, rtol=1e-10)}
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])

# (longshort layer, torch module, torch constructor options)
PAIRS = {
    "lstm": (ls.LSTM, nn.LSTM, {}),
    "gru": (ls.GRU, nn.GRU, {}),
    "rnn_tanh": (ls.SimpleRNN, nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (ls.SimpleRNN, nn.RNN, {"nonlinearity": "relu"}),
}
ALL_PAIRS = pytest.mark.parametrize("layer_cls, torch_cls, torch_options", list(PAIRS.values()), ids=list(PAIRS))
LAYERS = pytest.mark.parametrize("layer_cls", [ls.LSTM, ls.GRU, ls.SimpleRNN], ids=["lstm", "gru", "rnn"])


def randomize(module: nn.Module) -> None:
    """Random, distinct values in every parameter (biases start at zero / one otherwise)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5)


def assert_same_numerics(ours: ls.RNN, theirs: nn.RNNBase, dtype) -> None:
    """Forward (output and final state) and backward (input and total weight gradients) agree.

    Our bias gradient is compared with torch's summed bias gradients, which holds for one
    bias = bias_ih + bias_hh (each summand gets the same gradient) and for GRU's two biases
    compared as a pair.
    """
    ours.return_sequences = ours.return_state = True
    x = torch.randn(B, T, F, dtype=dtype)
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours, *state_ours = ours(x_ours)
    y_theirs, state_theirs = theirs(x_theirs)
    state_theirs = [s[0] for s in (state_theirs if isinstance(state_theirs, tuple) else [state_theirs])]
    torch.testing.assert_close(y_ours, y_theirs, **TOL[dtype])
    assert len(state_ours) == len(state_theirs)
    for a, b in zip(state_ours, state_theirs):
        torch.testing.assert_close(a, b, **TOL[dtype])

    weights = torch.randn(y_ours.shape, dtype=dtype)
    (y_ours * weights).sum().backward()
    (y_theirs * weights).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, **TOL[dtype])
    cell = ours.cell
    torch.testing.assert_close(cell.weight_ih.grad, theirs.weight_ih_l0.grad, **TOL[dtype])
    torch.testing.assert_close(cell.weight_hh.grad, theirs.weight_hh_l0.grad, **TOL[dtype])
    if cell.use_bias:
        ours_bias = torch.cat([b.grad for b in cell.biases()])
        theirs_bias = torch.cat([theirs.bias_ih_l0.grad, theirs.bias_hh_l0.grad])
        if len(cell.biases()) == 1:  # one bias: it gets what each of torch's two gets
            ours_bias = ours_bias.repeat(2)
        torch.testing.assert_close(ours_bias, theirs_bias, **TOL[dtype])


# -- from_torch / to_torch ------------------------------------------------------------------
@DTYPES
@ALL_PAIRS
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_from_torch(layer_cls, torch_cls, torch_options, dtype, bias):
    torch.manual_seed(0)
    theirs = torch_cls(F, H, bias=bias, batch_first=True, dtype=dtype, **torch_options)
    ours = layer_cls.from_torch(theirs, return_sequences=True)
    assert type(ours) is layer_cls and ours.return_sequences and not ours.return_state
    assert ours.cell.units == H and ours.cell.input_size == F and ours.cell.use_bias is bias
    assert all(p.dtype == dtype for p in ours.parameters())
    if torch_cls is nn.RNN:
        assert ours.cell.activation is {"tanh": torch.tanh, "relu": torch.relu}[torch_options["nonlinearity"]]
    assert_same_numerics(ours, theirs, dtype)


@DTYPES
@ALL_PAIRS
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_to_torch(layer_cls, torch_cls, torch_options, dtype, bias):
    torch.manual_seed(0)
    ours = layer_cls(H, F, use_bias=bias, activation=torch_options.get("nonlinearity", "tanh")).to(dtype)
    randomize(ours)
    theirs = ours.to_torch()
    assert type(theirs) is torch_cls
    assert (theirs.input_size, theirs.hidden_size, theirs.num_layers) == (F, H, 1)
    assert theirs.batch_first and not theirs.bidirectional and theirs.bias is bias
    assert all(p.dtype == dtype for p in theirs.parameters())
    if torch_cls is nn.RNN:
        assert theirs.nonlinearity == torch_options["nonlinearity"]
    assert_same_numerics(ours, theirs, dtype)


@DTYPES
@ALL_PAIRS
def test_round_trip_is_exact(layer_cls, torch_cls, torch_options, dtype):
    torch.manual_seed(0)
    theirs = torch_cls(F, H, batch_first=True, dtype=dtype, **torch_options)
    back = layer_cls.from_torch(theirs).to_torch()
    x = torch.randn(B, T, F, dtype=dtype)
    torch.testing.assert_close(back(x)[0], theirs(x)[0], **TOL[dtype])
    ours = layer_cls(H, F, activation=torch_options.get("nonlinearity", "tanh")).to(dtype)
    randomize(ours)
    again = layer_cls.from_torch(ours.to_torch())
    for (name, a), (_, b) in zip(ours.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(
    "module, words",
    [
        (nn.LSTM(F, H, num_layers=2), "num_layers=2"),
        (nn.LSTM(F, H, bidirectional=True), "bidirectional=True"),
        (nn.GRU(F, H, num_layers=3), "num_layers=3"),
        (nn.RNN(F, H, bidirectional=True), "bidirectional=True"),
    ],
    ids=["lstm_layers", "lstm_bidirectional", "gru_layers", "rnn_bidirectional"],
)
def test_from_torch_rejects_stacked_or_bidirectional(module, words):
    layer_cls = {nn.LSTM: ls.LSTM, nn.GRU: ls.GRU, nn.RNN: ls.SimpleRNN}[type(module)]
    with pytest.raises(ValueError, match=words):
        layer_cls.from_torch(module)


@pytest.mark.parametrize(
    "layer_cls, module",
    [(ls.LSTM, nn.GRU(F, H)), (ls.GRU, nn.LSTM(F, H)), (ls.SimpleRNN, nn.GRU(F, H)), (ls.LSTM, nn.LSTMCell(F, H)), (ls.GRU, nn.Linear(F, H))],
    ids=["lstm<-gru", "gru<-lstm", "rnn<-gru", "lstm<-lstmcell", "gru<-linear"],
)
def test_from_torch_rejects_wrong_class(layer_cls, module):
    with pytest.raises(TypeError, match=layer_cls.torch_class.__name__):
        layer_cls.from_torch(module)


@pytest.mark.parametrize(
    "layer",
    [
        ls.LSTM(H, F, activation="relu"),
        ls.LSTM(H, F, recurrent_activation="hard_sigmoid"),
        ls.GRU(H, F, activation="relu"),
        ls.GRU(H, F, recurrent_activation="hard_sigmoid"),
        ls.SimpleRNN(H, F, activation="sigmoid"),
        ls.SimpleRNN(H, F, activation=lambda x: torch.tanh(x)),
    ],
    ids=["lstm_relu", "lstm_hard_sigmoid", "gru_relu", "gru_hard_sigmoid", "rnn_sigmoid", "rnn_lambda"],
)
def test_to_torch_rejects_other_activations(layer):
    with pytest.raises(ValueError, match="activation"):
        layer.to_torch()


@LAYERS
def test_to_torch_needs_a_built_layer(layer_cls):
    layer = layer_cls(H)
    with pytest.raises(RuntimeError, match="not built"):
        layer.to_torch()
    layer.build(F)
    assert layer.to_torch().input_size == F


# -- state_dict round trip ------------------------------------------------------------------
def save_and_load(state_dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@LAYERS
@pytest.mark.parametrize("built", [True, False], ids=["built", "unbuilt"])
def test_state_dict_round_trip(layer_cls, built):
    torch.manual_seed(0)
    layer = layer_cls(8, F, return_sequences=True, return_state=True)
    randomize(layer)
    loaded = save_and_load(layer.state_dict())
    fresh = layer_cls(8, F if built else None, return_sequences=True, return_state=True)
    assert fresh.cell.built is built
    x = torch.randn(B, T, F)
    if built:
        assert not torch.allclose(fresh(x)[0], layer(x)[0])
    fresh.load_state_dict(loaded)  # strict: every key matched
    assert fresh.cell.built and fresh.cell.input_size == F
    assert list(fresh.state_dict()) == list(layer.state_dict())
    for a, b in zip(fresh(x), layer(x), strict=True):
        assert torch.equal(a, b)
    # the loaded layer trains: its weights are plain parameters an optimizer accepts
    torch.optim.SGD(fresh.parameters(), lr=0.1)


def test_unbuilt_layer_has_no_state_dict():
    with pytest.raises(RuntimeError, match="not built"):
        ls.LSTM(8).state_dict()


# -- float64 ------------------------------------------------------------------------------
@LAYERS
@pytest.mark.parametrize("built", [True, False], ids=["built", "unbuilt"])
def test_double(layer_cls, built):
    torch.manual_seed(0)
    layer = layer_cls(H, F if built else None, return_sequences=True).double()
    x = torch.randn(B, T, F, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    assert y.dtype == torch.float64 and y.shape == (B, T, H)
    assert all(p.dtype == torch.float64 for p in layer.parameters())
    y.sum().backward()
    assert x.grad.dtype == torch.float64 and layer.cell.weight_ih.grad.dtype == torch.float64
    # the same as torch in float64, to float64 precision
    randomize(layer)
    layer.zero_grad()
    assert_same_numerics(layer, layer.to_torch(), torch.float64)
