"""The CPU per-step kernels' own arithmetic (csrc/kernels/pointwise_cpu_vec.cpp)."""
import torch

import fusedrnn  # noqa: F401  (registers the ops)


def _rnn_tanh(x):
    """tanh of every element of x [N] (float32), computed by the RNN step kernel: one step whose
    pre-activation is the bias x alone (zero weights add exact zeros; +0 turns -0 into +0)."""
    n = x.numel()
    zeros = torch.zeros(n, n)
    output, _ = torch.ops.fusedrnn.rnn_forward(torch.zeros(1, 1, n), torch.zeros(1, n), zeros,
                                               zeros, x, torch.zeros(n), False, False)
    return output.view(-1)


def _ulp_error(actual, exact):
    """|actual - exact| in units of the float32 spacing at exact."""
    spacing = torch.nextafter(exact.float(), torch.tensor(float("inf"))).double() - exact.float().double()
    return ((actual.double() - exact).abs() / spacing).max().item()


def test_float32_tanh_within_two_ulp():
    generator = torch.Generator().manual_seed(0)
    # Dense around the switch at |x| = 0.625 and near 0, then log-spaced out to saturation.
    sweeps = [torch.linspace(-1, 1, 4001), torch.rand(4000, generator=generator) * 20 - 10,
              torch.logspace(-30, 1.7, 2000), -torch.logspace(-30, 1.7, 2000)]
    for x in sweeps:
        x = x.float()
        for chunk in x.split(512):
            assert _ulp_error(_rnn_tanh(chunk), torch.tanh(chunk.double())) <= 2.0


def test_float32_tanh_special_values():
    x = torch.tensor([0.0, float("inf"), float("-inf"), 100.0, -100.0, float("nan"), 1e-40, 0.625,
                      -0.625, 0.6249999])
    y = _rnn_tanh(x)
    expected = torch.tanh(x.double()).float()
    assert torch.equal(y[:5], expected[:5]) and torch.isnan(y[5])
    assert (y[6:] - expected[6:]).abs().max() <= 2 * torch.finfo(torch.float32).eps
