"""torch.compile(fullgraph=True) of fused modules: the same outputs and gradients as eager."""
import pytest
import torch

from conftest import DEVICES, assert_close_by_name, make_pair, random_state, run_and_grad
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
