"""fusedrnn.LSTMCell/GRUCell/RNNCell against torch.nn's cells: outputs, every gradient, state_dict
and bad input."""
import pytest
import torch
from torch import nn

import fusedrnn
from conftest import (DEVICES, TOLERANCE, assert_close_by_name, make_complex_pair, make_pair,
                      run_and_grad)
from test_errors import _both_raise

# cell name -> (torch.nn class, fusedrnn class, extra constructor arguments)
CELL_CLASSES = {
    "lstm": (nn.LSTMCell, fusedrnn.LSTMCell, {}),
    "gru": (nn.GRUCell, fusedrnn.GRUCell, {}),
    "rnn_tanh": (nn.RNNCell, fusedrnn.RNNCell, {"nonlinearity": "tanh"}),
    "rnn_relu": (nn.RNNCell, fusedrnn.RNNCell, {"nonlinearity": "relu"}),
}
ALL_CELLS = list(CELL_CLASSES)

# (B, I, H, options): odd sizes, B=1, I=H=1, no bias.
CONFIGS = [(3, 7, 11, {}), (1, 3, 4, {}), (5, 13, 17, {"bias": False}), (2, 1, 1, {})]


class CellAsLayer(nn.Module):
    """A cell shaped as run_and_grad expects a model: (output, final states). The output is h;
    the final state is c for the LSTMCell (so run_and_grad calls it h_n), none for the others."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def forward(self, x, hx=None):
        out = self.cell(x, hx)
        return out if isinstance(out, tuple) else (out, ())


def make_cell_pair(cell, input_size, hidden_size, *args, **options):
    """A torch.nn cell and a fusedrnn cell with the same (random) weights (see make_pair)."""
    return make_pair(cell, input_size, hidden_size, *args, classes=CELL_CLASSES, **options)


def cell_inputs(cell, batch_shape, input_size, hidden_size, device, dtype, seed=7):
    """Random input [*batch_shape, I] and state(s) [*batch_shape, H]."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*batch_shape, *shape, generator=gen).to(device, dtype)

    x, h = rand(input_size), rand(hidden_size)
    return x, ((h, rand(hidden_size)) if cell == "lstm" else h)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"B{c[0]}-I{c[1]}-H{c[2]}-{c[3]}")
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_matches_torch_nn(cell, config, dtype, device, backend):
    B, I, H, options = config
    ref, fused = make_cell_pair(cell, I, H, device, dtype, **options)
    x, hx = cell_inputs(cell, (B,), I, H, device, dtype)
    assert_close_by_name(run_and_grad(CellAsLayer(fused), x, hx),
                         run_and_grad(CellAsLayer(ref), x, hx), TOLERANCE[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_unbatched_and_default_state(cell, device):
    ref, fused = make_cell_pair(cell, 5, 6, device, torch.float64)
    x, hx = cell_inputs(cell, (), 5, 6, device, torch.float64)
    ours = run_and_grad(CellAsLayer(fused), x, hx)
    assert ours["output"].shape == (6,)
    assert_close_by_name(ours, run_and_grad(CellAsLayer(ref), x, hx), 1e-10)
    for x in (x, cell_inputs(cell, (3,), 5, 6, device, torch.float64)[0]):
        assert_close_by_name(run_and_grad(CellAsLayer(fused), x, None),
                             run_and_grad(CellAsLayer(ref), x, None), 1e-10)


@pytest.mark.parametrize("with_state", [True, False], ids=["hx", "no-hx"])
@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"B{c[0]}-I{c[1]}-H{c[2]}-{c[3]}")
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_inference_matches_torch_nn(cell, config, mode, with_state, monkeypatch):
    """Batched calls that need no gradient take the cells' inference path straight to the
    layer op, and give torch.nn's results."""
    B, I, H, options = config
    ref, fused = make_cell_pair(cell, I, H, **options)
    ref, fused = ref.double(), fused.double()
    x, hx = cell_inputs(cell, (B,), I, H, "cpu", torch.float64)

    def general_path(*args):
        raise AssertionError("the inference path deferred to the general path")

    monkeypatch.setattr(type(fused), "_step", general_path)
    hx = hx if with_state else None
    with mode():
        expected, actual = ref(x, hx), fused(x, hx)
    expected, actual = (expected, actual) if cell == "lstm" else ((expected,), (actual,))
    names = ("h", "c")
    assert_close_by_name(dict(zip(names, actual)), dict(zip(names, expected)), 1e-10)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_empty_batch(cell):
    ref, fused = make_cell_pair(cell, 3, 4)
    x = torch.randn(0, 3, requires_grad=True)
    ours, theirs = fused(x), ref(x)
    ours, theirs = (ours[0], theirs[0]) if cell == "lstm" else (ours, theirs)
    assert ours.shape == theirs.shape == (0, 4)
    ours.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_no_hidden_units(cell):
    ref, fused = make_cell_pair(cell, 3, 0)
    x = torch.randn(2, 3, requires_grad=True)
    for model in (fused, ref):
        out = model(x)
        out = out[0] + out[1] if cell == "lstm" else out
        assert out.shape == (2, 0)
        out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))  # both added zeros
    with torch.no_grad():  # unbatched, on the inference path
        ours, theirs = fused(x[0]), ref(x[0])
        ours, theirs = (ours[1], theirs[1]) if cell == "lstm" else (ours, theirs)
        assert ours.shape == theirs.shape == (0,)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_same_initialisation_parameters_and_repr(cell):
    ref_cls, fused_cls, extra = CELL_CLASSES[cell]
    torch.manual_seed(11)
    ref = ref_cls(6, 7, bias=False, **extra)
    torch.manual_seed(11)
    fused = fused_cls(6, 7, bias=False, **extra)
    ours, theirs = dict(fused.named_parameters()), dict(ref.named_parameters())
    assert list(ours) == list(theirs)
    for name in theirs:
        assert torch.equal(ours[name], theirs[name]), name
    assert repr(fused) == repr(ref)
    assert isinstance(fused, type(ref))  # code that picks cells by class finds them


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_state_dict_loads_strictly_both_ways(cell, bias):
    ref, fused = make_cell_pair(cell, 5, 6, bias=bias)
    fresh_ref, fresh_fused = make_cell_pair(cell, 5, 6, seed=99, bias=bias)
    fresh_fused.load_state_dict(ref.state_dict(), strict=True)
    fresh_ref.load_state_dict(fused.state_dict(), strict=True)
    for name, value in ref.state_dict().items():
        assert torch.equal(fresh_fused.state_dict()[name], value)
        assert torch.equal(fresh_ref.state_dict()[name], value)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_gradcheck(cell, device):
    _, fused = make_cell_pair(cell, 3, 4, device, torch.float64)
    x, hx = cell_inputs(cell, (2,), 3, 4, device, torch.float64)
    states = hx if cell == "lstm" else (hx,)
    names = [name for name, _ in fused.named_parameters()]

    def step(x, *tensors):
        hx = tensors[:len(states)]
        parameters = dict(zip(names, tensors[len(states):]))
        return torch.func.functional_call(fused, parameters,
                                          (x, hx if cell == "lstm" else hx[0]))

    inputs = [t.detach().requires_grad_() for t in (x, *states, *fused.parameters())]
    assert torch.autograd.gradcheck(step, inputs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch_shape", [(), (1,), (3,)], ids=["unbatched", "B1", "B3"])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_steps_leave_parameters_unchanged(cell, batch_shape, device):
    """Several steps in a row, as in a decoding loop: each matches torch.nn and no step writes
    into the parameters (a single row once made the GRU op accumulate into b_ih)."""
    ref, fused = make_cell_pair(cell, 3, 4, device, torch.float64)
    before = {name: p.clone() for name, p in fused.named_parameters()}
    x, hx = cell_inputs(cell, batch_shape, 3, 4, device, torch.float64)
    ours = theirs = hx
    for _ in range(3):
        ours, theirs = fused(x, ours), ref(x, theirs)
        for a, b in zip(*(t if cell == "lstm" else (t,) for t in (ours, theirs))):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for name, p in fused.named_parameters():
        assert torch.equal(p, before[name]), name


@pytest.mark.filterwarnings("ignore:Complex modules")
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128], ids=["c64", "c128"])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_complex_cells_run_torch_nns_implementation(cell, dtype):
    """Given complex input, fusedrnn's cells run torch.nn's implementation on their own
    parameters (no complex kernels): torch.nn's outputs and every gradient, bit for bit."""
    for seed, (B, I, H, options) in enumerate(CONFIGS):
        ref, fused = make_complex_pair(cell, I, H, dtype, seed=seed, classes=CELL_CLASSES,
                                       **options)
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(B, I, dtype=dtype, generator=gen)
        states = [torch.randn(B, H, dtype=dtype, generator=gen) for _ in range(2)]
        for hx in (tuple(states) if cell == "lstm" else states[0], None):
            if cell == "rnn_relu":  # torch has no complex relu
                for model in (ref, fused):
                    with pytest.raises(NotImplementedError, match="not supported for complex"):
                        model(x, hx)
                continue
            expected = run_and_grad(CellAsLayer(ref), x, hx)
            assert expected["output"].dtype == dtype
            assert_close_by_name(run_and_grad(CellAsLayer(fused), x, hx), expected, 0.0)
        if cell != "rnn_relu":  # unbatched
            assert torch.equal(torch.stack(list(fused(x[0]))) if cell == "lstm" else fused(x[0]),
                               torch.stack(list(ref(x[0]))) if cell == "lstm" else ref(x[0]))


def test_lstm_cell_takes_a_list_of_states():
    ref, fused = make_cell_pair("lstm", 3, 4, dtype=torch.float64)
    x, (h, c) = cell_inputs("lstm", (2,), 3, 4, "cpu", torch.float64)
    for ours, theirs in zip(fused(x, [h, c]), ref(x, [h, c])):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=0)


# ---- bad input: torch.nn's exception type, and its message where it has a clear one --------
def _states(cell, *shape, dtype=torch.float32):
    h = torch.randn(*shape, dtype=dtype)
    return (h, torch.randn(*shape, dtype=dtype)) if cell == "lstm" else h


@pytest.mark.usefixtures("either_grad_mode")
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_wrong_input_dimensions(cell):
    ref, fused = make_cell_pair(cell, 4, 5)
    _both_raise(ref, fused, torch.randn(2, 3, 4), match="Expected input to be 1D or 2D, got 3D")
    _both_raise(ref, fused, torch.randn(3, 4), _states(cell, 1, 3, 5), match="to be 1D or 2D")


@pytest.mark.usefixtures("either_grad_mode")
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_wrong_sizes(cell):
    ref, fused = make_cell_pair(cell, 4, 5)
    _both_raise(ref, fused, torch.randn(3, 6), match="inconsistent input_size: got 6 expected 4")
    _both_raise(ref, fused, torch.randn(3, 4), _states(cell, 2, 5),
                match="Input batch size 3 doesn't match hidden0 batch size 2")
    _both_raise(ref, fused, torch.randn(3, 4), _states(cell, 3, 7),
                match="hidden0 has inconsistent hidden_size: got 7, expected 5")
    _both_raise(ref, fused, torch.randn(4), _states(cell, 1, 5),
                match="2-D for batched input and 1-D for unbatched input, got 2-D")


@pytest.mark.usefixtures("either_grad_mode")
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_wrong_dtypes(cell):
    ref, fused = make_cell_pair(cell, 4, 5)
    _both_raise(ref, fused, torch.randn(3, 4, dtype=torch.float64),
                match=r"input dtype \(torch.float64\) does not match weight dtype")
    _both_raise(ref, fused, torch.randn(3, 4), _states(cell, 3, 5, dtype=torch.float64),
                match=r"hidden0 dtype \(torch.float64\) does not match input dtype")


@pytest.mark.usefixtures("either_grad_mode")
def test_lstm_cell_needs_two_states():
    ref, fused = make_cell_pair("lstm", 4, 5)
    _both_raise(ref, fused, torch.randn(3, 4), (torch.randn(3, 5),),
                match="lstm_cell expects two hidden states")


@pytest.mark.usefixtures("either_grad_mode")
def test_rnn_cell_unknown_nonlinearity_raises_in_forward_like_torch_nn():
    ref, fused = nn.RNNCell(4, 5, nonlinearity="gelu"), fusedrnn.RNNCell(4, 5, nonlinearity="gelu")
    _both_raise(ref, fused, torch.randn(3, 4), match="Unknown nonlinearity: gelu")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_weights_that_are_not_plain_parameters(cell, bias):
    """A parametrized weight (weight_norm) and torch.func.functional_call's weights reach the
    step, with and without biases (cells.py reads plain parameters from the parameter dict)."""
    ref, fused = make_cell_pair(cell, 5, 6, bias=bias)
    x, hx = cell_inputs(cell, (3,), 5, 6, "cpu", torch.float32)
    gen = torch.Generator().manual_seed(2)
    given = {name: torch.randn(p.shape, generator=gen) for name, p in ref.named_parameters()}
    torch.testing.assert_close(torch.func.functional_call(fused, given, (x, hx)),
                               torch.func.functional_call(ref, given, (x, hx)))
    for module in (ref, fused):
        nn.utils.parametrizations.weight_norm(module, "weight_hh")
        with torch.no_grad():
            module.parametrizations.weight_hh.original0.mul_(3)  # weight_hh = 3 x the old one
    ours, theirs = (run_and_grad(CellAsLayer(m), x, hx) for m in (fused, ref))
    assert_close_by_name(ours, theirs, TOLERANCE[torch.float32])
