"""What torch.nn does under torch.autocast, per module kind, so that fusedrnn returns the same
dtypes."""
from typing import NamedTuple

import torch


class AutocastPolicy(NamedTuple):
    """How torch.nn runs one RNN call under torch.autocast (see autocast_policy)."""
    dtype: torch.dtype       # what floating point inputs, states and weights are cast to
    keeps_state_dtype: bool  # results come back in the promotion of dtype and the state's dtype

    def cast(self, input, states, weights):
        """-> input, states and weights cast as torch.nn casts them, and the dtype the results
        must come back in (None: as computed). Like autocast, leaves float64 alone."""
        result_dtype = None
        if self.keeps_state_dtype:
            result_dtype = torch.promote_types(self._cast(input).dtype, states[-1].dtype)
        return (self._cast(input), tuple(map(self._cast, states)),
                [self._cast(w) for w in weights], result_dtype)

    def _cast(self, tensor):
        if tensor is None or not tensor.is_floating_point() or tensor.dtype == torch.float64:
            return tensor
        return tensor.to(self.dtype)


def autocast_policy(kind, device_type):
    """What torch.nn's `kind` ("LSTM", "GRU", "RNN", "LSTMCell", "GRUCell" or "RNNCell") does
    under autocast on device_type, or None where autocast is off.

    torch.nn is not uniform here, and fusedrnn matches its result dtypes:
    - CUDA: the modules run through cuDNN, whose autocast wrapper casts to float16 whatever the
      autocast dtype (aten/src/ATen/cudnn/AutocastRNN.cpp); without cuDNN, and for the cells,
      everything is cast to the autocast dtype.
    - CPU: the LSTM runs as oneDNN's LSTM layer, which autocast casts as a whole, and the Elman
      RNN's state is its activated matrix products, so both compute and return the autocast
      dtype. The GRU, GRUCell and LSTMCell (and the LSTM without oneDNN) cast only their matrix
      products; their state update promotes the results back to the state's dtype (hx, or cx).
    """
    if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
        return None
    dtype = torch.get_autocast_dtype(device_type)
    is_module = not kind.endswith("Cell")
    if device_type == "cuda":
        if is_module and torch.backends.cudnn.enabled and torch.backends.cudnn.is_available():
            return AutocastPolicy(torch.float16, False)
        return AutocastPolicy(dtype, False)
    if kind == "LSTM" and torch.backends.mkldnn.enabled and torch.backends.mkldnn.is_available():
        return AutocastPolicy(dtype, False)
    return AutocastPolicy(dtype, kind in ("LSTM", "GRU", "LSTMCell", "GRUCell"))
