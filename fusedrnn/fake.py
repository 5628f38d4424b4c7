"""The fake kernels of fusedrnn's ops: the shapes (and devices) each op returns, for
torch.compile, FakeTensor and the Meta dispatch key. Shapes as in ops.py."""
import torch

from . import _extension  # noqa: F401  (loading _C registers torch.ops.fusedrnn)
from . import aoti


# They also serve the Meta dispatch key, which the dispatcher picks when any argument is on
# `meta`: so each checks, as the real kernels do, that every tensor is on the input's device.
def _check_devices(op, input, **tensors):
    aoti.offer_to_inductor(input.device)  # runs before Inductor writes code for the op
    for name, value in tensors.items():
        for tensor in value if isinstance(value, (list, tuple)) else (value,):
            if tensor is not None and tensor.device != input.device:
                raise RuntimeError(f"fusedrnn.{op}: {name} is on {tensor.device} but input is on "
                                   f"{input.device}")


def _sequence(input, width):
    """A per-step buffer laid out like the input ([T, B, width] or packed [rows, width])."""
    return input.new_empty(*input.shape[:-1], width)


def _saved(input, width, training):
    """A per-step buffer the forward keeps for the backward, or empty: in the dtype the layer
    computes in, float32 for float16 and bfloat16 on the CPU (LayerCall::workspace_like)."""
    dtype = torch.float32 if input.device.type == "cpu" and input.dtype in (
        torch.float16, torch.bfloat16) else input.dtype
    shape = (*input.shape[:-1], width) if training else (0,)
    return input.new_empty(shape, dtype=dtype)


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
                        cells, has_bias, reverse, batch_sizes=None, w_hr=None, unprojected=None,
                        weight_grads=True, h0_grad=True):
    _check_devices("lstm_backward", input, grad_output=grad_output, grad_hn=grad_hn,
                   grad_cn=grad_cn, h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh, output=output,
                   gates=gates, cells=cells, w_hr=w_hr, unprojected=unprojected)
    return (torch.empty_like(input), _h0_grad(h0_grad, h0), torch.empty_like(c0),
            *_weight_grads(weight_grads, w_ih, w_hh, w_hh.shape[0] if has_bias else 0, w_hr))


def _h0_grad(wanted, h0):
    """The backward ops' gradient of h0, or an empty one where not wanted."""
    return torch.empty_like(h0) if wanted else h0.new_empty(0)


def _weight_grads(wanted, w_ih, w_hh, bias_size, *more):
    """The backward ops' weight and bias gradients, or empty ones where not wanted: w_ih's,
    w_hh's, one bias gradient of bias_size, then one per tensor of `more` (empty for a None)."""
    def like(w):
        return torch.empty_like(w) if wanted and w is not None else w_hh.new_empty(0)
    return (like(w_ih), like(w_hh), w_hh.new_empty(bias_size if wanted else 0),
            *(like(w) for w in more))


@torch.library.register_fake("fusedrnn::gru_forward")
def _gru_forward_fake(input, h0, w_ih, w_hh, b_ih, b_hh, reverse, training, batch_sizes=None):
    _check_devices("gru_forward", input, h0=h0, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh)
    H = w_hh.shape[1]
    return _sequence(input, H), torch.empty_like(h0), _saved(input, 4 * H, training)


@torch.library.register_fake("fusedrnn::gru_backward")
def _gru_backward_fake(grad_output, grad_hn, input, h0, w_ih, w_hh, output, saved, has_bias,
                       reverse, batch_sizes=None, weight_grads=True, h0_grad=True):
    _check_devices("gru_backward", input, grad_output=grad_output, grad_hn=grad_hn, h0=h0,
                   w_ih=w_ih, w_hh=w_hh, output=output, saved=saved)
    bias_size = w_hh.shape[0] if has_bias and weight_grads else 0
    return (torch.empty_like(input), _h0_grad(h0_grad, h0),
            *_weight_grads(weight_grads, w_ih, w_hh, bias_size), w_hh.new_empty(bias_size))


@torch.library.register_fake("fusedrnn::rnn_forward")
def _rnn_forward_fake(input, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse, batch_sizes=None):
    _check_devices("rnn_forward", input, h0=h0, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh)
    return _sequence(input, w_hh.shape[1]), torch.empty_like(h0)


@torch.library.register_fake("fusedrnn::rnn_backward")
def _rnn_backward_fake(grad_output, grad_hn, input, h0, w_ih, w_hh, output, has_bias, relu,
                       reverse, batch_sizes=None, weight_grads=True, h0_grad=True):
    _check_devices("rnn_backward", input, grad_output=grad_output, grad_hn=grad_hn, h0=h0,
                   w_ih=w_ih, w_hh=w_hh, output=output)
    return (torch.empty_like(input), _h0_grad(h0_grad, h0),
            *_weight_grads(weight_grads, w_ih, w_hh, w_hh.shape[0] if has_bias else 0))


# Both directions of a bidirectional layer (csrc/layer.h): lists of two per direction in, the
# one-direction results of both, flat, out.
@torch.library.register_fake("fusedrnn::lstm_forward_pair")
def _lstm_forward_pair_fake(input, h0, c0, w_ih, w_hh, b_ih, b_hh, training, batch_sizes, w_hr):
    return [t for d in range(2) for t in _lstm_forward_fake(
        input, h0[d], c0[d], w_ih[d], w_hh[d], b_ih[d], b_hh[d], d == 1, training, batch_sizes,
        w_hr[d])]


@torch.library.register_fake("fusedrnn::lstm_backward_pair")
def _lstm_backward_pair_fake(grad_output, grad_hn, grad_cn, input, h0, c0, w_ih, w_hh, output,
                             gates, cells, has_bias, batch_sizes, w_hr, unprojected,
                             weight_grads=True, h0_grad=True):
    return [t for d in range(2) for t in _lstm_backward_fake(
        grad_output[d], grad_hn[d], grad_cn[d], input, h0[d], c0[d], w_ih[d], w_hh[d], output[d],
        gates[d], cells[d], has_bias, d == 1, batch_sizes, w_hr[d], unprojected[d],
        weight_grads, h0_grad)]


@torch.library.register_fake("fusedrnn::gru_forward_pair")
def _gru_forward_pair_fake(input, h0, w_ih, w_hh, b_ih, b_hh, training, batch_sizes):
    return [t for d in range(2) for t in _gru_forward_fake(
        input, h0[d], w_ih[d], w_hh[d], b_ih[d], b_hh[d], d == 1, training, batch_sizes)]


@torch.library.register_fake("fusedrnn::gru_backward_pair")
def _gru_backward_pair_fake(grad_output, grad_hn, input, h0, w_ih, w_hh, output, saved, has_bias,
                            batch_sizes, weight_grads=True, h0_grad=True):
    return [t for d in range(2) for t in _gru_backward_fake(
        grad_output[d], grad_hn[d], input, h0[d], w_ih[d], w_hh[d], output[d], saved[d], has_bias,
        d == 1, batch_sizes, weight_grads, h0_grad)]


@torch.library.register_fake("fusedrnn::rnn_forward_pair")
def _rnn_forward_pair_fake(input, h0, w_ih, w_hh, b_ih, b_hh, relu, batch_sizes):
    return [t for d in range(2) for t in _rnn_forward_fake(
        input, h0[d], w_ih[d], w_hh[d], b_ih[d], b_hh[d], relu, d == 1, batch_sizes)]


@torch.library.register_fake("fusedrnn::rnn_backward_pair")
def _rnn_backward_pair_fake(grad_output, grad_hn, input, h0, w_ih, w_hh, output, has_bias, relu,
                            batch_sizes, weight_grads=True, h0_grad=True):
    return [t for d in range(2) for t in _rnn_backward_fake(
        grad_output[d], grad_hn[d], input, h0[d], w_ih[d], w_hh[d], output[d], has_bias, relu,
        d == 1, batch_sizes, weight_grads, h0_grad)]
