"""fusedrnn.LSTMCell, GRUCell and RNNCell: drop-in replacements for torch.nn's cells.

Each step is the layer op with T=1: the input GEMM, the recurrent GEMM and one fused pointwise
kernel. Each subclasses its torch.nn cell (isinstance(cell, nn.LSTMCell) holds, as code that
picks modules by class expects) and overrides all it computes, so they have the same
constructor, parameter names, shapes, gate order, initialisation and state_dict. (The layers
cannot do the same: Dynamo refuses every nn.LSTM, nn.GRU and nn.RNN; modules.py.)
"""
import torch
from torch import nn

from . import autocast, modules, ops
from ._extension import _C

_layer_ops = torch.ops.fusedrnn  # what the inference path calls, with no autograd Function


class _FusedCell(nn.RNNCellBase):
    """torch.nn's cell checks and reshaping around one step of a layer op."""

    __prepare_scriptable__ = modules._FusedRNNBase.__prepare_scriptable__

    _torch_name: str  # torch.nn's class name: error messages and the autocast policy
    _mode: str        # the layer it is a step of, as nn.RNNBase names it: "LSTM", "GRU", ...
    _chunks: int      # gates per hidden unit
    _states: int      # 2 for (h, c), 1 for h

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None):
        # RNNCellBase's, as torch.nn's cells call it (next in the MRO is the torch.nn cell).
        nn.RNNCellBase.__init__(self, input_size, hidden_size, bias, num_chunks=self._chunks,
                                device=device, dtype=dtype)

    def _step(self, input, states, weights):
        """input [B, I]; states: tuple of [B, H]. -> tuple of the new [B, H] states."""
        raise NotImplementedError

    def _as_states(self, hx):
        """hx as a tuple of states (None stays None), with torch.nn's dimension check."""
        if hx is not None and hx.dim() not in (1, 2):
            raise ValueError(f"{self._torch_name}: Expected hidden to be 1D or 2D, got {hx.dim()}D "
                             "instead")
        return None if hx is None else (hx,)

    def _inference_step(self, input, states, weights):
        """_step without autograd: the layer op itself."""
        raise NotImplementedError

    def _direct(self, input, hx):
        """The leanest paths, as the modules' (modules._FusedRNNBase._direct). A CPU call, batched
        or not, runs in one C++ call past the dispatcher (csrc/layer/direct.h): without a
        gradient, the step alone; where one may follow, the step as one autograd node in C++,
        in place of the ops' Python autograd.Function. Another batched one without grad mode goes
        straight to the layer op, with the op's own checks. Any error defers to the general path
        for torch.nn's messages. -> the new states, or None."""
        states = () if hx is None else modules.state_tensors(hx, self._states)
        if states is None:
            return None
        weights = self._weights()
        # A function mode, or a tensor subclass with __torch_function__, would see the op calls.
        if not torch._C._has_torch_function((*states, *weights)):
            given = weights if self.bias else weights[:2]
            try:
                done = _C.direct_cell_forward(self._mode, input, states, given)
                if done is None and torch.is_grad_enabled():
                    done = _C.direct_cell_step(self._mode, input, states, given)
            except (RuntimeError, ValueError):
                return None
            if done is not None:
                return tuple(done)
        # The op takes a batch, and only where nothing the C++ calls declined for applies.
        if (torch.is_grad_enabled() or input.dim() != 2
                or not modules.direct_path_applies(input, (2,))):
            return None
        if not states:  # zeros: one tensor for h and c alike
            states = (torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype,
                                  device=input.device),) * self._states
        elif any(s.dim() != 2 for s in states):
            return None
        try:
            return self._inference_step(input, states, weights)
        except (RuntimeError, ValueError):
            return None

    def forward(self, input, hx=None):
        if modules.direct_call_may_apply(input, (1, 2)):  # the C++ calls check the rest
            new_states = self._direct(input, hx)
            if new_states is not None:
                return new_states if self._states == 2 else new_states[0]
        traced = modules.fx_leaf_call(self, input, hx)
        if traced is not None:
            return traced
        # torch.nn runs a cell without hidden units and returns empty states; there is nothing
        # to fuse, and the ops refuse such weights. Complex cells have no fused kernels either.
        if (modules._exporting() or self.hidden_size == 0
                or modules.runs_torch_nn_for_dtype(input)):
            return getattr(nn, self._torch_name).forward(self, input, hx)
        if input.dim() not in (1, 2):
            raise ValueError(f"{self._torch_name}: Expected input to be 1D or 2D, got "
                             f"{input.dim()}D instead")
        states = self._as_states(hx)
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
            if states is not None:
                states = tuple(s.unsqueeze(0) for s in states)
        if states is None:  # one tensor per state: Dynamo rejects a Function given one twice
            states = tuple(torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype,
                                       device=input.device) for _ in range(self._states))
        self._check_sizes(input, states, is_batched)

        weights = self._weights()
        policy = autocast.autocast_policy(self._torch_name, input.device.type)
        if policy is None:
            self._check_dtypes_and_devices(input, states, weights[0])
            new_states = self._step(input, states, weights)
        else:
            input, states, weights, result_dtype = policy.cast(input, states, weights)
            self._check_dtypes_and_devices(input, states, weights[0])
            with torch.autocast(input.device.type, enabled=False):  # no re-casting inside
                new_states = self._step(input, states, weights)
            if result_dtype is not None:
                new_states = tuple(s.to(result_dtype) for s in new_states)
        if not is_batched:
            new_states = tuple(s.squeeze(0) for s in new_states)
        return new_states if self._states == 2 else new_states[0]

    _WEIGHT_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")

    def _weights(self):
        """[weight_ih, weight_hh, bias_ih, bias_hh] (biases None without bias), read from the
        parameter dict: four nn.Module attribute lookups cost 2 us, a tenth of a small step.
        Weights that are not plain parameters (parametrizations) take the attribute lookups."""
        parameters = self._parameters
        try:
            return [parameters[name] for name in self._WEIGHT_NAMES]
        except KeyError:
            return [getattr(self, name) for name in self._WEIGHT_NAMES]

    def _check_sizes(self, input, states, is_batched):
        # ATen's checks (check_rnn_cell_forward_input/_hidden), in its order, with its messages,
        # and a check of the number of dimensions where ATen has none (it then raises an
        # IndexError, returns a wrongly broadcast result or, for the LSTMCell, crashes). First
        # one comparison of shapes for the calls that pass them all.
        batch, width = input.shape
        expected = (batch, self.hidden_size)
        if width == self.input_size and all(state.shape == expected for state in states):
            return
        if input.size(1) != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {input.size(1)} "
                               f"expected {self.input_size}")
        for index, state in enumerate(states):
            if state.size(0) != input.size(0):
                raise RuntimeError(f"Input batch size {input.size(0)} doesn't match "
                                   f"hidden{index} batch size {state.size(0)}")
            if state.dim() != 2:
                given, kind = (state.dim(), "batched") if is_batched else (2, "unbatched")
                raise RuntimeError(f"{self._torch_name}: hidden{index} must be 2-D for batched "
                                   f"input and 1-D for unbatched input, got {given}-D for {kind} "
                                   "input")
            if state.size(1) != self.hidden_size:
                raise RuntimeError(f"hidden{index} has inconsistent hidden_size: got "
                                   f"{state.size(1)}, expected {self.hidden_size}")

    def _check_dtypes_and_devices(self, input, states, weight):
        name = self._torch_name
        if input.dtype != weight.dtype:
            raise RuntimeError(f"{name}: input dtype ({input.dtype}) does not match weight dtype "
                               f"({weight.dtype}); convert the input: input.to({weight.dtype}), "
                               f"or the cell: cell.to({input.dtype})")
        for index, state in enumerate(states):
            if state.dtype != input.dtype:
                raise RuntimeError(f"{name}: hidden{index} dtype ({state.dtype}) does not match "
                                   f"input dtype ({input.dtype})")
            if state.device != input.device:
                raise RuntimeError(f"{name}: input is on {input.device} but hidden{index} is on "
                                   f"{state.device}")
        if weight.device != input.device:
            raise RuntimeError(f"{name}: input is on {input.device} but the weights are on "
                               f"{weight.device}")


class LSTMCell(_FusedCell, nn.LSTMCell):
    """Drop-in for torch.nn.LSTMCell: forward(input, (h, c) or None) -> (h', c')."""

    _torch_name, _mode, _chunks, _states = "LSTMCell", "LSTM", 4, 2

    def _as_states(self, hx):
        if hx is None:
            return None
        for index, value in enumerate(hx):
            if value.dim() not in (1, 2):
                raise ValueError(f"LSTMCell: Expected hx[{index}] to be 1D or 2D, got "
                                 f"{value.dim()}D instead")
        if len(hx) != 2:
            raise RuntimeError("lstm_cell expects two hidden states")
        return tuple(hx)

    def _step(self, input, states, weights):
        _, h, c = ops.lstm_layer(input.unsqueeze(0), *states, *weights)
        return h, c

    def _inference_step(self, input, states, weights):
        _, h, c, *_ = _layer_ops.lstm_forward(input.unsqueeze(0), *states, *weights, False,
                                              False)
        return h, c


class GRUCell(_FusedCell, nn.GRUCell):
    """Drop-in for torch.nn.GRUCell: forward(input, h or None) -> h'."""

    _torch_name, _mode, _chunks, _states = "GRUCell", "GRU", 3, 1

    def _step(self, input, states, weights):
        _, h = ops.gru_layer(input.unsqueeze(0), *states, *weights)
        return (h,)

    def _inference_step(self, input, states, weights):
        _, h, _ = _layer_ops.gru_forward(input.unsqueeze(0), *states, *weights, False, False)
        return (h,)


class RNNCell(_FusedCell, nn.RNNCell):
    """Drop-in for torch.nn.RNNCell (nonlinearity 'tanh' or 'relu'): forward(input, h or None)
    -> h'. Like torch.nn's, an unknown nonlinearity is reported by forward, not here."""

    __constants__ = ["input_size", "hidden_size", "bias", "nonlinearity"]
    _torch_name, _chunks, _states = "RNNCell", 1, 1

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", device=None,
                 dtype=None):
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype)
        self.nonlinearity = nonlinearity

    @property
    def _mode(self):  # an unknown nonlinearity makes a mode the direct call refuses
        return "RNN_" + str(self.nonlinearity).upper()

    def _step(self, input, states, weights):
        if self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        _, h = ops.rnn_layer(input.unsqueeze(0), *states, *weights,
                             relu=self.nonlinearity == "relu")
        return (h,)

    def _inference_step(self, input, states, weights):
        if self.nonlinearity not in ("tanh", "relu"):
            return None  # the general path raises torch.nn's error
        _, h = _layer_ops.rnn_forward(input.unsqueeze(0), *states, *weights,
                                      self.nonlinearity == "relu", False)
        return (h,)
