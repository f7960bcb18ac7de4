"""Training helpers: gradient clipping (by global norm and by value) and a record of the
gradient norm at every step, so exploding gradients show up in numbers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import torch
from torch import Tensor, nn


@dataclass
class Clip:
    """How to clip gradients before each optimizer step (both may be set; value clipping runs first)."""

    max_norm: Optional[float] = None  # rescale all gradients so their global L2 norm is <= max_norm (Pascanu et al. 2013)
    max_value: Optional[float] = None  # clamp each gradient element into [-max_value, max_value]

    def __post_init__(self) -> None:
        for name in ("max_norm", "max_value"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"Clip.{name} must be positive, got {value}")


def gradient_norm(parameters: Iterable[Tensor]) -> float:
    """The global L2 norm of the gradients of `parameters` (those that have one)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


def clip_gradients(parameters: Iterable[Tensor], clip: Clip) -> float:
    """Clip the gradients in place as `clip` says; return their global norm *before* clipping."""
    parameters = [p for p in parameters if p.grad is not None]
    norm = gradient_norm(parameters)
    if clip.max_value is not None:
        nn.utils.clip_grad_value_(parameters, clip.max_value)
    if clip.max_norm is not None:
        nn.utils.clip_grad_norm_(parameters, clip.max_norm)
    return norm


@dataclass
class History:
    """What happened during training, one entry per optimizer step."""

    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)  # global norm before clipping

    def record(self, loss: float, grad_norm: float) -> None:
        self.losses.append(loss)
        self.grad_norms.append(grad_norm)


def train_step(
    model: nn.Module,
    loss_fn: Callable[[], Tensor],
    optimizer: torch.optim.Optimizer,
    clip: Optional[Clip] = None,
    history: Optional[History] = None,
) -> float:
    """One optimizer step on the loss `loss_fn()` computes; records loss and gradient norm in `history`."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    parameters = list(model.parameters())
    norm = clip_gradients(parameters, clip) if clip is not None else gradient_norm(parameters)
    optimizer.step()
    value = float(loss.detach())
    if history is not None:
        history.record(value, norm)
    return value
