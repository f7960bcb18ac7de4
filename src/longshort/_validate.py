"""Checks on what users pass in, each raising an error that names the problem."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def check_sequence(x: Tensor, who: str) -> Tensor:
    """A batch of sequences must be a non-empty floating-point tensor of shape (B, T, F)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{who} expects a torch.Tensor of shape (batch, time, features), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{who} expects a floating-point input, got {x.dtype}; convert it with x.float()")
    if x.dim() != 3:
        raise ValueError(
            f"{who} expects input of rank 3, shape (batch, time, features), got rank {x.dim()} "
            f"with shape {tuple(x.shape)}"
        )
    if x.numel() == 0:
        raise ValueError(f"{who} got an empty input of shape {tuple(x.shape)}: batch, time and features must be >= 1")
    return x


def resolve_mask(mask: Optional[Tensor], lengths: Optional[Tensor], batch: int, time: int, device: torch.device) -> Optional[Tensor]:
    """Turn `mask` (B, T) or `lengths` (B,) into a boolean mask (B, T), True where a step is real."""
    if mask is not None and lengths is not None:
        raise ValueError("pass either mask= or lengths=, not both")
    if lengths is not None:
        try:
            lengths = torch.as_tensor(lengths, device=device)
        except (TypeError, ValueError, RuntimeError):  # a string, None, ragged lists: torch's message names none of it
            raise TypeError(f"lengths must hold integers, one per sequence, got {type(lengths).__name__} {lengths!r:.40}") from None
        if lengths.is_floating_point() or lengths.dtype == torch.bool:
            raise TypeError(f"lengths must hold integers, got {lengths.dtype}")
        if lengths.shape != (batch,):
            raise ValueError(f"lengths must have shape (batch,) = ({batch},), got {tuple(lengths.shape)}")
        if bool((lengths < 0).any()) or bool((lengths > time).any()):
            raise ValueError(f"lengths must lie in [0, {time}] (the number of time steps), got {lengths.tolist()}")
        return torch.arange(time, device=device) < lengths[:, None]  # (B, T)
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch.Tensor of shape (batch, time), got {type(mask).__name__}")
    if mask.shape != (batch, time):
        raise ValueError(f"mask must have shape (batch, time) = ({batch}, {time}), got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or not bool(((mask == 0) | (mask == 1)).all()):
            raise TypeError(f"mask must be boolean (or integer 0/1), got {mask.dtype}; use mask.bool()")
        mask = mask.bool()
    return mask.to(device)


def check_flag(name: str, value: bool) -> bool:
    """An on/off option must be a bool: a string such as "False" would silently count as on."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value

