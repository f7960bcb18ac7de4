"""Training helpers: gradient clipping (by global norm and by value), a record of the
gradient norm at every step, so exploding gradients show up in numbers, and a guard that
never lets a non-finite loss or gradient reach the weights."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import torch
from torch import Tensor, nn

NONFINITE_ADVICE = "lower the learning rate, clip the gradients (clip=Clip(max_norm=1.0)), or skip such steps (skip_nonfinite=True)"


class NonFiniteError(ArithmeticError):
    """A loss or gradient that is NaN or infinite stopped training before the optimizer step,
    so the weights were not updated. The message says what went non-finite, at which step,
    and what to do; `problem` is its first part (what went non-finite), `step` the step's
    number (1-based; None when nothing counted the steps)."""

    def __init__(self, message: str, problem: str, step: Optional[int] = None) -> None:
        super().__init__(message)
        self.problem = problem
        self.step = step


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
    grads = [p.grad if p.grad.dtype != torch.float16 else p.grad.float() for p in parameters if p.grad is not None]
    norms = [torch.linalg.vector_norm(grad) for grad in grads]  # float16's norm would overflow: float32 for it
    if not norms:
        return 0.0
    if any(norm.dtype != norms[0].dtype for norm in norms):  # parameters of several dtypes
        norms = [norm.to(torch.float64) for norm in norms]
    return float(torch.linalg.vector_norm(torch.stack(norms)))


def _clip_in_place(parameters: list[Tensor], clip: Clip) -> None:
    """Clip the gradients as `clip` says: by value, then by global norm."""
    if clip.max_value is not None:
        nn.utils.clip_grad_value_(parameters, clip.max_value)
    if clip.max_norm is not None:
        nn.utils.clip_grad_norm_(parameters, clip.max_norm)


def clip_gradients(parameters: Iterable[Tensor], clip: Clip) -> float:
    """Clip the gradients in place as `clip` says; return their global norm *before* clipping."""
    parameters = [p for p in parameters if p.grad is not None]
    norm = gradient_norm(parameters)
    _clip_in_place(parameters, clip)
    return norm


@dataclass
class History:
    """What happened during training, one entry per step (a call of `train_step`)."""

    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)  # global norm before clipping
    skipped: list[int] = field(default_factory=list)  # steps (1-based) not taken: their loss or gradient was not finite

    def record(self, loss: float, grad_norm: float) -> None:
        self.losses.append(loss)
        self.grad_norms.append(grad_norm)


def nonfinite_problem(loss: float, model: nn.Module) -> str:
    """What went non-finite in a step: the loss, or the gradients of which parameters (by name)."""
    if not math.isfinite(loss):
        return f"the loss is {loss}"
    bad = [
        f"{name} ({'nan' if torch.isnan(p.grad).any() else 'inf'})"
        for name, p in model.named_parameters()
        if p.grad is not None and not bool(torch.isfinite(p.grad).all())
    ]
    if not bad:
        return f"the global gradient norm overflows to inf, though every gradient is finite (loss {loss:.6g})"
    shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    return f"the gradient is not finite in {shown} (loss {loss:.6g})"


def train_step(
    model: nn.Module,
    loss_fn: Callable[[], Tensor],
    optimizer: torch.optim.Optimizer,
    clip: Optional[Clip] = None,
    history: Optional[History] = None,
    skip_nonfinite: bool = False,
) -> float:
    """One optimizer step on the loss `loss_fn()` computes; records loss and gradient norm in `history`.

    Guard: the loss and the global gradient norm, which are read anyway (to return and record),
    are checked before clipping and the optimizer step. If either is NaN or infinite the step is not
    taken, so the weights keep their values: by default a `NonFiniteError` says what went
    non-finite (the loss, or which parameters' gradients) and at which step (counted by
    `history`); with `skip_nonfinite` the gradients are dropped, the step number goes into
    `history.skipped`, and training goes on. Either way the step's loss and norm are recorded.
    Returns the loss (NaN or infinite for a skipped step with such a loss).
    """
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    parameters = [p for p in model.parameters() if p.grad is not None]
    value, norm = float(loss.detach()), gradient_norm(parameters)  # the two reads it always made: the guard adds none
    if history is not None:
        history.record(value, norm)
    if not (math.isfinite(value) and math.isfinite(norm)):
        step = len(history.losses) if history is not None else None
        if not skip_nonfinite:
            problem, at = nonfinite_problem(value, model), "" if step is None else f" at step {step}"
            raise NonFiniteError(f"{problem}{at}: the weights were not updated; {NONFINITE_ADVICE}", problem, step)
        optimizer.zero_grad(set_to_none=True)
        if history is not None:
            history.skipped.append(step)
        return value
    if clip is not None:
        _clip_in_place(parameters, clip)
    optimizer.step()
    return value
