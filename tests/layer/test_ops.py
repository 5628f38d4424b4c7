"""The dispatcher ops one layer at a time: gradcheck, opcheck, and what training keeps."""
import pytest
import torch

import fusedrnn
from fusedrnn import ops
from conftest import DEVICES, GATES, layer_args as _layer_args, apply_layer as _apply

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
    """Packed rows (batch sizes 3, 3, 2, 1): input [9, I]; twice differentiated, the
    second-order pass on the packed rows (on the CPU)."""
    batch_sizes = torch.tensor([3, 3, 2, 1])
    args = _layer_args(cell, 9, 3, 5, 4, device)
    args[0] = args[0][:, 0]
    args = [a.requires_grad_() for a in args]
    assert torch.autograd.gradcheck(lambda *a: _apply(cell, a, reverse, batch_sizes), args)
    assert torch.autograd.gradgradcheck(lambda *a: _apply(cell, a, reverse, batch_sizes), args)


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
    assert torch.autograd.gradgradcheck(run, args)


def _op_samples(device, dtype=torch.float32):
    """(op, args) for every op, with forward results feeding the backward ops."""
    lib = torch.ops.fusedrnn
    samples = []
    for training in (True, False):
        for cell in ("lstm", "gru"):
            args = _layer_args(cell, 3, 2, 4, 5, device, dtype)
            samples.append((getattr(lib, f"{cell}_forward").default, (*args, True, training)))
        args = _layer_args("rnn_tanh", 3, 2, 4, 5, device, dtype)
        samples.append((lib.rnn_forward.default, (*args, training, True)))

    gen = torch.Generator().manual_seed(1)

    def grad_like(t):
        return torch.randn(t.shape, generator=gen).to(device, t.dtype)

    x, h0, c0, w_ih, w_hh, b_ih, b_hh = _layer_args("lstm", 3, 2, 4, 5, device, dtype)
    out, hn, cn, gates, cells, _ = lib.lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, False, True)
    samples.append((lib.lstm_backward.default, (grad_like(out), grad_like(hn), None, x, h0, c0,
                                                w_ih, w_hh, out, gates, cells, True, False)))
    x, h0, w_ih, w_hh, b_ih, b_hh = _layer_args("gru", 3, 2, 4, 5, device, dtype)
    out, hn, saved = lib.gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, True, True)
    samples.append((lib.gru_backward.default, (None, grad_like(hn), x, h0, w_ih, w_hh, out, saved,
                                               True, True)))
    x, h0, w_ih, w_hh, _, _ = _layer_args("rnn_relu", 3, 2, 4, 5, device, dtype)
    out, hn = lib.rnn_forward(x, h0, w_ih, w_hh, None, None, True, False)
    samples.append((lib.rnn_backward.default, (grad_like(out), grad_like(hn), x, h0, w_ih, w_hh,
                                               out, False, True, False)))
    # Packed: 5 rows in steps of 2, 2, 1.
    batch_sizes = torch.tensor([2, 2, 1])
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = _layer_args("lstm", 5, 2, 4, 5, device, dtype)
    x = x[:, 0]
    samples.append((lib.lstm_forward.default, (x, h0, c0, w_ih, w_hh, b_ih, b_hh, True, True,
                                               batch_sizes)))
    out, hn, cn, gates, cells, _ = lib.lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, True, True,
                                                 batch_sizes)
    samples.append((lib.lstm_backward.default, (grad_like(out), None, grad_like(cn), x, h0, c0,
                                                w_ih, w_hh, out, gates, cells, True, True,
                                                batch_sizes)))
    # Both directions at once: the one-direction samples above, twice, as lists of two.
    for cell in ("lstm", "gru", "rnn"):
        name = "rnn_tanh" if cell == "rnn" else cell
        f, r = (_layer_args(name, 3, 2, 4, 5, device, dtype, seed=s) for s in (2, 3))
        per_direction = [[a, b] for a, b in zip(f[1:], r[1:])]
        options = (False,) if cell == "rnn" else (True,)
        extra = ([None, None],) if cell == "lstm" else ()
        forward = getattr(lib, f"{cell}_forward_pair")
        samples.append((forward.default, (f[0], *per_direction, *options, None, *extra)))
        results = forward(f[0], *per_direction, *options, None, *extra)
        n = len(results) // 2
        both = [[results[i], results[n + i]] for i in range(n)]  # [forward's, reverse's] each
        grads = [[grad_like(t) for t in both[0]], [grad_like(t) for t in both[1]]]
        weights = per_direction[:-2]  # h0 (c0), w_ih, w_hh
        if cell == "lstm":  # saved: output, gates, cells, unprojected
            args = (*grads, [None, None], f[0], *weights, both[0], both[3], both[4], True, None,
                    [None, None], both[5])
        elif cell == "gru":  # saved: output, r/z/n/hn
            args = (*grads, f[0], *weights, both[0], both[2], True, None)
        else:
            args = (*grads, f[0], *weights, both[0], True, False, None)
        samples.append((getattr(lib, f"{cell}_backward_pair").default, args))
    return samples


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_every_op(device, dtype):
    """Schema, fake kernels (FakeTensor and AOT dispatch with dynamic shapes) for every op, in
    the half types too, whose workspace the CPU keeps in float32.

    The ops are not differentiable themselves (the autograd.Functions are), so the samples
    require no grad."""
    samples = _op_samples(device, dtype)
    assert {op.name() for op, _ in samples} == {
        f"fusedrnn::{cell}_{kind}{pair}" for cell in ("lstm", "gru", "rnn")
        for kind in ("forward", "backward") for pair in ("", "_pair")}
    for op, args in samples:
        torch.library.opcheck(op, args)


# The backward ops' results that are the gradients of the input and the states, per direction.
_STATE_GRADS = {"lstm": 3, "gru": 2, "rnn": 2}
_RESULTS = {"lstm": 7, "gru": 6, "rnn": 5}


@pytest.mark.parametrize("device", DEVICES)
def test_backward_ops_without_weight_grads(device):
    """weight_grads=False: the same gradients of the input and states, bit for bit, and empty
    ones for the weights and biases; schema and fake kernels agree (opcheck)."""
    for op, args in _op_samples(device):
        name = op.name().split("::")[1]
        if "backward" not in name:
            continue
        torch.library.opcheck(op, args, {"weight_grads": False})
        cell, per_direction = name.split("_")[0], _RESULTS[name.split("_")[0]]
        full, partial = op(*args), op(*args, weight_grads=False)
        assert len(full) == len(partial)
        for i, (a, b) in enumerate(zip(full, partial)):
            if i % per_direction < _STATE_GRADS[cell]:
                assert torch.equal(a, b), (name, i)
            else:
                assert b.numel() == 0, (name, i)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_ops_without_h0_grad(device):
    """h0_grad=False (every backward op; the pair ops' for both directions): an empty gradient
    of h0, and every other result the same, bit for bit, with and without weight_grads; schema
    and fake kernels agree (opcheck)."""
    for op, args in _op_samples(device):
        name = op.name().split("::")[1]
        if "backward" not in name:
            continue
        per_direction = _RESULTS[name.split("_")[0]]
        for weight_grads in (True, False):
            options = {"weight_grads": weight_grads, "h0_grad": False}
            torch.library.opcheck(op, args, options)
            full, partial = op(*args, weight_grads=weight_grads), op(*args, **options)
            assert len(full) == len(partial)
            for i, (a, b) in enumerate(zip(full, partial)):
                if i % per_direction == 1:  # a direction's gradient of h0
                    assert a.numel() > 0 and b.numel() == 0, (name, i)
                else:
                    assert torch.equal(a, b), (name, i)


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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("device", DEVICES)
def test_half_types_keep_their_workspace_in_their_arithmetic_type(device, dtype):
    """What a half-precision forward keeps for its backward: float32 on the CPU, which computes
    such layers in float32 (LayerCall::workspace_like), so that the backward reads back what
    the forward computed; the layer's own dtype on CUDA. The outputs and states are the
    caller's dtype either way. A backward given the kept tensors rounded to the layer's dtype
    refuses them, naming the dtype it needs."""
    lib = torch.ops.fusedrnn
    kept = torch.float32 if device == "cpu" else dtype
    args = _layer_args("lstm", 5, 2, 3, 4, device, dtype)
    output, hn, cn, gates, cells, _ = lib.lstm_forward(*args, False, True)
    assert (output.dtype, hn.dtype, cn.dtype) == (dtype,) * 3
    assert (gates.dtype, cells.dtype) == (kept, kept)
    x, h0, c0, w_ih, w_hh, _, _ = args
    backward_args = [torch.ones_like(output), None, None, x, h0, c0, w_ih, w_hh, output, gates,
                     cells, True, False]
    assert all(g.dtype == dtype for g in lib.lstm_backward(*backward_args) if g.numel())
    if device == "cpu":
        backward_args[9] = gates.to(dtype)
        name = {torch.bfloat16: "BFloat16", torch.float16: "Half"}[dtype]
        with pytest.raises(RuntimeError, match=f"gates has dtype {name} but a {name} layer keeps"):
            lib.lstm_backward(*backward_args)
    args = _layer_args("gru", 5, 2, 3, 4, device, dtype)
    output, hn, saved = lib.gru_forward(*args, False, True)
    assert (output.dtype, hn.dtype, saved.dtype) == (dtype, dtype, kept)


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


def _pair_layer(cell, x, directions, batch_sizes=None):
    if cell == "lstm":  # the pair takes w_hr last
        return ops.lstm_layer_pair(x, [(*d, None) for d in directions], batch_sizes)
    if cell == "gru":
        return ops.gru_layer_pair(x, directions, batch_sizes)
    return ops.rnn_layer_pair(x, directions, cell == "rnn_relu", batch_sizes)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("cell", list(GATES))
def test_gradcheck_pair(cell, packed, device):
    """Both directions at once (the CPU runs them side by side), padded and packed."""
    batch_sizes = torch.tensor([3, 3, 2, 1]) if packed else None
    forward, reverse = (_layer_args(cell, 9 if packed else 4, 3, 5, 4, device, seed=s)
                        for s in (4, 5))
    x = forward[0][:, 0] if packed else forward[0]
    k = len(forward) - 1
    args = [t.requires_grad_() for t in (x, *forward[1:], *reverse[1:])]

    def run(x, *directions):
        both = _pair_layer(cell, x, (directions[:k], directions[k:]), batch_sizes)
        return (*both[0], *both[1])
    # batched gradients and forward AD as PyTorch's module tests check them (not packed: forward
    # AD runs through the plain-PyTorch layer, which takes padded batches only)
    assert torch.autograd.gradcheck(run, args, check_batched_grad=True,
                                    check_forward_ad=not packed)


@pytest.mark.parametrize("cell", list(GATES))
def test_pair_is_both_directions(cell):
    """Forward and backward of the pair ops against the one-direction ops on the same numbers,
    run one after the other (float64: the GEMMs then differ only in their thread split)."""
    forward, reverse = (_layer_args(cell, 7, 3, 5, 6, "cpu", seed=s) for s in (6, 7))
    x = forward[0].requires_grad_()
    directions = [[t.requires_grad_() for t in d[1:]] for d in (forward, reverse)]
    single = [_apply(cell, [x, *d], r) for d, r in zip(directions, (False, True))]
    pair = _pair_layer(cell, x, directions)
    gen = torch.Generator().manual_seed(8)
    probes = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for d in single for t in d]
    inputs = [x, *directions[0], *directions[1]]

    def results(outputs):
        flat = [t for d in outputs for t in d]
        loss = sum((t * p).sum() for t, p in zip(flat, probes))
        return flat + list(torch.autograd.grad(loss, inputs))
    for ours, expected in zip(results(pair), results(single)):
        torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)


def test_pair_ops_take_lists_of_two():
    x, h0, w_ih, w_hh, b_ih, b_hh = _layer_args("gru", 3, 2, 4, 5, "cpu", torch.float32)
    expected = r"list of two tensors \[forward, reverse\], got a list of 1"
    with pytest.raises(RuntimeError, match=expected):
        torch.ops.fusedrnn.gru_forward_pair(x, [h0], [w_ih], [w_hh], [b_ih], [b_hh], False, None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("cell", list(GATES))
def test_input_of_no_features(cell, dtype):
    """The ops take an input of zero features (the modules refuse input_size=0, as torch.nn's
    do): its projection is the biases alone, so the layer is the same layer on one feature that
    is zero everywhere, outputs and every gradient (those of the zero feature aside). 80 rows:
    the bfloat16 projection and weight gradients run on their packed and bfloat16 paths."""
    one = _layer_args(cell, 10, 8, 1, 12, "cpu", dtype, seed=4)
    one[0] = torch.zeros_like(one[0])
    none = [a[..., :0] if i in (0, 2 if cell != "lstm" else 3) else a for i, a in enumerate(one)]
    results = []
    for args in (one, none):
        args = [a.detach().requires_grad_() if a is not None else None for a in args]
        outputs = _apply(cell, args, False)
        weights = torch.linspace(-1, 1, outputs[0].numel()).view_as(outputs[0]).to(dtype)
        loss = sum((o.float() * (weights if o.shape == weights.shape else 1)).sum()
                   for o in outputs)
        grads = torch.autograd.grad(loss, [a for a in args[1:] if a is not None])
        results.append((outputs, grads))
    (out_one, grads_one), (out_none, grads_none) = results
    for a, b in zip(out_one, out_none):
        assert torch.equal(a, b)
    w_ih_at = 2 if cell == "lstm" else 1  # its index among args[1:]
    for i, (a, b) in enumerate(zip(grads_one, grads_none)):
        assert torch.equal(a, b) if i != w_ih_at else b.shape == (a.shape[0], 0)
