"""Any cell, compiled: longshort walks time and does the backward-through-time itself; one step's
forward and its backward are traced once and compiled by TorchInductor.

`RNN(cell, implementation="compiled")` runs this path. Autograd over a Python loop records a
node per tensor op per step and walks them all back one by one; at small batches that
bookkeeping, not the arithmetic, is most of the time. Here a step is one call of compiled code
forward and one backward, and everything that does not need the loop over time runs once
over all steps.

Backward through time, for any cell. A step is F(p_t, s_{t-1}; theta) = (y_t, s_t): the cell's
`recur(p_t, state)` with `p_t = project_input(x_t)` hoisted out of the loop (one matmul for the
whole sequence) when the cell has them, else its `forward(x_t, state)` with p_t = x_t. A cell
without them usually still has an input side, W_ih x_t + b say, computed from x_t and the
weights alone; `split_input_side` finds it in the traced step and, where it meets the state
through one (B, G) tensor, hoists it as if the cell had declared it. With
`dy_t` = dL/dy_t and `lam_t` = dL/ds_t through every later step (lam_T from the final state):

    lam_{t-1} = (dF/ds_{t-1})^T (dy_t, lam_t)            t = T..1, one compiled call each
    dtheta    = sum_t (dF/dtheta)^T (dy_t, lam_t)
    dp_t      = (dF/dp_t)^T (dy_t, lam_t)

Only the first line needs the reverse loop. The last two are one vector-Jacobian product of F
applied to all T * B rows at once (steps stacked as a batch), with the cotangents (dy_t, lam_t)
collected by the loop: the sum over steps becomes the matmul over rows, so the weight
gradients cost one large matmul each, as in the hand-written kernels (a long sequence goes in
chunks of whole steps, `ROWS_PER_PASS` rows at most, to bound the memory of this pass). This needs a cell that
treats the rows of a batch independently (no batch statistics); the first trace checks it.
That pass is traced and compiled too, once per number of rows (so once per sequence length up to
`ROWS_PER_PASS` / B steps), at most `COMPILED_PASSES` shapes per layer; beyond them, or where it
cannot be traced, it runs under autograd, op by op. Where the loops ran in C, the pass reads what
the forward loop saved at each step instead of computing the step's forward again (see "the
all-steps pass from what the forward loop saved", below).

Masks. With m_t in {0, 1} per sequence, the carried state is `m s_new + (1 - m) s_{t-1}` and the
output `m y_t`. So the step's cotangents are (m dy_t, m lam_t), `(1 - m) lam_t` flows straight
to s_{t-1}, and padding steps (their rows zeroed for the all-steps pass) give no gradient,
whatever (even NaN) they hold.

The step. `torch.fx`'s `make_fx` traces `F` and its state-gradient into one ATen graph (the
joint graph); AOTAutograd's min-cut partitioner (what torch.compile uses) splits it into a
forward that also returns what the backward needs and a backward that starts from those saved
values; TorchInductor compiles each: the step's matmul stays a BLAS call and its elementwise
math becomes one generated C++ kernel. Where Inductor cannot compile (no C++ compiler, say)
the two graphs run as traced, op by op, with a warning: still without autograd's bookkeeping.

At small batches (B <= `MATRIX_VECTOR_ROWS`) a step's matmuls are matrix-vector products, for
which a call of torch's BLAS costs much more than the arithmetic (25-35 us at (1, 256) x
(256, 1024) on the benchmark machine). Where the loops run in C (below), the matmuls stay
matmuls and the loops do them with matrix-vector products of their own (csrc/matrix_vector.h,
several independent sums at once; from a (128, 512) weight on split between the threads, each
reading a block of the weight's rows). Where the step is called from Python instead, it is traced with each such matmul
written as a multiply and a sum over the inner dimension (`_matrix_vector_decompositions`),
which Inductor compiles into a loop of its own, fused with the elementwise math around it: a
custom LSTM cell at B = 1, H = 256 trained in 6.9 ms instead of 10.7 that way. Inside the loops
in C that was the slow part: Inductor makes each output one dot product with a single vector
accumulator, which waits on its own adds (42-45 us a step at (1, 256) x (256, 1024) on one
thread, about 7 at full rate); side by side, the products in C train the same cell at B = 1 in
0.67-0.76x the time at H = 256, 0.55-0.60x at H = 512, 0.85-0.94x at H = 64, and 0.81-0.96x at
B = 4, H = 256. (Where Inductor cannot compile, the traced multiply-and-sum runs as torch ops,
slower than the matmul it replaces.) `CompiledStep.reductions` tells which way a step went.

Looped in C. Calling the compiled step from Python each step costs more than its arithmetic at
small shapes (6.6 us a step forward at B = 1, H = 64, mostly the wrapper's allocations; a matmul
through torch's dispatcher 27-30 us at B = 32, H = 64). `compiled_loops` records what the
wrapper does once and runs it as a program in both loops over time, in C (csrc/step_loops.c,
built once per machine), calling the step's kernels where Inductor built them and the matmuls
through torch's BLAS: side by side, a custom LSTM cell trains in
1.3 ms instead of 2.3 at B = 1, H = 64 (the fused LSTM: 0.8), 7.1 instead of 9.3 at B = 1,
H = 256 (7.2), 8.9 instead of 11.5 at B = 32, H = 64 (6.3). Where a step does something else (an
ATen op Inductor does not generate code for), or the loops do not reproduce its wrapper, it is
called a step at a time as before (logged, with the reason; `STEP_LOOPS_IN_C = False` turns the
loops off).

Compiling takes seconds; it happens at the first call for each batch size, dtype and
train/eval mode (kept per layer). Inductor keeps what it compiled on disk: its graph cache (a
graph compiled before, in this process or an earlier one, is loaded instead of generated; see
`_inductor_compile`) and its C++ builds. A custom LSTM cell at H = 64 on the benchmark machine
(AMD EPYC, host contended): 9.9 s for its first step compiled with nothing cached, 4.9 for a
second batch size, 2.1 and 0.3 in a later process. `RNN.compile_seconds` totals it; each compile
is logged on the `longshort` logger.

What the path refuses (`implementation="compiled"` then raises, naming the reason): a step
that draws random numbers (dropout inside the step: the all-steps pass would draw them
anew), one that reads a tensor that is neither a parameter, a buffer nor its input (it would
be frozen into the compiled code), one that mixes the rows of the batch, a state that is not
a tensor or a (named) tuple of tensors.
"""

from __future__ import annotations

import copy
import logging
import math
import time
import warnings
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from longshort.rnn import flatten_state, map_state

if TYPE_CHECKING:
    from longshort.compiled_loops import StepLoops

logger = logging.getLogger("longshort")

Call = Callable[[list[Tensor]], Sequence[Tensor]]  # a graph in Inductor's calling convention: a list in, outputs out
STEP_LOOPS_IN_C = True  # loop the compiled step over time in C where its wrapper calls only kernels and matmuls (`compiled_loops`)
MATRIX_VECTOR_ROWS = 4  # up to this batch a step's matmuls are matrix-vector products: the loops in C do them (csrc/matrix_vector.h), a step called from Python has them compiled as reductions


class CompileRefused(ValueError):
    """The cell's step cannot run on the compiled path; the message says why."""


class _Step(nn.Module):
    """One step of `cell` as a module of its own, so `functional_call` can put graph inputs in
    place of its parameters: `recur(p_t, state)` when the input projection is hoisted (the cell's
    own, or from a `split` of its traced step), else `cell(x_t, state)`."""

    def __init__(self, cell: nn.Module, hoisted: bool) -> None:
        super().__init__()
        self.cell = cell
        self.hoisted = hoisted

    def forward(self, input_t: Tensor, state, split: Optional["_InputSplit"] = None):
        if split is not None:
            return split.recur(input_t, state)
        return self.cell.recur(input_t, state) if self.hoisted else self.cell(input_t, state)


def hoists_input(cell: nn.Module) -> bool:
    """Whether `cell` offers `project_input` / `recur` (see the cell protocol in `longshort.cells`)."""
    return callable(getattr(cell, "project_input", None)) and callable(getattr(cell, "recur", None))


def time_major_projection(cell: nn.Module, x: Tensor) -> Tensor:
    """`cell.project_input` of every step of x (B, T, F) as (T, B, G), contiguous: the cell's own
    `time_major_input` where it has one (the protocol's optional method: x transposed, F wide, before
    the matmul), else the projection transposed after it (G wide, and its gradient back: a custom
    LSTM cell with the method trains in 0.85-0.94x the time without it at B=32 and 128)."""
    if callable(getattr(cell, "time_major_input", None)):
        return cell.time_major_input(x).contiguous()
    return cell.project_input(x).transpose(0, 1).contiguous()


def _rebuild(template, leaves: Sequence[Tensor]):
    """A state with the structure of `template` and the given leaves, in `flatten_state` order."""
    remaining = iter(leaves)
    return map_state(lambda _: next(remaining), template)


@dataclass
class CompiledStep:
    """The compiled forward and backward of one step, for one batch size, dtype and mode."""

    forward: Call  # [*tensors, input_t, *state] -> [y, *new_state, *saved]
    backward: Call  # see `backward_arguments`
    backward_arguments: list[tuple[str, int]]  # the backward's inputs in order: ("saved", k) or ("cotangent", k)
    state_leaves: int  # how many tensors the state holds
    seconds: float  # how long tracing and compiling took
    reductions: bool  # its small matmuls compiled as a multiply and a sum (`_matrix_vector_decompositions`)
    loops: Optional["StepLoops"] = None  # the two looped over time in C, where they can be (`compiled_loops`)
    saved_names: Sequence[str] = ()  # the joint graph's nodes the forward saves, in the order it returns them

    def step_backward(self, saved: Sequence[Tensor], cotangents: Sequence[Tensor]) -> Sequence[Tensor]:
        """dL/ds_{t-1} of each state tensor, from the step's saved values and its outputs' cotangents."""
        if self.in_order:
            return self.backward([*saved, *cotangents])
        sources = {"saved": saved, "cotangent": cotangents}
        return self.backward([sources[kind][k] for kind, k in self.backward_arguments])

    def __post_init__(self) -> None:
        # Whether the backward takes the saved values in order, then the cotangents in order (the usual case).
        saved = sum(kind == "saved" for kind, _ in self.backward_arguments)
        cotangents = len(self.backward_arguments) - saved
        expected = [("saved", k) for k in range(saved)] + [("cotangent", k) for k in range(cotangents)]
        self.in_order = self.backward_arguments == expected


class CompiledLoop:
    """The compiled path of one `RNN`: traces and compiles its cell's step on demand and runs sequences.

    Not a module: it holds no parameters of its own (they stay in the cell) and is rebuilt
    empty when the layer is copied or pickled.
    """

    def __init__(self, cell: nn.Module) -> None:
        self.cell = cell
        self.hoisted = hoists_input(cell)
        self.step_module = _Step(cell, self.hoisted)
        # A cell without project_input / recur: its step split at the input side, traced once per
        # batch size, input shape, dtype and mode (None where it does not split; `split_input_side`).
        self.splits: dict[tuple, Optional[_InputSplit]] = {}
        self.steps: dict[tuple, CompiledStep] = {}
        self.passes: dict[tuple, Optional[Call]] = {}  # the compiled all-steps gradient pass, per shape (None: runs eagerly)
        self.saved_passes: dict[tuple, Optional[tuple[Call, list]]] = {}  # the same from the forward's saved values, and where they are (None: cannot)
        self.compile_seconds = 0.0

    def __deepcopy__(self, memo) -> "CompiledLoop":
        return CompiledLoop(copy.deepcopy(self.cell, memo))

    def __getstate__(self):
        return {"cell": self.cell}

    def __setstate__(self, state) -> None:
        self.__init__(state["cell"])

    # -- running a sequence ---------------------------------------------------------------------
    def run(self, x: Tensor, state, mask: Optional[Tensor]):
        """x (B, T, F), the initial state and the step mask (B, T) -> all outputs (B, T, ...), the last real one
        (None without a mask: the outputs' last step, as `RNN.run` reads it), the final state."""
        split = None if self.hoisted else self._split(x, state)
        if self.hoisted:  # the cell's own projection
            inputs = time_major_projection(self.cell, x)  # (T, B, G): step t reads a contiguous inputs[t]
        elif split is not None:
            inputs = split.project_input_time_major(x)  # (T, B, G), as contiguous, without transposing it
        else:
            inputs = x.transpose(0, 1).contiguous()  # (T, B, F)
        named = self._named_tensors()
        names, tensors = [name for name, _ in named], [tensor for _, tensor in named]
        leaves = [leaf.contiguous() for leaf in flatten_state(state)]
        compiled = self._compiled_step(tensors, inputs[0], _rebuild(state, leaves), split)
        step_mask = None if mask is None else mask.transpose(0, 1).contiguous()  # (T, B)
        outputs, *final = _CompiledRecurrence.apply(
            _Recurrence(self, compiled, names, step_mask, state, split), inputs, *leaves, *tensors
        )
        outputs = outputs.transpose(0, 1)  # (B, T, ...)
        return outputs, _last_output(outputs, mask), _rebuild(state, final)

    def _named_tensors(self) -> list[tuple[str, Tensor]]:
        """The step module's parameters and buffers, which the compiled step takes as inputs."""
        return list(self.step_module.named_parameters()) + list(self.step_module.named_buffers())

    def step(self, names: Sequence[str], tensors: Sequence[Tensor], input_t: Tensor, state, split: Optional["_InputSplit"] = None):
        """One step of the cell (`recur` of `split` if given), eagerly, with `tensors` in place of its parameters and buffers."""
        return torch.func.functional_call(self.step_module, dict(zip(names, tensors)), (input_t, state, split))

    def _split(self, x: Tensor, state) -> Optional["_InputSplit"]:
        key = (self.cell.training, x.shape[0], x.shape[2:], x.dtype, x.device)
        if key not in self.splits:
            self.splits[key] = split_input_side(self, x[:, 0], state)
            if self.splits[key] is not None:
                logger.info("%s: the part of its step that reads only x_t and the weights runs once for all steps",
                            type(self.cell).__name__)
        return self.splits[key]

    # -- tracing and compiling ------------------------------------------------------------------
    def _compiled_step(self, tensors: Sequence[Tensor], input_t: Tensor, state, split: Optional["_InputSplit"]) -> CompiledStep:
        leaves = flatten_state(state)
        key = self.shape_key(split, (*tensors, input_t, *leaves))
        if key not in self.steps:
            small = input_t.shape[0] <= MATRIX_VECTOR_ROWS
            compiled = self._trace_and_compile(tensors, input_t, state, split, reductions=small and not _step_loops_buildable())
            if small and compiled.loops is None and not compiled.reductions:  # called a step at a time after all: reductions are faster there
                seconds = compiled.seconds
                compiled = self._trace_and_compile(tensors, input_t, state, split, reductions=True)
                compiled.seconds += seconds
            self.steps[key] = compiled
            self.compile_seconds += compiled.seconds
            logger.info("compiled the step of %s for input %s in %.1f s", type(self.cell).__name__,
                        tuple(input_t.shape), compiled.seconds)
        return self.steps[key]

    def shape_key(self, split: Optional["_InputSplit"], tensors: Sequence[Tensor], *extra) -> tuple:
        """What a piece compiled for this layer is kept under: train or eval mode, whether the step is
        split at its input side, `extra`, and each tensor's shape, strides, dtype and device."""
        return (self.cell.training, split is not None, *extra) + tuple((t.shape, t.stride(), t.dtype, t.device) for t in tensors)

    def compiled_passes(self) -> int:
        """How many shapes of the all-steps gradient pass this layer has compiled, of either kind."""
        return len(self.passes) + sum(built is not None for built in self.saved_passes.values())

    def compiled_pass(self, vjp: Callable[..., tuple[Tensor, ...]], arguments: list[Tensor], wanted: Sequence[bool],
                      split: Optional["_InputSplit"]) -> Optional[Call]:
        """The all-steps gradient pass `vjp` compiled for these arguments' shapes, or None: run it eagerly
        (more than `COMPILED_PASSES` shapes already, or it could not be traced)."""
        # Splits are kept per batch size; this pass runs a split's recur half over T * B rows, which works
        # only where that half does not depend on the batch size, so batch sizes with the same rows share it.
        key = self.shape_key(split, arguments, tuple(wanted))
        if key not in self.passes:
            if self.compiled_passes() >= COMPILED_PASSES:
                return None
            from torch._inductor.decomposition import select_decomp_table
            from torch.fx.experimental.proxy_tensor import make_fx

            start = time.perf_counter()
            try:
                graph = make_fx(vjp, decomposition_table=select_decomp_table())(*arguments)
            except Exception as error:  # noqa: BLE001 - the eager pass computes the same; say why it runs
                logger.info("%s: the all-steps gradient pass runs eagerly (tracing it failed: %s)", type(self.cell).__name__, error)
                self.passes[key] = None
                return None
            self.passes[key] = _inductor_compile(graph, list(arguments))
            seconds = time.perf_counter() - start
            self.compile_seconds += seconds
            logger.info("compiled the all-steps gradient pass of %s for %d rows in %.1f s", type(self.cell).__name__,
                        arguments[0].shape[0], seconds)
        return self.passes[key]

    def _trace_and_compile(self, tensors: Sequence[Tensor], input_t: Tensor, state, split: Optional["_InputSplit"],
                           reductions: bool) -> CompiledStep:
        """Trace the step's forward and state-gradient, partition and compile them; `reductions`: with
        its small matmuls written as a multiply and a sum (`_matrix_vector_decompositions`)."""
        from torch._functorch.partitioners import min_cut_rematerialization_partition
        from torch._inductor.decomposition import select_decomp_table
        from torch.fx.experimental.proxy_tensor import make_fx

        start = time.perf_counter()
        names = [name for name, _ in self._named_tensors()]
        tensors = [t.detach() for t in tensors]
        leaves = [leaf.detach() for leaf in flatten_state(state)]
        with torch.no_grad():
            y, new_state = self.step(names, tensors, input_t.detach(), state, split)
        _check_step_output(y, new_state, state)
        outputs = [y, *flatten_state(new_state)]

        def joint(primals: list[Tensor], tangents: list[Tensor]) -> tuple[Tensor, ...]:
            """F and (dF/ds)^T: the step's outputs, then the gradient of each state tensor."""
            *params, input_t, = primals[: len(tensors) + 1]
            step_leaves = primals[len(tensors) + 1 :]
            with torch.enable_grad():
                y, new_state = self.step(names, params, input_t, _rebuild(state, step_leaves), split)
                outs = [y, *flatten_state(new_state)]
                pairs = [(out, tangent) for out, tangent in zip(outs, tangents) if out.requires_grad]
                grads = torch.autograd.grad([o for o, _ in pairs], step_leaves, [t for _, t in pairs], allow_unused=True) if pairs else [None] * len(step_leaves)
            grads = [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(grads, step_leaves)]
            return (*outs, *grads)

        primals = [*tensors, input_t.detach(), *(leaf.clone().requires_grad_() for leaf in leaves)]
        tangents = [torch.zeros_like(out, memory_format=torch.contiguous_format) for out in outputs]
        decompositions = select_decomp_table()
        if reductions:  # the step's matmuls as reductions (see the module docstring)
            decompositions = {**decompositions, **_matrix_vector_decompositions(decompositions)}
        graph = make_fx(joint, decomposition_table=decompositions)(primals, tangents)
        _check_graph(graph, type(self.cell).__name__)
        _check_rows(lambda i, s: self.step(names, tensors, i, s, split), input_t.detach(), state)
        forward_graph, backward_graph = min_cut_rematerialization_partition(
            graph, (primals, tangents), num_fwd_outputs=len(outputs)
        )
        arguments = _backward_arguments(forward_graph, backward_graph, len(outputs))
        example = [t.detach() for t in primals]
        forward_call = _inductor_compile(forward_graph, example)
        forward_out = forward_call(list(example))  # the backward is compiled for what the compiled forward saves
        backward_example = [{"saved": forward_out[len(outputs) :], "cotangent": tangents}[kind][k] for kind, k in arguments]
        backward_call = _inductor_compile(backward_graph, backward_example)
        backward_out = backward_call(list(backward_example))
        # The compiled code takes its inputs in the layout it was compiled for, unchecked: the states
        # each step hands on must come out as they went in (contiguous), or be made so.
        n = len(leaves)
        if not all(t.is_contiguous() for t in [*forward_out[1 : n + 1], *backward_out]):
            forward_call = _contiguous_outputs(forward_call, range(1, n + 1))
            backward_call = _contiguous_outputs(backward_call, range(n))
        loops = _step_loops(forward_call, example, backward_call, arguments, len(tensors), n, type(self.cell).__name__)
        saved_names = [str(node) for node in _graph_outputs(forward_graph)[len(outputs) :]]
        return CompiledStep(forward_call, backward_call, arguments, n, time.perf_counter() - start, reductions, loops, saved_names)


# -- hoisting the input side of any cell -----------------------------------------------------------
# A cell without `project_input` / `recur` usually still computes something from x_t and its weights
# alone, W_ih x_t + b say, before it meets the state. Traced, that part of the step is the nodes that
# depend on x_t but not on the state; where they meet the state through one (B, G) tensor p_t, the
# step splits in two: project_input (those nodes, run once over all T * B rows, one large matmul
# under autograd) and recur(p_t, state) (the rest), which the compiled path then runs as it runs a
# cell that declares them.


class _InputSplit:
    """`cell` as an input projection of all steps (`project_input_time_major`) and `recur`, from the two halves of its traced step: ATen graphs that
    take the cell's parameters and buffers (`names`, read from the cell as they are at the call, so
    also as `functional_call` places them) as their first inputs."""

    def __init__(self, cell: nn.Module, names: list[str], project: torch.fx.GraphModule, recur: torch.fx.GraphModule) -> None:
        self.cell = cell
        self.names = names
        self.graphs = (project, recur)

    def _tensors(self) -> list[Tensor]:
        return [attrgetter(name)(self.cell) for name in self.names]

    def project_input_time_major(self, x: Tensor) -> Tensor:
        """x (B, T, F) -> (T, B, G), the rows projected in time order: x is transposed (F wide) instead of the
        projection (G wide, 4H for an LSTM), and so is the gradient on the way back (about 1 ms of a 15 ms
        training step at B=32, H=64)."""
        B, T = x.shape[:2]
        rows = x.transpose(0, 1).reshape(T * B, *x.shape[2:])  # (T*B, F)
        p = self.graphs[0](*self._tensors(), rows)  # (T*B, G)
        return p.reshape(T, B, *p.shape[1:])  # (T, B, G)

    def recur(self, p_t: Tensor, state):
        y, *leaves = self.graphs[1](*self._tensors(), p_t, *flatten_state(state))
        return y, _rebuild(state, leaves)


def split_input_side(loop: "CompiledLoop", input_t: Tensor, state) -> Optional[_InputSplit]:
    """The cell's step split at its input side, or None where it does not split cleanly: no single
    (B, G) tensor between the parts, a step that traces differently in training and evaluation,
    a projection whose rows are not independent or that fixes the batch size, or a split that
    does not reproduce the step."""
    from torch.fx.experimental.proxy_tensor import make_fx

    named = loop._named_tensors()
    names, tensors = [name for name, _ in named], [t.detach() for _, t in named]
    leaves = [leaf.detach().contiguous() for leaf in flatten_state(state)]
    input_t = input_t.detach()

    def step(tensors: list[Tensor], input_t: Tensor, *leaves: Tensor) -> list[Tensor]:
        y, new_state = loop.step(names, tensors, input_t, _rebuild(state, leaves))
        return [y, *flatten_state(new_state)]

    try:
        with torch.no_grad():
            traced = make_fx(step)(tensors, input_t, *leaves)
            with _mode_flipped(loop.cell):
                other_mode = make_fx(step)(tensors, input_t, *leaves)
        if traced.code != other_mode.code:
            return None
        _check_graph(traced, type(loop.cell).__name__)
        halves = _split_graph(traced, len(tensors))
        if halves is None:
            return None
        split = _InputSplit(loop.cell, [name.removeprefix("cell.") for name in names], *halves)
        with torch.no_grad():
            want = step(tensors, input_t, *leaves)
            p_t = split.graphs[0](*tensors, input_t)
            got = split.graphs[1](*tensors, p_t, *leaves)
            others = [input_t * 0.5 - 0.25, input_t.flip(0)]  # three batches stacked: rows apart, and a new row count
            stacked = split.graphs[0](*tensors, torch.cat([input_t, *others]))
            apart = torch.cat([p_t, *(split.graphs[0](*tensors, other) for other in others)])
        if not all(torch.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True) for a, b in zip([*got, stacked], [*want, apart])):
            return None
        return split
    except Exception:  # noqa: BLE001 - a step that does not split runs unsplit, as before
        return None


class _mode_flipped:
    """Every module of `module` in the other of training / evaluation mode, for the `with` block."""

    def __init__(self, module: nn.Module) -> None:
        self.modes = [(m, m.training) for m in module.modules()]

    def __enter__(self) -> None:
        for m, training in self.modes:
            m.training = not training

    def __exit__(self, *error) -> None:
        for m, training in self.modes:
            m.training = training


def _split_graph(traced: torch.fx.GraphModule, n_tensors: int) -> Optional[tuple[torch.fx.GraphModule, torch.fx.GraphModule]]:
    """The traced step [*tensors, input_t, *leaves] -> [y, *leaves] as (project: [*tensors, input_t] -> p_t,
    recur: [*tensors, p_t, *leaves] -> [y, *leaves]), or None."""
    nodes = list(traced.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    output = nodes[-1]
    input_node, leaves = placeholders[n_tensors], placeholders[n_tensors + 1 :]
    on_input, on_state = {input_node}, set(leaves)
    for node in nodes:
        if node.op not in ("placeholder", "output"):
            if any(arg in on_state for arg in node.all_input_nodes):
                on_state.add(node)
            if any(arg in on_input for arg in node.all_input_nodes):
                on_input.add(node)
    input_side = on_input - on_state
    meets = [n for n in input_side if any(user is output or user in on_state for user in n.users)]
    if len(meets) != 1 or meets[0] is input_node or output in meets[0].users:
        return None
    (p_node,) = meets
    value, batch = p_node.meta.get("val"), input_node.meta["val"].shape[0]
    if not isinstance(value, Tensor) or value.dim() != 2 or value.shape[0] != batch:
        return None

    project, recur = torch.fx.Graph(), torch.fx.Graph()
    in_project, in_recur = {}, {}
    for node in nodes:
        if node.op == "placeholder":
            if node not in leaves:
                in_project[node] = project.placeholder(node.name)
            in_recur[p_node if node is input_node else node] = recur.placeholder("p_t" if node is input_node else node.name)
        elif node.op == "output":
            recur.node_copy(node, lambda n: in_recur[n])
        else:
            if node not in on_state:
                in_project[node] = project.node_copy(node, lambda n: in_project[n])
            if node not in input_side:
                in_recur[node] = recur.node_copy(node, lambda n: in_recur[n])
    project.output(in_project[p_node])
    halves = []
    for graph in (project, recur):
        graph.eliminate_dead_code()
        halves.append(torch.fx.GraphModule(traced, graph))
    return halves[0], halves[1]


def _matrix_vector_decompositions(base: dict) -> dict:
    """`aten.mm` / `aten.addmm` of a (M, K) and b (K, N) with M or N at most `MATRIX_VECTOR_ROWS`,
    traced as a multiply and a sum over K: TorchInductor compiles that into a loop of its own, fused
    with the elementwise math around it, instead of a call of torch's BLAS (25-35 us a call at
    (1, 256) x (256, 1024) on the benchmark machine). Other matmuls keep `base`'s decomposition, or none."""
    aten = torch.ops.aten

    def small(a: Tensor, b: Tensor) -> bool:
        return a.dim() == b.dim() == 2 and min(a.shape[0], b.shape[1]) <= MATRIX_VECTOR_ROWS

    def product(a: Tensor, b: Tensor) -> Tensor:
        return (a.unsqueeze(2) * b.unsqueeze(0)).sum(1)  # (M, K, 1) * (1, K, N) summed over K -> (M, N)

    def otherwise(op, *args, **kwargs):
        return base[op](*args, **kwargs) if op in base else NotImplemented  # NotImplemented: traced as it is

    def mm(a: Tensor, b: Tensor):
        return product(a, b) if small(a, b) else otherwise(aten.mm.default, a, b)

    def addmm(bias: Tensor, a: Tensor, b: Tensor, *, beta=1, alpha=1):
        if small(a, b) and beta == 1 and alpha == 1:
            return bias + product(a, b)
        return otherwise(aten.addmm.default, bias, a, b, beta=beta, alpha=alpha)

    return {aten.mm.default: mm, aten.addmm.default: addmm}


def _contiguous_outputs(call: Call, positions: range) -> Call:
    """`call` with its outputs at `positions` made contiguous."""

    def contiguous_call(arguments: list[Tensor]) -> list[Tensor]:
        outputs = list(call(arguments))
        for k in positions:
            outputs[k] = outputs[k].contiguous()
        return outputs

    return contiguous_call


def _inductor_compile(graph: torch.fx.GraphModule, example: list[Tensor]) -> Call:
    """`graph` compiled by TorchInductor, in its calling convention (a list of inputs, emptied by the
    call); where Inductor fails, the graph itself, run op by op, with a warning that says why."""
    try:
        import torch._inductor.config
        from torch._guards import TracingContext, tracing
        from torch._inductor.compile_fx import compile_fx_inner
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.fx.experimental.symbolic_shapes import ShapeEnv

        # Compiled as torch.compile hands graphs to Inductor: fake example inputs, in a tracing context
        # with a shape environment, without which Inductor bypasses its graph cache ("No shape env").
        # With it, a graph compiled before (this process or an earlier one) is loaded instead of
        # generated again: a second layer of the same cell compiles in 0.3 s instead of 1.
        fake_mode = FakeTensorMode(shape_env=ShapeEnv())
        fake_example = [fake_mode.from_tensor(t, static_shapes=True) for t in example]
        # Without the per-call checks of input sizes and strides (10% of a small step): the cache key
        # holds every input's layout, and the loop hands each step its inputs in that layout.
        with torch._inductor.config.patch(size_asserts=False), tracing(TracingContext(fake_mode)):
            return compile_fx_inner(graph, fake_example).current_callable
    except Exception as error:  # noqa: BLE001 - any compiler failure leaves a working (slower) path
        warnings.warn(f"longshort: TorchInductor could not compile the step ({type(error).__name__}: {error}); "
                      "running the traced graphs without compiling", RuntimeWarning, stacklevel=2)
        return lambda arguments: graph(*arguments)


def _step_loops_buildable() -> bool:
    """Whether the loops in C can run here at all (`STEP_LOOPS_IN_C`, and csrc/step_loops.c built)."""
    from longshort.native import step_loops_library

    if not STEP_LOOPS_IN_C:
        return False
    try:
        step_loops_library()
    except OSError:
        return False
    return True


def _step_loops(forward_call: Call, example: list[Tensor], backward_call: Call, arguments: list[tuple[str, int]],
                n_tensors: int, leaves: int, who: str) -> Optional["StepLoops"]:
    """The step's compiled forward and backward looped over time in C (`compiled_loops`), or None:
    they keep running one wrapper call a step (logged, with the reason)."""
    if not STEP_LOOPS_IN_C:
        return None
    from longshort import compiled_loops

    try:
        return compiled_loops.build(forward_call, example, backward_call, arguments, n_tensors, leaves)
    except Exception as error:  # noqa: BLE001 - Unsupported (step_loops.c not built among the reasons): the wrapper calls do the same
        logger.info("%s: the compiled step runs one call a step from Python (%s)", who, error)
        return None


def _graph_outputs(graph: torch.fx.GraphModule) -> Sequence[torch.fx.Node]:
    return next(node for node in graph.graph.nodes if node.op == "output").args[0]


def _backward_arguments(forward_graph, backward_graph, outputs: int) -> list[tuple[str, int]]:
    """Where each input of the backward graph comes from: a value the forward saved, or the
    cotangent of one of the step's outputs (placeholders `tangents_1`, ... in output order)."""
    saved_names = [str(node) for node in _graph_outputs(forward_graph)[outputs:]]
    arguments = []
    for node in backward_graph.graph.nodes:
        if node.op != "placeholder":
            continue
        if node.name.startswith("tangents_"):
            arguments.append(("cotangent", int(node.name.removeprefix("tangents_")) - 1))
        else:
            arguments.append(("saved", saved_names.index(node.name)))
    return arguments


def _check_step_output(y, new_state, state) -> None:
    if not isinstance(y, Tensor):
        raise CompileRefused(f"the step's output must be a tensor, got {type(y).__name__}")
    try:
        pairs = list(zip(flatten_state(new_state), flatten_state(state), strict=True))
    except (TypeError, ValueError):
        raise CompileRefused("the step must return a state of the same structure as its state: a tensor or a (named) "
                             "tuple of tensors") from None
    if any(not isinstance(new, Tensor) or new.shape != old.shape for new, old in pairs):
        raise CompileRefused("the step must return a state of the same structure and shapes as its state")


def _check_graph(graph: torch.fx.GraphModule, who: str) -> None:
    """Refuse steps the compiled path would get wrong: random draws, and tensors frozen into the graph."""
    for node in graph.graph.nodes:
        target = node.target
        if node.op == "call_function" and isinstance(target, torch._ops.OpOverload) and torch.Tag.nondeterministic_seeded in target.tags:
            raise CompileRefused(
                f"the step of {who} draws random numbers ({target.name()}; dropout inside the step?), which the "
                "gradient pass over all steps would draw anew. Draw such masks once per sequence outside the step, "
                "or use implementation='loop'"
            )
        created_in_step = all(user.target is torch.ops.aten.lift_fresh_copy.default for user in node.users)  # torch.tensor(...)
        if node.op == "get_attr" and isinstance(getattr(graph, target), Tensor) and not created_in_step:
            raise CompileRefused(
                f"the step of {who} reads a tensor that is neither a parameter, a buffer nor its input (a plain "
                "attribute, a dropout mask kept between steps?); compiled, it would stay frozen at its value of the "
                "first call. Register it as a buffer (module.register_buffer) or use implementation='loop'"
            )


def _check_rows(step: Callable[[Tensor, Any], Any], input_t: Tensor, state) -> None:
    """The gradients of all steps at once stack steps as rows of one batch: refuse a step for
    which two batches run together differ from each run alone (batch statistics, say)."""
    other_input = input_t * 0.5 - 0.25
    other_state = map_state(lambda s: s * 0.5 - 0.125, state)
    with torch.no_grad():
        try:
            together = step(torch.cat([input_t, other_input]), map_state(lambda a, b: torch.cat([a, b]), state, other_state))
        except Exception as error:  # noqa: BLE001 - a step that fails on a larger batch is refused, with its error
            raise CompileRefused(f"the step fails on a batch of {2 * input_t.shape[0]} rows ({error})") from None
        alone = [step(input_t, state), step(other_input, other_state)]
    separate = [torch.cat(parts) for parts in zip(*(flatten_state((y, s)) for y, s in alone))]
    for joint_value, separate_value in zip(flatten_state(together), separate):
        if not torch.allclose(joint_value, separate_value, rtol=1e-4, atol=1e-5, equal_nan=True):
            raise CompileRefused("the step mixes the rows of the batch (batch statistics?): the compiled path computes "
                                 "the gradients of all steps as one batch, which needs rows that do not interact")


def _last_output(outputs: Tensor, mask: Optional[Tensor]) -> Optional[Tensor]:
    """outputs (B, T, ...) -> the output of each sequence's last real step (zeros if it has none);
    None without a mask, which `RNN` reads as the outputs' last step."""
    if mask is None:
        return None
    T = mask.shape[1]
    last = (T - 1) - mask.flip(1).to(torch.uint8).argmax(dim=1)  # (B,), index of the last True (0 if none)
    picked = outputs[torch.arange(outputs.shape[0], device=outputs.device), last]  # (B, ...)
    return torch.where(mask.any(dim=1).view(-1, *[1] * (picked.dim() - 1)), picked, 0)


@dataclass
class _Recurrence:
    """What `_CompiledRecurrence` needs besides tensors."""

    loop: CompiledLoop
    step: CompiledStep
    names: Sequence[str]
    step_mask: Optional[Tensor]  # (T, B) bool, True at real steps
    template: Any  # a state of the cell's structure
    split: Optional["_InputSplit"]  # the cell's step split at its input side, if it was


def _batch_view(m: Tensor, like: Tensor) -> Tensor:
    """A (B,) step mask shaped to broadcast against `like` (B, ...)."""
    return m.view(-1, *[1] * (like.dim() - 1))


class _CompiledRecurrence(torch.autograd.Function):
    """inputs (T, B, ...), the initial state's tensors, the cell's parameters and buffers -> y (T, B, ...), final state tensors."""

    @staticmethod
    def forward(ctx, run: _Recurrence, inputs: Tensor, *leaves_and_tensors: Tensor):
        n = run.step.state_leaves
        state, tensors = list(leaves_and_tensors[:n]), list(leaves_and_tensors[n:])
        ctx.run = run
        if run.step.loops is not None:  # the whole loop in C (`compiled_loops`)
            ctx.loop_run = run.step.loops.forward(tensors, inputs, state, run.step_mask)
            y, *new_states = ctx.loop_run.outputs  # each (T, B, ...): views of the loop's arrays, copied out
            outputs = y.clone() if run.step_mask is None else _masked(y, run.step_mask)
            previous, state = ctx.loop_run.previous, [s[-1].clone() for s in new_states]
        else:
            outputs, previous, state = _steps(ctx, run, inputs, state, tensors)
        ctx.save_for_backward(inputs, *previous, *tensors)  # previous: each (T, B, ...), the state each step started from
        ctx.output_shape = outputs.shape
        return (outputs, *state)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: Optional[Tensor], *d_final: Optional[Tensor]):
        run, n = ctx.run, ctx.run.step.state_leaves
        inputs, *rest = ctx.saved_tensors
        previous, tensors = rest[:n], rest[n:]
        lam = [torch.zeros_like(s[0]) if d is None else d.contiguous() for d, s in zip(d_final, previous)]
        if dy is None:
            dy = inputs.new_zeros(ctx.output_shape)  # (T, B, ...)
        elif run.step_mask is None:
            dy = dy.contiguous()
        else:  # the cotangent of each step's output is m dy_t
            dy = _masked(dy, run.step_mask)
        if run.step.loops is not None:  # the whole loop in C
            lams, lam = run.step.loops.backward(tensors, inputs, ctx.loop_run, dy, lam, run.step_mask)
            lam = [l.clone() for l in lam]
        else:
            lams, lam = _reverse_steps(ctx, run, dy, lam)
        d_inputs, d_tensors = _all_steps_backward(ctx, run, inputs, previous, tensors, dy, lams)
        return (None, d_inputs, *lam, *d_tensors)


def _masked(y: Tensor, step_mask: Tensor) -> Tensor:
    """y (T, B, ...) with the steps the mask (T, B) marks as padding zeroed."""
    return torch.where(step_mask.view(*step_mask.shape, *[1] * (y.dim() - 2)), y, 0)


def _steps(ctx, run: _Recurrence, inputs: Tensor, state: list[Tensor], tensors: list[Tensor]):
    """The forward loop in Python, one call of the compiled step each: -> y (T, B, ...), the state each
    step started from (each (T, B, ...)), the final state; what each step saved goes to ctx.saved_steps."""
    n, step_mask = run.step.state_leaves, run.step_mask
    ys, saved, previous = [], [], []
    for t, input_t in enumerate(inputs.unbind(0)):  # the per-step views, made at once: cheaper than inputs[t]
        out = run.step.forward([*tensors, input_t, *state])
        y, new_state = out[0], out[1 : n + 1]
        saved.append(out[n + 1 :])
        previous.append(state)
        if step_mask is not None:
            m = step_mask[t]
            new_state = [torch.where(_batch_view(m, s), new, s) for new, s in zip(new_state, state)]
            y = torch.where(_batch_view(m, y), y, 0)
        ys.append(y)
        state = list(new_state)
    ctx.saved_steps = saved
    return torch.stack(ys), [torch.stack(steps) for steps in zip(*previous)], state


def _reverse_steps(ctx, run: _Recurrence, dy: Tensor, lam: list[Tensor]):
    """The reverse loop in Python, one call of the compiled step's backward each: -> the cotangents of
    each step's new state (each (T, B, ...)), and of the initial state."""
    step_mask = run.step_mask
    lams = [None] * dy.shape[0]  # the cotangents of each step's new state
    dys = dy.unbind(0)
    for t in range(dy.shape[0] - 1, -1, -1):
        if step_mask is not None:
            m = step_mask[t]
            passed = [torch.where(_batch_view(m, l), 0, l) for l in lam]
            lam = [torch.where(_batch_view(m, l), l, 0) for l in lam]
        lams[t] = lam
        lam = list(run.step.step_backward(ctx.saved_steps[t], [dys[t], *lam]))
        if step_mask is not None:
            lam = [l + p for l, p in zip(lam, passed)]
    return [torch.stack(steps) for steps in zip(*lams)], lam  # the per-step tensors are freed


COMPILED_PASSES = 8  # shapes of the all-steps gradient pass compiled per layer (one per sequence length up to ROWS_PER_PASS / B steps)
ROWS_PER_PASS = 4096  # the all-steps gradient pass runs over at most this many rows at once: bounds its memory (B=32, T=1000, H=128: 382 MiB instead of 511 at 16384, as fast; slower at 1024)


def _all_steps_backward(ctx, run: _Recurrence, inputs: Tensor, previous, tensors, dys: Tensor, lams: list[Tensor]):
    """dp_t and dtheta: vector-Jacobian products of the step over all T * B rows (see the module
    docstring), in chunks of whole steps of at most `ROWS_PER_PASS` rows, whose parameter
    gradients add up."""
    n = run.step.state_leaves
    wanted = ctx.needs_input_grad[1:2] + ctx.needs_input_grad[2 + n :]  # inputs, then each parameter / buffer
    if not any(wanted):
        return None, [None] * len(tensors)
    T, B = inputs.shape[:2]
    steps = max(1, ROWS_PER_PASS // B)
    starts = range(0, T, steps)
    d_inputs = inputs.new_empty(inputs.shape) if wanted[0] and len(starts) > 1 else None  # each pass writes its rows
    d_tensors: list[Optional[Tensor]] = [None] * len(tensors)
    for start in starts:
        part = slice(start, start + steps)
        mask = None if run.step_mask is None else run.step_mask[part]
        arguments = (run, inputs[part], [s[part] for s in previous], tensors, dys[part], [l[part] for l in lams])
        found = None
        if run.step.loops is not None:  # what the loop in C saved stands in for the step's forward
            found = _steps_backward_from_saved(*arguments, mask, ctx.loop_run, part, wanted)
        if found is None:
            found = _steps_backward(*arguments, mask, wanted)
        if len(starts) == 1:  # one pass: its gradient is the whole one, without a copy
            d_inputs = found[0]
        elif d_inputs is not None:
            d_inputs[part] = found[0]
        d_tensors = [g if total is None else total if g is None else total + g for total, g in zip(d_tensors, found[1:])]
    return d_inputs, d_tensors


def _step_rows(inputs: Tensor, previous, dys: Tensor, lams: list[Tensor], step_mask: Optional[Tensor]):
    """Some steps' inputs, states and cotangents (T', B, ...) as rows (T'*B, ...): (inputs, states,
    [dy, *lams]). Padding rows (their cotangents zero) hold zeros in place of what they held (even NaN)."""
    T, B = inputs.shape[:2]
    rows = lambda x: x.reshape(T * B, *x.shape[2:])  # noqa: E731 - (T', B, ...) -> (T'*B, ...)
    step_inputs, states = rows(inputs.detach()), [rows(s) for s in previous]
    if step_mask is not None:
        real = step_mask.reshape(T * B)
        step_inputs = torch.where(_batch_view(real, step_inputs), step_inputs, 0)
        states = [torch.where(_batch_view(real, s), s, 0) for s in states]
    return step_inputs, states, [rows(dys), *(rows(l) for l in lams)]


def _steps_backward(run: _Recurrence, inputs: Tensor, previous, tensors, dys: Tensor, lams: list[Tensor], step_mask: Optional[Tensor], wanted):
    """The gradients (inputs, then each parameter / buffer, None where not wanted) of some steps (T', B, ...) at once."""
    step_inputs, states, cotangents = _step_rows(inputs, previous, dys, lams, step_mask)
    arguments = [step_inputs, *(t.detach() for t in tensors), *states, *cotangents]
    vjp = _rows_vjp(run, wanted, len(tensors))
    compiled = run.loop.compiled_pass(vjp, arguments, wanted, run.split)
    grads = iter(vjp(*arguments) if compiled is None else compiled(list(arguments)))
    found = [next(grads) if want else None for want in wanted]
    if found[0] is not None:
        found[0] = found[0].reshape(inputs.shape)
    return found


def _rows_joint(run: _Recurrence, wanted: Sequence[bool], n_tensors: int) -> Callable[[list[Tensor], list[Tensor]], tuple[Tensor, ...]]:
    """The step over rows with its gradients, as the step's joint graph has it: ([*parameters and
    buffers, step inputs, *states], [*cotangents of the outputs]) -> its outputs, then the gradient of
    each wanted one of (step inputs, *parameters and buffers), zeros where the step does not use it."""

    def joint(primals: list[Tensor], tangents: list[Tensor]) -> tuple[Tensor, ...]:
        tensors, step_inputs, states = primals[:n_tensors], primals[n_tensors], primals[n_tensors + 1 :]
        with torch.enable_grad():
            y, new_state = run.loop.step(run.names, tensors, step_inputs, _rebuild(run.template, states), run.split)
            outs = [y, *flatten_state(new_state)]
            pairs = [(out, tangent) for out, tangent in zip(outs, tangents) if out.requires_grad]
            targets = [x for x, want in zip([step_inputs, *tensors], wanted) if want]
            grads = torch.autograd.grad([o for o, _ in pairs], targets, [t for _, t in pairs], allow_unused=True) if pairs else [None] * len(targets)
        return (*outs, *(torch.zeros_like(x) if g is None else g for g, x in zip(grads, targets)))

    return joint


def _rows_vjp(run: _Recurrence, wanted: Sequence[bool], n_tensors: int) -> Callable[..., tuple[Tensor, ...]]:
    """The vector-Jacobian product of the step over rows: (step inputs, *parameters and buffers,
    *states, *cotangents of the outputs) -> the gradient of each wanted one of (step inputs,
    *parameters and buffers), zeros where the step does not use it."""
    joint, leaves = _rows_joint(run, wanted, n_tensors), run.step.state_leaves

    def vjp(step_inputs: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:
        tensors, states, cotangents = rest[:n_tensors], rest[n_tensors : n_tensors + leaves], rest[n_tensors + leaves :]
        differentiable = [x.detach().requires_grad_(want) for x, want in zip([step_inputs, *tensors], wanted)]
        return joint([*differentiable[1:], differentiable[0], *states], list(cotangents))[1 + leaves :]

    return vjp


# -- the all-steps pass from what the forward loop saved -------------------------------------------
# The pass above differentiates the step anew: it computes the step's forward again over all rows, its
# recurrent matmul included, which the forward loop has done already. Where that loop ran in C, its
# arrays hold what the compiled forward saved for the backward at every step. So the pass can instead
# be the gradient half of the step's joint graph over all rows, reading those saved values (and the
# step's inputs) in place of the forward values it would compute: `_gradient_half` cuts it out, the
# forward values nobody saved computed again from those that were (elementwise ones only: where it would
# compute a matmul of the forward again, the pass above runs). The first run of each shape is checked
# against the pass above; where they differ, or a saved value is not where `_saved_values` looks for it,
# the pass above runs for that shape. Side by side, a custom LSTM cell's training step: 0.79-0.82x the
# time at B=128, H=256, 0.85-0.87x at B=32, H=256, 0.89-0.90x at B=32, H=64; at B=1 the same; with
# lengths 0.84-0.85x at B=32, H=256 (padding rows: their cotangents are zero, see `_steps_backward_from_saved`). The
# joint graph is traced with fake tensors: traced on real ones, the first step's peak memory at B=32,
# T=1000, H=128 was 1.43x torch.nn.LSTM's, now 1.30x (it was 1.35x with the pass above).

_MATMULS = {torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm, torch.ops.aten.baddbmm, torch.ops.aten.convolution}


def _gradient_half(graph: torch.fx.GraphModule, outputs: int, saved: set[str]) -> Optional[tuple[torch.fx.GraphModule, list[torch.fx.Node]]]:
    """The gradients of a joint graph (its first `outputs` outputs the step's, the rest gradients) as a
    graph of their own that reads the forward values named in `saved` instead of computing them. Its
    inputs: the joint's primals, the saved values it reads (returned, as the joint's nodes), the tangents.
    None where it would compute one of the forward's matmuls."""
    nodes = list(graph.graph.nodes)
    placeholders = [node for node in nodes if node.op == "placeholder"]
    tangents = [node for node in placeholders if node.name.startswith("tangents")]
    primals = [node for node in placeholders if node not in tangents]
    backward = set(tangents)  # the nodes that depend on a tangent
    for node in nodes:
        if node.op == "call_function" and any(arg in backward for arg in node.all_input_nodes):
            backward.add(node)
    gradients = _graph_outputs(graph)[outputs:]
    needed, read, stack = set(), set(), [g for g in gradients if isinstance(g, torch.fx.Node)]
    while stack:
        node = stack.pop()
        if node in needed or node.op == "placeholder":
            continue
        needed.add(node)
        if node not in backward and node.name in saved:
            read.add(node)
            continue
        if node not in backward and getattr(node.target, "overloadpacket", None) in _MATMULS:
            return None
        stack.extend(node.all_input_nodes)
    half, env = torch.fx.Graph(), {}
    reads = [node for node in nodes if node in read]
    for node in [*primals, *reads, *tangents]:
        env[node] = half.placeholder(node.name)
        env[node].meta = dict(node.meta)
    for node in nodes:
        if node in needed and node not in env:
            env[node] = half.node_copy(node, lambda arg: env[arg])
    half.output(tuple(env[g] if isinstance(g, torch.fx.Node) else g for g in gradients))
    return torch.fx.GraphModule(graph, half), reads


@dataclass(frozen=True)
class _SavedValue:
    """Where the forward loop keeps a value the gradient half reads: in the arena array of its buffer
    (at `offset` bytes in each of its rows, `row` bytes apart; by rows, or the first step's for a value
    the same at every step), or a view of weight `weight`."""

    layout: tuple  # its shape, strides and dtype at one step
    by_rows: bool
    buffer: Optional[int] = None
    offset: int = 0
    row: int = 0
    weight: Optional[int] = None
    whole_rows: bool = False  # contiguous, and its rows one after another: the steps' values are already (rows, ...)

    def value(self, loop_run, tensors: Sequence[Tensor], part: slice) -> Tensor:
        """Over the steps `part` of a run as (rows, ...), or the value itself; contiguous."""
        shape, stride, dtype = self.layout
        if self.weight is not None:
            tensor = tensors[self.weight]
            return tensor.as_strided(shape, stride, tensor.storage_offset() + self.offset // tensor.element_size()).contiguous()
        start = loop_run.starts[self.buffer] + self.offset + self.row  # step 0's, in row 1
        if not self.by_rows:
            return loop_run.arena.view(dtype).as_strided(shape, stride, start // dtype.itemsize).contiguous()
        first, stop, _ = part.indices(loop_run.outputs[0].shape[0])  # of the run's T steps
        if self.whole_rows:
            return loop_run.arena.view(dtype).as_strided(((stop - first) * shape[0], *shape[1:]), stride, (start + first * self.row) // dtype.itemsize)
        steps = loop_run.arena.view(dtype).as_strided((stop - first, *shape), (self.row // dtype.itemsize, *stride), (start + first * self.row) // dtype.itemsize)
        return steps.reshape((stop - first) * shape[0], *shape[1:]).contiguous()


def _contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(math.prod(shape[d + 1 :]) for d in range(len(shape)))


def _saved_values(step: CompiledStep, tensors: Sequence[Tensor], reads: list[torch.fx.Node], rows: int,
                  batch: int) -> Optional[list[_SavedValue]]:
    """Where the forward loop keeps each saved value the gradient half reads: over the steps as (rows,
    ...), or, for a value of the same shape at any number of rows (the weights', say), the first step's.
    None where one is not kept as expected."""
    loops, first = step.loops, 1 + step.state_leaves
    recording = loops.forward_recording
    found = []
    for node in reads:
        if node.name not in step.saved_names:
            return None
        i = first + step.saved_names.index(node.name)
        (kind, k, offset), layout = recording.outputs[i], recording.layouts[i]
        value, per_step = node.meta["val"], tuple(layout[0])
        by_rows = len(per_step) > 0 and per_step[0] == batch and tuple(value.shape) == (rows, *per_step[1:])
        constant = tuple(value.shape) == per_step  # at one step a value by rows is both: it is taken by rows
        if value.dtype != layout[2] or not (by_rows or constant):
            return None
        if kind == "buffer":
            row, (shape, stride, dtype) = loops.forward_rows[k], layout
            whole_rows = row == math.prod(shape) * dtype.itemsize and tuple(stride) == _contiguous_strides(shape)
            found.append(_SavedValue(layout, by_rows, buffer=k, offset=offset, row=row, whole_rows=whole_rows))
        elif constant and k < len(tensors):  # a view of a weight
            found.append(_SavedValue(layout, False, offset=offset, weight=k))
        else:
            return None
    return found


def _steps_backward_from_saved(run: _Recurrence, inputs: Tensor, previous, tensors, dys: Tensor, lams: list[Tensor],
                               step_mask: Optional[Tensor], loop_run, part: slice, wanted) -> Optional[list[Optional[Tensor]]]:
    """`_steps_backward` without the step's forward (see above), or None: it runs as `_steps_backward` for this shape.
    The values saved at padding rows are what the step computed there from a zero input: their cotangents are zero."""
    step_inputs, states, cotangents = _step_rows(inputs, previous, dys, lams, step_mask)
    primals = [*(t.detach() for t in tensors), step_inputs.contiguous(), *(s.contiguous() for s in states)]
    tangents = [c.contiguous() for c in cotangents]
    loop = run.loop
    key = loop.shape_key(run.split, [*primals, *tangents], tuple(wanted))
    if key not in loop.saved_passes:
        if loop.compiled_passes() >= COMPILED_PASSES:
            return None
        loop.saved_passes[key] = _compile_gradient_half(run, primals, tangents, loop_run, part, inputs.shape[1], wanted)
    built = loop.saved_passes[key]
    if built is None:
        return None
    call, where = built
    gradients = iter(call([*primals, *(saved.value(loop_run, tensors, part) for saved in where), *tangents]))
    found = [next(gradients) if want else None for want in wanted]
    if found[0] is not None:
        found[0] = found[0].reshape(inputs.shape)
    return found


def _compile_gradient_half(run: _Recurrence, primals: list[Tensor], tangents: list[Tensor], loop_run, part: slice,
                           batch: int, wanted) -> Optional[tuple[Call, list[_SavedValue]]]:
    """The gradient half of the step over these rows, compiled, and the saved values it reads; None
    (logged, with the reason) where the all-steps pass has to compute the step's forward again."""
    from torch._inductor.decomposition import select_decomp_table
    from torch.fx.experimental.proxy_tensor import make_fx

    loop, n, leaves = run.loop, len(primals) - 1 - run.step.state_leaves, run.step.state_leaves
    who, start = type(loop.cell).__name__, time.perf_counter()

    try:
        differentiable = [x.detach().requires_grad_(want) for x, want in zip([primals[n], *primals[:n]], wanted)]
        graph = make_fx(_rows_joint(run, wanted, n), decomposition_table=select_decomp_table(), tracing_mode="fake")([*differentiable[1:], differentiable[0], *primals[n + 1 :]], tangents)
        cut = _gradient_half(graph, 1 + leaves, set(run.step.saved_names))
        where = None if cut is None else _saved_values(run.step, primals[:n], cut[1], primals[n].shape[0], batch)
        if where is None:
            logger.info("%s: the all-steps gradient pass computes the step's forward again (it needs a value the forward did not save)", who)
            return None
        saved = [value.value(loop_run, primals[:n], part) for value in where]
        if any(value.shape != node.meta["val"].shape for value, node in zip(saved, cut[1])):
            return None
        call = _inductor_compile(cut[0], [*primals, *saved, *tangents])
        got = call([*primals, *saved, *tangents])
        want = _rows_vjp(run, wanted, n)(primals[n], *primals[:n], *primals[n + 1 :], *tangents)
    except Exception as error:  # noqa: BLE001 - the other pass computes the same
        logger.info("%s: the all-steps gradient pass computes the step's forward again (%s)", who, error)
        return None
    if not all(torch.allclose(g, w, rtol=1e-4, atol=1e-5, equal_nan=True) for g, w in zip(got, want)):
        logger.info("%s: the all-steps gradient pass computes the step's forward again (reading the saved values gave other gradients)", who)
        return None
    seconds = time.perf_counter() - start
    loop.compile_seconds += seconds
    logger.info("compiled the all-steps gradient pass of %s from the saved values for %d rows in %.1f s", who, primals[n].shape[0], seconds)
    return call, where
