"""fusedrnn/second_order.py, the double backward's own pass, against autograd differentiating the
plain-PyTorch layer twice: the gradients of s = <v, J^T u> with respect to every input and to u,
for random u and v (any of them absent)."""
import functools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from conftest import CUDA_SKIP, layer_args, rel_err
from fusedrnn import ops, second_order

PASSES = {"lstm": (second_order.lstm, ops._lstm_reference),
          "gru": (second_order.gru, ops._gru_reference),
          "rnn_tanh": (second_order.rnn, ops._rnn_reference),
          "rnn_relu": (second_order.rnn, ops._rnn_reference)}
# T, B, I, H, and for an LSTM the projection size (0: none; the other cells take only those)
SHAPES = [(1, 1, 1, 1, 0), (1, 3, 2, 5, 0), (5, 1, 4, 3, 0), (7, 3, 5, 6, 0), (4, 2, 3, 7, 3),
          (40, 2, 3, 4, 0), (6, 4, 9, 2, 1)]


def _args(cell, T, B, I, H, P, bias, dtype, seed):
    """layer_args, with a projection to P for an LSTM when P > 0 (h0 and W_hh then P wide)."""
    args = layer_args(cell, T, B, I, H, "cpu", dtype, bias=bias, seed=seed)
    options = (cell == "rnn_relu",) if cell.startswith("rnn") else ()
    if cell == "lstm":
        w_hr = None
        if P:
            gen = torch.Generator().manual_seed(seed + 1)
            args[1] = torch.randn(B, P, generator=gen, dtype=torch.float64).to(dtype)
            args[4] = (0.5 * torch.randn(4 * H, P, generator=gen, dtype=torch.float64)).to(dtype)
            w_hr = (0.5 * torch.randn(P, H, generator=gen, dtype=torch.float64)).to(dtype)
        args.append(w_hr)
    return args, options


def _random_like(tensors, present, seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    return [None if t is None or not keep else
            torch.randn(t.shape, generator=gen, dtype=torch.float64).to(dtype)
            for t, keep in zip(tensors, present)]


def _expected(reference, args, options, grad_outputs, grad_grads):
    """The gradients of <grad_grads, d(outputs)/d(args)^T grad_outputs> with respect to args and
    grad_outputs, by autograd through the reference twice (None: no path)."""
    args = [None if a is None else a.detach().requires_grad_() for a in args]
    grad_outputs = [None if u is None else u.detach().requires_grad_() for u in grad_outputs]
    outputs = reference(*args, *options)
    used = [(o, u) for o, u in zip(outputs, grad_outputs) if u is not None]
    wanted = [k for k, v in enumerate(grad_grads) if v is not None]
    first = torch.autograd.grad([o for o, _ in used], [args[k] for k in wanted],
                                [u for _, u in used], create_graph=True, allow_unused=True)
    s = sum((g * grad_grads[k]).sum() for k, g in zip(wanted, first) if g is not None)
    targets = [t for t in (*args, *grad_outputs) if t is not None]
    if not torch.is_tensor(s) or not s.requires_grad:
        grads = iter([None] * len(targets))
    else:
        grads = iter(torch.autograd.grad(s, targets, allow_unused=True))
    return [None if t is None else next(grads) for t in (*args, *grad_outputs)]


def _fused_forward(cell, args, options, batch_sizes=None):
    """The layer's output and the activations its fused forward saves, which the pass reads."""
    if cell == "lstm":
        results = ops.LSTMFunction.forward(*args[:7], *options, batch_sizes, args[7])
        return results[0], results[4:7]
    if cell == "gru":
        results = ops.GRUFunction.forward(*args, *options, batch_sizes)
        return results[0], results[3:4]
    return ops.RNNFunction.forward(*args, *options, batch_sizes)[0], ()


def _strided(t):
    """t's values in a tensor that is not contiguous."""
    wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
    return wide[..., ::2].copy_(t)


def _check(cell, shape, bias, reverse, grad_outputs_present, grad_grads_present, dtype=None,
           tol=1e-10, seed=0, strided=False, device="cpu", lengths=None):
    """With `lengths` (B of them, not increasing), the input is a PackedSequence's rows, and
    the expected gradients come through torch.nn's packed recurrence."""
    T, B, I, H, P = shape
    args, options = _args(cell, T, B, I, H, P, bias, torch.float64, seed)
    options = (*options, reverse)
    pass_, reference = PASSES[cell]
    batch_sizes = None
    if lengths is not None:
        packed = pack_padded_sequence(args[0], torch.tensor(lengths))
        args[0], batch_sizes = packed.data, packed.batch_sizes
        reference = functools.partial(ops._TORCH_NN[reference], batch_sizes=batch_sizes)
    with torch.no_grad():
        outputs = reference(*args, *options)
    grad_outputs = _random_like(outputs, grad_outputs_present, seed + 2, torch.float64)
    grad_grads = _random_like(args, grad_grads_present, seed + 3, torch.float64)
    expected = _expected(reference, args, options, grad_outputs, grad_grads)

    def cast(tensors):
        tensors = [None if t is None else t.to(device, dtype or torch.float64) for t in tensors]
        return [_strided(t) if strided and t is not None else t for t in tensors]

    needs = [t is not None for t in (*args, *grad_outputs)]
    bounds = [tol] * len(expected)
    if dtype is not None:  # also within a multiple of plain autograd's own error in dtype
        theirs = _expected(reference, cast(args), options, cast(grad_outputs), cast(grad_grads))
        bounds = [tol if t is None or e is None else max(tol, 6 * rel_err(t.double().cpu(), e))
                  for t, e in zip(theirs, expected)]
    with torch.no_grad():
        output, saved = _fused_forward(cell, cast(args), options, batch_sizes)
        actual = second_order.double_backward(pass_, cast(args), options, *cast([output]),
                                              cast(saved), cast(grad_outputs), cast(grad_grads),
                                              needs, batch_sizes)
    assert len(actual) == len(expected)
    for k, (a, e) in enumerate(zip(actual, expected)):
        if not needs[k]:
            assert a is None, k
        elif e is None or not e.abs().max() > 0:  # no path: zero or absent
            assert a is None or not a.abs().max() > 0, k
        else:
            assert a is not None and a.shape == e.shape, k
            a = a.double().cpu()
            assert rel_err(a, e) <= bounds[k], (k, rel_err(a, e), bounds[k])


CASES = [(cell, shape) for cell in PASSES for shape in SHAPES if cell == "lstm" or not shape[4]]


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("cell, shape", CASES, ids=[f"{c}-{s}" for c, s in CASES])
def test_matches_autograd_through_the_plain_layer(cell, shape, bias, reverse):
    inputs = 8 if cell == "lstm" else 6
    outputs = 3 if cell == "lstm" else 2
    _check(cell, shape, bias, reverse, [True] * outputs, [True] * inputs)


# A PackedSequence's lengths: sequences ending at different steps, by one row or more at a time,
# at the first step, all at once, and a batch of one.
LENGTHS = [[5, 3, 3, 1], [6, 5, 1, 1, 1], [1, 1], [3, 3, 3], [4]]


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("lengths", LENGTHS, ids=str)
@pytest.mark.parametrize("cell, projection", [(cell, 0) for cell in PASSES] + [("lstm", 2)],
                         ids=lambda c: str(c))
def test_packed_sequences(cell, projection, lengths, reverse):
    """The pass on a PackedSequence's rows: its steps have fewer rows as sequences end, a
    reverse layer's sequences run reversed each along its own length, and the final states'
    gradients enter at each sequence's last step."""
    inputs = 8 if cell == "lstm" else 6
    outputs = 3 if cell == "lstm" else 2
    _check(cell, (max(lengths), len(lengths), 3, 4, projection), True, reverse,
           [True] * outputs, [True] * inputs, lengths=lengths, seed=len(lengths))


@pytest.mark.parametrize("case", range(6))
@pytest.mark.parametrize("cell", list(PASSES))
def test_packed_with_any_gradient_absent(cell, case):
    """As test_any_gradient_and_any_incoming_gradient_absent, on packed rows."""
    gen = torch.Generator().manual_seed(300 + case)
    inputs = 8 if cell == "lstm" else 6
    outputs = 3 if cell == "lstm" else 2
    grad_outputs_present = (torch.rand(outputs, generator=gen) < 0.6).tolist()
    grad_outputs_present[case % outputs] = True
    grad_grads_present = (torch.rand(inputs, generator=gen) < 0.4).tolist()
    grad_grads_present[case % inputs] = True
    _check(cell, (5, 4, 3, 4, 2 if cell == "lstm" and case % 2 else 0), case % 3 > 0,
           case % 2 == 0, grad_outputs_present, grad_grads_present, seed=case,
           lengths=[5, 3, 3, 1])


@pytest.mark.parametrize("case", range(12))
@pytest.mark.parametrize("cell", list(PASSES))
def test_any_gradient_and_any_incoming_gradient_absent(cell, case):
    """As a caller differentiates some first-order gradients of some outputs: u and v each
    present for a random subset (gradient penalties on the input alone, on one weight...)."""
    gen = torch.Generator().manual_seed(100 + case)
    inputs = 8 if cell == "lstm" else 6
    outputs = 3 if cell == "lstm" else 2
    shape = (5, 2, 3, 4, 2 if cell == "lstm" and case % 2 else 0)
    grad_outputs_present = (torch.rand(outputs, generator=gen) < 0.6).tolist()
    grad_outputs_present[case % outputs] = True
    grad_grads_present = (torch.rand(inputs, generator=gen) < 0.4).tolist()
    grad_grads_present[case % inputs] = True
    _check(cell, shape, True, case % 3 == 0, grad_outputs_present, grad_grads_present,
           seed=case)


@pytest.mark.parametrize("case", range(6))
@pytest.mark.parametrize("cell", list(PASSES))
def test_tangents_of_the_grad_outputs_carry_their_first_order_backward(cell, case):
    """backward(u, u_dot): the pass's gradients of the inputs plus J^T u_dot, the layer's
    first-order backward of u_dot (the output gradients from elsewhere, which the layer's own
    node then leaves to the pass), for a random subset of u_dot present."""
    gen = torch.Generator().manual_seed(200 + case)
    T, B, I, H, P = (6, 3, 4, 5, 2 if cell == "lstm" and case % 2 else 0)
    args, options = _args(cell, T, B, I, H, P, True, torch.float64, case)
    options = (*options, case % 3 == 0)
    pass_, reference = PASSES[cell]
    with torch.no_grad():
        outputs = reference(*args, *options)
    count = len(outputs)
    present = (torch.rand(count, generator=gen) < 0.6).tolist()
    present[case % count] = True
    grad_outputs = _random_like(outputs, [True] * count, case + 2, torch.float64)
    grad_outputs_dot = _random_like(outputs, present, case + 5, torch.float64)
    grad_grads = _random_like(args, [True] * len(args), case + 3, torch.float64)
    expected = _expected(reference, args, options, grad_outputs, grad_grads)
    leaves = [None if a is None else a.detach().requires_grad_() for a in args]
    used = [(o, w) for o, w in zip(reference(*leaves, *options), grad_outputs_dot)
            if w is not None]
    targets = [a for a in leaves if a is not None]
    first = iter(torch.autograd.grad([o for o, _ in used], targets, [w for _, w in used],
                                     allow_unused=True))
    first = [None if a is None else next(first) for a in leaves]

    with torch.no_grad():
        output, saved = _fused_forward(cell, args, options)
        _, backward = pass_(args, options, output, saved, grad_grads, [False] * count)
        actual = backward(grad_outputs, grad_outputs_dot, [a is not None for a in args])
    for k, (a, e, f) in enumerate(zip(actual, expected, first)):
        if args[k] is None:
            assert a is None, k
            continue
        e = sum(t for t in (e, f) if t is not None)
        assert rel_err(a, e) <= 1e-10, (k, rel_err(a, e))


@pytest.mark.parametrize("cell", list(PASSES))
def test_gradients_of_the_grad_outputs_alone(cell):
    """Where no input needs a gradient, the pass returns those of u alone, the same as in the
    whole pass (its backward loop skipped)."""
    T, B, I, H = 5, 2, 3, 4
    args, options = _args(cell, T, B, I, H, 0, True, torch.float64, 7)
    options = (*options, False)
    pass_, reference = PASSES[cell]
    with torch.no_grad():
        outputs = reference(*args, *options)
        output, saved = _fused_forward(cell, args, options)
    grad_outputs = _random_like(outputs, [True] * len(outputs), 8, torch.float64)
    grad_grads = _random_like(args, [True] * len(args), 9, torch.float64)
    whole = second_order.double_backward(pass_, args, options, output, saved, grad_outputs,
                                         grad_grads, [a is not None for a in args]
                                         + [True] * len(outputs))
    alone = second_order.double_backward(pass_, args, options, output, saved, grad_outputs,
                                         grad_grads, [False] * len(args) + [True] * len(outputs))
    assert all(a is None for a in alone[:len(args)])
    for a, w in zip(alone[len(args):], whole[len(args):]):
        assert torch.equal(a, w)


@pytest.mark.skipif(CUDA_SKIP is not None, reason=str(CUDA_SKIP))
@pytest.mark.parametrize("dtype", [None, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell, shape", [(c, s) for c, s in CASES if s[0] > 1],
                         ids=[f"{c}-{s}" for c, s in CASES if s[0] > 1])
def test_on_cuda(cell, shape, dtype):
    """The pass on CUDA tensors: each step's units a kernel (csrc/cuda/second_order.cu)."""
    inputs = 8 if cell == "lstm" else 6
    outputs = 3 if cell == "lstm" else 2
    _check(cell, shape, True, cell.endswith("relu"), [True] * outputs, [True] * inputs,
           dtype=dtype, tol=1e-10 if dtype is None else 1e-5, device="cuda")


@pytest.mark.skipif(CUDA_SKIP is not None, reason=str(CUDA_SKIP))
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("cell", list(PASSES))
def test_packed_on_cuda(cell, reverse):
    """The pass on a PackedSequence's rows on CUDA (batch_sizes stays on the CPU)."""
    inputs = 8 if cell == "lstm" else 6
    outputs = 3 if cell == "lstm" else 2
    _check(cell, (6, 5, 3, 4, 2 if cell == "lstm" else 0), True, reverse, [True] * outputs,
           [True] * inputs, lengths=[6, 5, 1, 1, 1], device="cuda")


@pytest.mark.parametrize("cell", list(PASSES))
def test_float32_against_float64(cell):
    inputs = 8 if cell == "lstm" else 6
    outputs = 3 if cell == "lstm" else 2
    _check(cell, (20, 4, 16, 24, 0), True, False, [True] * outputs, [True] * inputs,
           dtype=torch.float32, tol=1e-5)


@pytest.mark.parametrize("cell", list(PASSES))
def test_strided_arguments(cell):
    """Inputs, output gradients and incoming gradients that are not contiguous."""
    inputs = 8 if cell == "lstm" else 6
    outputs = 3 if cell == "lstm" else 2
    _check(cell, (6, 3, 4, 5, 2 if cell == "lstm" else 0), True, True, [True] * outputs,
           [True] * inputs, strided=True)


def test_loops_reject_mismatched_tensors():
    """The C++ loops read through pointers: a tensor of the wrong sizes, dtype or layout raises
    rather than being read out of bounds."""
    from fusedrnn._extension import _C
    T, B, H = 3, 2, 4
    args = dict(u_y=torch.randn(T, B, H), u_hn=None, u_y_dot=None, u_hn_dot=None,
                saved=torch.rand(T, B, 4 * H), h_prev=torch.randn(T, B, H), rz_dot=torch.randn(T, B, 2 * H),
                n_dot=torch.randn(T, B, H), h_gates_dot=torch.randn(T, B, 3 * H),
                h_prev_dot=torch.randn(T, B, H), w_hh=torch.randn(3 * H, H), w_hh_dot=None,
                grads=torch.empty(2, T, B, 4 * H), dh_first=torch.empty(2, B, H),
                batch_sizes=None)
    _C.gru_backward_tangent_steps(*args.values())
    for name, bad in [("saved", torch.rand(T, B, 3 * H)), ("u_hn", torch.randn(B + 1, H)),
                      ("n_dot", torch.randn(T, B, H, dtype=torch.float64)),
                      ("h_prev_dot", torch.randn(T, B, 2 * H)[..., ::2]),
                      ("grads", torch.empty(2, T, B, 3 * H)),
                      ("batch_sizes", torch.tensor([2, 2, 2]))]:  # packed, but [T, B, W] given
        with pytest.raises(RuntimeError, match="double backward's loops"):
            _C.gru_backward_tangent_steps(*{**args, name: bad}.values())

    # Packed: [rows, W] of batch_sizes' rows, which must add up and never grow.
    packed = {name: t.reshape(T * B, -1) if t is not None and t.dim() == 3 and
              name != "dh_first" else t for name, t in args.items()}
    packed.update(grads=torch.empty(2, T * B, 4 * H), batch_sizes=torch.tensor([2, 2, 2]))
    _C.gru_backward_tangent_steps(*packed.values())
    for bad in [torch.tensor([2, 2, 1]), torch.tensor([1, 2, 2, 1])]:
        with pytest.raises(RuntimeError, match="double backward's loops"):
            _C.gru_backward_tangent_steps(*{**packed, "batch_sizes": bad}.values())
