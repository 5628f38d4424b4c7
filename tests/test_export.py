"""torch.export of fused modules and cells, the route to AOTInductor and ExecuTorch: the exported
program keeps the fused ops, runs at other lengths and batch sizes, trains, and survives
torch.export.save/load, with torch.nn's results (AOTInductor packages:
layer/test_aoti_shims.py)."""
import pytest
import torch
from torch.export import Dim

from conftest import assert_close_by_name, make_pair, random_state, run_and_grad
from test_cells import CellAsLayer, cell_inputs, make_cell_pair

MODELS = [
    ("lstm", {"num_layers": 2, "bidirectional": True}),
    ("lstm", {"proj_size": 3, "batch_first": True}),
    ("gru", {"num_layers": 2}),
    ("rnn_relu", {"bidirectional": True}),
]
MODEL_IDS = ["lstm-2-layer-bi", "lstm-proj-batch-first", "gru-2-layer", "rnn_relu-bi"]
FUSED_OPS = {"lstm": "lstm_forward", "gru": "gru_forward", "rnn_relu": "rnn_forward"}


def _inputs(cell, model, T, B, seed, with_state):
    gen = torch.Generator().manual_seed(seed)
    shape = (B, T, model.input_size) if model.batch_first else (T, B, model.input_size)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    if not with_state:
        return x, None
    hx = random_state(cell, model, B, "cpu", torch.float64, gen)
    if cell == "lstm" and model.proj_size > 0:  # h has the projected width
        h, c = hx
        hx = h[..., :model.proj_size].contiguous(), c
    return x, hx


def _dynamic_shapes(model, with_state):
    time, batch = Dim("time", min=1, max=512), Dim("batch", min=1, max=512)
    x = {0: batch, 1: time} if model.batch_first else {0: time, 1: batch}
    if not with_state:
        return (x, None)
    state = {1: batch}
    return (x, (state, state) if model.mode == "LSTM" else state)


def _fused_calls(program):
    """-> (op name, its arguments by name) for each fusedrnn op the program calls."""
    return [(node.target.name().split("::")[-1],
             dict(zip((a.name for a in node.target._schema.arguments), node.args)))
            for node in program.graph.nodes
            if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload)
            and node.target.namespace == "fusedrnn"]


def _fused_ops(program):
    return {name for name, _ in _fused_calls(program)}


@pytest.mark.parametrize("with_state", [False, True], ids=["no-hx", "hx"])
@pytest.mark.parametrize("cell, options", MODELS, ids=MODEL_IDS)
def test_exported_module_matches_torch_nn(cell, options, with_state):
    """Exported at T=5 B=3 with the time and batch dims dynamic; run at other sizes (T=1 and
    B=1 among them), its outputs, final states and every gradient match torch.nn's."""
    ref, fused = make_pair(cell, 4, 6, dtype=torch.float64, **options)
    program = torch.export.export(fused, _inputs(cell, fused, 5, 3, 0, with_state),
                                  dynamic_shapes=_dynamic_shapes(fused, with_state))
    pair = "_pair" if options.get("bidirectional") else ""  # both directions in one op
    assert _fused_ops(program) == {FUSED_OPS[cell] + pair}
    # Run without a gradient, the program saves no activations; with one, the op's autograd does.
    assert not any(arguments.get("training") for _, arguments in _fused_calls(program))
    exported = program.module()
    for seed, (T, B) in enumerate([(5, 3), (9, 2), (1, 1), (3, 7)]):
        x, hx = _inputs(cell, fused, T, B, seed + 1, with_state)
        assert_close_by_name(run_and_grad(exported, x, hx), run_and_grad(ref, x, hx), 1e-10)


@pytest.mark.parametrize("strict", [False, True], ids=["non-strict", "strict"])
def test_strict_export_and_decomposed_program(strict):
    """Dynamo's export (strict) and the program lowered to core ATen (run_decompositions), which
    keeps the fused ops: the same results and gradients as torch.nn's."""
    ref, fused = make_pair("lstm", 4, 6, dtype=torch.float64, bidirectional=True)
    x, hx = _inputs("lstm", fused, 5, 3, 0, True)
    program = torch.export.export(fused, (x, hx), strict=strict).run_decompositions()
    assert _fused_ops(program) == {"lstm_forward_pair"}
    assert_close_by_name(run_and_grad(program.module(), x, hx), run_and_grad(ref, x, hx), 1e-10)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_exported_cell_matches_torch_nn(cell):
    ref, fused = make_cell_pair(cell, 4, 6, dtype=torch.float64)
    x, hx = cell_inputs(cell, (3,), 4, 6, "cpu", torch.float64)
    for state in (hx, None):
        batch = Dim("batch", min=1, max=512)
        shapes = None if state is None else (({0: batch}, {0: batch}) if cell == "lstm"
                                             else {0: batch})
        program = torch.export.export(CellAsLayer(fused), (x, state),
                                      dynamic_shapes=({0: batch}, shapes))
        exported = program.module()
        for B in (3, 1, 5):
            x_b, hx_b = cell_inputs(cell, (B,), 4, 6, "cpu", torch.float64, seed=B)
            hx_b = hx_b if state is not None else None
            assert_close_by_name(run_and_grad(exported, x_b, hx_b),
                                 run_and_grad(CellAsLayer(ref), x_b, hx_b), 1e-10)


def test_saved_program_loads_and_runs(tmp_path):
    _, fused = make_pair("lstm", 4, 6, num_layers=2)
    x = torch.randn(5, 3, 4)
    program = torch.export.export(fused, (x,))
    torch.export.save(program, tmp_path / "lstm.pt2")
    loaded = torch.export.load(tmp_path / "lstm.pt2")
    assert "lstm_forward" in _fused_ops(loaded)
    for a, b in zip(torch.utils._pytree.tree_leaves(loaded.module()(x)),
                    torch.utils._pytree.tree_leaves(fused(x))):
        assert torch.equal(a, b)


def _op_arguments(cell, reverse, bias, gen):
    """Small float64 tensors for the cell's forward op, each requiring grad (the LSTM's with a
    projection, w_hr, last), and the op as a function of them. -> (tensors, op)."""
    T, B, I, H, P = 4, 3, 2, 5, 3
    gates = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}[cell]

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()

    width = P if cell == "lstm" else H
    states = [rand(B, width)] + ([rand(B, H)] if cell == "lstm" else [])
    tensors = [rand(T, B, I), *states, rand(gates * H, I), rand(gates * H, width)]
    count = len(tensors)  # then the biases, if any, and w_hr
    tensors += [rand(gates * H), rand(gates * H)] if bias else []
    tensors += [rand(P, H)] if cell == "lstm" else []

    def op(*t):
        biases = t[count:count + 2] if bias else (None, None)
        if cell == "lstm":
            return torch.ops.fusedrnn.lstm_forward(*t[:count], *biases, reverse, False, None,
                                                   t[-1])[:3]
        if cell == "gru":
            return torch.ops.fusedrnn.gru_forward(*t[:count], *biases, reverse, False, None)[:2]
        return torch.ops.fusedrnn.rnn_forward(*t[:count], *biases, cell == "rnn_relu", reverse,
                                              None)
    return tensors, op


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_forward_op_gradcheck(cell, reverse, bias):
    """The forward ops called as ops, as an exported program calls them: gradcheck in float64
    of every input's gradient through the op's own autograd (op_autograd.cpp)."""
    tensors, op = _op_arguments(cell, reverse, bias, torch.Generator().manual_seed(4))
    assert torch.autograd.gradcheck(op, tuple(tensors))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_forward_op_gives_only_the_gradients_asked_for(cell):
    """The input's gradient alone, then a weight's alone (the backward op then skips the
    others' products): each equal to that of the gradient of all."""
    tensors, op = _op_arguments(cell, False, True, torch.Generator().manual_seed(5))
    probe = [torch.randn_like(t, requires_grad=False) for t in op(*tensors)]

    def loss():
        return sum((out * p).sum() for out, p in zip(op(*tensors), probe))

    every = torch.autograd.grad(loss(), tensors)
    for i in (0, 1, len(tensors) - 1):
        (alone,) = torch.autograd.grad(loss(), tensors[i])
        torch.testing.assert_close(alone, every[i], rtol=1e-12, atol=0)


def test_exported_program_refuses_double_backward():
    _, fused = make_pair("gru", 4, 6, dtype=torch.float64)
    program = torch.export.export(fused, (torch.randn(5, 3, 4, dtype=torch.float64),))
    x = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    output, _ = program.module()(x)
    with pytest.raises(RuntimeError, match="cannot be differentiated again"):
        torch.autograd.grad(output.sum(), x, create_graph=True)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_relu"])
def test_pair_op_gradcheck(cell):
    """Both directions' op called as an op: with a gradient, it runs as the two one-direction
    ops (op_autograd.cpp); gradcheck in float64, and without a gradient the same results from
    the pair's own kernel."""
    gen = torch.Generator().manual_seed(6)
    per_direction = [_op_arguments(cell, False, True, gen)[0] for _ in range(2)]
    count = len(per_direction[0])

    def op(*flat):
        lists = [[flat[i], flat[count + i]] for i in range(count)]
        x = flat[0]
        if cell == "lstm":  # x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr
            return torch.ops.fusedrnn.lstm_forward_pair(x, *lists[1:7], False, None, lists[7])
        if cell == "gru":
            return torch.ops.fusedrnn.gru_forward_pair(x, *lists[1:], False, None)
        return torch.ops.fusedrnn.rnn_forward_pair(x, *lists[1:], True, None)

    per_direction[1][0] = per_direction[0][0]  # one input for both directions
    flat = [*per_direction[0], *per_direction[1]]
    kept = {"lstm": (0, 1, 2), "gru": (0, 1), "rnn_relu": (0, 1)}[cell]  # output, states
    width = len(op(*flat)) // 2

    def differentiable(*tensors):
        results = op(*tensors[:count], tensors[0], *tensors[count:])
        return tuple(results[d * width + k] for d in range(2) for k in kept)

    inputs = (*per_direction[0], *per_direction[1][1:])
    assert torch.autograd.gradcheck(differentiable, inputs)
    decomposed = differentiable(*inputs)
    with torch.no_grad():
        for a, b in zip(differentiable(*inputs), decomposed):
            torch.testing.assert_close(a, b.detach(), rtol=1e-12, atol=1e-15)
