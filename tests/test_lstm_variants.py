"""LSTM's `peephole` and `zoneout` options and `LayerNormLSTM` in the layers: the fused kernel equals
the readable loop (outputs, final states, every gradient), what `auto` picks and why, the
options' checks, `state_dict`.
"""

import re

import pytest
import torch

import longshort as ls
from longshort import cells

H, F, B, T = 4, 3, 3, 6
LENGTHS = torch.tensor([6, 2, 0])  # a full row, a short one, an empty one

VARIANTS = {
    "peephole": lambda **options: ls.LSTM(H, F, peephole=True, **options),
    "zoneout": lambda **options: ls.LSTM(H, F, zoneout=0.3, **options),
    "peephole+zoneout": lambda **options: ls.LSTM(H, F, peephole=True, zoneout=0.3, **options),
    "layer_norm": lambda **options: ls.LayerNormLSTM(H, F, **options),
    "layer_norm+zoneout": lambda **options: ls.LayerNormLSTM(H, F, zoneout=0.3, **options),
}


def _randomise(layer: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random non-zero weights everywhere (peephole weights included), gains around 1; float64."""
    layer.double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in layer.named_parameters():
            param.copy_(torch.randn(param.shape, generator=g, dtype=param.dtype) * 0.5 + ("gain" in name))
    return layer


def _outputs_and_grads(layer, x, initial, lengths, seed):
    """(y, h, c) and the gradients of x, h0, c0 and every parameter, after `torch.manual_seed(seed)`."""
    x, h0, c0 = (t.detach().clone().requires_grad_() for t in (x, *initial))
    torch.manual_seed(seed)  # the same dropout and zoneout draws on every path
    outputs = layer(x, initial_state=ls.LSTMState(h0, c0), lengths=lengths)
    loss = sum(o.sin().sum() for o in outputs)
    return [o.detach() for o in outputs], torch.autograd.grad(loss, [x, h0, c0, *layer.parameters()])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("training, dropped", [(True, False), (True, True), (False, True)], ids=["train", "train-dropout", "eval-dropout"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_fused_equals_the_loop(variant, training, dropped, masked):
    """In training the fused path draws the zoneout masks of all steps in one call and the loop one
    step at a time, in the same order (see `LSTMCell.zoneout_masks`), so the same seed gives the same
    draws; in evaluation dropout drops nothing and zoneout blends, on both paths."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, F, generator=g, dtype=torch.float64)
    initial = [torch.randn(B, H, generator=g, dtype=torch.float64) for _ in "hc"]
    options = dict(return_sequences=True, return_state=True)
    if dropped:
        options.update(dropout=0.3, recurrent_dropout=0.4)
    results = {}
    for path in ("fused", "loop"):
        layer = _randomise(VARIANTS[variant](implementation=path, **options), seed=1).train(training)
        results[path] = _outputs_and_grads(layer, x, initial, LENGTHS if masked else None, seed=2)
        assert layer.last_dispatch.implementation == path
    (fused_outputs, fused_grads), (loop_outputs, loop_grads) = results["fused"], results["loop"]
    assert len(fused_grads) == len(loop_grads) >= 6
    for ours, theirs in zip(fused_outputs + list(fused_grads), loop_outputs + list(loop_grads)):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_zoneout_option_is_the_zoneout_wrapper_with_the_same_draws(masked):
    """`LSTM(zoneout=r)` (fused) computes what `RNN(Zoneout(LSTMCell(), r))` (loop) does, draw for draw,
    and in training those draws matter: the output is neither the plain LSTM's nor the expectation's."""
    x = torch.randn(B, T, F, dtype=torch.float64)
    lengths = LENGTHS if masked else None
    option = _randomise(ls.LSTM(H, F, zoneout=0.5, return_sequences=True, return_state=True), seed=3)
    wrapper = ls.RNN(ls.Zoneout(ls.LSTMCell(H, F), 0.5), return_sequences=True, return_state=True).double()
    wrapper.cell.cell.load_state_dict(option.cell.state_dict())
    outputs = {}
    for name, layer in (("option", option), ("wrapper", wrapper)):
        torch.manual_seed(4)
        outputs[name] = layer(x, lengths=lengths)
    assert option.last_dispatch.implementation == "fused" and wrapper.last_dispatch.implementation == "loop"
    for ours, theirs in zip(outputs["option"], outputs["wrapper"]):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    plain = ls.LSTM(H, F, return_sequences=True).double()
    plain.load_state_dict(option.state_dict())
    assert not torch.allclose(outputs["option"][0], plain(x, lengths=lengths))
    assert not torch.allclose(outputs["option"][0], option.eval()(x, lengths=lengths)[0])


def test_the_plain_lstm_keeps_its_own_kernel_and_the_variants_take_theirs(monkeypatch):
    """The variants' kernel projects x itself, but for LayerNormLSTM, whose LN_x comes between."""
    calls = []
    for name in ("lstm_layer", "lstm_variant_layer", "lstm_variant_recurrence"):
        kernel = getattr(cells, name)
        monkeypatch.setattr(cells, name, lambda *a, _name=name, _kernel=kernel, **kw: calls.append(_name) or _kernel(*a, **kw))
    expected = {
        "lstm_layer": [ls.LSTM(H, F), ls.LSTM(H, F, zoneout=0.0, recurrent_dropout=0.2)],
        "lstm_variant_layer": [ls.LSTM(H, F, peephole=True), ls.LSTM(H, F, zoneout=0.1), ls.LSTM(H, F, zoneout=0.1).eval()],
        "lstm_variant_recurrence": [ls.LayerNormLSTM(H, F), ls.LayerNormLSTM(H, F, zoneout=0.1)],
    }
    x = torch.randn(B, T, F)
    for kernel, layers in expected.items():
        for layer in layers:
            calls.clear()
            layer(x, lengths=LENGTHS)  # masked: the plain LSTM runs fused too
            assert calls == [kernel], layer


VENDOR_REFUSALS = {
    "peephole": "torch's LSTM has no peephole connections",
    "zoneout": "torch's LSTM has no zoneout, and in evaluation zoneout's blend of old and new state is not the plain LSTM either",
    "peephole+zoneout": "torch's LSTM has no peephole connections",
    "layer_norm": "torch's LSTM has no layer normalisation",
    "layer_norm+zoneout": "torch's LSTM has no layer normalisation",
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_auto_runs_every_variant_fused_and_says_why_not_vendor(variant):
    layer = VARIANTS[variant](recurrent_dropout=0.2)
    for training in (True, False):  # zoneout's evaluation blend is not the plain LSTM either
        for masked in (False, True):
            decision = layer.train(training).dispatch(masked=masked)
            assert decision.implementation == "fused" and "fused" not in decision.refused
            assert decision.refused["vendor"] == VENDOR_REFUSALS[variant]
    with pytest.raises(ValueError, match=re.escape(f"implementation='vendor') cannot run this configuration: {VENDOR_REFUSALS[variant]}")):
        VARIANTS[variant](implementation="vendor")


def test_auto_keeps_vendor_for_the_plain_lstm_and_the_loop_for_other_math():
    for plain in (ls.LSTM(H), ls.LSTM(H, zoneout=0.0), ls.LSTM(H, peephole=False), ls.LSTM(H, zoneout=0.0).eval()):
        decision = plain.dispatch()
        assert decision.implementation == "vendor" and "vendor" not in decision.refused
    other_activation = ls.LSTM(H, peephole=True, zoneout=0.1, recurrent_activation="hard_sigmoid").dispatch(masked=True)
    assert other_activation.implementation == "loop"
    assert other_activation.refused["fused"] == "the kernels compute only tanh as activation and sigmoid as recurrent_activation"

    class HalvedLayerNormLSTMCell(ls.LayerNormLSTMCell):
        def recur(self, p_t, state):
            h, new_state = super().recur(p_t, state)
            return 0.5 * h, ls.LSTMState(0.5 * new_state.h, new_state.c)

    own_math = ls.RNN(HalvedLayerNormLSTMCell(H)).dispatch()
    assert own_math.implementation == "loop"
    assert own_math.refused["fused"] == "HalvedLayerNormLSTMCell overrides recur, which the kernels do not compute"


def test_a_fresh_peephole_lstm_is_the_plain_lstm():
    peephole = ls.LSTM(H, F, peephole=True, return_sequences=True).double()
    assert all(torch.equal(w, torch.zeros(H, dtype=torch.float64)) for w in (peephole.cell.weight_ci, peephole.cell.weight_cf, peephole.cell.weight_co))
    plain = ls.LSTM(H, F, return_sequences=True).double()
    missing, unexpected = plain.load_state_dict(peephole.state_dict(), strict=False)
    assert missing == [] and unexpected == ["cell.weight_ci", "cell.weight_cf", "cell.weight_co"]
    x = torch.randn(B, T, F, dtype=torch.float64)
    with torch.no_grad():  # where "auto" takes torch's kernel for the plain LSTM
        torch.testing.assert_close(peephole(x), plain(x), rtol=1e-10, atol=1e-10)
    assert (peephole.last_dispatch.implementation, plain.last_dispatch.implementation) == ("fused", "vendor")
    _randomise(peephole, seed=5)
    peephole.cell.reset_parameters()  # draws fresh weights, and the peephole weights start at zero again
    assert not peephole.cell.weight_co.any()


def test_reset_parameters_puts_the_layer_norms_back_to_gain_1_and_shift_0():
    layer = ls.LayerNormLSTM(H, F)
    _randomise(layer, seed=6)
    layer.cell.reset_parameters()
    cell = layer.cell
    assert all(torch.equal(gain, torch.ones_like(gain)) for gain in (cell.gain_ih, cell.gain_hh, cell.gain_c))
    assert not cell.shift_c.any() and torch.equal(cell.bias[H : 2 * H], torch.ones(H))  # and the forget bias is 1 again


@pytest.mark.parametrize("make, message", [
    (lambda: ls.LSTM(H, zoneout=1.0), "zoneout must lie in [0, 1), got 1.0"),
    (lambda: ls.LSTMCell(H, zoneout=-0.1), "zoneout must lie in [0, 1), got -0.1"),
    (lambda: ls.LayerNormLSTM(H, zoneout=1.5), "zoneout must lie in [0, 1), got 1.5"),
    (lambda: ls.LSTM(H, peephole=1), "peephole must be True or False, got 1"),
    (lambda: ls.LSTMCell(H, peephole="yes"), "peephole must be True or False, got 'yes'"),
])
def test_bad_option_values_are_refused_by_name(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


@pytest.mark.parametrize("options, reason", [
    ({"peephole": True}, "no peephole connections"),
    ({"zoneout": 0.1}, "no zoneout"),
])
def test_to_torch_refuses_what_torch_nn_cannot_hold(options, reason):
    with pytest.raises(ValueError, match=f"LSTM cannot hold this layer: torch's LSTM has {reason}"):
        ls.LSTM(H, F, **options).to_torch()


@pytest.mark.parametrize("make, keys", [
    (lambda size: ls.LSTM(H, size, peephole=True, zoneout=0.2),
     {"cell.weight_ih", "cell.weight_hh", "cell.bias", "cell.weight_ci", "cell.weight_cf", "cell.weight_co"}),
    (lambda size: ls.LayerNormLSTM(H, size, zoneout=0.2),
     {"cell.weight_ih", "cell.weight_hh", "cell.bias", "cell.gain_ih", "cell.gain_hh", "cell.gain_c", "cell.shift_c"}),
    (lambda size: ls.LSTM(H, size), {"cell.weight_ih", "cell.weight_hh", "cell.bias"}),
], ids=["peephole+zoneout", "layer_norm", "plain"])
def test_state_dict_round_trip(make, keys, tmp_path):
    source = _randomise(make(F), seed=6).eval()
    assert set(source.state_dict()) == keys
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    target = make(None).double().eval()  # unbuilt: loading builds it
    target.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True))
    x = torch.randn(B, T, F, dtype=torch.float64)
    assert torch.equal(target(x), source(x))
