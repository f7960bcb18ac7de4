"""The input side of a fused kernel, every step at once: p = x W^T + b, time-major, written
straight into a buffer kept between calls (`longshort.workspace`), which the LSTM's kernel turns
into its gates in place and the GRU's reads into its own, or (`out`) into the SimpleRNN's
buffer of states, where each step's h takes the place of its p_t.

Through autograd (`F.linear` of x transposed) the same product costs more at large shapes: its
output is a new block of T*B*G numbers, whose pages fault in on their first write (glibc's malloc
gives a freed block above 32 MiB back to the OS), and the kernel then copies it into its own
buffer. At B=128, T=100, F=512, G=2048 the product alone took 322 ms that way and 229 ms into a
kept buffer; at B=32, T=1000, F=128, G=512, 92 ms and 44.

Backward, from dp (T, B, G), with x's rows taken time-major (T, B, F) again:

    p = x W^T + b   ->   dx = dp W,   dW = dp^T x,   db = the sum of dp over all rows

one matmul each (dx comes back as a (B, T, F) view of time-major rows, as autograd's does).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from longshort import workspace


def time_major_rows(x: Tensor) -> Tensor:
    """x (B, T, F) as rows time-major (T, B, F): a view of x where they are contiguous already (x the
    transposed output of a fused layer below), else a copy. The copy is made again in the backward
    rather than kept between the passes, and from malloc rather than kept between calls: either
    way, a copy T*B*F large held on to raised the peak memory of a training step at B=32, T=1000,
    H=F=128 from 222 MiB to 238."""
    return x.transpose(0, 1).contiguous()  # (T, B, F)


def project(x: Tensor, weight: Tensor, bias: Optional[Tensor], out: Optional[Tensor] = None) -> Tensor:
    """x (B, T, F) -> p = x W^T + b (T, B, G), in a kept buffer, or into `out` (T, B, G), contiguous."""
    rows = time_major_rows(x)
    T, B, F = rows.shape
    p = workspace.empty(x, T, B, weight.shape[0]) if out is None else out  # (T, B, G)
    if bias is None:
        torch.mm(rows.view(T * B, F), weight.t(), out=p.view(T * B, -1))
    else:
        torch.addmm(bias, rows.view(T * B, F), weight.t(), out=p.view(T * B, -1))
    return p


def project_backward(
    dp: Tensor, x: Tensor, weight: Tensor, needs: tuple[bool, bool, bool]
) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """dp (T, B, G), x (B, T, F) -> dx (B, T, F), dW (G, F), db (G), each where `needs` says."""
    T, B, G = dp.shape
    dp_rows = dp.view(T * B, G)
    dx = (dp_rows @ weight).view(T, B, -1).transpose(0, 1) if needs[0] else None  # (B, T, F)
    dweight = dp_rows.T @ time_major_rows(x).view(T * B, -1) if needs[1] else None  # (G, F)
    dbias = dp_rows.sum(0) if needs[2] else None  # (G,)
    return dx, dweight, dbias


def input_gradients(
    dp: Tensor, x: Optional[Tensor], weight: Optional[Tensor], needs: tuple[bool, bool, bool]
) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """A fused kernel's gradients of its first three inputs (x or p, W_ih, b): `project_backward`'s
    where it projected x itself (`weight` given), else (dp, None, None): p was given."""
    return (dp, None, None) if weight is None else project_backward(dp, x, weight, needs)
