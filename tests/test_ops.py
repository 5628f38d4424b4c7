"""The dispatcher ops one layer at a time: gradcheck, opcheck, and what training keeps."""
import pytest
import torch

import fusedrnn
from fusedrnn import ops
from conftest import DEVICES

GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


def _layer_args(cell, T, B, I, H, device, dtype=torch.float64, bias=True, seed=0):
    """Random arguments of one layer function, scaled so the gates are not saturated."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(device, dtype)

    G = GATES[cell]
    args = [rand(T, B, I), rand(B, H)]
    if cell == "lstm":
        args.append(rand(B, H))
    args += [rand(G * H, I, scale=0.5), rand(G * H, H, scale=0.5)]
    args += [rand(G * H, scale=0.3), rand(G * H, scale=0.3)] if bias else [None, None]
    return args


def _apply(cell, args, reverse, batch_sizes=None):
    if cell == "lstm":
        return ops.LSTMFunction.apply(*args, reverse, batch_sizes)
    if cell == "gru":
        return ops.GRUFunction.apply(*args, reverse, batch_sizes)
    return ops.RNNFunction.apply(*args, cell == "rnn_relu", reverse, batch_sizes)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell", list(GATES))
def test_gradcheck(cell, reverse, bias, device):
    args = _layer_args(cell, 4, 3, 5, 6, device, bias=bias)
    args = [a.requires_grad_() if a is not None else None for a in args]
    assert torch.autograd.gradcheck(lambda *a: _apply(cell, a, reverse), args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell", list(GATES))
def test_gradcheck_packed(cell, reverse, device):
    """Packed rows (batch sizes 3, 3, 2, 1): input [9, I]."""
    batch_sizes = torch.tensor([3, 3, 2, 1])
    args = _layer_args(cell, 9, 3, 5, 4, device)
    args[0] = args[0][:, 0]
    args = [a.requires_grad_() for a in args]
    assert torch.autograd.gradcheck(lambda *a: _apply(cell, a, reverse, batch_sizes), args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_gradcheck_projected_lstm(packed, reverse, device):
    """h_t = (o_t * tanh(c_t)) W_hr^T with P = 3 < H = 4."""
    gen = torch.Generator().manual_seed(2)
    T, B, I, H, P = 4, 3, 5, 4, 3
    shapes = [(T * B, I) if packed else (T, B, I), (B, P), (B, H), (4 * H, I), (4 * H, P),
              (4 * H,), (4 * H,), (P, H)]
    args = [(0.5 * torch.randn(s, generator=gen, dtype=torch.float64)).to(device).requires_grad_()
            for s in shapes]
    batch_sizes = torch.tensor([3, 3, 2, 2, 1, 1]) if packed else None
    if packed:
        args[0] = args[0][:12].detach().requires_grad_()

    def run(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr):
        return ops.LSTMFunction.apply(x, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, batch_sizes,
                                      w_hr)
    assert torch.autograd.gradcheck(run, args)
    if not packed:  # double backward takes padded input only
        assert torch.autograd.gradgradcheck(run, args)


def _op_samples(device):
    """(op, args) for every op, with forward results feeding the backward ops."""
    lib = torch.ops.fusedrnn
    samples = []
    for training in (True, False):
        for cell in ("lstm", "gru"):
            args = _layer_args(cell, 3, 2, 4, 5, device, torch.float32)
            samples.append((getattr(lib, f"{cell}_forward").default, (*args, True, training)))
        args = _layer_args("rnn_tanh", 3, 2, 4, 5, device, torch.float32)
        samples.append((lib.rnn_forward.default, (*args, training, True)))

    gen = torch.Generator().manual_seed(1)

    def grad_like(t):
        return torch.randn(t.shape, generator=gen).to(device)

    x, h0, c0, w_ih, w_hh, b_ih, b_hh = _layer_args("lstm", 3, 2, 4, 5, device, torch.float32)
    out, hn, cn, gates, cells, _ = lib.lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, False, True)
    samples.append((lib.lstm_backward.default, (grad_like(out), grad_like(hn), None, x, h0, c0,
                                                w_ih, w_hh, out, gates, cells, True, False)))
    x, h0, w_ih, w_hh, b_ih, b_hh = _layer_args("gru", 3, 2, 4, 5, device, torch.float32)
    out, hn, saved = lib.gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, True, True)
    samples.append((lib.gru_backward.default, (None, grad_like(hn), x, h0, w_ih, w_hh, out, saved,
                                               True, True)))
    x, h0, w_ih, w_hh, _, _ = _layer_args("rnn_relu", 3, 2, 4, 5, device, torch.float32)
    out, hn = lib.rnn_forward(x, h0, w_ih, w_hh, None, None, True, False)
    samples.append((lib.rnn_backward.default, (grad_like(out), grad_like(hn), x, h0, w_ih, w_hh,
                                               out, False, True, False)))
    # Packed: 5 rows in steps of 2, 2, 1.
    batch_sizes = torch.tensor([2, 2, 1])
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = _layer_args("lstm", 5, 2, 4, 5, device, torch.float32)
    x = x[:, 0]
    samples.append((lib.lstm_forward.default, (x, h0, c0, w_ih, w_hh, b_ih, b_hh, True, True,
                                               batch_sizes)))
    out, hn, cn, gates, cells, _ = lib.lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, True, True,
                                                 batch_sizes)
    samples.append((lib.lstm_backward.default, (grad_like(out), None, grad_like(cn), x, h0, c0,
                                                w_ih, w_hh, out, gates, cells, True, True,
                                                batch_sizes)))
    return samples


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_every_op(device):
    """Schema, fake kernels (FakeTensor and AOT dispatch with dynamic shapes) for every op.

    The ops are not differentiable themselves (the autograd.Functions are), so the samples
    require no grad."""
    samples = _op_samples(device)
    assert {op.name() for op, _ in samples} == {
        f"fusedrnn::{cell}_{kind}" for cell in ("lstm", "gru", "rnn")
        for kind in ("forward", "backward")}
    for op, args in samples:
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("device", DEVICES)
def test_inference_keeps_nothing_per_step(device):
    lib = torch.ops.fusedrnn
    args = _layer_args("lstm", 5, 2, 3, 4, device, torch.float32)
    _, _, _, gates, cells, _ = lib.lstm_forward(*args, False, False)
    assert gates.numel() == 0 and cells.numel() == 0
    _, _, _, gates, cells, _ = lib.lstm_forward(*args, False, True)
    assert gates.shape == (5, 2, 16) and cells.shape == (5, 2, 4)
    args = _layer_args("gru", 5, 2, 3, 4, device, torch.float32)
    assert lib.gru_forward(*args, False, False)[2].numel() == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", list(GATES))
def test_layer_functions_match_autograd_and_inference_paths(cell, device):
    """The inference path (no autograd Function) returns what the training path returns."""
    args = _layer_args(cell, 6, 3, 4, 5, device)
    layer = {"lstm": fusedrnn.lstm_layer, "gru": fusedrnn.gru_layer}.get(cell)
    kwargs = {} if layer else {"relu": cell == "rnn_relu"}
    layer = layer or fusedrnn.rnn_layer
    with torch.no_grad():
        inference = layer(*args, **kwargs, reverse=True)
    training = layer(*[a.requires_grad_() if a is not None else None for a in args], **kwargs,
                     reverse=True)
    assert training[0].grad_fn is not None
    for a, b in zip(inference, training):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)
