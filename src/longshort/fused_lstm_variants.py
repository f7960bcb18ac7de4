"""The fused LSTM variants: peephole connections, layer normalisation (haste's LayerNormLSTM)
and zoneout, in any combination, with a backward-through-time written by hand. The plain
LSTM's kernel and its derivation are in `fused_lstm`; this one adds the variants' terms.

Forward. `p_t` is the part of z that does not depend on h_prev (bias included, time-major):
computed by the kernel from x, p = x W_ih^T + b for every step in one matmul straight into its
buffer of gates (`lstm_variant_layer`, as the peephole and zoneout LSTMs call it;
`longshort.projection`, which also gives dx, dW_ih and db from dp by hand), or given
(`lstm_variant_recurrence`, as LayerNormLSTM calls it, whose layer norm of the input side comes
between the product and the gates); then for t = 1..T, with r the recurrent dropout mask (1 without):

    q = (r h_prev) W_hh^T                           (B, 4H), one matmul
    z = p_t + gain_hh q^,  q^ = (q - mean q) / s_q  [LN]        else z = p_t + q
    z_i += w_ci c_prev,  z_f += w_cf c_prev         [peephole]
    i, f = sigmoid(z_i, z_f),  g = tanh(z_g)
    c_new = f c_prev + i g
    z_o += w_co c_new                               [peephole]
    o = sigmoid(z_o)
    n = gain_c c^ + shift_c,  c^ = (c_new - mean c_new) / s_c   [LN]   else n = c_new
    h_new = o tanh(n)
    h = k h_prev + (1 - k) h_new                    [zoneout: k the step's keep mask, or the rate]

likewise c from c_new with its own k; the step mask then keeps h_prev, c_prev at padding steps,
and y_t = m h. LN normalises over the features, s = sqrt(var + eps) with the biased variance,
as F.layer_norm. Kept for the backward: the activated gates, tanh(n), c_new, q^ and 1/s_q
(c^ and 1/s_c it recomputes from c_new, all steps in one call).

Backward. `dh_out` is dL/dh_t of step t's carried (zoned-out) h, dy_t included, and `dc_state`
dL/dc_t of the carried c. With u = m (1 - k), the share of the new value in the carried one
(m (1 - rate) for a rate; 0 at padding steps), reading the forward bottom-up:

    zoneout, step mask    ->  dh = u dh_out,  dc = u dc_state
                              dh_prev = (1 - u) dh_out + ...,  dc_prev = (1 - u) dc_state + ...
    h_new = o tanh(n)     ->  do = dh tanh(n),  dn = dh o (1 - tanh(n)^2)
    n = LN_c(c_new)       ->  dc += LN'(dn gain_c, c^, s_c),  dgain_c = sum dn c^,  dshift_c = sum dn
                              (without LN: dc += dn)
    o = sigmoid(z_o)      ->  dz_o = do o (1 - o)
    z_o += w_co c_new     ->  dc += w_co dz_o,  dw_co = sum dz_o c_new
    c_new = f c_prev + i g ->  di = dc g,  df = dc c_prev,  dg = dc i,  dc_prev += dc f
    i, f, g               ->  dz_i = di i (1 - i),  dz_f = df f (1 - f),  dz_g = dg (1 - g^2)
    z_i, z_f += w c_prev  ->  dc_prev += w_ci dz_i + w_cf dz_f,  dw_ci = sum dz_i c_prev,  dw_cf = sum dz_f c_prev
    z = p_t + gain_hh q^  ->  dp_t = dz,  dgain_hh = sum dz q^,  dq = LN'(dz gain_hh, q^, s_q)
                              (without LN: dq = dz)
    q = (r h_prev) W_hh^T ->  dh_prev += r (dq W_hh),  dW_hh = sum dq^T (r h_prev)

and dh_prev + dy_{t-1} is the dh_out of step t - 1.

LN'. For x^ = (x - mu) / s over N features, dmu/dx_j = 1/N and ds/dx_j = x^_j / N, so
dx^_i/dx_j = (delta_ij - 1/N - x^_i x^_j / N) / s, and

    LN'(dx^, x^, s) = (dx^ - mean(dx^) - x^ mean(dx^ x^)) / s.

For LN_c, with d = dx^ / s, the two means are one batched matmul of dh with [d; d c^] / dh
(B, 2, H) and one more subtracts them: dc -= [mean d, mean d c^] [1; c^]. For LN_q the
mean(dx^) term is left out of the loop: it adds the same number to all 4H entries of dq, which
W_c = W_hh - (mean of W_hh's rows) maps to zero; so dh_prev takes dq W_c, and dW_hh is centred
over its rows after the loop.

Every factor that does not depend on dh or dc (`tanh(n) o (1 - o)`, `o (1 - tanh(n)^2)`, with
`gain_c / s_c` and `w_co` folded in, `g i (1 - i)`, `c_prev f (1 - f)`, `i (1 - g^2)`,
`f + w_ci g i (1 - i) + w_cf c_prev f (1 - f)`, u, 1 - u) is computed for all steps at once
before the reverse loop. dW_hh, dgain_hh, dgain_c, dshift_c and the peephole weights' gradients
are one reduction over all steps after it. Padding steps give no gradient, whatever (even NaN)
they hold: u = 0 there, and the forward zeroes the values it keeps of them.

Both loops run under `torch.inference_mode()`, as in `fused_lstm` (fewer dispatcher layers per
op); what they keep or return is allocated before them.

The loops in C. Where `longshort.native` builds csrc/rnn_loops.c, each loop is one call into C
(`_forward_steps_in_c`, `_backward_steps_in_c`) with the same equations, a step there being a
gemm (matrix-vector products of the C file's own on up to 3 rows a thread) and passes over each row of the batch (the layer norms'
means and variances included); the factors above are still computed with torch ops for all
steps at once. The torch-ops loops in `LSTMVariantRecurrence` are the reference and the fallback
(LONGSHORT_NATIVE=0), and the tests run both.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from longshort import projection, workspace
from longshort.native import LoopKernels, address, forward_weight, loops_for, loop_threads, weight_layout


class LayerNormWeights(NamedTuple):
    gain_hh: Tensor  # (4H,) gain of LN over the recurrent projection (no shift)
    gain_c: Tensor  # (H,) gain of LN over the cell state
    shift_c: Tensor  # (H,) shift of LN over the cell state
    epsilon: float


class ZoneoutKeep(NamedTuple):
    """How much of the previous state each step keeps, for h and for c."""

    h: Union[Tensor, float]  # (T, B, H) bool masks (training: True = keep previous value) or a float rate (evaluation)
    c: Union[Tensor, float]


def _hold(keep, masks: Optional[Tensor]) -> tuple[Optional[Tensor], Optional[float]]:
    """One state's (hold, rate) for the forward: `hold` (T, B, H or 1) bool is where the state keeps
    its previous value outright (zoneout mask or padding step), `rate` the evaluation-mode mix."""
    pad = None if masks is None else ~masks
    if isinstance(keep, Tensor):
        return (keep if pad is None else keep | pad), None
    return pad, (float(keep) if keep else None)


def _carry(new: Tensor, prev: Tensor, out: Tensor, hold: Optional[Tensor], rate: Optional[float]) -> None:
    """out = the carried state of a step: new zoned out against prev, and prev where `hold`."""
    if rate is not None:
        new = torch.lerp(new, prev, rate, out=out)
    if hold is not None:
        torch.where(hold, prev, new, out=out)


def _shares(hold: Optional[Tensor], rate: Optional[float], like: Tensor) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """(u, 1 - u): the shares (T, B, H or 1) of the step's new value and of the previous one in the
    carried state; (None, None) when u = 1."""
    if hold is None and rate is None:
        return None, None
    u = like.new_ones(like.shape[0], 1, 1) if hold is None else (~hold).to(like.dtype)
    if rate is not None:
        u = u * (1 - rate)
    return u, 1 - u


def _sigmoid_slope(s: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """s (1 - s): sigmoid's derivative, from its output s."""
    return torch.addcmul(s, s, s, value=-1, out=out)


def _tanh_slope(t: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """1 - t^2: tanh's derivative, from its output t."""
    return torch.addcmul(t.new_ones(()), t, t, value=-1, out=out)


class LSTMVariantRecurrence(torch.autograd.Function):
    """Time-major: p (T, B, 4H), h0, c0 (B, H), weight_hh (4H, H), the variants' weights and masks
    -> y (T, B, H), h_T, c_T.

    With `weight_ih` (4H, F) (and `bias`), its first input is x (B, T, F) instead, and it computes
    p = x W_ih^T + b itself, straight into the buffer of its gates (`longshort.projection`)."""

    @staticmethod
    def forward(ctx, inputs, weight_ih: Optional[Tensor], bias: Optional[Tensor], h0, c0, weight_hh, w_ci, w_cf, w_co,
                gain_hh, gain_c, shift_c, eps, keep_h, keep_c, step_mask: Optional[Tensor], recurrent_mask: Optional[Tensor]):
        recurrent_mask = None if recurrent_mask is None else recurrent_mask.contiguous()  # as the C loops read it
        if weight_ih is None:
            z_all = workspace.empty(inputs, *inputs.shape).copy_(inputs)  # (T, B, 4H), becomes the activated gates
        else:
            z_all = projection.project(inputs, weight_ih, bias)  # the same, from x (B, T, F)
        T, B, four_h = z_all.shape
        H = four_h // 4
        peephole, ln = w_ci is not None, gain_hh is not None
        masks = None if step_mask is None else step_mask.transpose(0, 1).unsqueeze(-1)  # (T, B, 1) bool
        (hold_h, rate_h), (hold_c, rate_c) = _hold(keep_h, masks), _hold(keep_c, masks)
        carry_h, carry_c = hold_h is not None or rate_h is not None, hold_c is not None or rate_c is not None
        zoned_c = isinstance(keep_c, Tensor) or rate_c is not None
        h_all = workspace.empty(z_all, T + 1, B, H)  # h_all[t + 1] is the carried h after step t
        c_all = workspace.empty(z_all, T + 1, B, H)
        h_all[0], c_all[0] = h0, c0
        c_new_all = workspace.empty(z_all, T, B, H) if zoned_c else c_all[1:]  # c before zoneout, for dw_co
        tanh_n_all = workspace.empty(z_all, T, B, H)
        w_cif = torch.stack([w_ci, w_cf]) if peephole else None  # (2, H)
        kernels = loops_for(z_all)
        if kernels is not None:  # the same loop in C (longshort.native)
            qhat, rsig_q = _forward_steps_in_c(kernels, z_all, h_all, c_all, c_new_all, tanh_n_all, weight_hh, w_cif, w_co,
                                               LayerNormWeights(gain_hh, gain_c, shift_c, eps) if ln else None,
                                               (hold_h, rate_h), (hold_c, rate_c), recurrent_mask)
        else:
            w_t = weight_hh.T.contiguous()  # (H, 4H); a contiguous copy: torch's per-step matmul runs about 1.4-2x faster
            # The per-step views, made once: cheaper than indexing in the loop. A state that is carried
            # through zoneout or a step mask is computed into a buffer first.
            zs, if_parts = z_all.unbind(0), z_all[..., : 2 * H].unbind(0)
            z_ifs = z_all[..., : 2 * H].unflatten(-1, (2, H)).unbind(0) if peephole else None  # (B, 2, H) each
            is_, fs, gs, os = (gate.unbind(0) for gate in z_all.split(H, dim=2))
            hs, cs, tanh_ns = h_all.unbind(0), c_all.unbind(0), tanh_n_all.unbind(0)
            h_news = (z_all.new_empty(B, H),) * T if carry_h else hs[1:]
            c_news = c_new_all.unbind(0) if zoned_c else (z_all.new_empty(B, H),) * T if carry_c else cs[1:]
            holds_h, holds_c = ((None,) * T if hold is None else hold.unbind(0) for hold in (hold_h, hold_c))
            h_in, q = z_all.new_empty(B, H), z_all.new_empty(B, four_h)
            qhats, rsig_qs = [], []
            with torch.inference_mode():  # the loop records nothing for autograd: skip its layer of the dispatcher
                for t in range(T):
                    h_prev, c_prev, h_new, c_new, tanh_n = hs[t], cs[t], h_news[t], c_news[t], tanh_ns[t]
                    if recurrent_mask is not None:
                        h_prev = torch.mul(hs[t], recurrent_mask, out=h_in)
                    if ln:
                        qhat, _, rsig_q = torch.native_layer_norm(torch.mm(h_prev, w_t, out=q), (four_h,), None, None, eps)
                        zs[t].addcmul_(qhat, gain_hh)
                        qhats.append(qhat)
                        rsig_qs.append(rsig_q)
                    else:
                        zs[t].addmm_(h_prev, w_t)
                    if peephole:
                        z_ifs[t].addcmul_(c_prev.unsqueeze(1), w_cif)  # (B, 2, H)
                    if_parts[t].sigmoid_()
                    gs[t].tanh_()
                    torch.mul(fs[t], c_prev, out=c_new).addcmul_(is_[t], gs[t])
                    if peephole:
                        os[t].addcmul_(c_new, w_co)
                    os[t].sigmoid_()
                    n = torch.native_layer_norm(c_new, (H,), gain_c, shift_c, eps)[0] if ln else c_new
                    torch.mul(os[t], torch.tanh(n, out=tanh_n), out=h_new)
                    if carry_h:
                        _carry(h_new, hs[t], hs[t + 1], holds_h[t], rate_h)
                    if carry_c:
                        _carry(c_new, c_prev, cs[t + 1], holds_c[t], rate_c)
            qhat, rsig_q = (torch.stack(xs) for xs in (qhats, rsig_qs)) if ln else (None, None)  # (T, B, 4H), (T, B, 1)
        y = h_all[1:]  # (T, B, H)
        if masks is not None:
            y = y * masks
        if masks is not None and any(ctx.needs_input_grad):  # padding steps: no gradient from what they hold
            for x in (z_all, tanh_n_all) + ((c_new_all,) if zoned_c else ()):
                x.masked_fill_(~masks, 0)
        ctx.rates, ctx.eps = (rate_h, rate_c), eps
        x = None if weight_ih is None else inputs  # its rows are taken again in the backward
        ctx.save_for_backward(z_all, h_all, c_all, c_new_all, tanh_n_all, qhat, rsig_q, weight_hh, w_cif, w_co,
                              gain_hh, gain_c, hold_h, hold_c, masks, recurrent_mask, x, weight_ih)
        return y, h_all[T].clone(), c_all[T].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_T, dc_T):
        (z_all, h_all, c_all, c_new, tanh_n, qhat, rsig_q, weight_hh, w_cif, w_co,
         gain_hh, gain_c, hold_h, hold_c, masks, recurrent_mask, x, weight_ih) = ctx.saved_tensors
        T, B, four_h = z_all.shape
        H = four_h // 4
        peephole, ln = w_cif is not None, gain_hh is not None
        i, f, g, o = z_all.split(H, dim=2)  # each (T, B, H)
        c_prev = c_all[:-1]
        # The factors of the derivation that do not depend on dh, dc: all steps at once.
        dz_o_per_dh = _sigmoid_slope(o, out=workspace.empty(o, T, B, H)).mul_(tanh_n)  # (T, B, H)
        dn_per_dh = _tanh_slope(tanh_n, out=workspace.empty(o, T, B, H)).mul_(o)
        dc_per_dh = dn_per_dh
        if ln:
            chat, _, rsig_c = torch.native_layer_norm(c_new, (H,), None, None, ctx.eps)  # (T, B, H), (T, B, 1)
            c_sums_per_dh = workspace.empty(z_all, T, B, 2, H)  # [d; d c^] / dh with d = dc^ / s_c
            dc_per_dh = torch.mul(dn_per_dh, gain_c, out=c_sums_per_dh[:, :, 0]).mul_(rsig_c)
            torch.mul(dc_per_dh, chat, out=c_sums_per_dh[:, :, 1])
        if peephole:
            dc_per_dh = torch.addcmul(dc_per_dh, dz_o_per_dh, w_co)
        dz_ifg_per_dc = workspace.empty(z_all, T, B, 3, H)
        _sigmoid_slope(i, out=dz_ifg_per_dc[:, :, 0]).mul_(g)  # g i (1 - i)
        _sigmoid_slope(f, out=dz_ifg_per_dc[:, :, 1]).mul_(c_prev)  # c_prev f (1 - f)
        _tanh_slope(g, out=dz_ifg_per_dc[:, :, 2]).mul_(i)  # i (1 - g^2)
        dc_prev_per_dc = f
        if peephole:
            dc_prev_per_dc = torch.addcmul(f, dz_ifg_per_dc[:, :, 0], w_cif[0]).addcmul_(dz_ifg_per_dc[:, :, 1], w_cif[1])
        w_hh = weight_hh - weight_hh.mean(0) if ln else weight_hh  # (4H, H), centred: LN_q's mean term
        rate_h, rate_c = ctx.rates
        (u_h, v_h), (u_c, v_c) = _shares(hold_h, rate_h, z_all), _shares(hold_c, rate_c, z_all)

        dz_all = workspace.empty(z_all, T, B, four_h)  # (T, B, 4H): i, f, g scale with dc and sit side by side, then o
        dq_all = workspace.empty(z_all, T, B, four_h) if ln else dz_all
        dh_outs = workspace.empty(dy, T + 1, B, H)  # dh_outs[t + 1] is dh_out of step t, dh_outs[0] ends as dL/dh0
        dh_outs[0] = 0
        if masks is None:
            dh_outs[1:] = dy
        else:
            torch.mul(dy, masks, out=dh_outs[1:])
        if dh_T is not None:
            dh_outs[T] += dh_T
        dc_state, dc_next = dy.new_zeros(B, H), dy.new_empty(B, H)  # dL/dc_t, and dL/dc_{t-1} as it is computed
        if dc_T is not None:
            dc_state.copy_(dc_T)
        kernels = loops_for(z_all)
        if kernels is not None:  # the same loop in C (longshort.native)
            factors = (dz_o_per_dh, dc_per_dh, dz_ifg_per_dc, dc_prev_per_dc) + ((c_sums_per_dh, chat, qhat, rsig_q) if ln else (None,) * 4)
            _backward_steps_in_c(kernels, dz_all, dq_all, dh_outs, dc_state, factors, gain_hh, (u_h, v_h, u_c, v_c), w_hh, recurrent_mask)
        else:
            # The per-step views, made once: cheaper than indexing in the loop.
            dh_out_s, dz_o_per_dhs, dc_per_dhs, dz_ifg_per_dcs, dc_prev_per_dcs, dzs, dqs = (
                x.unbind(0) for x in (dh_outs, dz_o_per_dh, dc_per_dh, dz_ifg_per_dc, dc_prev_per_dc, dz_all, dq_all))
            u_hs, v_hs, u_cs, v_cs = (None if x is None else x.unbind(0) for x in (u_h, v_h, u_c, v_c))
            dz_ifgs, dz_os = dz_all[..., : 3 * H].unflatten(-1, (3, H)).unbind(0), dz_all[..., 3 * H :].unbind(0)
            if ln:
                chat_basis = z_all.new_ones(T, B, 2, H)  # [1; c^]
                chat_basis[:, :, 1] = chat
                c_sums_per_dhs, chat_bases = c_sums_per_dh.transpose(2, 3).unbind(0), chat_basis.unbind(0)  # (B, H, 2), (B, 2, H)
                qhat_rows = qhat.unsqueeze(2)  # (T, B, 1, 4H)
                qhat_cols, qhat_rows, rsig_qs = qhat_rows.transpose(2, 3).unbind(0), qhat_rows.unbind(0), rsig_q.unbind(0)
            with torch.inference_mode():  # every tensor kept or returned was allocated outside: none is an inference tensor
                for t in range(T - 1, -1, -1):
                    dh_out, dh_prev = dh_out_s[t + 1], dh_out_s[t]
                    dh = dh_out if u_h is None else dh_out * u_hs[t]  # dL/dh_new
                    torch.mul(dh, dz_o_per_dhs[t], out=dz_os[t])
                    dc = (dc_state if u_c is None else dc_state * u_cs[t]).addcmul_(dh, dc_per_dhs[t])
                    dc_row = dc.unsqueeze(1)  # (B, 1, H)
                    if ln:  # LN_c's mean terms: dc -= [mean d, mean d c^] [1; c^]
                        dc_row.baddbmm_(torch.bmm(dh.unsqueeze(1), c_sums_per_dhs[t]), chat_bases[t], alpha=-1 / H)
                    torch.mul(dz_ifg_per_dcs[t], dc_row, out=dz_ifgs[t])
                    if ln:  # dq = (dq^ - q^ mean(dq^ q^)) / s_q with dq^ = dz gain_hh; w_hh takes the mean(dq^) term
                        dq_row = torch.mul(dzs[t], gain_hh, out=dqs[t]).unsqueeze(1)  # (B, 1, 4H)
                        dq_row.baddbmm_(torch.bmm(dq_row, qhat_cols[t]), qhat_rows[t], alpha=-1 / four_h)
                        dqs[t].mul_(rsig_qs[t])
                    if recurrent_mask is None:
                        dh_prev.addmm_(dqs[t], w_hh)
                    else:
                        dh_prev.addcmul_(dqs[t] @ w_hh, recurrent_mask)
                    if u_h is not None:
                        dh_prev.addcmul_(dh_out, v_hs[t])
                    torch.mul(dc, dc_prev_per_dcs[t], out=dc_next)
                    if u_c is not None:
                        dc_next.addcmul_(dc_state, v_cs[t])
                    dc_state, dc_next = dc_next, dc_state

        h_in = h_all[:-1] if recurrent_mask is None else h_all[:-1] * recurrent_mask  # (T, B, H)
        dweight_hh = dq_all.reshape(T * B, four_h).T @ h_in.reshape(T * B, H)  # (4H, H)
        dw_ci = dw_cf = dw_co = dgain_hh = dgain_c = dshift_c = None
        if ln:  # the buffers dq_all and dn_per_dh are free now
            dweight_hh -= dweight_hh.mean(0)  # LN_q's mean term, as w_hh in the loop
            dgain_hh = torch.mul(dz_all, qhat, out=dq_all).sum((0, 1))
            dn = dn_per_dh.mul_(dh_outs[1:] if u_h is None else dh_outs[1:] * u_h)  # (T, B, H)
            dshift_c = dn.sum((0, 1))
            dgain_c = dn.mul_(chat).sum((0, 1))
        if peephole:  # the buffer dz_ifg_per_dc is free now
            dz_if = dz_all[..., : 2 * H].unflatten(-1, (2, H))  # (T, B, 2, H)
            dw_ci, dw_cf = torch.mul(dz_if, c_prev.unsqueeze(2), out=dz_ifg_per_dc[:, :, :2]).sum((0, 1))
            dw_co = torch.mul(dz_all[..., 3 * H :], c_new, out=dz_ifg_per_dc[:, :, 2]).sum((0, 1))
        inputs_grads = projection.input_gradients(dz_all, x, weight_ih, ctx.needs_input_grad[:3])  # d(p or x), dW_ih, db
        return (*inputs_grads, dh_outs[0], dc_state, dweight_hh, dw_ci, dw_cf, dw_co, dgain_hh, dgain_c, dshift_c,
                None, None, None, None, None)


# The same loops in C (csrc/rnn_loops.c, the same equations), one call each way; the torch-ops
# loops in `LSTMVariantRecurrence` are the reference, and run where the C version cannot.

def _width(x: Optional[Tensor]) -> int:
    """The last dimension of a (T, B, H or 1) share or hold mask for the C loops (0 for none)."""
    return 0 if x is None else x.shape[-1]


def _forward_steps_in_c(kernels: LoopKernels, z_all, h_all, c_all, c_new_all, tanh_n_all, weight_hh, w_cif, w_co,
                        layer_norm: Optional[LayerNormWeights], keep_h, keep_c, recurrent_mask) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """The forward loop, in place (as the torch-ops loop); returns q^ (T, B, 4H) and 1/s_q (T, B, 1) with LN."""
    T, B, four_h = z_all.shape
    H = four_h // 4
    (hold_h, rate_h), (hold_c, rate_c) = keep_h, keep_c
    hold_h, hold_c = (None if x is None else x.contiguous() for x in (hold_h, hold_c))  # (T, B, H or 1) bool
    qhat = rsig_q = q = None
    gain_hh = gain_c = shift_c = None
    eps = 0.0
    if layer_norm is not None:
        gain_hh, gain_c, shift_c, eps = layer_norm
        qhat, rsig_q, q = workspace.empty(z_all, T, B, four_h), z_all.new_empty(T, B, 1), z_all.new_empty(B, four_h)
    params = torch.tensor([rate_h or 0.0, rate_c or 0.0, eps], dtype=z_all.dtype)
    threads, split = loop_threads(B, weight_hh)
    w, transposed = forward_weight(weight_hh, split, T)
    buffer = None if recurrent_mask is None else z_all.new_empty(B, H)
    weights = (None if x is None else x.contiguous() for x in (w_cif, w_co, gain_hh, gain_c, shift_c))
    kernels.lstm_variant_forward(
        T, B, H, *map(address, (z_all, h_all, c_all, c_new_all, tanh_n_all, qhat, rsig_q, q, *weights)),
        address(hold_h), _width(hold_h), address(hold_c), _width(hold_c),
        *map(address, (params, recurrent_mask, buffer, w)), transposed, kernels.gemm, threads, split)
    return qhat, rsig_q


def _backward_steps_in_c(kernels: LoopKernels, dz_all, dq_all, dh_outs, dc_state, factors, gain_hh, shares, w_hh, recurrent_mask) -> None:
    """The reverse loop, in place (as the torch-ops loop): dz_all, dq_all, dh_outs; dc_state from dL/dc_T to dL/dc_0."""
    T, B, four_h = dz_all.shape
    H = four_h // 4
    factors = [None if x is None else x.contiguous() for x in factors]
    u_h, v_h, u_c, v_c = (None if x is None else x.expand(T, B, x.shape[-1]).contiguous() for x in shares)  # (T, B, H or 1)
    w, transposed = weight_layout(w_hh)
    buffer = None if recurrent_mask is None else dz_all.new_empty(B, H)
    scratch = dz_all.new_empty(B, 3 * H)
    kernels.lstm_variant_backward(
        T, B, H, *map(address, (dz_all, dq_all, dh_outs, dc_state, scratch, *factors, gain_hh, u_h, v_h)), _width(u_h),
        *map(address, (u_c, v_c)), _width(u_c), *map(address, (recurrent_mask, buffer, w)), transposed, kernels.gemm, *loop_threads(B, w))


def lstm_variant_recurrence(
    p: Tensor,
    state: tuple[Tensor, Tensor],
    weight_hh: Tensor,
    *,
    peephole: Optional[tuple[Tensor, Tensor, Tensor]] = None,
    layer_norm: Optional[LayerNormWeights] = None,
    zoneout: Optional[ZoneoutKeep] = None,
    step_mask: Optional[Tensor] = None,
    recurrent_mask: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the LSTM recurrence with any of the variants over p (T, B, 4H), time-major, from `state` (h0, c0).

    `peephole` is (w_ci, w_cf, w_co), each (H,); `layer_norm` the LN weights of haste's LayerNormLSTM
    (the input side's LN belongs in p); `zoneout` what each step keeps of the previous h and c;
    `step_mask` (B, T) is False at padding steps (state carried, output 0); `recurrent_mask` (B, H)
    multiplies h_prev before W_hh. Returns every output y (T, B, H) and the final carried h, c.
    """
    return _apply((p, None, None), state, weight_hh, peephole, layer_norm, zoneout, step_mask, recurrent_mask)


def lstm_variant_layer(
    x: Tensor,
    weight_ih: Tensor,
    bias: Optional[Tensor],
    state: tuple[Tensor, Tensor],
    weight_hh: Tensor,
    *,
    peephole: Optional[tuple[Tensor, Tensor, Tensor]] = None,
    layer_norm: Optional[LayerNormWeights] = None,
    zoneout: Optional[ZoneoutKeep] = None,
    step_mask: Optional[Tensor] = None,
    recurrent_mask: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """`lstm_variant_recurrence` of x (B, T, F) with its input side p = x W_ih^T + b computed by the
    kernel (`longshort.projection`): y (T, B, H) time-major, and the final carried h, c. (A layer
    norm of the input side, as LayerNormLSTM's, sits between the product and the gates: that layer
    gives p.)"""
    return _apply((x, weight_ih, bias), state, weight_hh, peephole, layer_norm, zoneout, step_mask, recurrent_mask)


def _apply(input_side, state, weight_hh, peephole, layer_norm, zoneout, step_mask, recurrent_mask):
    """LSTMVariantRecurrence of (p, None, None) or (x, W_ih, b), its variants' weights unpacked."""
    h0, c0 = state
    w_ci, w_cf, w_co = peephole if peephole is not None else (None, None, None)
    gain_hh, gain_c, shift_c, eps = layer_norm if layer_norm is not None else (None, None, None, 0.0)
    keep_h, keep_c = zoneout if zoneout is not None else (None, None)
    return LSTMVariantRecurrence.apply(*input_side, h0, c0, weight_hh, w_ci, w_cf, w_co, gain_hh, gain_c, shift_c, eps,
                                       keep_h, keep_c, step_mask, recurrent_mask)
