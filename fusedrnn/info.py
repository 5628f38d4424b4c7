"""What fusedrnn was built with and what this machine will run: `python -m fusedrnn.info`.

Paste its output into a bug report. `make bench` prints its lines above the table.
"""
import os
import platform

import torch

from . import __version__, backends
from ._extension import (CUDA_ARCHS, TORCH_VERSION, WITH_CUDA, library_path, packed_weights_memory,
                         scratch_memory)


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _usable_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def lines():
    """The report, line by line."""
    detected, active = backends.cpu_isa()
    forced = backends.forced()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    out = [
        f"fusedrnn {__version__}, built for torch {TORCH_VERSION}; torch {torch.__version__}",
        f"library (what a C++ program loads): {library_path()}",
        ("CUDA: compiled for " + CUDA_ARCHS.replace(",", ", ") + f" (torch's CUDA "
         f"{torch.version.cuda})") if WITH_CUDA else "CUDA: not compiled (a CPU-only build)",
        "GPUs: " + (", ".join(gpus) if gpus else "none seen"),
        f"CPU: {_cpu_model()}; fusedrnn's ISA: {active}"
        + (f" (forced; detected {detected})" if active != detected else " (detected)")
        + f"; torch's: {torch.backends.cpu.get_cpu_capability()}",
        f"threads: torch {torch.get_num_threads()}, CPUs this process may use {_usable_cpus()}",
    ]
    calls = [("a CPU float32 layer, T > 1", "cpu", torch.float32, 16)]
    if WITH_CUDA:
        calls.append(("a CUDA float16 layer, T > 1", "cuda", torch.float16, 16))
    calls.append(("a cell (T = 1)", "cpu", torch.float32, 1))
    out.append("backends: " + ", ".join(backends.NAMES)
               + (f"; forced: {forced}" if forced else "; none forced (FUSEDRNN_BACKEND)"))
    for what, device, dtype, steps in calls:
        report = backends.explain_call(device, dtype, steps)
        refused = "; ".join(f"{name} refuses: {why}" for name, why in report.refusals.items()
                            if why is not None and name != report.backend)
        out.append(f"  {what}: {report.backend or 'raises'}" + (f" ({refused})" if refused else ""))
    pool = scratch_memory()
    out.append(f"scratch pool: {pool['held'] / 2**20:.0f} MB kept, limit "
               f"{pool['limit'] / 2**20:.0f} MB")
    packed = packed_weights_memory()
    out.append(f"packed weights: {packed['held'] / 2**20:.0f} MB kept in {packed['entries']} "
               f"entries, limit {packed['limit'] / 2**20:.0f} MB")
    return out


if __name__ == "__main__":
    print("\n".join(lines()))
