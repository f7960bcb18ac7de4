"""The fused kernels' large buffers, kept for their next call.

A fused kernel allocates the same large buffers every call: the gates and states it keeps for
the backward, their gradients, its factors (at B=32, T=100, H=64, a layer-normed LSTM's are
about 3 MiB each). glibc's malloc gives blocks that large back to the OS when they are freed
(`longshort.memory` tells why), so the next call gets fresh pages and pays a page fault per
4 KiB page on its first write: 20% to 30% of a fused training step at these sizes, where an
autograd loop's small per-step blocks come back from malloc's heap at no cost.

So the kernels take their buffers from here. A buffer is a view of a flat tensor this module
keeps; when nothing else holds that tensor's memory any more (no view of it is alive, saved for
a backward, or returned), the next request of the same size and dtype gets it again. What is
kept is what the last calls of each size used, at most `LIMIT_BYTES` (the least recently used
go first); `clear()` lets it all go. Blocks below `MIN_BYTES` come from malloc's heap anyway
and are left to it. A buffer's contents are whatever the last user left: `empty` is `new_empty`.

Unlike `longshort.memory.hold_freed_memory`, this changes nothing outside longshort's kernels.
Where torch has no way to count a storage's users (`torch._C._storage_Use_Count`, a private
function), every request is a new tensor.
"""

from __future__ import annotations

import math
import threading

import torch
from torch import Tensor

MIN_BYTES = 1 << 17  # glibc's first mmap threshold: smaller blocks come from its heap
LIMIT_BYTES = 1 << 30  # at most this much kept

_use_count = getattr(torch._C, "_storage_Use_Count", None)
_lock = threading.Lock()
_kept: list[Tensor] = []  # flat tensors, the most recently handed out last


def empty(like: Tensor, *shape: int) -> Tensor:
    """An uninitialised tensor of `shape` with like's dtype and device, from a kept buffer where one is free."""
    numel = math.prod(shape)
    if _use_count is None or like.device.type != "cpu" or numel * like.element_size() < MIN_BYTES:
        return like.new_empty(shape)
    inference = torch.is_inference_mode_enabled()  # an inference tensor cannot be saved for a backward later
    with _lock:
        for k, flat in enumerate(_kept):
            if flat.numel() == numel and flat.dtype == like.dtype and flat.is_inference() == inference and _unused(flat):
                _kept.append(_kept.pop(k))
                return flat.view(shape)
        flat = like.new_empty(numel)
        _kept.append(flat)
        while sum(kept.numel() * kept.element_size() for kept in _kept) > LIMIT_BYTES:
            _kept.pop(0)  # those in use stay alive with their users
        return flat.view(shape)


def _unused(flat: Tensor) -> bool:
    """Whether nothing but `flat` itself holds its memory (the storage object made to ask counts one)."""
    return _use_count(flat.untyped_storage()._cdata) <= 2


def clear() -> None:
    """Let every kept buffer go (those in use stay alive with their users)."""
    with _lock:
        _kept.clear()
