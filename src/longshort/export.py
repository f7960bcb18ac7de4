"""Export a model with longshort layers to TorchScript and to ONNX.

    exportable(model)                         a copy whose recurrent layers are torch.nn modules
    to_torchscript(model, example_input)      traced: torch.jit.save / torch.jit.load
    to_onnx(model, example_input, path)       the standard ONNX LSTM / GRU / RNN ops

Each longshort layer whose configuration `torch.nn.LSTM` / `GRU` / `RNN` computes (the
default activations, no peephole, no zoneout, no layer norm; see `Cell.torch_refusal`)
becomes a `StandardLayer`: the `to_torch()` module plus the layer's own options
(`return_sequences`, `return_state`, `go_backwards`, an `initial_state`) in plain torch
ops, the same numbers as the layer. torch's exporter maps those modules onto ONNX's
`LSTM`, `GRU` and `RNN` ops (it reorders the gates: ONNX's LSTM has i, o, f, c), and a
trace records them as one `aten::lstm` / `gru` / `rnn_*` call, so both take any batch
size and any sequence length.

Any other layer (`LayerNormLSTM`, `peephole`, `zoneout`, custom activations, your own
cells, `Zoneout(...)`) has no standard op: it is refused with a ValueError that says why,
unless `unroll=True`, which exports the readable loop (`implementation="loop"`): the trace
records every step, so the exported model is unrolled over the example's T and takes
sequences of exactly that length (`to_onnx` then needs `dynamic_time=False`).

What is exported is the model in evaluation mode (no dropout; zoneout's expected blend),
on unpadded batches: exported layers take no `mask` / `lengths` (ONNX's `sequence_lens`
would cover right padding only; longshort's masks allow any). `stateful` layers are
refused: an exported model keeps no state between calls (pass it with `return_state` and
`initial_state` instead). ONNX Runtime's LSTM and GRU run float32.

onnx is needed only here, and imported only when `to_onnx` runs: `pip install onnx`
(`onnxruntime` runs the file; both are test-only dependencies of longshort).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

import torch
from torch import Tensor, nn

from longshort.cells import GRUCell, LSTMCell, SimpleRNNCell
from longshort.charmodel import CharModel
from longshort.checkpoints import load_checkpoint
from longshort.forecasting import Forecaster
from longshort.layers import GRU, LSTM, SimpleRNN, TorchLayer
from longshort.rnn import RNN, State, flatten_state

# The layer class that converts each built-in cell to its torch.nn module (subclasses included:
# a LayerNormLSTMCell is an LSTMCell, whose `torch_refusal` then says why torch.nn cannot hold it).
TORCH_LAYERS: dict[type, type[TorchLayer]] = {LSTMCell: LSTM, GRUCell: GRU, SimpleRNNCell: SimpleRNN}


class StandardLayer(nn.Module):
    """A longshort recurrent layer as its `torch.nn` module, with the layer's semantics in plain torch ops.

    `go_backwards` flips the input (the outputs then come in that reversed order, as the
    layer's do); without `return_sequences` the output is the last step's; with
    `return_state`, `(output, h, c)` for an LSTM and `(output, h)` otherwise. Exported
    layers take unpadded batches only: a `mask` or `lengths` is refused.
    """

    accepts_mask = True  # so that Sequential hands a mask here, to be refused, rather than dropping it

    def __init__(self, module: nn.RNNBase, return_sequences: bool, return_state: bool, go_backwards: bool) -> None:
        super().__init__()
        self.module = module
        self.return_sequences = return_sequences
        self.return_state = return_state
        self.go_backwards = go_backwards

    def forward(
        self,
        x: Tensor,
        initial_state: Optional[State] = None,
        mask: Optional[Tensor] = None,
        lengths: Optional[Tensor] = None,
    ) -> Union[Tensor, tuple[Tensor, ...]]:
        if mask is not None or lengths is not None:
            raise ValueError("an exported layer takes unpadded batches only (every sequence of the same length): no mask or lengths")
        if self.go_backwards:
            x = x.flip(1)
        if initial_state is None:
            y, final = self.module(x)
        else:
            leaves = tuple(leaf.unsqueeze(0) for leaf in flatten_state(initial_state))  # (1, B, H) each
            y, final = self.module(x, leaves if isinstance(self.module, nn.LSTM) else leaves[0])
        output = y if self.return_sequences else y[:, -1]  # (B, T, H) or (B, H)
        if not self.return_state:
            return output
        return (output, *(leaf.squeeze(0) for leaf in flatten_state(final)))

    def extra_repr(self) -> str:
        flags = ("return_sequences", "return_state", "go_backwards")
        return ", ".join(f"{flag}=True" for flag in flags if getattr(self, flag))


def standard_refusal(layer: RNN) -> Optional[str]:
    """Why no standard op (torch.nn module, ONNX op) computes `layer`; None when one does."""
    cell = layer.cell
    if not any(isinstance(cell, cell_class) for cell_class in TORCH_LAYERS):
        return f"torch.nn and ONNX have no op for a {type(cell).__name__}"
    return cell.torch_refusal()


def _torch_module(layer: RNN) -> nn.RNNBase:
    """The `torch.nn` module (batch_first) equal to `layer`, a built-in layer or an `RNN` around a built-in cell."""
    if isinstance(layer, TorchLayer):
        return layer.to_torch()
    layer_class = next(layer_class for cell_class, layer_class in TORCH_LAYERS.items() if isinstance(layer.cell, cell_class))
    holder = layer_class(layer.cell.units)  # the ready-made layer around this RNN's own cell: to_torch reads only the cell
    holder.cell = layer.cell
    return holder.to_torch()


def _export_form(layer: RNN, where: str, unroll: bool) -> tuple[nn.Module, bool]:
    """What `layer` (at `where` in the model) becomes in an exported model, and whether it is unrolled.

    A ValueError names the layer and the reason when it cannot be exported.
    """
    who = f"{where} ({type(layer).__name__} of {type(layer.cell).__name__})"
    if layer.stateful:
        raise ValueError(
            f"{who} is stateful: an exported model keeps no state between calls. Export it with stateful=False "
            "and pass the state with return_state=True / initial_state"
        )
    if not getattr(layer.cell, "built", True):
        raise ValueError(f"{who} is not built yet: run a batch through the model or call .build(input_size) first")
    reason = standard_refusal(layer)
    if reason is None:
        module = _torch_module(layer)
        return StandardLayer(module, layer.return_sequences, layer.return_state, layer.go_backwards), False
    if not unroll:
        raise ValueError(
            f"{who} has no standard ONNX / torch.nn op: {reason}. Pass unroll=True to export the readable loop, "
            "unrolled over the example's time steps (the exported model then takes sequences of that length only)"
        )
    unrolled = copy.deepcopy(layer)
    unrolled.implementation = "loop"  # the readable loop: plain torch ops, which a trace records step by step
    return unrolled, True


def _exportable_with_report(model: nn.Module, unroll: bool = False) -> tuple[nn.Module, list[str]]:
    """`exportable(model, unroll)` and the layers it unrolled ("layer '0'", "layer 'encoder.lstm'", ...)."""
    if isinstance(model, RNN):
        form, unrolled = _export_form(model, "the layer", unroll)
        return form.eval(), (["the layer"] if unrolled else [])
    copied = copy.deepcopy(model).eval()
    unrolled_layers: list[str] = []
    for where, parent in list(copied.named_modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, RNN) and not isinstance(parent, RNN):
                path = f"layer {(f'{where}.{name}' if where else name)!r}"
                form, unrolled = _export_form(child, path, unroll)
                parent.register_module(name, form.eval())
                if unrolled:
                    unrolled_layers.append(path)
    return copied, unrolled_layers


def exportable(model: nn.Module, unroll: bool = False) -> nn.Module:
    """A copy of `model`, in evaluation mode, in which every longshort recurrent layer (inside
    `Sequential`, `Bidirectional`, your own modules) is in its export form: a `StandardLayer`
    where torch.nn has the op, else (with `unroll`) the layer on its readable loop. The
    copy computes what the model computes in evaluation mode, on unpadded batches."""
    return _exportable_with_report(model, unroll)[0]


@contextlib.contextmanager
def _quiet_export_warnings() -> Iterator[None]:
    """Silence the warnings torch's tracer and its TorchScript-based ONNX exporter give about
    what longshort does on purpose (none of them is the user's to act on):

    * nn.LSTM/GRU/RNN's forward checks its weights, and longshort's layers their input's
      shape, with Python ifs (TracerWarning): the checks pass, and the trace keeps the ops,
      which take any batch size and length;
    * the TorchScript-based ONNX exporter is deprecated (since torch 2.9); it is the one
      that maps nn.RNN onto ONNX's RNN op and exports in well under a second;
    * "a batch size other than 1 with LSTM": the initial state comes from the input's
      shape, and the tests run the files at other batch sizes.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"torch\.nn\.modules\.rnn|longshort\._lazy|longshort\._validate")
        warnings.filterwarnings("ignore", message=r"You are using the legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message=r"The feature will be removed", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"Exporting a model to ONNX with a batch_size other than 1")
        yield


def to_torchscript(model: nn.Module, example_input: Tensor, unroll: bool = False) -> torch.jit.ScriptModule:
    """`model` traced on `example_input` into TorchScript (save it with `torch.jit.save`).

    Layers with a standard op trace into one `aten::lstm` / `gru` / `rnn_*` call, which takes
    any batch size and length; with `unroll`, other layers trace step by step and the result
    takes sequences of the example's length only. See `exportable`.
    """
    form = exportable(model, unroll)
    with _quiet_export_warnings(), torch.no_grad():
        return torch.jit.trace(form, example_input)


def to_onnx(
    model: nn.Module,
    example_input: Tensor,
    path: Union[str, Path],
    dynamic_batch: bool = True,
    dynamic_time: bool = True,
    unroll: bool = False,
) -> Path:
    """Write `model` to the ONNX file `path`, traced on `example_input` (B, T, ...); returns the path.

    The graph's input is named "input", its outputs "output" (or "output_0", "output_1", ... when
    the model returns several tensors, e.g. `(output, h, c)`). `dynamic_batch` / `dynamic_time`
    let the file take other batch sizes / lengths than the example's (axes 0 and 1 of the input).
    Layers with a standard op become ONNX `LSTM` / `GRU` / `RNN` nodes; `unroll` (see
    `exportable`) exports the others step by step, which needs `dynamic_time=False`.
    """
    try:
        import onnx  # noqa: F401  torch's exporter needs it
    except ImportError:
        raise ImportError("longshort.export.to_onnx needs the onnx package: pip install onnx") from None
    if not isinstance(example_input, Tensor) or example_input.dim() < 2:
        raise ValueError("example_input must be a tensor of shape (batch, time, ...)")
    form, unrolled = _exportable_with_report(model, unroll)
    if unrolled and dynamic_time:
        raise ValueError(
            f"unrolled over the example's {example_input.shape[1]} time steps ({', '.join(unrolled)}), the ONNX model "
            "can take only that length: pass dynamic_time=False"
        )
    with torch.no_grad():
        outputs = flatten_state(form(example_input))
    output_names = ["output"] if len(outputs) == 1 else [f"output_{index}" for index in range(len(outputs))]
    axes = {axis: name for axis, name, wanted in ((0, "batch", dynamic_batch), (1, "time", dynamic_time)) if wanted}
    path = Path(path)
    with _quiet_export_warnings():
        torch.onnx.export(
            form, (example_input,), str(path), input_names=["input"], output_names=output_names,
            dynamic_axes={"input": axes} if axes else None, dynamo=False,
        )
    return path


# ----------------------------------------------------------------------------- trained checkpoints


class ForecastNetwork(nn.Module):
    """A trained forecaster's network with its scaling built in: windows (B, T, F) of the CSV's
    columns in their own units (target first) -> forecasts (B, horizon) of the target, in its units."""

    def __init__(self, forecaster: Forecaster) -> None:
        super().__init__()
        self.model = forecaster.model
        self.register_buffer("mean", forecaster.mean.float())  # (F,)
        self.register_buffer("std", forecaster.std.float())

    def forward(self, windows: Tensor) -> Tensor:
        return self.model((windows - self.mean) / self.std) * self.std[0] + self.mean[0]


@dataclass
class Exported:
    """What `export_checkpoint` wrote, and what the exported model takes and gives."""

    written: list[Path]  # the files, in the order asked for
    inputs: str  # the graph input, in words
    outputs: str  # the graph outputs, in words


def export_checkpoint(checkpoint: Path, onnx_path: Optional[Path] = None, torchscript_path: Optional[Path] = None) -> Exported:
    """Export the trained model of a `longshort train` checkpoint (a file or its folder), with its best weights.

    A forecaster exports as `ForecastNetwork` (its scaling built in); a character model as its
    network, codes (B, T) int64 -> scores (B, T, V), h, c, with the vocabulary stored beside the
    graph (ONNX metadata "vocabulary"; TorchScript extra file "vocabulary.txt"). Both take any
    batch size and length.
    """
    if onnx_path is None and torchscript_path is None:
        raise ValueError("say where to write the model: --onnx FILE and/or --torchscript FILE")
    for path in (onnx_path, torchscript_path):
        if path is not None and path.parent != Path() and not path.parent.is_dir():
            raise ValueError(f"no such folder: {path.parent}")
    kind = load_checkpoint(checkpoint)["kind"]
    if kind == "series":
        forecaster = Forecaster.load(checkpoint)
        network: nn.Module = ForecastNetwork(forecaster)
        lookback, columns = forecaster.config.lookback, forecaster.data.columns
        example = forecaster.data.values[-lookback:][None].float()  # (1, L, F)
        extra = {}
        inputs = f'"input": windows (batch, time, {len(columns)}) of {", ".join(columns)} in their units (trained on time = {lookback})'
        outputs = f'"output": (batch, {forecaster.config.horizon}) forecasts of {columns[0]!r}, in its units'
    else:
        char_model = CharModel.load(checkpoint)
        network, example = char_model.network, char_model.encode(char_model.vocabulary)[None]  # (1, V) int64
        extra = {"vocabulary": char_model.vocabulary}
        inputs = '"input": character codes (batch, time) int64, a character\'s code its position in the vocabulary'
        outputs = f'"output_0": scores (batch, time, {len(char_model.vocabulary)}) of the next character; "output_1", "output_2": h, c'
    written = []
    if onnx_path is not None:
        written.append(to_onnx(network, example, onnx_path))
        if extra:
            _add_onnx_metadata(onnx_path, extra)
    if torchscript_path is not None:
        scripted = to_torchscript(network, example)
        torch.jit.save(scripted, str(torchscript_path), _extra_files={f"{key}.txt": value for key, value in extra.items()})
        written.append(torchscript_path)
    return Exported(written, inputs, outputs)


def _add_onnx_metadata(path: Path, entries: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
