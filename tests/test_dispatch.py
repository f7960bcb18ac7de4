"""The three paths of LSTM / GRU / SimpleRNN (vendor, fused, loop) agree, and dispatch explains itself."""

import pytest
import torch

import longshort as ls

LAYERS = {
    "LSTM": lambda **kw: ls.LSTM(4, 3, **kw),
    "GRU": lambda **kw: ls.GRU(4, 3, **kw),
    "SimpleRNN tanh": lambda **kw: ls.SimpleRNN(4, 3, **kw),
    "SimpleRNN relu": lambda **kw: ls.SimpleRNN(4, 3, activation="relu", **kw),
}


def _outputs_and_grads(layer, x, **call):
    x = x.detach().clone().requires_grad_()
    outputs = layer(x, **call)
    sum(o.sin().sum() for o in outputs).backward()
    grads = [x.grad] + [p.grad for p in layer.parameters()]
    return [o.detach() for o in outputs], grads


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_every_path_gives_the_same_outputs_and_gradients(kind, masked, go_backwards):
    torch.manual_seed(0)
    x = torch.randn(3, 6, 3, dtype=torch.float64)
    call = {"lengths": torch.tensor([6, 2, 0])} if masked else {}
    paths = ["fused", "loop"] if masked else ["vendor", "fused", "loop"]
    options = dict(return_sequences=True, return_state=True, go_backwards=go_backwards)
    reference = LAYERS[kind](implementation="loop", **options).double()
    initial = reference.cell.initial_state(3, x)
    initial = ls.rnn.map_state(lambda s: torch.randn_like(s), initial)
    expected = _outputs_and_grads(reference, x, initial_state=initial, **call)
    for path in paths:
        layer = LAYERS[kind](implementation=path, **options).double()
        layer.load_state_dict(reference.state_dict())
        got = _outputs_and_grads(layer, x, initial_state=initial, **call)
        assert layer.last_dispatch.implementation == path
        for ours, theirs in zip(got[0] + got[1], expected[0] + expected[1]):
            torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", LAYERS)
def test_last_output_without_return_sequences_agrees(kind):
    torch.manual_seed(1)
    x = torch.randn(3, 5, 3)
    lengths = torch.tensor([5, 1, 3])
    loop = LAYERS[kind](implementation="loop")
    fused = LAYERS[kind](implementation="fused")
    fused.load_state_dict(loop.state_dict())
    torch.testing.assert_close(fused(x, lengths=lengths), loop(x, lengths=lengths))


def test_recurrent_dropout_fused_equals_loop_with_the_same_masks():
    torch.manual_seed(0)
    x = torch.randn(4, 7, 3, dtype=torch.float64)
    results = []
    for path in ("fused", "loop"):
        layer = ls.LSTM(5, 3, dropout=0.3, recurrent_dropout=0.4, return_sequences=True, implementation=path).double()
        torch.manual_seed(1)  # same weights
        layer.cell.reset_parameters()
        torch.manual_seed(2)  # same dropout masks
        results.append(_outputs_and_grads(layer, x, lengths=torch.tensor([7, 3, 5, 1])))
    for ours, theirs in zip(results[0][0] + results[0][1], results[1][0] + results[1][1]):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


def test_auto_prefers_vendor_and_says_why_it_falls_back():
    assert ls.LSTM(4).dispatch() == ls.dispatch.Dispatch("vendor", {})
    masked = ls.LSTM(4).dispatch(masked=True)
    assert masked.implementation == "fused" and "takes no mask" in masked.refused["vendor"]
    dropped = ls.GRU(4, recurrent_dropout=0.2).dispatch()
    assert dropped.implementation == "fused" and "no recurrent dropout" in dropped.refused["vendor"]
    custom = ls.LSTM(4, recurrent_activation="hard_sigmoid").dispatch()
    assert custom.implementation == "loop"
    assert "compute only tanh as activation and sigmoid" in custom.refused["fused"]
    # GRU and SimpleRNN prefer the fused kernels, faster than torch's on CPU (benchmarks/RESULTS.md)
    assert ls.SimpleRNN(4, activation="relu").dispatch() == ls.dispatch.Dispatch("fused", {})
    assert ls.GRU(4).dispatch() == ls.dispatch.Dispatch("fused", {})
    assert ls.GRU(4, activation="relu").dispatch().implementation == "loop"


def test_last_dispatch_records_the_path_of_the_last_call():
    layer = ls.LSTM(4, 3)
    x = torch.randn(3, 5, 3)
    with torch.no_grad():
        layer(x)
        assert layer.last_dispatch.implementation == "vendor"
        layer(x, lengths=torch.tensor([5, 2, 4]))
        assert layer.last_dispatch.implementation == "fused"
        layer(x[:2])  # up to FUSED_FIRST_BATCH rows the fused kernel comes first
        assert layer.last_dispatch == ls.dispatch.Dispatch("fused", {})
        layer(x)
        assert layer.last_dispatch.implementation == "vendor"
    layer(x)  # autograd records the call (the weights require grad): the fused kernel comes first
    assert layer.last_dispatch == ls.dispatch.Dispatch("fused", {})
    layer.requires_grad_(False)
    layer(x)
    assert layer.last_dispatch.implementation == "vendor"
    layer(x.requires_grad_())  # the gradient of the input alone is asked for
    assert layer.last_dispatch.implementation == "fused"


@pytest.mark.parametrize("batch, backward, path", [
    (None, False, "vendor"), (1, False, "fused"), (2, False, "fused"), (3, False, "vendor"), (64, False, "vendor"),
    (None, True, "fused"), (3, True, "fused"), (64, True, "fused"),
])
def test_auto_tries_the_fused_lstm_first_in_training_and_at_batches_of_one_and_two(batch, backward, path):
    """Where a backward can follow, the fused training step beats oneDNN's, and where a step is a
    matrix-vector product the fused kernel's forward does too (the measurements beside
    FUSED_FIRST_BATCH), both with the fused loops in C; elsewhere the order the cell prefers is kept."""
    assert ls.dispatch.FUSED_FIRST_BATCH == 2
    in_c = ls.native.loop_kernels(torch.float32) is not None  # where the C file cannot be built: the vendor kernel
    assert ls.LSTM(4).dispatch(batch=batch, backward=backward) == ls.dispatch.Dispatch(path if in_c else "vendor", {})
    assert ls.GRU(4).dispatch(batch=batch, backward=backward).implementation == "fused"  # fused first at every batch
    assert ls.LSTM(4, recurrent_activation="hard_sigmoid").dispatch(batch=batch, backward=backward).implementation == "loop"  # neither can run it
    assert ls.LSTM(4, implementation="vendor").dispatch(batch=batch, backward=backward).implementation == "vendor"  # a named path is taken as named


@pytest.mark.parametrize("units, batch, path", [
    (512, 127, "fused"), (512, 128, "vendor"), (1024, 31, "fused"), (1024, 32, "vendor"), (1024, None, "fused"), (1024, 2, "fused"),
])
def test_in_training_auto_leaves_the_largest_step_products_to_onednn(units, batch, path):
    """From VENDOR_FIRST_PRODUCT multiply-adds in a step's recurrent product (B x 4H x H) both
    training steps run at the GEMM rate and oneDNN's was as fast or faster: "auto" keeps the LSTM's own
    order there (the vendor kernel), in training too; a call of unknown rows, or of up to
    FUSED_FIRST_BATCH, still tries the fused kernel first. Where the vendor kernel cannot run, or
    for the GRU (whose fused kernel is always first), nothing changes."""
    assert ls.dispatch.VENDOR_FIRST_PRODUCT == 128 * 4 * 512 * 512
    in_c = ls.native.loop_kernels(torch.float32) is not None
    layer = ls.LSTM(units)
    assert layer.dispatch(batch=batch, backward=True).implementation == (path if in_c else "vendor")
    assert layer.dispatch(batch=batch, backward=True, masked=True).implementation == "fused"
    assert ls.LSTM(units, recurrent_dropout=0.1).dispatch(batch=batch, backward=True).implementation == "fused"
    assert ls.GRU(units).dispatch(batch=batch, backward=True).implementation == "fused"


def test_a_large_training_call_runs_the_vendor_kernel_with_the_layers_weights(monkeypatch):
    """At B=128, H=512 a training call runs oneDNN's kernel by the order of the paths (not measured
    here), which gives torch.nn.LSTM's outputs and gradients for the same weights."""
    monkeypatch.setattr(ls.dispatch, "measure", False)
    torch.manual_seed(0)
    layer = ls.LSTM(512, 8, return_sequences=True)
    reference = torch.nn.LSTM(8, 512, batch_first=True)
    with torch.no_grad():
        reference.weight_ih_l0.copy_(layer.cell.weight_ih)
        reference.weight_hh_l0.copy_(layer.cell.weight_hh)
        reference.bias_ih_l0.copy_(layer.cell.bias)
        reference.bias_hh_l0.zero_()
    x = torch.randn(128, 3, 8, requires_grad=True)
    y = layer(x)
    assert layer.last_dispatch.implementation == "vendor"
    torch.testing.assert_close(y, reference(x)[0])
    (dx,) = torch.autograd.grad(y.square().sum(), x)
    (dx_reference,) = torch.autograd.grad(reference(x)[0].square().sum(), x)
    torch.testing.assert_close(dx, dx_reference)
    layer(x[:127])
    assert layer.last_dispatch.implementation == ("fused" if ls.native.loop_kernels(torch.float32) is not None else "vendor")


def large_call(units: int = 64, batch: int = 32, steps: int = 40, **options) -> tuple[ls.LSTM, torch.Tensor]:
    """An LSTM and an input whose recurrent products reach MEASURED_FROM_PRODUCT: "auto" measures them."""
    assert batch * steps * 4 * units * units >= ls.dispatch.MEASURED_FROM_PRODUCT
    return ls.LSTM(units, 8, return_sequences=True, **options), torch.randn(batch, steps, 8, requires_grad=True)


@pytest.mark.parametrize("backward", [True, False])
def test_auto_times_both_kernels_once_per_shape_and_runs_the_faster(monkeypatch, backward):
    """Where the fused and vendor kernels can both run a large call, "auto" times them at the
    first call of a shape (timings faked here, to choose each in turn), says what it measured,
    and remembers it for the next call of that shape; another shape, or eval mode, is measured anew."""
    timed = []

    def fake_time_paths(calls):
        timed.append(sorted(calls))
        for call in calls.values():
            call()  # the rehearsals run, and must leave no trace (see the next test)
        return {"fused": 2.0, "vendor": 1.0} if len(timed) % 2 else {"fused": 1.0, "vendor": 2.0}

    monkeypatch.setattr(ls.rnn, "time_paths", fake_time_paths)
    layer, x = large_call()
    with torch.set_grad_enabled(backward):
        layer(x)
        assert layer.last_dispatch == ls.dispatch.Dispatch("vendor", {}, {"fused": 2.0, "vendor": 1.0})
        assert timed == [["fused", "vendor"]]
        layer(x)  # the same shape: remembered
        assert layer.last_dispatch.implementation == "vendor" and len(timed) == 1
        layer(x[:, :32])  # fewer steps: measured again
        assert layer.last_dispatch == ls.dispatch.Dispatch("fused", {}, {"fused": 1.0, "vendor": 2.0})
        layer.eval()
        layer(x)
        assert len(timed) == 3


def test_measuring_leaves_no_trace_but_the_choice(monkeypatch):
    """The rehearsals take their gradients by torch.autograd.grad (no .grad is touched) and put the
    random state back: with input dropout, a measured call gives the outputs, gradients and next
    random numbers of an unmeasured one (the kernels agree to rounding), and really times both."""
    results = {}
    for measure in (True, False):
        monkeypatch.setattr(ls.dispatch, "measure", measure)
        torch.manual_seed(0)
        layer, x = large_call(dropout=0.3)
        y = layer(x)
        assert all(p.grad is None for p in layer.parameters()) and x.grad is None
        y.square().sum().backward()
        results[measure] = (y, x.grad, layer.cell.weight_hh.grad, torch.rand(3), layer.last_dispatch)
    measured, unmeasured = results[True], results[False]
    for a, b in zip(measured[:4], unmeasured[:4]):
        torch.testing.assert_close(a, b)
    assert unmeasured[4].measured is None
    seconds = measured[4].measured
    assert sorted(seconds) == ["fused", "vendor"] and all(s > 0 for s in seconds.values())
    assert measured[4].implementation == ("fused" if seconds["fused"] < 0.95 * seconds["vendor"] else "vendor")


@pytest.mark.parametrize("fused, path", [(0.94, "fused"), (0.96, "vendor"), (1.2, "vendor")])
def test_auto_runs_the_fused_kernel_only_where_it_measured_clearly_faster(monkeypatch, fused, path):
    """Closer than FUSED_BY_AT_LEAST (5%), three rounds on a shared host cannot tell the kernels
    apart, and "auto" runs the vendor kernel, the one torch.nn.LSTM runs."""
    assert ls.dispatch.FUSED_BY_AT_LEAST == 0.05
    monkeypatch.setattr(ls.rnn, "time_paths", lambda calls: {"fused": fused, "vendor": 1.0})
    layer, x = large_call()
    layer(x)
    assert layer.last_dispatch.implementation == path


def test_time_rounds_times_each_call_after_one_of_its_own_and_time_paths_clears_between():
    """Each round calls a function untimed, then timed, then `between` (by default the fused
    kernels' kept buffers go: the next kernel's peak memory is its own), function after function."""
    log = []
    seconds = ls.dispatch.time_rounds({"a": lambda: log.append("a"), "b": lambda: log.append("b")}, rounds=2,
                                      between=lambda: log.append("|"))
    assert log == ["a", "a", "|", "b", "b", "|"] * 2
    assert sorted(seconds) == ["a", "b"] and all(len(s) == 2 and min(s) >= 0 for s in seconds.values())
    kept = ls.workspace.empty(torch.ones(()), 1 << 16)
    del kept
    assert ls.workspace._kept
    ls.dispatch.time_paths({"a": lambda: None}, rounds=1)
    assert not ls.workspace._kept


def test_fixed_order_turns_measuring_off_inside_and_back_on_after():
    """What the trainers and experiments run under, an exception included."""
    layer, x = large_call()
    with pytest.raises(RuntimeError, match="inside"):
        with ls.dispatch.fixed_order():
            layer(x)
            assert layer.last_dispatch.measured is None and not ls.dispatch.measure
            raise RuntimeError("inside")
    assert ls.dispatch.measure


def test_auto_measures_only_large_calls_both_kernels_can_run(monkeypatch):
    """A small call, a masked one (torch's kernel takes no mask), one of up to FUSED_FIRST_BATCH rows
    (the fused kernel's matrix-vector products) or one with measuring off is decided by the order of
    the paths alone."""
    monkeypatch.setattr(ls.rnn, "time_paths", lambda calls: pytest.fail("measured"))
    layer, x = large_call()
    layer(x[:, :2])  # 32 x 2 x 16384 multiply-adds: below MEASURED_FROM_PRODUCT
    layer(x, mask=torch.ones(32, 40, dtype=torch.bool))
    assert layer.last_dispatch.refused == {"vendor": "torch's kernel takes no mask"}
    large_call(batch=2, steps=600)[0](torch.randn(2, 600, 8))
    monkeypatch.setattr(ls.dispatch, "measure", False)
    layer(x)
    assert layer.last_dispatch.measured is None


@pytest.mark.parametrize("batch", [1, 64])
def test_without_the_fused_loops_in_c_auto_keeps_the_vendor_lstm(monkeypatch, batch):
    """The fused kernel's lead is its loops in C: with torch ops (LONGSHORT_NATIVE=0, or no
    compiler) or in bfloat16 (no C loops; and oneDNN's bfloat16 is the faster) the vendor kernel
    comes first, in training too."""
    layer = ls.LSTM(4, 3)
    x = torch.randn(batch, 5, 3)
    layer(x)
    expected = "fused" if ls.native.loop_kernels(torch.float32) is not None else "vendor"
    assert layer.last_dispatch.implementation == expected
    monkeypatch.setenv("LONGSHORT_NATIVE", "0")
    layer(x)
    assert layer.last_dispatch.implementation == "vendor"
    monkeypatch.delenv("LONGSHORT_NATIVE")
    layer.to(torch.bfloat16)(x.bfloat16())
    assert layer.last_dispatch.implementation == "vendor"


def test_asking_for_a_path_that_cannot_run_raises():
    with pytest.raises(ValueError, match="implementation='vendor'.*no recurrent dropout"):
        ls.LSTM(4, recurrent_dropout=0.1, implementation="vendor")
    with pytest.raises(ValueError, match="implementation='fused'.*compute only tanh"):
        ls.GRU(4, activation="relu", implementation="fused")
    layer = ls.LSTM(4, 3, implementation="vendor")
    with pytest.raises(ValueError, match="takes no mask"):
        layer(torch.randn(2, 5, 3), lengths=torch.tensor([5, 2]))
    with pytest.raises(ValueError, match="implementation must be one of"):
        ls.LSTM(4, implementation="cudnn")


def test_rnn_of_a_builtin_cell_dispatches_like_the_layer():
    assert ls.RNN(ls.LSTMCell(4)).dispatch().implementation == "vendor"
    assert ls.RNN(ls.GRUCell(4)).dispatch(masked=True).implementation == "fused"


def test_a_cell_that_changes_the_math_runs_the_loop():
    class LeakyLSTMCell(ls.LSTMCell):
        def recur(self, p_t, state):
            h, new_state = super().recur(p_t, state)
            return 0.5 * h, ls.LSTMState(0.5 * new_state.h, new_state.c)

    layer = ls.RNN(LeakyLSTMCell(4, 3))
    decision = layer.dispatch()
    assert decision.implementation == "loop"
    assert "LeakyLSTMCell overrides recur" in decision.refused["vendor"]
    plain = ls.RNN(ls.LSTMCell(4, 3))
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(2, 1, 3)  # one step from zeros: the leaky cell halves the plain output
    torch.testing.assert_close(layer(x), 0.5 * plain(x))


def test_a_user_cell_without_kernels_runs_the_loop():
    class UserCell(torch.nn.Module):
        def initial_state(self, batch_size, like):
            return like.new_zeros(batch_size, 3)

        def forward(self, x_t, h_prev):
            return torch.tanh(x_t + h_prev), torch.tanh(x_t + h_prev)

    decision = ls.RNN(UserCell()).dispatch()
    assert decision == ls.dispatch.Dispatch("loop", {"vendor": "UserCell has no vendor kernel", "fused": "UserCell has no fused kernel",
                                                     "compiled": ls.dispatch.NOT_ASKED})
    with pytest.raises(ValueError, match="UserCell has no fused kernel"):
        ls.RNN(UserCell(), implementation="fused")


def test_recurrent_dropout_blocks_the_vendor_kernel_only_in_training():
    layer = ls.LSTM(4, recurrent_dropout=0.3)
    assert layer.dispatch().implementation == "fused"
    assert layer.eval().dispatch().implementation == "vendor"


def test_a_remembered_decision_follows_every_change_of_the_cell():
    """`dispatch` keeps its decision while the built-in cell is unchanged, and decides again after any
    attribute assignment: an option set by hand, train / eval, or a layer's own `implementation`."""
    layer = ls.LSTM(4, 3)
    x = torch.randn(3, 5, 3)
    torch.set_grad_enabled(False)  # calls autograd does not record: "auto" tries the vendor kernel first
    try:
        layer(x)  # (keeps a zero bias for torch's kernel: a cache, not a change)
        first = layer.last_dispatch
        layer(x)
        assert layer.last_dispatch is first and first.implementation == "vendor"
        layer.cell.recurrent_dropout = 0.3
        layer(x)
        assert layer.last_dispatch.implementation == "fused"
        layer.eval()(x)
        assert layer.last_dispatch.implementation == "vendor"
        layer.train()
        layer.cell.activation = torch.relu
        layer(x)
        assert layer.last_dispatch.implementation == "loop"
        layer.implementation = "fused"
        with pytest.raises(ValueError, match="compute only tanh"):
            layer(x)
    finally:
        torch.set_grad_enabled(True)


@pytest.mark.parametrize("kind", ["LSTM", "SimpleRNN tanh"])
def test_vendor_zero_bias_is_kept_yet_follows_inference_mode_and_dtype(kind):
    """One-bias cells hand torch's kernel a kept zero `bias_hh`: made under inference_mode it must still
    serve a training call (an inference tensor cannot be saved for backward), and it follows `.double()`."""
    torch.manual_seed(0)
    layer = LAYERS[kind](implementation="vendor", return_sequences=True)
    x = torch.randn(2, 5, 3)
    with torch.inference_mode():
        layer(x)
    layer(x.requires_grad_()).sum().backward()
    assert layer.cell.weight_hh.grad is not None
    layer.double()
    reference = layer.to_torch()
    assert torch.allclose(layer(x.double()), reference(x.double())[0], atol=1e-12)
