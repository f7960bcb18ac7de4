"""longshort: the LSTM as taught, in the three Keras usage styles, on PyTorch.

    LSTM(units)                     the ready-made layer
    RNN(LSTMCell(units))            the generic loop, which runs any cell (yours too)
    TimeDistributed(Dense(units))   a module applied at every time step
"""

from longshort.activations import ACTIVATIONS, get_activation
from longshort.cells import Cell, GRUCell, LayerNormLSTMCell, LSTMCell, LSTMState, SimpleRNNCell, Zoneout
from longshort.layers import GRU, LSTM, LayerNormLSTM, SimpleRNN
from longshort.rnn import RNN
from longshort.training import Clip, History, clip_gradients, gradient_norm, train_step
from longshort.wrappers import Bidirectional, Dense, Sequential, TimeDistributed

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "Bidirectional",
    "Cell",
    "Clip",
    "Dense",
    "GRU",
    "GRUCell",
    "History",
    "LSTM",
    "LSTMCell",
    "LayerNormLSTM",
    "LayerNormLSTMCell",
    "LSTMState",
    "RNN",
    "Sequential",
    "SimpleRNN",
    "SimpleRNNCell",
    "TimeDistributed",
    "Zoneout",
    "clip_gradients",
    "get_activation",
    "gradient_norm",
    "train_step",
]
