"""`RNN(cell)`: the generic loop over time that runs any cell (see `longshort.cells` for the protocol).

Shape legend: B batch, T time, F input features, H units.

Masks: `mask` (B, T) is True at real steps, anywhere in the sequence (left, right or
inner padding). At a masked step the state passes through unchanged and the output is
zero; the output with `return_sequences=False` is the output of the last real step.
`lengths` (B,) is the same as `mask = arange(T) < lengths[:, None]`.
"""

from __future__ import annotations

import itertools
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import torch
from torch import Tensor, nn
from torch.nn.parameter import UninitializedTensorMixin

from longshort._validate import check_flag, check_sequence, resolve_mask
from longshort.dispatch import NOT_ASKED, Dispatch, check_implementation, choose, faster, fused_comes_first, measures, time_paths
from longshort.native import loops_for

if TYPE_CHECKING:
    from longshort.compiled import CompiledLoop

State = Any  # a tensor (B, ...) or a tuple / NamedTuple of them


def map_state(fn, *states: State) -> State:
    """Apply `fn` leaf by leaf to one or more states of the same structure."""
    first = states[0]
    if isinstance(first, Tensor):
        return fn(*states)
    leaves = [map_state(fn, *parts) for parts in zip(*states)]
    return type(first)(*leaves) if hasattr(first, "_fields") else type(first)(leaves)


def flatten_state(state: State) -> tuple[Tensor, ...]:
    """`h` -> `(h,)`; `LSTMState(h, c)` -> `(h, c)`."""
    if isinstance(state, Tensor):
        return (state,)
    if not isinstance(state, (tuple, list)):
        raise TypeError(f"a state is a tensor or a tuple of tensors, got {type(state).__name__}")
    return tuple(leaf for part in state for leaf in flatten_state(part))


def _where(step_mask: Tensor, new: Tensor, old: Tensor) -> Tensor:
    return torch.where(step_mask.view(-1, *[1] * (new.dim() - 1)), new, old)


def _check_state(state: State, expected: State, who: str, convert: bool = False) -> State:
    """A user's `initial_state` must have the structure and shapes of the cell's own, and its
    dtype; with `convert` (under autocast) it is converted to that dtype instead."""
    try:
        pairs = list(zip(flatten_state(state), flatten_state(expected), strict=True))
    except (TypeError, ValueError):
        raise ValueError(f"{who}: initial_state must look like {_describe(expected)}, got {_describe(state)}") from None
    for given, want in pairs:
        if given.shape != want.shape:
            raise ValueError(f"{who}: initial_state must look like {_describe(expected)}, got {_describe(state)}")
        if given.dtype != want.dtype and not convert:
            raise TypeError(f"{who}: initial_state must have the input's dtype {want.dtype}, got {given.dtype}")
    return map_state(lambda given, want: given.to(want.dtype), state, expected) if convert else state


def parameter_dtype(module: nn.Module) -> Optional[torch.dtype]:
    """The dtype of the module's first floating-point parameter (None if it has none yet)."""
    own = module._parameters.values()  # first, before the slower walk through the submodules
    for parameter in itertools.chain(own, module.parameters()):
        if parameter.is_floating_point() and not isinstance(parameter, UninitializedTensorMixin):  # (the mixin: a fast isinstance)
            return parameter.dtype
    return None


def _describe(state: State) -> str:
    if isinstance(state, Tensor):
        return f"a tensor of shape {tuple(state.shape)}"
    if isinstance(state, (tuple, list)):
        return f"{type(state).__name__} of " + ", ".join(_describe(s) for s in state)
    return type(state).__name__


_OUTSIDE_THE_GRAPH: dict[Callable, Callable] = {}


def outside_the_graph(fn: Callable) -> Callable:
    """`fn` as `torch.compiler.disable` makes it: torch.compile runs it as in eager mode, between two
    graph breaks. Made at the first call under torch.compile, not at import: making it imports
    torch._dynamo, which would triple the time `import longshort` takes."""
    disabled = _OUTSIDE_THE_GRAPH.get(fn)
    if disabled is None:
        disabled = _OUTSIDE_THE_GRAPH[fn] = torch.compiler.disable(fn)
    return disabled


class RNN(nn.Module):
    """Run `cell` over the time axis of a batch-first sequence (B, T, F).

    Returns the last output (B, H), or every output (B, T, H) with `return_sequences`;
    with `return_state` a tuple `(output, *state)` (for an LSTM: `output, h, c`).

    * `go_backwards`: read the sequence from the last step to the first; with
      `return_sequences` the outputs come in that reversed order (as in Keras).
    * `stateful`: the final state of one call is the initial state of the next (detached,
      for truncated back-propagation through time); `reset_states()` clears it.
    * `implementation`: "auto" (default), "vendor", "fused", "compiled" or "loop"; see
      `longshort.dispatch`. `dispatch()` tells which path runs and why the others were refused.
      "compiled" (`longshort.compiled`) runs any cell fast; the first call for each batch size
      pays the compile time, reported in `compile_seconds`.

    Dtypes: the layer computes in its parameters' dtype (float64, float32 or bfloat16: `model.double()`,
    `model.to(torch.bfloat16)`), on every path; an input of another dtype is a TypeError. Under
    `torch.autocast` the layer is one autocast-excluded op, as torch advises for custom autograd
    functions (`torch.amp.custom_fwd(cast_inputs=...)`): its input and initial state are converted to
    the parameters' dtype and the whole recurrence (input projection, recurrent matmuls, gates, state)
    runs in it, with autocast off; outputs, states and parameter gradients come out in that dtype,
    the input's gradient in the input's. The reason: the cell state sums T steps of updates, which
    bfloat16's 8-bit mantissa rounds away (README, "Numerical guards and dtypes", has the figures).
    The layers around it (Dense, TimeDistributed) follow autocast as torch's Linear does.
    """

    accepts_mask = True

    def __init__(
        self,
        cell: nn.Module,
        return_sequences: bool = False,
        return_state: bool = False,
        go_backwards: bool = False,
        stateful: bool = False,
        implementation: str = "auto",
    ) -> None:
        super().__init__()
        for method in ("forward", "initial_state"):
            if not callable(getattr(cell, method, None)):
                raise TypeError(f"{type(cell).__name__} is not a cell: it has no {method}() (see longshort.cells for the protocol)")
        self.cell = cell
        self.return_sequences = check_flag("return_sequences", return_sequences)
        self.return_state = check_flag("return_state", return_state)
        self.go_backwards = check_flag("go_backwards", go_backwards)
        self.stateful = check_flag("stateful", stateful)
        self.state: Optional[State] = None  # the carried state when stateful
        self.implementation = check_implementation(implementation)
        self.last_dispatch: Optional[Dispatch] = None
        self._loops_in_c = False  # `_fused_loops_in_c`'s last answer outside torch.compile
        self._compiled_loop: Optional[CompiledLoop] = None  # made at the first compiled call
        self._compiled_refusal: Optional[str] = None  # why the compiled path refused this cell, once it has
        self._decisions: dict[tuple, Dispatch] = {}  # dispatch's, for a cell that counts its changes
        self._measured: dict[tuple, Dispatch] = {}  # the kernel "auto" measured the faster, by shape (`_measured_dispatch`)
        if implementation != "auto":
            self.dispatch()  # a configuration the path can never run fails now, not at the first call

    @property
    def compile_seconds(self) -> Optional[float]:
        """Seconds spent tracing and compiling the cell's step so far (None before the first compiled call)."""
        return None if self._compiled_loop is None else self._compiled_loop.compile_seconds

    def reset_states(self) -> None:
        """Forget the state a stateful layer carries."""
        self.state = None

    def build(self, input_size: int) -> "RNN":
        """Create the cell's weights now, for `input_size` features (instead of on the first call)."""
        if hasattr(self.cell, "build"):
            self.cell.build(input_size)
        return self

    def forward(
        self,
        x: Tensor,
        initial_state: Optional[State] = None,
        mask: Optional[Tensor] = None,
        lengths: Optional[Tensor] = None,
    ) -> Union[Tensor, tuple[Tensor, ...]]:
        who = type(self).__name__
        check_sequence(x, who)
        B, T, _ = x.shape
        mask = resolve_mask(mask, lengths, B, T, x.device)
        self.build(x.shape[-1])
        dtype = parameter_dtype(self.cell) or x.dtype
        device = x.device.type
        if torch.is_autocast_enabled(device):  # one autocast-excluded op (see the class docstring)
            with torch.autocast(device, enabled=False):
                return self._forward(x.to(dtype), initial_state, mask, who, convert=True)
        if x.dtype != dtype:
            raise TypeError(
                f"{who} has {dtype} parameters but got a {x.dtype} input: convert one to the other "
                f"(x.to({dtype}) or model.to({x.dtype})), or run under torch.autocast, which converts the input"
            )
        return self._forward(x, initial_state, mask, who)

    def _forward(self, x: Tensor, initial_state: Optional[State], mask: Optional[Tensor], who: str, convert: bool = False):
        """`forward` past its checks; `convert` converts `initial_state` to the parameters' dtype (under autocast)."""
        if mask is not None:  # what padding holds (NaN, say) then reaches no output and no gradient, weights' included
            x = x.masked_fill(~mask[..., None], 0.0)
        state = self._initial_state(initial_state, x, who, convert)
        self.reset_dropout_masks()

        if self.go_backwards:
            x = x.flip(1)  # outputs then come in this reversed order, as in Keras
            mask = None if mask is None else mask.flip(1)
        outputs, last, state = self.run(x, state, mask)

        if self.stateful:
            self.state = map_state(Tensor.detach, state)
        if self.return_sequences:
            output = outputs  # (B, T, H)
        else:
            output = outputs[:, -1] if last is None else last  # (B, H)
        return (output, *flatten_state(state)) if self.return_state else output

    def dispatch(self, masked: bool = False, batch: Optional[int] = None, backward: bool = False) -> Dispatch:
        """The path (vendor, fused or loop) a call, with a mask if `masked`, of `batch` rows (None:
        not known, a large batch without `backward`, a small step with it), recorded by autograd if
        `backward`, takes, and why each other path was refused (see `longshort.dispatch`)."""
        compiled_refusal = self._compiled_refusal if self.implementation == "compiled" else NOT_ASKED
        changes = getattr(self.cell, "changes", None)  # the built-in cells count their attribute assignments
        fused_first = (self.implementation == "auto" and fused_comes_first(batch, backward, getattr(self.cell, "weight_hh", None))
                       and self._fused_loops_in_c())  # what "auto" tries first (`longshort.dispatch`)
        key = (self.implementation, masked, compiled_refusal, changes, fused_first)
        decision = self._decisions.get(key)
        if decision is None:  # a new call or a changed cell (train/eval included): decide again (about 15 us a call)
            decision = choose(self.implementation, self.cell, masked, type(self).__name__, compiled_refusal, fused_first)
            if changes is not None:
                if len(self._decisions) > 8:
                    self._decisions.clear()
                self._decisions[key] = decision
        return decision

    def _fused_loops_in_c(self) -> bool:
        """Whether the fused kernels' loops would run in C for the cell's parameters (float32 or
        float64 on CPU, `longshort.native` built), which is what their lead over oneDNN in training
        and at small batches is measured with. Under torch.compile, which cannot trace the question
        (ctypes), the answer of the last call outside it (before any: no, the order the cell prefers)."""
        if torch.compiler.is_compiling():
            return self._loops_in_c
        parameter = next(self.cell.parameters(), None)
        self._loops_in_c = parameter is not None and loops_for(parameter) is not None
        return self._loops_in_c

    def run(self, x: Tensor, state: State, mask: Optional[Tensor]) -> tuple[Optional[Tensor], Tensor, State]:
        """Run the sequence by the path `dispatch` picks. Returns every output (B, T, ...) (or
        None when not needed), the last output (of the last real step; None when that is simply
        `outputs[:, -1]`, taken only where it is used: a view of the outputs costs a few
        microseconds a call), and the final state."""
        backward = self.implementation == "auto" and torch.is_grad_enabled() and (  # only "auto" reads it
            x.requires_grad or any(p.requires_grad for p in self.cell.parameters()))
        self.last_dispatch = self.dispatch(masked=mask is not None, batch=x.shape[0], backward=backward)
        if (self.implementation == "auto" and not torch.compiler.is_compiling()
                and measures(self.last_dispatch, x.shape[0], x.shape[1], getattr(self.cell, "weight_hh", None))):
            self.last_dispatch = self._measured_dispatch(self.last_dispatch, x, state, mask, backward)
        path = self.last_dispatch.implementation
        if path == "loop":
            return self.run_loop(x, state, mask)
        if torch.compiler.is_compiling():
            return outside_the_graph(RNN.run_kernel)(self, path, x, state, mask)
        return self.run_kernel(path, x, state, mask)

    def _measured_dispatch(self, decision: Dispatch, x: Tensor, state: State, mask: Optional[Tensor], backward: bool) -> Dispatch:
        """`decision` with the fused or vendor kernel, whichever measured the faster (`faster`) for a call
        like this one, timed at the first call of its shape (`longshort.dispatch`, Measured)."""
        key = (*x.shape[:2], x.dtype, mask is not None, backward, getattr(self.cell, "changes", None))
        measured = self._measured.get(key)
        if measured is None:
            with torch.random.fork_rng(devices=[]):  # the rehearsals' dropout masks are drawn again for the call
                seconds = time_paths({path: partial(self._rehearse, path, x, state, mask, backward) for path in ("fused", "vendor")})
            self.reset_dropout_masks()
            measured = decision._replace(implementation=faster(seconds), measured=seconds)
            if len(self._measured) > 16:
                self._measured.clear()
            self._measured[key] = measured
        return measured

    def _rehearse(self, path: str, x: Tensor, state: State, mask: Optional[Tensor], backward: bool) -> None:
        """Run this call by `path` on detached copies of x and the state, with the gradients a backward
        would take if `backward` (by `torch.autograd.grad`: no parameter's `.grad` changes)."""
        x, state = x.detach().requires_grad_(x.requires_grad), map_state(lambda s: s.detach().requires_grad_(s.requires_grad), state)
        outputs, _, final = self.run_kernel(path, x, state, mask)
        if backward:
            leaves = [t for t in (x, *flatten_state(state), *self.cell.parameters()) if t.requires_grad]
            total = sum(leaf.sum() for leaf in flatten_state(final)) + (0 if outputs is None else outputs.sum())
            torch.autograd.grad(total, leaves, allow_unused=True)

    def reset_dropout_masks(self) -> None:
        """Forget the cell's dropout masks, if it keeps any (a new sequence draws new ones)."""
        if hasattr(self.cell, "reset_dropout_masks"):
            self.cell.reset_dropout_masks()

    def run_kernel(self, path: str, x: Tensor, state: State, mask: Optional[Tensor]) -> tuple[Optional[Tensor], Tensor, State]:
        """The vendor, fused or compiled path. Inside `torch.compile` they run as they do eagerly, between
        two graph breaks (`outside_the_graph`): dynamo cannot trace the fused kernels' loops (they run
        under inference_mode), Inductor fails on torch's LSTM kernel as called here (torch 2.13), and
        the compiled path compiles itself. The loop path, plain torch ops, is traced (unrolled over T)."""
        if path == "vendor":
            return self.cell.run_vendor(x, state)
        if path == "fused":
            return self.cell.run_fused(x, state, mask)
        return self.run_compiled(x, state, mask)

    def run_compiled(self, x: Tensor, state: State, mask: Optional[Tensor]) -> tuple[Tensor, Tensor, State]:
        """The compiled path (`longshort.compiled`); a cell it cannot run raises a ValueError saying why."""
        from longshort.compiled import CompiledLoop, CompileRefused  # it builds on this module's state helpers

        if self._compiled_loop is None:
            self._compiled_loop = CompiledLoop(self.cell)
        try:
            return self._compiled_loop.run(x, state, mask)
        except CompileRefused as refusal:
            self._compiled_refusal = str(refusal)
            raise ValueError(
                f"{type(self).__name__}(implementation='compiled') cannot run {type(self.cell).__name__}: {refusal}"
            ) from None

    def run_loop(self, x: Tensor, state: State, mask: Optional[Tensor]) -> tuple[Optional[Tensor], Tensor, State]:
        """The loop over time, step by step through the cell."""
        if hasattr(self.cell, "project_input"):  # one matmul for the input side of every step
            inputs, step = self.cell.project_input(x), self.cell.recur  # (B, T, G*H)
        else:
            inputs, step = x, self.cell
        inputs = inputs.unbind(1)  # T views (B, ...); unlike inputs[:, t], one gradient copy in all
        outputs, last = [], None
        for t, input_t in enumerate(inputs):
            y, new_state = step(input_t, state)
            if mask is None:
                state, last = new_state, y
            else:
                m = mask[:, t]  # (B,)
                state = map_state(lambda new, old: _where(m, new, old), new_state, state)
                y = _where(m, y, torch.zeros_like(y))
                last = y if last is None else _where(m, y, last)
            if self.return_sequences:
                outputs.append(y)
        return (torch.stack(outputs, dim=1) if self.return_sequences else None), last, state  # (B, T, H)

    def _initial_state(self, initial_state: Optional[State], x: Tensor, who: str, convert: bool = False) -> State:
        zeros = self.cell.initial_state(x.shape[0], x)
        if initial_state is not None:
            return _check_state(initial_state, zeros, who, convert)
        if self.stateful and self.state is not None:
            carried = flatten_state(self.state)[0].shape[0]
            if carried != x.shape[0]:
                raise ValueError(
                    f"{who} is stateful and carries a state for batch size {carried}, got a batch of {x.shape[0]}; "
                    "call reset_states() to start over with a new batch size"
                )
            return self.state
        return zeros

    def extra_repr(self) -> str:
        flags = ("return_sequences", "return_state", "go_backwards", "stateful")
        return ", ".join(f"{flag}=True" for flag in flags if getattr(self, flag))
