"""What the built persistent kernels (csrc/cuda/persistent.cu) look like, read off the extension
with cuobjdump, without a GPU: no register spills, registers within the launch bounds, 16-byte
shared-memory loads in the product, the state staged with coherent (L2) loads, never through the
non-coherent path, and the grid barrier's fence and atomic."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import fusedrnn

CELL_STEPS = ["LSTMForwardStep", "LSTMBackwardStep", "GRUForwardStep", "GRUBackwardStep",
              "RNNForwardStep", "RNNBackwardStep"]
DTYPES = ["f", "d", "6__half", "13__nv_bfloat16"]  # mangled float, double, __half, bfloat16


def _cuobjdump():
    """The cuobjdump of the CUDA toolkit, else the copy in the triton wheel torch installs."""
    found = shutil.which("cuobjdump")
    if found:
        return found
    import importlib.util
    spec = importlib.util.find_spec("triton")
    if spec and spec.origin:
        candidate = Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        if candidate.exists():
            return str(candidate)
    return None


pytestmark = [
    pytest.mark.skipif(not fusedrnn.WITH_CUDA, reason="fusedrnn was built without CUDA"),
]


@pytest.fixture(scope="module")
def extension():
    path = fusedrnn.library_path()
    tool = _cuobjdump()
    assert tool, "no cuobjdump: neither the CUDA toolkit's nor the triton wheel's"
    return tool, path


def _functions(text, marker):
    """{mangled name: body} of the functions in cuobjdump's output whose name holds `marker`."""
    parts = re.split(r"\n\s*Function\s*:?\s*", text)
    found = {}
    for part in parts[1:]:
        name, _, body = part.partition("\n")
        name = name.strip().rstrip(":")
        if marker in name:
            found[name] = body
    return found


def _archs():
    return sorted({arch.strip().removesuffix("+PTX").replace(".", "") for arch in
                   fusedrnn._extension._C.cuda_archs.split(",") if arch.strip()})


def _kernels(extension, what, arch):
    """{name: cuobjdump's `what` (-res-usage, -sass) of it} for each persistent kernel."""
    tool, path = extension
    out = subprocess.run([tool, what, "-arch", f"sm_{arch}", path], capture_output=True,
                         text=True, check=True).stdout
    return _functions(out, "loop_kernel")


def test_every_kernel_is_built_for_every_arch(extension):
    for arch in _archs():
        kernels = _kernels(extension, "-res-usage", arch)
        for step in CELL_STEPS:
            for dtype in DTYPES:
                assert any(step in name and f"loop_kernelI{dtype}" in name for name in kernels), \
                    (arch, step, dtype)


def test_no_spills_and_registers_within_the_launch_bounds(extension):
    for arch in _archs():
        for name, body in _kernels(extension, "-res-usage", arch).items():
            usage = dict(re.findall(r"(\w+):(\d+)", body.splitlines()[0]))
            # 256 threads, one block an SM: up to 255 registers a thread.
            assert int(usage["REG"]) <= 255, (arch, name, usage)
            assert int(usage["LOCAL"]) == 0, (arch, name, usage)
            # The watchdog's printf needs a small stack frame for its arguments, nothing more.
            assert int(usage["STACK"]) <= 64, (arch, name, usage)


def test_the_machine_code_loads_and_synchronizes_as_designed(extension):
    for arch in _archs():
        kernels = _kernels(extension, "-sass", arch)
        assert len(kernels) == len(CELL_STEPS) * len(DTYPES), arch
        for name, body in kernels.items():
            ops = re.findall(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)", body)
            assert ops, (arch, name)
            assert not any(op.startswith("LDL") for op in ops), (arch, name, "spill reloads")
            assert "LDS.128" in ops, (arch, name, "16-byte shared loads in the product")
            assert any(op.startswith("LDG") and "STRONG.GPU" in op for op in ops), \
                (arch, name, "coherent loads of the state")
            assert not any(op.startswith("LDG") and "CONSTANT" in op for op in ops), \
                (arch, name, "non-coherent loads")
            assert any(op.startswith("MEMBAR") for op in ops), (arch, name, "barrier fence")
            assert any(op.startswith(("ATOM", "RED")) for op in ops), (arch, name, "arrivals")
            assert "SHFL.BFLY" in ops, (arch, name, "the butterfly")
