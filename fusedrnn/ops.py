"""The dispatcher ops of fusedrnn._C as differentiable layer functions.

Each op runs one layer in one direction over a whole sequence (csrc/layer.h). Here they get
fake kernels (shapes only, for torch.compile and FakeTensor) and one torch.autograd.Function
per cell type whose forward and backward call nothing but those ops, except under
create_graph=True, where the backward recomputes the layer in plain PyTorch ops so that its
result can be differentiated again (double backward).

Shapes: input [T, B, I]; h0, c0 [B, H]; w_ih [G*H, I]; w_hh [G*H, H]; b_ih, b_hh [G*H] or None;
output [T, B, H]. With batch_sizes (a PackedSequence's), input is the packed data [rows, I] and
output is packed the same way, [rows, H].
"""
from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import _extension  # noqa: F401  (loading _C registers torch.ops.fusedrnn)

_ops = torch.ops.fusedrnn


# ---- fake kernels: the shapes each op returns ----------------------------------------------
# They also serve the Meta dispatch key, which the dispatcher picks when any argument is on
# `meta`: so each checks, as the real kernels do, that every tensor is on the input's device.
def _check_devices(op, input, **tensors):
    for name, value in tensors.items():
        for tensor in value if isinstance(value, (list, tuple)) else (value,):
            if tensor is not None and tensor.device != input.device:
                raise RuntimeError(f"fusedrnn.{op}: {name} is on {tensor.device} but input is on "
                                   f"{input.device}")


def _sequence(input, width):
    """A per-step buffer laid out like the input ([T, B, width] or packed [rows, width])."""
    return input.new_empty(*input.shape[:-1], width)


def _saved(input, width, training):
    """A per-step buffer the forward keeps for the backward, or empty."""
    return _sequence(input, width) if training else input.new_empty(0)


@torch.library.register_fake("fusedrnn::lstm_forward")
def _lstm_forward_fake(input, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, training,
                       batch_sizes=None, w_hr=None):
    _check_devices("lstm_forward", input, h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih,
                   b_hh=b_hh, w_hr=w_hr)
    H, P = c0.shape[1], h0.shape[1]
    return (_sequence(input, P), torch.empty_like(h0), torch.empty_like(c0),
            _saved(input, 4 * H, training), _saved(input, H, training),
            _saved(input, H, training and w_hr is not None))


@torch.library.register_fake("fusedrnn::lstm_backward")
def _lstm_backward_fake(grad_output, grad_hn, grad_cn, input, h0, c0, w_ih, w_hh, output, gates,
                        cells, has_bias, reverse, batch_sizes=None, w_hr=None, unprojected=None):
    _check_devices("lstm_backward", input, grad_output=grad_output, grad_hn=grad_hn,
                   grad_cn=grad_cn, h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh, output=output,
                   gates=gates, cells=cells, w_hr=w_hr, unprojected=unprojected)
    return (torch.empty_like(input), torch.empty_like(h0), torch.empty_like(c0),
            torch.empty_like(w_ih), torch.empty_like(w_hh),
            w_hh.new_empty(w_hh.shape[0] if has_bias else 0),
            torch.empty_like(w_hr) if w_hr is not None else w_hh.new_empty(0))


@torch.library.register_fake("fusedrnn::gru_forward")
def _gru_forward_fake(input, h0, w_ih, w_hh, b_ih, b_hh, reverse, training, batch_sizes=None):
    _check_devices("gru_forward", input, h0=h0, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh)
    H = w_hh.shape[1]
    return _sequence(input, H), torch.empty_like(h0), _saved(input, 4 * H, training)


@torch.library.register_fake("fusedrnn::gru_backward")
def _gru_backward_fake(grad_output, grad_hn, input, h0, w_ih, w_hh, output, saved, has_bias,
                       reverse, batch_sizes=None):
    _check_devices("gru_backward", input, grad_output=grad_output, grad_hn=grad_hn, h0=h0,
                   w_ih=w_ih, w_hh=w_hh, output=output, saved=saved)
    bias_size = w_hh.shape[0] if has_bias else 0
    return (torch.empty_like(input), torch.empty_like(h0), torch.empty_like(w_ih),
            torch.empty_like(w_hh), w_hh.new_empty(bias_size), w_hh.new_empty(bias_size))


@torch.library.register_fake("fusedrnn::rnn_forward")
def _rnn_forward_fake(input, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse, batch_sizes=None):
    _check_devices("rnn_forward", input, h0=h0, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh)
    return _sequence(input, w_hh.shape[1]), torch.empty_like(h0)


@torch.library.register_fake("fusedrnn::rnn_backward")
def _rnn_backward_fake(grad_output, grad_hn, input, h0, w_ih, w_hh, output, has_bias, relu,
                       reverse, batch_sizes=None):
    _check_devices("rnn_backward", input, grad_output=grad_output, grad_hn=grad_hn, h0=h0,
                   w_ih=w_ih, w_hh=w_hh, output=output)
    return (torch.empty_like(input), torch.empty_like(h0), torch.empty_like(w_ih),
            torch.empty_like(w_hh), w_hh.new_empty(w_hh.shape[0] if has_bias else 0))


# Both directions of a bidirectional layer (csrc/layer.h): lists of two per direction in, the
# one-direction results of both, flat, out.
@torch.library.register_fake("fusedrnn::lstm_forward_pair")
def _lstm_forward_pair_fake(input, h0, c0, w_ih, w_hh, b_ih, b_hh, training, batch_sizes, w_hr):
    return [t for d in range(2) for t in _lstm_forward_fake(
        input, h0[d], c0[d], w_ih[d], w_hh[d], b_ih[d], b_hh[d], d == 1, training, batch_sizes,
        w_hr[d])]


@torch.library.register_fake("fusedrnn::lstm_backward_pair")
def _lstm_backward_pair_fake(grad_output, grad_hn, grad_cn, input, h0, c0, w_ih, w_hh, output,
                             gates, cells, has_bias, batch_sizes, w_hr, unprojected):
    return [t for d in range(2) for t in _lstm_backward_fake(
        grad_output[d], grad_hn[d], grad_cn[d], input, h0[d], c0[d], w_ih[d], w_hh[d], output[d],
        gates[d], cells[d], has_bias, d == 1, batch_sizes, w_hr[d], unprojected[d])]


@torch.library.register_fake("fusedrnn::gru_forward_pair")
def _gru_forward_pair_fake(input, h0, w_ih, w_hh, b_ih, b_hh, training, batch_sizes):
    return [t for d in range(2) for t in _gru_forward_fake(
        input, h0[d], w_ih[d], w_hh[d], b_ih[d], b_hh[d], d == 1, training, batch_sizes)]


@torch.library.register_fake("fusedrnn::gru_backward_pair")
def _gru_backward_pair_fake(grad_output, grad_hn, input, h0, w_ih, w_hh, output, saved, has_bias,
                            batch_sizes):
    return [t for d in range(2) for t in _gru_backward_fake(
        grad_output[d], grad_hn[d], input, h0[d], w_ih[d], w_hh[d], output[d], saved[d], has_bias,
        d == 1, batch_sizes)]


@torch.library.register_fake("fusedrnn::rnn_forward_pair")
def _rnn_forward_pair_fake(input, h0, w_ih, w_hh, b_ih, b_hh, relu, batch_sizes):
    return [t for d in range(2) for t in _rnn_forward_fake(
        input, h0[d], w_ih[d], w_hh[d], b_ih[d], b_hh[d], relu, d == 1, batch_sizes)]


@torch.library.register_fake("fusedrnn::rnn_backward_pair")
def _rnn_backward_pair_fake(grad_output, grad_hn, input, h0, w_ih, w_hh, output, has_bias, relu,
                            batch_sizes):
    return [t for d in range(2) for t in _rnn_backward_fake(
        grad_output[d], grad_hn[d], input, h0[d], w_ih[d], w_hh[d], output[d], has_bias, relu,
        d == 1, batch_sizes)]


# ---- the same layers in plain PyTorch ops (csrc/core/gates.h), for the double backward ------
def _steps(x, reverse):
    return reversed(x.unbind(0)) if reverse else x.unbind(0)


def _stack(outputs, reverse):
    return torch.stack(outputs[::-1] if reverse else outputs)


def _lstm_reference(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse):
    h, c, outputs = h0, c0, []
    for x_gates in _steps(F.linear(input, w_ih, b_ih), reverse):
        i, f, g, o = (x_gates + F.linear(h, w_hh, b_hh)).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        if w_hr is not None:
            h = F.linear(h, w_hr)
        outputs.append(h)
    return _stack(outputs, reverse), h, c


def _gru_reference(input, h0, w_ih, w_hh, b_ih, b_hh, reverse):
    h, outputs = h0, []
    for x_gates in _steps(F.linear(input, w_ih, b_ih), reverse):
        xr, xz, xn = x_gates.chunk(3, 1)
        hr, hz, hn = F.linear(h, w_hh, b_hh).chunk(3, 1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        h = (1 - z) * n + z * h
        outputs.append(h)
    return _stack(outputs, reverse), h


def _rnn_reference(input, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse):
    activation = torch.relu if relu else torch.tanh
    h, outputs = h0, []
    for x_pre in _steps(F.linear(input, w_ih, b_ih), reverse):
        h = activation(x_pre + F.linear(h, w_hh, b_hh))
        outputs.append(h)
    return _stack(outputs, reverse), h


def _differentiable_backward(ctx, reference, inputs, options, grad_outputs, needed=None):
    """The gradients of `inputs` through `reference(*inputs, *options)`, built as a graph so that
    they can be differentiated again. Taken only under create_graph=True: it is much slower than
    the fused backward and keeps every step's activations. `needed`: which inputs need a
    gradient (default: the Function's first len(inputs) inputs)."""
    needed = needed or ctx.needs_input_grad[:len(inputs)]
    wanted = [t for t, need in zip(inputs, needed) if need]
    outputs = reference(*inputs, *options)
    used = [(out, grad) for out, grad in zip(outputs, grad_outputs) if grad is not None]
    if not wanted or not used:
        return (None,) * len(inputs)
    grads = iter(torch.autograd.grad([out for out, _ in used], wanted, [g for _, g in used],
                                     create_graph=True, allow_unused=True))
    return tuple(next(grads) if need else None for need in needed)


def _check_not_packed_for_double_backward(ctx):
    if ctx.batch_sizes is not None:
        raise NotImplementedError(
            "fusedrnn: double backward (create_graph=True) through PackedSequence input is not "
            "supported; pad the batch for gradient penalties")


# ---- autograd ------------------------------------------------------------------------------
# Each backward runs the fused backward op, with grad mode off as the engine leaves it for a
# first-order backward. Grad mode on means create_graph=True: then the gradients must carry a
# graph, which the fused op cannot give, so the layer is recomputed in plain PyTorch ops.
# The backward reads the layer's output (each step's h_{t-1}, and the RNN's activation), so it
# keeps a copy of its own: the caller may edit the output in place before the backward
# (ReLU(inplace=True), zeroing padded steps), as torch.nn allows.
class LSTMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, batch_sizes, w_hr=None):
        output, hn, cn, gates, cells, unprojected = _ops.lstm_forward(
            input, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, True, batch_sizes, w_hr)
        ctx.save_for_backward(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, output.clone(), gates,
                              cells, unprojected)
        ctx.reverse, ctx.batch_sizes = reverse, batch_sizes
        ctx.set_materialize_grads(False)  # an unused output costs nothing in the backward
        return output, hn, cn

    @staticmethod
    def backward(ctx, grad_output, grad_hn, grad_cn):
        input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, output, gates, cells, unprojected = \
            ctx.saved_tensors
        if torch.is_grad_enabled():
            _check_not_packed_for_double_backward(ctx)
            needed = ctx.needs_input_grad
            grads = _differentiable_backward(
                ctx, _lstm_reference, (input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr),
                (ctx.reverse,), (grad_output, grad_hn, grad_cn),
                needed[:7] + (len(needed) > 9 and needed[9],))
            return grads[:7] + (None, None, grads[7])
        has_bias = b_ih is not None
        grad_input, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias, grad_w_hr = \
            _ops.lstm_backward(grad_output, grad_hn, grad_cn, input, h0, c0, w_ih, w_hh, output,
                               gates, cells, has_bias, ctx.reverse, ctx.batch_sizes, w_hr,
                               unprojected)
        grad_bias = grad_bias if has_bias else None
        grad_w_hr = grad_w_hr if w_hr is not None else None
        return (grad_input, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias, grad_bias, None,
                None, grad_w_hr)


class GRUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, h0, w_ih, w_hh, b_ih, b_hh, reverse, batch_sizes):
        output, hn, saved = _ops.gru_forward(input, h0, w_ih, w_hh, b_ih, b_hh, reverse, True,
                                             batch_sizes)
        ctx.save_for_backward(input, h0, w_ih, w_hh, b_ih, b_hh, output.clone(), saved)
        ctx.reverse, ctx.batch_sizes = reverse, batch_sizes
        ctx.set_materialize_grads(False)
        return output, hn

    @staticmethod
    def backward(ctx, grad_output, grad_hn):
        input, h0, w_ih, w_hh, b_ih, b_hh, output, saved = ctx.saved_tensors
        if torch.is_grad_enabled():
            _check_not_packed_for_double_backward(ctx)
            return _differentiable_backward(
                ctx, _gru_reference, (input, h0, w_ih, w_hh, b_ih, b_hh), (ctx.reverse,),
                (grad_output, grad_hn)) + (None, None)
        has_bias = b_ih is not None
        grads = _ops.gru_backward(grad_output, grad_hn, input, h0, w_ih, w_hh, output, saved,
                                  has_bias, ctx.reverse, ctx.batch_sizes)
        grad_input, grad_h0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh = grads
        if not has_bias:
            grad_b_ih = grad_b_hh = None
        return grad_input, grad_h0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, None, None


class RNNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse, batch_sizes):
        output, hn = _ops.rnn_forward(input, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse,
                                      batch_sizes)
        ctx.save_for_backward(input, h0, w_ih, w_hh, b_ih, b_hh, output.clone())
        ctx.relu, ctx.reverse, ctx.batch_sizes = relu, reverse, batch_sizes
        ctx.set_materialize_grads(False)
        return output, hn

    @staticmethod
    def backward(ctx, grad_output, grad_hn):
        input, h0, w_ih, w_hh, b_ih, b_hh, output = ctx.saved_tensors
        if torch.is_grad_enabled():
            _check_not_packed_for_double_backward(ctx)
            return _differentiable_backward(
                ctx, _rnn_reference, (input, h0, w_ih, w_hh, b_ih, b_hh),
                (ctx.relu, ctx.reverse), (grad_output, grad_hn)) + (None, None, None)
        has_bias = b_ih is not None
        grad_input, grad_h0, grad_w_ih, grad_w_hh, grad_bias = _ops.rnn_backward(
            grad_output, grad_hn, input, h0, w_ih, w_hh, output, has_bias, ctx.relu,
            ctx.reverse, ctx.batch_sizes)
        grad_bias = grad_bias if has_bias else None
        return grad_input, grad_h0, grad_w_ih, grad_w_hh, grad_bias, grad_bias, None, None, None


# Both directions of a bidirectional layer: one op forward and one op backward, so that the CPU
# runs the directions side by side (csrc/layer/bidirectional.cpp, both_directions).
# forward(ctx, input, batch_sizes, [options,] *directions): the forward direction's
# per-direction inputs, then the reverse's, k each; returns the forward direction's results,
# then the reverse's.
def _lists(directions, k):
    """[forward's k inputs..., reverse's k...] -> k lists [forward's, reverse's]."""
    return [[directions[i], directions[k + i]] for i in range(k)]


def _save_pair(ctx, batch_sizes, input, directions, kept):
    ctx.save_for_backward(input, *directions, *kept)
    ctx.batch_sizes = batch_sizes
    ctx.set_materialize_grads(False)


def _pair_double_backward(ctx, reference, input, directions, options, grads, k, leading):
    """Both directions' gradients through `reference`, as _differentiable_backward; input's two
    gradients summed. `leading`: the Function's inputs before the directions. -> the gradients
    of all the Function's inputs."""
    _check_not_packed_for_double_backward(ctx)
    needed = ctx.needs_input_grad
    per = [_differentiable_backward(
        ctx, reference, (input, *directions[d * k:(d + 1) * k]), (*options, d == 1), grads[d],
        (needed[0], *needed[leading + d * k:leading + (d + 1) * k])) for d in range(2)]
    return (_sum_defined(per[0][0], per[1][0]), *(None,) * (leading - 1), *per[0][1:],
            *per[1][1:])


def _sum_defined(a, b):
    return b if a is None else a if b is None else a + b


class LSTMPairFunction(torch.autograd.Function):
    """directions: h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr of each."""

    @staticmethod
    def forward(ctx, input, batch_sizes, *directions):
        h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = _lists(directions, 7)
        results = _ops.lstm_forward_pair(input, h0, c0, w_ih, w_hh, b_ih, b_hh, True,
                                         batch_sizes, w_hr)
        kept = [t for d in (0, 6) for t in (results[d].clone(), *results[d + 3:d + 6])]
        _save_pair(ctx, batch_sizes, input, directions, kept)
        return (*results[:3], *results[6:9])

    @staticmethod
    def backward(ctx, *grads):
        input, *saved = ctx.saved_tensors
        directions, kept = saved[:14], saved[14:]
        if torch.is_grad_enabled():
            return _pair_double_backward(ctx, _lstm_reference, input, directions, (),
                                         (grads[:3], grads[3:]), 7, 2)
        h0, c0, w_ih, w_hh, b_ih, _, w_hr = _lists(directions, 7)
        output, gates, cells, unprojected = _lists(kept, 4)
        has_bias = b_ih[0] is not None
        results = _ops.lstm_backward_pair(
            [grads[0], grads[3]], [grads[1], grads[4]], [grads[2], grads[5]], input, h0, c0,
            w_ih, w_hh, output, gates, cells, has_bias, ctx.batch_sizes, w_hr, unprojected)

        def direction(d):  # grads of h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr
            grad_bias = results[7 * d + 5] if has_bias else None
            grad_w_hr = results[7 * d + 6] if w_hr[d] is not None else None
            return (*results[7 * d + 1:7 * d + 5], grad_bias, grad_bias, grad_w_hr)

        return (results[0] + results[7], None, *direction(0), *direction(1))


class GRUPairFunction(torch.autograd.Function):
    """directions: h0, w_ih, w_hh, b_ih, b_hh of each."""

    @staticmethod
    def forward(ctx, input, batch_sizes, *directions):
        h0, w_ih, w_hh, b_ih, b_hh = _lists(directions, 5)
        results = _ops.gru_forward_pair(input, h0, w_ih, w_hh, b_ih, b_hh, True, batch_sizes)
        _save_pair(ctx, batch_sizes, input, directions,
                   [results[0].clone(), results[2], results[3].clone(), results[5]])
        return (*results[:2], *results[3:5])

    @staticmethod
    def backward(ctx, *grads):
        input, *saved = ctx.saved_tensors
        directions = saved[:10]
        if torch.is_grad_enabled():
            return _pair_double_backward(ctx, _gru_reference, input, directions, (),
                                         (grads[:2], grads[2:]), 5, 2)
        h0, w_ih, w_hh, b_ih, _ = _lists(directions, 5)
        output, kept = [saved[10], saved[12]], [saved[11], saved[13]]
        has_bias = b_ih[0] is not None
        results = _ops.gru_backward_pair([grads[0], grads[2]], [grads[1], grads[3]], input, h0,
                                         w_ih, w_hh, output, kept, has_bias, ctx.batch_sizes)

        def direction(d):  # grad_h0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh
            grad_b = results[6 * d + 4:6 * d + 6] if has_bias else (None, None)
            return (*results[6 * d + 1:6 * d + 4], *grad_b)

        return (results[0] + results[6], None, *direction(0), *direction(1))


class RNNPairFunction(torch.autograd.Function):
    """directions: h0, w_ih, w_hh, b_ih, b_hh of each."""

    @staticmethod
    def forward(ctx, input, batch_sizes, relu, *directions):
        h0, w_ih, w_hh, b_ih, b_hh = _lists(directions, 5)
        results = _ops.rnn_forward_pair(input, h0, w_ih, w_hh, b_ih, b_hh, relu, batch_sizes)
        _save_pair(ctx, batch_sizes, input, directions, [results[0].clone(), results[2].clone()])
        ctx.relu = relu
        return tuple(results)

    @staticmethod
    def backward(ctx, *grads):
        input, *saved = ctx.saved_tensors
        directions = saved[:10]
        if torch.is_grad_enabled():
            return _pair_double_backward(ctx, _rnn_reference, input, directions, (ctx.relu,),
                                         (grads[:2], grads[2:]), 5, 3)
        h0, w_ih, w_hh, b_ih, _ = _lists(directions, 5)
        has_bias = b_ih[0] is not None
        results = _ops.rnn_backward_pair([grads[0], grads[2]], [grads[1], grads[3]], input, h0,
                                         w_ih, w_hh, saved[10:12], has_bias, ctx.relu,
                                         ctx.batch_sizes)

        def direction(d):  # grad_h0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh
            grad_bias = results[5 * d + 4] if has_bias else None
            return (*results[5 * d + 1:5 * d + 4], grad_bias, grad_bias)

        return (results[0] + results[5], None, None, *direction(0), *direction(1))


# ---- one layer, one direction --------------------------------------------------------------
def _needs_grad(*tensors):
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def lstm_layer(input, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, reverse=False,
               batch_sizes=None, w_hr=None):
    """-> output [T, B, P], h_n [B, P], c_n [B, H], where P is w_hr's projection size (H without
    one). Saves nothing when no gradient is needed."""
    if _needs_grad(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr):
        return LSTMFunction.apply(input, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, batch_sizes,
                                  w_hr)
    output, hn, cn, _, _, _ = _ops.lstm_forward(input, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse,
                                                False, batch_sizes, w_hr)
    return output, hn, cn


def gru_layer(input, h0, w_ih, w_hh, b_ih=None, b_hh=None, reverse=False, batch_sizes=None):
    """-> output [T, B, H], h_n [B, H]."""
    if _needs_grad(input, h0, w_ih, w_hh, b_ih, b_hh):
        return GRUFunction.apply(input, h0, w_ih, w_hh, b_ih, b_hh, reverse, batch_sizes)
    output, hn, _ = _ops.gru_forward(input, h0, w_ih, w_hh, b_ih, b_hh, reverse, False,
                                     batch_sizes)
    return output, hn


def rnn_layer(input, h0, w_ih, w_hh, b_ih=None, b_hh=None, relu=False, reverse=False,
              batch_sizes=None):
    """Elman RNN, tanh (or relu). -> output [T, B, H], h_n [B, H]."""
    if _needs_grad(input, h0, w_ih, w_hh, b_ih, b_hh):
        return RNNFunction.apply(input, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse, batch_sizes)
    return _ops.rnn_forward(input, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse, batch_sizes)


# ---- one layer, both directions ------------------------------------------------------------
# directions: two tuples of per-direction tensors, the forward direction's and the reverse's,
# in the order of the one-direction functions above. -> two tuples of results, likewise.
def lstm_layer_pair(input, directions, batch_sizes=None):
    """directions: (h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr) each. -> (output, h_n, c_n) each."""
    flat = (*directions[0], *directions[1])
    if _needs_grad(input, *flat):
        results = LSTMPairFunction.apply(input, batch_sizes, *flat)
    else:
        *per_direction, w_hr = _lists(flat, 7)
        results = _ops.lstm_forward_pair(input, *per_direction, False, batch_sizes, w_hr)
        results = (*results[:3], *results[6:9])
    return results[:3], results[3:]


def gru_layer_pair(input, directions, batch_sizes=None):
    """directions: (h0, w_ih, w_hh, b_ih, b_hh) each. -> (output, h_n) each."""
    flat = (*directions[0], *directions[1])
    if _needs_grad(input, *flat):
        results = GRUPairFunction.apply(input, batch_sizes, *flat)
    else:
        results = _ops.gru_forward_pair(input, *_lists(flat, 5), False, batch_sizes)
        results = (*results[:2], *results[3:5])
    return results[:2], results[2:]


def rnn_layer_pair(input, directions, relu=False, batch_sizes=None):
    """directions: (h0, w_ih, w_hh, b_ih, b_hh) each. -> (output, h_n) each."""
    flat = (*directions[0], *directions[1])
    if _needs_grad(input, *flat):
        results = RNNPairFunction.apply(input, batch_sizes, relu, *flat)
    else:
        results = _ops.rnn_forward_pair(input, *_lists(flat, 5), relu, batch_sizes)
    return tuple(results[:2]), tuple(results[2:])


# ---- autocast ------------------------------------------------------------------------------
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
