"""fusedrnn's ops in C++ code Inductor writes: AOTInductor packages and `cpp_wrapper` builds.

Such code calls an op outside ATen through a proxy executor that rebuilds each call from a
serialized description and sends it through the dispatcher: about 30 us a call on a 2-core Zen
3, as much as a whole step of a small layer. Inductor calls an op directly where it is told
of a C entry point for it (`aot_inductor.custom_ops_to_c_shims`). fusedrnn's forward ops have
them (csrc/layer/aoti_shims.cpp), and their fake kernels, which run wherever Inductor compiles
a graph holding them, tell Inductor of them (unless FUSEDRNN_AOTI_SHIMS=0 is set in the
environment): Inductor's config costs seconds to import, so fusedrnn does not import it. The
CUDA entry points are the same code under CUDA's names; they have not run on a GPU, so CUDA
graphs keep the proxy executor unless FUSEDRNN_CUDA_AOTI_SHIMS=1 is set.

The compiled model finds the entry points among the symbols loaded into the process: fusedrnn
makes its library's symbols visible to libraries loaded after it (as `RTLD_GLOBAL` would), so a
package built this way loads wherever fusedrnn is imported first, as any package holding
fusedrnn's ops needs anyway. The library holds no Python: a C++ program serves such a package
after loading it (`fusedrnn.library_path()`) with `RTLD_GLOBAL`.
"""
import ctypes
import os
import sys

import torch

from ._extension import _C, library_path

# Whether Inductor is told of the entry points.
_ENABLED = os.environ.get("FUSEDRNN_AOTI_SHIMS", "1") != "0"
_CUDA_ENABLED = os.environ.get("FUSEDRNN_CUDA_AOTI_SHIMS") == "1"


def c_shims() -> dict:
    """Inductor's `aot_inductor.custom_ops_to_c_shims` entries for fusedrnn's forward ops: each
    op's overload, and the C declarations of its entry points on the CPU and on CUDA. To be
    merged into a dict of one's own where a compile sets that option itself."""
    shims = {}
    for op, parameters in _C.aoti_shims():
        shims[getattr(torch.ops.fusedrnn, op).default] = [
            f"AOTITorchError aoti_torch_{device}_{op}{parameters}" for device in ("cpu", "cuda")]
    return shims


def offer_to_inductor(device: torch.device) -> None:
    """Where Inductor is loaded, has its config hold fusedrnn's entries for a call of an op on
    `device`, or not: a compile's own `inductor_configs` may have replaced the dict for its
    duration, and the CUDA entry points have not run on a GPU yet, so a CUDA call drops them
    (the proxy executor) unless FUSEDRNN_CUDA_AOTI_SHIMS=1 is set."""
    config = sys.modules.get("torch._inductor.config")
    if config is None or device.type not in ("cpu", "cuda"):  # meta: not compiled
        return
    wanted = _ENABLED and (device.type == "cpu" or _CUDA_ENABLED)
    shims = config.aot_inductor.custom_ops_to_c_shims
    if (torch.ops.fusedrnn.lstm_forward.default in shims) != wanted:
        ours = c_shims()
        kept = {op: declarations for op, declarations in shims.items() if op not in ours}
        config.aot_inductor.custom_ops_to_c_shims = {**kept, **ours} if wanted else kept


def cpp_program_command(source: str, output: str) -> list:
    """The compiler command that builds a C++ program serving packages without Python (as
    tests/layer/aoti_runner.cpp does): torch's headers, and libtorch linked as CMake's
    find_package(Torch) links it, all of it, so that its CUDA half (in a CUDA build) has loaded
    the CUDA libraries fusedrnn's library needs before the program loads it."""
    from torch.utils import cpp_extension

    torch_dir = os.path.dirname(torch.__file__)
    return [cpp_extension.get_cxx_compiler(), "-std=c++20", "-O2",
            f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
            f"-I{torch_dir}/include", source, "-o", output, f"-L{torch_dir}/lib",
            f"-Wl,-rpath,{torch_dir}/lib", "-Wl,--no-as-needed", "-ltorch", "-ltorch_cpu",
            "-lc10", "-Wl,--as-needed", "-ldl"]


# RTLD_NOLOAD reopens the library the import loaded (fusedrnn._C links it), and RTLD_GLOBAL widens
# its symbols' scope to the whole process; nothing is loaded twice. Done even with the switch
# off, so that packages built with the entry points load.
ctypes.CDLL(library_path(), mode=os.RTLD_NOLOAD | os.RTLD_GLOBAL)
