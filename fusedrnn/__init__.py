"""fusedrnn: fused LSTM, GRU and Elman RNN kernels (CPU and CUDA) behind torch.nn's API."""
from ._extension import TORCH_VERSION, WITH_CUDA
from .cells import GRUCell, LSTMCell, RNNCell
from .convert import convert, revert
from .modules import GRU, LSTM, RNN
from .ops import gru_layer, lstm_layer, rnn_layer

__version__ = "0.1.0"
__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "convert", "revert",
           "lstm_layer", "gru_layer", "rnn_layer", "WITH_CUDA", "TORCH_VERSION"]
