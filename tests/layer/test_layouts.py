"""Every tensor argument may come in any layout: column slices, transposes and expanded
(stride-0) views give the results of the same values stored contiguously, bit for bit, in every
module, cell and op, forward and backward."""
import pytest
import torch
from torch import nn

from conftest import CELLS, DEVICES, layer_args, make_pair, random_state, run_and_grad
from test_cells import CELL_CLASSES, CellAsLayer, cell_inputs, make_cell_pair

LIB = torch.ops.fusedrnn


def strided(t):
    """The values of t in a non-contiguous tensor: every other element of a wider buffer (a
    column slice, as `load_state_dict(assign=True)` leaves from a larger array)."""
    wide = torch.empty(*t.shape, 2, dtype=t.dtype, device=t.device)
    wide[..., 0] = t
    wide[..., 1] = float("nan")  # read by mistake, it shows
    out = wide[..., 0]
    assert not out.is_contiguous()
    return out


def _swap_parameter(module, name, value):
    setattr(module, name, nn.Parameter(value))
    if hasattr(module, "_init_flat_weights"):
        module._init_flat_weights()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", list(CELLS))
def test_module_parameters_as_column_slices(cell, device):
    """Each parameter in turn a column slice of a larger array: outputs and every gradient as
    with the contiguous parameter."""
    T, B, I, H = 5, 3, 6, 16
    _, fused = make_pair(cell, I, H, device, torch.float64, num_layers=2, bidirectional=True)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(T, B, I, generator=gen, dtype=torch.float64).to(device)
    hx = random_state(cell, fused, B, device, torch.float64, gen)
    expected = run_and_grad(fused, x, hx)
    for name, value in list(fused.named_parameters()):
        _swap_parameter(fused, name, strided(value.detach()))
        assert run_and_grad(fused, x, hx).keys() == expected.keys()
        got = run_and_grad(fused, x, hx)
        assert [k for k in expected if not torch.equal(got[k], expected[k])] == [], name
        _swap_parameter(fused, name, value.detach().clone())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", list(CELLS))
def test_expanded_biases(cell, device):
    """Biases that are one value expanded (stride 0) over every unit: as the full vectors."""
    G = {"lstm": 4, "gru": 3}.get(cell, 1)
    T, B, I, H = 4, 2, 5, 8
    _, fused = make_pair(cell, I, H, device, torch.float64)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(T, B, I, generator=gen, dtype=torch.float64).to(device)
    for name in ("bias_ih_l0", "bias_hh_l0"):
        value = torch.randn(1, generator=gen, dtype=torch.float64).to(device)
        _swap_parameter(fused, name, value.expand(G * H))
        expanded = run_and_grad(fused, x, None)
        _swap_parameter(fused, name, value.expand(G * H).clone())
        full = run_and_grad(fused, x, None)
        assert [k for k in full if not torch.equal(expanded[k], full[k])] == [], name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", list(CELL_CLASSES))
def test_cell_parameters_and_states_as_column_slices(cell, device):
    _, fused = make_cell_pair(cell, 6, 16, device, torch.float64)
    x, hx = cell_inputs(cell, (3,), 6, 16, device, torch.float64)
    model = CellAsLayer(fused)
    expected = run_and_grad(model, x, hx)
    strided_hx = tuple(map(strided, hx)) if isinstance(hx, tuple) else strided(hx)
    assert run_and_grad(model, strided(x), strided_hx).keys() == expected.keys()
    for name, value in list(fused.named_parameters()):
        setattr(fused, name, nn.Parameter(strided(value.detach())))
        got = run_and_grad(model, strided(x), strided_hx)
        assert [k for k in expected if not torch.equal(got[k], expected[k])] == [], name
        setattr(fused, name, nn.Parameter(value.detach().clone()))


def _forward_and_backward_args(cell, device):
    """(forward op, its args, backward op, its args, indices of the backward's saved tensors)
    for one layer, float64, training."""
    args = layer_args(cell, 4, 3, 5, 6, device)
    gen = torch.Generator().manual_seed(8)

    def grad_like(t):
        return torch.randn(t.shape, generator=gen, dtype=t.dtype).to(device)

    if cell == "lstm":
        x, h0, c0, w_ih, w_hh, b_ih, b_hh = args
        out, hn, cn, gates, cells, _ = LIB.lstm_forward(*args, False, True)
        backward = (grad_like(out), grad_like(hn), grad_like(cn), x, h0, c0, w_ih, w_hh, out,
                    gates, cells, True, False)
        return LIB.lstm_forward, (*args, False, True), LIB.lstm_backward, backward, (8, 9, 10)
    if cell == "gru":
        x, h0, w_ih, w_hh, b_ih, b_hh = args
        out, hn, saved = LIB.gru_forward(*args, False, True)
        backward = (grad_like(out), grad_like(hn), x, h0, w_ih, w_hh, out, saved, True, False)
        return LIB.gru_forward, (*args, False, True), LIB.gru_backward, backward, (6, 7)
    relu = cell == "rnn_relu"
    x, h0, w_ih, w_hh, b_ih, b_hh = args
    out, hn = LIB.rnn_forward(*args, relu, False)
    backward = (grad_like(out), grad_like(hn), x, h0, w_ih, w_hh, out, True, relu, False)
    return LIB.rnn_forward, (*args, relu, False), LIB.rnn_backward, backward, (6,)


def _equal(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", list(CELLS))
def test_ops_take_any_layout_of_every_argument(cell, device):
    """Each tensor argument of the forward and of the backward op in turn strided: the same
    results, the backward's saved tensors (output, gates, cells, saved) included."""
    forward, f_args, backward, b_args, saved = _forward_and_backward_args(cell, device)
    for op, args in ((forward, f_args), (backward, b_args)):
        expected = op(*args)
        for i, arg in enumerate(args):
            if isinstance(arg, torch.Tensor):
                changed = list(args)
                changed[i] = strided(arg)
                assert _equal(op(*changed), expected), (op, i)
    assert all(isinstance(b_args[i], torch.Tensor) for i in saved)
