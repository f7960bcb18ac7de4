"""The fused GRU: a loop over time that does only the recurrent matmul and the gate math,
and a backward-through-time written by hand.

Forward. The input side `p_t = W_ih x_t + b_ih` of every step is one matmul for the whole
sequence: computed by the kernel into a kept buffer (`gru_layer`, as the GRU layer calls it;
`longshort.projection`), or given (`gru_recurrence`); then for t = 1..T:

    q = h_prev W_hh^T + b_hh                     (B, 3H), one addmm
    r, z = sigmoid(p_r + q_r, p_z + q_z)         one in-place sigmoid
    n = tanh(p_n + r * q_n)                      one addcmul, one in-place tanh
    h = (1 - z) * n + z * h_prev                 one lerp: lerp(n, h_prev, z)

The addmm adds into a buffer that already holds `p_r + b_hr, p_z + b_hz, b_hn`, so after it
the buffer holds the pre-activations of r and z, and q_n; the addcmul adds into a buffer
that already holds p_n. The r, z, q_n, n and h of every step are kept for the backward.
When the kernel projects x itself, it writes p straight into the first buffer, with b_hr and
b_hz folded into the projection's bias; p_n is then moved to the second and b_hn put in its place.

Backward. `dh` is dL/dh_t (from the output y_t = h_t and from step t+1); `a` are the
pre-activations `a_r = p_r + q_r`, `a_z = p_z + q_z`, `a_n = p_n + r q_n`. Reading the
forward bottom-up:

    h = (1 - z) n + z h_prev  ->  dn = dh (1 - z),  dz = dh (h_prev - n),  dh_prev = dh z  (+ below)
    n = tanh(a_n)             ->  da_n = dn (1 - n^2)
    a_n = p_n + r q_n         ->  dr = da_n q_n,  dq_n = da_n r
    r, z = sigmoid(a_r, a_z)  ->  da_r = dr r (1 - r),  da_z = dz z (1 - z)
    a = p_t + q               ->  dp_t = (da_r, da_z, da_n),  dq = (da_r, da_z, dq_n)
    q = h_prev W_hh^T + b_hh  ->  dh_prev += dq W_hh,  dW_hh += dq^T h_prev,  db_hh += dq

So every step's dp and dq are dh times a factor that does not depend on dh:

    da_r = dh (1 - z) (1 - n^2) q_n r (1 - r)
    da_z = dh (h_prev - n) z (1 - z)
    da_n = dh (1 - z) (1 - n^2)
    dq_n = dh (1 - z) (1 - n^2) r

In the C loop (below) a step computes them and multiplies them by its dh in one pass over
the batch, which also adds dh z into the slot of dh_prev that already holds dy_{t-1}; then one
gemm adds dq W_hh there. The torch-ops loop computes the factors for all steps at once before
the loop, so that a step there is one in-place mul, one addcmul and one addmm. `dW_hh` and
`db_hh` are one op each over all steps after the loop; `dW_ih`, `db_ih` and `dx` follow from
`dp`, one matmul each (by hand in `longshort.projection`; given p, by autograd through what
made it).

Masks. With m_t in {0, 1} per sequence, a masked step is a step whose update gate is shut:
with z = 1, h = h_prev exactly (lerp returns its end point at weight 1), and every factor
above has a (1 - z) and vanishes, leaving dh_prev = dh. So before the loop the forward sets
the z pre-activation of masked steps to +inf (sigmoid(inf) = 1 exactly, whatever q_z adds)
and their p_r, p_n to 0 (so that n stays finite whatever the padding holds, even NaN), and
the backward needs the mask only where the output is zeroed: y_t = m h_t, so the gradient
from the output is m dy_t.

Recurrent dropout. With the sequence's mask r_mask, `q = (r_mask h_prev) W_hh^T + b_hh`
while the blend uses h_prev undropped, so `dh_prev = dh z + r_mask (dq W_hh)` and
`dW_hh = sum_t dq^T (r_mask h_prev)`.

Per-step overhead. At small B a step's ops are small and the Python around them counts: the
per-step views of every buffer are made once before each loop (one `unbind` a buffer; a view
costs about half a small op), both loops run under `torch.inference_mode()` (they record
nothing for autograd, and inference mode skips the dispatcher's autograd layer, about 1 us
an op), and the forward's matmul takes W_hh^T as a row-major copy made once per call (with
the copy, faster at B = 1 and B = 32 than the transposed view). The buffers are time-major,
so that a step's slice is contiguous.

The loops in C. Where `longshort.native` builds `csrc/rnn_loops.c` (float32 and float64 on
CPU), each loop is one call into C (`_forward_steps_in_c`, `_backward_steps_in_c`) with the
same equations: a step is a call of torch's BLAS gemm (on up to 3 rows a thread, matrix-vector products of
the C file's own) and one pass over the batch, with no Python in between. The torch-ops loops
(`_forward_steps`, `_backward_steps`) are the reference: they run where the C version cannot be
built, or with LONGSHORT_NATIVE=0, and the tests hold both to the autograd loop.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from longshort import projection, workspace
from longshort.native import LoopKernels, address, forward_weight, loops_for, loop_threads, weight_layout


class GRURecurrence(torch.autograd.Function):
    """Time-major: p (T, B, 3H), h0 (B, H), weight_hh (3H, H), bias_hh (3H,) or None, step_mask (B, T) -> y (T, B, H), h_T.

    With `weight_ih` (3H, F) (and `bias_ih`), its first input is x (B, T, F) instead, and it
    computes p = x W_ih^T + b_ih itself, into a kept buffer (`longshort.projection`)."""

    @staticmethod
    def forward(ctx, inputs, weight_ih: Optional[Tensor], bias_ih: Optional[Tensor], h0, weight_hh, bias_hh,
                step_mask: Optional[Tensor], recurrent_mask: Optional[Tensor]):
        ctx.set_materialize_grads(False)
        recurrent_mask = None if recurrent_mask is None else recurrent_mask.contiguous()  # as the C loops read it
        H = weight_hh.shape[1]
        bias_rz = None if bias_hh is None else torch.cat([bias_hh[: 2 * H], bias_hh.new_zeros(H)])  # (3H,) b_hr, b_hz, 0
        if weight_ih is None:  # p given: into the kernel's own buffer, b_hr and b_hz added
            rzq = workspace.empty(inputs, *inputs.shape)  # (T, B, 3H)
            if bias_rz is None:
                rzq.copy_(inputs)
            else:
                torch.add(inputs, bias_rz, out=rzq)
        else:  # p computed straight into it, b_hr and b_hz folded into the addmm's bias
            rzq = projection.project(inputs, weight_ih, _sum(bias_ih, bias_rz))
        T, B, _ = rzq.shape  # rzq holds p_r + b_hr, p_z + b_hz, p_n; becomes r, z, q_n
        n = workspace.empty(rzq, T, B, H).copy_(rzq[..., 2 * H :])  # (T, B, H) p_n, becomes n
        rzq[..., 2 * H :] = 0 if bias_hh is None else bias_hh[2 * H :]  # b_hn, becomes q_n
        r, z, q_n = rzq.split(H, dim=2)  # each (T, B, H)
        if step_mask is not None:  # a masked step reads no input and has its update gate shut: h = h_prev
            skip = ~step_mask.T.unsqueeze(-1)  # (T, B, 1)
            r.masked_fill_(skip, 0.0)
            n.masked_fill_(skip, 0.0)
            z.masked_fill_(skip, float("inf"))  # z = sigmoid(inf + q_z) = 1 exactly
        h_all = workspace.empty(rzq, T + 1, B, H)  # h_all[t + 1] is the carried h after step t
        h_all[0] = h0
        h_in = None if recurrent_mask is None else rzq.new_empty(B, H)
        kernels = loops_for(rzq)
        steps = _forward_steps if kernels is None else partial(_forward_steps_in_c, kernels)
        steps(rzq, n, h_all, weight_hh, recurrent_mask, h_in)
        y = h_all[1:]  # (T, B, H)
        if step_mask is not None:
            y = y * step_mask.T.unsqueeze(-1)
        x = None if weight_ih is None else inputs  # its rows are taken again in the backward
        ctx.save_for_backward(rzq, n, h_all, weight_hh, step_mask, recurrent_mask, x, weight_ih)
        ctx.has_bias = bias_hh is not None
        return y, h_all[T].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_T):
        rzq, n, h_all, weight_hh, step_mask, recurrent_mask, x, weight_ih = ctx.saved_tensors
        T, B, three_h = rzq.shape
        H = three_h // 3
        dq_all = workspace.empty(rzq, T, B, 3 * H)  # (da_r, da_z, dq_n) of every step; becomes dp
        da_n = workspace.empty(rzq, T, B, H)
        dh_all = workspace.empty(h_all, T + 1, B, H)  # dh_all[t + 1] is dL/dh_t; dh_all[0] is dL/dh0
        dh_all[0] = 0
        if dy is None:
            dh_all[1:] = 0
        else:
            dh_all[1:] = dy if step_mask is None else dy * step_mask.T.unsqueeze(-1)
        if dh_T is not None:
            dh_all[T] += dh_T
        dq_w = None if recurrent_mask is None else rzq.new_empty(B, H)
        kernels = loops_for(rzq)
        steps = _backward_steps if kernels is None else partial(_backward_steps_in_c, kernels)
        steps(rzq, n, h_all, dq_all, da_n, dh_all, weight_hh, recurrent_mask, dq_w)
        h_prev = h_all[:-1] if recurrent_mask is None else h_all[:-1] * recurrent_mask  # (T, B, H), as the product saw it
        dweight_hh = dq_all.view(T * B, three_h).T @ h_prev.reshape(T * B, H)  # (3H, H)
        dbias_hh = dq_all.sum(dim=(0, 1)) if ctx.has_bias else None  # (3H,)
        dq_all[..., 2 * H :] = da_n  # dq_n -> da_n: dq_all is now dp (T, B, 3H)
        inputs_grads = projection.input_gradients(dq_all, x, weight_ih, ctx.needs_input_grad[:3])  # d(p or x), dW_ih, db_ih
        return *inputs_grads, dh_all[0], dweight_hh, dbias_hh, None, None


def _sum(a: Optional[Tensor], b: Optional[Tensor]) -> Optional[Tensor]:
    """a + b, where either may be None (none)."""
    return b if a is None else a if b is None else a + b


# The loops. The torch-ops versions are the reference; where longshort.native builds
# csrc/rnn_loops.c the same loops run in C, one call each way (its equations: the same as here).

def _forward_steps(rzq, n, h_all, weight_hh, recurrent_mask, h_in) -> None:
    """The forward loop, in place: rzq (T, B, 3H) becomes r, z, q_n; n (T, B, H) holds p_n and becomes n; h_all (T + 1, B, H)."""
    H = n.shape[-1]
    w_t = weight_hh.T.contiguous()  # (H, 3H), row-major
    rz, (r, z, q_n) = rzq[..., : 2 * H], rzq.split(H, dim=2)
    with torch.inference_mode():  # the loop records nothing for autograd: skip its layer of the dispatcher
        # The per-step views (B, ...), made once: cheaper than indexing in the loop.
        hs = h_all.unbind(0)
        steps = zip(hs, hs[1:], *(x.unbind(0) for x in (rzq, rz, r, z, q_n, n)))
        for h_prev, h, rzq_t, rz_t, r_t, z_t, q_n_t, n_t in steps:
            if recurrent_mask is not None:
                rzq_t.addmm_(torch.mul(h_prev, recurrent_mask, out=h_in), w_t)
            else:
                rzq_t.addmm_(h_prev, w_t)
            rz_t.sigmoid_()
            n_t.addcmul_(r_t, q_n_t).tanh_()
            torch.lerp(n_t, h_prev, z_t, out=h)


def _backward_steps(rzq, n, h_all, dq_all, da_n, dh_all, weight_hh, recurrent_mask, dq_w) -> None:
    """The reverse loop: into dq_all (T, B, 3H) every step's dq = (da_r, da_z, dq_n), into da_n (T, B, H) its da_n;
    dh_all (T + 1, B, H) gets the recurrent shares. The factors of dq / dh that do not depend on dh are
    computed for all steps at once before the loop; a step multiplies them by its dh."""
    T, B, three_h = rzq.shape
    H = three_h // 3
    r, z, q_n = rzq.split(H, dim=2)  # each (T, B, H)
    one = rzq.new_ones(())
    with torch.inference_mode():
        # The factors, each (T, B, H): da_n / dh = (1 - z) (1 - n^2), dq_n / dh = that r,
        # da_r / dh = that q_n (1 - r), da_z / dh = (h_prev - n) z (1 - z).
        factors = dq_all.view(T, B, 3, H)
        da_r, da_z, dq_n = factors.unbind(dim=2)
        one_minus_z = torch.sub(one, z, out=workspace.empty(z, T, B, H))
        torch.addcmul(one, n, n, value=-1, out=da_n).mul_(one_minus_z)
        torch.mul(da_n, r, out=dq_n)
        torch.mul(dq_n, q_n, out=da_r).mul_(torch.sub(one, r, out=one_minus_z))
        torch.sub(h_all[:-1], n, out=da_z).mul_(z).mul_(torch.sub(one, z, out=one_minus_z))
        # The per-step views, made once, last step first: dq as (B, 3, H) for the mul by dh as (B, 1, H),
        # and as (B, 3H) for the matmul.
        dhs = dh_all.unbind(0)
        dq_gates_s, dqs = factors.unbind(0), dq_all.unbind(0)
        dh_gates_s = dh_all[1:].unsqueeze(2).unbind(0)  # (T, B, H) -> (T, B, 1, H)
        views = (dq_gates_s, dqs, dh_gates_s, dhs[1:], dhs[:-1], z.unbind(0))
        for dq_gates, dq, dh_gates, dh, dh_prev, z_t in zip(*(reversed(v) for v in views)):
            dq_gates.mul_(dh_gates)  # the factors become dq
            dh_prev.addcmul_(dh, z_t)  # dy_{t-1} + dh z
            if recurrent_mask is not None:
                dh_prev.addcmul_(torch.mm(dq, weight_hh, out=dq_w), recurrent_mask)
            else:
                dh_prev.addmm_(dq, weight_hh)
        da_n.mul_(dh_all[1:])


def _forward_steps_in_c(kernels: LoopKernels, rzq, n, h_all, weight_hh, recurrent_mask, h_in) -> None:
    """As `_forward_steps`."""
    T, B, H = n.shape
    threads, split = loop_threads(B, weight_hh)
    w, transposed = forward_weight(weight_hh, split, T)
    kernels.gru_forward(T, B, H, *map(address, (rzq, n, h_all, recurrent_mask, h_in, w)), transposed, kernels.gemm, threads, split)


def _backward_steps_in_c(kernels: LoopKernels, rzq, n, h_all, dq_all, da_n, dh_all, weight_hh, recurrent_mask, dq_w) -> None:
    """As `_backward_steps`, the factors computed in the loop, a step at a time."""
    T, B, three_h = rzq.shape
    w, transposed = weight_layout(weight_hh)
    buffers = (rzq, n, h_all, dq_all, da_n, dh_all, recurrent_mask, dq_w, w)
    kernels.gru_backward(T, B, three_h // 3, *map(address, buffers), transposed, kernels.gemm, *loop_threads(B, w))


def gru_recurrence(
    p: Tensor,
    h0: Tensor,
    weight_hh: Tensor,
    bias_hh: Optional[Tensor] = None,
    step_mask: Optional[Tensor] = None,
    recurrent_mask: Optional[Tensor] = None,
    time_major: bool = False,
) -> tuple[Tensor, Tensor]:
    """Run the GRU recurrence over the projected inputs p (B, T, 3H) (gates r, z, n) from h0 (B, H).

    Returns every output y (B, T, H) (zero at masked steps) and the final carried h.
    With `time_major`, p is (T, B, 3H) and y comes back (T, B, H): the loop works time-major,
    so this spares reading p across its rows forward and a copy of its gradient backward.
    """
    if time_major:
        return GRURecurrence.apply(p, None, None, h0, weight_hh, bias_hh, step_mask, recurrent_mask)
    y, h = GRURecurrence.apply(p.transpose(0, 1), None, None, h0, weight_hh, bias_hh, step_mask, recurrent_mask)
    return y.transpose(0, 1), h


def gru_layer(
    x: Tensor,
    weight_ih: Tensor,
    bias_ih: Optional[Tensor],
    h0: Tensor,
    weight_hh: Tensor,
    bias_hh: Optional[Tensor] = None,
    step_mask: Optional[Tensor] = None,
    recurrent_mask: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """`gru_recurrence` of x (B, T, F) with its input side p = x W_ih^T + b_ih computed by the kernel
    (`longshort.projection`): y (T, B, H) time-major, and the final carried h."""
    return GRURecurrence.apply(x, weight_ih, bias_ih, h0, weight_hh, bias_hh, step_mask, recurrent_mask)
