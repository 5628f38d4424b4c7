"""The dispatcher ops of fusedrnn._C as differentiable layer functions.

Each op runs one layer in one direction over a whole sequence (csrc/layer/layer.h). Here they
get one torch.autograd.Function per cell type (their fake kernels, for torch.compile and
FakeTensor, are in fake.py) whose forward and backward call nothing but those ops, except under
create_graph=True, where the backward recomputes the layer in plain PyTorch ops so that its
result can be differentiated again (double backward).

Shapes: input [T, B, I]; h0, c0 [B, H]; w_ih [G*H, I]; w_hh [G*H, H]; b_ih, b_hh [G*H] or None;
output [T, B, H]. With batch_sizes (a PackedSequence's), input is the packed data [rows, I] and
output is packed the same way, [rows, H].
"""
import torch
import torch.nn.functional as F

from . import _extension  # noqa: F401  (loading _C registers torch.ops.fusedrnn)
from . import fake  # noqa: F401  (the ops' fake kernels)

_ops = torch.ops.fusedrnn


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
