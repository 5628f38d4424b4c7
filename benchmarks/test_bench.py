"""pytest-benchmark suite: torch.nn and fusedrnn, side by side, case by case.

    python -m pytest benchmarks --benchmark-json=out.json
    PYTHONPATH=. pytest-benchmark compare out.json --group-by=group

(Both from the repo root, where fusedrnn is built in place: `python -m` and PYTHONPATH put it
on the path; compare loads the project's conftest too.)

Not part of the normal test run (pyproject's testpaths = ["tests"]). Each benchmark group holds
one case's torch.nn and fusedrnn timings on the same weights and inputs (built by
fusedrnn.bench, whose FLOP count goes into extra_info). A timed call drops the last step's
gradients (microseconds), runs the step and, on CUDA, synchronises, so wall time covers the
GPU work. fusedrnn.bench gives interleaved medians and speedups; this suite gives
pytest-benchmark's statistics and history.
"""
import pytest
import torch

from fusedrnn import bench

DEVICE = bench.default_device()
ON_CUDA = DEVICE.type == "cuda"
cuda_only = pytest.mark.skipif(not ON_CUDA, reason="CUDA-only parameter: no CUDA device (or "
                               "fusedrnn built without CUDA); the CPU set stays small")

CELLS = ["lstm", "gru", "rnn_tanh"]
STACKS = [pytest.param((1, False), id="L1"), pytest.param((2, True), id="L2bidir")]
DTYPES = ["float32", pytest.param("float16", marks=cuda_only),
          pytest.param("bfloat16", marks=cuda_only)]
SHAPES = [
    pytest.param(dict(T=50, B=16, I=128, H=128), id="T50-B16-H128"),
    pytest.param(dict(T=100, B=1, I=64, H=64), id="T100-B1-H64"),
    pytest.param(dict(T=100, B=64, I=512, H=512), id="T100-B64-H512", marks=cuda_only),
]


@pytest.mark.parametrize("implementation", ["torch", "fused"])
@pytest.mark.parametrize("mode", bench.MODES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("cell", CELLS)
def test_step(benchmark, cell, stack, dtype, shape, mode, implementation):
    layers, bidirectional = stack
    case = bench.Case(cell, layers=layers, bidirectional=bidirectional, dtype=dtype, mode=mode,
                      **shape)
    reference, fused = bench.build_modules(case, DEVICE)
    step = bench.Step(reference if implementation == "torch" else fused,
                      bench.make_inputs(case, DEVICE), mode)

    def timed():
        step.reset()
        step()
        if ON_CUDA:
            torch.cuda.synchronize()

    for _ in range(bench.WARMUP_ROUNDS[DEVICE.type]):
        timed()
    benchmark.group = f"{case.label()} {DEVICE.type}"
    benchmark.extra_info.update(flop=bench.case_flops(case), device=DEVICE.type)
    benchmark(timed)
