"""The compiled path (`longshort.compiled`): any cell, longshort's own backward-through-time, the
step compiled by TorchInductor. It must give what the readable loop gives (outputs, states and
every gradient), pass float64 gradcheck, refuse the cells it would get wrong, and compile once
per batch size, dtype and mode.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck

import longshort as ls
from longshort import compiled as compiled_path


class ProjectedLSTMCell(nn.Module):
    """A user's LSTM cell that declares the input projection (`project_input` / `recur`)."""

    def __init__(self, units: int, input_size: int) -> None:
        super().__init__()
        self.units = units
        self.input_layer = nn.Linear(input_size, 4 * units)
        self.recurrent_layer = nn.Linear(units, 4 * units, bias=False)

    def initial_state(self, batch_size, like):
        zeros = like.new_zeros(batch_size, self.units)
        return ls.LSTMState(zeros, zeros)

    def project_input(self, x):
        return self.input_layer(x)

    def recur(self, p_t, state):
        h_prev, c_prev = state
        i, f, g, o = (p_t + self.recurrent_layer(h_prev)).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, ls.LSTMState(h, c)

    def forward(self, x_t, state):
        return self.recur(self.project_input(x_t), state)


class TimeMajorLSTMCell(ProjectedLSTMCell):
    """The same cell, also declaring the projection of a whole sequence time-major (`time_major_input`)."""

    def __init__(self, units: int, input_size: int) -> None:
        super().__init__(units, input_size)
        self.time_major_calls = 0

    def time_major_input(self, x):
        self.time_major_calls += 1
        return self.input_layer(x.transpose(0, 1))  # (T, B, 4H)


class MinimalRNNCell(nn.Module):
    """The README's minimal cell: only `forward`, a tensor state, an output that is not the state."""

    def __init__(self, units: int, input_size: int) -> None:
        super().__init__()
        self.kernel = nn.Linear(input_size, units)
        self.recurrent_kernel = nn.Linear(units, units, bias=False)
        self.register_buffer("scale", torch.full((units,), 0.9))

    def initial_state(self, batch_size, like):
        return like.new_zeros(batch_size, self.recurrent_kernel.in_features)

    def forward(self, x_t, h_prev):
        h = torch.tanh(self.kernel(x_t) + self.recurrent_kernel(h_prev)) * self.scale
        return h * h, h


CELLS = {
    "projected LSTM": lambda: ProjectedLSTMCell(4, 3),
    "minimal": lambda: MinimalRNNCell(4, 3),
    "GRUCell": lambda: ls.GRUCell(4, 3),
}


def outputs_and_grads(layer: ls.RNN, x: torch.Tensor, initial, **call):
    x = x.detach().clone().requires_grad_()
    initial = ls.rnn.map_state(lambda s: s.detach().clone().requires_grad_(), initial)
    output, *state = layer(x, initial_state=initial, **call)
    loss = output.sin().sum() + sum((s * s).sum() for s in state)
    inputs = [x, *ls.rnn.flatten_state(initial), *layer.parameters()]
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [output, *state, *(torch.zeros_like(i) if g is None else g for g, i in zip(grads, inputs))]


@pytest.fixture(scope="module")
def compiled_layers():
    """One compiled layer per cell kind and call kind, kept across tests so each compiles once."""
    return {}


@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.parametrize("masked", [False, True], ids=["no mask", "lengths"])
@pytest.mark.parametrize("return_sequences", [True, False], ids=["sequences", "last"])
def test_compiled_equals_the_loop(kind, masked, return_sequences, compiled_layers):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 3, dtype=torch.float64)
    if masked:
        x[1, 2:] = 1e3  # garbage in the padding must not reach outputs or gradients
    call = {"lengths": torch.tensor([5, 2, 0])} if masked else {}
    options = dict(return_sequences=return_sequences, return_state=True)
    reference = ls.RNN(CELLS[kind](), implementation="loop", **options).double()
    key = (kind, return_sequences)
    if key not in compiled_layers:
        compiled_layers[key] = ls.RNN(copy.deepcopy(reference.cell), implementation="compiled", **options)
    layer = compiled_layers[key]
    layer.load_state_dict(reference.state_dict())
    initial = ls.rnn.map_state(torch.randn_like, reference.cell.initial_state(3, x))
    expected = outputs_and_grads(reference, x, initial, **call)
    got = outputs_and_grads(layer, x, initial, **call)
    assert layer.last_dispatch.implementation == "compiled"
    for ours, theirs in zip(got, expected):
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


class HandOnCell(nn.Module):
    """A tanh RNN cell whose state also holds a scale it hands on unchanged: a new state that is
    an input of the step, not computed by it."""

    def __init__(self, units: int, input_size: int) -> None:
        super().__init__()
        self.kernel = nn.Linear(input_size, units)
        self.recurrent_kernel = nn.Linear(units, units, bias=False)

    def initial_state(self, batch_size, like):
        units = self.recurrent_kernel.in_features
        return like.new_zeros(batch_size, units), like.new_ones(batch_size, units)

    def forward(self, x_t, state):
        h_prev, scale = state
        h = torch.tanh(self.kernel(x_t) + self.recurrent_kernel(h_prev)) * scale
        return h, (h, scale)


class SortingCell(MinimalRNNCell):
    """A cell whose step sorts its state: TorchInductor calls ATen's sort for it, not a kernel of its own."""

    def forward(self, x_t, h_prev):
        h = torch.sort(torch.tanh(self.kernel(x_t) + self.recurrent_kernel(h_prev)), dim=-1).values
        return h, h


def step_loops(layer: ls.RNN) -> list:
    return [step.loops for step in layer._compiled_loop.steps.values()]


@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.parametrize("batch", [1, 3, compiled_path.MATRIX_VECTOR_ROWS + 2])
def test_the_compiled_step_loops_over_time_in_c(kind, batch, monkeypatch):
    """Both loops over time run in C (`compiled_loops`) around the step's kernels and its matmuls
    (up to MATRIX_VECTOR_ROWS rows the loops' own matrix-vector products, from there on gemm), and give
    what one call of the compiled step a step gives, masks included, and what the readable loop gives."""
    torch.manual_seed(4)
    x = torch.randn(batch, 5, 3, dtype=torch.float64)
    x[0, 3:] = float("nan")  # padding: must reach neither outputs nor gradients
    call = {"lengths": torch.tensor([3, 5, 1, 4, 2, 5][:batch])}
    options = dict(return_sequences=True, return_state=True)
    in_c = ls.RNN(CELLS[kind](), implementation="compiled", **options).double()
    initial = ls.rnn.map_state(torch.randn_like, in_c.cell.initial_state(batch, x))
    got = outputs_and_grads(in_c, x, initial, **call)
    assert all(loops is not None for loops in step_loops(in_c))
    monkeypatch.setattr(compiled_path, "STEP_LOOPS_IN_C", False)
    in_python = ls.RNN(copy.deepcopy(in_c.cell), implementation="compiled", **options)
    expected = outputs_and_grads(in_python, x, initial, **call)
    assert step_loops(in_python) == [None]
    for ours, theirs in zip(got, expected):
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    loop = ls.RNN(copy.deepcopy(in_c.cell), implementation="loop", **options)
    for ours, theirs in zip(got, outputs_and_grads(loop, x.nan_to_num(0.0), initial, **call)):  # the padding's values do not matter
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


def test_a_run_takes_one_arena_its_arrays_apart_and_aligned():
    """The loops' arrays of a run (each returned buffer's T + 1 rows, then each scratch buffer) share
    one allocation: each starts on a ROW_ALIGNMENT boundary, and none overlaps another."""
    from longshort.compiled_loops import ROW_ALIGNMENT

    layer = ls.RNN(CELLS["projected LSTM"](), implementation="compiled", return_sequences=True)
    layer(torch.randn(3, 4, 3)).sum().backward()
    (loops,) = step_loops(layer)
    for arena in (loops.forward_arena, loops.backward_arena):
        assert arena.rows and arena.scratch.keys().isdisjoint(arena.rows)
        for T in (1, 7):
            memory, starts = arena.allocate(T)
            sizes = {**{j: (T + 1) * row for j, row in arena.rows.items()}, **arena.scratch}
            spans = sorted((starts[j], starts[j] + size) for j, size in sizes.items())
            assert all(start % ROW_ALIGNMENT == 0 and size % ROW_ALIGNMENT == 0 for start, size in zip(starts.values(), sizes.values()))
            assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))
            assert spans[-1][1] <= memory.numel()


def small_matmuls(layer: ls.RNN) -> list[tuple[int, int, int]]:
    """(M, N, K) of every matmul the step's loops in C run, forward and backward."""
    from longshort.compiled_loops import Gemm

    return [(call.m, call.n, call.k) for loops in step_loops(layer)
            for recording in (loops.forward_recording, loops.backward_recording) for call in recording.calls if isinstance(call, Gemm)]


def outputs_and_grads_of_on_threads(layer: ls.RNN, x: torch.Tensor, threads: int) -> list[torch.Tensor]:
    """`outputs_and_grads_of` with torch (and the loops in C) on `threads` threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return outputs_and_grads_of(layer, x)
    finally:
        torch.set_num_threads(before)


def assert_the_loop_gives(got: list[torch.Tensor], layer: ls.RNN, x: torch.Tensor) -> ls.RNN:
    """What the readable loop over a copy of `layer`'s cell gives equals `got` (float64); that loop."""
    loop = ls.RNN(copy.deepcopy(layer.cell), implementation="loop", return_sequences=True)
    for ours, theirs in zip(got, outputs_and_grads_of(loop, x)):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    return loop


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch", [1, 3])
def test_small_batches_keep_their_matmuls_for_the_matrix_vector_products_in_c(batch, threads, monkeypatch):
    """Up to MATRIX_VECTOR_ROWS rows, with the loops in C, the step's matmuls stay matmuls, which the
    loops do with csrc/matrix_vector.h (on two threads split between them: 131 units, 4 gates, is
    past STEP_SPLIT_PRODUCT and splits the forward's 524 outputs at 256, and the backward's 524 rows
    of W_hh in blocks of four, 66 and 65 blocks). Called a step at a time from Python, the step has
    them traced as reductions instead, as before."""
    torch.manual_seed(5)
    x = torch.randn(batch, 4, 3, dtype=torch.float64)
    in_c = ls.RNN(ProjectedLSTMCell(131, 3), implementation="compiled", return_sequences=True).double()
    got = outputs_and_grads_of_on_threads(in_c, x, threads)  # compiled, and run, on `threads` threads
    assert [step.reductions for step in in_c._compiled_loop.steps.values()] == [False]
    assert small_matmuls(in_c) == [(batch, 524, 131), (batch, 131, 524)]  # h W_hh^T forward, dz W_hh backward
    assert_the_loop_gives(got, in_c, x)
    monkeypatch.setattr(compiled_path, "STEP_LOOPS_IN_C", False)
    in_python = ls.RNN(copy.deepcopy(in_c.cell), implementation="compiled", return_sequences=True)
    outputs_and_grads_of(in_python, x)
    assert [step.reductions for step in in_python._compiled_loop.steps.values()] == [True]


def test_the_loops_are_one_library_for_every_step_and_without_it_the_step_is_called_from_python(monkeypatch, tmp_path, caplog):
    """The loops in C call the kernels Inductor built, by address, from csrc/step_loops.c: built once
    (not per step or cell). Where it cannot be built, the step runs one call a step, and says why."""
    from longshort import native

    torch.manual_seed(6)
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    layer = ls.RNN(MinimalRNNCell(4, 3), implementation="compiled", return_sequences=True).double()
    layer(x)
    assert [loops.library for loops in step_loops(layer)] == [native.step_loops_library()]
    monkeypatch.setenv("LONGSHORT_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that fails
    monkeypatch.setattr(native, "_built", {})
    monkeypatch.setattr(native, "_failures", {})
    unbuilt = ls.RNN(copy.deepcopy(layer.cell), implementation="compiled", return_sequences=True)
    with caplog.at_level("INFO", logger="longshort"):
        torch.testing.assert_close(unbuilt(x), layer(x), rtol=1e-12, atol=1e-12)
    assert step_loops(unbuilt) == [None]
    assert "one call a step from Python (the loops in C could not be built: false failed: 1)" in caplog.text


def test_a_second_layer_of_the_same_cell_loads_its_compiled_graphs_from_inductors_cache():
    from torch._dynamo.utils import counters

    torch.manual_seed(7)
    x = torch.randn(2, 3, 3, dtype=torch.float64)
    first = ls.RNN(MinimalRNNCell(4, 3), implementation="compiled", return_sequences=True).double()
    first(x).sum().backward()
    hits = counters["inductor"]["fxgraph_cache_hit"]
    second = ls.RNN(copy.deepcopy(first.cell), implementation="compiled", return_sequences=True)
    second(x).sum().backward()
    assert counters["inductor"]["fxgraph_cache_hit"] >= hits + 3  # the step's forward and backward, the all-steps pass


@pytest.mark.parametrize("threads", [1, 2])
def test_mid_batches_split_their_large_matmuls_between_the_threads(threads):
    """From MATRIX_VECTOR_ROWS + 1 rows up to STEP_SPLIT_ROWS (16, csrc/step_loops.c), a matmul of at
    least STEP_SPLIT_PRODUCT weights is split between two threads, each a gemm on a block of its
    outputs for all rows: forward h W_hh^T's 524 outputs at 256 (part_start rounds down to 16), the
    backward's dz W_hh's 131 at 64, so both ways gemm reads b (transposed forward, as stored
    backward). On one thread it is one gemm; both give what the readable loop gives."""
    torch.manual_seed(7)
    x = torch.randn(compiled_path.MATRIX_VECTOR_ROWS + 3, 4, 3, dtype=torch.float64)
    in_c = ls.RNN(ProjectedLSTMCell(131, 3), implementation="compiled", return_sequences=True).double()
    got = outputs_and_grads_of_on_threads(in_c, x, threads)  # compiled, and run, on `threads` threads
    assert small_matmuls(in_c) == [(7, 524, 131), (7, 131, 524)]
    assert_the_loop_gives(got, in_c, x)


def test_a_cell_with_time_major_input_hands_the_compiled_path_its_projection_time_major():
    """`time_major_input` (the cell protocol's optional method) gives the compiled path the projection
    as it loops over it, (T, B, G); the result is the readable loop's, which projects (B, T, F)."""
    torch.manual_seed(8)
    x = torch.randn(3, 5, 3, dtype=torch.float64)
    layer = ls.RNN(TimeMajorLSTMCell(4, 3), implementation="compiled", return_sequences=True).double()
    got = outputs_and_grads_of(layer, x)
    assert layer.cell.time_major_calls == 1
    loop = assert_the_loop_gives(got, layer, x)
    assert loop.cell.time_major_calls == 1  # the copy's count: the loop projects with project_input


@pytest.mark.parametrize("cell, batch, reason", [
    (lambda: SortingCell(4, 3), 2, "neither a kernel nor a matmul"),
    (lambda: HandOnCell(4, 3), 2, "a new state the step does not compute"),
])
def test_steps_the_loops_in_c_cannot_run_keep_their_wrapper_calls(cell, batch, reason, caplog):
    torch.manual_seed(5)
    x = torch.randn(batch, 4, 3, dtype=torch.float64)
    layer = ls.RNN(cell(), implementation="compiled", return_sequences=True, return_state=True).double()
    reference = ls.RNN(copy.deepcopy(layer.cell), implementation="loop", return_sequences=True, return_state=True)
    initial = ls.rnn.map_state(torch.randn_like, layer.cell.initial_state(batch, x))
    with caplog.at_level("INFO", logger="longshort"):
        got = outputs_and_grads(layer, x, initial)
    assert step_loops(layer) == [None]
    assert reason in caplog.text
    for ours, theirs in zip(got, outputs_and_grads(reference, x, initial)):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


def test_only_inductors_wrappers_are_recorded():
    from longshort import compiled_loops

    with pytest.raises(compiled_loops.Unsupported, match="not a wrapper generated by TorchInductor"):
        compiled_loops.record(lambda arguments: arguments, [torch.ones(2)])


@pytest.mark.parametrize("rows, as_reduction", [(1, True), (compiled_path.MATRIX_VECTOR_ROWS, True), (compiled_path.MATRIX_VECTOR_ROWS + 1, False)])
def test_small_matmuls_are_traced_as_reductions(rows, as_reduction):
    from torch._inductor.decomposition import select_decomp_table
    from torch.fx.experimental.proxy_tensor import make_fx

    base = select_decomp_table()
    table = {**base, **compiled_path._matrix_vector_decompositions(base)}
    h, w, bias = torch.randn(rows, 3, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    step = lambda h, w, bias: (torch.addmm(bias, h, w.T), h @ w.T, (w @ h.T).T)  # noqa: E731 - the vector on either side
    graph = make_fx(step, decomposition_table=table)(h, w, bias)
    matmuls = [n for n in graph.graph.nodes if n.target in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default)]
    assert (not matmuls) == as_reduction
    for ours, theirs in zip(graph(h, w, bias), step(h, w, bias)):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_go_backwards_and_stateful_work_on_the_compiled_path():
    torch.manual_seed(1)
    x = torch.randn(2, 6, 3)
    options = dict(return_sequences=True, go_backwards=True, stateful=True)
    loop = ls.RNN(ProjectedLSTMCell(4, 3), **options)
    compiled = ls.RNN(copy.deepcopy(loop.cell), implementation="compiled", **options)
    for chunk in x.split(3, dim=1):  # the state carries over between calls
        torch.testing.assert_close(compiled(chunk), loop(chunk), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled.state.c, loop.state.c, rtol=1e-5, atol=1e-6)


def test_gradcheck_float64():
    torch.manual_seed(2)
    layer = ls.RNN(ProjectedLSTMCell(2, 2), return_sequences=True, return_state=True, implementation="compiled").double()
    x = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    params = list(layer.parameters())
    lengths = torch.tensor([3, 1])

    def run(x, h0, c0, *weights):
        named = dict(zip((name for name, _ in layer.named_parameters()), weights))
        return torch.func.functional_call(layer, named, (x,), {"initial_state": ls.LSTMState(h0, c0), "lengths": lengths})

    assert gradcheck(run, (x, h0, c0, *params))
    assert all(loops is not None for loops in step_loops(layer))  # B=2: both loops over time ran in C


def test_compiles_once_per_batch_size_and_mode():
    torch.manual_seed(3)
    layer = ls.RNN(MinimalRNNCell(4, 3), implementation="compiled")
    x = torch.randn(2, 4, 3)
    assert layer.compile_seconds is None
    layer(x).sum().backward()
    first = layer.compile_seconds
    assert first > 0
    layer(x * 2).sum().backward()
    layer(x[:, :2])  # another length: the step is the same
    assert layer.compile_seconds == first
    layer(x[:1])  # another batch size
    layer.eval()(x)  # another mode
    assert len(layer._compiled_loop.steps) == 3 and layer.compile_seconds > first


def test_the_all_steps_pass_compiles_once_per_shape_up_to_a_cap(monkeypatch):
    """The gradient pass over all steps is compiled per number of rows (here from the forward's saved
    values); past COMPILED_PASSES shapes it runs eagerly, with the same gradients."""
    monkeypatch.setattr(compiled_path, "COMPILED_PASSES", 2)
    torch.manual_seed(5)
    reference = ls.RNN(MinimalRNNCell(4, 3), return_sequences=True, return_state=True).double()
    layer = ls.RNN(copy.deepcopy(reference.cell), implementation="compiled", return_sequences=True, return_state=True)
    initial = torch.randn(2, 4, dtype=torch.float64)
    for length, compiled_passes in ((4, 1), (4, 1), (5, 2), (6, 2), (3, 2)):  # lengths 6 and 3: past the cap
        x = torch.randn(2, length, 3, dtype=torch.float64)
        for ours, theirs in zip(outputs_and_grads(layer, x, initial), outputs_and_grads(reference, x, initial)):
            torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
        assert layer._compiled_loop.compiled_passes() == compiled_passes
    assert layer._compiled_loop.passes == {}  # no pass that computes the step again: it ran eagerly past the cap


@pytest.mark.parametrize("kind, batch", [("projected LSTM", 2), ("minimal", 5), ("GRUCell", 1)])
def test_the_all_steps_pass_reads_what_the_forward_loop_saved(kind, batch, monkeypatch):
    """Where the loops ran in C, the gradient pass over all steps is the gradient half of the step,
    reading the values the forward saved instead of computing the step again (here in chunks of 3
    steps and 1), masks included: NaN in the padding reaches no gradient. It gives the readable
    loop's gradients. At B=2 a step's (B, 4) float64 values fill their rows, 64 bytes: the steps'
    values are read as one tensor; at B=1 and 5 a row has padding, and they are read step by step."""
    monkeypatch.setattr(compiled_path, "ROWS_PER_PASS", 3 * batch)
    torch.manual_seed(6)
    x = torch.randn(batch, 7, 3, dtype=torch.float64)
    lengths = torch.tensor([4, 7, 6, 2, 5][:batch])
    padded = x.masked_fill((torch.arange(7)[None, :] >= lengths[:, None])[..., None], float("nan"))  # (B, T, 1)
    layer = ls.RNN(CELLS[kind](), implementation="compiled", return_sequences=True, return_state=True).double()
    initial = ls.rnn.map_state(torch.randn_like, layer.cell.initial_state(batch, x))
    loop = ls.RNN(copy.deepcopy(layer.cell), implementation="loop", return_sequences=True, return_state=True)
    for ours_x, call in ((x, {}), (padded, {"lengths": lengths})):
        got = outputs_and_grads(layer, ours_x, initial, **call)
        assert all(torch.isfinite(g).all() for g in got)
        for ours, theirs in zip(got, outputs_and_grads(loop, ours_x.nan_to_num(0.0), initial, **call)):
            torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
        compiled = layer._compiled_loop
        assert [built is not None for built in compiled.saved_passes.values()] == [True, True]  # 3 steps, 1 step
        assert compiled.passes == {}  # none that computes the step again
    for _, where in compiled.saved_passes.values():
        assert where and all(value.buffer is not None or value.weight is not None for value in where)
        assert any(value.whole_rows for value in where) == (batch == 2)


class DropoutCell(MinimalRNNCell):
    def forward(self, x_t, h_prev):
        h = torch.tanh(self.kernel(torch.nn.functional.dropout(x_t, 0.5)) + self.recurrent_kernel(h_prev))
        return h, h


class CapturingCell(MinimalRNNCell):
    def __init__(self, units: int, input_size: int) -> None:
        super().__init__(units, input_size)
        self.shift = torch.ones(units)  # a plain attribute, not a buffer

    def forward(self, x_t, h_prev):
        h = torch.tanh(self.kernel(x_t) + self.recurrent_kernel(h_prev) + self.shift)
        return h, h


class BatchMixingCell(MinimalRNNCell):
    def forward(self, x_t, h_prev):
        z = self.kernel(x_t) + self.recurrent_kernel(h_prev)
        h = torch.tanh(z - z.mean(dim=0))  # batch statistics
        return h, h


@pytest.mark.parametrize("cell, reason", [
    (DropoutCell, "draws random numbers"),
    (CapturingCell, "neither a parameter, a buffer nor its input"),
    (BatchMixingCell, "mixes the rows of the batch"),
], ids=["random", "captured tensor", "batch statistics"])
def test_cells_the_compiled_path_would_get_wrong_are_refused(cell, reason):
    layer = ls.RNN(cell(4, 3), implementation="compiled")
    with pytest.raises(ValueError, match=f"implementation='compiled'.*{reason}"):
        layer(torch.randn(2, 3, 3))
    with pytest.raises(ValueError, match=reason):  # dispatch now knows, too
        layer.dispatch()
    assert ls.RNN(cell(4, 3)).dispatch().implementation == "loop"  # the loop still runs it


def test_recurrent_dropout_of_a_builtin_cell_is_refused_in_training_only():
    layer = ls.LSTM(4, 3, recurrent_dropout=0.5, implementation="compiled")
    with pytest.raises(ValueError, match="implementation='compiled'"):
        layer(torch.randn(2, 3, 3))
    eval_layer = ls.LSTM(4, 3, recurrent_dropout=0.5, implementation="compiled").eval()
    vendor = ls.LSTM(4, 3).eval()
    vendor.load_state_dict(eval_layer.state_dict())
    x = torch.randn(2, 3, 3)
    torch.testing.assert_close(eval_layer(x), vendor(x))


def test_auto_never_compiles_and_says_how_to_ask():
    decision = ls.RNN(MinimalRNNCell(4, 3)).dispatch()
    assert decision.implementation == "loop"
    assert "implementation='compiled'" in decision.refused["compiled"]


def test_without_inductor_the_traced_graphs_run_with_a_warning(monkeypatch):
    import torch._inductor.compile_fx

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch._inductor.compile_fx, "compile_fx_inner", no_compiler)
    torch.manual_seed(4)
    x = torch.randn(2, 3, 3, dtype=torch.float64)
    loop = ls.RNN(MinimalRNNCell(4, 3), return_sequences=True).double()
    compiled = ls.RNN(copy.deepcopy(loop.cell), return_sequences=True, implementation="compiled")
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        got = compiled(x)
    torch.testing.assert_close(got, loop(x))


def test_a_compiled_layer_copies_and_runs_in_bidirectional():
    torch.manual_seed(5)
    layer = ls.RNN(MinimalRNNCell(4, 3), return_sequences=True, implementation="compiled")
    x = torch.randn(2, 3, 3)
    layer(x)
    twin = copy.deepcopy(layer)  # after compiling: the copy starts with an empty cache of its own
    assert twin._compiled_loop.cell is twin.cell and not twin._compiled_loop.steps
    torch.testing.assert_close(twin(x), layer(x))
    both = ls.Bidirectional(layer)
    assert both(x).shape == (2, 3, 8)


def test_the_all_steps_pass_in_chunks_gives_the_same_gradients(monkeypatch, compiled_layers):
    """With few rows per pass the weight gradients are summed over several chunks of steps."""
    import longshort.compiled

    monkeypatch.setattr(longshort.compiled, "ROWS_PER_PASS", 7)  # two steps of B=3 per chunk, the last one short
    test_compiled_equals_the_loop("projected LSTM", True, True, compiled_layers)
    test_compiled_equals_the_loop("minimal", False, True, compiled_layers)


class TransposedStateCell(MinimalRNNCell):
    """A step whose new state comes out as a transposed view (columns-major), not contiguous."""

    def forward(self, x_t, h_prev):
        h = torch.tanh(self.kernel.weight @ x_t.T + self.recurrent_kernel.weight @ h_prev.T).T  # (B, H), strides (1, B)
        return h, h


def test_a_state_that_comes_out_transposed_is_handed_on_correctly():
    torch.manual_seed(6)
    x = torch.randn(3, 5, 3, dtype=torch.float64)
    loop = ls.RNN(TransposedStateCell(4, 3), return_sequences=True).double()
    compiled = ls.RNN(copy.deepcopy(loop.cell), return_sequences=True, implementation="compiled")
    want, got = outputs_and_grads_of(loop, x), outputs_and_grads_of(compiled, x)
    for ours, theirs in zip(got, want):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


def outputs_and_grads_of(layer: ls.RNN, x: torch.Tensor) -> list[torch.Tensor]:
    x = x.detach().clone().requires_grad_()
    y = layer(x)
    inputs = [x, *layer.parameters()]
    grads = torch.autograd.grad(y.sin().sum(), inputs, allow_unused=True)
    return [y, *(torch.zeros_like(i) if g is None else g for g, i in zip(grads, inputs))]


# -- the input side of a cell without project_input / recur, hoisted out of the loop ---------------
class TwoInputSidesCell(MinimalRNNCell):
    """Two tensors computed from x_t meet the state apart: there is no single p_t to hand over."""

    def forward(self, x_t, h_prev):
        h = torch.tanh(self.kernel(x_t) + self.recurrent_kernel(h_prev)) * torch.sigmoid(x_t.sum(-1, keepdim=True))
        return h, h


class ModeDependentCell(MinimalRNNCell):
    """A step that differs between training and evaluation: one trace cannot serve both."""

    def forward(self, x_t, h_prev):
        h = torch.tanh(self.kernel(x_t) * (0.5 if self.training else 1.0) + self.recurrent_kernel(h_prev))
        return h, h


class FixedBatchCell(MinimalRNNCell):
    """A step whose trace holds the batch size as a number: its input side cannot run on all rows at once."""

    def forward(self, x_t, h_prev):
        p = self.kernel(x_t).reshape(x_t.shape[0], 2, 2).flip(1).reshape(x_t.shape[0], 4)
        h = torch.tanh(p + self.recurrent_kernel(h_prev))
        return h, h


@pytest.mark.parametrize("cell, hoisted", [(MinimalRNNCell, True), (TwoInputSidesCell, False), (ModeDependentCell, False),
                                           (FixedBatchCell, False)], ids=["splits", "two input sides", "mode", "batch size"])
def test_the_input_side_of_a_plain_cell_leaves_the_loop_where_it_splits_cleanly(cell, hoisted):
    torch.manual_seed(4)
    options = dict(return_sequences=True, return_state=True)
    reference = ls.RNN(cell(4, 3), implementation="loop", **options).double()
    layer = ls.RNN(copy.deepcopy(reference.cell), implementation="compiled", **options)
    x, initial = torch.randn(3, 5, 3, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    for training in (True, False):
        reference.train(training), layer.train(training)
        for ours, theirs in zip(outputs_and_grads(layer, x, initial), outputs_and_grads(reference, x, initial)):
            torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    assert [split is not None for split in layer._compiled_loop.splits.values()] == [hoisted, hoisted]  # training, evaluation
    if hoisted:  # the hoisted projection and its backward, by finite differences too
        x = x[:2, :3].clone().requires_grad_()
        assert gradcheck(lambda x, h: layer(x, initial_state=h)[0], (x, initial[:2].clone().requires_grad_()))

