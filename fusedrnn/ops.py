"""The dispatcher ops of fusedrnn._C as differentiable layer functions.

Each op runs one layer in one direction over a whole sequence (csrc/layer.h). Here they get
fake kernels (shapes only, for torch.compile and FakeTensor) and one torch.autograd.Function
per cell type whose forward and backward call nothing but those ops.

Shapes: input [T, B, I]; h0, c0 [B, H]; w_ih [G*H, I]; w_hh [G*H, H]; b_ih, b_hh [G*H] or None;
output [T, B, H].
"""
import torch
from torch.autograd.function import once_differentiable

from . import _extension  # noqa: F401  (loading _C registers torch.ops.fusedrnn)

_ops = torch.ops.fusedrnn


# ---- fake kernels: the shapes each op returns ----------------------------------------------
def _saved(input, width, training):
    """A per-step buffer the forward keeps for the backward: [T, B, width], or empty."""
    if not training:
        return input.new_empty(0)
    return input.new_empty(input.shape[0], input.shape[1], width)


@torch.library.register_fake("fusedrnn::lstm_forward")
def _lstm_forward_fake(input, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, training):
    T, B, H = input.shape[0], input.shape[1], w_hh.shape[1]
    return (input.new_empty(T, B, H), h0.new_empty(B, H), c0.new_empty(B, H),
            _saved(input, 4 * H, training), _saved(input, H, training))


@torch.library.register_fake("fusedrnn::lstm_backward")
def _lstm_backward_fake(grad_output, grad_hn, grad_cn, input, h0, c0, w_ih, w_hh, output, gates,
                        cells, has_bias, reverse):
    return (torch.empty_like(input), torch.empty_like(h0), torch.empty_like(c0),
            torch.empty_like(w_ih), torch.empty_like(w_hh),
            w_hh.new_empty(w_hh.shape[0] if has_bias else 0))


@torch.library.register_fake("fusedrnn::gru_forward")
def _gru_forward_fake(input, h0, w_ih, w_hh, b_ih, b_hh, reverse, training):
    T, B, H = input.shape[0], input.shape[1], w_hh.shape[1]
    return input.new_empty(T, B, H), h0.new_empty(B, H), _saved(input, 4 * H, training)


@torch.library.register_fake("fusedrnn::gru_backward")
def _gru_backward_fake(grad_output, grad_hn, input, h0, w_ih, w_hh, output, saved, has_bias,
                       reverse):
    bias_size = w_hh.shape[0] if has_bias else 0
    return (torch.empty_like(input), torch.empty_like(h0), torch.empty_like(w_ih),
            torch.empty_like(w_hh), w_hh.new_empty(bias_size), w_hh.new_empty(bias_size))


@torch.library.register_fake("fusedrnn::rnn_forward")
def _rnn_forward_fake(input, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse):
    T, B, H = input.shape[0], input.shape[1], w_hh.shape[1]
    return input.new_empty(T, B, H), h0.new_empty(B, H)


@torch.library.register_fake("fusedrnn::rnn_backward")
def _rnn_backward_fake(grad_output, grad_hn, input, h0, w_ih, w_hh, output, has_bias, relu,
                       reverse):
    return (torch.empty_like(input), torch.empty_like(h0), torch.empty_like(w_ih),
            torch.empty_like(w_hh), w_hh.new_empty(w_hh.shape[0] if has_bias else 0))


# ---- autograd ------------------------------------------------------------------------------
class LSTMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse):
        output, hn, cn, gates, cells = _ops.lstm_forward(
            input, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, True)
        ctx.save_for_backward(input, h0, c0, w_ih, w_hh, output, gates, cells)
        ctx.has_bias, ctx.reverse = b_ih is not None, reverse
        ctx.set_materialize_grads(False)  # an unused output costs nothing in the backward
        return output, hn, cn

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output, grad_hn, grad_cn):
        input, h0, c0, w_ih, w_hh, output, gates, cells = ctx.saved_tensors
        grad_input, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias = _ops.lstm_backward(
            grad_output, grad_hn, grad_cn, input, h0, c0, w_ih, w_hh, output, gates, cells,
            ctx.has_bias, ctx.reverse)
        grad_bias = grad_bias if ctx.has_bias else None
        return grad_input, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias, grad_bias, None


class GRUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, h0, w_ih, w_hh, b_ih, b_hh, reverse):
        output, hn, saved = _ops.gru_forward(input, h0, w_ih, w_hh, b_ih, b_hh, reverse, True)
        ctx.save_for_backward(input, h0, w_ih, w_hh, output, saved)
        ctx.has_bias, ctx.reverse = b_ih is not None, reverse
        ctx.set_materialize_grads(False)
        return output, hn

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output, grad_hn):
        input, h0, w_ih, w_hh, output, saved = ctx.saved_tensors
        grads = _ops.gru_backward(grad_output, grad_hn, input, h0, w_ih, w_hh, output, saved,
                                  ctx.has_bias, ctx.reverse)
        grad_input, grad_h0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh = grads
        if not ctx.has_bias:
            grad_b_ih = grad_b_hh = None
        return grad_input, grad_h0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, None


class RNNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse):
        output, hn = _ops.rnn_forward(input, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse)
        ctx.save_for_backward(input, h0, w_ih, w_hh, output)
        ctx.has_bias, ctx.relu, ctx.reverse = b_ih is not None, relu, reverse
        ctx.set_materialize_grads(False)
        return output, hn

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output, grad_hn):
        input, h0, w_ih, w_hh, output = ctx.saved_tensors
        grad_input, grad_h0, grad_w_ih, grad_w_hh, grad_bias = _ops.rnn_backward(
            grad_output, grad_hn, input, h0, w_ih, w_hh, output, ctx.has_bias, ctx.relu,
            ctx.reverse)
        grad_bias = grad_bias if ctx.has_bias else None
        return grad_input, grad_h0, grad_w_ih, grad_w_hh, grad_bias, grad_bias, None, None


# ---- one layer, one direction --------------------------------------------------------------
def _needs_grad(*tensors):
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def lstm_layer(input, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, reverse=False):
    """-> output [T, B, H], h_n [B, H], c_n [B, H]. Saves nothing when no gradient is needed."""
    if _needs_grad(input, h0, c0, w_ih, w_hh, b_ih, b_hh):
        return LSTMFunction.apply(input, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse)
    output, hn, cn, _, _ = _ops.lstm_forward(input, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse,
                                             False)
    return output, hn, cn


def gru_layer(input, h0, w_ih, w_hh, b_ih=None, b_hh=None, reverse=False):
    """-> output [T, B, H], h_n [B, H]."""
    if _needs_grad(input, h0, w_ih, w_hh, b_ih, b_hh):
        return GRUFunction.apply(input, h0, w_ih, w_hh, b_ih, b_hh, reverse)
    output, hn, _ = _ops.gru_forward(input, h0, w_ih, w_hh, b_ih, b_hh, reverse, False)
    return output, hn


def rnn_layer(input, h0, w_ih, w_hh, b_ih=None, b_hh=None, relu=False, reverse=False):
    """Elman RNN, tanh (or relu). -> output [T, B, H], h_n [B, H]."""
    if _needs_grad(input, h0, w_ih, w_hh, b_ih, b_hh):
        return RNNFunction.apply(input, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse)
    return _ops.rnn_forward(input, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse)
