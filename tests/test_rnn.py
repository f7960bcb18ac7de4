"""Semantics of the recurrent layers and wrappers: masks, direction, state, wrappers, init, dropout, clipping.

Everything runs in float64 so that "equals" can be checked with tight tolerances.
"""

from __future__ import annotations

import copy
import math
from typing import NamedTuple

import pytest
import torch
from torch import Tensor, nn

import longshort as ls

B, T, F, H = 4, 7, 3, 4


@pytest.fixture(autouse=True)
def _float64_and_seed():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(old)


def close(actual, expected, atol=1e-12, rtol=1e-10):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


# -- cells used in the tests --------------------------------------------------------------


# Copied verbatim from the module docstring of longshort/cells.py.
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


class PairState(NamedTuple):
    a: Tensor
    b: Tensor


class PairCell(nn.Module):
    """A custom cell whose state is a NamedTuple of two tensors and whose output is neither of them."""

    def __init__(self, units: int, input_size: int):
        super().__init__()
        self.units = units
        self.kernel = nn.Linear(input_size, units)
        self.recurrent = nn.Linear(units, units, bias=False)
        self.mix = nn.Linear(units, units, bias=False)

    def initial_state(self, batch_size, like):
        zeros = like.new_zeros(batch_size, self.units)
        return PairState(zeros, zeros)

    def forward(self, x_t, state):
        assert isinstance(state, PairState), type(state)  # the loop must keep the NamedTuple type
        a = torch.tanh(self.kernel(x_t) + self.recurrent(state.a) + self.mix(state.b))
        b = 0.5 * state.b + a
        return a + b, PairState(a, b)


KINDS = ["lstm", "gru", "simple", "custom"]


def make_layer(kind: str, units: int = H, input_size: int = F, **kw) -> ls.RNN:
    """A layer of `kind` with every bias randomised (so that a wrongly processed step shows)."""
    if kind == "lstm":
        layer = ls.LSTM(units, input_size, **kw)
    elif kind == "gru":
        layer = ls.GRU(units, input_size, **kw)
    elif kind == "simple":
        layer = ls.SimpleRNN(units, input_size, **kw)
    else:
        layer = ls.RNN(PairCell(units, input_size), **kw)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if "bias" in name:
                p.normal_(0.0, 0.5)
    return layer


def random_state(layer: ls.RNN, batch: int, like: Tensor):
    """A random state with the structure of the cell's initial state."""

    def rand(state):
        if isinstance(state, Tensor):
            return torch.randn_like(state)
        parts = [rand(s) for s in state]
        return type(state)(*parts) if hasattr(state, "_fields") else type(state)(parts)

    return rand(layer.cell.initial_state(batch, like))


def leaves(state):
    return (state,) if isinstance(state, Tensor) else tuple(leaf for part in state for leaf in leaves(part))


HOLES = torch.tensor(
    [
        [0, 0, 1, 1, 1, 1, 1],  # left padding
        [1, 0, 1, 0, 0, 1, 1],  # inner gaps
        [1, 1, 1, 1, 1, 1, 1],  # full
        [0, 1, 1, 0, 1, 0, 0],  # everything at once
    ],
    dtype=torch.bool,
)


# -- custom cells ---------------------------------------------------------------------------


def test_minimal_cell_from_docstring_equals_hand_loop():
    cell = MinimalRNNCell(32, input_size=8)
    layer = ls.RNN(cell, return_sequences=True)
    x = torch.randn(4, 10, 8)
    y = layer(x)
    assert y.shape == (4, 10, 32)

    h = torch.zeros(4, 32)
    expected = []
    for t in range(10):
        h = torch.tanh(x[:, t] @ cell.kernel.weight.T + cell.kernel.bias + h @ cell.recurrent_kernel.weight.T)
        expected.append(h)
    close(y, torch.stack(expected, dim=1))
    close(ls.RNN(cell)(x), expected[-1])  # return_sequences=False: the last output


def test_namedtuple_state_cell_with_mask_and_return_state():
    cell = PairCell(H, F)
    layer = ls.RNN(cell, return_sequences=True, return_state=True)
    x = torch.randn(B, T, F)
    y, a, b = layer(x, mask=HOLES)
    assert y.shape == (B, T, H) and a.shape == (B, H) and b.shape == (B, H)

    for i in range(B):
        state = cell.initial_state(1, x)
        outs = []
        for t in range(T):
            if HOLES[i, t]:
                out, state = cell(x[i : i + 1, t], state)
                outs.append(out[0])
        close(y[i, HOLES[i]], torch.stack(outs))
        assert (y[i, ~HOLES[i]] == 0).all()
        close(a[i], state.a[0])
        close(b[i], state.b[0])
    assert not torch.allclose(a, b)


# -- masks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_lengths_equal_each_sequence_alone(kind):
    layer = make_layer(kind, return_state=True)
    x = torch.randn(B, T, F)  # the padding is random, not zeros, so a processed pad step shows
    lengths = torch.tensor([T, 3, 1, 5])

    out, *states = layer(x, lengths=lengths)
    layer.return_sequences = True
    seq, *seq_states = layer(x, lengths=lengths)
    for i, n in enumerate(lengths.tolist()):
        ref_seq, *ref_states = layer(x[i : i + 1, :n])
        close(seq[i, :n], ref_seq[0])
        assert (seq[i, n:] == 0).all()
        close(out[i], ref_seq[0, -1])
        for got, got_seq, want in zip(states, seq_states, ref_states, strict=True):
            close(got[i], want[0])
            close(got_seq[i], want[0])


@pytest.mark.parametrize("kind", KINDS)
def test_mask_with_holes_equals_real_steps_in_order(kind):
    layer = make_layer(kind, return_state=True, return_sequences=True)
    x = torch.randn(B, T, F)
    seq, *states = layer(x, mask=HOLES)
    layer.return_sequences = False
    out, *states_last = layer(x, mask=HOLES)
    layer.return_sequences = True
    for i in range(B):
        real = x[i, HOLES[i]][None]  # (1, n real steps, F)
        ref_seq, *ref_states = layer(real)
        close(seq[i, HOLES[i]], ref_seq[0])
        assert (seq[i, ~HOLES[i]] == 0).all()
        close(out[i], ref_seq[0, -1])
        for got, got_last, want in zip(states, states_last, ref_states, strict=True):
            close(got[i], want[0])
            close(got_last[i], want[0])


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
def test_integer_mask_is_accepted(dtype):
    layer = make_layer("lstm", return_sequences=True)
    x = torch.randn(B, T, F)
    close(layer(x, mask=HOLES.to(dtype)), layer(x, mask=HOLES))
    assert not torch.allclose(layer(x, mask=HOLES), layer(x))


@pytest.mark.parametrize("kind", KINDS)
def test_length_zero_gives_initial_state(kind):
    layer = make_layer(kind, return_state=True)
    x = torch.randn(3, 5, F)
    lengths = torch.tensor([0, 5, 2])

    out, *states = layer(x, lengths=lengths)
    assert (out[0] == 0).all()
    for s in states:
        assert (s[0] == 0).all()

    init = random_state(layer, 3, x)
    out, *states = layer(x, initial_state=init, lengths=lengths)
    assert (out[0] == 0).all()
    for got, want in zip(states, leaves(init), strict=True):
        assert torch.equal(got[0], want[0])
        assert not torch.allclose(got[1], want[1])  # a sequence with real steps does move
    layer.return_sequences = True
    seq = layer(x, initial_state=init, lengths=lengths)[0]
    assert (seq[0] == 0).all()


# -- direction and state ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("return_sequences", [True, False])
def test_go_backwards_equals_flipped_input(kind, return_sequences):
    layer = make_layer(kind, return_sequences=return_sequences, return_state=True)
    x = torch.randn(B, T, F)
    forward_on_flipped = layer(x.flip(1))
    layer.go_backwards = True
    backwards = layer(x)
    for got, want in zip(backwards, forward_on_flipped, strict=True):
        close(got, want)
    layer.go_backwards = False
    assert not torch.allclose(layer(x)[0], backwards[0])


@pytest.mark.parametrize("kind", ["lstm", "gru", "custom"])
def test_stateful_halves_equal_whole(kind):
    layer = make_layer(kind, stateful=True, return_sequences=True, return_state=True)
    x = torch.randn(B, 10, F)

    whole_seq, *whole_states = layer(x)
    layer.reset_states()
    first_seq, *_ = layer(x[:, :4])
    second_seq, *second_states = layer(x[:, 4:])
    close(torch.cat([first_seq, second_seq], dim=1), whole_seq)
    for got, want in zip(second_states, whole_states, strict=True):
        close(got, want)
    assert all(not s.requires_grad for s in leaves(layer.state))  # detached for truncated BPTT

    # without a reset the state carries on; after a reset it starts over
    carried = layer(x[:, :4])[0]
    assert not torch.allclose(carried, first_seq)
    layer.reset_states()
    close(layer(x[:, :4])[0], first_seq)


def test_stateful_other_batch_size_raises():
    layer = ls.LSTM(H, F, stateful=True)
    layer(torch.randn(B, 5, F))
    with pytest.raises(ValueError, match="stateful.*batch size 4.*reset_states"):
        layer(torch.randn(B - 1, 5, F))
    layer.reset_states()
    assert layer(torch.randn(B - 1, 5, F)).shape == (B - 1, H)


def test_return_state_lstm():
    layer = make_layer("lstm", return_state=True)
    x = torch.randn(B, T, F)
    result = layer(x)
    assert isinstance(result, tuple) and len(result) == 3
    out, h, c = result
    assert out.shape == h.shape == c.shape == (B, H)
    close(h, out)
    assert not torch.allclose(h, c)
    layer.return_sequences = True
    seq, h2, c2 = layer(x)
    close(seq[:, -1], h)
    close(h2, h)
    close(c2, c)


@pytest.mark.parametrize("kind", ["gru", "simple"])
def test_return_state_gru_simple(kind):
    layer = make_layer(kind, return_state=True)
    x = torch.randn(B, T, F)
    result = layer(x)
    assert isinstance(result, tuple) and len(result) == 2
    out, h = result
    close(h, out)


@pytest.mark.parametrize("as_tuple", [False, True])
def test_lstm_initial_state_continues_a_sequence(as_tuple):
    layer = make_layer("lstm", return_sequences=True, return_state=True)
    x = torch.randn(B, T, F)
    whole, h, c = layer(x)
    first, h1, c1 = layer(x[:, :3])
    init = (h1, c1) if as_tuple else ls.LSTMState(h1, c1)
    second, h2, c2 = layer(x[:, 3:], initial_state=init)
    close(torch.cat([first, second], dim=1), whole)
    close(h2, h)
    close(c2, c)
    # and the initial state is really used
    assert not torch.allclose(layer(x[:, 3:])[0], second)


# -- Bidirectional ------------------------------------------------------------------------------


def direction_refs(bi: ls.Bidirectional, return_sequences: bool, units=H, input_size=F):
    """Plain forward-reading LSTMs with the weights of each direction of `bi`."""
    refs = []
    for layer in (bi.forward_layer, bi.backward_layer):
        ref = ls.LSTM(units, input_size, return_sequences=return_sequences, return_state=True)
        ref.load_state_dict(layer.state_dict())
        refs.append(ref)
    return refs


def run_backward_by_hand(ref, x, return_sequences):
    out, *states = ref(x.flip(1))
    return (out.flip(1) if return_sequences else out), states


MERGES = {
    "concat": lambda f, b: torch.cat([f, b], dim=-1),
    "sum": lambda f, b: f + b,
    "mul": lambda f, b: f * b,
    "ave": lambda f, b: (f + b) / 2,
    None: lambda f, b: (f, b),
}


@pytest.mark.parametrize("merge_mode", list(MERGES))
@pytest.mark.parametrize("return_sequences", [True, False])
def test_bidirectional_merge_modes(merge_mode, return_sequences):
    bi = ls.Bidirectional(ls.LSTM(H, F, return_sequences=return_sequences), merge_mode=merge_mode)
    fwd_ref, bwd_ref = direction_refs(bi, return_sequences)
    x = torch.randn(B, T, F)
    f = fwd_ref(x)[0]
    b, _ = run_backward_by_hand(bwd_ref, x, return_sequences)
    got = bi(x)
    want = MERGES[merge_mode](f, b)
    if merge_mode is None:
        assert isinstance(got, tuple) and len(got) == 2
        close(got[0], want[0])
        close(got[1], want[1])
    else:
        close(got, want)
        width = 2 * H if merge_mode == "concat" else H
        assert got.shape == ((B, T, width) if return_sequences else (B, width))


def test_bidirectional_return_state():
    bi = ls.Bidirectional(ls.LSTM(H, F, return_sequences=True, return_state=True))
    fwd_ref, bwd_ref = direction_refs(bi, True)
    x = torch.randn(B, T, F)
    out, hf, cf, hb, cb = bi(x)
    f, f_h, f_c = fwd_ref(x)
    b, (b_h, b_c) = run_backward_by_hand(bwd_ref, x, True)
    close(out, torch.cat([f, b], dim=-1))
    close(hf, f_h)
    close(cf, f_c)
    close(hb, b_h)
    close(cb, b_c)
    close(out[:, 0, H:], hb)  # the backward direction ends at time step 0

    # initial_state is the pair (forward_state, backward_state)
    init_f, init_b = (torch.randn(B, H), torch.randn(B, H)), (torch.randn(B, H), torch.randn(B, H))
    out2, *states2 = bi(x, initial_state=(init_f, init_b))
    f2, *f2_states = fwd_ref(x, initial_state=init_f)
    b2, *b2_states = bwd_ref(x.flip(1), initial_state=init_b)
    close(out2, torch.cat([f2, b2.flip(1)], dim=-1))
    for got, want in zip(states2, [*f2_states, *b2_states], strict=True):
        close(got, want)


@pytest.mark.parametrize("return_sequences", [True, False])
def test_bidirectional_with_lengths(return_sequences):
    bi = ls.Bidirectional(ls.LSTM(H, F, return_sequences=return_sequences, return_state=True), merge_mode=None)
    fwd_ref, bwd_ref = direction_refs(bi, return_sequences)
    x = torch.randn(B, T, F)
    lengths = torch.tensor([T, 2, 5, 1])
    (f, b), hf, cf, hb, cb = bi(x, lengths=lengths)
    for i, n in enumerate(lengths.tolist()):
        real = x[i : i + 1, :n]
        rf, rhf, rcf = fwd_ref(real)
        rb, (rhb, rcb) = run_backward_by_hand(bwd_ref, real, return_sequences)
        if return_sequences:
            close(f[i, :n], rf[0])
            close(b[i, :n], rb[0])
            assert (f[i, n:] == 0).all() and (b[i, n:] == 0).all()
        else:
            close(f[i], rf[0])
            close(b[i], rb[0])
        close(hf[i], rhf[0])
        close(cf[i], rcf[0])
        close(hb[i], rhb[0])
        close(cb[i], rcb[0])


@pytest.mark.parametrize("lazy", [False, True])
def test_bidirectional_backward_copy_has_own_weights(lazy):
    bi = ls.Bidirectional(ls.LSTM(H, None if lazy else F, return_sequences=True))
    if lazy:
        bi(torch.randn(B, T, F))
    fwd, bwd = bi.forward_layer.cell, bi.backward_layer.cell
    assert bwd is not fwd and bi.backward_layer.go_backwards and not bi.forward_layer.go_backwards
    assert {id(p) for p in fwd.parameters()}.isdisjoint(id(p) for p in bwd.parameters())
    assert not torch.allclose(fwd.weight_ih, bwd.weight_ih)
    assert not torch.allclose(fwd.weight_hh, bwd.weight_hh)
    for cell in (fwd, bwd):  # both keep Keras' initial biases
        assert (cell.bias[H : 2 * H] == 1).all()
        assert (cell.bias[:H] == 0).all() and (cell.bias[2 * H :] == 0).all()


# -- TimeDistributed and Sequential ----------------------------------------------------------


def test_time_distributed_dense_equals_loop():
    dense = ls.Dense(3, F, activation="tanh")
    with torch.no_grad():
        dense.bias.normal_()
    x = torch.randn(B, T, F)
    y = ls.TimeDistributed(dense)(x)
    assert y.shape == (B, T, 3)
    close(y, torch.stack([torch.tanh(x[:, t] @ dense.weight.T + dense.bias) for t in range(T)], dim=1))


class Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.batch_sizes = []

    def forward(self, x):
        self.batch_sizes.append(x.shape[0])
        return 2 * x + 1


def test_time_distributed_mask_aware():
    rec = Recorder()
    td = ls.TimeDistributed(rec)
    x = torch.randn(B, T, F)
    y = td(x, mask=HOLES)
    assert rec.batch_sizes == [int(HOLES.sum())]
    close(y[HOLES], 2 * x[HOLES] + 1)
    assert (y[~HOLES] == 0).all()

    lengths = torch.tensor([1, 7, 0, 3])
    y = td(x, lengths=lengths)
    assert rec.batch_sizes[-1] == 11
    mask = torch.arange(T) < lengths[:, None]
    close(y[mask], 2 * x[mask] + 1)
    assert (y[~mask] == 0).all()

    td(x)
    assert rec.batch_sizes[-1] == B * T


def test_time_distributed_batchnorm_sees_only_real_steps():
    bn = nn.BatchNorm1d(F)
    ref = copy.deepcopy(bn)
    td = ls.TimeDistributed(bn)
    x = torch.randn(B, T, F) * 3 + 1
    close(td(x), ref(x.reshape(B * T, F)).reshape(B, T, F))
    close(bn.running_mean, ref.running_mean)

    x[~HOLES] = 100.0  # padding that would wreck the batch statistics
    y = td(x, mask=HOLES)
    close(y[HOLES], ref(x[HOLES]))
    assert (y[~HOLES] == 0).all()
    close(bn.running_mean, ref.running_mean)


def test_time_distributed_linear_and_conv1d_4d():
    lin = nn.Linear(F, 5)
    x = torch.randn(B, T, F)
    close(ls.TimeDistributed(lin)(x), torch.stack([lin(x[:, t]) for t in range(T)], dim=1))

    conv = nn.Conv1d(3, 5, kernel_size=3)
    x4 = torch.randn(B, T, 3, 8)  # (B, T, C, L)
    y = ls.TimeDistributed(conv)(x4)
    assert y.shape == (B, T, 5, 6)
    close(y, torch.stack([conv(x4[:, t]) for t in range(T)], dim=1))
    y = ls.TimeDistributed(conv)(x4, mask=HOLES)
    close(y[HOLES], conv(x4[HOLES]))
    assert (y[~HOLES] == 0).all()


def test_sequential_passes_masks():
    model = ls.Sequential(
        ls.LSTM(5, F, return_sequences=True),
        ls.LSTM(4, 5, return_sequences=True),
        ls.TimeDistributed(ls.Dense(2, 4)),
    )
    with torch.no_grad():
        model[2].module.bias.normal_()  # so that a masked step would not come out as zero by accident
    x = torch.randn(B, T, F)
    y = model(x, mask=HOLES)
    assert y.shape == (B, T, 2)
    for i in range(B):
        ref = model(x[i, HOLES[i]][None])
        close(y[i, HOLES[i]], ref[0])
        assert (y[i, ~HOLES[i]] == 0).all()

    lengths = torch.tensor([7, 2, 4, 1])
    close(model(x, lengths=lengths), model(x, mask=torch.arange(T) < lengths[:, None]))

    # a last LSTM without return_sequences gets the mask too
    encoder = ls.Sequential(model[0], ls.LSTM(4, 5))
    out = encoder(x, mask=HOLES)
    for i in range(B):
        close(out[i], encoder(x[i, HOLES[i]][None])[0])


def test_torch_sequential_of_longshort_layers():
    model = torch.nn.Sequential(ls.LSTM(32, return_sequences=True), ls.TimeDistributed(ls.Dense(1)))
    x = torch.randn(2, 6, 3)
    y = model(x)
    assert y.shape == (2, 6, 1)
    close(y, model[1](model[0](x)))
    y.sum().backward()
    assert model[0].cell.weight_ih.grad is not None and model[1].module.weight.grad is not None


# -- initialisation and lazy build -----------------------------------------------------------


@pytest.mark.parametrize("make", [lambda **kw: ls.LSTM(5, **kw).cell, lambda **kw: ls.LSTMCell(5, 3, **kw)])
def test_forget_bias(make):
    cell = make()
    assert cell.bias.shape == (20,)
    assert (cell.bias[5:10] == 1).all()
    assert (cell.bias[:5] == 0).all() and (cell.bias[10:] == 0).all()
    assert (make(unit_forget_bias=False).bias == 0).all()


@pytest.mark.parametrize("lazy", [False, True])
def test_keras_initialisers(lazy):
    units, features = 6, 5
    layer = ls.LSTM(units, None if lazy else features)
    if lazy:
        layer(torch.randn(2, 3, features))
    w_hh, w_ih = layer.cell.weight_hh, layer.cell.weight_ih
    assert w_hh.shape == (4 * units, units) and w_ih.shape == (4 * units, features)
    close(w_hh.T @ w_hh, torch.eye(units), atol=1e-8, rtol=0)
    limit = math.sqrt(6 / (features + 4 * units))
    assert w_ih.abs().max() <= limit
    assert w_ih.abs().max() > 0.7 * limit  # uniform over the whole range, not something narrower
    assert w_ih.std() > 0.4 * limit


def test_lazy_build_on_first_call():
    layer = ls.LSTM(8)
    assert not layer.cell.built
    y = layer(torch.randn(2, 3, 5))
    assert y.shape == (2, 8)
    assert layer.cell.built and layer.cell.input_size == 5 and layer.cell.weight_ih.shape == (32, 5)
    assert type(layer.cell.weight_ih) is nn.Parameter


def test_build_eagerly():
    layer = ls.LSTM(8)
    assert layer.build(5) is layer
    assert layer.cell.built and layer.cell.weight_ih.shape == (32, 5)
    torch.optim.Adam(layer.parameters())  # no error once built
    assert layer(torch.randn(2, 3, 5)).shape == (2, 8)


def test_optimizer_before_build_raises_then_trains_after_call():
    model = ls.Sequential(ls.LSTM(8), ls.Dense(1))
    with pytest.raises(RuntimeError, match="input_size") as excinfo:
        torch.optim.Adam(model.parameters(), lr=0.02)
    assert ".build" in str(excinfo.value)

    x = torch.randn(8, 6, 3)
    target = x.sum(dim=(1, 2))[:, None] * 0.2
    model(x)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    w_before = model[0].cell.weight_ih.detach().clone()
    losses = []
    for _ in range(10):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert not torch.equal(model[0].cell.weight_ih, w_before)  # the lazily built weight is trained too


# -- dropout ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["lstm", "gru", "simple"])
def test_dropout_is_off_in_eval(kind):
    layer = make_layer(kind, dropout=0.4, recurrent_dropout=0.4, return_sequences=True)
    plain = make_layer(kind, return_sequences=True)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(B, T, F)
    layer.eval()
    y = layer(x)
    close(y, layer(x))
    close(y, plain(x))
    layer.train()
    assert not torch.allclose(layer(x), y)  # and on in training


def identity_simple_rnn(**kw) -> ls.SimpleRNN:
    """h_t = x_t * (input mask) + h_{t-1} * (recurrent mask) * [recurrent]: a window onto the masks."""
    recurrent = kw.pop("recurrent")
    layer = ls.SimpleRNN(8, 8, activation="linear", use_bias=False, return_sequences=True, **kw)
    with torch.no_grad():
        layer.cell.weight_ih.copy_(torch.eye(8))
        layer.cell.weight_hh.copy_(torch.eye(8) if recurrent else torch.zeros(8, 8))
    return layer


def test_input_dropout_mask_is_the_same_at_every_step():
    layer = identity_simple_rnn(dropout=0.5, recurrent=False).train()
    x = torch.ones(3, 6, 8)
    y = layer(x)  # y[:, t] is the input mask
    mask = layer.cell._dropout_masks["input"]
    assert mask.shape == (3, 8)
    for t in range(6):
        close(y[:, t], mask)
    assert set(y.unique().tolist()) == {0.0, 2.0}  # kept units are scaled by 1 / (1 - rate)

    y2 = layer(x)
    assert not torch.equal(y2[:, 0], y[:, 0])  # a new mask for every sequence
    for t in range(6):
        close(y2[:, t], y2[:, 0])


def test_recurrent_dropout_mask_is_the_same_at_every_step():
    layer = identity_simple_rnn(recurrent_dropout=0.5, recurrent=True).train()
    x = torch.ones(3, 5, 8)
    y = layer(x)
    m = layer.cell._dropout_masks["recurrent"]
    assert set(m.unique().tolist()) == {0.0, 2.0}
    h = torch.zeros(3, 8)
    for t in range(5):
        h = 1 + m * h
        close(y[:, t], h)
    layer.eval()
    close(layer(x), torch.arange(1.0, 6.0)[None, :, None].expand(3, 5, 8))


# -- clipping and training -----------------------------------------------------------------


def _model_with_big_gradients():
    model = ls.Sequential(ls.LSTM(4, 3), ls.Dense(2, 4))
    x = torch.randn(B, 5, 3)
    loss = (model(x) * 100).pow(2).sum()
    loss.backward()
    return model


def test_clip_by_global_norm():
    model = _model_with_big_gradients()
    before = ls.gradient_norm(model.parameters())
    expected = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()])).item()
    assert before == pytest.approx(expected, rel=1e-10)
    assert before > 1
    grads = [p.grad.clone() for p in model.parameters()]
    returned = ls.clip_gradients(model.parameters(), ls.Clip(max_norm=1.0))
    assert returned == pytest.approx(before, rel=1e-12)
    assert ls.gradient_norm(model.parameters()) <= 1.0 + 1e-9
    assert ls.gradient_norm(model.parameters()) == pytest.approx(1.0, rel=1e-6)
    for p, g in zip(model.parameters(), grads):  # rescaled, direction kept
        close(p.grad, g / before, atol=1e-9, rtol=1e-6)


def test_clip_by_value():
    model = _model_with_big_gradients()
    grads = [p.grad.clone() for p in model.parameters()]
    ls.clip_gradients(model.parameters(), ls.Clip(max_value=0.1))
    for p, g in zip(model.parameters(), grads):
        close(p.grad, g.clamp(-0.1, 0.1))
    assert max(p.grad.abs().max().item() for p in model.parameters()) == pytest.approx(0.1)


def test_train_step_records_history_and_clips():
    model = ls.Sequential(ls.LSTM(4, 3), ls.Dense(2, 4))
    x, target = torch.randn(B, 5, 3), torch.randn(B, 2) * 10
    loss_fn = lambda: nn.functional.mse_loss(model(x), target)  # noqa: E731

    # what the step should see: the loss and pre-clip gradient norm at the current weights
    probe = copy.deepcopy(model)
    probe_loss = nn.functional.mse_loss(probe(x), target)
    probe_loss.backward()
    expected_norm = ls.gradient_norm(probe.parameters())
    assert expected_norm > 1e-2

    before = [p.detach().clone() for p in model.parameters()]
    history = ls.History()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    value = ls.train_step(model, loss_fn, optimizer, clip=ls.Clip(max_norm=1e-2), history=history)
    assert value == pytest.approx(probe_loss.item(), rel=1e-12)
    assert history.losses == [value]
    assert history.grad_norms[0] == pytest.approx(expected_norm, rel=1e-10)
    step = torch.linalg.vector_norm(torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)]))
    assert step.item() == pytest.approx(1e-2, rel=1e-6)  # SGD with lr 1 moved by the clipped gradient

    ls.train_step(model, loss_fn, optimizer, history=history)
    assert len(history.losses) == len(history.grad_norms) == 2
    assert history.losses[1] < history.losses[0]


@pytest.mark.parametrize("kwargs", [{"max_norm": 0}, {"max_norm": -1.0}, {"max_value": 0.0}])
def test_clip_rejects_non_positive(kwargs):
    with pytest.raises(ValueError, match="must be positive"):
        ls.Clip(**kwargs)
