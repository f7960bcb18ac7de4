"""The fused SimpleRNN (Elman network): a loop over time that does only the recurrent matmul
and the activation, and a backward-through-time written by hand.

Forward. The input side `p_t = W_ih x_t + b` of every step is one matmul for the whole
sequence: computed by the kernel straight into its buffer of states (`simple_rnn_layer`, as the
SimpleRNN layer calls it; `longshort.projection`), or given (`simple_rnn_recurrence`); then for
t = 1..T:

    a = p_t + h_prev W_hh^T                      (B, H), one in-place addmm
    h = act(a)                                   one in-place tanh or relu

The addmm adds into h's slot, which already holds p_t. The h of every step is kept for
the backward.

Backward. `dh` is dL/dh_t (from the output y_t = h_t and from step t+1):

    h = act(a)                 ->  da = dh act'(a),  act' = 1 - h^2 (tanh) or [h > 0] (relu)
    a = p_t + h_prev W_hh^T    ->  dp_t = da,  dh_prev = da W_hh,  dW_hh += da^T h_prev

`act'` does not depend on dh: it is computed for all steps at once before the reverse loop,
so a step does one in-place mul (act' becomes da) and one addmm (into the slot that
already holds dy_{t-1}).
`dW_hh` is one matmul over all steps after the loop; `dW_ih`, `db` and `dx` follow from
`dp` = da, one matmul each (by hand in `longshort.projection`; given p, by autograd through what
made it).

Masks. With m_t in {0, 1} per sequence, the carried state is `h_t = m h_new + (1 - m) h_prev`
and the output is `y_t = m h_new`. So `da = dh m act'(a)` (the m joins the precomputed
factor), the gradient from the output is m dy_t, and `(1 - m) dh` flows straight to the
previous step (one addcmul more per step).

Recurrent dropout. With the sequence's mask r, `a = p_t + (r h_prev) W_hh^T`, so
`dh_prev = r (da W_hh)` and `dW_hh = sum_t da^T (r h_prev)`.

Per-step overhead. At small B a step's ops are small and the Python around them counts: the
per-step views of every buffer are made once before each loop (one `unbind` a buffer; a view
costs about half a small op), and both loops run under `torch.inference_mode()` (they record
nothing for autograd, and inference mode skips the dispatcher's autograd layer, about 1 us an
op). With a batch, the forward's matmul takes W_hh^T as a row-major copy made once per call;
at B = 1 (a matrix-vector product) the copy costs more than it saves. The buffers are
time-major, so that a step's slice is contiguous.

The loops in C. As the GRU's (`fused_gru`, `longshort.native`): where csrc/rnn_loops.c builds,
`_forward_steps_in_c` and `_backward_steps_in_c` run each loop in one call, a step there being a
gemm (matrix-vector products of the C file's own on up to 3 rows a thread) and one pass of the activation or of `da *= dh`; the
torch-ops loops above them are the reference and the fallback (LONGSHORT_NATIVE=0).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from longshort import projection, workspace
from longshort.native import LoopKernels, address, forward_weight, loops_for, loop_threads, weight_layout

_ACTIVATIONS = {"tanh": torch.tanh_, "relu": torch.relu_}


class SimpleRNNRecurrence(torch.autograd.Function):
    """p (B, T, H), h0 (B, H), weight_hh (H, H) -> y (B, T, H), h_T; act "tanh" or "relu".

    With `weight_ih` (H, F) (and `bias`), its first input is x (B, T, F) instead, and it computes
    p = x W_ih^T + b itself, straight into its buffer of states (`longshort.projection`)."""

    @staticmethod
    def forward(ctx, inputs, weight_ih: Optional[Tensor], bias: Optional[Tensor], h0, weight_hh, nonlinearity: str,
                step_mask: Optional[Tensor], recurrent_mask: Optional[Tensor]):
        ctx.set_materialize_grads(False)
        recurrent_mask = None if recurrent_mask is None else recurrent_mask.contiguous()  # as the C loops read it
        if nonlinearity not in _ACTIVATIONS:
            raise ValueError(f"nonlinearity must be one of {tuple(_ACTIVATIONS)}, got {nonlinearity!r}")
        B, T = inputs.shape[:2]
        H = weight_hh.shape[0]
        h_all = workspace.empty(inputs, T + 1, B, H)  # h_all[t + 1] is the carried h after step t; p_t until then
        h_all[0] = h0
        if weight_ih is None:
            h_all[1:] = inputs.transpose(0, 1)  # p given
        else:
            projection.project(inputs, weight_ih, bias, out=h_all[1:])  # (T, B, H)
        h_in = None if recurrent_mask is None else inputs.new_empty(B, H)
        masks = None if step_mask is None else step_mask.T.contiguous().unsqueeze(-1)  # (T, B, 1) bool, contiguous as the C loops read it
        kernels = loops_for(inputs)
        if kernels is None:
            w_t = weight_hh.T.contiguous() if B > 1 else weight_hh.T  # (H, H); see Per-step overhead above
            _forward_steps(_ACTIVATIONS[nonlinearity], h_all, w_t, masks, recurrent_mask, h_in)
        else:
            _forward_steps_in_c(kernels, nonlinearity == "relu", h_all, weight_hh, masks, recurrent_mask, h_in)
        y = h_all[1:]  # (T, B, H)
        if masks is not None:
            y = y * masks
        x = None if weight_ih is None else inputs  # its rows are taken again in the backward
        ctx.save_for_backward(h_all, weight_hh, masks, recurrent_mask, x, weight_ih)
        ctx.nonlinearity = nonlinearity
        return y.transpose(0, 1), h_all[T].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_T):
        h_all, weight_hh, masks, recurrent_mask, x, weight_ih = ctx.saved_tensors
        T, (B, H) = h_all.shape[0] - 1, h_all.shape[1:]  # h_all holds h0 too
        h_prev, h = h_all[:-1], h_all[1:]  # each (T, B, H)
        # act'(a) for all steps at once; it becomes da. At a masked step h is h_prev, but m zeroes it.
        # (relu: h >= 0 at a real step, so sign(h) is [h > 0].)
        da_all = workspace.empty(h, T, B, H)
        if ctx.nonlinearity == "tanh":
            torch.addcmul(h.new_ones(()), h, h, value=-1, out=da_all)  # 1 - h^2
        else:
            torch.sign(h, out=da_all)
        if masks is not None:
            da_all.mul_(masks)
        dh_all = workspace.empty(h_all, T + 1, B, H)  # dh_all[t + 1] is dL/dh_t; dh_all[0] is dL/dh0
        dh_all[0] = 0
        if dy is None:
            dh_all[1:] = 0
        else:
            dh_all[1:] = dy.transpose(0, 1) if masks is None else dy.transpose(0, 1) * masks
        if dh_T is not None:
            dh_all[T] += dh_T
        da_w = None if recurrent_mask is None else h_all.new_empty(B, H)
        kernels = loops_for(h_all)
        if kernels is None:
            passes = None if masks is None else (~masks).to(h.dtype)  # (T, B, 1): 1 - m
            _backward_steps(da_all, dh_all, weight_hh, passes, recurrent_mask, da_w)
        else:
            _backward_steps_in_c(kernels, da_all, dh_all, weight_hh, masks, recurrent_mask, da_w)
        h_in = h_prev if recurrent_mask is None else h_prev * recurrent_mask  # (T, B, H)
        dweight_hh = da_all.reshape(T * B, H).T @ h_in.reshape(T * B, H)  # (H, H)
        dp = da_all if weight_ih is not None else da_all.transpose(0, 1)  # (T, B, H) for the projection, p's (B, T, H) given p
        inputs_grads = projection.input_gradients(dp, x, weight_ih, ctx.needs_input_grad[:3])  # d(p or x), dW_ih, db
        return *inputs_grads, dh_all[0], dweight_hh, None, None, None


# The loops. The torch-ops versions are the reference; where longshort.native builds
# csrc/rnn_loops.c the same loops run in C, one call each way (its equations: the same as here).

def _forward_steps(act_, h_all, w_t, masks, recurrent_mask, h_in) -> None:
    """The forward loop, in place: h_all (T + 1, B, H), rows 1.. from p_t to h_t; masks (T, B, 1) or None."""
    with torch.inference_mode():  # the loop records nothing for autograd: skip its layer of the dispatcher
        hs = h_all.unbind(0)  # the per-step views, made once: cheaper than indexing in the loop
        ms = (None,) * (len(hs) - 1) if masks is None else masks.unbind(0)
        for h_prev, h, m in zip(hs, hs[1:], ms):
            if recurrent_mask is not None:
                act_(h.addmm_(torch.mul(h_prev, recurrent_mask, out=h_in), w_t))
            else:
                act_(h.addmm_(h_prev, w_t))
            if m is not None:
                torch.where(m, h, h_prev, out=h)


def _backward_steps(da_all, dh_all, weight_hh, passes, recurrent_mask, da_w) -> None:
    """The reverse loop, in place: da_all (T, B, H) from act' m to da; dh_all (T + 1, B, H) gets the
    recurrent shares, and at masked steps (passes = 1 - m, (T, B, 1), or None) dh itself."""
    with torch.inference_mode():
        dhs = dh_all.unbind(0)  # the per-step views, made once, last step first
        views = (da_all.unbind(0), dhs[1:], dhs[:-1], (None,) * da_all.shape[0] if passes is None else passes.unbind(0))
        for da, dh, dh_prev, passes_t in zip(*(reversed(v) for v in views)):
            da.mul_(dh)  # act' becomes da
            if recurrent_mask is not None:
                dh_prev.addcmul_(torch.mm(da, weight_hh, out=da_w), recurrent_mask)
            else:
                dh_prev.addmm_(da, weight_hh)
            if passes_t is not None:
                dh_prev.addcmul_(dh, passes_t)


def _forward_steps_in_c(kernels: LoopKernels, relu: bool, h_all, weight_hh, masks, recurrent_mask, h_in) -> None:
    """As `_forward_steps`."""
    T, B, H = h_all.shape[0] - 1, h_all.shape[1], h_all.shape[2]
    threads, split = loop_threads(B, weight_hh)
    w, transposed = forward_weight(weight_hh, split, T)
    masks = None if masks is None else masks.squeeze(-1)  # (T, B) bytes
    kernels.simple_rnn_forward(T, B, H, address(h_all), address(masks), int(relu), *map(address, (recurrent_mask, h_in, w)),
                               transposed, kernels.gemm, threads, split)


def _backward_steps_in_c(kernels: LoopKernels, da_all, dh_all, weight_hh, masks, recurrent_mask, da_w) -> None:
    """As `_backward_steps`, masks (T, B, 1) or None."""
    T, B, H = da_all.shape
    w, transposed = weight_layout(weight_hh)
    masks = None if masks is None else masks.squeeze(-1)  # (T, B) bytes
    kernels.simple_rnn_backward(T, B, H, *map(address, (da_all, dh_all, masks, recurrent_mask, da_w, w)), transposed, kernels.gemm, *loop_threads(B, w))


def simple_rnn_recurrence(
    p: Tensor,
    h0: Tensor,
    weight_hh: Tensor,
    nonlinearity: str = "tanh",
    step_mask: Optional[Tensor] = None,
    recurrent_mask: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """Run the SimpleRNN recurrence `h = act(p_t + h_prev W_hh^T)` over the projected inputs
    p (B, T, H) from h0 (B, H), act "tanh" or "relu".

    Returns every output y (B, T, H) (zero at masked steps) and the final carried h.
    """
    return SimpleRNNRecurrence.apply(p, None, None, h0, weight_hh, nonlinearity, step_mask, recurrent_mask)


def simple_rnn_layer(
    x: Tensor,
    weight_ih: Tensor,
    bias: Optional[Tensor],
    h0: Tensor,
    weight_hh: Tensor,
    nonlinearity: str = "tanh",
    step_mask: Optional[Tensor] = None,
    recurrent_mask: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """`simple_rnn_recurrence` of x (B, T, F) with its input side p = x W_ih^T + b computed by the
    kernel (`longshort.projection`): every output y (B, T, H) and the final carried h."""
    return SimpleRNNRecurrence.apply(x, weight_ih, bias, h0, weight_hh, nonlinearity, step_mask, recurrent_mask)
