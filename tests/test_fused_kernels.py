"""The fused kernels (`fused_lstm`, `fused_gru`, `fused_simple_rnn`) against a plain autograd
loop of the same math: outputs, gradients, `gradcheck`, masks anywhere, recurrent dropout,
and losses that use only some of the outputs (backward then gets None for the others).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import gradcheck

import longshort as ls

from longshort.fused_gru import gru_layer, gru_recurrence
from longshort import projection
from longshort.fused_lstm import lstm_layer, lstm_recurrence
from longshort.fused_simple_rnn import simple_rnn_layer, simple_rnn_recurrence

B, T, H = 3, 5, 4

# Holes anywhere: row 0 inner and trailing holes, row 1 all masked, row 2 leading and inner.
STEP_MASK = torch.tensor([[1, 0, 1, 1, 0], [0, 0, 0, 0, 0], [0, 1, 1, 0, 1]], dtype=torch.bool)


# -- the plain autograd loops, written from the cells' `recur` -----------------------------------
def _carry(mask: Optional[Tensor], t: int, new: Tensor, old: Tensor) -> tuple[Tensor, Tensor]:
    """(the output y_t, the carried state) of a step: y_t = m new, state = m new + (1 - m) old."""
    if mask is None:
        return new, new
    m = mask[:, t, None]
    return torch.where(m, new, 0), torch.where(m, new, old)


def lstm_reference(p, h, c, weight_hh, mask, r_mask):
    ys = []
    for t in range(p.shape[1]):
        h_in = h if r_mask is None else h * r_mask
        i, f, g, o = (p[:, t] + h_in @ weight_hh.T).chunk(4, dim=-1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        y, h = _carry(mask, t, h_new, h)
        c = c_new if mask is None else torch.where(mask[:, t, None], c_new, c)
        ys.append(y)
    return torch.stack(ys, dim=1), h, c


def gru_reference(p, h, weight_hh, bias_hh, mask, r_mask):
    ys = []
    for t in range(p.shape[1]):
        q = F.linear(h if r_mask is None else h * r_mask, weight_hh, bias_hh)
        p_r, p_z, p_n = p[:, t].chunk(3, dim=-1)
        q_r, q_z, q_n = q.chunk(3, dim=-1)
        r = torch.sigmoid(p_r + q_r)
        z = torch.sigmoid(p_z + q_z)
        n = torch.tanh(p_n + r * q_n)
        y, h = _carry(mask, t, (1 - z) * n + z * h, h)
        ys.append(y)
    return torch.stack(ys, dim=1), h


def simple_rnn_reference(p, h, weight_hh, nonlinearity, mask, r_mask):
    act = torch.tanh if nonlinearity == "tanh" else torch.relu
    ys = []
    for t in range(p.shape[1]):
        y, h = _carry(mask, t, act(p[:, t] + (h if r_mask is None else h * r_mask) @ weight_hh.T), h)
        ys.append(y)
    return torch.stack(ys, dim=1), h


# -- the kernels under one interface: run(inputs, mask, r_mask) -> outputs -----------------------
@dataclass(frozen=True)
class Kernel:
    gates: int
    states: int  # 2 for LSTM (h, c)
    bias: bool  # GRU's bias_hh
    fused: Callable
    reference: Callable


def time_major(recurrence: Callable) -> Callable:
    """`recurrence` called as the layers call it, time-major: p (T, B, G) contiguous in, y (T, B, H) out (turned back here)."""
    def batch_major(p, *rest):
        y, *states = recurrence(p.transpose(0, 1).contiguous(), *rest, time_major=True)
        return (y.transpose(0, 1), *states)
    return batch_major


KERNELS = {
    "lstm": Kernel(4, 2, False, lambda p, h, c, w, m, r: lstm_recurrence(p, (h, c), w, m, r), lstm_reference),
    "lstm_time_major": Kernel(4, 2, False, time_major(lambda p, h, c, w, m, r, **how: lstm_recurrence(p, (h, c), w, m, r, **how)),
                              lstm_reference),
    "lstm_torch_ops": Kernel(4, 2, False, lambda p, h, c, w, m, r: lstm_recurrence(p, (h, c), w, m, r), lstm_reference),
    "gru": Kernel(3, 1, True, gru_recurrence, gru_reference),
    "gru_torch_ops": Kernel(3, 1, True, gru_recurrence, gru_reference),
    "gru_time_major": Kernel(3, 1, True, time_major(gru_recurrence), gru_reference),
    "gru_nobias": Kernel(3, 1, False, lambda p, h, w, m, r: gru_recurrence(p, h, w, None, m, r),
                         lambda p, h, w, m, r: gru_reference(p, h, w, None, m, r)),
    "rnn_tanh": Kernel(1, 1, False, lambda p, h, w, m, r: simple_rnn_recurrence(p, h, w, "tanh", m, r),
                       lambda p, h, w, m, r: simple_rnn_reference(p, h, w, "tanh", m, r)),
    "rnn_relu": Kernel(1, 1, False, lambda p, h, w, m, r: simple_rnn_recurrence(p, h, w, "relu", m, r),
                       lambda p, h, w, m, r: simple_rnn_reference(p, h, w, "relu", m, r)),
    "rnn_relu_torch_ops": Kernel(1, 1, False, lambda p, h, w, m, r: simple_rnn_recurrence(p, h, w, "relu", m, r),
                                 lambda p, h, w, m, r: simple_rnn_reference(p, h, w, "relu", m, r)),
}
ALL_KERNELS = pytest.mark.parametrize("name", list(KERNELS))
MASKS = pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
DROPOUT = pytest.mark.parametrize("dropped", [False, True], ids=["nodrop", "drop"])


def make_inputs(kernel: Kernel, dtype=torch.float64, seed: int = 0) -> list[Tensor]:
    """The differentiable inputs in call order: p, h0 (, c0), weight_hh (, bias_hh)."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(B, T, kernel.gates * H)] + [(B, H)] * kernel.states + [(kernel.gates * H, H)]
    shapes += [(kernel.gates * H,)] if kernel.bias else []
    return [(torch.randn(s, generator=g, dtype=dtype) * 0.7).requires_grad_() for s in shapes]


def make_masks(masked: bool, dropped: bool, dtype=torch.float64):
    r_mask = None
    if dropped:  # a recurrent-dropout mask as `Cell.dropout_mask` draws it: 0 or 1 / keep
        g = torch.Generator().manual_seed(1)
        r_mask = torch.bernoulli(torch.full((B, H), 0.6, dtype=dtype), generator=g) / 0.6
    return (STEP_MASK if masked else None), r_mask


def run(name: str, impl: str, inputs, mask, r_mask):
    return getattr(KERNELS[name], impl)(*inputs, mask, r_mask)


def grads(outputs, inputs, upstream) -> list[Tensor]:
    """d(sum of upstream * outputs)/d inputs, None-free (zeros where an input gets no gradient)."""
    pairs = [(o, u) for o, u in zip(outputs, upstream) if u is not None]
    loss = sum((o * u).sum() for o, u in pairs)
    return [g if g is not None else torch.zeros_like(x) for g, x in zip(torch.autograd.grad(loss, inputs, allow_unused=True), inputs)]


def assert_close_all(got, want, tol):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)


# -- the tests ---------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)  # the upstream gradients


@pytest.fixture(autouse=True)
def _loops_in_c_or_torch_ops(request, monkeypatch):
    """"lstm", "gru", "rnn_tanh", ... run their loops in C (longshort.native) where it builds, as
    by default; the "..._torch_ops" entries run the same kernels with that switched off."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and str(callspec.params.get("name", "")).endswith("_torch_ops"):
        monkeypatch.setenv("LONGSHORT_NATIVE", "0")


@ALL_KERNELS
@MASKS
@DROPOUT
def test_float64_outputs_and_gradients_match_the_autograd_loop(name, masked, dropped):
    inputs = make_inputs(KERNELS[name])
    mask, r_mask = make_masks(masked, dropped)
    fused, reference = run(name, "fused", inputs, mask, r_mask), run(name, "reference", inputs, mask, r_mask)
    assert_close_all(fused, reference, 1e-12)
    upstream = [torch.randn_like(o) for o in reference]
    assert_close_all(grads(fused, inputs, upstream), grads(reference, inputs, upstream), 1e-12)
    if masked:  # masked steps output zero; an all-masked row keeps its initial state
        assert (fused[0][~mask] == 0).all()
        for final, start in zip(fused[1:], inputs[1:]):
            assert torch.equal(final[1], start[1])


@ALL_KERNELS
@pytest.mark.parametrize("copied", [True, False], ids=["W^T copied", "W as held"])
def test_the_forward_loop_with_either_layout_of_the_weight(monkeypatch, name, copied):
    """The C forward loops take a copy of W^T row-major from `native.TRANSPOSED_FROM_STEPS` steps on,
    and W as the layer holds it in shorter loops (`native.forward_weight`): both agree with the
    autograd loop, masks and recurrent dropout included."""
    from longshort import native

    monkeypatch.setattr(native, "TRANSPOSED_FROM_STEPS", 1 if copied else T + 1)
    flags, forward_weight = [], native.forward_weight

    def recording(*args):
        """native.forward_weight, noting the layout it gives (1: W^T copied)."""
        laid_out = forward_weight(*args)
        flags.append(laid_out[1])
        return laid_out

    for module in ("fused_lstm", "fused_gru", "fused_simple_rnn"):
        monkeypatch.setattr(f"longshort.{module}.forward_weight", recording)
    inputs = make_inputs(KERNELS[name], seed=9)
    mask, r_mask = make_masks(True, True)
    fused, reference = run(name, "fused", inputs, mask, r_mask), run(name, "reference", inputs, mask, r_mask)
    assert_close_all(fused, reference, 1e-12)
    upstream = [torch.randn_like(o) for o in reference]
    assert_close_all(grads(fused, inputs, upstream), grads(reference, inputs, upstream), 1e-12)
    assert flags == ([] if name.endswith("_torch_ops") else [int(copied)])


@ALL_KERNELS
@MASKS
@DROPOUT
def test_gradcheck(name, masked, dropped):
    inputs = make_inputs(KERNELS[name], seed=2)
    mask, r_mask = make_masks(masked, dropped)
    assert gradcheck(lambda *xs: run(name, "fused", xs, mask, r_mask), inputs)


def _time_major(y, *final):
    """The SimpleRNN layer's (y (B, T, H), h) as the others return it: y (T, B, H)."""
    return (y.transpose(0, 1), *final)


# layer: (the kernel that projects x itself, given (x, W_ih, b_ih, h0, c0 or None, W_hh, b_hh or None, masks) -> (y time-major, *states),
#         the autograd loop over p = F.linear(x, W_ih, b_ih), gates, states)
LAYERS = {
    "lstm": (lambda x, w, b, h, c, whh, bhh, m, r: lstm_layer(x, w, b, (h, c), whh, m, r),
             lambda p, h, c, whh, bhh, m, r: lstm_reference(p, h, c, whh, m, r), 4, 2),
    "gru": (lambda x, w, b, h, c, whh, bhh, m, r: gru_layer(x, w, b, h, whh, bhh, m, r),
            lambda p, h, c, whh, bhh, m, r: gru_reference(p, h, whh, bhh, m, r), 3, 1),
    **{f"rnn_{act}": (lambda x, w, b, h, c, whh, bhh, m, r, act=act: _time_major(*simple_rnn_layer(x, w, b, h, whh, act, m, r)),
                      lambda p, h, c, whh, bhh, m, r, act=act: simple_rnn_reference(p, h, whh, act, m, r), 1, 1)
       for act in ("tanh", "relu")},
}


@MASKS
@DROPOUT
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("time_major_rows", [False, True], ids=["x copied", "x read in place"])
@pytest.mark.parametrize("layer", list(LAYERS))
def test_the_kernel_projects_its_input_itself(layer, masked, dropped, bias, time_major_rows):
    """`lstm_layer(x, W_ih, b, ...)`, `gru_layer` and `simple_rnn_layer`, whose kernels compute p = x W_ih^T + b into a
    buffer of their own and its gradients by hand (`longshort.projection`), against the autograd
    loop over F.linear(x, W_ih, b): outputs and every input's gradient in float64, and gradcheck.
    x whose time-major rows are contiguous (the output of a fused layer below) is read where it
    is; any other x is copied."""
    fused_layer, reference_layer, gates, states = LAYERS[layer]
    g = torch.Generator().manual_seed(3)
    features = 3
    shapes = [(T, B, features), (gates * H, features), (B, H)] + [(B, H)] * (states - 1) + [(gates * H, H)]
    shapes += [(gates * H,)] * (2 if layer == "gru" else 1) if bias else []  # b_ih, and b_hh for the GRU
    inputs = [(torch.randn(shape, generator=g, dtype=torch.float64) * 0.7).requires_grad_() for shape in shapes]
    mask, r_mask = make_masks(masked, dropped)

    def unpack(x_tm, weight_ih, h0, *rest):
        """(x (B, T, F) as `time_major_rows` says, W_ih, b_ih, h0, c0, W_hh, b_hh)."""
        c0 = rest[0] if states == 2 else None
        weight_hh, *biases = rest[states - 1:]
        bias_ih, bias_hh = (biases + [None, None])[:2]
        x = x_tm.transpose(0, 1) if time_major_rows else x_tm.transpose(0, 1).contiguous()
        return x, weight_ih, bias_ih, h0, c0, weight_hh, bias_hh

    def fused(*tensors):
        y, *final = fused_layer(*unpack(*tensors), mask, r_mask)
        return (y.transpose(0, 1), *final)

    def reference(*tensors):
        x, weight_ih, bias_ih, *recurrence = unpack(*tensors)
        return reference_layer(F.linear(x, weight_ih, bias_ih), *recurrence, mask, r_mask)

    got, want = fused(*inputs), reference(*inputs)
    assert_close_all(got, want, 1e-12)
    upstream = [torch.randn_like(o) for o in want]
    assert_close_all(grads(got, inputs, upstream), grads(want, inputs, upstream), 1e-12)
    assert gradcheck(fused, inputs)
    assert (projection.time_major_rows(unpack(*inputs)[0]).data_ptr() == inputs[0].data_ptr()) == time_major_rows


@ALL_KERNELS
@MASKS
@DROPOUT
def test_a_batch_of_one_matches_the_autograd_loop(name, masked, dropped):
    """B = 1, where the kernels' step matmuls are matrix-vector products (SimpleRNN skips the W_hh^T copy)."""
    kernel = KERNELS[name]
    inputs = [(x.detach()[:1] if i <= kernel.states else x.detach()).requires_grad_() for i, x in enumerate(make_inputs(kernel, seed=6))]
    mask, r_mask = make_masks(masked, dropped)
    mask, r_mask = (None if mask is None else mask[:1]), (None if r_mask is None else r_mask[:1])
    fused, reference = run(name, "fused", inputs, mask, r_mask), run(name, "reference", inputs, mask, r_mask)
    assert_close_all(fused, reference, 1e-12)
    upstream = [torch.randn_like(o) for o in reference]
    assert_close_all(grads(fused, inputs, upstream), grads(reference, inputs, upstream), 1e-12)


@ALL_KERNELS
@MASKS
@DROPOUT
def test_float32_matches_the_autograd_loop(name, masked, dropped):
    inputs = make_inputs(KERNELS[name], dtype=torch.float32, seed=3)
    mask, r_mask = make_masks(masked, dropped, dtype=torch.float32)
    fused, reference = run(name, "fused", inputs, mask, r_mask), run(name, "reference", inputs, mask, r_mask)
    assert_close_all(fused, reference, 1e-5)
    upstream = [torch.randn_like(o) for o in reference]
    assert_close_all(grads(fused, inputs, upstream), grads(reference, inputs, upstream), 1e-5)


OUTPUT_NAMES = {name: ("y", "h_T", "c_T") if kernel.states == 2 else ("y", "h_T") for name, kernel in KERNELS.items()}


@MASKS
@pytest.mark.parametrize("name, used", [(name, used) for name, outputs in OUTPUT_NAMES.items() for used in outputs])
def test_a_loss_on_one_output_only(name, used, masked):
    """The backward gets None for the outputs the loss does not use; with zeros instead it must agree too."""
    inputs = make_inputs(KERNELS[name], seed=4)
    mask, _ = make_masks(masked, False)
    fused, reference = run(name, "fused", inputs, mask, None), run(name, "reference", inputs, mask, None)
    upstream = [torch.randn_like(o) if output == used else None for output, o in zip(OUTPUT_NAMES[name], reference)]
    want = grads(reference, inputs, upstream)
    assert_close_all(grads(fused, inputs, upstream), want, 1e-12)
    fused = run(name, "fused", inputs, mask, None)
    zeros = [u if u is not None else torch.zeros_like(o) for u, o in zip(upstream, reference)]
    assert_close_all(grads(fused, inputs, zeros), want, 1e-12)


@ALL_KERNELS
def test_inputs_are_not_written(name):
    """p arriving as a view of time-major storage (T, B, G*H), and with B = T = 1, stays as it was."""
    for batch, steps in ((B, T), (1, 1)):
        kernel = KERNELS[name]
        storage = torch.randn(steps, batch, kernel.gates * H, dtype=torch.float64)
        p = storage.transpose(0, 1)  # (B, T, G*H)
        inputs = [x.detach() for x in make_inputs(kernel)]
        states, weights = inputs[1 : 1 + kernel.states], inputs[1 + kernel.states :]
        before = storage.clone()
        run(name, "fused", [p, *(s[:batch] for s in states), *weights], None, None)
        assert torch.equal(storage, before)


@ALL_KERNELS
def test_masked_steps_ignore_what_the_padding_holds(name):
    """NaN at masked steps of p changes nothing: outputs as with zeros there, and finite gradients."""
    inputs = make_inputs(KERNELS[name], seed=5)
    padded = inputs[0].detach().masked_fill(~STEP_MASK[..., None], float("nan")).requires_grad_()
    want = run(name, "reference", [inputs[0].detach().masked_fill(~STEP_MASK[..., None], 0.0), *inputs[1:]], STEP_MASK, None)
    got = run(name, "fused", [padded, *inputs[1:]], STEP_MASK, None)
    assert_close_all(got, want, 1e-12)
    upstream = [torch.randn(o.shape, dtype=o.dtype) for o in got]
    assert all(g.isfinite().all() for g in grads(got, [padded, *inputs[1:]], upstream))


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn_tanh"])
def test_double_backward_raises(name):
    """The hand-written backward is not itself differentiable: asking for it must fail, not mislead."""
    inputs = make_inputs(KERNELS[name])
    scale = torch.ones(H, dtype=torch.float64, requires_grad=True)  # so that dy needs a graph too
    y, *final = run(name, "fused", inputs, None, None)
    (dp,) = torch.autograd.grad((y * scale).sum() + sum(state.sum() for state in final), inputs[:1], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        dp.sum().backward()


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "SimpleRNN", "LSTM peephole", "LayerNormLSTM"])
@pytest.mark.parametrize("masked", [False, True], ids=["no mask", "lengths"])
def test_gradients_are_ordinary_tensors(kind, masked):
    """The kernels' loops run under inference mode; no gradient may come out as an inference tensor
    (an optimizer or clip_grad_norm_ updating it in place would then fail)."""
    make = {"LSTM": lambda: ls.LSTM(4, 3), "GRU": lambda: ls.GRU(4, 3), "SimpleRNN": lambda: ls.SimpleRNN(4, 3),
            "LSTM peephole": lambda: ls.LSTM(4, 3, peephole=True), "LayerNormLSTM": lambda: ls.LayerNormLSTM(4, 3)}
    layer = ls.RNN(make[kind]().cell, return_state=True, implementation="fused")
    x = torch.randn(2, 5, 3, requires_grad=True)
    initial = ls.rnn.map_state(lambda s: torch.randn_like(s).requires_grad_(), layer.cell.initial_state(2, x))
    output, *state = layer(x, initial_state=initial, lengths=torch.tensor([5, 2]) if masked else None)
    (output.sum() + sum(s.sum() for s in state)).backward()
    grads = [x.grad, *(s.grad for s in ls.rnn.flatten_state(initial)), *(p.grad for p in layer.parameters())]
    assert all(g is not None and not g.is_inference() for g in grads)
    torch.nn.utils.clip_grad_norm_(layer.parameters(), 1e-3)  # scales the gradients in place
