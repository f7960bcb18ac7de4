"""longshort: the LSTM as taught, in the three Keras usage styles, on PyTorch.

    LSTM(units)                     the ready-made layer
    RNN(LSTMCell(units))            the generic loop, which runs any cell (yours too)
    TimeDistributed(Dense(units))   a module applied at every time step

and what `longshort train / forecast / generate / gates` run: `train_forecaster`, `Forecaster`,
`train_char_model`, `CharModel`, `draw_gates` (see the README's Python API section).
"""

from longshort.activations import ACTIVATIONS, get_activation
from longshort.cells import Cell, GRUCell, LayerNormLSTMCell, LSTMCell, LSTMState, SimpleRNNCell, Zoneout
from longshort.charmodel import CharModel, TextConfig, train_char_model
from longshort.charmodel import format_report as format_text_report
from longshort.checkpoints import CheckpointError, load_checkpoint
from longshort.distributed import DistributedError, Replicas, process_group
from longshort.datasets import bundled_path, kjv_text, read_text_file, sunspots_yearly
from longshort.forecasting import (
    Forecast,
    Forecaster,
    SeriesConfig,
    SeriesData,
    plot_forecast,
    plot_test,
    read_series_csv,
    train_forecaster,
)
from longshort.forecasting import format_report as format_forecast_report
from longshort.gate_plots import draw_gates, plot_gates, plot_learning_curves, trace_gates
from longshort.layers import GRU, LSTM, LayerNormLSTM, SimpleRNN
from longshort.rnn import RNN
from longshort.training import Clip, History, NonFiniteError, clip_gradients, gradient_norm, train_step
from longshort.wrappers import Bidirectional, Dense, Sequential, TimeDistributed
from longshort import export  # ls.export.to_onnx, to_torchscript, exportable
from longshort import memory  # ls.memory.hold_freed_memory(): malloc keeps freed memory for the next step
from longshort import native  # ls.native.status(): the fused LSTM's loops in C, or why torch ops
from longshort import workspace  # ls.workspace.clear(): let the fused kernels' kept buffers go

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "Bidirectional",
    "CharModel",
    "CheckpointError",
    "Cell",
    "Clip",
    "Dense",
    "DistributedError",
    "Forecast",
    "Forecaster",
    "GRU",
    "GRUCell",
    "History",
    "LSTM",
    "LSTMCell",
    "LayerNormLSTM",
    "LayerNormLSTMCell",
    "LSTMState",
    "NonFiniteError",
    "RNN",
    "Replicas",
    "Sequential",
    "SeriesConfig",
    "SeriesData",
    "SimpleRNN",
    "SimpleRNNCell",
    "TextConfig",
    "TimeDistributed",
    "Zoneout",
    "bundled_path",
    "clip_gradients",
    "draw_gates",
    "export",
    "format_forecast_report",
    "format_text_report",
    "get_activation",
    "gradient_norm",
    "kjv_text",
    "load_checkpoint",
    "memory",
    "native",
    "plot_forecast",
    "plot_gates",
    "plot_learning_curves",
    "plot_test",
    "process_group",
    "read_series_csv",
    "read_text_file",
    "sunspots_yearly",
    "trace_gates",
    "train_char_model",
    "train_forecaster",
    "train_step",
    "workspace",
]
