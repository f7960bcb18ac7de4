"""`longshort.native`: the fused LSTM's loops in C. It builds here, agrees with the torch-ops
version of the same kernel, keeps NaN a NaN, and where it cannot build the kernel falls back
to torch ops and says why. (Float64 gradcheck of the C backward: test_fused_kernels.py, "lstm".)
"""

from __future__ import annotations

import platform
import shutil

import pytest
import torch

import longshort as ls
from longshort import native

CAN_BUILD = shutil.which("cc") is not None and platform.machine() == "x86_64" and platform.libc_ver()[0] == "glibc" \
    and tuple(map(int, platform.libc_ver()[1].split(".")[:2])) >= (2, 35)


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """An empty cache and a module that has not tried to build yet (restored afterwards)."""
    monkeypatch.setenv("LONGSHORT_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_built", {})
    monkeypatch.setattr(native, "_failures", {})
    return tmp_path


def training_step(layer: torch.nn.Module, x: torch.Tensor, lengths=None):
    x = x.clone().requires_grad_()
    y = layer(x, lengths=lengths)
    (y * torch.linspace(-1, 1, y.shape[-1], dtype=x.dtype)).sum().backward()
    return [y.detach(), x.grad] + [p.grad.clone() for p in layer.parameters()]


@pytest.mark.skipif(not CAN_BUILD, reason="needs cc and glibc >= 2.35 on x86-64")
def test_it_builds_here_and_is_cached(fresh_build):
    assert native.status().startswith("C (")
    assert native.loop_kernels(torch.float32) is not None and native.loop_kernels(torch.float64) is not None
    assert native.loop_kernels(torch.bfloat16) is None  # other dtypes keep to torch ops
    built = list(fresh_build.glob("rnn_loops-*.so"))
    assert len(built) == 1 and not list(fresh_build.glob("*.partial"))


@pytest.mark.skipif(not CAN_BUILD, reason="needs cc and glibc >= 2.35 on x86-64")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("recurrent_dropout", [0.0, 0.3])
@pytest.mark.parametrize("batch", [1, 2, 3, 5, 9])
@pytest.mark.parametrize("layer_class, options", [(ls.LSTM, {}), (ls.GRU, {}), (ls.SimpleRNN, {"activation": "tanh"}),
                                                   (ls.SimpleRNN, {"activation": "relu"})], ids=["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_c_and_torch_ops_agree(monkeypatch, dtype, masked, recurrent_dropout, batch, layer_class, options):
    """An odd width (37 units: the vector loops' remainder) and padding in the middle of the batch.
    On two threads (`threads_for`) each thread takes its share of the rows: 1 to 3 rows (batches
    of 1 to 5) take the C file's own matrix-vector products, 4 and 5 (a batch of 9) gemm (the
    LSTM's with the transposed weight it keeps for one or two, then the weight as it is)."""
    torch.manual_seed(0)
    layer = layer_class(37, return_sequences=True, recurrent_dropout=recurrent_dropout, implementation="fused", **options).to(dtype)
    x = torch.randn(batch, 9, 11, dtype=dtype)
    lengths = torch.tensor([3, 9, 1, 7, 9, 2, 9, 5, 8][:batch]) if masked else None
    layer(x)  # builds the (lazy) layer: its weights are drawn now, not after the seed below
    results = {}
    for switch in ("1", "0"):
        monkeypatch.setenv("LONGSHORT_NATIVE", switch)
        torch.manual_seed(1)  # the same recurrent dropout mask
        layer.zero_grad()
        results[switch] = training_step(layer, x, lengths)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for c_version, torch_version in zip(results["1"], results["0"]):
        torch.testing.assert_close(c_version, torch_version, atol=tol, rtol=tol)


@pytest.mark.skipif(not CAN_BUILD or torch.get_num_threads() < 2, reason="needs cc, glibc >= 2.35 on x86-64 and two threads")
@pytest.mark.parametrize("batch, rows_per_thread", [(2, 1), (7, 3), (11, 4)], ids=["1+1", "3+4", "5+6"])
@pytest.mark.parametrize("layer_class, options", [
    (ls.LSTM, {}), (ls.GRU, {}), (ls.SimpleRNN, {"activation": "tanh"}), (ls.SimpleRNN, {"activation": "relu"}),
    (ls.LayerNormLSTM, {}), (ls.LSTM, {"peephole": True, "zoneout": 0.2}),
], ids=["lstm", "gru", "rnn_tanh", "rnn_relu", "layer_norm", "peephole_zoneout"])
def test_the_batch_split_between_threads_agrees_with_one_thread(monkeypatch, batch, rows_per_thread, layer_class, options):
    """Each thread runs its rows through every step: the rows of 1 and 3 take the C file's own
    matrix-vector products, of 4 and more gemm. Padding and recurrent dropout differ by row, so a
    row read or written by the wrong thread, or at the wrong offset, shows."""
    torch.manual_seed(0)
    layer = layer_class(37, return_sequences=True, recurrent_dropout=0.3, implementation="fused", **options).double()
    x = torch.randn(batch, 9, 11, dtype=torch.float64)
    lengths = torch.tensor([3, 9, 1, 7, 9, 2, 8, 9, 5, 4, 6][:batch])
    layer(x)  # builds the (lazy) layer
    results = {}
    for rows, threads in ((10**9, 1), (rows_per_thread, 2)):
        monkeypatch.setattr(native, "ROWS_PER_THREAD", rows)
        assert native.threads_for(batch, torch.empty(4 * 37, 37)) == threads
        torch.manual_seed(1)  # the same dropout and zoneout masks
        layer.zero_grad()
        results[threads] = training_step(layer, x, lengths)
    for split, whole in zip(results[2], results[1]):
        torch.testing.assert_close(split, whole, atol=1e-12, rtol=1e-12)


def test_threads_follow_torch_and_the_batch(monkeypatch):
    small, large = torch.empty(4 * 64, 64), torch.empty(4 * 256, 256)  # an LSTM's recurrent weight at H=64, 256
    assert small.numel() < native.SPLIT_PRODUCT <= large.numel()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert [native.threads_for(batch, small) for batch in (1, 2, 3, 32)] == [1, 2, 2, 2]
    assert [native.threads_for(batch, large) for batch in (1, 2, 3, 32)] == [2, 2, 2, 2]  # one row: the products split
    assert [native.splits_products(batch, large) for batch in (1, 3, 4)] == [True, True, False]
    assert not native.splits_products(1, small)
    monkeypatch.setattr(native, "ROWS_PER_THREAD", 4)
    assert [native.threads_for(batch, small) for batch in (1, 3, 4, 7, 8, 32)] == [1, 1, 1, 1, 2, 2]
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # torch.set_num_threads(1): the caller alone
    assert native.threads_for(32, small) == native.threads_for(1, large) == 1


@pytest.mark.skipif(not CAN_BUILD, reason="needs cc and glibc >= 2.35 on x86-64")
@pytest.mark.parametrize("batch, threads, split", [
    (1, 2, True), (1, 3, True), (2, 2, True), (2, 3, True), (3, 2, True), (3, 3, True),  # matrix-vector products, split
    (5, 2, False), (7, 3, False),  # up to 3 rows a thread: each thread its own rows' matrix-vector products
    (7, 2, True), (10, 3, True), (32, 2, True),  # more: gemm, split
    (33, 2, False),  # beyond SPLIT_BATCH: each thread gemm on its own rows
])
@pytest.mark.parametrize("layer_class, units, options", [
    (ls.LSTM, 191, {}), (ls.GRU, 211, {}), (ls.SimpleRNN, 363, {"activation": "tanh"}), (ls.SimpleRNN, 363, {"activation": "relu"}),
    (ls.LayerNormLSTM, 191, {}), (ls.LSTM, 191, {"peephole": True, "zoneout": 0.2}),
], ids=["lstm", "gru", "rnn_tanh", "rnn_relu", "layer_norm", "peephole_zoneout"])
def test_the_products_split_between_threads_at_small_batches_agree_with_one_thread(monkeypatch, batch, threads, split,
                                                                                   layer_class, units, options):
    """From SPLIT_PRODUCT weights on (the sizes here are just above), up to SMALL_BATCH rows, and
    from more than SMALL_BATCH rows a thread up to SPLIT_BATCH rows, each thread computes a part of
    every step's recurrent product for all rows (matrix-vector products, then gemm), forward and
    backward, and the gate math of its own rows between; otherwise each thread's product is its own
    rows'. The units put the parts' edges at odd places (rounded down to 16 elements); three threads
    leave one thread without a row at B=1 and 2; padding and recurrent dropout differ by row.
    Against one thread."""
    torch.manual_seed(0)
    layer = layer_class(units, return_sequences=True, recurrent_dropout=0.3, implementation="fused", **options).double()
    x = torch.randn(batch, 9, 11, dtype=torch.float64)
    layer(x)  # builds the (lazy) layer
    weight = next(p for name, p in layer.named_parameters() if "weight_hh" in name)
    results = {}
    for threads_used in (1, threads):
        monkeypatch.setattr(torch, "get_num_threads", lambda: threads_used)
        assert native.splits_products(batch, weight) == (split and threads_used > 1)
        torch.manual_seed(1)  # the same dropout and zoneout masks
        layer.zero_grad()
        results[threads_used] = training_step(layer, x, torch.tensor([6, 9, 3, 1, 8][:batch] * (batch // 5 + 1))[:batch])
    for split, whole in zip(results[threads], results[1]):
        torch.testing.assert_close(split, whole, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("batch, split, flag", [(1, False, 1), (1, True, 0), (3, False, 1), (3, True, 0), (5, True, 1), (7, True, 0),
                                               (32, False, 1), (32, True, 0), (33, True, 1)])
@pytest.mark.parametrize("steps", [native.TRANSPOSED_FROM_STEPS, native.TRANSPOSED_FROM_STEPS - 1], ids=["long", "short"])
def test_the_forward_loop_gets_the_weight_laid_out_for_its_products(monkeypatch, batch, split, flag, steps):
    """W^T row-major (flag 1), except where the threads split the products, or the loop is shorter
    than TRANSPOSED_FROM_STEPS: W as the layer holds it, not copied."""
    weight = torch.randn(4 * 8, 8)
    monkeypatch.setattr(native, "SPLIT_PRODUCT", weight.numel() if split else weight.numel() + 1)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    _, split_flag = native.loop_threads(batch, weight)
    laid_out, transposed = native.forward_weight(weight, split_flag, steps)
    flag = flag if steps >= native.TRANSPOSED_FROM_STEPS else 0
    assert transposed == flag and torch.equal(laid_out, weight)
    assert (laid_out.data_ptr() == weight.data_ptr()) == (flag == 0)
    assert (laid_out.T if transposed else laid_out).is_contiguous()


@pytest.mark.skipif(not CAN_BUILD, reason="needs cc and glibc >= 2.35 on x86-64")
@pytest.mark.parametrize("batch", [1, 2, 8])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("kernel", ["lstm", "gru", "rnn_relu"])
@pytest.mark.parametrize("split", [False, True], ids=["own rows", "split"])
def test_gradcheck_at_batches_of_one_two_and_eight(monkeypatch, batch, masked, kernel, split):
    """The C backward where its matmul is the file's own matrix-vector product (1; 2, one row on
    each of two threads) or gemm (8: four rows a thread), and with the products split between two
    threads (the C loops take that decision from `native.loop_threads`, so a small weight can be made
    to split); test_fused_kernels.py gradchecks the kernels at a batch of 3, with recurrent dropout too."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(native, "SPLIT_PRODUCT", 0 if split else native.SPLIT_PRODUCT)
    from longshort.fused_gru import gru_recurrence
    from longshort.fused_lstm import lstm_recurrence
    from longshort.fused_simple_rnn import simple_rnn_recurrence

    generator = torch.Generator().manual_seed(0)
    H, T = 5, 4
    gates = {"lstm": 4, "gru": 3, "rnn_relu": 1}[kernel]
    p, h0, c0 = (torch.randn(shape, generator=generator, dtype=torch.float64).requires_grad_()
                 for shape in ((batch, T, gates * H), (batch, H), (batch, H)))
    weight_hh = (torch.randn(gates * H, H, generator=generator, dtype=torch.float64) * 0.5).requires_grad_()
    step_mask = torch.tensor([[True, True, False, True], [True, False, True, True]] * 4)[:batch] if masked else None
    assert native.loop_kernels(torch.float64) is not None
    assert native.loop_threads(batch, weight_hh) == (1 if batch == 1 and not split else 2, int(split))
    if kernel == "lstm":
        assert torch.autograd.gradcheck(lambda *a: lstm_recurrence(a[0], (a[1], a[2]), a[3], step_mask), (p, h0, c0, weight_hh))
    elif kernel == "gru":
        assert torch.autograd.gradcheck(lambda *a: gru_recurrence(a[0], a[1], a[2], None, step_mask), (p, h0, weight_hh))
    else:
        assert torch.autograd.gradcheck(lambda *a: simple_rnn_recurrence(a[0], a[1], a[2], "relu", step_mask), (p, h0, weight_hh))


@pytest.mark.skipif(not CAN_BUILD, reason="needs cc and glibc >= 2.35 on x86-64")
def test_nan_stays_nan():
    layer = ls.LSTM(8, return_sequences=True, implementation="fused")
    x = torch.randn(2, 4, 3)
    x[1, 2, 0] = float("nan")
    y = layer(x)
    assert torch.isnan(y[1, 2:]).all() and not torch.isnan(y[0]).any() and not torch.isnan(y[1, :2]).any()


def test_without_a_compiler_it_runs_torch_ops_and_says_why(fresh_build, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    assert native.loop_kernels(torch.float32) is None
    assert native.status().startswith("torch ops: the C version could not be built (could not run the C compiler '/nonexistent/cc'")
    torch.manual_seed(0)
    layer = ls.LSTM(6, input_size=4, return_sequences=True, implementation="fused")
    x = torch.randn(3, 5, 4)
    reference = ls.LSTM(6, input_size=4, return_sequences=True, implementation="loop")
    reference.load_state_dict(layer.state_dict())
    torch.testing.assert_close(layer(x), reference(x))


def test_a_compile_error_is_reported(fresh_build, monkeypatch):
    monkeypatch.setenv("CC", "false")  # a "compiler" that fails
    assert native.loop_kernels(torch.float64) is None
    assert native.status() == "torch ops: the C version could not be built (false failed: 1)"
    assert not list(fresh_build.glob("*")), "no half-built file is left behind"


def test_an_unwritable_cache_is_reported(fresh_build, monkeypatch):
    not_a_folder = fresh_build / "file"
    not_a_folder.write_text("")
    monkeypatch.setenv("LONGSHORT_CACHE", str(not_a_folder / "cache"))
    assert native.loop_kernels(torch.float32) is None
    assert native.status().startswith(f"torch ops: the C version could not be built (cannot write to the cache folder {not_a_folder / 'cache'} (Not a directory")


@pytest.mark.skipif(not CAN_BUILD, reason="needs cc and glibc >= 2.35 on x86-64")
def test_a_changed_header_builds_the_c_files_anew(fresh_build, monkeypatch, tmp_path):
    """The headers in csrc/ (matrix_vector.h, which both C files include) are part of each library's
    cache key: a library built before a change to one is not loaded after it."""
    first = native._build(native.STEP_LOOPS_SOURCE).path
    csrc = tmp_path / "csrc"
    shutil.copytree(native.CSRC, csrc)
    (csrc / "matrix_vector.h").write_text((csrc / "matrix_vector.h").read_text() + "/* changed */\n")
    monkeypatch.setattr(native, "CSRC", csrc)
    second = native._build(native.STEP_LOOPS_SOURCE).path  # the package's step_loops.c, with the changed header
    assert first.parent == second.parent == fresh_build and first != second


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs cc")
def test_a_platform_without_vector_math_is_named(fresh_build, monkeypatch, tmp_path):
    """Elsewhere than glibc >= 2.35 on x86-64 the source stops at its #error: the message says why."""
    source = tmp_path / "rnn_loops.c"
    source.write_text(native.SOURCE.read_text().replace("#if !(defined(__x86_64__)", "#if 1 || !(defined(__x86_64__)"))
    monkeypatch.setattr(native, "SOURCE", source)
    assert native.loop_kernels(torch.float32) is None
    assert "needs glibc >= 2.35 on x86-64 for vector exp and tanh (libmvec)" in native.status()


@pytest.mark.skipif(not CAN_BUILD, reason="needs cc and glibc >= 2.35 on x86-64")
def test_a_torch_without_an_exported_gemm_is_named(monkeypatch):
    """The C loops call torch's own BLAS gemm; a torch build whose library exports none keeps to torch ops, and says so."""
    monkeypatch.setattr(native, "gemm_address", lambda dtype: None)
    assert native.loop_kernels(torch.float32) is None
    assert native.status() == "torch ops: torch's library exports no BLAS gemm (sgemm_) for the C loops to call"
    layer = ls.GRU(4, return_sequences=True, implementation="fused")
    assert layer(torch.randn(2, 3, 5)).shape == (2, 3, 4)  # the torch-ops loops run


def test_switched_off(monkeypatch):
    monkeypatch.setenv("LONGSHORT_NATIVE", "0")
    assert native.loop_kernels(torch.float32) is None
    assert native.status() == "torch ops: LONGSHORT_NATIVE=0"


@pytest.mark.skipif(not CAN_BUILD, reason="needs cc and glibc >= 2.35 on x86-64")
@pytest.mark.parametrize("layer_class", [ls.LSTM, ls.GRU])
def test_split_backward_gives_the_same_gradients_in_every_run(monkeypatch, layer_class):
    """Where two threads split the backward's matrix-vector products, each sums its block of W's
    rows on its own and they add their sums into dh in thread order (matrix_vector.h): the gradients
    are equal to the last bit run after run (OpenMP's reduction, which added them in the order the
    threads finished, changed them by up to 1e-14 within a few runs here)."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(native, "SPLIT_PRODUCT", 0)
    torch.manual_seed(0)
    layer = layer_class(64, return_sequences=True, implementation="fused").double()
    x = torch.randn(2, 9, 11, dtype=torch.float64, requires_grad=True)
    assert native.loop_threads(2, layer.cell.weight_hh) == (2, 1)
    runs = [torch.autograd.grad(layer(x).sin().sum(), [x, *layer.parameters()]) for _ in range(20)]
    for grads in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(grads, runs[0]))
