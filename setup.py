"""Builds fusedrnn's library (fusedrnn/libfusedrnn.so: the kernels and the ops, no Python) and
its Python module (fusedrnn._C) against the installed torch: with CUDA when torch is a CUDA
build and nvcc is found (no GPU needed), else CPU only.

Switches (environment): FUSEDRNN_CPU_ONLY=1, TORCH_CUDA_ARCH_LIST, MAX_JOBS, CUDA_HOME.
"""
import glob
import os
import shutil
import sys
import sysconfig


def _resolve_cuda_home():
    # torch guesses CUDA_HOME from the folder of `nvcc`, which is wrong where nvcc is a wrapper
    # script (/usr/local/bin/nvcc): set it before torch.utils.cpp_extension is imported.
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    if os.path.isfile("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"


_resolve_cuda_home()

import torch  # noqa: E402
from setuptools import setup  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402


def _want_cuda():
    if os.environ.get("FUSEDRNN_CPU_ONLY", "0") == "1":
        return False, "FUSEDRNN_CPU_ONLY=1"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU-only build"
    home = cpp_extension.CUDA_HOME
    if home is None or not os.path.isfile(os.path.join(home, "bin", "nvcc")):
        return False, "nvcc was not found (set CUDA_HOME)"
    return True, ""


def _default_arch_list():
    if torch.cuda.is_available():
        caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
        return ";".join(f"{major}.{minor}" for major, minor in sorted(caps))
    return "8.0;9.0+PTX"


def _nvidia_wheel_includes():
    # The CUDA build of torch ships cuBLAS/cuSPARSE headers in nvidia-* wheels, which a minimal
    # toolkit lacks.
    site = sysconfig.get_paths()["purelib"]
    return sorted(glob.glob(os.path.join(site, "nvidia", "*", "include")))


def _cublas_link_args(library):
    # The GEMMs call cuBLAS and cuBLASLt directly. Link the library torch itself loads: the
    # toolkit's, else the one from the nvidia-* wheels (which have no unversioned lib*.so).
    site = sysconfig.get_paths()["purelib"]
    candidates = [os.path.join(cpp_extension.CUDA_HOME, "lib64", f"lib{library}.so")]
    candidates += sorted(glob.glob(os.path.join(site, "nvidia", "*", "lib", f"lib{library}.so*")))
    for path in candidates:
        if os.path.exists(path):
            return [f"-L{os.path.dirname(path)}", f"-l:{os.path.basename(path)}"]
    return [f"-l{library}"]


# fusedrnn's kernels and ops, without Python: the Python module links it, and a C++ program
# (AOTInductor packages served without Python) loads it. Built first, under this plain name.
_LIBRARY = "fusedrnn.libfusedrnn"


def _extensions():
    with_cuda, why_not = _want_cuda()
    # csrc/README.md says what each folder holds. cpu/kernels_<isa>.cpp compile the vector
    # kernels once per ISA, each copy in its own namespace (cpu/isa.h).
    sources = (["csrc/ops.cpp"] + sorted(glob.glob("csrc/layer/*.cpp"))
               + sorted(glob.glob("csrc/cpu/*.cpp")))
    # -g0: Python's own CFLAGS carry -g, which made the build a third slower and the library
    # ten times larger (debug information nobody ships); symbols stay for profilers.
    cxx = ["-O3", "-g0", f"-DFUSEDRNN_TORCH_VERSION={torch.__version__}"]
    link = []
    if torch.backends.openmp.is_available():
        # at::parallel_for is inline OpenMP: without -fopenmp it runs every loop on one thread.
        # Linking libgomp.so.1 binds to the copy torch has already loaded.
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    if not with_cuda:
        print(f"fusedrnn: building for the CPU only ({why_not})", file=sys.stderr)
        library = cpp_extension.CppExtension(_LIBRARY, sources, extra_compile_args={"cxx": cxx},
                                             extra_link_args=link)
    else:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", _default_arch_list())
        archs = os.environ["TORCH_CUDA_ARCH_LIST"].replace(";", ",").replace(" ", ",")
        cxx += ["-DFUSEDRNN_WITH_CUDA", f"-DFUSEDRNN_CUDA_ARCHS={archs}"]
        library = cpp_extension.CUDAExtension(
            _LIBRARY,
            sources + sorted(glob.glob("csrc/cuda/*.cpp")) + sorted(glob.glob("csrc/cuda/*.cu")),
            include_dirs=_nvidia_wheel_includes(),
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]},
            extra_link_args=link + _cublas_link_args("cublas") + _cublas_link_args("cublasLt"),
        )
    library.libraries.remove("torch_python")
    # The module includes no CUDA header: the CPU flags, and the defines its build info reads.
    module = cpp_extension.CppExtension("fusedrnn._C", ["csrc/python_module.cpp"],
                                        extra_compile_args={"cxx": cxx})
    return [library, module]


class _BuildExtension(cpp_extension.BuildExtension):
    def get_ext_filename(self, fullname):
        # libfusedrnn.so, not a Python module's name (asked for the full name or the last part)
        if fullname.split(".")[-1] == _LIBRARY.split(".")[-1]:
            return os.path.join(*fullname.split(".")) + ".so"
        return super().get_ext_filename(fullname)

    def build_extension(self, ext):
        if ext.name != _LIBRARY:  # the module finds the library beside it ($ORIGIN)
            built = os.path.dirname(os.path.abspath(self.get_ext_fullpath(_LIBRARY)))
            ext.extra_link_args = ext.extra_link_args + [
                f"-L{built}", "-l:libfusedrnn.so", "-Wl,-rpath,$ORIGIN"]
        super().build_extension(ext)


setup(
    ext_modules=_extensions(),
    cmdclass={"build_ext": _BuildExtension},
)
