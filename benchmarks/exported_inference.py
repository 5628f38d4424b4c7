"""Inference through a deployment artefact on the CPU: a model exported with torch.export and
compiled into an AOTInductor package, fusedrnn's against torch.nn's (the same weights), each
eager module beside. fusedrnn's package calls its fused ops through the dispatcher; torch.nn's
calls aten::lstm / aten::gru, as its eager module does.

Each call timed alone (fusedrnn.bench's Timer), interleaved rounds in an order of their own,
medians, and the quartiles of the single rounds' ratios. Outputs checked against torch.nn's
eager module first. fusedrnn's package is built twice: as import fusedrnn sets Inductor up,
calling the ops through their C entry points (csrc/layer/aoti_shims.cpp), and without them,
through AOTInductor's proxy executor and the dispatcher (`fused_package_proxy`); its package
is also called past the runner's Python wrapper (`fused_package_boxed`).

    python benchmarks/exported_inference.py [SECONDS_PER_CASE] [OUT.json]
"""
import random
import statistics
import sys
import tempfile
from pathlib import Path
from unittest import mock

import torch
from torch._inductor import aoti_compile_and_package, aoti_load_package
from torch._inductor import config as inductor_config

from fusedrnn import aoti, bench
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


class BoxedPackageStep(PackageStep):
    """The same call past the runner's Python wrapper, which parses the package's input and
    output specs on every call: the flat tensors straight to its loader."""

    def __call__(self):
        with torch.no_grad():
            return self.runner.loader.boxed_run(
                [t for t in torch.utils._pytree.tree_leaves(self.inputs)
                 if isinstance(t, torch.Tensor)])


def package(module, inputs, path):
    program = torch.export.export(module, inputs)
    return aoti_load_package(aoti_compile_and_package(program, package_path=str(path)))


def package_through_proxy(module, inputs, path):
    """The package as Inductor builds it without fusedrnn's C entry points."""
    with mock.patch.object(aoti, "_ENABLED", False), inductor_config.patch(
            {"aot_inductor.custom_ops_to_c_shims": {}}):
        return package(module, inputs, path)


def measure(cell, B, H, T, seconds, directory):
    case = bench.Case(cell, T=T, B=B, I=H, H=H, mode="inference")
    reference, fused = bench.build_modules(case, torch.device("cpu"))
    inputs = bench.make_inputs(case, torch.device("cpu"))
    steps = {"torch": bench.Step(reference, inputs, "inference"),
             "fused": bench.Step(fused, inputs, "inference")}
    for name, module, build in (("torch_package", reference, package),
                                ("fused_package", fused, package),
                                ("fused_package_proxy", fused, package_through_proxy)):
        steps[name] = PackageStep(build(module, inputs, directory / f"{name}.pt2"), inputs)
    steps["fused_package_boxed"] = BoxedPackageStep(steps["fused_package"].runner, inputs)
    for name in ("torch_package", "fused_package", "fused_package_proxy", "fused_package_boxed"):
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
                fused_package_over_eager=ms["fused_package"] / ms["fused"],
                boxed_package_over_eager=ms["fused_package_boxed"] / ms["fused"],
                proxy_over_entry_points=ms["fused_package_proxy"] / ms["fused_package"],
                proxy_over_entry_points_quartiles=bench.round_speedup_quartiles(
                    samples["fused_package_proxy"], samples["fused_package"]))


def describe(row):
    q, ms = row["package_speedup_quartiles"], row["ms"]
    return (f"{row['cell']} T={row['T']} B={row['B']} H={row['H']}: packages torch.nn "
            f"{ms['torch_package'] * 1e3:.1f} us, fusedrnn {ms['fused_package'] * 1e3:.1f} us: "
            f"{row['package_speedup']:.2f}x ({q[0]:.2f}-{q[1]:.2f}); eager "
            f"{row['eager_speedup']:.2f}x; fusedrnn's package / its eager module "
            f"{row['fused_package_over_eager']:.2f}; through the proxy executor "
            f"{ms['fused_package_proxy'] * 1e3:.1f} us: {row['proxy_over_entry_points']:.2f}x "
            f"the C entry points' time; past the runner's wrapper "
            f"{ms['fused_package_boxed'] * 1e3:.1f} us ({row['boxed_package_over_eager']:.2f} "
            f"the eager module's)")


def main():
    with tempfile.TemporaryDirectory() as directory:
        run_cases(CASES, lambda case, seconds: measure(*case, seconds, Path(directory)),
                  describe, sys.argv[1:])


if __name__ == "__main__":
    main()
