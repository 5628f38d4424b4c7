"""fusedrnn: fused LSTM, GRU and Elman RNN kernels (CPU and CUDA) behind torch.nn's API."""
from . import aoti, backends
from ._extension import (TORCH_VERSION, WITH_CUDA, empty_cache, library_path,
                         packed_weights_memory, scratch_memory, set_packed_weights_limit,
                         set_scratch_limit)
from .cells import GRUCell, LSTMCell, RNNCell
from .convert import convert, revert
from .modules import GRU, LSTM, RNN
from .ops import gru_layer, lstm_layer, rnn_layer

__version__ = "0.1.0"
__all__ = ["aoti", "backends", "LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "convert",
           "revert", "lstm_layer", "gru_layer", "rnn_layer", "empty_cache", "scratch_memory",
           "set_scratch_limit", "packed_weights_memory", "set_packed_weights_limit", "WITH_CUDA",
           "TORCH_VERSION", "library_path"]
