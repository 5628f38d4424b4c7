"""Double backward, fusedrnn against torch.nn on the CPU: torch.nn time / fusedrnn time (> 1:
fusedrnn faster), medians of interleaved rounds in one process.

    PYTHONPATH=. python benchmarks/double_backward.py [--rounds N] [--device cuda]

Two workloads:
- gradgradcheck of a small module (T=3, B=2, I=3, H=4, float64) as PyTorch's own module tests run
  it: every parameter an input, through torch.func.functional_call. Most of its time goes to
  first-order gradients taken with create_graph=True and never differentiated (the numerical
  half), the rest to differentiating the same gradients once per row.
- a gradient-penalty training step (T=50, B=16, I=H=128, float32): loss = output.sum() +
  ||d(output^2).sum() / d input||^2, backward to the input and every parameter, padded and
  through a PackedSequence of random lengths; and the same step on a larger layer (T=100, B=64,
  I=H=256), where the matrix products decide.
- the same penalty step through one step of a cell (and of a layer given one step), at B=1 H=64
  and B=16 H=128: per-step costs decide.
And torch.func.grad of output.pow(2).sum() over the parameters (T=50, B=16, I=H=128, float32),
a functional training step: fusedrnn's fused backward, as nothing differentiates the gradients
again (ops._differentiated_once).

With --device cuda: the penalty steps alone, on the GPU, timed with a synchronize around each
step: torch.nn with cuDNN off (cuDNN has no double backward), fusedrnn recomputing the layer
through torch.nn's recurrence (the default on CUDA), and fusedrnn's second-order pass
(FUSEDRNN_CUDA_SECOND_ORDER=1, which this run sets and unsets call by call).
"""
import os
import argparse
import statistics
import time

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn

MODULES = {"LSTM": (nn.LSTM, fusedrnn.LSTM), "GRU": (nn.GRU, fusedrnn.GRU),
           "RNN": (nn.RNN, fusedrnn.RNN)}
GRADGRADCHECK_CASES = [("LSTM", {}), ("GRU", {}), ("RNN", {}), ("GRU", {"bias": False}),
                       ("LSTM", {"proj_size": 2}),
                       ("LSTM", {"num_layers": 2, "bidirectional": True})]
PENALTY_CASES = [("LSTM", {}), ("GRU", {}), ("RNN", {}), ("LSTM", {"bidirectional": True}),
                 ("LSTM", {"packed": True}), ("GRU", {"packed": True})]
LARGE_PENALTY_CASES = [("LSTM", {}), ("GRU", {}), ("RNN", {})]
CELLS = {"LSTMCell": (nn.LSTMCell, fusedrnn.LSTMCell), "GRUCell": (nn.GRUCell, fusedrnn.GRUCell),
         "RNNCell": (nn.RNNCell, fusedrnn.RNNCell)}
STEP_PENALTY_CASES = ["LSTMCell", "GRUCell", "RNNCell", "LSTM", "GRU"]
PARTS = ["gradgradcheck", "penalty", "steps", "func"]


def pair(kind, input_size, hidden_size, dtype, options):
    """torch.nn's module or cell (kind: a key of MODULES or CELLS) and fusedrnn's, same weights."""
    options = {k: v for k, v in options.items() if k != "packed"}  # the input's, not the module's
    classes = MODULES[kind] if kind in MODULES else CELLS[kind]
    torch.manual_seed(0)
    reference = classes[0](input_size, hidden_size, **options).to(dtype)
    fused = classes[1](input_size, hidden_size, **options).to(dtype)
    fused.load_state_dict(reference.state_dict())
    return reference, fused


def gradgradcheck(module, x):
    names, parameters = zip(*module.named_parameters())

    def layer(x, *parameters):
        output, state = functional_call(module, dict(zip(names, parameters)), (x,))
        return (output, *(state if isinstance(state, tuple) else (state,)))

    inputs = (x.detach().requires_grad_(), *(p.detach().requires_grad_() for p in parameters))
    assert torch.autograd.gradgradcheck(layer, inputs)


def penalty_step(module, x, packed=False):
    """One penalty step on x [T, B, I]; packed: through a PackedSequence of the batch at random
    lengths (1 to T, unsorted)."""
    x = x.detach().requires_grad_()
    if packed:
        T, B = x.shape[:2]
        lengths = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(0))
        lengths[0] = T
        output = module(pack_padded_sequence(x, lengths, enforce_sorted=False))[0].data
    else:
        output = module(x)[0]
    (grad_x,) = torch.autograd.grad(output.pow(2).sum(), x, create_graph=True)
    (output.sum() + grad_x.pow(2).sum()).backward()


def step_penalty_step(module, x, hx):
    """The penalty step through one step of a cell (x [B, I]) or of a layer (x [1, B, I])."""
    x = x.detach().requires_grad_()
    output = module(x, hx)
    h = output[0] if isinstance(output, tuple) else output
    (grad_x,) = torch.autograd.grad(h.pow(2).sum(), x, create_graph=True)
    (h.sum() + grad_x.pow(2).sum()).backward()


def func_grad(module, x):
    """torch.func.grad of output.pow(2).sum() over the module's parameters."""
    parameters = {name: p.detach() for name, p in module.named_parameters()}
    torch.func.grad(lambda p: functional_call(module, p, (x,))[0].pow(2).sum())(parameters)


def interleaved(work, reference, fused, x, rounds):
    """-> median seconds of torch.nn, of fusedrnn, over `rounds` alternating rounds."""
    return interleaved_calls([lambda: work(reference, x), lambda: work(fused, x)], rounds)


def interleaved_calls(calls, rounds, synchronize=lambda: None):
    """-> the median seconds of each call, over `rounds` rounds calling each in turn (after one
    warm-up round); `synchronize` before each clock reading (CUDA's, on the GPU)."""
    for call in calls:
        call()
    times = [[] for _ in calls]
    for _ in range(rounds):
        for call, kept in zip(calls, times):
            synchronize()
            start = time.perf_counter()
            call()
            synchronize()
            kept.append(time.perf_counter() - start)
    return [statistics.median(kept) for kept in times]


def cuda_penalty_steps(rounds):
    """The penalty steps on the GPU: torch.nn (cuDNN off), fusedrnn recomputing, fusedrnn's
    pass."""
    def with_pass(on, work):
        def call():
            os.environ["FUSEDRNN_CUDA_SECOND_ORDER"] = "1" if on else "0"
            work()
        return call

    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, {rounds} interleaved "
          "rounds; medians in ms; ratios = torch.nn / fusedrnn")
    for (T, B, H), cases in (((50, 16, 128), PENALTY_CASES), ((100, 64, 256),
                                                              LARGE_PENALTY_CASES)):
        print(f"\n| gradient-penalty step (T={T} B={B} I=H={H}, float32, CUDA) | torch.nn | "
              "fusedrnn recomputing | fusedrnn pass | ratio recomputing | ratio pass |")
        print("|---|---|---|---|---|---|")
        for kind, options in cases:
            reference, fused = (m.cuda() for m in pair(kind, H, H, torch.float32, options))
            x = torch.randn(T, B, H, device="cuda")
            packed = options.get("packed", False)

            def step(module):
                penalty_step(module, x, packed)

            with torch.backends.cudnn.flags(enabled=False):
                times = interleaved_calls(
                    [lambda: step(reference), with_pass(False, lambda: step(fused)),
                     with_pass(True, lambda: step(fused))],
                    rounds, torch.cuda.synchronize)
            ms = [t * 1e3 for t in times]
            print(f"| {name(kind, options)} | {ms[0]:.2f} | {ms[1]:.2f} | {ms[2]:.2f} | "
                  f"{ms[0] / ms[1]:.2f}x | {ms[0] / ms[2]:.2f}x |", flush=True)
    os.environ.pop("FUSEDRNN_CUDA_SECOND_ORDER")


def name(kind, options):
    return " ".join([kind] + [f"{k}={v}" for k, v in options.items()])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=PARTS,
                        help="the workloads to run on the CPU (all by default)")
    args = parser.parse_args()
    rounds = args.rounds
    if args.device == "cuda":
        return cuda_penalty_steps(rounds)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{rounds} interleaved rounds; medians in ms; ratio = torch.nn / fusedrnn")
    if "gradgradcheck" in args.parts:
        gradgradchecks(rounds)
    if "penalty" in args.parts:
        penalty_steps(rounds)
    if "steps" in args.parts:
        step_penalty_steps(rounds)
    if "func" in args.parts:
        func_grads(rounds)


def gradgradchecks(rounds):
    print("\n| gradgradcheck (T=3 B=2 I=3 H=4, float64) | torch.nn | fusedrnn | ratio |")
    print("|---|---|---|---|")
    for kind, options in GRADGRADCHECK_CASES:
        x = torch.randn(3, 2, 3, dtype=torch.float64)
        torch_time, fused_time = interleaved(gradgradcheck, *pair(kind, 3, 4, torch.float64,
                                                                  options), x, rounds)
        print(f"| {name(kind, options)} | {torch_time * 1e3:.0f} | {fused_time * 1e3:.0f} | "
              f"{torch_time / fused_time:.2f}x |", flush=True)


def penalty_steps(rounds):
    for (T, B, H), cases, repeats in (((50, 16, 128), PENALTY_CASES, 3 * rounds),
                                      ((100, 64, 256), LARGE_PENALTY_CASES, rounds)):
        print(f"\n| gradient-penalty step (T={T} B={B} I=H={H}, float32) | torch.nn | fusedrnn "
              "| ratio |")
        print("|---|---|---|---|")
        for kind, options in cases:
            x = torch.randn(T, B, H)
            packed = options.get("packed", False)
            torch_time, fused_time = interleaved(
                lambda module, x: penalty_step(module, x, packed),
                *pair(kind, H, H, torch.float32, options), x, repeats)
            print(f"| {name(kind, options)} | {torch_time * 1e3:.1f} | {fused_time * 1e3:.1f} | "
                  f"{torch_time / fused_time:.2f}x |", flush=True)


def step_penalty_steps(rounds):
    for B, H in ((1, 64), (16, 128)):
        print(f"\n| gradient-penalty step, one step (B={B} I=H={H}, float32) | torch.nn (us) | "
              "fusedrnn (us) | ratio |")
        print("|---|---|---|---|")
        for kind in STEP_PENALTY_CASES:
            layer = kind not in CELLS
            x = torch.randn(*((1,) if layer else ()), B, H)
            h = torch.randn(*((1,) if layer else ()), B, H)
            hx = (h, torch.randn_like(h)) if kind.startswith("LSTM") else h
            torch_time, fused_time = interleaved(
                lambda module, x: step_penalty_step(module, x, hx),
                *pair(kind, H, H, torch.float32, {}), x, 50 * rounds)
            print(f"| {kind} | {torch_time * 1e6:.0f} | {fused_time * 1e6:.0f} | "
                  f"{torch_time / fused_time:.2f}x |", flush=True)


def func_grads(rounds):
    print("\n| torch.func.grad (T=50 B=16 I=H=128, float32) | torch.nn | fusedrnn | ratio |")
    print("|---|---|---|---|")
    for kind in ("LSTM", "GRU"):
        torch_time, fused_time = interleaved(func_grad, *pair(kind, 128, 128, torch.float32, {}),
                                             torch.randn(50, 16, 128), 3 * rounds)
        print(f"| {kind} | {torch_time * 1e3:.1f} | {fused_time * 1e3:.1f} | "
              f"{torch_time / fused_time:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
