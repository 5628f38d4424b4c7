"""fusedrnn's ops in C++ code Inductor writes: AOTInductor packages and `cpp_wrapper` builds.

Such code calls an op outside ATen through a proxy executor that rebuilds each call from a
serialized description and sends it through the dispatcher: about 30 us a call on a 2-core Zen
3, as much as a whole step of a small layer. Inductor calls an op directly where it is told
of a C entry point for it (`aot_inductor.custom_ops_to_c_shims`). fusedrnn's forward ops have
them (csrc/layer/aoti_shims.cpp), and their fake kernels, which run wherever Inductor compiles
a graph holding them, tell Inductor of them (unless FUSEDRNN_AOTI_SHIMS=0 is set in the
environment): Inductor's config costs seconds to import, so fusedrnn does not import it.

The compiled model finds the entry points among the symbols loaded into the process: fusedrnn
makes its extension's symbols visible to libraries loaded after it (as `RTLD_GLOBAL` would),
so a package built this way loads wherever fusedrnn is imported first, as any package holding
fusedrnn's ops needs anyway.
"""
import ctypes
import os
import sys

import torch

from ._extension import _C

# Whether Inductor is told of the entry points.
_ENABLED = os.environ.get("FUSEDRNN_AOTI_SHIMS", "1") != "0"


def c_shims() -> dict:
    """Inductor's `aot_inductor.custom_ops_to_c_shims` entries for fusedrnn's forward ops: each
    op's overload, and the C declarations of its entry points on the CPU and on CUDA. To be
    merged into a dict of one's own where a compile sets that option itself."""
    shims = {}
    for op, parameters in _C.aoti_shims():
        shims[getattr(torch.ops.fusedrnn, op).default] = [
            f"AOTITorchError aoti_torch_{device}_{op}{parameters}" for device in ("cpu", "cuda")]
    return shims


def offer_to_inductor() -> None:
    """Adds fusedrnn's entries to Inductor's config, where Inductor is loaded and lacks them
    (a compile's own `inductor_configs` may have replaced the dict for its duration)."""
    config = sys.modules.get("torch._inductor.config")
    if config is None or not _ENABLED:
        return
    shims = config.aot_inductor.custom_ops_to_c_shims
    if torch.ops.fusedrnn.lstm_forward.default not in shims:
        config.aot_inductor.custom_ops_to_c_shims = {**shims, **c_shims()}


# RTLD_NOLOAD reopens the extension the import loaded, and RTLD_GLOBAL widens its symbols' scope
# to the whole process; nothing is loaded twice. Done even with the switch off, so that packages
# built with the entry points load.
ctypes.CDLL(_C.__file__, mode=os.RTLD_NOLOAD | os.RTLD_GLOBAL)
