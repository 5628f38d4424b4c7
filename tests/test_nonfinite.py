"""NaN and infinity travel through every forward and backward as through torch.nn's: the same
elements come out NaN or infinite, and the finite ones agree."""
import pytest
import torch

from conftest import CELLS, DEVICES, make_pair, random_state, rel_err, run_and_grad
from test_cells import CellAsLayer, cell_inputs, make_cell_pair

VALUES = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "huge": 1e200}


def assert_same_nonfinite(ours, theirs, tol=1e-10):
    assert ours.keys() == theirs.keys()
    for k in theirs:
        a, b = ours[k].cpu(), theirs[k].cpu()
        assert torch.equal(a.isnan(), b.isnan()), f"{k}: NaN at other elements"
        assert torch.equal(a.isinf(), b.isinf()), f"{k}: infinity at other elements"
        assert torch.equal(a[a.isinf()], b[b.isinf()]), f"{k}: infinities of other signs"
        finite = a.isfinite()
        scale = b[finite].abs().max().clamp_min(1e-300) if finite.any() else 1.0
        assert rel_err(a[finite] / scale, b[finite] / scale) <= tol, k  # no overflow in norms


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("value", list(VALUES))
@pytest.mark.parametrize("cell", list(CELLS))
def test_modules(cell, value, dtype, device):
    """H=19: the float32 vector lanes and the scalar tail both meet the value."""
    T, B, I, H = 6, 3, 4, 19
    ref, fused = make_pair(cell, I, H, device, dtype, num_layers=2)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(T, B, I, generator=gen, dtype=torch.float64)
    huge = value == "huge" and dtype == torch.float32
    x[2, 1, 3] = 1e30 if huge else VALUES[value]  # one element, mid-sequence, of one sequence
    x = x.to(device, dtype)
    hx = random_state(cell, ref, B, device, dtype, gen)
    assert_same_nonfinite(run_and_grad(fused, x, hx), run_and_grad(ref, x, hx),
                          1e-10 if dtype == torch.float64 else 1e-5)


@pytest.mark.parametrize("value", list(VALUES))
@pytest.mark.parametrize("cell", list(CELLS))
def test_state(cell, value):
    """A non-finite initial state, bidirectional: the reverse direction meets it last."""
    ref, fused = make_pair(cell, 4, 5, "cpu", torch.float64, bidirectional=True)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 2, 4, generator=gen, dtype=torch.float64)
    hx = random_state(cell, ref, 2, "cpu", torch.float64, gen)
    (hx[0] if cell == "lstm" else hx)[1, 0, 2] = VALUES[value]
    assert_same_nonfinite(run_and_grad(fused, x, hx), run_and_grad(ref, x, hx))


@pytest.mark.parametrize("value", list(VALUES))
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_cells(cell, value):
    ref, fused = make_cell_pair(cell, 4, 5, "cpu", torch.float64)
    x, hx = cell_inputs(cell, (3,), 4, 5, "cpu", torch.float64)
    x[1, 2] = VALUES[value]
    assert_same_nonfinite(run_and_grad(CellAsLayer(fused), x, hx),
                          run_and_grad(CellAsLayer(ref), x, hx))


def test_relu_passes_the_gradient_at_nan_outputs():
    """The case reported: one NaN input to a relu RNN. torch.nn's relu backward passes the
    gradient where the output is NaN, so the bias gradient stays finite and must agree."""
    ref, fused = make_pair("rnn_relu", 3, 4, "cpu", torch.float64)
    x = torch.rand(5, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x[1, 0, 0] = float("nan")
    ours, theirs = run_and_grad(fused, x, None), run_and_grad(ref, x, None)
    assert theirs["grad_bias_hh_l0"].isfinite().all()
    assert rel_err(ours["grad_bias_hh_l0"], theirs["grad_bias_hh_l0"]) <= 1e-10
