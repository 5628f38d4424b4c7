"""Which backend runs a layer's loop over time, why, and how to choose one.

Backends (csrc/layer/backend.h), in order of preference:

- ``cpu-fused``: the fused CPU recurrence: each thread multiplies the state by its own slice of
  the recurrent weights and applies the gate math to the units it just computed, one team of
  threads for the whole loop. CPU, float32/float64 (float16/bfloat16 run as float32; with
  AVX512-BF16, bfloat16 layers' products run on bfloat16 operands), T > 1, no LSTM projection,
  a CPU ISA with vector kernels (AVX2 and FMA, or AVX-512).
- ``cuda-persistent``: CUDA: one cooperative launch runs every step of a layer's loop, each
  block holding its slice of the recurrent weights in shared memory, a grid-wide barrier
  between steps. Uniform batches (no packed sequences of different lengths), T > 1, no LSTM
  projection, weights that fit on chip. **Off unless forced**: it has not yet run on a GPU.
- ``step``: any device, dtype and shape: each step a GEMM (cuBLASLt on CUDA, the CPU BLAS), then
  one pointwise kernel.

Each call takes the first backend that accepts it. None has complex kernels: a module or cell
given complex input runs torch.nn's implementation on its own parameters (``explain`` names
``torch.nn``). ``FUSEDRNN_BACKEND=<name>`` in the
environment (read at import) or ``with fusedrnn.backends.force(name):`` makes every call run on
that backend, process-wide; a call it cannot run raises with its reason instead of running
elsewhere. ``explain(module, input)`` tells which backend a call would take and why each other
one refuses it. The CPU's instruction set is a second switch, chosen at run time from what the
CPU has (``cpu_isa()``): ``FUSEDRNN_CPU_ISA=avx2`` (or ``force_cpu_isa``) runs the AVX2 kernels
on an AVX-512 CPU, ``scalar`` the CPU kernels without vectors, and ``avx512`` keeps a CPU with
AVX512-BF16 (ISA ``avx512_bf16``) from running bfloat16 layers' products on bfloat16 operands;
``avx512_bf16`` keeps a CPU with AMX (ISA ``amx``) from running them on AMX's tiles.
``cpu_gemm()`` names the library that runs the large CPU products around the loop.
``FUSEDRNN_CUDA_SECOND_ORDER=1`` (read at each double backward) runs the double backward's
second-order pass on CUDA too (ops._second_order_on); **off** until its kernels have run on a
GPU, so that CUDA recomputes the layer through torch.nn's recurrence.
"""
import contextlib
import os
from typing import Dict, NamedTuple, Optional

import torch
from torch.nn.utils.rnn import PackedSequence

from ._extension import _C

NAMES = tuple(_C.backend_names())
# Not a backend: a module or cell given complex input runs torch.nn's implementation on its own
# parameters, where no backend is forced.
TORCH_NN = "torch.nn"


class Explanation(NamedTuple):
    """Which backend a call runs on, and every backend's refusal (None where it accepts)."""
    backend: Optional[str]  # None: the forced backend refuses this call
    refusals: Dict[str, Optional[str]]
    forced: Optional[str]

    def __str__(self):
        runs = (f"{TORCH_NN}'s implementation, on the module's parameters"
                if self.backend == TORCH_NN else self.backend)
        lines = [f"runs on: {runs}" if self.backend else
                 f"raises: the forced backend '{self.forced}' refuses this call"]
        for name, why in self.refusals.items():
            lines.append(f"  {name}: {'accepts' if why is None else 'refuses: ' + why}")
        if self.forced:
            lines.append(f"  (forced: {self.forced})")
        return "\n".join(lines)


def _dtype_name(dtype):
    return str(dtype).replace("torch.", "")


_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def explain_call(device, dtype, steps, projection=False, cell=None, hidden=None, batch=None,
                 uniform=True):
    """The Explanation for one layer call: its device, dtype (as the kernels see it), number of
    time steps and whether it is an LSTM with a projection; with `cell` ("LSTM", "GRU", "RNN"),
    `hidden` and `batch`, also whether the persistent backend's plan fits, and with `uniform`
    False, a packed batch of different lengths."""
    gates = _GATES[cell.removesuffix("Cell")] if cell is not None else 0
    backend, refusals = _C.backend_report(str(torch.device(device)), _dtype_name(dtype),
                                          int(steps), bool(projection), gates,
                                          int(hidden or 0) if cell else 0,
                                          int(batch or 0) if cell else 0, bool(uniform))
    return Explanation(backend, dict(refusals), forced())


def explain(module, input):
    """The Explanation for `module` (a fusedrnn LSTM, GRU, RNN or cell) called on `input`: every
    layer and direction of a module takes the same backend."""
    from . import autocast, cells, modules
    uniform = True
    if isinstance(module, cells._FusedCell):
        kind, steps, projection = module._torch_name, 1, False
        data = input
        batch = input.size(0) if input.dim() == 2 else 1
    elif isinstance(module, modules._FusedRNNBase):
        kind = {"RNN_TANH": "RNN", "RNN_RELU": "RNN"}.get(module.mode, module.mode)
        projection = getattr(module, "proj_size", 0) > 0
        if isinstance(input, PackedSequence):
            data, steps = input.data, len(input.batch_sizes)
            batch = int(input.batch_sizes[0])
            uniform = bool((input.batch_sizes == batch).all())
        else:
            data = input
            batched_time_dim = 1 if module.batch_first else 0
            steps = input.size(batched_time_dim if input.dim() == 3 else 0)
            batch = input.size(1 - batched_time_dim) if input.dim() == 3 else 1
    else:
        raise TypeError(f"explain takes a fusedrnn module or cell, not {type(module).__name__}; "
                        "fusedrnn.convert(model) swaps torch.nn's for fusedrnn's")
    dtype = data.dtype
    if dtype.is_complex:  # modules.runs_torch_nn_for_dtype
        why = f"no kernels for {_dtype_name(dtype)}"
        return Explanation(None if forced() else TORCH_NN, {name: why for name in NAMES},
                           forced())
    policy = autocast.autocast_policy(kind, data.device.type)
    if policy is not None and dtype != torch.float64:
        dtype = policy.dtype
    return explain_call(data.device, dtype, steps, projection, kind, module.hidden_size, batch,
                        uniform)


def forced():
    """The backend every call is forced onto, or None."""
    return _C.forced_backend() or None


def _check_name(name):
    if name is not None and name not in NAMES:
        raise ValueError(f"unknown fusedrnn backend {name!r}; choose from {', '.join(NAMES)}")


@contextlib.contextmanager
def force(name):
    """Runs every call inside on backend `name` (None: the usual choice), process-wide; a call it
    refuses raises with the reason."""
    _check_name(name)
    previous = forced()
    _C.force_backend(name or "")
    try:
        yield
    finally:
        _C.force_backend(previous or "")


# The limits of an H200 (what cudaDeviceProp reports for sm_90): the default plan of the model.
H200_LIMITS = (132, 232448, 233472, 1024)


@contextlib.contextmanager
def persistent_model(limits=H200_LIMITS):
    """For tests: inside, CPU calls forced onto cuda-persistent run its CPU model
    (csrc/cpu/persistent_model.h): the kernel's decomposition, planned for a device of `limits`
    (SMs, shared memory per block, per SM, reserved per block), process-wide."""
    _C.set_persistent_model(list(limits))
    try:
        yield
    finally:
        _C.set_persistent_model(None)


def cpu_isa():
    """(detected, in use): the CPU instruction set fusedrnn's vector kernels use on this machine,
    and the one they use now (lower where FUSEDRNN_CPU_ISA or force_cpu_isa says)."""
    return _C.cpu_isa_detected(), _C.cpu_isa_active()


def cpu_isas():
    """The CPU instruction sets fusedrnn's kernels can run on this machine, least capable first
    ("scalar", "avx2", "avx512", "avx512_bf16", "amx"): what force_cpu_isa and FUSEDRNN_CPU_ISA
    accept here."""
    return tuple(_C.cpu_isas_runnable())


def cpu_gemm():
    """Where fusedrnn's large float32 CPU products (input projections, weight gradients) run:
    "onednn" (torch's oneDNN matmul, as torch.nn's CPU RNNs run on oneDNN), or "aten" (at::mm:
    MKL or the BLAS torch was built with) where torch.backends.mkldnn is off or torch's oneDNN
    matmul refuses this CPU (torch 2.14 refuses float32 without AVX-512). The recurrent products
    run on fusedrnn's own kernels either way."""
    return "onednn" if torch.backends.mkldnn.enabled and _C.onednn_gemm_works() else "aten"


@contextlib.contextmanager
def force_cpu_isa(name):
    """Runs the CPU kernels inside with ISA `name` (one of cpu_isas(); None: the detected one),
    process-wide. Raises for an ISA this CPU lacks."""
    previous = _C.cpu_isa_active()
    _C.set_cpu_isa(name or "")
    try:
        yield
    finally:
        _C.set_cpu_isa(previous if previous != _C.cpu_isa_detected() else "")


def _force_from_environment():
    name = os.environ.get("FUSEDRNN_BACKEND") or None
    if name is not None and name not in NAMES:
        raise ValueError(f"FUSEDRNN_BACKEND={name}: unknown backend; choose from "
                         f"{', '.join(NAMES)}")
    _C.force_backend(name or "")


_force_from_environment()
