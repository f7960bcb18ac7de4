"""Every layer on every path it can run, in float64, float32, float32 under bfloat16 autocast, and
bfloat16 parameters: forward and backward run, outputs and gradients come out in the documented
dtype, without NaN, close to a float64 reference (see the README's "Numerical guards and dtypes")."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

import longshort as ls

B, T, F, H = 3, 7, 4, 5
PATHS = ("vendor", "fused", "loop")


class MinimalRNNCell(nn.Module):
    """The README's own cell: it runs on the loop and the compiled path."""

    def __init__(self, units: int, input_size: int):
        super().__init__()
        self.kernel = nn.Linear(input_size, units)
        self.recurrent_kernel = nn.Linear(units, units, bias=False)

    def initial_state(self, batch_size, like):
        return like.new_zeros(batch_size, self.recurrent_kernel.in_features)

    def forward(self, x_t, h_prev):
        h = torch.tanh(self.kernel(x_t) + self.recurrent_kernel(h_prev))
        return h, h


def away_from_the_kink(bias: Tensor) -> Tensor:
    """ReLU's bias: 1 keeps pre-activations off 0, where a bfloat16 rounding could switch a unit off
    and its gradient with it (a real difference, but not what these tests look for)."""
    return nn.init.constant_(bias, 1.0)


# name -> (make(implementation), ends in a Dense: its output follows autocast)
MODELS = {
    "LSTM": (lambda path: ls.LSTM(H, F, return_sequences=True, implementation=path), False),
    "GRU": (lambda path: ls.GRU(H, F, return_sequences=True, implementation=path), False),
    "SimpleRNN(tanh)": (lambda path: ls.SimpleRNN(H, F, return_sequences=True, implementation=path), False),
    "SimpleRNN(relu)": (lambda path: ls.SimpleRNN(H, F, activation="relu", bias_initializer=away_from_the_kink,
                                                  return_sequences=True, implementation=path), False),
    "LayerNormLSTM": (lambda path: ls.LayerNormLSTM(H, F, return_sequences=True, implementation=path), False),
    "LSTM(peephole)": (lambda path: ls.LSTM(H, F, peephole=True, return_sequences=True, implementation=path), False),
    "LSTM(zoneout)": (lambda path: ls.LSTM(H, F, zoneout=0.3, return_sequences=True, implementation=path), False),
    "RNN(LSTMCell)": (lambda path: ls.RNN(ls.LSTMCell(H, F), return_sequences=True, implementation=path), False),
    "RNN(GRUCell)": (lambda path: ls.RNN(ls.GRUCell(H, F), implementation=path), False),
    "RNN(SimpleRNNCell)": (lambda path: ls.RNN(ls.SimpleRNNCell(H, F), implementation=path), False),
    "RNN(LayerNormLSTMCell)": (lambda path: ls.RNN(ls.LayerNormLSTMCell(H, F), implementation=path), False),
    "RNN(Zoneout(GRUCell))": (lambda path: ls.RNN(ls.Zoneout(ls.GRUCell(H, F), 0.3), implementation=path), False),
    "RNN(MinimalRNNCell)": (lambda path: ls.RNN(MinimalRNNCell(H, F), return_sequences=True, implementation=path), False),
    "Bidirectional(LSTM)": (lambda path: ls.Bidirectional(ls.LSTM(H, F, return_sequences=True, implementation=path)), False),
    "TimeDistributed(Dense)": (lambda path: ls.TimeDistributed(ls.Dense(H, F)), True),
    "Sequential(LSTM, GRU, Dense)": (
        lambda path: ls.Sequential(
            ls.LSTM(H, F, return_sequences=True, implementation=path), ls.GRU(H, H, implementation=path), ls.Dense(2, H)
        ),
        True,
    ),
}


def runnable(make, path: str) -> bool:
    """Whether the model can run on `path` (a layer that cannot raises at construction)."""
    try:
        make(path)
    except ValueError:
        return False
    return True


CASES = [
    pytest.param(name, path, id=f"{name}-{path}")
    for name, (make, _) in MODELS.items()
    for path in (PATHS if name != "TimeDistributed(Dense)" else ("none",))
    if path == "none" or runnable(make, path)
]


def forward_backward(model: nn.Module, x: Tensor, cotangent: Tensor, autocast: bool = False):
    """Output, input gradient and parameter gradients of `(output * cotangent).sum()`."""
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    torch.manual_seed(1)  # zoneout draws its masks: the same ones in every dtype (compared in eval mode anyway)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = model(x)
    (y.double() * cotangent).sum().backward()
    return y, x.grad, {name: p.grad for name, p in model.named_parameters()}


def relative_error(got: Tensor, want: Tensor) -> float:
    """Normwise: |got - want| / |want| in float64."""
    return float((got.detach().double() - want.detach()).norm() / want.detach().norm().clamp_min(1e-12))


def reference(name: str, path: str):
    """The model in float64 with its input and cotangent, and the float64 output and gradients."""
    make, ends_in_dense = MODELS[name]
    torch.manual_seed(0)
    model = make(path if path != "none" else "auto").double()
    model.eval()  # zoneout: the expected blend, the same in every dtype
    x = torch.randn(B, T, F, dtype=torch.float64)
    with torch.no_grad():
        shape = model(x).shape
    cotangent = torch.randn(shape, dtype=torch.float64)
    return model, x, cotangent, forward_backward(model, x, cotangent), ends_in_dense


def check(result, want, dtype: torch.dtype, x_dtype: torch.dtype, parameter_dtype: torch.dtype, tolerance: float) -> None:
    (y, dx, grads), (y64, dx64, grads64) = result, want
    assert y.dtype == dtype
    assert dx.dtype == x_dtype
    assert torch.isfinite(y).all() and torch.isfinite(dx).all()
    assert relative_error(y, y64) < tolerance
    assert relative_error(dx, dx64) < tolerance
    for name, grad in grads.items():
        assert grad is not None and grad.dtype == parameter_dtype, name
        assert torch.isfinite(grad).all(), name
        assert relative_error(grad, grads64[name]) < tolerance, name


@pytest.mark.parametrize("name, path", CASES)
def test_float64_float32_autocast_and_bfloat16(name, path):
    model64, x, cotangent, want, ends_in_dense = reference(name, path)
    model32 = copy.deepcopy(model64).float()
    float32 = forward_backward(model32, x.float(), cotangent)
    check(float32, want, torch.float32, torch.float32, torch.float32, 1e-5)

    # Under autocast a recurrent layer computes in its parameters' dtype: exactly the float32 run.
    autocast = forward_backward(model32, x.float(), cotangent, autocast=True)
    if ends_in_dense:  # the Dense follows autocast, as torch's Linear does
        check(autocast, want, torch.bfloat16, torch.float32, torch.float32, 3e-2)
    else:
        check(autocast, want, torch.float32, torch.float32, torch.float32, 1e-5)
        assert torch.equal(autocast[0], float32[0])
        assert all(torch.equal(autocast[2][key], float32[2][key]) for key in float32[2])

    # A bfloat16 input (from a layer before, under autocast) is converted; its gradient comes back in bfloat16.
    from_bf16 = forward_backward(model32, x.bfloat16(), cotangent, autocast=True)
    assert from_bf16[1].dtype == torch.bfloat16 and torch.isfinite(from_bf16[0]).all()

    # bfloat16 parameters: everything in bfloat16 (8-bit mantissa, a few steps: a few per cent).
    bfloat16 = forward_backward(copy.deepcopy(model64).to(torch.bfloat16), x.bfloat16(), cotangent)
    check(bfloat16, want, torch.bfloat16, torch.bfloat16, torch.bfloat16, 6e-2)


@pytest.mark.filterwarnings("ignore:longshort. TorchInductor could not compile:RuntimeWarning")
@pytest.mark.parametrize("make", [
    lambda: ls.LSTM(H, F, return_sequences=True, implementation="compiled"),
    lambda: ls.RNN(MinimalRNNCell(H, F), return_sequences=True, implementation="compiled"),
], ids=["LSTM", "MinimalRNNCell"])
def test_compiled_path_in_float32_under_autocast_and_in_bfloat16(make, monkeypatch):
    """The compiled path's own machinery (tracing, its backward through time, the all-steps pass) in
    each dtype, with TorchInductor's compile left out (20 to 50 s a dtype on a cold cache: it runs the
    traced graphs, as where there is no compiler). test_compiled.py compiles float64 with Inductor."""
    import torch._inductor.compile_fx

    def no_compile(*args, **kwargs):
        raise RuntimeError("left out by the test")

    monkeypatch.setattr(torch._inductor.compile_fx, "compile_fx_inner", no_compile)
    torch.manual_seed(0)
    model = make().double()
    x = torch.randn(B, T, F, dtype=torch.float64)
    cotangent = torch.randn(B, T, H, dtype=torch.float64)
    reference = ls.RNN(copy.deepcopy(model.cell), return_sequences=True, implementation="loop")
    want = forward_backward(reference, x, cotangent)
    bfloat16 = forward_backward(copy.deepcopy(model).to(torch.bfloat16), x.bfloat16(), cotangent)
    check(bfloat16, want, torch.bfloat16, torch.bfloat16, torch.bfloat16, 6e-2)
    model.float()
    float32 = forward_backward(model, x.float(), cotangent)
    check(float32, want, torch.float32, torch.float32, torch.float32, 1e-5)
    autocast = forward_backward(model, x.float(), cotangent, autocast=True)  # the same traced step: no new trace
    assert torch.equal(autocast[0], float32[0])
    assert len(model._compiled_loop.steps) == 1


def test_an_input_of_another_dtype_is_refused_outside_autocast():
    with pytest.raises(TypeError, match=r"LSTM has torch.float32 parameters but got a torch.float64 input.*torch.autocast"):
        ls.LSTM(H, F)(torch.randn(B, T, F, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"GRU has torch.bfloat16 parameters but got a torch.float32 input"):
        ls.GRU(H, F).to(torch.bfloat16)(torch.randn(B, T, F))


def test_under_autocast_the_initial_state_is_converted_and_the_state_is_float32():
    layer = ls.LSTM(H, F, return_state=True)
    x = torch.randn(B, T, F)
    state = ls.LSTMState(torch.randn(B, H), torch.randn(B, H))
    want = layer(x, initial_state=state)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer(x.bfloat16(), initial_state=ls.LSTMState(*(s.bfloat16() for s in state)))
    assert [t.dtype for t in got] == [torch.float32] * 3
    assert (got[0] - want[0]).abs().max() < 3e-2  # the bfloat16 inputs and state were rounded, nothing else
    stateful = ls.GRU(H, F, stateful=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stateful(x)
        stateful(x.bfloat16())
    assert stateful.state.dtype == torch.float32
