"""The fused LSTM: a loop over time that does only the recurrent matmul and the gate math,
and a backward-through-time written by hand.

Forward. The input side `p_t = W_ih x_t + b` of every step is one matmul for the whole
sequence: computed by the kernel straight into the buffer of its gates (`lstm_layer`, as the
LSTM layers call it; `longshort.projection`), or given (`lstm_recurrence`); then for t = 1..T:

    z = p_t + h_prev W_hh^T                      (B, 4H), one addmm
    i, f = sigmoid(z_i, z_f)                     in-place sigmoid
    g = tanh(z_g)                                in-place tanh
    o = sigmoid(z_o)                             in-place sigmoid
    c = f * c_prev + i * g
    h = o * tanh(c)

The activated gates, the states and tanh(c) of every step are kept for the backward.

Backward. `dh` is dL/dh_t (from the output y_t = h_t and from step t+1), `dc` is dL/dc_t
from step t+1. Reading the forward bottom-up:

    h = o * tanh(c)           ->  do = dh * tanh(c)
                                  dc = dc + dh * o * (1 - tanh(c)^2)
    c = f * c_prev + i * g    ->  di = dc * g,  df = dc * c_prev,  dg = dc * i
                                  dc_prev = dc * f
    i, f, o = sigmoid(z)      ->  dz_i = di * i * (1 - i), dz_f = df * f * (1 - f), dz_o = do * o * (1 - o)
    g = tanh(z_g)             ->  dz_g = dg * (1 - g^2)
    z = p_t + h_prev W_hh^T   ->  dp_t = dz,  dh_prev = dz W_hh,  dW_hh += dz^T h_prev

and dh_prev plus dL/dy_{t-1} is the dh of step t - 1: the loop adds dz W_hh in place onto
dL/dy_{t-1} (one addmm).

Every factor that does not depend on dh or dc (`g i (1 - i)`, `c_prev f (1 - f)`,
`i (1 - g^2)`, `tanh(c) o (1 - o)`, `o (1 - tanh(c)^2)`) is computed for all steps at once
before the reverse loop, so a step does one matmul and a few elementwise ops. `dW_hh`
is one matmul over all steps after the loop; `dW_ih`, `db` and `dx` follow from `dp`, one
matmul each (by hand in `longshort.projection`; given p, by autograd through what made it).

Masks. With m_t in {0, 1} per sequence, the carried state is `h_t = m h_new + (1 - m) h_prev`
(likewise c) and the output is `y_t = m h_new`. So the gradient into the step is
`dh_new = m (dh_state + dy_t)`, `dc_new = m dc_state`, and `(1 - m) dh_state`,
`(1 - m) dc_state` flow straight to the previous step.

Recurrent dropout. With the sequence's mask r, `z = p_t + (r h_prev) W_hh^T`, so
`dh_prev = r (dz W_hh)` and `dW_hh = sum_t dz^T (r h_prev)`.

Per-step overhead. At small B the Python and dispatcher work around a step's few small ops
is most of its time: the per-step views of every buffer are made once before each loop, and
both loops run under `torch.inference_mode()` (they record nothing for autograd, and inference
mode skips the dispatcher's autograd layer). Every tensor a loop writes that is kept or
returned is allocated before it, so none comes out as an inference tensor.

Buffers. The large ones (the gates and states kept, dz, dh) come from `longshort.workspace`,
which hands a buffer out again once nothing holds it: the next call finds its pages already
mapped instead of page-faulting them in again (as do the other fused kernels).

The loops in C. Where `longshort.native` can build `csrc/rnn_loops.c` (float32 and float64 on
CPU), each loop is one call into C instead of the torch ops below (`_forward_steps_in_c`,
`_backward_steps_in_c`): a step there is a call of torch's own BLAS gemm for the recurrent
matmul (on up to 3 rows a thread, matrix-vector products of the C file's own) and one pass of gate math, with
no Python in between. The C backward computes the factors above from the saved gates as it
goes, so it needs no precomputed factors. The torch-ops loops (`_forward_steps`,
`_backward_steps`) are the reference: they run where the C version cannot be built, or with
LONGSHORT_NATIVE=0, and the tests hold both to the autograd loop and to each other.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from longshort import projection, workspace
from longshort.native import LoopKernels, address, forward_weight, loops_for, loop_threads, weight_layout


class LSTMRecurrence(torch.autograd.Function):
    """Time-major: p (T, B, 4H), h0, c0 (B, H), weight_hh (4H, H), step_mask (B, T) -> y (T, B, H), h_T, c_T.

    With `weight_ih` (4H, F) (and `bias`), its first input is x (B, T, F) instead, and it computes
    p = x W_ih^T + b itself, straight into the buffer of its gates (`longshort.projection`)."""

    @staticmethod
    def forward(ctx, inputs, weight_ih: Optional[Tensor], bias: Optional[Tensor], h0, c0, weight_hh,
                step_mask: Optional[Tensor], recurrent_mask: Optional[Tensor]):
        recurrent_mask = None if recurrent_mask is None else recurrent_mask.contiguous()  # as the C loops read it
        if weight_ih is None:
            z_all = workspace.empty(inputs, *inputs.shape).copy_(inputs)  # (T, B, 4H), becomes the activated gates
        else:
            z_all = projection.project(inputs, weight_ih, bias)  # the same, from x (B, T, F)
        T, B, four_h = z_all.shape
        H = four_h // 4
        h_all = workspace.empty(z_all, T + 1, B, H)  # h_all[t + 1] is the carried h after step t
        c_all = workspace.empty(z_all, T + 1, B, H)
        h_all[0], c_all[0] = h0, c0
        tanh_c_all = workspace.empty(z_all, T, B, H)  # tanh(c) of every step, kept for the backward
        masks = None if step_mask is None else step_mask.transpose(0, 1).contiguous()  # (T, B) bool
        kernels = loops_for(z_all)
        with torch.inference_mode():  # the loop records nothing for autograd: skip its layer of the dispatcher
            steps = _forward_steps if kernels is None else partial(_forward_steps_in_c, kernels)
            steps(z_all, h_all, c_all, tanh_c_all, weight_hh, masks, recurrent_mask)
        y = h_all[1:]  # (T, B, H)
        if masks is not None:
            y = y * masks.unsqueeze(-1)
        x = None if weight_ih is None else inputs  # its rows are taken again in the backward
        ctx.save_for_backward(z_all, h_all, c_all, tanh_c_all, weight_hh, masks, recurrent_mask, x, weight_ih)
        return y, h_all[T].clone(), c_all[T].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_T, dc_T):
        z_all, h_all, c_all, tanh_c_all, weight_hh, masks, recurrent_mask, x, weight_ih = ctx.saved_tensors
        T, B, four_h = z_all.shape
        H = four_h // 4
        dz_all = workspace.empty(z_all, T, B, four_h)  # (T, B, 4H)
        dh_outs = workspace.empty(dy, T + 1, B, H)  # dh_outs[t + 1]: dL/dh_t from y_t, and from step t + 1 once it is done
        dh_outs[0] = 0  # ends as dL/dh_0
        if masks is None:
            dh_outs[1:] = dy
        else:
            torch.mul(dy, masks.unsqueeze(-1), out=dh_outs[1:])
        if dh_T is not None:
            dh_outs[T] += dh_T
        dc = dy.new_zeros(B, H) if dc_T is None else dc_T.clone(memory_format=torch.contiguous_format)  # dL/dc_t, stepping back
        kernels = loops_for(z_all)
        with torch.inference_mode():  # every tensor kept or returned was allocated outside: none is an inference tensor
            steps = _backward_steps if kernels is None else partial(_backward_steps_in_c, kernels)
            dc = steps(z_all, c_all, tanh_c_all, weight_hh, masks, recurrent_mask, dh_outs, dc, dz_all)
        h_in = h_all[:-1] if recurrent_mask is None else h_all[:-1] * recurrent_mask  # (T, B, H)
        dweight_hh = dz_all.reshape(T * B, four_h).T @ h_in.reshape(T * B, H)  # (4H, H)
        inputs_grads = projection.input_gradients(dz_all, x, weight_ih, ctx.needs_input_grad[:3])  # d(p or x), dW_ih, db
        return *inputs_grads, dh_outs[0], dc, dweight_hh, None, None


def _in_step_layout(weight_hh: Tensor, batch: int) -> Tensor:
    """weight_hh (4H, H), laid out in memory for the torch ops' per-step matmuls: as it is, except
    at a batch of one or two, where a step's matmul is a matrix-vector product, faster with the
    transpose contiguous both ways (B=1, H=256 here: 19 us instead of 26 forward, 19 instead of 23
    backward). The C loops choose their own (`native.forward_weight`)."""
    return weight_hh.T.contiguous().T if batch <= 2 else weight_hh


# The steps with torch ops. The per-step views are made once: cheaper than indexing in the loop.

def _forward_steps(z_all, h_all, c_all, tanh_c_all, weight_hh, masks, recurrent_mask) -> None:
    """The forward loop, in place: z_all (T, B, 4H) from p_t to the activated gates; h_all, c_all (T + 1, B, H); tanh_c_all (T, B, H)."""
    H = h_all.shape[-1]
    w_t = _in_step_layout(weight_hh, h_all.shape[1]).T  # (H, 4H)
    h_in = h_all.new_empty(h_all.shape[1:])
    zs, if_parts = z_all.unbind(0), z_all[..., : 2 * H].unbind(0)
    is_, fs, gs, os = (gate.unbind(0) for gate in z_all.split(H, dim=2))
    hs, cs, tanh_cs = h_all.unbind(0), c_all.unbind(0), tanh_c_all.unbind(0)
    ms = None if masks is None else masks.unsqueeze(-1).unbind(0)  # each (B, 1)
    for t in range(z_all.shape[0]):
        h_prev, c_prev, c, h = hs[t], cs[t], cs[t + 1], hs[t + 1]
        zs[t].addmm_(h_prev if recurrent_mask is None else torch.mul(h_prev, recurrent_mask, out=h_in), w_t)
        if_parts[t].sigmoid_()
        gs[t].tanh_()
        os[t].sigmoid_()
        torch.mul(fs[t], c_prev, out=c).addcmul_(is_[t], gs[t])
        torch.mul(os[t], torch.tanh(c, out=tanh_cs[t]), out=h)
        if ms is not None:
            torch.where(ms[t], c, c_prev, out=c)
            torch.where(ms[t], h, h_prev, out=h)


def _backward_steps(z_all, c_all, tanh_c, weight_hh, masks, recurrent_mask, dh_outs, dc_state, dz_all) -> Tensor:
    """The reverse loop: fills dz_all (T, B, 4H), adds the recurrent share into dh_outs (T + 1, B, H)
    (dh_outs[0] ends as dL/dh_0), and returns dL/dc_0 from dc_state = dL/dc_T."""
    T, B, four_h = z_all.shape
    H = four_h // 4
    weight_hh = _in_step_layout(weight_hh, B)
    i, f, g, o = z_all.split(H, dim=2)  # each (T, B, H)
    c_prev = c_all[:-1]
    # The factors of the derivation that do not depend on dh, dc: all steps at once, each a
    # pass or two over (T, B, H) through the products they share (addcmul(a, b, c, value=-1) is a - b c).
    o_tanh_c = o * tanh_c
    dz_o_per_dh = torch.addcmul(o_tanh_c, o_tanh_c, o, value=-1)  # tanh(c) o (1 - o)
    dc_per_dh = torch.addcmul(o, o_tanh_c, tanh_c, value=-1)  # o (1 - tanh(c)^2)
    dz_ifg_per_dc = z_all.new_empty(T, B, 3, H)  # the i, f, g factors side by side, as dz holds them
    i_g = i * g
    torch.addcmul(i_g, i_g, i, value=-1, out=dz_ifg_per_dc[:, :, 0])  # g i (1 - i)
    torch.mul(torch.addcmul(f, f, f, value=-1), c_prev, out=dz_ifg_per_dc[:, :, 1])  # c_prev f (1 - f)
    torch.addcmul(i, i_g, g, value=-1, out=dz_ifg_per_dc[:, :, 2])  # i (1 - g^2)
    if masks is not None:  # masked steps get no gradient, whatever (even NaN) their gates hold
        masks = masks.unsqueeze(-1)  # (T, B, 1)
        dz_o_per_dh.masked_fill_(~masks, 0)
        dc_per_dh.masked_fill_(~masks, 0)
        dz_ifg_per_dc.masked_fill_(~masks.unsqueeze(-1), 0)
        f = f.masked_fill(~masks, 0)
    dc_next = torch.empty_like(dc_state)  # dL/dc_{t-1} as it is computed
    dh_out_s, fs, dc_per_dhs, dz_o_per_dhs, dz_ifg_per_dcs = (v.unbind(0) for v in (dh_outs, f, dc_per_dh, dz_o_per_dh, dz_ifg_per_dc))
    dzs, dz_ifgs, dz_os = dz_all.unbind(0), dz_all[..., : 3 * H].unflatten(-1, (3, H)).unbind(0), dz_all[..., 3 * H :].unbind(0)
    ms = None if masks is None else masks.unbind(0)
    for t in range(T - 1, -1, -1):
        dh_out, dh_prev = dh_out_s[t + 1], dh_out_s[t]
        if ms is None:
            dh, dc = dh_out, dc_state
        else:
            m = ms[t]
            dh, dc = torch.where(m, dh_out, 0), torch.where(m, dc_state, 0)
        dc = dc.addcmul_(dh, dc_per_dhs[t])
        torch.mul(dh, dz_o_per_dhs[t], out=dz_os[t])
        torch.mul(dz_ifg_per_dcs[t], dc.unsqueeze(1), out=dz_ifgs[t])
        if recurrent_mask is None:  # dh_prev is dL/dy_{t-1} so far: add the recurrent share in place
            dh_prev.addmm_(dzs[t], weight_hh)
        else:
            dh_prev.addcmul_(dzs[t] @ weight_hh, recurrent_mask)
        torch.mul(dc, fs[t], out=dc_next)
        if ms is not None:
            dh_prev += torch.where(m, 0, dh_out)
            dc_next += torch.where(m, 0, dc_state)
        dc_state, dc_next = dc_next, dc_state
    return dc_state


# The same loops in C (csrc/rnn_loops.c: the same equations, each step a gemm and one pass of
# gate math), one call each way.

def _forward_steps_in_c(kernels: LoopKernels, z_all, h_all, c_all, tanh_c_all, weight_hh, masks, recurrent_mask) -> None:
    """As `_forward_steps`."""
    T, B, four_h = z_all.shape
    threads, split = loop_threads(B, weight_hh)
    w, w_transposed = forward_weight(weight_hh, split, T)
    buffer = None if recurrent_mask is None else h_all.new_empty(B, four_h // 4)
    kernels.lstm_forward(T, B, four_h // 4, *map(address, (z_all, h_all, c_all, tanh_c_all, masks, recurrent_mask, buffer, w)),
                         w_transposed, kernels.gemm, threads, split)


def _backward_steps_in_c(kernels: LoopKernels, z_all, c_all, tanh_c_all, weight_hh, masks, recurrent_mask, dh_outs, dc, dz_all) -> Tensor:
    """As `_backward_steps`; dc is updated in place."""
    T, B, four_h = z_all.shape
    w, w_transposed = weight_layout(weight_hh)
    buffer = None if recurrent_mask is None else dc.new_empty(B, four_h // 4)
    kernels.lstm_backward(T, B, four_h // 4, *map(address, (z_all, c_all, tanh_c_all, dh_outs, dc, dz_all, masks, recurrent_mask, buffer, w)),
                          w_transposed, kernels.gemm, *loop_threads(B, w))
    return dc


def lstm_recurrence(
    p: Tensor,
    state: tuple[Tensor, Tensor],
    weight_hh: Tensor,
    step_mask: Optional[Tensor] = None,
    recurrent_mask: Optional[Tensor] = None,
    time_major: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the LSTM recurrence over the projected inputs p (B, T, 4H) from `state` (h0, c0).

    Returns every output y (B, T, H) (zero at masked steps) and the final carried h, c.
    With `time_major`, p is (T, B, 4H) and y comes back (T, B, H): the loop works time-major,
    so this spares a copy of p forward and of its gradient backward.
    """
    h0, c0 = state
    if time_major:
        return LSTMRecurrence.apply(p, None, None, h0, c0, weight_hh, step_mask, recurrent_mask)
    y, h, c = LSTMRecurrence.apply(p.transpose(0, 1), None, None, h0, c0, weight_hh, step_mask, recurrent_mask)
    return y.transpose(0, 1), h, c


def lstm_layer(
    x: Tensor,
    weight_ih: Tensor,
    bias: Optional[Tensor],
    state: tuple[Tensor, Tensor],
    weight_hh: Tensor,
    step_mask: Optional[Tensor] = None,
    recurrent_mask: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """`lstm_recurrence` of x (B, T, F) with its input side p = x W_ih^T + b computed by the kernel
    (`longshort.projection`): y (T, B, H) time-major, and the final carried h, c."""
    h0, c0 = state
    return LSTMRecurrence.apply(x, weight_ih, bias, h0, c0, weight_hh, step_mask, recurrent_mask)
