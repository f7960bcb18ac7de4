"""longshort's cells and layers against torch.nn with copied weights: outputs and gradients.

The weight mapping is spelled out here, independently of the library's `from_torch`:
`weight_ih` / `weight_hh` one to one in torch's gate order (LSTM i,f,g,o; GRU r,z,n);
LSTM and SimpleRNN keep one `bias = bias_ih + bias_hh`, GRU keeps `bias_ih`, `bias_hh`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck
from torch.func import functional_call

import longshort as ls

B, T, F, H = 3, 5, 4, 6

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-10, rtol=1e-10)}
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
BIAS = pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "nobias"])


@dataclass(frozen=True)
class Kind:
    cell: type
    layer: type
    torch_cell: type
    torch_layer: type
    options: dict = field(default_factory=dict)  # longshort constructor options
    torch_options: dict = field(default_factory=dict)  # torch constructor options
    two_biases: bool = False  # GRU keeps bias_ih and bias_hh; the others keep their sum
    lstm: bool = False  # carries (h, c)


KINDS = {
    "lstm": Kind(ls.LSTMCell, ls.LSTM, nn.LSTMCell, nn.LSTM, lstm=True),
    "gru": Kind(ls.GRUCell, ls.GRU, nn.GRUCell, nn.GRU, two_biases=True),
    "rnn_tanh": Kind(ls.SimpleRNNCell, ls.SimpleRNN, nn.RNNCell, nn.RNN, {"activation": "tanh"}, {"nonlinearity": "tanh"}),
    "rnn_relu": Kind(ls.SimpleRNNCell, ls.SimpleRNN, nn.RNNCell, nn.RNN, {"activation": "relu"}, {"nonlinearity": "relu"}),
}
ALL_KINDS = pytest.mark.parametrize("kind", list(KINDS.values()), ids=list(KINDS))


# -- helpers -------------------------------------------------------------------------------
def copy_torch_weights(cell: nn.Module, theirs: nn.Module, kind: Kind, suffix: str = ""):
    """Copy `theirs`' weights into `cell`; return the pairs (our parameter, [torch parameters summed into it]).

    Asserts the mapping covers every parameter on both sides, with equal shapes and dtypes.
    """
    pairs = {"weight_ih": ["weight_ih"], "weight_hh": ["weight_hh"]}
    if getattr(theirs, "bias_ih" + suffix, None) is not None:
        pairs.update({"bias_ih": ["bias_ih"], "bias_hh": ["bias_hh"]} if kind.two_biases else {"bias": ["bias_ih", "bias_hh"]})
    ours_named, theirs_named = dict(cell.named_parameters()), dict(theirs.named_parameters())
    assert set(ours_named) == set(pairs)
    assert set(theirs_named) == {t + suffix for ts in pairs.values() for t in ts}
    result = [(ours_named[o], [theirs_named[t + suffix] for t in ts]) for o, ts in pairs.items()]
    with torch.no_grad():
        for ours, their in result:
            assert ours.shape == their[0].shape and ours.dtype == their[0].dtype
            ours.copy_(sum(their))
    return result


def backprop(outputs, seed: int = 1) -> None:
    """Backward from a fixed random weighting of every output element (the same on both sides)."""
    g = torch.Generator().manual_seed(seed)
    sum((out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum() for out in outputs).backward()


def assert_close(actual, expected, dtype) -> None:
    assert actual is not None and expected is not None
    assert actual.dtype == expected.dtype == dtype
    torch.testing.assert_close(actual, expected, **TOL[dtype])


def compare(ours_fn, theirs_fn, inputs, pairs, dtype) -> None:
    """Run both sides on their own leaf copies of `inputs`, then compare the outputs, the
    gradients of every input and of every parameter pair."""
    ours_in = [i.detach().clone().requires_grad_() for i in inputs]
    theirs_in = [i.detach().clone().requires_grad_() for i in inputs]
    ours_out, theirs_out = ours_fn(*ours_in), theirs_fn(*theirs_in)
    assert len(ours_out) == len(theirs_out)
    for o, t in zip(ours_out, theirs_out):
        assert o.shape == t.shape
        assert_close(o, t, dtype)
    backprop(ours_out)
    backprop(theirs_out)
    for o, t in zip(ours_in, theirs_in):
        assert_close(o.grad, t.grad, dtype)
    for ours, theirs in pairs:
        for their in theirs:  # a summed bias gets the gradient of each summand
            assert_close(ours.grad, their.grad, dtype)


def random_state(kind: Kind, dtype, leading=()):
    return [torch.randn(*leading, B, H, dtype=dtype) for _ in range(2 if kind.lstm else 1)]


# -- cells ---------------------------------------------------------------------------------
@DTYPES
@ALL_KINDS
@BIAS
def test_cell_matches_torch(kind: Kind, dtype, use_bias):
    torch.manual_seed(0)
    theirs = kind.torch_cell(F, H, bias=use_bias, dtype=dtype, **kind.torch_options)
    ours = kind.cell(H, F, use_bias=use_bias, **kind.options).to(dtype)
    pairs = copy_torch_weights(ours, theirs, kind)

    def ours_fn(x, *state):  # -> [y, h] or [y, h, c]
        y, new_state = ours(x, tuple(state) if kind.lstm else state[0])
        return [y, *(new_state if kind.lstm else [new_state])]

    def theirs_fn(x, *state):
        out = theirs(x, tuple(state) if kind.lstm else state[0])
        return [out[0], *out] if kind.lstm else [out, out]

    compare(ours_fn, theirs_fn, [torch.randn(B, F, dtype=dtype), *random_state(kind, dtype)], pairs, dtype)


# -- layers --------------------------------------------------------------------------------
@DTYPES
@ALL_KINDS
@BIAS
@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
def test_layer_matches_torch(kind: Kind, dtype, use_bias, with_state):
    torch.manual_seed(0)
    theirs = kind.torch_layer(F, H, bias=use_bias, batch_first=True, dtype=dtype, **kind.torch_options)
    ours = kind.layer(H, F, use_bias=use_bias, return_sequences=True, return_state=True, **kind.options).to(dtype)
    pairs = copy_torch_weights(ours.cell, theirs, kind, suffix="_l0")

    def ours_fn(x, *state):  # -> [y (B, T, H), h, (c)]
        initial = (tuple(state) if kind.lstm else state[0]) if state else None
        return list(ours(x, initial_state=initial))

    def theirs_fn(x, *state):
        hx = (tuple(s[None] for s in state) if kind.lstm else state[0][None]) if state else None
        y, final = theirs(x, hx)
        return [y, *(s[0] for s in (final if kind.lstm else [final]))]

    x = torch.randn(B, T, F, dtype=dtype)
    state = random_state(kind, dtype) if with_state else []
    compare(ours_fn, theirs_fn, [x, *state], pairs, dtype)

    # return_sequences=False gives the last step of the sequence
    ours.return_sequences = ours.return_state = False
    with torch.no_grad():
        assert_close(ours(x, (tuple(state) if kind.lstm else state[0]) if state else None), theirs_fn(x, *state)[0][:, -1], dtype)


@ALL_KINDS
def test_rnn_of_cell_equals_layer(kind: Kind):
    torch.manual_seed(0)
    layer = kind.layer(H, F, return_sequences=True, return_state=True, **kind.options)
    generic = ls.RNN(kind.cell(H, F, **kind.options), return_sequences=True, return_state=True)
    with torch.no_grad():  # make every parameter (biases too) random and distinct
        for p in layer.parameters():
            p.copy_(torch.randn_like(p))
    layer_sd, generic_sd = layer.state_dict(), generic.state_dict()
    assert list(layer_sd) == list(generic_sd)
    assert {k: v.shape for k, v in layer_sd.items()} == {k: v.shape for k, v in generic_sd.items()}
    assert all(k.startswith("cell.") for k in layer_sd)

    x = torch.randn(B, T, F)
    assert not torch.allclose(generic(x)[0], layer(x)[0])  # different weights before loading
    generic.load_state_dict(layer_sd)
    for implementation in ("auto", "loop"):  # both dispatch alike: the same path, bit for bit
        generic.implementation = layer.implementation = implementation
        for a, b in zip(generic(x), layer(x), strict=True):
            assert torch.equal(a, b)
        assert generic.last_dispatch == layer.last_dispatch


# -- gradcheck -----------------------------------------------------------------------------
@pytest.mark.parametrize("layer_cls", [ls.LSTM, ls.GRU, ls.SimpleRNN], ids=["lstm", "gru", "rnn"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_gradcheck(layer_cls, masked):
    torch.manual_seed(0)
    layer = layer_cls(2, 3, return_sequences=True, return_state=True).double()
    names = [name for name, _ in layer.named_parameters()]
    params = [torch.randn_like(p).requires_grad_() for _, p in layer.named_parameters()]
    x = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, False, True], [False, True, True]]) if masked else None  # inner and left padding

    def run(x, *params):
        return functional_call(layer, dict(zip(names, params)), (x,), {"mask": mask})

    out = run(x, *params)
    if masked:  # masked steps output zeros, so the check below must still reach every real step
        assert torch.all(out[0][~mask] == 0) and torch.all(out[0][mask] != 0)
    assert gradcheck(run, (x, *params), eps=1e-6, atol=1e-8)
