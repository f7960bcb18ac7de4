"""Any cell, compiled: longshort walks time and does the backward-through-time itself; one step's
forward and its backward are traced once and compiled by TorchInductor.

`RNN(cell, implementation="compiled")` runs this path. Autograd over a Python loop records a
node per tensor op per step and walks them all back one by one; at small batches that
bookkeeping, not the arithmetic, is most of the time. Here a step is one call of compiled code
forward and one backward, and everything that does not need the loop over time runs once
over all steps.

Backward through time, for any cell. A step is F(p_t, s_{t-1}; theta) = (y_t, s_t): the cell's
`recur(p_t, state)` with `p_t = project_input(x_t)` hoisted out of the loop (one matmul for the
whole sequence) when the cell has them, else its `forward(x_t, state)` with p_t = x_t. With
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

Compiling takes seconds; it happens at the first call for each batch size, dtype and
train/eval mode (kept per layer, and by Inductor on disk, so a later process compiles
faster). `RNN.compile_seconds` totals it; each compile is logged on the `longshort` logger.

What the path refuses (`implementation="compiled"` then raises, naming the reason): a step
that draws random numbers (dropout inside the step: the all-steps pass would draw them
anew), one that reads a tensor that is neither a parameter, a buffer nor its input (it would
be frozen into the compiled code), one that mixes the rows of the batch, a state that is not
a tensor or a (named) tuple of tensors.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from longshort.rnn import flatten_state, map_state

logger = logging.getLogger("longshort")

Call = Callable[[list[Tensor]], Sequence[Tensor]]  # a graph in Inductor's calling convention: a list in, outputs out


class CompileRefused(ValueError):
    """The cell's step cannot run on the compiled path; the message says why."""


class _Step(nn.Module):
    """One step of `cell` as a module of its own, so `functional_call` can put graph inputs in
    place of its parameters: `recur(p_t, state)` when the input projection is hoisted, else `cell(x_t, state)`."""

    def __init__(self, cell: nn.Module, hoisted: bool) -> None:
        super().__init__()
        self.cell = cell
        self.hoisted = hoisted

    def forward(self, input_t: Tensor, state):
        return self.cell.recur(input_t, state) if self.hoisted else self.cell(input_t, state)


def hoists_input(cell: nn.Module) -> bool:
    """Whether `cell` offers `project_input` / `recur` (see the cell protocol in `longshort.cells`)."""
    return callable(getattr(cell, "project_input", None)) and callable(getattr(cell, "recur", None))


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
        self.steps: dict[tuple, CompiledStep] = {}
        self.compile_seconds = 0.0

    def __deepcopy__(self, memo) -> "CompiledLoop":
        return CompiledLoop(copy.deepcopy(self.cell, memo))

    def __getstate__(self):
        return {"cell": self.cell}

    def __setstate__(self, state) -> None:
        self.__init__(state["cell"])

    # -- running a sequence ---------------------------------------------------------------------
    def run(self, x: Tensor, state, mask: Optional[Tensor]):
        """x (B, T, F), the initial state and the step mask (B, T) -> all outputs (B, T, ...), the last real one, the final state."""
        inputs = self.cell.project_input(x) if self.hoisted else x  # (B, T, G*H) or (B, T, F)
        inputs = inputs.transpose(0, 1).contiguous()  # (T, B, ...): step t reads a contiguous inputs[t]
        named = self._named_tensors()
        names, tensors = [name for name, _ in named], [tensor for _, tensor in named]
        leaves = [leaf.contiguous() for leaf in flatten_state(state)]
        compiled = self._compiled_step(tensors, inputs[0], _rebuild(state, leaves))
        step_mask = None if mask is None else mask.transpose(0, 1).contiguous()  # (T, B)
        outputs, *final = _CompiledRecurrence.apply(
            _Recurrence(self, compiled, names, step_mask, state), inputs, *leaves, *tensors
        )
        outputs = outputs.transpose(0, 1)  # (B, T, ...)
        return outputs, _last_output(outputs, mask), _rebuild(state, final)

    def _named_tensors(self) -> list[tuple[str, Tensor]]:
        """The step module's parameters and buffers, which the compiled step takes as inputs."""
        return list(self.step_module.named_parameters()) + list(self.step_module.named_buffers())

    def step(self, names: Sequence[str], tensors: Sequence[Tensor], input_t: Tensor, state):
        """One step of the cell, eagerly, with `tensors` in place of its parameters and buffers."""
        return torch.func.functional_call(self.step_module, dict(zip(names, tensors)), (input_t, state))

    # -- tracing and compiling ------------------------------------------------------------------
    def _compiled_step(self, tensors: Sequence[Tensor], input_t: Tensor, state) -> CompiledStep:
        leaves = flatten_state(state)
        key = (self.cell.training,) + tuple((t.shape, t.stride(), t.dtype, t.device) for t in (*tensors, input_t, *leaves))
        if key not in self.steps:
            compiled = self._trace_and_compile(tensors, input_t, state)
            self.steps[key] = compiled
            self.compile_seconds += compiled.seconds
            logger.info("compiled the step of %s for input %s in %.1f s", type(self.cell).__name__,
                        tuple(input_t.shape), compiled.seconds)
        return self.steps[key]

    def _trace_and_compile(self, tensors: Sequence[Tensor], input_t: Tensor, state) -> CompiledStep:
        from torch._functorch.partitioners import min_cut_rematerialization_partition
        from torch._inductor.decomposition import select_decomp_table
        from torch.fx.experimental.proxy_tensor import make_fx

        start = time.perf_counter()
        names = [name for name, _ in self._named_tensors()]
        tensors = [t.detach() for t in tensors]
        leaves = [leaf.detach() for leaf in flatten_state(state)]
        with torch.no_grad():
            y, new_state = self.step(names, tensors, input_t.detach(), state)
        _check_step_output(y, new_state, state)
        outputs = [y, *flatten_state(new_state)]

        def joint(primals: list[Tensor], tangents: list[Tensor]) -> tuple[Tensor, ...]:
            """F and (dF/ds)^T: the step's outputs, then the gradient of each state tensor."""
            *params, input_t, = primals[: len(tensors) + 1]
            step_leaves = primals[len(tensors) + 1 :]
            with torch.enable_grad():
                y, new_state = self.step(names, params, input_t, _rebuild(state, step_leaves))
                outs = [y, *flatten_state(new_state)]
                pairs = [(out, tangent) for out, tangent in zip(outs, tangents) if out.requires_grad]
                grads = torch.autograd.grad([o for o, _ in pairs], step_leaves, [t for _, t in pairs], allow_unused=True) if pairs else [None] * len(step_leaves)
            grads = [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(grads, step_leaves)]
            return (*outs, *grads)

        primals = [*tensors, input_t.detach(), *(leaf.clone().requires_grad_() for leaf in leaves)]
        tangents = [torch.zeros_like(out, memory_format=torch.contiguous_format) for out in outputs]
        graph = make_fx(joint, decomposition_table=select_decomp_table())(primals, tangents)
        _check_graph(graph, type(self.cell).__name__)
        _check_rows(lambda i, s: self.step(names, tensors, i, s), input_t.detach(), state)
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
        return CompiledStep(forward_call, backward_call, arguments, n, time.perf_counter() - start)


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
        from torch._inductor.compile_fx import compile_fx_inner

        # Without the per-call checks of input sizes and strides (10% of a small step): the cache key
        # holds every input's layout, and the loop hands each step its inputs in that layout.
        with torch._inductor.config.patch(size_asserts=False):
            return compile_fx_inner(graph, example).current_callable
    except Exception as error:  # noqa: BLE001 - any compiler failure leaves a working (slower) path
        warnings.warn(f"longshort: TorchInductor could not compile the step ({type(error).__name__}: {error}); "
                      "running the traced graphs without compiling", RuntimeWarning, stacklevel=2)
        return lambda arguments: graph(*arguments)


def _backward_arguments(forward_graph, backward_graph, outputs: int) -> list[tuple[str, int]]:
    """Where each input of the backward graph comes from: a value the forward saved, or the
    cotangent of one of the step's outputs (placeholders `tangents_1`, ... in output order)."""
    forward_outputs = next(node for node in forward_graph.graph.nodes if node.op == "output").args[0]
    saved_names = [str(node) for node in forward_outputs[outputs:]]
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


def _last_output(outputs: Tensor, mask: Optional[Tensor]) -> Tensor:
    """outputs (B, T, ...) -> the output of each sequence's last real step (zeros if it has none)."""
    if mask is None:
        return outputs[:, -1]
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


def _batch_view(m: Tensor, like: Tensor) -> Tensor:
    """A (B,) step mask shaped to broadcast against `like` (B, ...)."""
    return m.view(-1, *[1] * (like.dim() - 1))


class _CompiledRecurrence(torch.autograd.Function):
    """inputs (T, B, ...), the initial state's tensors, the cell's parameters and buffers -> y (T, B, ...), final state tensors."""

    @staticmethod
    def forward(ctx, run: _Recurrence, inputs: Tensor, *leaves_and_tensors: Tensor):
        n = run.step.state_leaves
        state, tensors = list(leaves_and_tensors[:n]), list(leaves_and_tensors[n:])
        step_mask = run.step_mask
        ys, saved, previous = [], [], []
        for t in range(inputs.shape[0]):
            out = run.step.forward([*tensors, inputs[t], *state])
            y, new_state = out[0], out[1 : n + 1]
            saved.append(out[n + 1 :])
            previous.append(state)
            if step_mask is not None:
                m = step_mask[t]
                new_state = [torch.where(_batch_view(m, s), new, s) for new, s in zip(new_state, state)]
                y = torch.where(_batch_view(m, y), y, 0)
            ys.append(y)
            state = list(new_state)
        ctx.run, ctx.saved_steps = run, saved
        previous = [torch.stack(steps) for steps in zip(*previous)]  # each (T, B, ...): the state each step started from
        ctx.save_for_backward(inputs, *previous, *tensors)
        outputs = torch.stack(ys)  # (T, B, ...)
        ctx.output_shape = outputs.shape
        return (outputs, *state)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: Optional[Tensor], *d_final: Optional[Tensor]):
        run, n = ctx.run, ctx.run.step.state_leaves
        inputs, *rest = ctx.saved_tensors
        previous, tensors = rest[:n], rest[n:]
        T = inputs.shape[0]
        lam = [torch.zeros_like(s[0]) if d is None else d.contiguous() for d, s in zip(d_final, previous)]
        step_mask = run.step_mask
        if dy is None:
            dy = inputs.new_zeros(ctx.output_shape)  # (T, B, ...)
        elif step_mask is None:
            dy = dy.contiguous()
        else:  # the cotangent of each step's output is m dy_t
            dy = torch.where(step_mask.view(*step_mask.shape, *[1] * (dy.dim() - 2)), dy, 0)
        lams = [None] * T  # the cotangents of each step's new state
        for t in range(T - 1, -1, -1):
            if step_mask is not None:
                m = step_mask[t]
                passed = [torch.where(_batch_view(m, l), 0, l) for l in lam]
                lam = [torch.where(_batch_view(m, l), l, 0) for l in lam]
            lams[t] = lam
            lam = list(run.step.step_backward(ctx.saved_steps[t], [dy[t], *lam]))
            if step_mask is not None:
                lam = [l + p for l, p in zip(lam, passed)]
        lams = [torch.stack(steps) for steps in zip(*lams)]  # each (T, B, ...); the per-step tensors are freed
        d_inputs, d_tensors = _all_steps_backward(ctx, run, inputs, previous, tensors, dy, lams)
        return (None, d_inputs, *lam, *d_tensors)


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
    d_inputs = inputs.new_zeros(inputs.shape) if wanted[0] else None
    d_tensors: list[Optional[Tensor]] = [None] * len(tensors)
    for start in range(0, T, steps):
        part = slice(start, start + steps)
        mask = None if run.step_mask is None else run.step_mask[part]
        found = _steps_backward(run, inputs[part], [s[part] for s in previous], tensors, dys[part], [l[part] for l in lams], mask, wanted)
        if d_inputs is not None:
            d_inputs[part] = found[0]
        d_tensors = [g if total is None else total if g is None else total + g for total, g in zip(d_tensors, found[1:])]
    return d_inputs, d_tensors


def _steps_backward(run: _Recurrence, inputs: Tensor, previous, tensors, dys: Tensor, lams: list[Tensor], step_mask: Optional[Tensor], wanted):
    """The gradients (inputs, then each parameter / buffer, None where not wanted) of some steps (T', B, ...) at once."""
    T, B = inputs.shape[:2]
    rows = lambda x: x.reshape(T * B, *x.shape[2:])  # noqa: E731 - (T', B, ...) -> (T'*B, ...)
    step_inputs, states = rows(inputs.detach()), [rows(s) for s in previous]
    if step_mask is not None:  # padding rows: zero cotangents, and zeros in place of what they hold (even NaN)
        real = step_mask.reshape(T * B)
        step_inputs = torch.where(_batch_view(real, step_inputs), step_inputs, 0)
        states = [torch.where(_batch_view(real, s), s, 0) for s in states]
    with torch.enable_grad():
        differentiable = [x.detach().requires_grad_(want) for x, want in zip([step_inputs, *tensors], wanted)]
        y, new_state = run.loop.step(run.names, differentiable[1:], differentiable[0], _rebuild(run.template, states))
        outs = [y, *flatten_state(new_state)]
        cotangents = [rows(dys), *(rows(l) for l in lams)]
        pairs = [(out, cot) for out, cot in zip(outs, cotangents) if out.requires_grad]
        targets = [x for x, want in zip(differentiable, wanted) if want]
        grads = iter(torch.autograd.grad([o for o, _ in pairs], targets, [c for _, c in pairs], allow_unused=True))
    found = [next(grads) if want else None for want in wanted]
    if found[0] is not None:
        found[0] = found[0].reshape(inputs.shape)
    elif wanted[0]:
        found[0] = torch.zeros_like(inputs)
    return found
