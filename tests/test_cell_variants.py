"""LayerNormLSTMCell, the peephole LSTMCell and Zoneout: their equations, their place in the dispatch."""

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


def test_runs_the_fused_kernel_and_says_why_not_torchs():
    decision = ls.RNN(ls.LayerNormLSTMCell(4)).dispatch()
    assert decision.implementation == "fused"
    assert decision.refused["vendor"] == "torch's LSTM has no layer normalisation"
    with pytest.raises(ValueError, match="no layer normalisation"):
        ls.RNN(ls.LayerNormLSTMCell(4), implementation="vendor")


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


def _copy_lstm_weights(source, target):
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias"):
            getattr(target, name).copy_(getattr(source, name))


def test_peephole_cell_starts_as_the_plain_lstm_and_follows_its_equations():
    torch.manual_seed(3)
    peephole = ls.LSTMCell(4, 3, peephole=True).double()
    plain = ls.LSTMCell(4, 3).double()
    _copy_lstm_weights(peephole, plain)
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    torch.testing.assert_close(ls.RNN(peephole)(x), ls.RNN(plain, implementation="loop")(x), rtol=1e-12, atol=1e-12)

    with torch.no_grad():
        for w in (peephole.weight_ci, peephole.weight_cf, peephole.weight_co):
            w.copy_(torch.randn_like(w))
    h = c = torch.zeros(2, 4, dtype=torch.float64)
    for t in range(6):
        z = x[:, t] @ peephole.weight_ih.T + h @ peephole.weight_hh.T + peephole.bias
        z_i, z_f, z_g, z_o = z.split(4, dim=1)
        i, f = torch.sigmoid(z_i + peephole.weight_ci * c), torch.sigmoid(z_f + peephole.weight_cf * c)
        c = f * c + i * torch.tanh(z_g)
        h = torch.sigmoid(z_o + peephole.weight_co * c) * torch.tanh(c)
    torch.testing.assert_close(ls.RNN(peephole)(x), h, rtol=1e-12, atol=1e-12)
    assert ls.RNN(peephole).dispatch().implementation == "fused"


def test_zoneout_in_evaluation_blends_old_and_new_state():
    torch.manual_seed(4)
    cell = ls.LSTMCell(4, 3).double()
    layer = ls.RNN(ls.Zoneout(cell, 0.25), return_state=True).eval()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    state = cell.initial_state(2, x)
    for t in range(5):
        _, new = cell(x[:, t], state)
        state = ls.LSTMState(*(0.25 * old + 0.75 * n for old, n in zip(state, new)))
    out, h, c = layer(x)
    torch.testing.assert_close(h, state.h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c, state.c, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, state.h)


def test_zoneout_in_training_keeps_each_unit_old_or_new():
    torch.manual_seed(5)
    cell = ls.GRUCell(64, 3)
    zoned = ls.Zoneout(cell, 0.5).train()
    x_t, h_prev = torch.randn(8, 3), torch.randn(8, 64)
    _, h_new = cell(x_t, h_prev)
    _, h = zoned(x_t, h_prev)
    kept = h == h_prev
    assert bool((kept | (h == h_new)).all())
    assert 0.3 < kept.float().mean() < 0.7
    assert ls.RNN(zoned).dispatch().refused["fused"] == "Zoneout has no fused kernel"
    with pytest.raises(ValueError, match="zoneout rate must lie in"):
        ls.Zoneout(cell, 1.0)
