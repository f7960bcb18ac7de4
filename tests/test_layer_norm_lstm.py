"""LayerNormLSTMCell: the equations, its place in the dispatch, and what normalisation buys."""

import pytest
import torch
import torch.nn.functional as F

import longshort as ls


def reference_step(cell, x_t, h_prev, c_prev):
    """The docstring's equations, written out with torch.nn.functional."""
    H = cell.units

    def ln(v, gain, shift=None):
        return F.layer_norm(v, (v.shape[-1],), gain, shift, cell.epsilon)

    z = ln(x_t @ cell.weight_ih.T, cell.gain_ih) + ln(h_prev @ cell.weight_hh.T, cell.gain_hh) + cell.bias
    i, f, g, o = torch.sigmoid(z[:, :H]), torch.sigmoid(z[:, H : 2 * H]), torch.tanh(z[:, 2 * H : 3 * H]), torch.sigmoid(z[:, 3 * H :])
    c = f * c_prev + i * g
    return o * torch.tanh(ln(c, cell.gain_c, cell.shift_c)), c


def test_sequence_matches_the_equations():
    torch.manual_seed(0)
    cell = ls.LayerNormLSTMCell(4, 3).double()
    with torch.no_grad():
        for p in (cell.gain_ih, cell.gain_hh, cell.gain_c, cell.shift_c, cell.bias):
            p.copy_(torch.randn_like(p))
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    y, h, c = ls.RNN(cell, return_sequences=True, return_state=True)(x)
    h_ref = c_ref = torch.zeros(2, 4, dtype=torch.float64)
    for t in range(5):
        h_ref, c_ref = reference_step(cell, x[:, t], h_ref, c_ref)
        torch.testing.assert_close(y[:, t], h_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c, c_ref, rtol=1e-12, atol=1e-12)


def test_runs_the_readable_loop_and_says_why():
    layer = ls.RNN(ls.LayerNormLSTMCell(4))
    decision = layer.dispatch()
    assert decision.implementation == "loop"
    assert "LayerNormLSTMCell overrides recur" in decision.refused["fused"]
    with pytest.raises(ValueError, match="overrides recur"):
        ls.RNN(ls.LayerNormLSTMCell(4), implementation="fused")


def test_output_does_not_change_when_the_input_weights_are_scaled():
    torch.manual_seed(1)
    layer = ls.RNN(ls.LayerNormLSTMCell(4, 3, epsilon=1e-12), return_sequences=True)  # eps would blur the invariance
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    layer.double()
    before = layer(x)
    with torch.no_grad():
        layer.cell.weight_ih.mul_(10.0)
    torch.testing.assert_close(layer(x), before, rtol=1e-6, atol=1e-6)


def test_gradients_flow_to_every_parameter_and_masks_work():
    torch.manual_seed(2)
    layer = ls.RNN(ls.LayerNormLSTMCell(4, 3), return_sequences=True)
    x = torch.randn(3, 5, 3)
    layer(x, lengths=torch.tensor([5, 2, 1])).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())
    assert layer.cell.bias[4:8].tolist() == [1.0] * 4  # unit forget bias, as LSTMCell
