"""The compiled step looped over time in C.

The Python wrapper TorchInductor generates for a step does three things: it allocates the step's
buffers, calls the step's C++ kernels and matmuls (torch's BLAS, `extern_kernels.mm` / `addmm`)
with them, and returns some of the buffers. Called once a step from Python, that costs more than
the arithmetic at small shapes: at B = 1, H = 64 about 6.6 us a step forward, where the kernel
takes about 1; at B = 32, H = 64 a matmul through torch's dispatcher takes 27-30 us, the BLAS
call itself about half.

Here the wrapper runs once, on copies of example inputs, with its kernels, matmuls and
allocations recorded, and each address they were handed is traced to the input or the buffer it
points into. That is written down as a program (the calls of one step, each argument a place
that moves by a fixed number of bytes a step), and a loop over time in C (csrc/step_loops.c,
built once per machine by `longshort.native`, like the fused kernels' loops) runs it, calling the
kernels in the libraries Inductor built, by address, and the matmuls through torch's BLAS gemm
(`longshort.native.gemm_address`). Nothing is compiled per step beyond Inductor's own (an
earlier version compiled the kernels' source again with the loops: one more C++ build, about
5 s, for each step compiled). The places:

* a buffer the step returns (its output, its new state, the values its backward needs) gets a
  row per step in an array of T + 1 rows; a new state's buffer holds the initial state in row 0,
  and a step reads its state from the row the step before wrote;
* every other buffer is scratch: one row for all steps;
* a parameter is the same address every step; the input of step t is row t of all the inputs.

A run's arrays and scratch buffers are one allocation (`Arena`), and each slot's address and step are
worked out from where they start in it: side by side with an allocation per buffer, a custom LSTM cell
trained in 0.93-0.98x the time at B = 1, H = 64 (about 40 us of set-up less a step), and within the
noise (0.94-1.02x) at B = 1, H = 256 and B = 32, H = 64.

The backward step loops the same way, from t = T - 1 down: its saved values are the forward's
rows, and it reads the cotangent of its new state from the row the step after wrote (row T: the
cotangent of the final state). Masks as in `compiled`'s Python loop: at a padding row the state
is carried over, and its cotangent passes back unchanged.

Anything not as expected (a call in the wrapper that is neither a kernel nor a matmul, an
argument that is not an address of an input or a buffer, a kernel of more than MAX_ARGUMENTS
parameters, a new state the step returns without computing it, a step_loops.c that cannot be
built) leaves the step to its wrapper; so does a loop that does not reproduce the wrapper on an
example, checked once when it is built.
"""

from __future__ import annotations

import ctypes
import functools
import math
import re
import struct
import types
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor

from longshort import workspace

Call = Callable[[list[Tensor]], Sequence[Tensor]]
Place = tuple[str, int, int]  # ("input", k, byte offset) into the wrapper's k-th input, or ("buffer", j, offset) into its j-th allocation
ROW_ALIGNMENT = 64  # bytes: every row of an array starts where a fresh allocation would
_BYTES = torch.empty(0, dtype=torch.uint8)  # what an arena is made like


class Unsupported(Exception):
    """The step's wrapper does something the loop in C does not replay; the message says what."""


class _Refusing:
    """Stands in for the wrapper's other callees (torch's BLAS, ATen's fallbacks) while it is recorded."""

    def __getattr__(self, name: str):
        raise Unsupported(f"the step's wrapper calls {name}, neither a kernel nor a matmul")


@dataclass
class Gemm:
    """A matmul of the wrapper (`extern_kernels.mm` / `addmm`): out (M, N) = beta bias + alpha a (M, K) b (K, N),
    each matrix row-major or, `transposed`, stored as its transpose, with its leading dimension."""

    dtype: torch.dtype
    m: int
    n: int
    k: int
    a: Place
    a_layout: tuple[bool, int]  # (transposed, leading dimension)
    b: Place
    b_layout: tuple[bool, int]
    out: Place
    ldc: int
    bias: Optional[Place]  # None for mm
    bias_strides: tuple[int, int]  # the bias broadcast to (M, N): its strides in elements (0 along a broadcast)
    alpha: float
    beta: float


@dataclass
class Recording:
    """One call of a step's wrapper: its kernel calls and matmuls, its allocations and its outputs."""

    calls: list  # each a kernel call, (the Kernel, where each argument points), or a Gemm
    buffers: list[tuple[int, torch.dtype]]  # each allocation's bytes and dtype
    outputs: list[Place]
    layouts: list[tuple[torch.Size, tuple[int, ...], torch.dtype]]  # each output's shape, strides and dtype


@dataclass(frozen=True)
class Kernel:
    """One of Inductor's CPU kernels: the C function `kernel` of the library it built, by address."""

    address: int
    parameters: int  # how many, each a pointer
    library: ctypes.CDLL  # kept loaded while the kernel may be called


def kernel_of(value) -> Optional[Kernel]:
    """The kernel behind `value` where it is the Python binding of one of Inductor's CPU kernels
    (`kernel` in a .so built from a .cpp beside it); None for anything else. Unsupported for a
    kernel that takes anything but pointers."""
    module = getattr(value, "__self__", None)
    path = getattr(module, "__file__", None) if isinstance(value, types.BuiltinFunctionType) else None
    if getattr(value, "__name__", None) != "kernel" or not isinstance(path, str) or not path.endswith(".so"):
        return None
    try:
        with open(path[: -len(".so")] + ".cpp") as file:
            source = file.read()
    except OSError:
        return None
    kernel_source, marker, _ = source.partition("// Python bindings to call kernel():")
    if not marker:
        return None
    library = ctypes.CDLL(path)  # the library Python has loaded already
    return Kernel(ctypes.cast(library.kernel, ctypes.c_void_p).value, len(_parameter_types(kernel_source)), library)


class _Matmuls:
    """Stands in for the wrapper's `extern_kernels` while it is recorded: mm and addmm are recorded
    (and run), anything else is Unsupported."""

    def __init__(self, real, calls: list) -> None:
        self.real, self.calls = real, calls

    def mm(self, a: Tensor, b: Tensor, *, out: Tensor) -> Tensor:
        self.calls.append(("gemm", dict(a=a, b=b, out=out, bias=None, alpha=1, beta=0)))
        return self.real.mm(a, b, out=out)

    def addmm(self, bias: Tensor, a: Tensor, b: Tensor, *, alpha=1, beta=1, out: Tensor) -> Tensor:
        self.calls.append(("gemm", dict(a=a, b=b, out=out, bias=bias, alpha=alpha, beta=beta)))
        return self.real.addmm(bias, a, b, alpha=alpha, beta=beta, out=out)

    def __getattr__(self, name: str):
        raise Unsupported(f"the step's wrapper calls {name}, not only kernels and matmuls")


def _matrix_layout(x: Tensor) -> tuple[bool, int]:
    """(transposed, leading dimension) of a matrix for gemm: row-major, or stored as its transpose."""
    rows, columns = x.shape
    if x.stride(1) == 1 or columns == 1:
        return False, max(x.stride(0), columns, 1)
    if x.stride(0) == 1 or rows == 1:
        return True, max(x.stride(1), rows, 1)
    raise Unsupported("a matmul of a matrix with neither stride 1")


def record(call: Call, arguments: Sequence[Tensor]) -> Recording:
    """Run `call` (a `Runner.call` of Inductor's wrapper) on copies of `arguments`, recording it."""
    module = getattr(getattr(call, "__func__", None), "__globals__", None)
    if module is None or "empty_strided_cpu" not in module:
        raise Unsupported("not a wrapper generated by TorchInductor for the CPU")
    calls: list[tuple[Any, Any]] = []  # (a Kernel, its arguments) or ("gemm", a matmul's)
    allocations: list[Tensor] = []
    allocate = module["empty_strided_cpu"]

    def allocating(*args, **kwargs) -> Tensor:
        allocations.append(allocate(*args, **kwargs))
        return allocations[-1]

    def recording(binding, kernel: Kernel):
        def kernel_call(*args):
            calls.append((kernel, args))
            return binding(*args)

        return kernel_call

    stand_ins: dict = {"empty_strided_cpu": allocating, "aten": _Refusing(),
                       "extern_kernels": _Matmuls(module["extern_kernels"], calls) if "extern_kernels" in module else _Refusing()}
    for name, value in list(module.items()):
        kernel = kernel_of(value)
        if kernel is not None:
            stand_ins[name] = recording(value, kernel)
    originals = {name: module[name] for name in stand_ins if name in module}
    module.update(stand_ins)
    try:
        inputs = [a.clone() for a in arguments]  # each in an allocation of its own
        outputs = list(call(list(inputs)))
    finally:
        for name in stand_ins:
            module.pop(name, None)
        module.update(originals)
    places = [("input", k, t) for k, t in enumerate(inputs)] + [("buffer", j, t) for j, t in enumerate(allocations)]

    def place(value) -> Place:
        if not isinstance(value, Tensor):
            raise Unsupported(f"a kernel argument that is not an address ({type(value).__name__})")
        address = value.data_ptr()
        for kind, k, tensor in places:
            start = tensor.data_ptr()
            if start <= address < start + max(tensor.untyped_storage().nbytes(), 1):
                if (address - start) % value.element_size():
                    raise Unsupported("an address between two elements")
                return kind, k, address - start
        raise Unsupported("an address in no input and no buffer of the step (from a call that is neither a kernel nor a matmul?)")

    def gemm(a: Tensor, b: Tensor, out: Tensor, bias: Optional[Tensor], alpha, beta) -> Gemm:
        same_dtype = a.dtype == b.dtype == out.dtype and (bias is None or bias.dtype == out.dtype)
        if a.dim() != 2 or b.dim() != 2 or not same_dtype or out.stride(1) != 1:
            raise Unsupported("a matmul that is not of two matrices into a row-major one")
        if a.dtype not in (torch.float32, torch.float64):
            raise Unsupported(f"a matmul in {a.dtype}")
        (m, k), n = a.shape, b.shape[1]
        broadcast = None if bias is None else bias.expand(m, n)
        return Gemm(a.dtype, m, n, k, place(a), _matrix_layout(a), place(b), _matrix_layout(b), place(out), max(out.stride(0), n, 1),
                    None if bias is None else place(bias), (0, 0) if broadcast is None else broadcast.stride(), float(alpha), float(beta))

    return Recording(
        calls=[gemm(**args) if kernel == "gemm" else (kernel, [place(a) for a in args]) for kernel, args in calls],
        buffers=[(b.untyped_storage().nbytes(), b.dtype) for b in allocations],
        outputs=[place(o) for o in outputs],
        layouts=[(o.shape, o.stride(), o.dtype) for o in outputs],
    )


# -- the program ------------------------------------------------------------------------------------
# Slots: what a kernel argument points into, resolved to an address and a per-step stride at each run.
#   forward:  ("parameter", k), ("inputs", 0), ("state", l), ("row", j) a returned buffer's row t + 1, ("scratch", j)
#   backward: the forward's ("parameter", k), ("inputs", 0), ("state", l), ("row", j) (the saved values),
#             ("dy", 0), ("cotangent", l) of the new state: row t + 1, ("out", j) a returned buffer's row t,
#             ("scratch", j) one of its own buffers
Slot = tuple[str, int]
KERNEL, GEMM, MAX_ARGUMENTS = 0, 1, 32  # as in csrc/step_loops.c


def _parameter_types(source: str) -> list[str]:
    """The C++ types of `kernel`'s parameters, all pointers, or Unsupported."""
    found = re.findall(r'extern "C"\s+void\s+kernel\(([^)]*)\)', source)
    if len(found) != 1 or len(re.findall(r"\bkernel\(", source)) != 1:
        raise Unsupported("a kernel source of an unexpected shape")
    types_ = [parameter.strip().rsplit(None, 1)[0] for parameter in found[0].split(",")]
    if not all(t.endswith("*") for t in types_):
        raise Unsupported("a kernel parameter that is not an address")
    if len(types_) > MAX_ARGUMENTS:
        raise Unsupported(f"a kernel of more than {MAX_ARGUMENTS} parameters")
    return types_


def _bits(value: float) -> int:
    """A double's bits as an int64 word of the program."""
    return struct.unpack("<q", struct.pack("<d", value))[0]


def _program(calls: list) -> ctypes.Array:
    """The program of csrc/step_loops.c (its words: there) for a step's calls, each ("kernel",
    Kernel, [(slot index, byte offset)] per argument) or ("gemm", Gemm, {"a" / "b" / "out" / "bias":
    (slot index, byte offset)})."""
    words: list[int] = []
    for kind, called, arguments in calls:
        if kind == "gemm":
            g: Gemm = called
            bias = arguments.get("bias", (-1, 0))
            words += [GEMM, int(g.dtype == torch.float64), g.m, g.n, g.k, *arguments["a"], int(g.a_layout[0]), g.a_layout[1],
                      *arguments["b"], int(g.b_layout[0]), g.b_layout[1], *arguments["out"], g.ldc, *bias, *g.bias_strides,
                      _bits(g.alpha), _bits(g.beta)]
        else:
            if len(arguments) != called.parameters:
                raise Unsupported("a kernel called with another number of arguments than it takes")
            words += [KERNEL, len(arguments), called.address, *(word for slot in arguments for word in slot)]
    return (ctypes.c_int64 * len(words))(*words)


def _row_bytes(nbytes: int) -> int:
    return -(-nbytes // ROW_ALIGNMENT) * ROW_ALIGNMENT


@dataclass(frozen=True)
class Arena:
    """A loop's own memory, one allocation a run: the T + 1 rows of each buffer the step returns
    (`rows`: buffer j -> bytes a row), one array after another, then each scratch buffer once
    (`scratch`: buffer j -> bytes, aligned). A buffer is one or the other, so j names its place.
    The allocation comes from `longshort.workspace`, as the fused kernels' buffers do: an arena
    holds everything the step saves, for an LSTM cell at B=32, T=1000, H=128 94 MiB forward and
    31 backward, and a new one faulted all its pages in again every call."""

    rows: dict[int, int]
    scratch: dict[int, int]

    def allocate(self, T: int) -> tuple[Tensor, dict[int, int]]:
        """The arena for T steps (bytes), and where each buffer's array or scratch starts in it."""
        starts, end = {}, 0
        for j, row in self.rows.items():
            starts[j], end = end, end + (T + 1) * row
        for j, size in self.scratch.items():
            starts[j], end = end, end + size
        return workspace.empty(_BYTES, max(end, 1)), starts


@dataclass
class ForwardRun:
    """What a forward loop leaves for the backward: its arena (kept alive) and views of it."""

    arena: Tensor  # every array of the run, as bytes
    starts: dict[int, int]  # returned buffer j -> where its (T + 1) rows start in the arena
    outputs: list[Tensor]  # y (T, B, ...), then each new state (T, B, ...): rows 1..T
    previous: list[Tensor]  # each state leaf at the start of each step (T, B, ...): rows 0..T-1


class StepLoops:
    """A step's forward and backward looped over time in C (see the module docstring)."""

    def __init__(self, forward: Recording, backward: Recording, backward_arguments: list[tuple[str, int]],
                 n_parameters: int, leaves: int) -> None:
        self.n_parameters, self.leaves = n_parameters, leaves
        self.forward_recording, self.backward_recording = forward, backward
        # Each new state lives in a returned buffer of the forward (not an input handed back), apart from the others.
        self.states = [self._computed(forward, 1 + l, "new state") for l in range(leaves)]
        self.cotangents = [self._computed(backward, l, "state cotangent") for l in range(leaves)]
        self.forward_rows = {j: _row_bytes(forward.buffers[j][0]) for kind, j, _ in forward.outputs if kind == "buffer"}
        self.backward_rows = {j: _row_bytes(backward.buffers[j][0]) for kind, j, _ in backward.outputs if kind == "buffer"}

        self.forward_slots: list[Slot] = []
        self.backward_slots: list[Slot] = []

        def calls(recording: Recording, argument: Callable[[Place], tuple[int, int]]) -> list:
            return [("gemm", c, {name: argument(getattr(c, name)) for name in ("a", "b", "out", "bias") if getattr(c, name)})
                    if isinstance(c, Gemm) else ("kernel", c[0], [argument(p) for p in c[1]])
                    for c in recording.calls]

        self.forward_program = _program(calls(forward, self._forward_argument))
        self.backward_program = _program(calls(backward, lambda p: self._backward_argument(p, backward_arguments)))
        scratch = lambda slots, recording: {j: _row_bytes(recording.buffers[j][0]) for kind, j in slots if kind == "scratch"}  # noqa: E731
        self.forward_arena = Arena(self.forward_rows, scratch(self.forward_slots, forward))
        self.backward_arena = Arena(self.backward_rows, scratch(self.backward_slots, backward))
        self.state_bytes, self.cotangent_bytes = _leaf_bytes(forward.layouts[1 : 1 + leaves]), _leaf_bytes(backward.layouts[:leaves])
        dtypes = {c.dtype for c in (*forward.calls, *backward.calls) if isinstance(c, Gemm)}
        from longshort.native import gemm_address, step_loops_library

        self.gemms = (ctypes.c_void_p * 2)(*(gemm_address(d) for d in (torch.float32, torch.float64)))
        if any(self.gemms[d == torch.float64] is None for d in dtypes):
            raise Unsupported("a matmul, and torch's library exports no BLAS gemm to call")
        try:
            self.library = step_loops_library()
        except OSError as error:
            raise Unsupported(f"the loops in C could not be built: {error}") from None

    @staticmethod
    def _computed(recording: Recording, output: int, what: str) -> tuple[int, int]:
        kind, j, offset = recording.outputs[output]
        shape, stride, _ = recording.layouts[output]
        if kind != "buffer" or stride != torch.empty(shape).stride():
            raise Unsupported(f"a {what} the step does not compute into a buffer of its own, contiguous")
        return j, offset

    def _slot(self, slots: list[Slot], slot: Slot, offset: int) -> tuple[int, int]:
        if slot not in slots:
            slots.append(slot)
        return slots.index(slot), offset

    def _forward_argument(self, place: Place) -> tuple[int, int]:
        """A forward kernel argument's (slot, offset)."""
        kind, k, offset = place
        if kind == "buffer":
            return self._slot(self.forward_slots, ("row" if k in self.forward_rows else "scratch", k), offset)
        if k < self.n_parameters:
            return self._slot(self.forward_slots, ("parameter", k), offset)
        if k == self.n_parameters:
            return self._slot(self.forward_slots, ("inputs", 0), offset)
        return self._slot(self.forward_slots, ("state", k - self.n_parameters - 1), offset)

    def _backward_argument(self, place: Place, backward_arguments: list[tuple[str, int]]) -> tuple[int, int]:
        """A backward kernel argument's (slot, offset): a saved value is where the forward put it."""
        kind, k, offset = place
        if kind == "buffer":
            return self._slot(self.backward_slots, ("out" if k in self.backward_rows else "scratch", k), offset)
        source, index = backward_arguments[k]
        if source == "cotangent":
            return self._slot(self.backward_slots, ("dy", 0) if index == 0 else ("cotangent", index - 1), offset)
        saved_kind, saved_k, saved_offset = self.forward_recording.outputs[1 + self.leaves + index]
        slot, total = self._forward_argument((saved_kind, saved_k, saved_offset + offset))
        return self._slot(self.backward_slots, self.forward_slots[slot], total)

    # -- running --------------------------------------------------------------------------------
    # A run takes one allocation (`Arena`) and hands the loop two arrays: each slot's address at step 0
    # and its bytes a step, worked out from where the arena's arrays start and the tensors' addresses.
    def _forward_places(self, parameters: Sequence[Tensor], inputs: Tensor, base: int,
                        starts: dict[int, int]) -> dict[str, Callable[[int], tuple[int, int]]]:
        """Where each kind of the forward's slots is in a run (`base`: its arena's address): k -> (address at step 0, bytes a step)."""
        rows = self.forward_rows
        return {
            "parameter": lambda k: (parameters[k].data_ptr(), 0),
            "inputs": lambda k: _rows(inputs),
            "state": lambda k: _leaf_place(base, starts, rows, self.states[k], 0),  # the state step t starts from: row t
            "row": lambda k: (base + starts[k] + rows[k], rows[k]),  # row t + 1
            "scratch": lambda k: (base + starts[k], 0),  # the same row every step
        }

    @staticmethod
    def _view(arena: Tensor, row: int, first_row: int, offset: int, rows: int, layout) -> Tensor:
        """Rows first_row.. of the array at `offset` in the arena (bytes), `row` bytes apart, as (rows, *shape) of the layout's dtype."""
        shape, stride, dtype = layout
        return arena.view(dtype).as_strided((rows, *shape), (row // dtype.itemsize, *stride), (first_row * row + offset) // dtype.itemsize)

    @classmethod
    def _leaf_views(cls, arena: Tensor, starts: dict[int, int], rows: dict[int, int], places: list[tuple[int, int]],
                    layouts, T: int, row: int, values: Sequence[Tensor]) -> list[Tensor]:
        """Each state leaf's (T + 1, B, ...) view into the arena (`places`: its buffer and offset), row `row` set to `values`."""
        views = [cls._view(arena, rows[j], 0, starts[j] + offset, T + 1, layout) for (j, offset), layout in zip(places, layouts)]
        for view, value in zip(views, values):
            view[row].copy_(value)
        return views

    def forward(self, parameters: Sequence[Tensor], inputs: Tensor, leaves: Sequence[Tensor],
                step_mask: Optional[Tensor]) -> ForwardRun:
        """inputs (T, B, ...) contiguous, the initial state's leaves -> the run (y and the states as its views)."""
        T, B = inputs.shape[:2]
        recording, rows = self.forward_recording, self.forward_rows
        arena, starts = self.forward_arena.allocate(T)
        states = self._leaf_views(arena, starts, rows, self.states, recording.layouts[1 : 1 + self.leaves], T, 0, leaves)
        base = arena.data_ptr()
        where = self._forward_places(parameters, inputs, base, starts)
        mask = None if step_mask is None else step_mask.contiguous()
        self.library.forward_steps(
            self.forward_program, len(self.forward_program), T, *_pointer_arrays([where[kind](k) for kind, k in self.forward_slots]),
            _address(mask), B, self.leaves, *_pointer_arrays([_leaf_place(base, starts, rows, place, 0) for place in self.states]),
            self.state_bytes, self.gemms,
        )
        y_kind, y_j, y_offset = recording.outputs[0]
        y = self._view(arena, rows[y_j], 1, starts[y_j] + y_offset, T, recording.layouts[0])
        return ForwardRun(arena, starts, [y, *(s[1:] for s in states)], [s[:-1] for s in states])

    def backward(self, parameters: Sequence[Tensor], inputs: Tensor, run: ForwardRun, dy: Tensor,
                 final: Sequence[Tensor], step_mask: Optional[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """dy (T, B, ...) contiguous, the final state's cotangents -> each leaf's cotangents of the new
        states (T, B, ...), and of the initial state."""
        T, B = inputs.shape[:2]
        recording, rows = self.backward_recording, self.backward_rows
        arena, starts = self.backward_arena.allocate(T)
        cotangents = self._leaf_views(arena, starts, rows, self.cotangents, recording.layouts[: self.leaves], T, T, final)
        base = arena.data_ptr()
        where = {
            **self._forward_places(parameters, inputs, run.arena.data_ptr(), run.starts),  # the saved values
            "dy": lambda k: _rows(dy),
            "cotangent": lambda k: _leaf_place(base, starts, rows, self.cotangents[k], 1),  # the new state's: row t + 1
            "out": lambda k: (base + starts[k], rows[k]),  # row t
            "scratch": lambda k: (base + starts[k], 0),  # the backward's own
        }
        mask = None if step_mask is None else step_mask.contiguous()
        passed = [torch.empty_like(c[0]) for c in cotangents] if mask is not None else []
        self.library.backward_steps(
            self.backward_program, len(self.backward_program), T, *_pointer_arrays([where[kind](k) for kind, k in self.backward_slots]),
            _address(mask), B, self.leaves, *_pointer_arrays([_leaf_place(base, starts, rows, place, 0) for place in self.cotangents]),
            self.cotangent_bytes, self.gemms, (ctypes.c_void_p * max(self.leaves, 1))(*(p.data_ptr() for p in passed)),
        )
        return [c[1:] for c in cotangents], [c[0] for c in cotangents]


def _rows(t: Tensor) -> tuple[int, int]:
    """A tensor with a row per step: (its address, bytes from a row to the next)."""
    return t.data_ptr(), t.stride(0) * t.element_size()


def _leaf_place(base: int, starts: dict[int, int], rows: dict[int, int], place: tuple[int, int], row: int) -> tuple[int, int]:
    """A state leaf at `place` (its buffer j, offset) in an arena at `base`: (its address in row `row`, bytes a row)."""
    j, offset = place
    return base + starts[j] + row * rows[j] + offset, rows[j]


def _leaf_bytes(layouts) -> ctypes.Array:
    """Each state leaf's bytes, (B, ...) as its layout has it: the loops' third array of the state."""
    return (ctypes.c_int64 * max(len(layouts), 1))(*(math.prod(shape) * dtype.itemsize for shape, _, dtype in layouts))


def _pointer_arrays(pairs: Sequence[tuple[int, int]]):
    """[(address, stride)] -> the two C arrays the loops take."""
    addresses, strides = zip(*pairs) if pairs else ((None,), (0,))
    return _array_types(len(addresses))[0](*addresses), _array_types(len(strides))[1](*strides)


@functools.lru_cache(maxsize=None)
def _array_types(n: int) -> tuple[type, type]:
    """The ctypes types of n addresses and of n int64 (made once: making one takes longer than filling it)."""
    return ctypes.c_void_p * n, ctypes.c_int64 * n


def _address(t: Optional[Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def build(forward_call: Call, example: Sequence[Tensor], backward_call: Call, backward_arguments: list[tuple[str, int]],
          n_parameters: int, leaves: int) -> StepLoops:
    """The loops of a step's compiled forward and backward (`example`: the forward's inputs,
    [*parameters, input_t, *state]), checked against the wrappers over three steps; Unsupported
    where they cannot stand in for them."""
    parameters, input_t, state = list(example[:n_parameters]), example[n_parameters], list(example[n_parameters + 1 :])
    forward_out = forward_call(list(example))
    cotangents = [torch.randn_like(o) for o in forward_out[: 1 + leaves]]
    sources = {"saved": forward_out[1 + leaves :], "cotangent": cotangents}
    backward_example = [sources[kind][k] for kind, k in backward_arguments]
    loops = StepLoops(record(forward_call, example), record(backward_call, backward_example), backward_arguments,
                      n_parameters, leaves)

    inputs = torch.stack([input_t, input_t * 0.5 - 0.25, input_t.flip(0)])  # (3, B, ...)
    ys, saved, carried = [], [], state
    for input_step in inputs:
        out = forward_call([*parameters, input_step, *carried])
        ys.append(out[0])
        saved.append(out[1 + leaves :])
        carried = list(out[1 : 1 + leaves])
    dy = torch.randn_like(torch.stack(ys))
    lam = [torch.randn_like(s) for s in state]
    final = lam
    lams = []
    for t in reversed(range(len(inputs))):
        lams.insert(0, lam)
        sources = {"saved": saved[t], "cotangent": [dy[t], *lam]}
        lam = list(backward_call([sources[kind][k] for kind, k in backward_arguments]))
    run = loops.forward(parameters, inputs, state, None)
    found_lams, found_first = loops.backward(parameters, inputs, run, dy, final, None)
    want = [torch.stack(ys), *carried, *(torch.stack(steps) for steps in zip(*lams)), *lam]
    got = [run.outputs[0], *(s[-1] for s in run.outputs[1:]), *found_lams, *found_first]
    if not all(torch.allclose(g, w, rtol=1e-5, atol=1e-6, equal_nan=True) for g, w in zip(got, want)):
        raise Unsupported("the loops do not reproduce the step's wrappers")
    return loops
