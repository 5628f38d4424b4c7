"""Inference through a deployment artefact on the CPU: a model exported with torch.export and
compiled into an AOTInductor package, fusedrnn's against torch.nn's (the same weights), each
eager module beside. fusedrnn's package calls its fused ops through the dispatcher; torch.nn's
calls aten::lstm / aten::gru, as its eager module does.

Each call timed alone (fusedrnn.bench's Timer), interleaved rounds in an order of their own,
medians, and the quartiles of the single rounds' ratios. Outputs checked against torch.nn's
eager module first.

    python benchmarks/exported_inference.py [SECONDS_PER_CASE] [OUT.json]
"""
import random
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from torch._inductor import aoti_compile_and_package, aoti_load_package

from fusedrnn import bench
from fusedrnn.bench_report import run_cases

# cell, B, H (I = H), T
CASES = [("lstm", 1, 64, 1), ("lstm", 1, 64, 100), ("lstm", 32, 128, 48), ("gru", 1, 64, 100),
         ("gru", 8, 256, 100)]


class PackageStep:
    """One inference call of an AOTInductor package on fixed inputs."""

    def __init__(self, runner, inputs):
        self.runner, self.inputs = runner, inputs

    def reset(self):
        pass

    def __call__(self):
        with torch.no_grad():
            return self.runner(*self.inputs)


def package(module, inputs, path):
    program = torch.export.export(module, inputs)
    return aoti_load_package(aoti_compile_and_package(program, package_path=str(path)))


def measure(cell, B, H, T, seconds, directory):
    case = bench.Case(cell, T=T, B=B, I=H, H=H, mode="inference")
    reference, fused = bench.build_modules(case, torch.device("cpu"))
    inputs = bench.make_inputs(case, torch.device("cpu"))
    steps = {"torch": bench.Step(reference, inputs, "inference"),
             "fused": bench.Step(fused, inputs, "inference")}
    for name, module in (("torch_package", reference), ("fused_package", fused)):
        steps[name] = PackageStep(package(module, inputs, directory / f"{name}.pt2"), inputs)
        with torch.no_grad():
            got, expected = steps[name](), reference(*inputs)
        for a, b in zip(torch.utils._pytree.tree_leaves(got),
                        torch.utils._pytree.tree_leaves(expected)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    samples = bench.measure(steps, bench.Timer(torch.device("cpu")), seconds,
                            bench.WARMUP_ROUNDS["cpu"], shuffle=random.Random(0))
    ms = {name: statistics.median(times) for name, times in samples.items()}
    return dict(cell=cell, T=T, B=B, H=H, rounds=len(samples["fused"]), ms=ms,
                package_speedup=ms["torch_package"] / ms["fused_package"],
                package_speedup_quartiles=bench.round_speedup_quartiles(
                    samples["torch_package"], samples["fused_package"]),
                eager_speedup=ms["torch"] / ms["fused"],
                fused_package_over_eager=ms["fused_package"] / ms["fused"])


def describe(row):
    q, ms = row["package_speedup_quartiles"], row["ms"]
    return (f"{row['cell']} T={row['T']} B={row['B']} H={row['H']}: packages torch.nn "
            f"{ms['torch_package'] * 1e3:.1f} us, fusedrnn {ms['fused_package'] * 1e3:.1f} us: "
            f"{row['package_speedup']:.2f}x ({q[0]:.2f}-{q[1]:.2f}); eager "
            f"{row['eager_speedup']:.2f}x; fusedrnn's package / its eager module "
            f"{row['fused_package_over_eager']:.2f}")


def main():
    with tempfile.TemporaryDirectory() as directory:
        run_cases(CASES, lambda case, seconds: measure(*case, seconds, Path(directory)),
                  describe, sys.argv[1:])


if __name__ == "__main__":
    main()
