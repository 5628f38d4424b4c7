"""Loads the compiled extension, fusedrnn._C, and says plainly what to do when it can't."""
import os

import torch

_REBUILD = (
    "Rebuild it against the torch in this environment: "
    "`pip install --no-build-isolation --force-reinstall --no-deps .` from the fusedrnn source "
    "folder (or `make build` there)."
)

try:
    from . import _C
except ImportError as err:  # missing, or built for another torch (unresolved symbols)
    if "undefined symbol" in str(err):
        raise ImportError(
            f"fusedrnn's compiled extension does not match torch {torch.__version__} ({err}). "
            + _REBUILD
        ) from err
    raise ImportError(
        f"fusedrnn's compiled extension fusedrnn._C could not be loaded ({err}). "
        "fusedrnn has to be built before use. " + _REBUILD
    ) from err

if _C.torch_version != torch.__version__:
    raise ImportError(
        f"fusedrnn was built for torch {_C.torch_version}, but torch {torch.__version__} is "
        "installed. " + _REBUILD
    )

WITH_CUDA: bool = _C.with_cuda
CUDA_ARCHS: str = _C.cuda_archs  # the TORCH_CUDA_ARCH_LIST it was built for, comma-separated
TORCH_VERSION: str = _C.torch_version


def library_path() -> str:
    """The path of fusedrnn's library, libfusedrnn.so: its kernels and ops, with no Python in
    it (fusedrnn._C is the Python module around it). A C++ program that loads it
    (`dlopen(path, RTLD_NOW | RTLD_GLOBAL)`, or links it) can run fusedrnn's ops, and the
    AOTInductor packages that call them, without Python."""
    return os.path.join(os.path.dirname(os.path.abspath(_C.__file__)), "libfusedrnn.so")


def empty_cache() -> None:
    """Frees what fusedrnn keeps between calls on the CPU: its temporaries (scratch_memory) and
    its packed weights (packed_weights_memory)."""
    _C.empty_cache()


def scratch_memory() -> dict:
    """The pool of CPU temporaries (1 MB and up) that calls take and give back: `held`, the
    bytes kept now between calls, and `limit`, the most it keeps (FUSEDRNN_SCRATCH_LIMIT_MB in
    the environment, default 256 MB; set_scratch_limit). Calls in flight may hold more while
    they run; what exceeds the limit is freed as they end."""
    return {"held": _C.scratch_held_bytes(), "limit": _C.scratch_limit_bytes()}


def set_scratch_limit(nbytes: int) -> None:
    """Keeps at most `nbytes` of CPU temporaries between calls (0: keep none), freeing what is
    kept beyond it now."""
    _C.set_scratch_limit_bytes(int(nbytes))


def packed_weights_memory() -> dict:
    """The CPU loops' weights, packed for their product and kept between calls, each beside a
    copy of the weights it was packed from: a call reuses a packing only where its weights'
    bytes equal that copy, so optimizer steps, `load_state_dict` and `param.data` edits all
    take effect. `held`: bytes kept now (packings and copies); `limit`: the most kept
    (FUSEDRNN_PACKED_WEIGHTS_LIMIT_MB in the environment, default 64 MB;
    set_packed_weights_limit), a packing dropped when its weights are freed, or for a new one
    when it has gone unused a while, least recently used first; `entries`; `hits` and
    `misses`: calls that found their packing, or packed anew, since the process started."""
    return dict(_C.packed_weights_stats())


def set_packed_weights_limit(nbytes: int) -> None:
    """Keeps at most `nbytes` of packed weights between calls (0: keep none, every call packs
    its own), dropping what is kept beyond it now."""
    _C.set_packed_weights_limit_bytes(int(nbytes))
