"""Double backward: under create_graph=True the autograd Functions return the fused op's
gradients, and differentiating those runs second_order's pass (or, recording a third derivative,
the layer recomputed in plain PyTorch ops); otherwise their backward is the fused op alone."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import (CELLS, CUDA_SKIP, DEVICES, Without, apply_layer as _apply,
                      assert_close_by_name, assert_half_rule, half_rule_draws,
                      layer_args as _layer_args, make_pair, random_state, refuse, rel_err)
from fusedrnn import ops
from test_cells import CELL_CLASSES, CellAsLayer, cell_inputs, make_cell_pair

ALL_CELLS = list(CELLS)


def _requiring_grad(args):
    return [a.requires_grad_() if a is not None else None for a in args]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reverse, bias", [(False, True), (True, False)],
                         ids=["forward-bias", "reverse-nobias"])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_gradgradcheck(cell, reverse, bias, device):
    args = _requiring_grad(_layer_args(cell, 2, 2, 2, 3, device, bias=bias))
    assert torch.autograd.gradgradcheck(lambda *a: _apply(cell, a, reverse), args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_differentiable_backward_matches_fused_backward(cell, bias, reverse, device):
    """The first-order gradients of the two backward paths agree."""
    args = _requiring_grad(_layer_args(cell, 5, 3, 4, 6, device, bias=bias))
    inputs = [a for a in args if a is not None]
    outputs = _apply(cell, args, reverse)
    gen = torch.Generator().manual_seed(3)
    probes = [torch.randn(o.shape, generator=gen, dtype=o.dtype).to(device) for o in outputs]
    fused = torch.autograd.grad(outputs, inputs, probes, retain_graph=True)
    differentiable = torch.autograd.grad(outputs, inputs, probes, create_graph=True)
    assert all(g.grad_fn is not None for g in differentiable)
    names = [str(i) for i in range(len(inputs))]
    assert_close_by_name(dict(zip(names, differentiable)), dict(zip(names, fused)), 1e-10)


class _OpNames(TorchDispatchMode):
    """Records the name of every op dispatched while active (not the ops they call inside)."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.name())
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_first_order_backward_is_the_fused_op_alone(cell):
    args = _requiring_grad(_layer_args(cell, 4, 2, 3, 5, "cpu"))
    outputs = _apply(cell, args, False)
    loss = sum(o.sum() for o in outputs)
    with _OpNames() as ops:
        loss.backward()
    assert f"fusedrnn::{cell.split('_')[0]}_backward" in ops.names
    cell_math = {"aten::sigmoid", "aten::tanh", "aten::relu", "aten::mm", "aten::addmm"}
    assert not {name.split(".")[0] for name in ops.names} & cell_math, ops.names


def _penalty_gradients(model, x, hx):
    """A gradient penalty: the gradients of ||d loss / d input||^2 with respect to the input and
    every parameter (by name), for loss a random projection of the output."""
    x = x.detach().requires_grad_()
    output = model(x, hx)[0]
    probe = torch.randn(output.shape, generator=torch.Generator().manual_seed(5),
                        dtype=torch.float64).to(output.device, output.dtype)
    (grad_x,) = torch.autograd.grad((output * probe).sum(), x, create_graph=True)
    names, parameters = zip(*model.named_parameters())
    grads = torch.autograd.grad(grad_x.pow(2).sum(), (x, *parameters))
    return dict(zip(("input", *names), grads))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_gradient_penalty_matches_torch_nn(cell, device):
    ref, fused = make_pair(cell, 3, 4, device, torch.float64, num_layers=2, bidirectional=True)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 2, 3, generator=gen, dtype=torch.float64).to(device)
    hx = random_state(cell, ref, 2, device, torch.float64, gen)
    # cuDNN's RNNs cannot differentiate twice (torch.nn says so and asks for cuDNN off): the
    # reference runs torch.nn's own path; fusedrnn needs no such switch.
    with torch.backends.cudnn.flags(enabled=False):
        expected = _penalty_gradients(ref, x, hx)
    assert_close_by_name(_penalty_gradients(fused, x, hx), expected, 1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", list(CELL_CLASSES))
def test_cell_gradient_penalty_matches_torch_nn(cell, device):
    ref, fused = make_cell_pair(cell, 3, 4, device, torch.float64)
    x, hx = cell_inputs(cell, (2,), 3, 4, device, torch.float64)
    assert_close_by_name(_penalty_gradients(CellAsLayer(fused), x, hx),
                         _penalty_gradients(CellAsLayer(ref), x, hx), 1e-10)


def _gradients_through_output(model, x, hx, order):
    """Gradients `order` deep (2: of a penalty, 3: of a penalty's gradient's norm) with respect to
    the input and every parameter, where each first-order gradient's seed depends on the
    model's own output (so the double backward must return partial derivatives: the engine adds
    the paths through the output), and every gradient, not only the input's, is penalized."""
    x = x.detach().requires_grad_()
    names, parameters = zip(*model.named_parameters())
    outputs = model(x, hx)
    output, state = outputs[0], outputs[1]
    state = state if isinstance(state, tuple) else (state,)
    loss = (output.pow(2) * output.detach().cos()).sum() + sum(s.pow(3).sum() for s in state)
    wrt = (x, *parameters)
    for _ in range(order - 1):
        grads = torch.autograd.grad(loss, wrt, create_graph=True)
        loss = output.sum() + sum((g * g.detach().sin()).pow(2).sum() for g in grads)
    return dict(zip(("input", *names), torch.autograd.grad(loss, wrt)))


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_higher_order_gradients_through_the_output_match_torch_nn(cell, bidirectional, order):
    ref, fused = make_pair(cell, 3, 4, "cpu", torch.float64, bidirectional=bidirectional)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(4, 2, 3, generator=gen, dtype=torch.float64)
    hx = random_state(cell, ref, 2, "cpu", torch.float64, gen)
    assert_close_by_name(_gradients_through_output(fused, x, hx, order),
                         _gradients_through_output(ref, x, hx, order), 1e-10)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_gradients_differentiated_again_and_again(cell):
    """The double backward keeps its recomputation for the next differentiation of the same
    gradients (retain_graph=True), and extends it to gradients not differentiated before."""
    ref, fused = make_pair(cell, 3, 5, "cpu", torch.float64)
    x = torch.randn(6, 3, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)

    def differentiate(model):
        xx = x.detach().requires_grad_()
        w_hh = model.weight_hh_l0
        grad_x, grad_w_hh = torch.autograd.grad(model(xx)[0].pow(2).sum(), (xx, w_hh),
                                                create_graph=True)
        first = torch.autograd.grad(grad_x.sum(), (xx, w_hh), retain_graph=True)
        again = torch.autograd.grad(grad_x.sum(), (xx, w_hh), retain_graph=True)
        both = torch.autograd.grad(grad_x.sum() + grad_w_hh.pow(2).sum(), (xx, w_hh))
        return {f"{name}_{i}": g for name, grads in (("first", first), ("again", again),
                                                        ("both", both))
                for i, g in enumerate(grads)}

    assert_close_by_name(differentiate(fused), differentiate(ref), 1e-10)


def _penalty_case(cell, seed, **options):
    """torch.nn's and fusedrnn's module, an input [5, 2, 3], states, and torch.nn's gradients of
    a gradient penalty, in float64."""
    ref, fused = make_pair(cell, 3, 4, "cpu", torch.float64, **options)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 2, 3, generator=gen, dtype=torch.float64)
    hx = random_state(cell, ref, 2, "cpu", torch.float64, gen)
    return fused, x, hx, _penalty_gradients(ref, x, hx)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_double_backward_is_the_second_order_pass(cell, monkeypatch):
    """On the CPU a double backward that records no graph runs second_order's pass: the layer
    is not recomputed through torch.nn's recurrence, and the results stay torch.nn's."""
    fused, x, hx, expected = _penalty_case(cell, 8, num_layers=2, bidirectional=True)
    for reference in list(ops._TORCH_NN):
        monkeypatch.setitem(ops._TORCH_NN, reference, refuse)
    assert_close_by_name(_penalty_gradients(fused, x, hx), expected, 1e-10)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_double_backward_with_batched_incoming_gradients(cell):
    """Hessian-vector products in a batch (autograd.grad(is_grads_batched=True) over the
    first-order gradients) take the recomputation, and equal them one by one."""
    _, fused = make_pair(cell, 3, 4, "cpu", torch.float64)
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(5, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    (grad_x,) = torch.autograd.grad(fused(x)[0].pow(2).sum(), x, create_graph=True)
    probes = torch.randn(3, *x.shape, generator=gen, dtype=torch.float64)
    (batched,) = torch.autograd.grad(grad_x, x, probes, retain_graph=True, is_grads_batched=True)
    one_by_one = torch.stack([torch.autograd.grad(grad_x, x, p, retain_graph=True)[0]
                              for p in probes])
    assert rel_err(batched, one_by_one) <= 1e-10


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_gradient_penalty_in_half_precision(cell, dtype):
    """A bfloat16/float16 gradient penalty (the second-order pass in the layer's dtype): its
    error against float64 within the half rule of torch.nn's own."""
    runs = []
    for draw in range(half_rule_draws(cell)):
        ref, fused = make_pair(cell, 6, 8, "cpu", torch.float64, seed=draw)
        gen = torch.Generator().manual_seed(20 + draw)
        x = torch.randn(7, 3, 6, generator=gen, dtype=torch.float64)
        hx = random_state(cell, ref, 3, "cpu", torch.float64, gen)

        def in_dtype(state):
            return None if state is None else tuple(s.to(dtype) for s in state) \
                if isinstance(state, tuple) else state.to(dtype)

        exact = _penalty_gradients(ref, x, hx)
        theirs = _penalty_gradients(ref.to(dtype), x.to(dtype), in_dtype(hx))
        ours = _penalty_gradients(fused.to(dtype), x.to(dtype), in_dtype(hx))
        runs.append((ours, theirs, exact))
    assert_half_rule(runs)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_double_backward_under_a_dispatch_mode_recomputes(cell, monkeypatch):
    """The second-order pass runs its loops past the dispatcher, so under a dispatch mode the
    double backward takes the recomputation, all of whose ops the mode sees."""
    fused, x, hx, expected = _penalty_case(cell, 10)
    for reference in list(ops._SECOND_ORDER):
        monkeypatch.setitem(ops._SECOND_ORDER, reference, refuse)
    with _OpNames():
        actual = _penalty_gradients(fused, x, hx)
    assert_close_by_name(actual, expected, 1e-10)


def _penalty_step(model, x, hx, seeds, before_backward=lambda: None):
    """A gradient-penalty training step: loss(output) plus the penalties of one gradient of the
    input per seed (each taken with create_graph=True, its seed a function of the output)
    -> the gradients of the input and every parameter, by name."""
    x = x.detach().requires_grad_()
    output = model(x, hx)[0]
    penalties = 0
    for power in seeds:
        (grad_x,) = torch.autograd.grad(output.pow(power).sum(), x, create_graph=True)
        penalties = penalties + grad_x.pow(2).sum()
    before_backward()
    names, parameters = zip(*model.named_parameters())
    grads = torch.autograd.grad((output * output.detach().cos()).sum() + penalties,
                                (x, *parameters))
    return dict(zip(("input", *names), grads))


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_penalty_step_runs_the_layers_backward_inside_the_pass(cell, bidirectional,
                                                               monkeypatch):
    """The layer's own first-order backward of the output's gradient rides in the second-order
    pass (ops._leave_to_layer): no fused backward op runs in the step's backward, and the
    gradients stay torch.nn's."""
    ref, fused = make_pair(cell, 3, 4, "cpu", torch.float64, num_layers=2,
                           bidirectional=bidirectional)
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(6, 2, 3, generator=gen, dtype=torch.float64)
    hx = random_state(cell, ref, 2, "cpu", torch.float64, gen)

    def refuse_backward_ops():
        monkeypatch.setattr(ops, "_ops", Without(ops._ops, "backward"))

    assert_close_by_name(_penalty_step(fused, x, hx, [2], refuse_backward_ops),
                         _penalty_step(ref, x, hx, [2]), 1e-10)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_penalty_step_with_two_penalties_of_one_layer(cell):
    """Two gradients of one forward penalized in one step: one pass leaves its second half to
    the layer's node, the other (finding it taken) runs whole."""
    ref, fused = make_pair(cell, 3, 4, "cpu", torch.float64)
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(5, 3, 3, generator=gen, dtype=torch.float64)
    hx = random_state(cell, ref, 3, "cpu", torch.float64, gen)
    assert_close_by_name(_penalty_step(fused, x, hx, [2, 3]), _penalty_step(ref, x, hx, [2, 3]),
                         1e-10)


@pytest.mark.skipif(CUDA_SKIP is not None, reason=str(CUDA_SKIP))
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_penalty_on_the_gpu_of_a_layer_on_the_cpu(cell):
    """The penalty computed on a GPU: the engine's GPU thread holds the pass back while the CPU
    queue runs the layer's node first, so the pass finds the node has run and runs whole
    (ops._leave_to_layer)."""
    ref, fused = make_pair(cell, 3, 4, "cpu", torch.float64)
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(5, 2, 3, generator=gen, dtype=torch.float64)

    def step(model):
        xx = x.detach().requires_grad_()
        output = model(xx)[0]
        (grad_x,) = torch.autograd.grad(output.pow(2).sum(), xx, create_graph=True)
        penalty = grad_x.cuda().pow(2).sum().cpu()
        names, parameters = zip(*model.named_parameters())
        grads = torch.autograd.grad(output.sum() + penalty, (xx, *parameters))
        return dict(zip(("input", *names), grads))

    assert_close_by_name(step(fused), step(ref), 1e-10)


@pytest.mark.skipif(CUDA_SKIP is not None, reason=str(CUDA_SKIP))
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_cuda_double_backward_by_the_pass(cell, bidirectional, monkeypatch):
    """FUSEDRNN_CUDA_SECOND_ORDER=1: on CUDA the double backward runs second_order's pass (its
    units as kernels), with the layer's own backward riding in it, and no recomputation; a
    gradient penalty's and a penalty step's gradients stay torch.nn's (cuDNN off: it has no
    double backward)."""
    monkeypatch.setenv("FUSEDRNN_CUDA_SECOND_ORDER", "1")
    ref, fused = make_pair(cell, 3, 4, "cuda", torch.float64, num_layers=2,
                           bidirectional=bidirectional)
    gen = torch.Generator().manual_seed(14)
    x = torch.randn(6, 2, 3, generator=gen, dtype=torch.float64).cuda()
    hx = random_state(cell, ref, 2, "cuda", torch.float64, gen)
    with torch.backends.cudnn.flags(enabled=False):
        expected = _penalty_gradients(ref, x, hx), _penalty_step(ref, x, hx, [2])
    for reference in list(ops._TORCH_NN):
        monkeypatch.setitem(ops._TORCH_NN, reference, refuse)
    assert_close_by_name(_penalty_gradients(fused, x, hx), expected[0], 1e-10)
    assert_close_by_name(_penalty_step(fused, x, hx, [2]), expected[1], 1e-10)


def test_the_pass_runs_on_cuda_only_where_switched_on(monkeypatch):
    """Its CUDA kernels have not yet run on a GPU: CUDA recomputes unless
    FUSEDRNN_CUDA_SECOND_ORDER=1."""
    monkeypatch.delenv("FUSEDRNN_CUDA_SECOND_ORDER", raising=False)
    assert ops._second_order_on(torch.device("cpu"))
    assert not ops._second_order_on(torch.device("cuda", 0))
    monkeypatch.setenv("FUSEDRNN_CUDA_SECOND_ORDER", "1")
    assert ops._second_order_on(torch.device("cuda", 0))
    assert not ops._second_order_on(torch.device("meta"))
