"""fusedrnn's float32 layers against torch's dynamic int8 ones, CPU inference.

torch.ao.quantization.quantize_dynamic leaves fusedrnn's modules in float32 (it swaps exact
nn.LSTM / nn.GRU types only); the README's way to int8 is fusedrnn.revert(model), then
quantize_dynamic. This measures what that trade gains or loses, shape by shape: torch.nn float32,
torch's int8 module (quantized from the reverted fused module) and fusedrnn float32, interleaved
in one process in alternating order, medians; and each one's error against torch.nn in float64.

    python benchmarks/against_int8.py [SECONDS_PER_CASE] [OUT.json]
"""
import json
import statistics
import sys
import time
import warnings

import torch
from torch import nn
from torch.ao.quantization import quantize_dynamic

import fusedrnn
from fusedrnn.bench_report import environment

# cell, T, B, I, H: the CPU grid's inference shapes, and one wider layer.
CASES = [("lstm", 100, 1, 64, 64), ("lstm", 1, 1, 512, 512), ("lstm", 100, 16, 128, 128),
         ("lstm", 48, 32, 128, 128), ("gru", 100, 8, 256, 256), ("lstm", 100, 1, 256, 256),
         ("lstm", 100, 64, 512, 512), ("lstm", 50, 16, 1024, 1024)]


def measure(cell, T, B, I, H, seconds):  # noqa: E741  (the shape's letters)
    reference_class, fused_class = (nn.LSTM, fusedrnn.LSTM) if cell == "lstm" else \
        (nn.GRU, fusedrnn.GRU)
    torch.manual_seed(0)
    reference = reference_class(I, H)
    fused = fused_class(I, H)
    fused.load_state_dict(reference.state_dict())
    int8 = quantize_dynamic(nn.Sequential(fusedrnn.revert(fused, copy=True)), {reference_class},
                            dtype=torch.qint8)[0]
    assert type(int8).__module__.startswith("torch.ao.nn.quantized.dynamic"), type(int8)
    modules = {"torch_f32": reference, "torch_int8": int8, "fused_f32": fused}
    x = torch.randn(T, B, I)
    times = {name: [] for name in modules}
    rounds, end = 0, time.perf_counter() + seconds
    with torch.no_grad():
        while time.perf_counter() < end or rounds < 10:
            order = list(modules) if rounds % 2 else list(modules)[::-1]
            for name in order:
                began = time.perf_counter()
                modules[name](x)
                times[name].append(time.perf_counter() - began)
            rounds += 1
        exact = reference_class(I, H).double()
        exact.load_state_dict(reference.state_dict())
        truth = exact(x.double())[0]
        errors = {name: ((module(x)[0].double() - truth).norm() / truth.norm()).item()
                  for name, module in modules.items()}
    ms = {name: statistics.median(samples[2:]) * 1e3 for name, samples in times.items()}
    return dict(cell=cell, T=T, B=B, I=I, H=H, rounds=rounds, ms=ms, rel_err_vs_float64=errors)


def main():
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 8.0
    # Deprecated in favour of torchao, which is not a dependency here; the API still works.
    warnings.filterwarnings("ignore", message="torch.ao.quantization is deprecated")
    warnings.filterwarnings("ignore", message="torch.quantize_per_tensor")
    rows = []
    for case in CASES:
        row = measure(*case, seconds)
        rows.append(row)
        ms, err = row["ms"], row["rel_err_vs_float64"]
        print(f"{row['cell']} T={row['T']} B={row['B']} I={row['I']} H={row['H']}: "
              f"torch f32 {ms['torch_f32']:.3f} ms, torch int8 {ms['torch_int8']:.3f} ms, "
              f"fused f32 {ms['fused_f32']:.3f} ms; int8 time / fused time "
              f"{ms['torch_int8'] / ms['fused_f32']:.2f}x; error against float64: int8 "
              f"{err['torch_int8']:.1e}, fused {err['fused_f32']:.1e}", flush=True)
    if len(sys.argv) > 2:
        with open(sys.argv[2], "w") as out:
            json.dump(dict(environment=environment(torch.device("cpu")), rows=rows), out,
                      indent=1)


if __name__ == "__main__":
    main()
