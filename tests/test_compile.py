"""torch.compile(fullgraph=True) of fused modules: the same outputs and gradients as eager."""
import pytest
import torch
from torch.nn.utils.rnn import PackedSequence

from conftest import DEVICES, assert_close_by_name, graph_names, make_pair, random_state, \
    run_and_grad
from test_cells import CELL_CLASSES, CellAsLayer, cell_inputs, make_cell_pair
from test_double_backward import _OpNames

MODELS = [("lstm", {"num_layers": 2, "bidirectional": True}), ("gru", {})]


def _model_and_inputs(cell, options, device):
    _, fused = make_pair(cell, 5, 6, device, **options)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(7, 3, 5, generator=gen).to(device)
    return fused, x, random_state(cell, fused, 3, device, torch.float32, gen)


def _compiled_run_and_grad(model, x, hx, backend):
    torch._dynamo.reset()  # a fresh cache for each case: no recompile limits, no stale guards
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    results = run_and_grad(compiled, x, hx)
    return {name.replace("_orig_mod.", ""): value for name, value in results.items()}


# inductor on the CPU compiles C++ with g++: ~12 s for both models with a cold cache on a
# 2-core machine, ~4 s warm.
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("cell, options", MODELS, ids=[cell for cell, _ in MODELS])
def test_compiled_matches_eager(cell, options, backend, device):
    model, x, hx = _model_and_inputs(cell, options, device)
    assert_close_by_name(_compiled_run_and_grad(model, x, hx, backend),
                         run_and_grad(model, x, hx), 1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", list(CELL_CLASSES))
def test_compiled_cells_match_eager(cell, device):
    _, fused = make_cell_pair(cell, 5, 6, device)
    x, hx = cell_inputs(cell, (3,), 5, 6, device, torch.float32)
    model = CellAsLayer(fused)
    for state in (hx, None):
        assert_close_by_name(_compiled_run_and_grad(model, x, state, "aot_eager"),
                             run_and_grad(model, x, state), 1e-5)


@pytest.mark.parametrize("cell, options", MODELS, ids=[cell for cell, _ in MODELS])
def test_compiled_backward_is_the_fused_op(cell, options):
    """Tracing the backward runs it as a first-order one (grad mode off), so the compiled graph
    calls the fused backward op (both directions' at once for a bidirectional layer on the CPU),
    not the differentiable recomputation."""
    model, x, hx = _model_and_inputs(cell, options, "cpu")
    torch._dynamo.reset()
    output, _ = torch.compile(model, backend="aot_eager", fullgraph=True)(x.requires_grad_(), hx)
    with _OpNames() as ops:
        output.sum().backward()
    pair = "_pair" if options.get("bidirectional") else ""
    assert f"fusedrnn::{cell}_backward{pair}" in ops.names
    assert not {name.split(".")[0] for name in ops.names} & {"aten::sigmoid", "aten::tanh"}


@pytest.mark.parametrize("given_state", [False, True], ids=["hx-none", "hx-given"])
@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_compiled_packed_input(cell, enforce_sorted, given_state):
    """PackedSequence input under fullgraph=True: the batch is batch_sizes[0], a value Dynamo
    cannot guard on, so the state's size is checked as the graph runs."""
    lengths = [7, 4, 2] if enforce_sorted else [4, 7, 2]
    _, fused = make_pair(cell, 5, 6, "cpu", num_layers=2, bidirectional=True)
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(7, 3, 5, generator=gen)
    hx = random_state(cell, fused, 3, "cpu", torch.float32, gen) if given_state else None
    torch._dynamo.reset()
    compiled = torch.compile(fused, backend="aot_eager", fullgraph=True)
    ours = run_and_grad(compiled, x, hx, lengths=lengths, enforce_sorted=enforce_sorted)
    assert_close_by_name({name.replace("_orig_mod.", ""): value for name, value in ours.items()},
                         run_and_grad(fused, x, hx, lengths=lengths,
                                      enforce_sorted=enforce_sorted), 1e-5)


def _stepped_loss(model, xs, cell_steps):
    """A training loop's loss: a cell stepped over xs [T, B, I], or a module given one step at a
    time, its states carried; the squared hidden states summed over the steps."""
    hx, loss = None, 0
    for x in xs:
        if cell_steps:
            hx = model(x, hx)
            h = hx[0] if isinstance(hx, tuple) else hx
        else:
            h, hx = model(x.unsqueeze(0), hx)
        loss = loss + h.pow(2).sum()
    return loss


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("what", ["cell", "module-stepped", "module", "module-bidirectional",
                                  "module-packed", "module-bidirectional-packed"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_compiled_autograd_matches_torch_nn(cell, what, device):
    """Compiled autograd (the backward graph traced and compiled, the forward eager) over a
    training loop: through the CPU's C++ nodes (a cell stepped, a module given one step at a
    time, a whole sequence in one direction or both, padded or packed) and through the
    autograd.Function (CUDA), torch.nn's gradients. Packed input comes as a PackedSequence over
    a leaf's rows: pack_padded_sequence's own backward fails under compiled autograd, torch.nn's
    too."""
    # Two steps: compiled autograd takes seconds a node to trace on 2 cores (torch.nn's too).
    options = {"cell": {"classes": CELL_CLASSES}, "module": {"num_layers": 2},
               "module-bidirectional": {"bidirectional": True},
               "module-bidirectional-packed": {"bidirectional": True}}.get(what, {})
    node = "LayerPairNode" if what.startswith("module-bidirectional") else "RecurrenceNode"
    ref, fused = make_pair(cell, 5, 6, device, torch.float64, **options)
    gen = torch.Generator().manual_seed(9)
    xs = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64).to(device)
    if what.endswith("packed"):  # lengths 2, 1, 2: the rows of a PackedSequence, 5 of them
        xs, batch_sizes = xs.view(6, 5)[:5], torch.tensor([3, 2])
    grads = []
    for model, compiled in ((ref, False), (fused, True)):
        model.zero_grad()
        x = xs.clone().requires_grad_()
        if what.endswith("packed"):
            loss = model(PackedSequence(x, batch_sizes))[0].data.pow(2).sum()
        elif what.startswith("module") and what != "module-stepped":
            loss = model(x)[0].pow(2).sum()
        else:
            loss = _stepped_loss(model, x, what == "cell")
        torch._dynamo.reset()
        if compiled:
            assert (device == "cpu") == any(node in n for n in graph_names(loss))
            with torch._dynamo.compiled_autograd._enable(torch.compile(backend="eager")):
                loss.backward()
        else:
            loss.backward()
        grads.append({"x": x.grad, **{n: p.grad for n, p in model.named_parameters()}})
    assert all(g is not None for g in grads[1].values())
    assert_close_by_name(grads[1], grads[0], 1e-10)
