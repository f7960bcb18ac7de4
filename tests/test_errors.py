"""Bad input gets a ValueError / TypeError whose message names the problem."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import longshort as ls

B, T, F, H = 2, 5, 3, 4


def x_ok(batch=B, time=T, features=F):
    return torch.randn(batch, time, features)


# -- the input sequence -----------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(B, F), (B, T, F, 2), (F,)])
@pytest.mark.parametrize("make", [lambda: ls.LSTM(H), lambda: ls.GRU(H, F), lambda: ls.Bidirectional(ls.LSTM(H))])
def test_wrong_rank(make, shape):
    layer = make()
    with pytest.raises(ValueError, match=rf"rank 3.*\(batch, time, features\).*rank {len(shape)}"):
        layer(torch.randn(*shape))


def test_wrong_rank_says_the_shape():
    with pytest.raises(ValueError, match=r"LSTM expects input of rank 3.*shape \(2, 3\)"):
        ls.LSTM(H)(torch.randn(2, 3))


@pytest.mark.parametrize("lazy", [False, True])
def test_feature_size_that_does_not_match_the_built_layer(lazy):
    layer = ls.LSTM(H, None if lazy else F)
    if lazy:
        layer(x_ok())
    with pytest.raises(ValueError, match=rf"built for {F} input features, got 6"):
        layer(x_ok(features=6))


def test_build_again_with_another_size():
    layer = ls.LSTM(H).build(F)
    layer.build(F)  # the same size again is a no-op
    with pytest.raises(ValueError, match=rf"LSTMCell was built for {F} input features, got 6"):
        layer.build(6)
    with pytest.raises(ValueError, match=r"Dense was built for 3 input features, got 4"):
        ls.Dense(2, 3).build(4)


def test_feature_size_mismatch_for_dense_and_cell():
    with pytest.raises(ValueError, match=r"Dense was built for 3 input features, got 5"):
        ls.Dense(2, 3)(torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"LSTMCell was built for 3 input features, got 5"):
        ls.LSTMCell(H, 3)(torch.randn(4, 5))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
@pytest.mark.parametrize("make", [lambda: ls.LSTM(H), lambda: ls.Bidirectional(ls.GRU(H)), lambda: ls.Sequential(ls.LSTM(H))])
def test_non_float_input(make, dtype):
    x = torch.ones(B, T, F, dtype=dtype)
    layer = make()
    with pytest.raises(TypeError, match=re.escape(f"floating-point input, got {dtype}")):
        layer(x, lengths=torch.tensor([1, 2])) if isinstance(layer, ls.Sequential) else layer(x)


def test_non_tensor_input():
    with pytest.raises(TypeError, match=r"torch.Tensor.*got list"):
        ls.LSTM(H)([[[1.0, 2.0]]])


def test_integer_input_to_dense():
    with pytest.raises(TypeError, match="floating-point"):
        ls.Dense(2)(torch.ones(3, 4, dtype=torch.long))


@pytest.mark.parametrize("shape", [(0, T, F), (B, 0, F)])
def test_empty_input(shape):
    with pytest.raises(ValueError, match=rf"empty input of shape \({shape[0]}, {shape[1]}, {F}\)"):
        ls.LSTM(H)(torch.randn(*shape))


# -- masks and lengths --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(B, T + 1), (B + 1, T), (B,), (B, T, 1)])
def test_mask_of_wrong_shape(shape):
    with pytest.raises(ValueError, match=rf"mask must have shape \(batch, time\) = \({B}, {T}\)"):
        ls.LSTM(H)(x_ok(), mask=torch.ones(*shape, dtype=torch.bool))


@pytest.mark.parametrize("make", [lambda: ls.LSTM(H), lambda: ls.TimeDistributed(ls.Dense(2)), lambda: ls.Sequential(ls.LSTM(H))])
def test_float_mask(make):
    with pytest.raises(TypeError, match=r"mask must be boolean.*float"):
        make()(x_ok(), mask=torch.ones(B, T))


def test_integer_mask_other_than_0_1():
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, 0] = 2
    with pytest.raises(TypeError, match="mask must be boolean"):
        ls.LSTM(H)(x_ok(), mask=mask)


def test_mask_that_is_not_a_tensor():
    with pytest.raises(TypeError, match="mask must be a torch.Tensor"):
        ls.LSTM(H)(x_ok(), mask=[[True] * T] * B)


@pytest.mark.parametrize("make", [lambda: ls.LSTM(H), lambda: ls.Bidirectional(ls.LSTM(H)), lambda: ls.TimeDistributed(ls.Dense(2)), lambda: ls.Sequential(ls.LSTM(H))])
def test_both_mask_and_lengths(make):
    with pytest.raises(ValueError, match="either mask= or lengths=, not both"):
        make()(x_ok(), mask=torch.ones(B, T, dtype=torch.bool), lengths=torch.tensor([T, T]))


@pytest.mark.parametrize("lengths", [[-1, 2], [T + 1, 2], [2, 100]])
def test_lengths_out_of_range(lengths):
    with pytest.raises(ValueError, match=re.escape(f"lengths must lie in [0, {T}] (the number of time steps), got {lengths}")):
        ls.LSTM(H)(x_ok(), lengths=torch.tensor(lengths))


@pytest.mark.parametrize("lengths", [torch.tensor([3]), torch.tensor([3, 3, 3]), torch.tensor([[3], [3]]), torch.tensor(3)])
def test_lengths_of_wrong_shape(lengths):
    with pytest.raises(ValueError, match=rf"lengths must have shape \(batch,\) = \({B},\)"):
        ls.LSTM(H)(x_ok(), lengths=lengths)


@pytest.mark.parametrize("lengths", [torch.tensor([3.0, 2.0]), [3.0, 2.0], torch.tensor([True, False])])
def test_non_integer_lengths(lengths):
    with pytest.raises(TypeError, match="lengths must hold integers"):
        ls.LSTM(H)(x_ok(), lengths=lengths)


# -- initial state --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "state",
    [
        (torch.zeros(B, H),),  # LSTM needs two tensors
        torch.zeros(B, H),
        (torch.zeros(B, H), torch.zeros(B, H + 1)),
        (torch.zeros(B + 1, H), torch.zeros(B + 1, H)),
        (torch.zeros(B, H), torch.zeros(B, H), torch.zeros(B, H)),
        (torch.zeros(B, H), None),
    ],
)
def test_bad_initial_state_lstm(state):
    with pytest.raises(ValueError, match=r"LSTM: initial_state must look like LSTMState of a tensor of shape \(2, 4\)"):
        ls.LSTM(H)(x_ok(), initial_state=state)


@pytest.mark.parametrize("state", [torch.zeros(B, H + 1), torch.zeros(B + 1, H), torch.zeros(H), (torch.zeros(B, H), torch.zeros(B, H))])
def test_bad_initial_state_gru(state):
    with pytest.raises(ValueError, match=r"GRU: initial_state must look like a tensor of shape \(2, 4\)"):
        ls.GRU(H)(x_ok(), initial_state=state)


def test_bad_initial_state_bidirectional():
    good = (torch.zeros(B, H), torch.zeros(B, H))
    with pytest.raises(ValueError, match="initial_state must look like"):
        ls.Bidirectional(ls.LSTM(H))(x_ok(), initial_state=(good, (torch.zeros(B, H + 1), torch.zeros(B, H))))


# -- constructor arguments ------------------------------------------------------------------------


CONSTRUCTORS = [ls.LSTM, ls.GRU, ls.SimpleRNN, ls.LSTMCell, ls.GRUCell, ls.SimpleRNNCell, ls.Dense]


@pytest.mark.parametrize("units", [0, -1, 2.5, "4", True, None])
@pytest.mark.parametrize("cls", CONSTRUCTORS)
def test_bad_units(cls, units):
    with pytest.raises(ValueError, match=re.escape(f"units must be a positive int, got {units!r}")):
        cls(units)


@pytest.mark.parametrize("input_size", [0, -3, 2.5])
@pytest.mark.parametrize("cls", CONSTRUCTORS)
def test_bad_input_size(cls, input_size):
    with pytest.raises(ValueError, match=r"input_size must be a positive int or None"):
        cls(H, input_size)


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5, float("nan")])
@pytest.mark.parametrize("name", ["dropout", "recurrent_dropout"])
@pytest.mark.parametrize("cls", [ls.LSTM, ls.GRU, ls.SimpleRNN, ls.LSTMCell])
def test_bad_dropout(cls, name, rate):
    with pytest.raises(ValueError, match=rf"^{name} must lie in \[0, 1\), got"):
        cls(H, **{name: rate})


@pytest.mark.parametrize("option", ["activation", "recurrent_activation"])
def test_unknown_activation_string(option):
    with pytest.raises(ValueError, match=r"unknown activation 'swishy'.*'tanh'"):
        ls.LSTM(H, **{option: "swishy"})


def test_unknown_activation_elsewhere():
    with pytest.raises(ValueError, match="unknown activation 'Tanh'"):
        ls.SimpleRNN(H, activation="Tanh")
    with pytest.raises(ValueError, match="unknown activation 'softmaxx'"):
        ls.Dense(H, activation="softmaxx")
    with pytest.raises(ValueError, match="unknown activation 3"):
        ls.get_activation(3)


@pytest.mark.parametrize("mode", ["avg", "concatenate", "", "Sum"])
def test_unknown_merge_mode(mode):
    with pytest.raises(ValueError, match=rf"merge_mode must be one of .*got {mode!r}"):
        ls.Bidirectional(ls.LSTM(H), merge_mode=mode)


@pytest.mark.parametrize("layer", [nn.LSTM(F, H, batch_first=True), ls.Dense(H), ls.LSTMCell(H), ls.TimeDistributed(ls.Dense(H))])
def test_bidirectional_of_a_non_rnn(layer):
    with pytest.raises(TypeError, match=rf"Bidirectional wraps a longshort RNN layer, got {type(layer).__name__}"):
        ls.Bidirectional(layer)


def test_bidirectional_of_a_stateful_layer():
    with pytest.raises(ValueError, match="stateful"):
        ls.Bidirectional(ls.LSTM(H, stateful=True))


class NoInitialState(nn.Module):
    def forward(self, x_t, state):
        return x_t, state


@pytest.mark.parametrize(
    "cell, missing",
    [(nn.Linear(F, H), "initial_state"), (NoInitialState(), "initial_state"), (object(), "forward"), (ls.LSTM(H), "initial_state")],
)
def test_rnn_of_something_that_is_not_a_cell(cell, missing):
    with pytest.raises(TypeError, match=rf"{type(cell).__name__} is not a cell: it has no {missing}\(\)"):
        ls.RNN(cell)


@pytest.mark.parametrize("cls", [ls.LSTMCell, ls.GRUCell, ls.SimpleRNNCell])
@pytest.mark.parametrize("shape", [(B, T, F), (F,)])
def test_cell_stepped_with_wrong_rank(cls, shape):
    with pytest.raises(ValueError, match=re.escape(f"{cls.__name__} steps one time step of shape (batch, features), got {shape}")):
        cls(H)(torch.randn(*shape))


# -- wrappers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize(
    "layers",
    [
        lambda: [ls.LSTM(H, return_state=True)],
        lambda: [ls.LSTM(H, return_sequences=True), ls.GRU(H, return_state=True)],
        lambda: [ls.Bidirectional(ls.LSTM(H, return_sequences=True, return_state=True))],
        lambda: [ls.Bidirectional(ls.LSTM(H), merge_mode=None)],
    ],
)
def test_return_state_inside_sequential(layers, with_mask):
    built = layers()
    model = ls.Sequential(*built)
    index = len(built) - 1
    kwargs = {"lengths": torch.tensor([T, 2])} if with_mask else {}
    with pytest.raises(TypeError, match=rf"layer {index} \({type(built[-1]).__name__}\).*returned tuple.*return_state"):
        model(x_ok(), **kwargs)


@pytest.mark.parametrize("shape", [(B, F), (F,)])
def test_time_distributed_needs_a_time_axis(shape):
    with pytest.raises(ValueError, match=r"TimeDistributed expects input of rank >= 3.*got \("):
        ls.TimeDistributed(ls.Dense(2))(torch.randn(*shape))


def test_time_distributed_mask_of_wrong_shape():
    with pytest.raises(ValueError, match="mask must have shape"):
        ls.TimeDistributed(ls.Dense(2))(x_ok(), mask=torch.ones(B, T + 1, dtype=torch.bool))


def test_sequential_validates_mask_input():
    with pytest.raises(ValueError, match="Sequential expects input of rank 3"):
        ls.Sequential(ls.LSTM(H))(torch.randn(B, F), lengths=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="lengths must lie in"):
        ls.Sequential(ls.LSTM(H))(x_ok(), lengths=torch.tensor([1, T + 1]))


def test_initial_state_of_another_dtype_is_named():
    layer = ls.LSTM(4, input_size=3).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    state = ls.LSTMState(torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(TypeError, match="initial_state must have the input's dtype torch.float64"):
        layer(x, initial_state=state)


def test_unbuilt_backward_copy_names_its_cell():
    layer = ls.Bidirectional(ls.LSTM(4))
    with pytest.raises(RuntimeError, match=r"LSTMCell\(units=4\) has no input weights yet"):
        torch.optim.SGD(layer.backward_layer.parameters(), lr=0.1)
