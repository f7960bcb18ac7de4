"""Export (longshort.export): ONNX with the standard LSTM / GRU / RNN ops run in onnxruntime,
TorchScript saved and loaded, refusals, `longshort export`, and torch.compile of longshort layers."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import longshort as ls
from longshort.charmodel import TextConfig, train_char_model
from longshort.cli import main
from longshort.export import StandardLayer, exportable, to_onnx, to_torchscript
from longshort.forecasting import Forecaster
from longshort.rnn import flatten_state
from test_rnn import MinimalRNNCell  # the README's own cell, which no standard op computes

# torch.jit is deprecated since torch 2.9 (to_torchscript is torch.jit.trace): the warnings are torch's word on it.
pytestmark = [
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.trace` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.trace_method` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.save` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.load` is deprecated:DeprecationWarning"),
]

F = 3
EXAMPLE = (2, 5)  # the batch size and length exports are traced on
OTHER = (3, 8)  # the ones the exported models are run on
RECURRENT_OPS = {"LSTM", "GRU", "RNN"}


def built(model: torch.nn.Module) -> torch.nn.Module:
    """The model with its lazy weights built by one call, in evaluation mode."""
    with torch.no_grad():
        model(torch.randn(1, 2, F))
    return model.eval()


# Each model, and the recurrent ONNX ops its file must hold, in graph order.
MODELS = {
    "stack": (
        lambda: ls.Sequential(
            ls.LSTM(6, return_sequences=True),
            ls.GRU(5, return_sequences=True, go_backwards=True),
            ls.TimeDistributed(ls.Dense(4, activation="tanh")),
            ls.SimpleRNN(4, activation="relu"),
            ls.Dense(1),
        ),
        ["LSTM", "GRU", "RNN"],
    ),
    "bidirectional": (
        lambda: ls.Sequential(
            ls.Bidirectional(ls.LSTM(4, return_sequences=True)), ls.Bidirectional(ls.GRU(3, use_bias=False), merge_mode="ave")
        ),
        ["LSTM", "LSTM", "GRU", "GRU"],
    ),
    "state": (lambda: ls.LSTM(4, return_state=True, go_backwards=True), ["LSTM"]),
    "generic_rnn": (lambda: ls.RNN(ls.GRUCell(4), return_sequences=True, return_state=True), ["GRU"]),
}


def run_onnx(path, x: torch.Tensor) -> list[np.ndarray]:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})


def eager(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return flatten_state(model(x))


@pytest.mark.parametrize("name", MODELS)
def test_onnx_uses_the_standard_ops_and_matches_at_other_shapes(name, tmp_path):
    make, expected_ops = MODELS[name]
    torch.manual_seed(0)
    model = built(make())
    path = to_onnx(model, torch.randn(*EXAMPLE, F), tmp_path / "model.onnx")
    graph = onnx.load(str(path)).graph
    assert [node.op_type for node in graph.node if node.op_type in RECURRENT_OPS] == expected_ops
    assert not {"Loop", "Scan"} & {node.op_type for node in graph.node}
    assert [dim.dim_param for dim in graph.input[0].type.tensor_type.shape.dim] == ["batch", "time", ""]

    x = torch.randn(*OTHER, F)
    want = eager(model, x)
    got = run_onnx(path, x)
    assert len(got) == len(want)
    for ours, theirs in zip(want, got):
        np.testing.assert_allclose(theirs, ours.numpy(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_torchscript_round_trip_matches_at_other_shapes(name, tmp_path):
    make, _ = MODELS[name]
    torch.manual_seed(1)
    model = built(make())
    scripted = to_torchscript(model, torch.randn(*EXAMPLE, F))
    torch.jit.save(scripted, str(tmp_path / "model.pt"))
    loaded = torch.jit.load(str(tmp_path / "model.pt"))
    x = torch.randn(*OTHER, F)
    want = eager(model, x)
    got = flatten_state(loaded(x))
    assert len(got) == len(want)
    for ours, theirs in zip(want, got):
        torch.testing.assert_close(theirs, ours, atol=1e-6, rtol=1e-6)


def test_fixed_axes_are_fixed_in_the_onnx_graph(tmp_path):
    model = built(ls.Sequential(ls.GRU(4), ls.Dense(2)))
    path = to_onnx(model, torch.randn(*EXAMPLE, F), tmp_path / "fixed.onnx", dynamic_batch=False, dynamic_time=False)
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [(dim.dim_param, dim.dim_value) for dim in dims] == [("", 2), ("", 5), ("", F)]
    with pytest.raises(onnxruntime.capi.onnxruntime_pybind11_state.InvalidArgument, match="index: 1 Got: 8 Expected: 5"):
        run_onnx(path, torch.randn(2, 8, F))


def test_exportable_swaps_in_torch_modules_and_leaves_the_model_alone():
    model = built(ls.Sequential(ls.Bidirectional(ls.LSTM(4, return_sequences=True)), ls.SimpleRNN(3), ls.Dense(1))).train()
    copied = exportable(model)
    bidirectional = copied[0]
    assert isinstance(bidirectional.forward_layer.module, torch.nn.LSTM)
    assert bidirectional.backward_layer.go_backwards and isinstance(copied[1].module, torch.nn.RNN)
    assert not copied.training and model.training  # the copy is in evaluation mode; the model is untouched
    assert isinstance(model[0].forward_layer, ls.LSTM) and isinstance(model[1], ls.SimpleRNN)
    x = torch.randn(*OTHER, F)
    torch.testing.assert_close(eager(copied, x), eager(model.eval(), x), atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="unpadded batches only"):
        copied(x, lengths=torch.tensor([8, 3, 5]))


def test_an_initial_state_passes_through_the_export_form():
    layer = built(ls.LSTM(4, return_sequences=True, return_state=True))
    form = exportable(layer)
    assert isinstance(form, StandardLayer)
    x, state = torch.randn(2, 5, F), (torch.randn(2, 4), torch.randn(2, 4))
    with torch.no_grad():
        torch.testing.assert_close(form(x, initial_state=state), layer(x, initial_state=ls.LSTMState(*state)))


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda: ls.LayerNormLSTM(4), "torch's LSTM has no layer normalisation"),
        (lambda: ls.Sequential(ls.LSTM(4, peephole=True), ls.Dense(1)), "layer '0' .*no peephole connections"),
        (lambda: ls.LSTM(4, zoneout=0.1), "no zoneout"),
        (lambda: ls.GRU(4, activation="relu"), "only tanh as activation and sigmoid"),
        (lambda: ls.RNN(MinimalRNNCell(4, F)), "no op for a MinimalRNNCell"),
        (lambda: ls.RNN(ls.Zoneout(ls.GRUCell(4), 0.1)), "no op for a Zoneout"),
    ],
)
def test_layers_without_a_standard_op_are_refused_with_the_reason(make, reason, tmp_path):
    model = built(make())
    with pytest.raises(ValueError, match=f"{reason}.*Pass unroll=True"):
        to_onnx(model, torch.randn(*EXAMPLE, F), tmp_path / "model.onnx")
    with pytest.raises(ValueError, match=reason):
        to_torchscript(model, torch.randn(*EXAMPLE, F))


def test_stateful_and_unbuilt_layers_are_refused():
    with pytest.raises(ValueError, match="layer '0' .*is stateful: an exported model keeps no state"):
        exportable(built(ls.Sequential(ls.LSTM(4, stateful=True), ls.Dense(1))))
    with pytest.raises(ValueError, match="not built yet"):
        exportable(ls.Sequential(ls.LSTM(4), ls.Dense(1)))


def test_unroll_exports_the_loop_for_the_examples_length_only(tmp_path):
    torch.manual_seed(2)
    model = built(ls.Sequential(ls.LayerNormLSTM(4, return_sequences=True), ls.LSTM(3, peephole=True), ls.Dense(1)))
    for module in model.modules():  # peephole weights start at zero: make them count
        if getattr(module, "peephole", False):
            torch.nn.init.uniform_(module.weight_ci)
    x = torch.randn(*EXAMPLE, F)
    with pytest.raises(ValueError, match=r"unrolled over the example's 5 time steps \(layer '0', layer '1'\).*dynamic_time=False"):
        to_onnx(model, x, tmp_path / "model.onnx", unroll=True)
    path = to_onnx(model, x, tmp_path / "model.onnx", unroll=True, dynamic_time=False)
    assert not RECURRENT_OPS & {node.op_type for node in onnx.load(str(path)).graph.node}
    other_batch = torch.randn(4, EXAMPLE[1], F)
    np.testing.assert_allclose(run_onnx(path, other_batch)[0], eager(model, other_batch)[0].numpy(), atol=1e-5, rtol=1e-5)

    scripted = to_torchscript(model, x, unroll=True)
    torch.testing.assert_close(scripted(other_batch), eager(model, other_batch)[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="Expected 5 elements in a list but found 8"):
        scripted(torch.randn(2, 8, F))


def test_a_missing_onnx_package_is_named(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(ImportError, match="needs the onnx package: pip install onnx"):
        to_onnx(built(ls.GRU(2)), torch.randn(*EXAMPLE, F), tmp_path / "model.onnx")


def test_the_readme_example_runs(tmp_path, monkeypatch):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("\n### Export: TorchScript, ONNX, torch.compile\n") :]
    section = section[: section.index("\n### ", 1)]
    code = "\n".join(re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["y"].shape == (2, 1) and (tmp_path / "model.pt").exists()
    x = torch.randn(1, 7, 3)
    with torch.no_grad():
        want = namespace["model"].eval()(x)
    np.testing.assert_allclose(run_onnx(tmp_path / "model.onnx", x)[0], want.numpy(), atol=1e-5)


# -- longshort export: trained checkpoints ------------------------------------------------------


def test_cli_exports_a_trained_forecaster_with_its_scaling(tmp_path, capsys):
    csv = tmp_path / "series.csv"
    csv.write_text("year,value\n" + "".join(f"{1900 + row},{50 + 20 * math.sin(row / 2):.3f}\n" for row in range(60)))
    out = tmp_path / "run"
    assert main(["train", str(csv), "--lookback=6", "--horizon=2", "--units=4", "--epochs=2", "--no-progress", "--out", str(out)]) == 0
    assert main(["export", str(out), "--onnx", str(tmp_path / "f.onnx"), "--torchscript", str(tmp_path / "f.pt")]) == 0
    printed = capsys.readouterr().out
    assert f"Wrote {tmp_path / 'f.onnx'}" in printed and "(batch, 2) forecasts of 'value', in its units" in printed

    forecaster = Forecaster.load(out)
    windows = torch.stack([forecaster.data.values[start : start + 9] for start in (0, 20, 40)])  # (3, 9, 1), its units
    want = forecaster.predict(windows).float()  # (3, 2)
    assert [node.op_type for node in onnx.load(str(tmp_path / "f.onnx")).graph.node if node.op_type in RECURRENT_OPS] == ["LSTM"]
    np.testing.assert_allclose(run_onnx(tmp_path / "f.onnx", windows.float())[0], want.numpy(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(torch.jit.load(str(tmp_path / "f.pt"))(windows.float()), want, rtol=1e-5, atol=1e-4)


def test_cli_exports_a_character_model_with_its_vocabulary(tmp_path, capsys):
    text = tmp_path / "abc.txt"
    text.write_text("abcab cabbac " * 20)
    config = TextConfig(seq_len=8, embedding=3, units=5, epochs=1, batch_size=8)
    model = train_char_model(config, text, tmp_path / "run", progress=False, echo=lambda _: None)
    assert main(["export", str(tmp_path / "run"), "--onnx", str(tmp_path / "c.onnx"), "--torchscript", str(tmp_path / "c.pt")]) == 0
    assert '"output_1", "output_2": h, c' in capsys.readouterr().out

    codes = model.encode("abc cab")[None].repeat(2, 1)  # (2, 7)
    with torch.no_grad():
        scores, (h, c) = model.network(codes)
    stored = onnx.load(str(tmp_path / "c.onnx"))
    assert {entry.key: entry.value for entry in stored.metadata_props}["vocabulary"] == " abc"
    for ours, theirs in zip((scores, h, c), run_onnx(tmp_path / "c.onnx", codes)):
        np.testing.assert_allclose(theirs, ours.numpy(), atol=1e-5, rtol=1e-5)
    extra = {"vocabulary.txt": ""}
    loaded = torch.jit.load(str(tmp_path / "c.pt"), _extra_files=extra)
    assert extra["vocabulary.txt"] == b" abc"
    torch.testing.assert_close(loaded(codes)[0], scores)


def test_cli_export_refusals(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith("longshort export: say where to write the model: --onnx FILE and/or --torchscript FILE")
    assert main(["export", str(tmp_path / "nowhere"), "--onnx", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("longshort export: no checkpoint at") and "Traceback" not in err
    assert main(["export", str(tmp_path / "nowhere"), "--torchscript", str(tmp_path / "missing" / "x.pt")]) == 2
    assert capsys.readouterr().err == f"longshort export: no such folder: {tmp_path / 'missing'}\n"


# -- torch.compile --------------------------------------------------------------------------------


def test_torch_compile_of_lstm_and_gru_layers_equals_eager():
    """The layers' kernels run as in eager mode between graph breaks (RNN.run_kernel); around them, Inductor."""
    torch.manual_seed(3)
    model = ls.Sequential(ls.LSTM(4, F, return_sequences=True, implementation="vendor"), ls.GRU(3, 4), ls.Dense(1, 3))
    x = torch.randn(3, 4, F)  # the vendor kernel named: in training "auto" would take the fused one, as it does the GRU's
    eager_out = model(x)
    eager_out.sum().backward()
    eager_grads = [parameter.grad.clone() for parameter in model.parameters()]
    model.zero_grad()

    torch._dynamo.reset()
    try:
        explanation = torch._dynamo.explain(model)(x)
        assert 2 <= explanation.graph_break_count <= 4  # at each layer's kernel (run as in eager mode), and at most one more (the autocast check in RNN.forward)
        # (the first trace in a process makes the disabled function: its break names `disable`; later ones, RNN.run_kernel)
        assert all("disable" in str(graph_break.reason) for graph_break in explanation.break_reasons)
        torch._dynamo.reset()
        compiled_out = torch.compile(model)(x)
        compiled_out.sum().backward()
    finally:
        torch._dynamo.reset()
    assert [model[0].last_dispatch.implementation, model[1].last_dispatch.implementation] == ["vendor", "fused"]
    torch.testing.assert_close(compiled_out, eager_out, atol=1e-6, rtol=1e-6)
    for parameter, expected in zip(model.parameters(), eager_grads):
        torch.testing.assert_close(parameter.grad, expected, atol=1e-6, rtol=1e-6)


def test_importing_longshort_does_not_import_dynamo():
    """The graph breaks are made at the first call under torch.compile: torch._dynamo takes seconds to import."""
    check = "import sys, longshort; assert 'torch._dynamo' not in sys.modules, 'longshort imported torch._dynamo'"
    subprocess.run([sys.executable, "-c", check], check=True)
