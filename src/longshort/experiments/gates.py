"""Inside a trained LSTM: its gates and cell over one adding-problem sequence.

A small LSTM learns the adding problem (`tasks.adding_problem`: remember the two marked
values, output their sum at the end). `trace_gates` then replays the cell step by step
and records i, f, g, o, c and h, so the plot shows what the equations promise: the input
gate opens at the marked steps, the forget gate stays near 1 to hold what was written,
and the cell carries the marked values to the end of the sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from longshort.cells import LSTMCell, LSTMState
from longshort.experiments.base import Experiment, Report, pyplot, save_figure
from longshort.experiments.forget_bias import ForgetInit, lstm_with_forget_init
from longshort.experiments.tasks import ADDING_BASELINE_MSE, adding_problem
from longshort.rnn import RNN
from longshort.training import Clip, train_step
from longshort.wrappers import Dense, Sequential

GATE_NAMES = ("i", "f", "g", "o", "c", "h")


def trace_gates(lstm: Union[LSTMCell, RNN], x: Tensor, state: Optional[LSTMState] = None) -> dict[str, Tensor]:
    """Run an LSTM over a sequence step by step and return everything inside it.

    `lstm` is an `LSTMCell` or a layer around one (`LSTM(...)`, `RNN(LSTMCell(...))`); `x` is
    one sequence (T, F) or a batch (B, T, F); `state` the initial `LSTMState` (zeros if None).
    Returns a dict of tensors `i, f, g, o, c, h`, each (T, H), or (B, T, H) for a batch: the
    input, forget and output gates, the candidate, the cell and the output at every step.

    It replays `LSTMCell.recur` with the cell's own weights and activations, so `h` equals
    the layer's `return_sequences` output and the last `c` its final cell state. Dropout is
    not applied (as in evaluation) and no gradients are recorded.
    """
    cell = lstm.cell if isinstance(lstm, RNN) else lstm
    if not isinstance(cell, LSTMCell) or type(cell).recur is not LSTMCell.recur:
        raise TypeError(f"trace_gates replays LSTMCell's equations; got {type(cell).__name__}, whose step differs")
    if not isinstance(x, Tensor) or x.dim() not in (2, 3):
        raise ValueError(f"trace_gates expects one sequence (T, F) or a batch (B, T, F), got {getattr(x, 'shape', type(x))}")
    single = x.dim() == 2
    batch = x.unsqueeze(0) if single else x  # (B, T, F)
    with torch.no_grad():
        projected = nn.functional.linear(batch, cell.weight_ih, cell.bias)  # (B, T, 4H)
        h, c = state if state is not None else cell.initial_state(batch.shape[0], batch)
        trace: dict[str, list[Tensor]] = {name: [] for name in GATE_NAMES}
        for t in range(batch.shape[1]):
            z = projected[:, t] + h @ cell.weight_hh.T  # (B, 4H)
            i, f, g, o = z.chunk(4, dim=-1)  # each (B, H)
            i, f, o = cell.recurrent_activation(i), cell.recurrent_activation(f), cell.recurrent_activation(o)
            g = cell.activation(g)
            c = f * c + i * g
            h = o * cell.activation(c)
            for name, value in zip(GATE_NAMES, (i, f, g, o, c, h)):
                trace[name].append(value)
    stacked = {name: torch.stack(values, dim=1) for name, values in trace.items()}  # each (B, T, H)
    return {name: value[0] for name, value in stacked.items()} if single else stacked


@dataclass
class GatesConfig:
    """Everything the result depends on."""

    length: int = 100  # T of the adding problem
    units: int = 8  # H: small enough to show every unit
    forget_init: ForgetInit = ForgetInit.ONE  # forget-gate bias at the start: zero, one or chrono (see forget_bias)
    steps: int = 2000  # Adam steps
    batch_size: int = 64  # sequences per step
    learning_rate: float = 1e-2  # Adam
    clip_norm: float = 1.0  # global gradient-norm clipping
    test_size: int = 1000  # fresh sequences for the test MSE and the gate statistics
    example: int = 0  # which test sequence is drawn
    seed: int = 0  # weights and training batches
    test_seed: int = 7  # seed of the test sequences
    threads: int = 1  # torch CPU threads (see tasks.long_lag_cpu)

    def __post_init__(self) -> None:
        if self.length < 3:
            raise ValueError(f"length must be >= 3, got {self.length}")
        for name in ("units", "steps", "batch_size", "test_size", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("learning_rate", "clip_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.example < self.test_size:
            raise ValueError(f"example must lie in [0, test_size), got {self.example}")


def train_model(config: GatesConfig, progress: bool) -> tuple[Sequential, list[float]]:
    """`LSTM(units) -> Dense(1)` trained on the adding problem; returns the model and the loss per step."""
    torch.manual_seed(config.seed)
    model = Sequential(lstm_with_forget_init(config.units, 2, config.forget_init, config.length), Dense(1, input_size=config.units))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    clip = Clip(max_norm=config.clip_norm)
    batches = torch.Generator().manual_seed(config.seed)
    losses = []
    bar = tqdm(range(config.steps), desc=f"LSTM({config.units}) on the adding problem", unit="step", disable=not progress)
    for _ in bar:
        inputs, targets = adding_problem(config.batch_size, config.length, batches)
        losses.append(train_step(model, lambda: nn.functional.mse_loss(model(inputs), targets), optimizer, clip))
        bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    return model, losses


def gate_means(trace: dict[str, Tensor], markers: Tensor) -> dict[str, dict[str, float]]:
    """Mean of i, f, g, o (each (B, T, H)) over units and sequences: at marked steps, at the others, at the last step."""
    marked = markers.bool()  # (B, T)
    other = ~marked
    other[:, -1] = False  # the last step has its own column
    return {
        name: {
            "marked": float(trace[name][marked].mean()),
            "other": float(trace[name][other].mean()),
            "last": float(trace[name][:, -1].mean()),
        }
        for name in ("i", "f", "g", "o")
    }


def run(config: GatesConfig, out: Path, progress: bool = True) -> Report:
    model, losses = train_model(config, progress)
    inputs, targets = adding_problem(config.test_size, config.length, torch.Generator().manual_seed(config.test_seed))
    with torch.no_grad():
        predictions = model(inputs)  # (N, 1)
    trace = trace_gates(model[0], inputs)  # each (N, T, H)
    test_mse = float(nn.functional.mse_loss(predictions, targets))
    markers = inputs[..., 1]  # (N, T)
    means = gate_means(trace, markers)
    labels = {"i": "input gate i", "f": "forget gate f", "g": "candidate g", "o": "output gate o"}
    rows = [[labels[name], values["marked"], values["other"], values["last"]] for name, values in means.items()]
    example = {name: value[config.example] for name, value in trace.items()}  # each (T, H)
    figure = _plot(example, inputs[config.example], float(targets[config.example]), float(predictions[config.example]), config, out / "gates.png")
    summary = {
        "test_mse": test_mse,
        "baseline_mse": ADDING_BASELINE_MSE,
        "input_gate_marked": means["i"]["marked"],
        "input_gate_other": means["i"]["other"],
        "forget_gate_other": means["f"]["other"],
        "forget_gate_marked": means["f"]["marked"],
        "output_gate_last": means["o"]["last"],
        "output_gate_other": means["o"]["other"],
    }
    return Report(
        title=(
            f"Gates of LSTM({config.units}) trained on the adding problem, T={config.length}: test MSE {test_mse:.2g} "
            f"(always answering 1: {ADDING_BASELINE_MSE:.3f}); means over {config.test_size} test sequences and all units"
        ),
        columns=["quantity", "at marked steps", "at other steps", "at the last step"],
        rows=rows,
        summary=summary,
        notes=_notes(summary, trace, markers, config),
        figures=[figure],
        data={
            "losses": losses,
            "example_inputs": inputs[config.example],
            "example_trace": example,
            "gate_means": means,
        },
    )


def _notes(summary: dict, trace: dict[str, Tensor], markers: Tensor, config: GatesConfig) -> list[str]:
    solved = summary["test_mse"] < 0.01
    marked = markers.bool()
    per_unit_i_marked = trace["i"][marked].mean(dim=0)  # (H,)
    per_unit_i_other = trace["i"][~marked].mean(dim=0)  # (H,)
    unit = int((per_unit_i_marked - per_unit_i_other).argmax())
    return [
        f"The model {'learned' if solved else 'did not fully learn'} the task: test MSE {summary['test_mse']:.2g} against "
        f"{ADDING_BASELINE_MSE:.3f} for always answering 1.",
        f"Input gate: {summary['input_gate_marked']:.2f} at the marked steps against {summary['input_gate_other']:.2f} "
        f"elsewhere (mean over units). The most selective unit, {unit}, opens to {float(per_unit_i_marked[unit]):.2f} at the "
        f"markers and stays at {float(per_unit_i_other[unit]):.2f} elsewhere: it writes the marked values and little else.",
        f"Forget gate: {summary['forget_gate_other']:.2f} on average away from the markers, {summary['forget_gate_marked']:.2f} "
        f"at them; a cell that keeps a value for {config.length // 2} steps needs f close to 1 in the units that hold it "
        "(the bright rows of f in the heat map), and a unit whose f dips at a marker clears its cell as it writes.",
        f"Output gate at the last step {summary['output_gate_last']:.2f}, elsewhere {summary['output_gate_other']:.2f}: only "
        "the last output is trained (the loss reads h_T), so o is free to do anything before.",
        "trace_gates replays LSTMCell's equations with the trained weights; the test suite checks that its h equals the "
        "layer's output and its last c the layer's final cell state.",
    ]


def _plot(example: dict[str, Tensor], inputs: Tensor, target: float, prediction: float, config: GatesConfig, path: Path) -> Path:
    """One test sequence: the input with its markers, heat maps of i, f, g, o, and the cell state of every unit."""
    plt = pyplot()
    steps = range(inputs.shape[0])
    marked = [int(t) for t in torch.nonzero(inputs[:, 1]).flatten()]
    figure, axes = plt.subplots(6, 1, figsize=(11, 13), sharex=True, gridspec_kw={"height_ratios": [1, 1, 1, 1, 1, 1.6]})
    values = axes[0]
    values.bar(steps, inputs[:, 0].tolist(), color="0.7", width=0.8)
    values.bar(marked, inputs[marked, 0].tolist(), color="tab:red", width=0.8, label="marked values")
    values.set_ylabel("value")
    values.set_title(f"Input (target {target:.3f}, LSTM says {prediction:.3f})", loc="left", fontsize=10)
    values.legend(fontsize=8, loc="upper right")
    maps = {"i": ("input gate i", 0.0, 1.0, "viridis"), "f": ("forget gate f", 0.0, 1.0, "viridis"),
            "g": ("candidate g", -1.0, 1.0, "RdBu_r"), "o": ("output gate o", 0.0, 1.0, "viridis")}
    for axis, (name, (title, low, high, colours)) in zip(axes[1:5], maps.items()):
        image = axis.imshow(example[name].T.numpy(), aspect="auto", interpolation="nearest", cmap=colours, vmin=low, vmax=high)  # (H, T)
        axis.set_ylabel("unit")
        axis.set_title(title, loc="left", fontsize=10)
        figure.colorbar(image, ax=axis, pad=0.01, fraction=0.03)
    cell = axes[5]
    for unit in range(example["c"].shape[1]):
        cell.plot(steps, example["c"][:, unit].tolist(), linewidth=1, label=f"unit {unit}")
    cell.set_ylabel("cell state c")
    cell.set_title("cell state c of every unit", loc="left", fontsize=10)
    cell.legend(fontsize=7, ncol=min(8, example["c"].shape[1]), loc="upper left")
    cell.set_xlabel("time step")
    for axis in (values, cell):
        for step in marked:
            axis.axvline(step, color="tab:red", linestyle="--", linewidth=1)
    for axis in axes[1:5]:  # on the heat maps a line would hide the very column it points at: a triangle above it
        limits = axis.get_ylim()
        axis.plot(marked, [limits[1] - 0.4] * len(marked), "v", color="tab:red", markersize=6, clip_on=False)
        axis.set_ylim(limits)
    for axis in (values, cell):  # an invisible colour bar keeps these panels as wide as the heat maps
        figure.colorbar(image, ax=axis, pad=0.01, fraction=0.03).ax.set_visible(False)
    figure.suptitle(f"LSTM({config.units}) on the adding problem, T={config.length}: red lines and triangles = marked steps")
    return save_figure(figure, path)


EXPERIMENT = Experiment(
    name="gates",
    summary="the gates and cell of a trained LSTM over one adding-problem sequence: write at the markers, hold, read at the end",
    config_class=GatesConfig,
    run=run,
    tiny={"length": 20, "units": 4, "steps": 30, "test_size": 32},
)
