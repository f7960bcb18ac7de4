"""The input side of a fused kernel, every step at once: p = x W^T + b, time-major, written
straight into a buffer the kernel keeps (`longshort.workspace`) and turns into its gates in place.

Through autograd (`F.linear` of x transposed) the same product costs more at large shapes: its
output is a new block of T*B*G numbers, whose pages fault in on their first write (glibc's malloc
gives a freed block above 32 MiB back to the OS), and the kernel then copies it into its own
buffer. At B=128, T=100, F=512, G=2048 the product alone took 322 ms that way and 229 ms into a
kept buffer; at B=32, T=1000, F=128, G=512, 92 ms and 44.

Backward, from dp (T, B, G), rows of x time-major (T, B, F):

    p = x W^T + b   ->   dx = dp W,   dW = dp^T x,   db = the sum of dp over all rows

one matmul each (dx comes back as a (B, T, F) view of time-major rows, as autograd's does).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from longshort import workspace


def project(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """x (B, T, F) -> (p (T, B, G) in a kept buffer, x's rows time-major (T, B, F) for the backward).

    The rows are a view of x where they are contiguous already (x the transposed output of a fused
    layer below), else a copy in a kept buffer."""
    B, T, F = x.shape
    rows = x.transpose(0, 1)  # (T, B, F)
    if not rows.is_contiguous():
        rows = workspace.empty(x, T, B, F).copy_(rows)
    p = workspace.empty(x, T, B, weight.shape[0])  # (T, B, G)
    if bias is None:
        torch.mm(rows.view(T * B, F), weight.t(), out=p.view(T * B, -1))
    else:
        torch.addmm(bias, rows.view(T * B, F), weight.t(), out=p.view(T * B, -1))
    return p, rows


def project_backward(
    dp: Tensor, rows: Tensor, weight: Tensor, needs: tuple[bool, bool, bool]
) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """dp (T, B, G), the rows `project` kept -> dx (B, T, F), dW (G, F), db (G), each where `needs` says."""
    T, B, G = dp.shape
    dp_rows = dp.view(T * B, G)
    dx = None
    if needs[0]:  # a kept buffer too: it is used again once autograd or x.grad lets go of it
        dx = torch.mm(dp_rows, weight, out=workspace.empty(dp, T * B, weight.shape[1])).view(T, B, -1).transpose(0, 1)  # (B, T, F)
    dweight = dp_rows.T @ rows.view(T * B, -1) if needs[1] else None  # (G, F)
    dbias = dp_rows.sum(0) if needs[2] else None  # (G,)
    return dx, dweight, dbias
