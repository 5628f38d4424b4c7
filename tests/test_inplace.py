"""The output may be edited in place before the backward (ReLU(inplace=True), in-place dropout,
zeroing padded steps, masked_fill_), as torch.nn allows: the backward keeps what it needs."""
import pytest
import torch
from torch import nn

from conftest import CELLS, DEVICES, make_pair, random_state, rel_err
from test_cells import cell_inputs, make_cell_pair

EDITS = {
    "relu_": lambda out: nn.ReLU(inplace=True)(out),
    "dropout_": lambda out: nn.functional.dropout(out, 0.5, training=True, inplace=True),
    "zero_padded_steps": lambda out: out[-2:, 0].zero_(),
    "masked_fill_": lambda out: out.masked_fill_(out > 0.3, 0.0),
    "mul_": lambda out: out.mul_(2.0),
}


def _grads_after_edit(model, x, hx, edit, seed):
    x = x.detach().requires_grad_()
    params = list(model.parameters())
    out, _ = model(x, hx)
    torch.manual_seed(seed)  # the same dropout mask for both models
    edit(out)
    gen = torch.Generator().manual_seed(seed)
    loss = (out * torch.randn(out.shape, generator=gen, dtype=out.dtype).to(out.device)).sum()
    return [out.detach(), *torch.autograd.grad(loss, [x, *params])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("edit", list(EDITS))
@pytest.mark.parametrize("cell", list(CELLS))
def test_modules(cell, edit, bidirectional, device):
    ref, fused = make_pair(cell, 4, 6, device, torch.float64, num_layers=2,
                           bidirectional=bidirectional)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, 4, generator=gen, dtype=torch.float64).to(device)
    hx = random_state(cell, ref, 3, device, torch.float64, gen)
    ours = _grads_after_edit(fused, x, hx, EDITS[edit], 7)
    # cuDNN's RNN saves its output for the backward, so torch.nn on cuDNN refuses these edits;
    # its native CUDA path allows them, as on the CPU.
    with torch.backends.cudnn.flags(enabled=False):
        theirs = _grads_after_edit(ref, x, hx, EDITS[edit], 7)
    assert [rel_err(a, b) for a, b in zip(ours, theirs)] == pytest.approx([0] * len(ours),
                                                                          abs=1e-10)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cells(cell):
    """A cell's new state edited in place, then the backward. (torch.nn's RNNCell refuses this:
    its output is its activation's, which that activation's backward reads.)"""
    ref, fused = make_cell_pair(cell, 4, 6, "cpu", torch.float64)
    x, hx = cell_inputs(cell, (3,), 4, 6, "cpu", torch.float64)
    results = []
    for model in (fused, ref):
        inputs = [x.detach().requires_grad_(), *model.parameters()]
        out = model(inputs[0], hx)
        h = out[0] if isinstance(out, tuple) else out
        h.relu_()
        results.append(torch.autograd.grad(h.sum(), inputs))
    assert [rel_err(a, b) for a, b in zip(*results)] == pytest.approx([0] * len(inputs), abs=1e-10)
