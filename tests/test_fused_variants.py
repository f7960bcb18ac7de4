"""The fused LSTM variants (`fused_lstm_variants`: peephole, layer norm, zoneout, step and recurrent
masks, alone and together) against a plain autograd loop of the same math, `gradcheck`, the
readable cells of `longshort.cells`, and the plain fused LSTM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import gradcheck

from longshort.cells import LayerNormLSTMCell, LSTMCell, LSTMState, Zoneout
from longshort.fused_lstm import lstm_recurrence
from longshort.fused_lstm_variants import LayerNormWeights, ZoneoutKeep, lstm_variant_layer, lstm_variant_recurrence

T, B, H = 4, 3, 3

# Holes anywhere: row 0 an inner and a trailing hole, row 1 all masked, row 2 leading and trailing.
STEP_MASK = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 1, 0]], dtype=torch.bool)

OPTIONS = ("peephole", "layer_norm", "zoneout_masks", "zoneout_rate", "step_mask", "recurrent_mask")
CONFIGS = {name: (name,) for name in OPTIONS}
CONFIGS["all_zoneout_masks"] = tuple(o for o in OPTIONS if o != "zoneout_rate")
CONFIGS["all_zoneout_rate"] = tuple(o for o in OPTIONS if o != "zoneout_masks")
ALL_CONFIGS = pytest.mark.parametrize("config", list(CONFIGS))


# -- the plain autograd loop of the step math -----------------------------------------------------
def _zone(keep, t: int, new: Tensor, old: Tensor) -> Tensor:
    if isinstance(keep, Tensor):
        return torch.where(keep[t], old, new)
    return keep * old + (1 - keep) * new


def reference(p, state, weight_hh, *, peephole=None, layer_norm=None, zoneout=None, step_mask=None, recurrent_mask=None):
    h, c = state
    units = h.shape[-1]
    ys = []
    for t in range(p.shape[0]):
        q = (h if recurrent_mask is None else h * recurrent_mask) @ weight_hh.T
        if layer_norm is not None:
            q = F.layer_norm(q, (4 * units,), layer_norm.gain_hh, None, layer_norm.epsilon)
        z_i, z_f, z_g, z_o = (p[t] + q).chunk(4, dim=-1)
        if peephole is not None:
            z_i, z_f = z_i + peephole[0] * c, z_f + peephole[1] * c
        c_new = torch.sigmoid(z_f) * c + torch.sigmoid(z_i) * torch.tanh(z_g)
        if peephole is not None:
            z_o = z_o + peephole[2] * c_new
        n = c_new if layer_norm is None else F.layer_norm(c_new, (units,), layer_norm.gain_c, layer_norm.shift_c, layer_norm.epsilon)
        h_new = torch.sigmoid(z_o) * torch.tanh(n)
        if zoneout is not None:
            h_new, c_new = _zone(zoneout.h, t, h_new, h), _zone(zoneout.c, t, c_new, c)
        y = h_new
        if step_mask is not None:
            m = step_mask[:, t, None]
            y, h_new, c_new = torch.where(m, h_new, 0), torch.where(m, h_new, h), torch.where(m, c_new, c)
        ys.append(y)
        h, c = h_new, c_new
    return torch.stack(ys), h, c


# -- a case: differentiable inputs and the options around them --------------------------------------
@dataclass
class Case:
    inputs: list[Tensor]  # p (T, B, 4H), h0, c0, weight_hh, then w_ci, w_cf, w_co, then gain_hh, gain_c, shift_c
    peephole: bool
    layer_norm: bool
    zoneout: Optional[ZoneoutKeep]
    step_mask: Optional[Tensor]
    recurrent_mask: Optional[Tensor]

    def run(self, fn, inputs=None):
        p, h0, c0, weight_hh, *rest = self.inputs if inputs is None else inputs
        peephole = tuple(rest[:3]) if self.peephole else None
        rest = rest[3:] if self.peephole else rest
        layer_norm = LayerNormWeights(*rest, 1e-5) if self.layer_norm else None
        return fn(p, (h0, c0), weight_hh, peephole=peephole, layer_norm=layer_norm, zoneout=self.zoneout,
                  step_mask=self.step_mask, recurrent_mask=self.recurrent_mask)


def make_case(config: str, dtype=torch.float64, seed: int = 0) -> Case:
    options = CONFIGS[config]
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=0.7, shift=0.0):
        return (torch.randn(shape, generator=g, dtype=dtype) * scale + shift).requires_grad_()

    inputs = [randn(T, B, 4 * H), randn(B, H), randn(B, H), randn(4 * H, H)]
    if "peephole" in options:
        inputs += [randn(H) for _ in range(3)]
    if "layer_norm" in options:
        inputs += [randn(4 * H, scale=0.5, shift=1.0), randn(H, scale=0.5, shift=1.0), randn(H, scale=0.5)]
    zoneout = None
    if "zoneout_masks" in options:
        zoneout = ZoneoutKeep(*(torch.rand(T, B, H, generator=g) < 0.4 for _ in range(2)))
    if "zoneout_rate" in options:
        zoneout = ZoneoutKeep(0.3, 0.15)
    recurrent_mask = None
    if "recurrent_mask" in options:  # as `Cell.dropout_mask` draws it: 0 or 1 / keep
        recurrent_mask = torch.bernoulli(torch.full((B, H), 0.6, dtype=dtype), generator=g) / 0.6
    step_mask = STEP_MASK if "step_mask" in options else None
    return Case(inputs, "peephole" in options, "layer_norm" in options, zoneout, step_mask, recurrent_mask)


def grads(outputs, inputs, upstream) -> list[Tensor]:
    """d(sum of upstream * outputs)/d inputs, None-free (zeros where an input gets no gradient)."""
    loss = sum((o * u).sum() for o, u in zip(outputs, upstream) if u is not None)
    return [g if g is not None else torch.zeros_like(x) for g, x in zip(torch.autograd.grad(loss, inputs, allow_unused=True), inputs)]


def assert_close_all(got, want, tol):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)  # the upstream gradients


# -- the tests ---------------------------------------------------------------------------------
@pytest.fixture
def loops(request, monkeypatch):
    """The kernel's loops in C (as by default, where longshort.native builds) or in torch ops."""
    if request.param == "torch_ops":
        monkeypatch.setenv("LONGSHORT_NATIVE", "0")
    return request.param


def batch_of_one(case: Case) -> Case:
    """The case's first sequence alone (its masks too): the C loops' matrix-vector path."""
    first = [x.detach()[:, :1] if k == 0 else x.detach()[:1] if k < 3 else x.detach() for k, x in enumerate(case.inputs)]
    zoneout = case.zoneout
    if zoneout is not None and isinstance(zoneout.h, Tensor):
        zoneout = ZoneoutKeep(zoneout.h[:, :1], zoneout.c[:, :1])
    return Case([x.requires_grad_() for x in first], case.peephole, case.layer_norm, zoneout,
                None if case.step_mask is None else case.step_mask[:1], None if case.recurrent_mask is None else case.recurrent_mask[:1])


def wider_batch(case: Case) -> Case:
    """The case's batch four times over (every second copy in reverse order): 4B = 12 rows, 6 on
    each of two threads (`native.threads_for`), above the C loops' matrix-vector path (up to
    SMALL_BATCH = 3 rows a thread in csrc/rnn_loops.c), so a step's matmul is gemm's."""
    def repeated(x: Tensor, dim: int) -> Tensor:
        x = x.detach()
        return torch.cat([x, x.flip(dim)] * 2, dim)

    inputs = [repeated(x, 1) if k == 0 else repeated(x, 0) if k < 3 else x.detach() for k, x in enumerate(case.inputs)]
    zoneout = case.zoneout
    if zoneout is not None and isinstance(zoneout.h, Tensor):
        zoneout = ZoneoutKeep(repeated(zoneout.h, 1), repeated(zoneout.c, 1))
    return Case([x.requires_grad_() for x in inputs], case.peephole, case.layer_norm, zoneout,
                None if case.step_mask is None else repeated(case.step_mask, 0),
                None if case.recurrent_mask is None else repeated(case.recurrent_mask, 0))


@ALL_CONFIGS
@pytest.mark.parametrize("loops", ["c", "torch_ops"], indirect=True)
def test_gradcheck(config, loops):
    case = make_case(config, seed=1)
    assert gradcheck(lambda *xs: case.run(lstm_variant_recurrence, list(xs)), case.inputs)


@pytest.mark.parametrize("config", ["all_zoneout_masks", "all_zoneout_rate"])
def test_gradcheck_at_a_batch_of_one(config):
    case = batch_of_one(make_case(config, seed=1))
    assert gradcheck(lambda *xs: case.run(lstm_variant_recurrence, list(xs)), case.inputs)


@ALL_CONFIGS
@pytest.mark.parametrize("batch", ["one", "wider"])
def test_a_batch_of_one_or_a_wider_one_matches_the_autograd_loop(config, batch):
    case = (batch_of_one if batch == "one" else wider_batch)(make_case(config, seed=2))
    fused, want = case.run(lstm_variant_recurrence), case.run(reference)
    assert_close_all(fused, want, 1e-12)
    upstream = [torch.randn_like(o) for o in want]
    assert_close_all(grads(fused, case.inputs, upstream), grads(want, case.inputs, upstream), 1e-12)


@ALL_CONFIGS
@pytest.mark.parametrize("loops", ["c", "torch_ops"], indirect=True)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)], ids=["float64", "float32"])
def test_outputs_and_gradients_match_the_autograd_loop(config, loops, dtype, tol):
    case = make_case(config, dtype=dtype, seed=2)
    p_before = case.inputs[0].detach().clone()
    fused, want = case.run(lstm_variant_recurrence), case.run(reference)
    assert torch.equal(case.inputs[0], p_before)  # p is not written
    assert_close_all(fused, want, tol)
    upstream = [torch.randn_like(o) for o in want]
    assert_close_all(grads(fused, case.inputs, upstream), grads(want, case.inputs, upstream), tol)
    if case.step_mask is not None:  # padding steps output zero; the all-masked row keeps its initial state
        assert (fused[0].transpose(0, 1)[~case.step_mask] == 0).all()
        assert torch.equal(fused[1][1], case.inputs[1][1]) and torch.equal(fused[2][1], case.inputs[2][1])


@pytest.mark.parametrize("config", ["all_zoneout_masks", "all_zoneout_rate"])
@pytest.mark.parametrize("copied", [True, False], ids=["W^T copied", "W as held"])
def test_the_forward_loop_with_either_layout_of_the_weight(monkeypatch, config, copied):
    """A copy of W^T row-major from `native.TRANSPOSED_FROM_STEPS` steps on, W as held before
    (`native.forward_weight`): both agree with the autograd loop."""
    from longshort import native

    monkeypatch.setattr(native, "TRANSPOSED_FROM_STEPS", 1 if copied else T + 1)
    case = make_case(config, seed=8)
    fused, want = case.run(lstm_variant_recurrence), case.run(reference)
    assert_close_all(fused, want, 1e-12)
    upstream = [torch.randn_like(o) for o in want]
    assert_close_all(grads(fused, case.inputs, upstream), grads(want, case.inputs, upstream), 1e-12)
    assert native.forward_weight(case.inputs[3], 0, T)[1] == int(copied)


@pytest.mark.parametrize("used", [0, 1, 2], ids=["y", "h_T", "c_T"])
def test_a_loss_on_one_output_only(used):
    """The backward gets None for the outputs the loss does not use."""
    case = make_case("all_zoneout_masks", seed=3)
    fused, want = case.run(lstm_variant_recurrence), case.run(reference)
    upstream = [torch.randn_like(o) if k == used else None for k, o in enumerate(want)]
    assert_close_all(grads(fused, case.inputs, upstream), grads(want, case.inputs, upstream), 1e-12)


@pytest.mark.parametrize("config", ["all_zoneout_masks", "all_zoneout_rate"])
def test_padding_steps_ignore_what_they_hold(config):
    """NaN in p at padding steps changes nothing: outputs and gradients as with zeros there."""
    case = make_case(config, seed=4)
    padding = ~STEP_MASK.T[..., None]  # (T, B, 1)
    zeros = case.inputs[0].detach().masked_fill(padding, 0.0).requires_grad_()
    nans = case.inputs[0].detach().masked_fill(padding, float("nan")).requires_grad_()
    want = case.run(lstm_variant_recurrence, [zeros, *case.inputs[1:]])
    got = case.run(lstm_variant_recurrence, [nans, *case.inputs[1:]])
    assert_close_all(got, want, 1e-12)
    upstream = [torch.randn_like(o) for o in got]
    got_grads = grads(got, [nans, *case.inputs[1:]], upstream)
    assert all(g.isfinite().all() for g in got_grads)
    assert_close_all(got_grads, grads(want, [zeros, *case.inputs[1:]], upstream), 1e-12)
    assert (got_grads[0].masked_select(padding) == 0).all()


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("dropped", [False, True], ids=["nodrop", "drop"])
def test_plain_options_match_fused_lstm(masked, dropped):
    case = make_case("recurrent_mask" if dropped else "peephole", seed=5)
    case.inputs, case.peephole, case.step_mask = case.inputs[:4], False, (STEP_MASK if masked else None)
    p, h0, c0, weight_hh = case.inputs
    fused = case.run(lstm_variant_recurrence)
    want = lstm_recurrence(p, (h0, c0), weight_hh, case.step_mask, case.recurrent_mask, time_major=True)
    assert_close_all(fused, want, 1e-12)
    upstream = [torch.randn_like(o) for o in want]
    assert_close_all(grads(fused, case.inputs, upstream), grads(want, case.inputs, upstream), 1e-12)



@ALL_CONFIGS
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_the_kernel_projects_its_input_itself(config, bias):
    """`lstm_variant_layer(x, W_ih, b, ...)`, whose kernel computes p = x W_ih^T + b into its buffer of
    gates and its gradients by hand (`longshort.projection`), against the autograd loop over
    F.linear(x, W_ih, b): outputs and every input's gradient in float64, and gradcheck."""
    case = make_case(config, seed=6)
    g = torch.Generator().manual_seed(7)
    shapes = [(B, T, 2), (4 * H, 2)] + ([(4 * H,)] if bias else [])  # x (B, T, F), W_ih, b
    projection_inputs = [(torch.randn(shape, generator=g, dtype=torch.float64) * 0.7).requires_grad_() for shape in shapes]
    inputs, n = projection_inputs + case.inputs[1:], len(projection_inputs)

    def fused(*xs):
        x, weight_ih, b = (*xs[:n], None)[:3]
        return case.run(lambda _, *rest, **options: lstm_variant_layer(x, weight_ih, b, *rest, **options), [None, *xs[n:]])

    def loop(*xs):
        p = F.linear(*xs[:n]).transpose(0, 1)  # (T, B, 4H)
        return case.run(reference, [p, *xs[n:]])

    got, want = fused(*inputs), loop(*inputs)
    assert_close_all(got, want, 1e-12)
    upstream = [torch.randn_like(o) for o in want]
    assert_close_all(grads(got, inputs, upstream), grads(want, inputs, upstream), 1e-12)
    assert gradcheck(fused, inputs)

# -- against the readable cells, with their own weights ------------------------------------------
FEATURES = 5


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Random non-zero weights everywhere; gains around 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            param.copy_(torch.randn(param.shape, generator=g, dtype=param.dtype) * 0.5 + ("gain" in name))


def _step_the_cell(cell, x: Tensor, state: LSTMState):
    """The readable loop: (y (T, B, H), h_T, c_T) from x (B, T, F)."""
    ys = []
    for t in range(x.shape[1]):
        y, state = cell(x[:, t], state)
        ys.append(y)
    return torch.stack(ys), state.h, state.c


def _check_against_cell(module, run_kernel, seed: int):
    """run_kernel(x, (h0, c0)) -> (y, h_T, c_T) must agree with stepping `module`, outputs and gradients."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, FEATURES, generator=g, dtype=torch.float64, requires_grad=True)
    h0, c0 = (torch.randn(B, H, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    fused = run_kernel(x, (h0, c0))
    want = _step_the_cell(module, x, LSTMState(h0, c0))
    assert_close_all(fused, want, 1e-12)
    inputs = [x, h0, c0, *module.parameters()]
    upstream = [torch.randn_like(o) for o in want]
    assert_close_all(grads(fused, inputs, upstream), grads(want, inputs, upstream), 1e-12)


def test_matches_peephole_lstm_cell():
    cell = LSTMCell(H, FEATURES, peephole=True).double()
    _randomise(cell, seed=6)
    assert (cell.weight_ci != 0).all() and (cell.weight_co != 0).all()

    def run_kernel(x, state):
        p = cell.project_input(x).transpose(0, 1)  # (T, B, 4H), bias included
        return lstm_variant_recurrence(p, state, cell.weight_hh, peephole=(cell.weight_ci, cell.weight_cf, cell.weight_co))

    _check_against_cell(cell, run_kernel, seed=7)


def test_matches_layer_norm_lstm_cell_with_dropout():
    cell = LayerNormLSTMCell(H, FEATURES, dropout=0.3, recurrent_dropout=0.4).double().train()
    _randomise(cell, seed=8)
    assert (cell.gain_c != 1).all() and (cell.shift_c != 0).all()

    def run_kernel(x, state):  # draws this sequence's dropout masks; the cell's steps then reuse them
        p = (cell.project_input(x) + cell.bias).transpose(0, 1)  # (T, B, 4H): LN_x(W_ih x) + b
        recurrent_mask = cell.dropout_mask("recurrent", state[0])
        assert recurrent_mask is not None and (recurrent_mask == 0).any()
        layer_norm = LayerNormWeights(cell.gain_hh, cell.gain_c, cell.shift_c, cell.epsilon)
        return lstm_variant_recurrence(p, state, cell.weight_hh, layer_norm=layer_norm, recurrent_mask=recurrent_mask)

    cell.reset_dropout_masks()
    _check_against_cell(cell, run_kernel, seed=9)


def test_matches_zoneout_in_evaluation():
    zoneout = Zoneout(LSTMCell(H, FEATURES), rate=0.3).double().eval()
    _randomise(zoneout, seed=10)

    def run_kernel(x, state):
        p = zoneout.cell.project_input(x).transpose(0, 1)  # (T, B, 4H)
        return lstm_variant_recurrence(p, state, zoneout.cell.weight_hh, zoneout=ZoneoutKeep(0.3, 0.3))

    _check_against_cell(zoneout, run_kernel, seed=11)


def test_matches_zoneout_in_training_with_its_masks():
    """Zoneout draws `rand_like(new) < rate` for h, then c, every step: the same draws give the kernel's masks."""
    zoneout = Zoneout(LSTMCell(H, FEATURES), rate=0.4).double().train()
    _randomise(zoneout, seed=12)

    def run_kernel(x, state):
        generator_state = torch.get_rng_state()
        draws = torch.stack([torch.stack([torch.rand(B, H, dtype=torch.float64) for _ in "hc"]) for _ in range(T)]) < 0.4  # (T, 2 (h, c), B, H)
        torch.set_rng_state(generator_state)  # so that the cell's steps draw the same
        assert draws.any() and not draws.all()
        p = zoneout.cell.project_input(x).transpose(0, 1)  # (T, B, 4H)
        return lstm_variant_recurrence(p, state, zoneout.cell.weight_hh, zoneout=ZoneoutKeep(draws[:, 0], draws[:, 1]))

    _check_against_cell(zoneout, run_kernel, seed=13)
