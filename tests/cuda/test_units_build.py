"""What the built passes over the units (csrc/cuda/units.cuh: the per-step kernels of steps.cu
and the double backward's of second_order.cu) look like, read off the extension with
cuobjdump, without a GPU: one kernel for every step struct, dtype and architecture, and none
using local memory (spills) or a stack."""
import re
import subprocess

import pytest

import fusedrnn
from test_persistent_build import CELL_STEPS, DTYPES, _archs, _cuobjdump, _functions

SECOND_ORDER_STEPS = ["LSTMTangentStep", "LSTMBackwardTangentStep", "GRUTangentStep",
                      "GRUBackwardTangentStep", "RNNBackwardTangentStep"]

pytestmark = [
    pytest.mark.skipif(not fusedrnn.WITH_CUDA, reason="fusedrnn was built without CUDA"),
]


def _kernels(arch):
    tool = _cuobjdump()
    assert tool, "no cuobjdump: neither the CUDA toolkit's nor the triton wheel's"
    out = subprocess.run([tool, "-res-usage", "-arch", f"sm_{arch}",
                          fusedrnn.library_path()],
                         capture_output=True, text=True, check=True).stdout
    return _functions(out, "units_kernel")


def test_every_kernel_is_built_for_every_arch_without_spills():
    steps = CELL_STEPS + SECOND_ORDER_STEPS
    for arch in _archs():
        kernels = _kernels(arch)
        assert len(kernels) == len(steps) * len(DTYPES), arch
        for step in steps:
            for dtype in DTYPES:
                (usage,) = [body for name, body in kernels.items()
                            if f"units_kernelI{dtype}NS_{len(step)}{step}E" in name]
                usage = dict(re.findall(r"(\w+):(\d+)", usage.splitlines()[0]))
                assert int(usage["LOCAL"]) == 0 and int(usage["STACK"]) == 0, \
                    (arch, step, dtype, usage)
