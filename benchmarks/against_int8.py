"""fusedrnn's float32 layers against torch's dynamic int8 ones, CPU inference.

torch.ao.quantization.quantize_dynamic leaves fusedrnn's modules in float32 (it swaps exact
nn.LSTM / nn.GRU types only); the README's way to int8 is fusedrnn.revert(model), then
quantize_dynamic. This measures what that trade gains or loses, shape by shape: torch.nn float32,
torch's int8 module (quantized from the reverted fused module) and fusedrnn float32, timed as
fusedrnn.bench times its sides (interleaved rounds in one process, its random inputs and
states), medians, the single rounds' quartiles of int8 time / fused time; and each one's error
against torch.nn in float64.

    python benchmarks/against_int8.py [SECONDS_PER_CASE] [OUT.json]
"""
import statistics
import sys
import warnings

import torch
from torch import nn
from torch.ao.quantization import quantize_dynamic

import fusedrnn
from fusedrnn import bench
from fusedrnn.bench_report import run_cases

# cell, T, B, I, H: the CPU grid's inference shapes, and one wider layer.
CASES = [("lstm", 100, 1, 64, 64), ("lstm", 1, 1, 512, 512), ("lstm", 100, 16, 128, 128),
         ("lstm", 48, 32, 128, 128), ("gru", 100, 8, 256, 256), ("lstm", 100, 1, 256, 256),
         ("lstm", 100, 64, 512, 512), ("lstm", 50, 16, 1024, 1024)]


def measure(cell, T, B, I, H, seconds):  # noqa: E741  (the shape's letters)
    """Times the three layers as fusedrnn.bench times its sides (its Step, rounds and inputs),
    and takes each one's output error against torch.nn in float64."""
    case = bench.Case(cell, T=T, B=B, I=I, H=H, mode="inference")
    reference, fused = bench.build_modules(case, torch.device("cpu"))
    int8 = quantize_dynamic(nn.Sequential(fusedrnn.revert(fused, copy=True)),
                            {type(reference)}, dtype=torch.qint8)[0]
    assert type(int8).__module__.startswith("torch.ao.nn.quantized.dynamic"), type(int8)
    modules = {"torch_f32": reference, "torch_int8": int8, "fused_f32": fused}
    inputs = bench.make_inputs(case, torch.device("cpu"))
    samples = bench.measure({name: bench.Step(module, inputs, "inference")
                             for name, module in modules.items()},
                            bench.Timer(torch.device("cpu")), seconds,
                            bench.WARMUP_ROUNDS["cpu"])
    x, hx = inputs
    with torch.no_grad():
        exact = type(reference)(I, H).double()
        exact.load_state_dict(reference.state_dict())
        truth = exact(x.double(), tuple(h.double() for h in hx) if cell == "lstm"
                      else hx.double())[0]
        errors = {name: ((module(x, hx)[0].double() - truth).norm() / truth.norm()).item()
                  for name, module in modules.items()}
    return dict(cell=cell, T=T, B=B, I=I, H=H, rounds=len(samples["fused_f32"]),
                ms={name: statistics.median(ms) for name, ms in samples.items()},
                int8_over_fused_quartiles=bench.round_speedup_quartiles(
                    samples["torch_int8"], samples["fused_f32"]),
                rel_err_vs_float64=errors)


def describe(row):
    ms, err, q = row["ms"], row["rel_err_vs_float64"], row["int8_over_fused_quartiles"]
    return (f"{row['cell']} T={row['T']} B={row['B']} I={row['I']} H={row['H']}: "
            f"torch f32 {ms['torch_f32']:.3f} ms, torch int8 {ms['torch_int8']:.3f} ms, "
            f"fused f32 {ms['fused_f32']:.3f} ms; int8 time / fused time "
            f"{ms['torch_int8'] / ms['fused_f32']:.2f}x ({q[0]:.2f}-{q[1]:.2f}); error "
            f"against float64: int8 {err['torch_int8']:.1e}, fused {err['fused_f32']:.1e}")


def main():
    # Deprecated in favour of torchao, which is not a dependency here; the API still works.
    warnings.filterwarnings("ignore", message="torch.ao.quantization is deprecated")
    warnings.filterwarnings("ignore", message="torch.quantize_per_tensor")
    run_cases(CASES, lambda case, seconds: measure(*case, seconds), describe,
              sys.argv[1:] or ["8"])


if __name__ == "__main__":
    main()
