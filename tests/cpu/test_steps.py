"""The CPU per-step kernels' own arithmetic (csrc/cpu/vectorized_steps.h, cpu/steps.cpp), under
every CPU ISA this machine runs."""
import pytest
import torch

import fusedrnn  # noqa: F401  (registers the ops)

pytestmark = pytest.mark.usefixtures("isa")


def _rnn_tanh(x):
    """tanh of every element of x [N] (float32), computed by the RNN step kernel: one step whose
    pre-activation is the bias x alone (zero weights add exact zeros; +0 turns -0 into +0)."""
    n = x.numel()
    zeros = torch.zeros(n, n)
    output, _ = torch.ops.fusedrnn.rnn_forward(torch.zeros(1, 1, n), torch.zeros(1, n), zeros,
                                               zeros, x, torch.zeros(n), False, False)
    return output.view(-1)


def _lstm_sigmoid(x):
    """sigmoid of every element of x [N] (float32), computed by the LSTM step kernel: one step
    with zero state and weights, input gate pre-activation x, forget gate 0 and cell input
    tanh(100) = 1, so that the new cell is exactly sigmoid(x) * 1 + sigmoid(0) * 0."""
    n = x.numel()
    zeros = torch.zeros
    b_ih = torch.cat([x, zeros(n), torch.full((n,), 100.0), zeros(n)])
    _, _, c_n, *_ = torch.ops.fusedrnn.lstm_forward(zeros(1, 1, 1), zeros(1, n), zeros(1, n),
                                                    zeros(4 * n, 1), zeros(4 * n, n), b_ih,
                                                    zeros(4 * n), False, False)
    return c_n.view(-1)


def _ulp_error(actual, exact):
    """|actual - exact| in units of the float32 spacing at exact."""
    spacing = torch.nextafter(exact.float(), torch.tensor(float("inf"))).double() - exact.float().double()
    return ((actual.double() - exact).abs() / spacing).max().item()


def _worst_ulp_error(kernel, exact, sweeps):
    """The largest _ulp_error of kernel (float32) against exact (float64) over the sweeps, in
    chunks of 512 elements."""
    return max(_ulp_error(kernel(chunk), exact(chunk.double()))
               for x in sweeps for chunk in x.float().split(512))


def test_float32_tanh_within_two_ulp():
    generator = torch.Generator().manual_seed(0)
    # Dense around the switch at |x| = 0.625 and near 0, then log-spaced out to saturation.
    sweeps = [torch.linspace(-1, 1, 4001), torch.rand(4000, generator=generator) * 20 - 10,
              torch.logspace(-30, 1.7, 2000), -torch.logspace(-30, 1.7, 2000)]
    assert _worst_ulp_error(_rnn_tanh, torch.tanh, sweeps) <= 2.0


def test_float32_sigmoid_within_three_ulp():
    """sigmoid = 1 / (1 + exp(-x)) on the kernels' own exp. Sleef's exp gave the same 2.3 ulp at
    worst over this sweep; the rest is 1 + e and the division rounding."""
    generator = torch.Generator().manual_seed(1)
    # Out to where sigmoid leaves the normal floats (x = -87.3).
    sweeps = [torch.linspace(-87, 88, 20001), torch.rand(8000, generator=generator) * 20 - 10,
              torch.logspace(-30, 1.9, 2000), -torch.logspace(-30, 1.9, 2000)]
    assert _worst_ulp_error(_lstm_sigmoid, torch.sigmoid, sweeps) <= 3.0


def test_float32_sigmoid_special_values():
    x = torch.tensor([0.0, float("inf"), float("-inf"), float("nan"), 89.0, -89.0, -104.0, 120.0])
    y = _lstm_sigmoid(x)
    assert y[:3].tolist() == [0.5, 1.0, 0.0] and torch.isnan(y[3])
    assert y[4] == 1.0 and 0 <= y[5] <= 1e-38 and y[6] == 0.0 and y[7] == 1.0


def test_float32_tanh_special_values():
    x = torch.tensor([0.0, float("inf"), float("-inf"), 100.0, -100.0, float("nan"), 1e-40, 0.625,
                      -0.625, 0.6249999])
    y = _rnn_tanh(x)
    expected = torch.tanh(x.double()).float()
    assert torch.equal(y[:5], expected[:5]) and torch.isnan(y[5])
    assert (y[6:] - expected[6:]).abs().max() <= 2 * torch.finfo(torch.float32).eps
