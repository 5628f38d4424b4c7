"""Inference served from C++ without Python: fusedrnn's AOTInductor package against torch.nn's
(the same weights), both run by one C++ program (cpp_serving.cpp) through
`torch::inductor::AOTIModelPackageLoader`, after it has loaded fusedrnn's library. No Python
wrapper or runner is in the timed call.

Each model is a layer on a fixed random initial state, called on x alone. Outputs checked
against torch.nn's eager module here, and the two packages against each other there. Rounds in
a shuffled order, each call timed alone, medians, and the quartiles of the single rounds'
ratios.

    python benchmarks/cpp_serving.py [SECONDS_PER_CASE] [OUT.json]
"""
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch._inductor import aoti_compile_and_package, aoti_load_package

import fusedrnn
from fusedrnn import bench
from fusedrnn.bench_report import run_cases

# cell, B, H (I = H), T
CASES = [("lstm", 1, 64, 1), ("lstm", 1, 64, 100), ("lstm", 32, 128, 48), ("gru", 1, 64, 100),
         ("gru", 8, 256, 100)]


class Served(nn.Module):
    """A layer on a fixed initial state: what a server calls with x alone."""

    def __init__(self, layer, state):
        super().__init__()
        self.layer = layer
        for i, tensor in enumerate(state if isinstance(state, tuple) else (state,)):
            self.register_buffer(f"state{i}", tensor)

    def forward(self, x):
        state = tuple(buffer for _, buffer in self.named_buffers(recurse=False))
        output, _ = self.layer(x, state if len(state) == 2 else state[0])
        return output


def build_server(directory):
    """cpp_serving.cpp, linked as a libtorch program is (no Python)."""
    server = str(directory / "cpp_serving")
    subprocess.run(fusedrnn.aoti.cpp_program_command(
        str(Path(__file__).with_name("cpp_serving.cpp")), server), check=True)
    return server


def measure(cell, B, H, T, seconds, directory, server):
    case = bench.Case(cell, T=T, B=B, I=H, H=H, mode="inference")
    reference, fused = bench.build_modules(case, torch.device("cpu"))
    x, state = bench.make_inputs(case, torch.device("cpu"))
    paths = []
    for name, layer in (("torch", reference), ("fused", fused)):
        model = Served(layer, state).eval()
        path = aoti_compile_and_package(torch.export.export(model, (x,)),
                                        package_path=str(directory / f"{name}.pt2"))
        with torch.no_grad():
            torch.testing.assert_close(aoti_load_package(path)(x), Served(reference, state)(x),
                                       rtol=1e-4, atol=1e-5)
        paths.append(path)
    done = subprocess.run([server, fusedrnn.library_path(), str(seconds), str(T), str(B), str(H),
                           *paths], capture_output=True, text=True, check=True)
    torch_us, fused_us = json.loads(done.stdout).values()
    us = {"torch_package": statistics.median(torch_us),
          "fused_package": statistics.median(fused_us)}
    return dict(cell=cell, T=T, B=B, H=H, rounds=len(fused_us), us=us,
                speedup=us["torch_package"] / us["fused_package"],
                speedup_quartiles=bench.round_speedup_quartiles(torch_us, fused_us))


def describe(row):
    q, us = row["speedup_quartiles"], row["us"]
    return (f"{row['cell']} T={row['T']} B={row['B']} H={row['H']}, served from C++: torch.nn's "
            f"package {us['torch_package']:.1f} us, fusedrnn's {us['fused_package']:.1f} us: "
            f"{row['speedup']:.2f}x ({q[0]:.2f}-{q[1]:.2f}), {row['rounds']} rounds")


def main():
    with tempfile.TemporaryDirectory() as directory:
        server = build_server(Path(directory))
        run_cases(CASES,
                  lambda case, seconds: measure(*case, seconds, Path(directory), server),
                  describe, sys.argv[1:])


if __name__ == "__main__":
    main()
