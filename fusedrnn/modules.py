"""fusedrnn.LSTM, GRU and RNN: drop-in replacements for torch.nn's, running fused kernels.

They subclass nn.RNNBase (not nn.LSTM/GRU/RNN, which torch.compile refuses to trace), so they
have torch.nn's constructor, parameter names, shapes, gate order, initialisation and
state_dict, and load each other's checkpoints with strict=True.
"""
import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import forward_ad
from torch.nn.utils.rnn import PackedSequence

from . import autocast, ops
from ._extension import _C


def _onnx_export_check():
    """torch.onnx.is_in_onnx_export, whose two imports per call cost about 1 us: the flags it
    reads, imported once. A torch that keeps them elsewhere gets the public function."""
    try:
        from torch.onnx._internal.exporter import _flags
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
    except ImportError:
        return torch.onnx.is_in_onnx_export
    return lambda: GLOBALS.in_onnx_export or _flags._is_onnx_exporting


_in_onnx_export = None


def _exporting():
    """Whether the call is being exported (torch.onnx.export) or traced (torch.jit.trace): then
    the modules and cells run torch.nn's forward on their own parameters, so that the graph holds
    the operators ONNX, TorchScript and their runtimes know (ONNX's LSTM, aten::lstm), exactly as
    torch.nn's export and trace give them, not fusedrnn's ops."""
    if torch.compiler.is_compiling():  # the public checks, which Dynamo knows
        return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()
    global _in_onnx_export
    if _in_onnx_export is None:
        _in_onnx_export = _onnx_export_check()
    return torch.jit.is_tracing() or _in_onnx_export()


def runs_torch_nn_for_dtype(input):
    """Whether a call on complex input (a tensor or a PackedSequence) runs torch.nn's
    implementation on the module's own parameters: fusedrnn has no complex kernels, and
    torch.nn runs complex layers (real input with complex weights, or the reverse, takes the
    usual path and its dtype error). Where a backend is forced, such a call raises, as any call
    the forced backend cannot run does."""
    if isinstance(input, PackedSequence):
        input = input.data
    if not input.is_complex():
        return False
    forced = _C.forced_backend()
    if forced:
        raise RuntimeError(
            f"fusedrnn: the backend '{forced}' is forced (FUSEDRNN_BACKEND or "
            f"fusedrnn.backends.force) but cannot run this call: no kernels for {input.dtype}; "
            "with no backend forced, torch.nn's implementation runs complex layers")
    return True


def fx_leaf_call(module, input, hx):
    """Under torch.fx's symbolic tracing (Proxy arguments), the module's call as one call_module
    node, as FX records torch.nn's modules and cells (its leaves by default); tracing into the
    forward would stop at its checks, which branch on shapes. -> the node's Proxy, or None when
    not tracing."""
    for argument in (input, *(hx if isinstance(hx, (tuple, list)) else (hx,))):
        if isinstance(argument, torch.fx.Proxy):
            tracer = argument.tracer
            arguments = (input,) if hx is None else (input, hx)  # as torch.nn's call records
            return tracer.create_proxy("call_module", tracer.path_of_module(module), arguments,
                                       {})
    return None


def state_tensors(hx, count):
    """hx as a tuple of `count` tensors (one tensor where count is 1), or None if it is not
    that: the direct paths leave anything else to the general path."""
    if count == 1:
        return (hx,) if isinstance(hx, torch.Tensor) else None
    if isinstance(hx, (tuple, list)) and len(hx) == count and all(
            isinstance(s, torch.Tensor) for s in hx):
        return tuple(hx)
    return None


def direct_path_applies(input, dims):
    """Whether a module's or cell's call may skip the general path: a plain tensor of `dims`
    dimensions (a tuple: one of them), and no autocast, compile, transform or export around
    it."""
    return not (type(input) is not torch.Tensor or input.dim() not in dims
                or torch._C._is_any_autocast_enabled() or torch.compiler.is_compiling()
                or ops.transform_active() or _exporting())


def direct_call_may_apply(input, dims):
    """Whether a module's or cell's call may try the direct C++ calls (csrc/layer/direct.h):
    the part of direct_path_applies that they cannot check themselves. A plain tensor of `dims`
    dimensions, not under torch.compile (Dynamo traces this code) nor at a forward-mode AD
    level (a dual tensor looks plain to C++). Autocast, torch.func's transforms, dispatch modes
    and tracing (torch.jit.trace, and ONNX export through it) put keys in the thread's dispatch
    key set, on which the calls decline. The full checks cost a small call 4-7 us where the
    core is cold, as a server's call finds it (benchmarks/NOTES.md, twenty-fourth session)."""
    return not (type(input) is not torch.Tensor or input.dim() not in dims
                or torch.compiler.is_compiling() or forward_ad._current_level >= 0)


class _FusedRNNBase(nn.RNNBase):
    # nn.RNNBase, not nn.LSTM etc.: Dynamo refuses every instance of nn.LSTM, nn.GRU and nn.RNN.
    def flatten_parameters(self) -> None:
        """No-op: cuDNN's flat weight buffer is of no use to fusedrnn's kernels."""

    def __prepare_scriptable__(self):
        """torch.jit.script scripts torch.nn's module instead, on the same parameters: TorchScript
        (C++, mobile) runs torch.nn's implementation, which it can compile."""
        from .convert import revert
        return revert(self)

    def _check_state(self, name, state, input):
        if state.dtype != input.dtype:
            raise RuntimeError(
                f"{name} dtype ({state.dtype}) does not match input dtype ({input.dtype}); "
                f"convert it: {name}.to({input.dtype})")
        if state.device != input.device:
            raise RuntimeError(
                f"Input and hidden tensors are not at the same device, found input tensor at "
                f"{input.device} and {name} tensor at {state.device}")

    def _prepare_input(self, input):
        """-> (x, packing, is_batched): x is time-major contiguous input [T, B, I], or a
        PackedSequence's data [rows, I] with packing = (batch_sizes, sorted_indices,
        unsorted_indices); packing is None for a plain tensor."""
        if isinstance(input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = input
            return data.contiguous(), (batch_sizes, sorted_indices, unsorted_indices), True
        if input.dim() not in (2, 3):
            raise ValueError(f"{type(self).__name__}: Expected input to be 2D or 3D, got "
                             f"{input.dim()}D instead")
        is_batched = input.dim() == 3
        if not is_batched:
            input = input.unsqueeze(1)
        elif self.batch_first:
            input = input.transpose(0, 1)
        return input.contiguous(), None, is_batched

    @staticmethod
    def _check_steps(input):
        """After the other checks, as torch.nn's C++ makes this one after its Python's."""
        if input.size(0) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")

    def _state_size(self, x, packing, width=None):
        """(layers * directions, B, width), width H by default. For packed input B is
        batch_sizes[0], the length of sorted_indices where there is one: a size that
        torch.compile knows without reading batch_sizes."""
        if packing:
            batch = packing[1].numel() if packing[1] is not None else int(packing[0][0])
        else:
            batch = x.size(1)
        return (self.num_layers * (2 if self.bidirectional else 1), batch,
                width or self.hidden_size)

    def _check_state_size(self, state, x, packing, message, width=None):
        """torch.nn's check_hidden_size; under torch.compile with packed input, where the batch
        may be a value read from batch_sizes that Dynamo cannot guard on, checked as the graph
        runs."""
        expected = self._state_size(x, packing, width)
        if packing and torch.compiler.is_compiling():
            torch._check(state.dim() == 3, lambda: "fusedrnn: a hidden state must be 3-D")
            for size, want in zip(state.shape, expected):
                torch._check(size == want, lambda: "fusedrnn: a hidden state's size does not "
                                                   "match the packed batch and the module")
            return
        self.check_hidden_size(state, expected, message)

    def _zero_state(self, x, packing, width=None):
        return torch.zeros(self._state_size(x, packing, width), dtype=x.dtype, device=x.device)

    def _update_flat_weights(self) -> None:
        """torch.nn's refresh of _flat_weights after a parameter was replaced (functional_call,
        load_state_dict(assign=True), a new Parameter): the identity check read straight from the
        parameter dict, where torch.nn's getattr per weight costs about 5 us a call, more than a
        small layer's step. Weights that are not plain parameters (parametrizations, attributes)
        take torch.nn's own check."""
        parameters = self._parameters
        for name, weight in zip(self._flat_weights_names, self._flat_weights):
            if parameters.get(name) is not weight:
                return super()._update_flat_weights()

    def _apply_autocast(self, kind, input, states):
        """The weights, with input and states cast as torch.nn's `kind` casts them under
        autocast (autocast.autocast_policy). -> input, states, weights, the dtype the results must
        come back in (None: as computed), and the context to run the layers in."""
        self._update_flat_weights()
        weights, device = self._flat_weights, input.device
        for weight in weights:
            if weight.device != device:
                raise RuntimeError(
                    f"Input and parameter tensors are not at the same device, found input tensor "
                    f"at {input.device} and parameter tensor at {weight.device}")
        policy = autocast.autocast_policy(kind, input.device.type)
        if policy is None:
            return input, states, weights, None, contextlib.nullcontext()
        input, states, weights, result_dtype = policy.cast(input, states, weights)
        if input.dtype != weights[0].dtype:
            raise RuntimeError(
                f"{kind} input dtype ({input.dtype}) does not match weight dtype "
                f"({weights[0].dtype}) under autocast, which leaves float64 tensors as they are")
        # Nothing inside may re-cast what was cast here.
        return input, states, weights, result_dtype, torch.autocast(input.device.type,
                                                                     enabled=False)

    def _direct(self, input, hx):
        """The leanest path: a call on a plain tensor, with no autocast, export, compile or
        transform around it, goes straight to the layer loop, without the general path's
        packing, autocast and state bookkeeping (about half of a small call's time). A CPU
        call, batched or not, runs every layer in one C++ call past the dispatcher
        (csrc/layer/direct.h), each layer its autograd node where a gradient may follow; where
        that call steps aside (a dispatch mode, the profiler, CUDA tensors), a batched call's
        layer functions call the ops. -> output, the final states; None for the general path.
        The checks here are the layer ops' own: any error defers to the general path, which
        raises torch.nn's messages."""
        if isinstance(input, PackedSequence):
            return self._direct_packed(input, hx)
        if not direct_call_may_apply(input, (2, 3)):
            return None
        given = () if hx is None else state_tensors(hx, self._states)
        if given is None:
            return None
        self._update_flat_weights()
        # A function mode, or a tensor subclass with __torch_function__, would see the op calls.
        if not torch._C._has_torch_function((*given, *self._flat_weights)):
            try:
                done = _C.direct_module_forward(
                    self.mode, input, given, self._flat_weights, self.num_layers,
                    self.bidirectional, self.bias, self.proj_size > 0, self.batch_first,
                    self.dropout if self.training else 0.0)
            except (RuntimeError, ValueError):
                return None
            if done is not None:
                return done[0], tuple(done[1])
        # The layer functions take batches (torch.nn's path makes them), and only where nothing
        # the C++ call declined for applies.
        if input.dim() != 3 or not direct_path_applies(input, (3,)):
            return None
        x = input.transpose(0, 1) if self.batch_first else input
        if x.size(0) == 0:
            return None
        if hx is None:  # zeros: one tensor for every unit (and for h and c where they match)
            zeros = self._direct_zero_states(x.size(1), x)

            def unit_states(unit):
                return zeros
        else:
            units = self.num_layers * (2 if self.bidirectional else 1)
            if any(s.dim() != 3 or s.size(0) != units for s in given):
                return None

            def unit_states(unit):
                return [s[unit] for s in given]
        try:
            output, finals = self._run_layers(x, unit_states, self._flat_weights, None)
        except (RuntimeError, ValueError):
            return None
        return output.transpose(0, 1) if self.batch_first else output, finals

    def _direct_packed(self, input, hx):
        """_direct's for a PackedSequence: a CPU call runs every layer on its rows in one C++
        call (direct_packed_forward: the general path's Python and op calls cost 75-110 us a
        call at T<=20 B=4 H=64), each layer its autograd node where a gradient may follow; any
        other call takes the general path."""
        data, batch_sizes, sorted_indices, unsorted_indices = input
        if not direct_call_may_apply(data, (2,)):
            return None
        given = () if hx is None else state_tensors(hx, self._states)
        if given is None:
            return None
        self._update_flat_weights()
        if torch._C._has_torch_function((*given, *self._flat_weights)):
            return None
        try:
            done = _C.direct_packed_forward(
                self.mode, data, batch_sizes, sorted_indices, unsorted_indices, given,
                self._flat_weights, self.num_layers, self.bidirectional, self.bias,
                self.proj_size > 0, self.dropout if self.training else 0.0)
        except (RuntimeError, ValueError):
            return None
        if done is None:
            return None
        output = PackedSequence(done[0], batch_sizes, sorted_indices, unsorted_indices)
        return output, tuple(done[1])

    def _one_direction(self, x, states, weights, reverse=False, batch_sizes=None):
        """One layer in one direction: states and weights that unit's. -> output, new states."""
        raise NotImplementedError

    def _both_directions(self, x, directions, batch_sizes=None):
        """Both directions of a CPU layer in one op: directions, (states, weights) of each.
        -> (output, new states) of each."""
        raise NotImplementedError

    def _run_layers(self, input, unit_states, weights, batch_sizes):
        """Runs every layer and direction.

        input: [T, B, I] or packed [rows, I]; unit_states(unit) -> the states (h, and c for the
        LSTM) of layer and direction `unit` (numbered as hx stacks them); weights: the flat
        weights. A CPU layer's two directions run in one call (the CPU runs them side by side).
        -> output [T, B, D*H] or [rows, D*H], tuple of [L*D, B, H].
        """
        if self.num_layers == 1 and not self.bidirectional:  # the common case: no loops, and
            # the final states as views, not a stack's copy (15 us with its backward)
            output, new_states = self._one_direction(input, unit_states(0), weights, False,
                                                     batch_sizes)
            return output, tuple([state.unsqueeze(0) for state in new_states])
        directions = 2 if self.bidirectional else 1
        per_direction = len(weights) // (self.num_layers * directions)
        finals = []
        x = input
        for layer in range(self.num_layers):
            ins = []
            for direction in range(directions):
                index = layer * directions + direction
                ins.append((unit_states(index),
                            weights[index * per_direction:(index + 1) * per_direction]))
            if directions == 2 and x.device.type == "cpu":
                results = self._both_directions(x, ins, batch_sizes)
            else:
                results = [self._one_direction(x, *ins[d], d == 1, batch_sizes)
                           for d in range(directions)]
            x = results[0][0] if directions == 1 else torch.cat([r[0] for r in results], dim=-1)
            finals += [new_states for _, new_states in results]
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, p=self.dropout, training=True)
        return x, tuple([torch.stack(final) for final in zip(*finals)])

    def _finish_output(self, output, packing, is_batched):
        if packing:
            return PackedSequence(output, *packing)
        if not is_batched:
            return output.squeeze(1)
        return output.transpose(0, 1) if self.batch_first else output

    @staticmethod
    def _reorder(state, packing, key):
        """Moves a [L*D, B, H] state between the caller's batch order and the sorted order of a
        PackedSequence (key 1: sorted_indices, into it; key 2: unsorted_indices, out of it)."""
        indices = packing[key] if packing else None
        return state if indices is None else state.index_select(1, indices)

    def _split_weights(self, weights):
        w_ih, w_hh = weights[0], weights[1]
        b_ih, b_hh = (weights[2], weights[3]) if self.bias else (None, None)
        return w_ih, w_hh, b_ih, b_hh


class LSTM(_FusedRNNBase):
    """Drop-in for torch.nn.LSTM (same arguments, parameters and outputs, PackedSequence input
    and proj_size included)."""

    _states = 2  # h and c

    def __init__(self, *args, **kwargs):
        super().__init__("LSTM", *args, **kwargs)

    # torch.nn.LSTM's public helpers for its (h, c) state, which subclasses and user code call.
    def get_expected_cell_size(self, input, batch_sizes):
        """(layers * directions, batch, hidden_size): the shape of c."""
        if batch_sizes is not None:
            batch = int(batch_sizes[0])
        else:
            batch = input.size(0) if self.batch_first else input.size(1)
        return self.num_layers * (2 if self.bidirectional else 1), batch, self.hidden_size

    def check_forward_args(self, input, hidden, batch_sizes):
        """Raises as torch.nn.LSTM does for an input or (h, c) of the wrong shape."""
        self.check_input(input, batch_sizes)
        self.check_hidden_size(hidden[0], self.get_expected_hidden_size(input, batch_sizes),
                               "Expected hidden[0] size {}, got {}")
        self.check_hidden_size(hidden[1], self.get_expected_cell_size(input, batch_sizes),
                               "Expected hidden[1] size {}, got {}")

    def permute_hidden(self, hx, permutation):
        """(h, c) with their batch rows in `permutation`'s order (None: as they are)."""
        if permutation is None:
            return hx
        return hx[0].index_select(1, permutation), hx[1].index_select(1, permutation)

    def _direct_zero_states(self, batch, x):
        h = torch.zeros(batch, self.proj_size or self.hidden_size, dtype=x.dtype, device=x.device)
        c = torch.zeros(batch, self.hidden_size, dtype=x.dtype, device=x.device) \
            if self.proj_size else h
        return h, c

    def _arguments(self, states, weights):  # h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr
        return (*states, *self._split_weights(weights),
                weights[-1] if self.proj_size > 0 else None)

    def _one_direction(self, x, states, weights, reverse=False, batch_sizes=None):
        h0, c0, *weights, w_hr = self._arguments(states, weights)
        output, h, c = ops.lstm_layer(x, h0, c0, *weights, reverse, batch_sizes, w_hr)
        return output, (h, c)

    def _both_directions(self, x, directions, batch_sizes=None):
        both = ops.lstm_layer_pair(x, [self._arguments(*d) for d in directions], batch_sizes)
        return [(output, (h, c)) for output, h, c in both]

    def forward(self, input, hx=None):
        direct = self._direct(input, hx)
        if direct is not None:
            output, (h_n, c_n) = direct
            return output, (h_n, c_n)
        traced = fx_leaf_call(self, input, hx)
        if traced is not None:
            return traced
        if _exporting() or runs_torch_nn_for_dtype(input):
            return nn.LSTM.forward(self, input, hx)
        input, packing, is_batched = self._prepare_input(input)
        given = hx is not None  # states the module makes need no checks
        if not given:
            hx = (self._zero_state(input, packing, self.proj_size),
                  self._zero_state(input, packing))
        elif isinstance(hx, (tuple, list)) and len(hx) > 2:
            raise RuntimeError("lstm expects two hidden states")
        elif packing:
            hx = tuple(self._reorder(state, packing, 1) for state in hx)
        else:
            want = 3 if is_batched else 2
            if hx[0].dim() != want or hx[1].dim() != want:
                kind = "batched 3-D" if is_batched else "unbatched 2-D"
                raise RuntimeError(
                    f"For {kind} input, hx and cx should also be {want}-D but got "
                    f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
            if not is_batched:
                hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        batch_sizes = packing[0] if packing else None
        self.check_input(input, batch_sizes)
        if given:
            self._check_state_size(hx[0], input, packing, "Expected hidden[0] size {}, got {}",
                                   self.proj_size)
            self._check_state_size(hx[1], input, packing, "Expected hidden[1] size {}, got {}")
        self._check_steps(input)
        input, hx, weights, result_dtype, context = self._apply_autocast("LSTM", input, hx)
        if given:
            self._check_state("hx", hx[0], input)
            self._check_state("cx", hx[1], input)
        with context:
            output, (h_n, c_n) = self._run_layers(
                input, lambda unit: (hx[0][unit], hx[1][unit]), weights, batch_sizes)
        if result_dtype is not None:
            output, h_n, c_n = output.to(result_dtype), h_n.to(result_dtype), c_n.to(result_dtype)
        if not is_batched:
            h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
        h_n, c_n = self._reorder(h_n, packing, 2), self._reorder(c_n, packing, 2)
        return self._finish_output(output, packing, is_batched), (h_n, c_n)


class _SingleStateRNN(_FusedRNNBase):
    """GRU and RNN: one hidden state."""

    _states = 1

    def _layer_pair(self, x, directions, batch_sizes):
        raise NotImplementedError

    def _direct_zero_states(self, batch, x):
        return (torch.zeros(batch, self.hidden_size, dtype=x.dtype, device=x.device),)

    def _both_directions(self, x, directions, batch_sizes=None):
        both = self._layer_pair(
            x, [(states[0], *self._split_weights(weights)) for states, weights in directions],
            batch_sizes)
        return [(output, (h,)) for output, h in both]

    def forward(self, input, hx=None):
        direct = self._direct(input, hx)
        if direct is not None:
            output, (h_n,) = direct
            return output, h_n
        traced = fx_leaf_call(self, input, hx)
        if traced is not None:
            return traced
        if _exporting() or runs_torch_nn_for_dtype(input):
            return (nn.GRU if self.mode == "GRU" else nn.RNN).forward(self, input, hx)
        input, packing, is_batched = self._prepare_input(input)
        given = hx is not None  # a state the module makes needs no checks
        if not given:
            hx = self._zero_state(input, packing)
        elif packing:
            hx = self._reorder(hx, packing, 1)
        elif is_batched and hx.dim() != 3:
            raise RuntimeError(
                f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor")
        elif not is_batched:
            if hx.dim() != 2:
                raise RuntimeError(
                    f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor")
            hx = hx.unsqueeze(1)
        batch_sizes = packing[0] if packing else None
        self.check_input(input, batch_sizes)
        if given:
            self._check_state_size(hx, input, packing, "Expected hidden size {}, got {}")
        self._check_steps(input)
        kind = "GRU" if self.mode == "GRU" else "RNN"
        input, (hx,), weights, result_dtype, context = self._apply_autocast(kind, input, (hx,))
        if given:
            self._check_state("hx", hx, input)
        with context:
            output, (h_n,) = self._run_layers(input, lambda unit: (hx[unit],), weights,
                                              batch_sizes)
        if result_dtype is not None:
            output, h_n = output.to(result_dtype), h_n.to(result_dtype)
        if not is_batched:
            h_n = h_n.squeeze(1)
        return self._finish_output(output, packing, is_batched), self._reorder(h_n, packing, 2)


class GRU(_SingleStateRNN):
    """Drop-in for torch.nn.GRU (same arguments, parameters and outputs)."""

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, **kwargs)

    def _one_direction(self, x, states, weights, reverse=False, batch_sizes=None):
        output, h = ops.gru_layer(x, *states, *self._split_weights(weights), reverse,
                                  batch_sizes)
        return output, (h,)

    def _layer_pair(self, x, directions, batch_sizes):
        return ops.gru_layer_pair(x, directions, batch_sizes)


class RNN(_SingleStateRNN):
    """Drop-in for torch.nn.RNN (same arguments, including nonlinearity='tanh' or 'relu')."""

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:  # torch.nn.RNN takes nonlinearity as the fourth positional argument
            self.nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            self.nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if self.nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{self.nonlinearity}'. Select from 'tanh' "
                             "or 'relu'.")
        super().__init__("RNN_TANH" if self.nonlinearity == "tanh" else "RNN_RELU", *args,
                         **kwargs)

    def _one_direction(self, x, states, weights, reverse=False, batch_sizes=None):
        output, h = ops.rnn_layer(x, *states, *self._split_weights(weights),
                                  self.nonlinearity == "relu", reverse, batch_sizes)
        return output, (h,)

    def _layer_pair(self, x, directions, batch_sizes):
        return ops.rnn_layer_pair(x, directions, self.nonlinearity == "relu", batch_sizes)
