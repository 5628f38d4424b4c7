"""Double backward, fusedrnn against torch.nn on the CPU: torch.nn time / fusedrnn time (> 1:
fusedrnn faster), medians of interleaved rounds in one process.

    PYTHONPATH=. python benchmarks/double_backward.py [--rounds N]

Two workloads:
- gradgradcheck of a small module (T=3, B=2, I=3, H=4, float64) as PyTorch's own module tests run
  it: every parameter an input, through torch.func.functional_call. Most of its time goes to
  first-order gradients taken with create_graph=True and never differentiated (the numerical
  half), the rest to differentiating the same gradients once per row.
- a gradient-penalty training step (T=50, B=16, I=H=128, float32): loss = output.sum() +
  ||d(output^2).sum() / d input||^2, backward to the input and every parameter; and the same
  step on a larger layer (T=100, B=64, I=H=256), where the matrix products decide.
"""
import argparse
import statistics
import time

import torch
from torch import nn
from torch.func import functional_call

import fusedrnn

MODULES = {"LSTM": (nn.LSTM, fusedrnn.LSTM), "GRU": (nn.GRU, fusedrnn.GRU),
           "RNN": (nn.RNN, fusedrnn.RNN)}
GRADGRADCHECK_CASES = [("LSTM", {}), ("GRU", {}), ("RNN", {}), ("GRU", {"bias": False}),
                       ("LSTM", {"proj_size": 2}),
                       ("LSTM", {"num_layers": 2, "bidirectional": True})]
PENALTY_CASES = [("LSTM", {}), ("GRU", {}), ("RNN", {}), ("LSTM", {"bidirectional": True})]
LARGE_PENALTY_CASES = [("LSTM", {}), ("GRU", {}), ("RNN", {})]


def pair(kind, input_size, hidden_size, dtype, options):
    torch.manual_seed(0)
    reference = MODULES[kind][0](input_size, hidden_size, **options).to(dtype)
    fused = MODULES[kind][1](input_size, hidden_size, **options).to(dtype)
    fused.load_state_dict(reference.state_dict())
    return reference, fused


def gradgradcheck(module, x):
    names, parameters = zip(*module.named_parameters())

    def layer(x, *parameters):
        output, state = functional_call(module, dict(zip(names, parameters)), (x,))
        return (output, *(state if isinstance(state, tuple) else (state,)))

    inputs = (x.detach().requires_grad_(), *(p.detach().requires_grad_() for p in parameters))
    assert torch.autograd.gradgradcheck(layer, inputs)


def penalty_step(module, x):
    x = x.detach().requires_grad_()
    output = module(x)[0]
    (grad_x,) = torch.autograd.grad(output.pow(2).sum(), x, create_graph=True)
    (output.sum() + grad_x.pow(2).sum()).backward()


def interleaved(work, reference, fused, x, rounds):
    """-> median seconds of torch.nn, of fusedrnn, over `rounds` alternating rounds."""
    work(reference, x), work(fused, x)  # warm-up
    times = ([], [])
    for _ in range(rounds):
        for side, module in enumerate((reference, fused)):
            start = time.perf_counter()
            work(module, x)
            times[side].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def name(kind, options):
    return " ".join([kind] + [f"{k}={v}" for k, v in options.items()])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    rounds = parser.parse_args().rounds
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{rounds} interleaved rounds; medians in ms; ratio = torch.nn / fusedrnn")
    print("\n| gradgradcheck (T=3 B=2 I=3 H=4, float64) | torch.nn | fusedrnn | ratio |")
    print("|---|---|---|---|")
    for kind, options in GRADGRADCHECK_CASES:
        x = torch.randn(3, 2, 3, dtype=torch.float64)
        torch_time, fused_time = interleaved(gradgradcheck, *pair(kind, 3, 4, torch.float64,
                                                                  options), x, rounds)
        print(f"| {name(kind, options)} | {torch_time * 1e3:.0f} | {fused_time * 1e3:.0f} | "
              f"{torch_time / fused_time:.2f}x |", flush=True)
    for (T, B, H), cases, repeats in (((50, 16, 128), PENALTY_CASES, 3 * rounds),
                                      ((100, 64, 256), LARGE_PENALTY_CASES, rounds)):
        print(f"\n| gradient-penalty step (T={T} B={B} I=H={H}, float32) | torch.nn | fusedrnn "
              "| ratio |")
        print("|---|---|---|---|")
        for kind, options in cases:
            x = torch.randn(T, B, H)
            torch_time, fused_time = interleaved(
                penalty_step, *pair(kind, H, H, torch.float32, options), x, repeats)
            print(f"| {name(kind, options)} | {torch_time * 1e3:.1f} | {fused_time * 1e3:.1f} | "
                  f"{torch_time / fused_time:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
